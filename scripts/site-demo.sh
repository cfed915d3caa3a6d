#!/usr/bin/env bash
# `make site`: the seed's whole picture on loopback, with real servers.
#
#   clients ──▶ shunt ─┬─ web       ──▶ web-01, web-02            (round robin, http checks)
#                      ├─ db-write  ──▶ PostgreSQL primary        (check pgsql role primary)
#                      ├─ db-read   ──▶ PostgreSQL standby        (role standby; primary as backup)
#                      ├─ cache     ──▶ Redis master              (check redis role master)
#                      └─ cache-ro  ──▶ Redis replica             (role replica; master as backup)
#
# Every port is a free one, printed at start; the PostgreSQL standby streams from the primary
# (pg_basebackup -R), the Redis replica follows its master, both pairs with passwords (SCRAM for
# PostgreSQL). The script installs what is missing (scripts/install-deps.sh), prints the
# addresses and a failover to try, and stops everything it started on Ctrl-C (or TERM).
set -euo pipefail

cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
CARGO=${CARGO:-cargo}
source scripts/lib.sh

die() { echo "site-demo: $*" >&2; exit 1; }
say() { echo "site-demo: $*"; }

scripts/install-deps.sh
say "building (release)…"
"$CARGO" build --release --bins --examples

pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
[ -x "$pg_bin/postgres" ] || die "no PostgreSQL server found in /usr/lib/postgresql"
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"; }

run_dir=$(mktemp -d "${TMPDIR:-/tmp}/shunt-site.XXXXXX")
chmod 755 "$run_dir"
pids=()    # stopped with TERM (a background job of a script ignores INT)
pg_pids=() # stopped with INT: PostgreSQL's fast shutdown (TERM waits for every client)
shunt_pid=
cleanup() {
  local pid
  if [ -n "$shunt_pid" ] && kill -0 "$shunt_pid" 2>/dev/null; then
    kill -TERM "$shunt_pid" 2>/dev/null || true
    wait "$shunt_pid" 2>/dev/null || true
  fi
  for pid in "${pids[@]+"${pids[@]}"}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pg_pids[@]+"${pg_pids[@]}"}"; do kill -INT "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]+"${pids[@]}"}" "${pg_pids[@]+"${pg_pids[@]}"}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$run_dir"
}
trap cleanup EXIT
forward_signals_to_shunt

# wait_port NAME PORT: until something accepts on 127.0.0.1:PORT (at most ~20 s).
wait_port() {
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null && return 0
    sleep 0.1
  done
  die "$1 did not start listening on 127.0.0.1:$2 (its log: $run_dir)"
}

password=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
printf '%s\n' "$password" >"$run_dir/password"

# ---- the web servers ----
web_ports=("$(free_port)" "$(free_port)")
for i in 0 1; do
  setsid target/release/examples/demo_backend --listen "127.0.0.1:${web_ports[$i]}" --name "web-0$((i + 1))" \
    >"$run_dir/web-0$((i + 1)).log" 2>&1 &
  pids+=("$!")
done

# ---- Redis: a master and its replica ----
redis_ports=("$(free_port)" "$(free_port)")
for i in 0 1; do
  mkdir -p "$run_dir/redis-$i"
  args=(--port "${redis_ports[$i]}" --bind 127.0.0.1 --save "" --appendonly no --dir "$run_dir/redis-$i"
    --requirepass "$password" --masterauth "$password")
  [ "$i" = 1 ] && args+=(--replicaof 127.0.0.1 "${redis_ports[0]}")
  setsid redis-server "${args[@]}" >"$run_dir/redis-$i.log" 2>&1 &
  pids+=("$!")
done

# ---- PostgreSQL: a primary and a streaming standby ----
pg_ports=("$(free_port)" "$(free_port)")
chown postgres: "$run_dir/password"
install -d -o postgres -g postgres -m 700 "$run_dir/pg"
as_postgres "$pg_bin/initdb" -D "$run_dir/pg/primary" -U postgres --auth=scram-sha-256 \
  --pwfile="$run_dir/password" -N >"$run_dir/initdb.log" 2>&1 || die "initdb failed: $(cat "$run_dir/initdb.log")"
cat >>"$run_dir/pg/primary/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
fsync = off
shared_buffers = 16MB
wal_level = replica
max_wal_senders = 4
hot_standby = on
CONF
printf 'host all all 127.0.0.1/32 scram-sha-256\nhost replication all 127.0.0.1/32 scram-sha-256\n' \
  >>"$run_dir/pg/primary/pg_hba.conf"
