#!/usr/bin/env bash
# `make run`: build shunt, start two demo HTTP backends and shunt in front of them (conf/shunt.conf).
#
#   web-01  127.0.0.1:9001  \
#                             >  shunt  127.0.0.1:8080   (admin / status page: 127.0.0.1:9090)
#   web-02  127.0.0.1:9002  /
#
# shunt runs in the foreground; Ctrl-C drains it and this script then stops the backends it started.
set -euo pipefail

cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
CARGO=${CARGO:-cargo}
CONF=conf/shunt.conf
BACKENDS=("web-01 127.0.0.1:9001" "web-02 127.0.0.1:9002")
# Every address the demo needs; they must match $CONF.
PORTS=(9001 9002 8080 9090)

die() { echo "run-demo: $*" >&2; exit 1; }

# Build tools only (cc, cargo); the test peers are not needed for the demo.
scripts/install-deps.sh --build

# A port that already accepts connections is taken by something else: say which, rather than
# letting a backend or shunt fail with a less obvious error halfway through.
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "${PORTS[@]}"; do
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
}
trap cleanup EXIT
# Ctrl-C/TERM: once shunt runs, pass the signal on (a first one drains, a second one stops it at
# once, as with shunt alone) and go on waiting for it; before that, just exit (the EXIT trap
# cleans up) with the conventional status.
on_signal() {
  if [ -n "$shunt_pid" ] && kill -0 "$shunt_pid" 2>/dev/null; then
    kill -"$1" "$shunt_pid" 2>/dev/null || true
  else
    exit "$2"
  fi
}
trap 'on_signal INT 130' INT
trap 'on_signal TERM 143' TERM

# setsid: the backends leave the terminal's process group, so Ctrl-C reaches only this script,
# and they keep serving while shunt drains; the EXIT trap then stops them by PID.
for b in "${BACKENDS[@]}"; do
  read -r name addr <<<"$b"
  setsid target/release/examples/demo_backend --listen "$addr" --name "$name" &
  pids+=("$!")
done

# Wait until both backends accept connections (at most ~5 s), so shunt's first probes succeed.
for b in "${BACKENDS[@]}"; do
  read -r name addr <<<"$b"
  port=${addr##*:}
  for _ in $(seq 50); do
    port_busy "$port" && break
    sleep 0.1
  done
  port_busy "$port" || die "backend $name did not start listening on $addr"
done

cat <<MSG

  shunt is starting with $CONF. Try, from another terminal:

    curl http://127.0.0.1:8080/        # twice: "hello from web-01", then "hello from web-02"
    curl http://127.0.0.1:9090/status  # JSON status;  /metrics for Prometheus
    open http://127.0.0.1:9090/ in a browser for the status page

  Ctrl-C stops shunt (it drains live connections first) and the two backends.

MSG

# shunt runs in the background, in its own session, so that this script (not the terminal)
# decides what reaches it and can still react to a TERM sent to it alone: bash runs traps only
# between commands, and `wait` is one it can interrupt, where a foreground child is not.
setsid target/release/shunt -c "$CONF" &
shunt_pid=$!
while kill -0 "$shunt_pid" 2>/dev/null; do
  wait "$shunt_pid" || true
done
rc=0
wait "$shunt_pid" || rc=$?
exit "$rc"
