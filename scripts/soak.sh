#!/usr/bin/env bash
# Soak: shunt in front of three local nginx backends under mixed load with faults, for an hour by
# default. Not part of CI.
#
#   scripts/soak.sh [--minutes N]        (N may be a fraction; default 60)
#
# Load runs in turns of 20 s: wrk keep-alive, wrk with `Connection: close`, then bulk transfers
# (curl downloads of a 16 MiB file plus an iperf3 run, alternately upload and download, through a
# second shunt service). Faults: every 20-40 s a random backend is killed (SIGKILL) and restarted
# 2-5 s later; every other time, a few seconds later, one is also frozen with SIGSTOP for 3-6 s.
#
# Every 10 s a line: elapsed time, shunt's RSS (KiB) and descriptor count, active connections
# (admin /status), errors so far (wrk socket errors + non-2xx/3xx responses, failed curls and
# iperf3 runs) and requests done. wrk reports at the end of each 5 s run, so the request count
# lags by up to 5 s. Errors are expected while a backend is killed or frozen (requests it held
# fail); they are counted, not judged.
#
# The end prints a summary and exits 1 if
#   - shunt died;
#   - RSS grew: the largest RSS after the warm-up window (the first 5 minutes, or the first third
#     of a shorter run) is more than 20% above the largest RSS within it (the plateau);
#   - descriptors did not come back: with the load stopped and every connection closed, shunt holds
#     more descriptors than at the baseline. The baseline is taken after one round of every load,
#     because a worker keeps emptied splice pipes for reuse; a pool a little larger than after that
#     round (two descriptors per concurrent bulk stream) is allowed.
# Everything it started is stopped on exit (trap), by pid.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

minutes=60
while [ $# -gt 0 ]; do
  case $1 in
    --minutes) minutes=${2:?--minutes needs a number}; shift 2 ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "soak.sh: unknown argument: $1 (try --help)" >&2; exit 2 ;;
  esac
done
total=$(awk -v m="$minutes" 'BEGIN { s = int(m * 60); if (s < 30) s = 30; print s }')
warmup=$(( total / 3 < 300 ? total / 3 : 300 ))

BACKENDS=3
PHASE_SECS=20   # one kind of load for this long, then the next
WRK_SECS=5      # one wrk run; its counts are booked when it ends
BULK_STREAMS=4  # parallel curl downloads in the bulk phase
BIG_MIB=16
FD_SLACK=$((2 * (BULK_STREAMS + 1)))

scripts/install-deps.sh >/dev/null
cargo build --release -q

dir=$(mktemp -d /tmp/shunt-soak.XXXXXX)
shunt=
loop_pids=()

backend_pid() { cat "$dir/ngx$1/mypid" 2>/dev/null || true; }

