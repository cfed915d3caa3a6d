#!/usr/bin/env bash
# `make ha`: no single balancer. Two shunt nodes behind a virtual IP that keepalived (VRRP) moves
# between them, built in network namespaces this script makes and removes:
#
#                          ┌─ lb1: shunt + keepalived (master) ─┐
#   client ── switch ──────┤        VIP 10.77.0.10:80           ├──── web-01, web-02
#   (10.77.0.100)  (bridge)└─ lb2: shunt + keepalived (backup) ─┘    (10.77.0.21, .22)
#
# One segment, 10.77.0.0/24, on a bridge with multicast snooping off (VRRP's multicast must
# reach every port); lb1 is 10.77.0.2, lb2 10.77.0.3. Each node runs the same shunt conf (bound
# to the VIP with net.ipv4.ip_nonlocal_bind, so the backup is ready before the address arrives;
# each probes the web servers itself, so its view is warm when it takes over) and keepalived
# with conf/keepalived.conf filled in for it. `--active-active` uses
# conf/keepalived-active-active.conf: a second VIP, 10.77.0.11, whose master is lb2.
#
#   scripts/ha-demo.sh [--active-active] [--balance roundrobin|maglev|...]
#
# It prints what to curl and how to cause a failover, and removes everything on Ctrl-C (or
# TERM). For tests and repeated runs: HA_PREFIX names the namespaces (default shunt-ha: they
# are $HA_PREFIX-client, -lb1, -lb2, -web1, -web2 and -switch), HA_DIR keeps confs, logs and
# pid files there (lb1/shunt.pid, lb1/keepalived.pid…; default: a temporary directory, removed
# at exit), HA_NO_BUILD=1 skips installing and building (the binaries must be built).
set -euo pipefail

cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
CARGO=${CARGO:-cargo}

die() { echo "ha-demo: $*" >&2; exit 1; }
say() { echo "ha-demo: $*"; }
usage() {
  echo "usage: scripts/ha-demo.sh [--active-active] [--balance ALGORITHM]" >&2
  exit "$1"
}

mode=single
balance=roundrobin
while [ $# -gt 0 ]; do
  case $1 in
    --active-active) mode=active-active ;;
    --balance) [ $# -ge 2 ] || usage 2; balance=$2; shift ;;
    -h | --help) usage 0 ;;
    *) echo "ha-demo: unknown argument: $1" >&2; usage 2 ;;
  esac
  shift
done
[ "$(id -u)" = 0 ] || die "network namespaces need root"

if [ -z "${HA_NO_BUILD:-}" ]; then
  scripts/install-deps.sh
  say "building (release)…"
  "$CARGO" build --release --bins --examples
fi
for bin in target/release/shunt target/release/examples/demo_backend; do
  [ -x "$bin" ] || die "$bin is not built (run without HA_NO_BUILD)"
done

prefix=${HA_PREFIX:-shunt-ha}
net=10.77.0
vip=$net.10
vip_b=$net.11
declare -A addr=([client]=$net.100 [lb1]=$net.2 [lb2]=$net.3 [web1]=$net.21 [web2]=$net.22)
nodes=(client lb1 lb2 web1 web2)
admin=127.0.0.1:9000

own_dir=
if [ -n "${HA_DIR:-}" ]; then
  dir=$HA_DIR
  mkdir -p "$dir"
else
  dir=$(mktemp -d "${TMPDIR:-/tmp}/shunt-ha.XXXXXX")
  own_dir=1
fi

ns() { echo "$prefix-$1"; }
in_ns() {
  local node=$1
  shift
  ip netns exec "$(ns "$node")" "$@"
}

# Every process this script starts is recorded as DIR/NODE/WHAT.pid.
started=()
start() { # start NODE WHAT COMMAND…: in the background, in NODE's namespace, its own session
  local node=$1 what=$2
  shift 2
  mkdir -p "$dir/$node"
  # Not through in_ns: a function run in the background is a subshell, and $! would be its pid.
  ip netns exec "$(ns "$node")" setsid "$@" >"$dir/$node/$what.log" 2>&1 &
  echo "$!" >"$dir/$node/$what.pid"
  started+=("$!")
}

