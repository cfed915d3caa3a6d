#!/usr/bin/env bash
# Where shunt's CPU goes: perf (software clock; this machine has no hardware counters) samples
# shunt while wrk drives small keep-alive requests, new connections, or 1 MiB downloads through
# it to two local nginx backends. Prints the top symbols, kernel and user, with the share of
# samples in the kernel.
#
#   scripts/profile.sh [keepalive|close|download] [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-keepalive}
secs=${2:-8}
command -v perf >/dev/null || apt-get install -y -q linux-perf >/dev/null
scripts/install-deps.sh >/dev/null
cargo build --release -q

dir=$(mktemp -d /tmp/shunt-profile.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT

. scripts/lib.sh
head -c 1048576 /dev/urandom >"$dir/1m"
backends=()
for i in 1 2; do
  port=$(free_port)
  nginx_conf "$dir/ngx$i" "$port" "location / { return 200 \"ok\\n\"; } location = /1m { alias $dir/1m; }"
  taskset -c 1 nginx -p "$dir/ngx$i" -c "$dir/ngx$i/nginx.conf" -g 'daemon off; master_process off;' &
  pids+=($!)
  backends+=("127.0.0.1:$port")
done
listen=$(free_port)
cat >"$dir/shunt.conf" <<CONF
log warn
service web
  bind 127.0.0.1:$listen
  server a ${backends[0]}
  server b ${backends[1]}
CONF
taskset -c 0 target/release/shunt -c "$dir/shunt.conf" &
shunt=$!
pids+=($shunt)
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$listen/" >/dev/null && break; sleep 0.1; done

case $mode in
  keepalive) load=(wrk -t1 -c50 -d"${secs}s" "http://127.0.0.1:$listen/") ;;
  close) load=(wrk -t1 -c50 -d"${secs}s" -H 'Connection: close' "http://127.0.0.1:$listen/") ;;
  download) load=(wrk -t1 -c8 -d"${secs}s" "http://127.0.0.1:$listen/1m") ;;
  *) echo "usage: $0 [keepalive|close|download] [seconds]" >&2; exit 1 ;;
esac
taskset -c 1 "${load[@]}" >"$dir/wrk.txt" &
wrk=$!
perf record -q -e cpu-clock -g -p "$shunt" -o "$dir/perf.data" -- sleep "$((secs - 2))" 2>/dev/null
wait "$wrk"
grep -E "Requests/sec|Transfer/sec" "$dir/wrk.txt"
total=$(perf report -i "$dir/perf.data" --stdio --no-children --sort dso 2>/dev/null | grep -E '^ +[0-9]' || true)
echo "== samples by object (kernel vs shunt)"
echo "$total" | head -6
echo "== top symbols"
perf report -i "$dir/perf.data" --stdio --no-children --sort sym -g none 2>/dev/null | grep -E '^ +[0-9]' | head -25
