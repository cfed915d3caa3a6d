# Helpers shared by scripts/profile.sh and scripts/soak.sh (sourced, not run).

# A free TCP port on 127.0.0.1.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# nginx_conf DIR PORT LOCATIONS: writes DIR/nginx.conf for a one-worker nginx that serves
# LOCATIONS on 127.0.0.1:PORT, keeps every file (pid, logs, temp paths) inside DIR and logs no
# access (a benchmark backend, not a web site). The conf is scripts/nginx-backend.conf.in, the one
# bench.py renders too; run it with -g 'daemon off; master_process off;'.
nginx_conf() {
  local d=$1 port=$2 locations=$3 conf
  mkdir -p "$d"
  conf=$(<"$(dirname "${BASH_SOURCE[0]}")/nginx-backend.conf.in")
  # Quoted replacements are taken literally: no `&` or `\` expansion (bash 5.2 patsub_replacement).
  conf=${conf//@DIR@/"$d"}
  conf=${conf//@PORT@/"$port"}
  conf=${conf//@LOCATIONS@/"$locations"}
  printf '%s\n' "$conf" >"$d/nginx.conf"
}

# For run-demo.sh and site-demo.sh, which run shunt in the background ($shunt_pid, empty until
# it starts): bash runs traps only between commands, and `wait` is one it can interrupt where a
# foreground child is not, so the script itself decides what reaches shunt. Once shunt runs,
# INT and TERM are passed on (a first one drains, a second one stops it at once, as with shunt
# alone) and the script goes on waiting; before that, it just exits (its EXIT trap cleans up)
# with the conventional status.
on_signal() {
  if [ -n "$shunt_pid" ] && kill -0 "$shunt_pid" 2>/dev/null; then
    kill -"$1" "$shunt_pid" 2>/dev/null || true
  else
    exit "$2"
  fi
}
forward_signals_to_shunt() {
  trap 'on_signal INT 130' INT
  trap 'on_signal TERM 143' TERM
}

# run_shunt CONF: shunt in the background in its own session, waited for through any number
# of signals; its exit status is this function's.
run_shunt() {
  setsid target/release/shunt -c "$1" &
  shunt_pid=$!
  while kill -0 "$shunt_pid" 2>/dev/null; do
    wait "$shunt_pid" || true
  done
  local rc=0
  wait "$shunt_pid" || rc=$?
  return "$rc"
}
