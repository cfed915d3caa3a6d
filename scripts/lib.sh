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