setsid setpriv --reuid=postgres --regid=postgres --init-groups -- \
  "$pg_bin/postgres" -D "$run_dir/pg/primary" -p "${pg_ports[0]}" -k "$run_dir/pg" >"$run_dir/pg-primary.log" 2>&1 &
pg_pids+=("$!")
pg_primary_pid=$!
wait_port "the PostgreSQL primary" "${pg_ports[0]}"
# Listening is not ready: while it starts up the server refuses logins (57P03).
for _ in $(seq 100); do
  "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "${pg_ports[0]}" && break
  sleep 0.1
done
PGPASSWORD=$password as_postgres "$pg_bin/pg_basebackup" -h 127.0.0.1 -p "${pg_ports[0]}" -U postgres -R -X stream \
  -D "$run_dir/pg/standby" >"$run_dir/basebackup.log" 2>&1 || die "pg_basebackup failed: $(cat "$run_dir/basebackup.log")"
setsid setpriv --reuid=postgres --regid=postgres --init-groups -- \
  "$pg_bin/postgres" -D "$run_dir/pg/standby" -p "${pg_ports[1]}" -k "$run_dir/pg" >"$run_dir/pg-standby.log" 2>&1 &
pg_pids+=("$!")

for p in "${web_ports[@]}" "${redis_ports[@]}" "${pg_ports[1]}"; do wait_port "a server" "$p"; done

# ---- shunt in front of all of it ----
port() { free_port; }
web=$(port) dbw=$(port) dbr=$(port) cache=$(port) cachero=$(port) admin=$(port)
pw="$run_dir/password"
pg_check="check pgsql user postgres password $pw dbname postgres"
redis_check="check redis password $pw"
cat >"$run_dir/shunt.conf" <<CONF
# written by scripts/site-demo.sh
admin 127.0.0.1:$admin
drain_timeout 5s
log info

service web
  bind 127.0.0.1:$web
  check http GET /health expect 200 interval 1s
  server web-01 127.0.0.1:${web_ports[0]}
  server web-02 127.0.0.1:${web_ports[1]}

service db-write
  bind 127.0.0.1:$dbw
  balance first
  on_down close
  $pg_check role primary interval 500ms
  server pg-a 127.0.0.1:${pg_ports[0]}
  server pg-b 127.0.0.1:${pg_ports[1]}

service db-read
  bind 127.0.0.1:$dbr
  $pg_check role standby interval 500ms
  server pg-b 127.0.0.1:${pg_ports[1]}
  server pg-a 127.0.0.1:${pg_ports[0]} backup

service cache
  bind 127.0.0.1:$cache
  balance first
  on_down close
  $redis_check role master interval 500ms
  server redis-a 127.0.0.1:${redis_ports[0]}
  server redis-b 127.0.0.1:${redis_ports[1]}

service cache-ro
  bind 127.0.0.1:$cachero
  $redis_check role replica interval 500ms
  server redis-b 127.0.0.1:${redis_ports[1]}
  server redis-a 127.0.0.1:${redis_ports[0]} backup
CONF

cat <<MSG

  The seed's site, on loopback (password for PostgreSQL and Redis: $password):

    web        curl http://127.0.0.1:$web/                       (web-01, web-02 in turn)
    db-write   PGPASSWORD=$password psql -h 127.0.0.1 -p $dbw -U postgres -c 'SELECT pg_is_in_recovery()'
    db-read    PGPASSWORD=$password psql -h 127.0.0.1 -p $dbr -U postgres -c 'SELECT pg_is_in_recovery()'
    cache      redis-cli -p $cache -a $password SET greeting hello
    cache-ro   redis-cli -p $cachero -a $password GET greeting
    status     http://127.0.0.1:$admin/   (/status, /metrics)

  A failover to try: stop the PostgreSQL primary and promote the standby; db-write follows.

    kill -INT $pg_primary_pid
    PGPASSWORD=$password psql -h 127.0.0.1 -p ${pg_ports[1]} -U postgres -c 'SELECT pg_promote()'

  Or swap the Redis roles; cache follows:

    redis-cli -p ${redis_ports[1]} -a $password REPLICAOF NO ONE
    redis-cli -p ${redis_ports[0]} -a $password REPLICAOF 127.0.0.1 ${redis_ports[1]}

  Ctrl-C stops shunt (it drains first) and every server this script started.

MSG
say "pids: ${pids[*]} ${pg_pids[*]}"

run_shunt "$run_dir/shunt.conf"