sleeper=
cleanup() {
  local pid n
  # A second Ctrl-C (or TERM) must not cut the cleaning short.
  trap '' INT TERM
  # keepalived first, with TERM: it removes the VIP it holds and tells its peer.
  for n in lb1 lb2; do
    [ -f "$dir/$n/keepalived.pid" ] && kill -TERM "$(cat "$dir/$n/keepalived.pid")" 2>/dev/null || true
  done
  for pid in "${started[@]+"${started[@]}"}" $sleeper; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${started[@]+"${started[@]}"}"; do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  for n in switch "${nodes[@]}"; do ip netns del "$(ns "$n")" 2>/dev/null || true; done
  if [ -n "$own_dir" ]; then rm -rf "$dir"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- the segment: a bridge in its own namespace, a veth from every node to it ----
for n in switch "${nodes[@]}"; do
  ip netns del "$(ns "$n")" 2>/dev/null || true
  ip netns add "$(ns "$n")"
  in_ns "$n" ip link set lo up
done
in_ns switch ip link add br0 type bridge mcast_snooping 0
in_ns switch ip link set br0 up
for n in "${nodes[@]}"; do
  ip -n "$(ns switch)" link add "$n" type veth peer name eth0 netns "$(ns "$n")"
  ip -n "$(ns switch)" link set "$n" master br0 up
  ip -n "$(ns "$n")" addr add "${addr[$n]}/24" dev eth0
  ip -n "$(ns "$n")" link set eth0 up
done

# ---- the web servers ----
start web1 web target/release/examples/demo_backend --listen 0.0.0.0:80 --name web-01
start web2 web target/release/examples/demo_backend --listen 0.0.0.0:80 --name web-02

# ---- the balancer nodes: shunt, then keepalived ----
fill() { # fill FILE NAME=VALUE…: FILE with its @NAME@ placeholders replaced
  local text key
  text=$(<"$1")
  shift
  for kv in "$@"; do
    key=${kv%%=*}
    text=${text//"@$key@"/"${kv#*=}"}
  done
  printf '%s\n' "$text"
}
for n in lb1 lb2; do
  d=$dir/$n
  mkdir -p "$d"
  in_ns "$n" sysctl -qw net.ipv4.ip_nonlocal_bind=1
  # lb2 lists the servers the other way round: with `balance maglev` both still pick the same
  # server for a client (the table depends on the servers' names, not their order).
  servers=("server web-01 ${addr[web1]}:80" "server web-02 ${addr[web2]}:80")
  [ "$n" = lb2 ] && servers=("${servers[1]}" "${servers[0]}")
  binds="bind $vip:80"
  [ "$mode" = active-active ] && binds+=$'\n'"  bind $vip_b:80"
  cat >"$d/shunt.conf" <<CONF
# written by scripts/ha-demo.sh for $n
admin $admin
drain_timeout 5s
log info

service web
  $binds
  balance $balance
  check http GET /health expect 200 interval 500ms
  ${servers[0]}
  ${servers[1]}
CONF
  start "$n" shunt target/release/shunt -c "$d/shunt.conf"

  peer=lb2
  [ "$n" = lb2 ] && peer=lb1
  common=(NODE="$n" IFACE=eth0 SELF_IP="${addr[$n]}" PEER_IP="${addr[$peer]}" ADMIN="$admin")
  if [ "$mode" = active-active ]; then
    if [ "$n" = lb1 ]; then prio=(PRIORITY_A=150 PRIORITY_B=100); else prio=(PRIORITY_A=100 PRIORITY_B=150); fi
    fill conf/keepalived-active-active.conf "${common[@]}" VIP_A="$vip" VIP_B="$vip_b" "${prio[@]}" >"$d/keepalived.conf"
  else
    prio=150
    [ "$n" = lb2 ] && prio=100
    fill conf/keepalived.conf "${common[@]}" VIP="$vip" PRIORITY="$prio" >"$d/keepalived.conf"
  fi
done
for n in lb1 lb2; do
  for _ in $(seq 200); do
    grep -q "admin endpoint listening on" "$dir/$n/shunt.log" && break
    kill -0 "$(cat "$dir/$n/shunt.pid")" 2>/dev/null || die "shunt on $n exited: $(cat "$dir/$n/shunt.log")"
    sleep 0.1
  done
done
# Both keepalived start once both shunts answer, so the first election is not lost to a track
# script that failed only because shunt was still starting. -n: no daemon (this script keeps
# its pid); -l -D: a detailed log on stderr; pid files of its own, not /run's.
for n in lb1 lb2; do
  d=$dir/$n
  start "$n" keepalived keepalived -n -l -D --vrrp -f "$d/keepalived.conf" -p "$d/keepalived-main.pid" -r "$d/vrrp.pid"
done

# ---- ready: the client gets answers through every VIP ----
vips=("$vip")
[ "$mode" = active-active ] && vips+=("$vip_b")
for v in "${vips[@]}"; do
  for _ in $(seq 300); do
    in_ns client curl -sf -m 1 -o /dev/null "http://$v/" && continue 2
    sleep 0.1
  done
  die "the VIP $v did not answer within 30 s (logs: $dir)"
done

cat <<MSG

  A pair of balancers behind a virtual IP ($mode, balance $balance; namespaces $prefix-*):

    curl             ip netns exec $prefix-client curl http://$vip/
    who has the VIP  ip -n $prefix-lb1 -br addr show eth0; ip -n $prefix-lb2 -br addr show eth0
    status           ip netns exec $prefix-lb1 curl -s http://$admin/status
    logs             $dir/lb1/ (shunt.log, keepalived.log)

  Failovers to try (watch with: ip netns exec $prefix-client sh -c 'while curl -s -m 1 http://$vip/; do sleep 0.1; done'):

    kill -9 \$(cat $dir/lb1/shunt.pid)                      lb1's shunt dies
    ip -n $prefix-lb1 link set eth0 down                   lb1 is cut off (and up again: it stays backup)
    ip -n $prefix-lb1 route add prohibit ${addr[web1]}; ip -n $prefix-lb1 route add prohibit ${addr[web2]}
                                                           lb1 loses its servers

  Ctrl-C stops every process and removes the namespaces.

MSG
say "ready"

sleep infinity &
sleeper=$!
wait "$sleeper" || true