cleanup() {
  touch "$dir/stop"
  local p i
  for p in "${loop_pids[@]+"${loop_pids[@]}"}"; do kill "$p" 2>/dev/null || true; done
  for p in $(cat "$dir"/load.pids 2>/dev/null); do kill "$p" 2>/dev/null || true; done
  for i in $(seq "$BACKENDS"); do
    p=$(backend_pid "$i")
    [ -n "$p" ] && { kill -CONT "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; }
  done
  [ -n "$iperf_pid" ] && kill "$iperf_pid" 2>/dev/null || true
  [ -n "$shunt" ] && kill "$shunt" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$dir"
}
iperf_pid=
trap cleanup EXIT
trap 'exit 130' INT TERM

. scripts/lib.sh
rand() { echo $(( $1 + RANDOM % ($2 - $1 + 1) )); } # rand MIN MAX, inclusive
now() { date +%s; }
stopping() { [ -e "$dir/stop" ]; }
# Sleeps up to N seconds, in steps of one, returning early once the run is stopping.
nap() { local i; for ((i = 0; i < $1; i++)); do stopping && return 0; sleep 1; done; }

head -c $((BIG_MIB * 1048576)) /dev/urandom >"$dir/big"
ports=()
for i in $(seq "$BACKENDS"); do
  ports+=("$(free_port)")
  nginx_conf "$dir/ngx$i" "${ports[$((i - 1))]}" "location / { return 200 \"ok from web-$i\\n\"; }
    location = /health { return 200 \"up\\n\"; }
    location = /big { alias $dir/big; }"
done

# start_backend I: starts nginx number I and records its pid. Disowned, so bash does not announce
# each kill of it as a dead job.
start_backend() {
  nginx -p "$dir/ngx$1" -c "$dir/ngx$1/nginx.conf" -g 'daemon off; master_process off;' \
    >>"$dir/ngx$1/stdout.log" 2>&1 &
  echo $! >"$dir/ngx$1/mypid"
  disown $!
}
backend_up() { kill -0 "$(backend_pid "$1")" 2>/dev/null; }
for i in $(seq "$BACKENDS"); do start_backend "$i"; done

iperf_port=$(free_port)
iperf3 -s -p "$iperf_port" >"$dir/iperf3-server.log" 2>&1 &
iperf_pid=$!

listen=$(free_port)
bulk_listen=$(free_port)
admin=$(free_port)
{
  echo "log warn"
  echo "drain_timeout 1s"
  echo "admin 127.0.0.1:$admin"
  echo "service web"
  echo "  bind 127.0.0.1:$listen"
  for i in $(seq "$BACKENDS"); do echo "  server web-$i 127.0.0.1:${ports[$((i - 1))]}"; done
  echo "  check http GET /health expect 200 interval 1s timeout 500ms rise 2 fall 2"
  echo "  timeout connect 1s"
  echo "service bulk"
  echo "  bind 127.0.0.1:$bulk_listen"
  echo "  server iperf 127.0.0.1:$iperf_port"
} >"$dir/shunt.conf"
target/release/shunt -c "$dir/shunt.conf" 2>"$dir/shunt.log" &
shunt=$!
url="http://127.0.0.1:$listen"

shunt_alive() { [ -r "/proc/$shunt/status" ] && ! grep -q '^State:.*Z' "/proc/$shunt/status"; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$shunt/status" 2>/dev/null || echo 0; }
fd_count() { { find "/proc/$shunt/fd" -mindepth 1 -maxdepth 1 2>/dev/null || true; } | wc -l; }
active_conns() {
  curl -s --max-time 2 "http://127.0.0.1:$admin/status" | grep -o '"active_connections":[0-9]*' | head -1 |
    cut -d: -f2 || true
}

for _ in $(seq 100); do curl -sf "$url/" >/dev/null && break; sleep 0.1; done
if ! curl -sf "$url/" >/dev/null; then
  echo "soak: shunt did not come up; its log:" >&2
  cat "$dir/shunt.log" >&2
  exit 1
fi

# ---- the loads: each books "REQUESTS ERRORS" lines into a counts file -------------------------

# wrk_run SECS COUNTS [wrk args...]: one wrk run, booked when it ends.
wrk_run() {
  local secs=$1 counts=$2
  shift 2
  local out
  out=$(wrk -t1 -c32 -d"${secs}s" --timeout 2s "$@" "$url/" 2>&1) || true
  echo "$out" | awk '
    / requests in / { r = $1 }
    /Socket errors:/ { gsub(",", ""); e += $4 + $6 + $8 + $10 }
    /Non-2xx or 3xx responses:/ { e += $5 }
    END { print r + 0, e + 0 }' >>"$counts"
}

# curl_loop SECS COUNTS: downloads the big file again and again for SECS seconds.
curl_loop() {
  local end=$(($(now) + $1)) counts=$2 got
  while [ "$(now)" -lt "$end" ] && ! stopping; do
    got=$(curl -s -o /dev/null --max-time 30 -w '%{http_code} %{size_download}' "$url/big" || true)
    if [ "$got" = "200 $((BIG_MIB * 1048576))" ]; then echo "1 0"; else echo "1 1"; fi >>"$counts"
  done
}

# bulk SECS COUNTS: parallel downloads plus one iperf3 run through the bulk service.
bulk_round=0
bulk() {
  local secs=$1 counts=$2 pids=() p reverse=()
  for _ in $(seq "$BULK_STREAMS"); do
    curl_loop "$secs" "$counts" &
    pids+=($!)
    echo $! >>"$dir/load.pids"
  done
  bulk_round=$((bulk_round + 1))
  ((bulk_round % 2)) && reverse=(-R)
  if [ "$secs" -ge 3 ]; then
    if iperf3 -c 127.0.0.1 -p "$bulk_listen" -t $((secs - 2)) -b 2G "${reverse[@]+"${reverse[@]}"}" \
      >"$dir/iperf3.log" 2>&1; then
      echo "1 0" >>"$counts"
    else
      echo "1 1" >>"$counts"
    fi
  fi
  for p in "${pids[@]}"; do wait "$p" || true; done
  : >"$dir/load.pids"
}

# run_phase KIND SECS COUNTS
run_phase() {
  local kind=$1 secs=$2 counts=$3 end left
  end=$(($(now) + secs))
  while left=$((end - $(now))) && [ "$left" -gt 0 ] && ! stopping; do
    case $kind in
      keepalive) wrk_run $((left < WRK_SECS ? left : WRK_SECS)) "$counts" ;;
      close) wrk_run $((left < WRK_SECS ? left : WRK_SECS)) "$counts" -H 'Connection: close' ;;
      bulk) bulk "$left" "$counts" ;;
    esac
  done
}

