#!/usr/bin/env bash
# `make run`: build shunt, start two demo HTTP backends and shunt in front of them (conf/shunt.conf).
#
#   web-01  127.0.0.1:9001  \
#                             >  shunt  127.0.0.1:8080   (admin / status page: 127.0.0.1:9090)
#   web-02  127.0.0.1:9002  /
#
# shunt runs in the foreground; Ctrl-C drains it and this script then stops the backends it started.
#
# The ports can be changed (tests run the demo beside other things): SHUNT_DEMO_PORT (8080),
# SHUNT_DEMO_ADMIN_PORT (9090), SHUNT_DEMO_BACKEND_PORTS ("9001 9002"). 0 takes a free port:
# the backends say theirs ("run-demo: web-01 listening on ADDR"), shunt prints its own at start-up
# ("service web listening on ADDR", "admin endpoint listening on ADDR"). With other ports than
# the defaults, shunt runs with a copy of conf/shunt.conf that names them.
set -euo pipefail

cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
CARGO=${CARGO:-cargo}
source scripts/lib.sh
CONF=conf/shunt.conf
PORT=${SHUNT_DEMO_PORT:-8080}
ADMIN_PORT=${SHUNT_DEMO_ADMIN_PORT:-9090}
read -r -a BACKEND_PORTS <<<"${SHUNT_DEMO_BACKEND_PORTS:-9001 9002}"
NAMES=(web-01 web-02)
[ "${#BACKEND_PORTS[@]}" -eq 2 ] || { echo "run-demo: SHUNT_DEMO_BACKEND_PORTS needs two ports" >&2; exit 1; }
# Every fixed address the demo needs (port 0 is never busy).
PORTS=()
for p in "${BACKEND_PORTS[@]}" "$PORT" "$ADMIN_PORT"; do
  [ "$p" = 0 ] || PORTS+=("$p")
done

die() { echo "run-demo: $*" >&2; exit 1; }

# Build tools only (cc, cargo); the test peers are not needed for the demo.
scripts/install-deps.sh --build

# A port that already accepts connections is taken by something else: say which, rather than
# letting a backend or shunt fail with a less obvious error halfway through.
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "${PORTS[@]+"${PORTS[@]}"}"; do
  if port_busy "$p"; then
    who=""
    command -v ss >/dev/null 2>&1 && who=$(ss -ltnpH "sport = :$p" 2>/dev/null | head -1)
    die "port 127.0.0.1:$p is already in use${who:+: $who}. Stop whatever holds it and retry."
  fi
done

echo "run-demo: building (release)…"
"$CARGO" build --release --bins --examples

pids=()
shunt_pid=
run_dir=$(mktemp -d "${TMPDIR:-/tmp}/shunt-demo.XXXXXX")
cleanup() {
  local pid
  # shunt first (a drain, if it still runs: the script itself failed or was killed), then the
  # backends it was draining to.
  if [ -n "$shunt_pid" ] && kill -0 "$shunt_pid" 2>/dev/null; then
    kill -TERM "$shunt_pid" 2>/dev/null || true
    wait "$shunt_pid" 2>/dev/null || true
  fi
  for pid in "${pids[@]+"${pids[@]}"}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]+"${pids[@]}"}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$run_dir"
}
trap cleanup EXIT
forward_signals_to_shunt

# setsid: the backends leave the terminal's process group, so Ctrl-C reaches only this script,
# and they keep serving while shunt drains; the EXIT trap then stops them by PID. Each prints the
# address it bound ("listening on ADDR", the port resolved when it was 0) into its own file.
for i in 0 1; do
  setsid target/release/examples/demo_backend --listen "127.0.0.1:${BACKEND_PORTS[$i]}" --name "${NAMES[$i]}" \
    >"$run_dir/${NAMES[$i]}.out" &
  pids+=("$!")
done

# Wait until both backends have bound and accept connections (at most ~5 s), so shunt's first
# probes succeed.
BOUND=()
for i in 0 1; do
  name=${NAMES[$i]} addr=
  for _ in $(seq 50); do
    addr=$(sed -n 's/^listening on //p' "$run_dir/$name.out" 2>/dev/null | head -1)
    [ -n "$addr" ] && port_busy "${addr##*:}" && break
    addr=
    sleep 0.1
  done
  [ -n "$addr" ] || die "backend $name did not start listening on 127.0.0.1:${BACKEND_PORTS[$i]}"
  echo "run-demo: $name listening on $addr"
  BOUND+=("$addr")
done

# Ports other than the defaults: a copy of the conf that names them.
if [ "${BOUND[*]} $PORT $ADMIN_PORT" != "127.0.0.1:9001 127.0.0.1:9002 8080 9090" ]; then
  sed -e "s/127\.0\.0\.1:9001/${BOUND[0]}/; s/127\.0\.0\.1:9002/${BOUND[1]}/" \
    -e "s/127\.0\.0\.1:8080/127.0.0.1:$PORT/; s/127\.0\.0\.1:9090/127.0.0.1:$ADMIN_PORT/" \
    "$CONF" >"$run_dir/shunt.conf"
  CONF=$run_dir/shunt.conf
fi
if [ "$PORT" = 0 ] || [ "$ADMIN_PORT" = 0 ]; then
  where="the ports shunt prints below"
else
  where=
fi

cat <<MSG

  shunt is starting with $CONF. Try, from another terminal${where:+ (on $where)}:

    curl http://127.0.0.1:$PORT/        # twice: "hello from web-01", then "hello from web-02"
    curl http://127.0.0.1:$ADMIN_PORT/status  # JSON status;  /metrics for Prometheus
    open http://127.0.0.1:$ADMIN_PORT/ in a browser for the status page

  Ctrl-C stops shunt (it drains live connections first) and the two backends.

MSG

# shunt runs in the background, in its own session (see run_shunt in scripts/lib.sh), so that
# this script, not the terminal, decides what reaches it.
run_shunt "$CONF"
