# Helpers shared by scripts/profile.sh and scripts/soak.sh (sourced, not run).

# A free TCP port on 127.0.0.1.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# nginx_conf DIR PORT LOCATIONS: writes DIR/nginx.conf for a one-worker nginx that serves
# LOCATIONS on 127.0.0.1:PORT, keeps every file (pid, logs, temp paths) inside DIR and logs no
# access (a benchmark backend, not a web site).
nginx_conf() {
  local d=$1 port=$2 locations=$3
  mkdir -p "$d"
  cat >"$d/nginx.conf" <<NGX
worker_processes 1; pid $d/pid; error_log $d/error.log warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  client_body_temp_path $d; proxy_temp_path $d; fastcgi_temp_path $d;
  uwsgi_temp_path $d; scgi_temp_path $d;
  server { listen 127.0.0.1:$port; $locations } }
NGX
}