# Waits (up to 30 s) until shunt holds no proxied connection, then prints its fewest descriptors
# over a few samples (a health probe in flight holds one for a moment).
quiet_fds() {
  local a min=
  for _ in $(seq 60); do
    a=$(active_conns)
    [ "${a:-1}" = 0 ] && break
    sleep 0.5
  done
  sleep 1
  for _ in $(seq 6); do
    a=$(fd_count)
    if [ -z "$min" ] || [ "$a" -lt "$min" ]; then min=$a; fi
    sleep 0.5
  done
  echo "$min"
}

echo "soak: $BACKENDS nginx backends, shunt pid $shunt on 127.0.0.1:$listen (admin :$admin), $total s"
echo "soak: warm-up round of every load (5 s each), then the descriptor baseline"
run_phase keepalive 5 "$dir/warmup.counts"
run_phase close 5 "$dir/warmup.counts"
run_phase bulk 5 "$dir/warmup.counts"
baseline_fds=$(quiet_fds)
start_rss=$(rss_kib)
echo "soak: baseline $baseline_fds fds, RSS $start_rss KiB; warm-up window for RSS: first $warmup s"

: >"$dir/counts"
: >"$dir/samples"
: >"$dir/faults"
t0=$(now)
deadline=$((t0 + total))

# ---- faults -------------------------------------------------------------------------------------
faults() {
  local n=0 i p down
  while ! stopping; do
    nap "$(rand 20 40)"
    stopping && break
    i=$(rand 1 "$BACKENDS")
    p=$(backend_pid "$i")
    kill -KILL "$p" 2>/dev/null || true
    down=$(rand 2 5)
    printf '[%4ss] fault: killed web-%s (pid %s), restart in %ss\n' $(($(now) - t0)) "$i" "$p" "$down"
    echo kill >>"$dir/faults"
    sleep "$down"
    start_backend "$i"
    n=$((n + 1))
    if ((n % 2 == 0)) && ! stopping; then
      nap "$(rand 3 8)"
      stopping && break
      i=$(rand 1 "$BACKENDS")
      backend_up "$i" || continue
      p=$(backend_pid "$i")
      down=$(rand 3 6)
      printf '[%4ss] fault: SIGSTOP web-%s for %ss\n' $(($(now) - t0)) "$i" "$down"
      echo stop >>"$dir/faults"
      kill -STOP "$p" 2>/dev/null || true
      sleep "$down"
      kill -CONT "$p" 2>/dev/null || true
    fi
  done
}

# ---- the 10-second report -----------------------------------------------------------------------
report() {
  local t rss fds act sums
  while ! stopping; do
    nap 10
    stopping && break
    t=$(($(now) - t0))
    if ! shunt_alive; then
      printf '[%4ss] shunt is gone\n' "$t"
      continue
    fi
    rss=$(rss_kib)
    fds=$(fd_count)
    act=$(active_conns)
    sums=$(awk '{ r += $1; e += $2 } END { print r + 0, e + 0 }' "$dir/counts")
    echo "$t $rss $fds" >>"$dir/samples"
    printf '[%4ss] rss %6s KiB  fds %5s  active %5s  errors %6s  requests %9s\n' \
      "$t" "$rss" "$fds" "${act:-?}" "${sums#* }" "${sums% *}"
  done
}

faults &
loop_pids+=($!)
report &
loop_pids+=($!)

phases=(keepalive close bulk)
k=0
while [ "$(now)" -lt "$deadline" ] && shunt_alive; do
  left=$((deadline - $(now)))
  run_phase "${phases[k % 3]}" $((left < PHASE_SECS ? left : PHASE_SECS)) "$dir/counts"
  k=$((k + 1))
done
elapsed=$(($(now) - t0))

# ---- wind down: stop faults and reports, bring every backend back, let connections close --------
touch "$dir/stop"
for p in "${loop_pids[@]}"; do wait "$p" 2>/dev/null || true; done
loop_pids=()
for i in $(seq "$BACKENDS"); do
  p=$(backend_pid "$i")
  kill -CONT "$p" 2>/dev/null || true
  backend_up "$i" || start_backend "$i"
done

alive=yes
shunt_alive || alive=no
end_fds=
[ $alive = yes ] && end_fds=$(quiet_fds)
read -r requests errors < <(awk '{ r += $1; e += $2 } END { print r + 0, e + 0 }' "$dir/counts")
kills=$(grep -c kill "$dir/faults" || true)
stops=$(grep -c stop "$dir/faults" || true)

summary=$(awk -v w="$warmup" '
  { if (min == "" || $2 < min) min = $2; if ($2 > max) max = $2; if ($3 > maxfd) maxfd = $3
    if ($1 <= w) { if ($2 > plateau) plateau = $2 } else if ($2 > after) after = $2 }
  END { print min + 0, max + 0, maxfd + 0, plateau + 0, after + 0 }' "$dir/samples")
read -r min_rss max_rss max_fds plateau after <<<"$summary"

echo
echo "== soak summary ($elapsed s of load, $kills backend kills, $stops freezes)"
echo "shunt:        $([ $alive = yes ] && echo "alive (pid $shunt)" || echo DIED)"
echo "RSS:          min $min_rss KiB, max $max_rss KiB; plateau (first $warmup s) $plateau KiB, max after $after KiB"
echo "descriptors:  max $max_fds; baseline $baseline_fds, at the end ${end_fds:-?} (allowed up to $((baseline_fds + FD_SLACK)))"
echo "requests:     $requests"
echo "errors:       $errors (wrk socket errors + non-2xx/3xx, failed curls and iperf3 runs)"

fail=()
[ $alive = yes ] || fail+=("shunt died")
if [ "$plateau" -gt 0 ] && [ "$after" -gt 0 ] && [ "$after" -gt $((plateau * 120 / 100)) ]; then
  fail+=("RSS grew more than 20% after the plateau ($plateau -> $after KiB)")
fi
if [ -n "$end_fds" ] && [ "$end_fds" -gt $((baseline_fds + FD_SLACK)) ]; then
  fail+=("descriptors did not return to the baseline ($baseline_fds -> $end_fds)")
fi
if [ ${#fail[@]} -gt 0 ]; then
  [ $alive = yes ] || { echo "shunt's log:"; tail -20 "$dir/shunt.log"; }
  printf 'FAIL: %s\n' "${fail[@]}"
  exit 1
fi
echo "PASS"
