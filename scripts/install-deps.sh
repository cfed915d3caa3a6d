#!/usr/bin/env bash
# Install the Debian packages that shunt's build and tests need.
#
#   scripts/install-deps.sh            everything `make test` needs (build tools + test peers)
#   scripts/install-deps.sh --build    only what building and `make run` need
#
# Idempotent and fast when everything is present: each tool is looked up with `command -v` first and
# apt-get (including `apt-get update`) runs only when something is missing. Packages are installed
# without starting their system services: the tests start their own nginx/redis/haproxy on private
# ports, and a distribution nginx left on port 80 would only get in the way.
set -euo pipefail

mode=all
case "${1:-}" in
  "") ;;
  --build) mode=build ;;
  -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
  *) echo "install-deps.sh: unknown argument: $1 (try --help)" >&2; exit 2 ;;
esac

log() { echo "install-deps: $*" >&2; }

# `command -v`, plus the sbin directories, which a non-login root shell may lack on its PATH.
have() {
  command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]
}

missing=()
need() { # need PACKAGE: queue it once
  local p
  for p in "${missing[@]+"${missing[@]}"}"; do [ "$p" = "$1" ] && return 0; done
  missing+=("$1")
}
need_cmd() { have "$1" || need "$2"; } # need_cmd COMMAND PACKAGE

# ---- build tools ------------------------------------------------------------------------------
# The Rust toolchain itself comes from rustup, not apt: Debian's cargo is older than our
# rust-version. We cannot install it here, only say so clearly.
export PATH="$HOME/.cargo/bin:$PATH"
if ! have cargo; then
  log "cargo not found. Install Rust with rustup (https://rustup.rs), minimal profile plus the"
  log "rustfmt and clippy components, then re-run. Looked on PATH and in ~/.cargo/bin."
  exit 1
fi
need_cmd cc build-essential # the linker rustc calls, and C compiler for crates that build C
need_cmd curl curl          # make run tells the user to curl; tests use it as a client

if [ "$mode" = all ]; then
  # ---- peers, clients and tools for the integration/end-to-end tests --------------------------
  need_cmd nginx nginx
  # The stream module (ngx_stream) is a separate package: tests compare against nginx as an L4 proxy.
  [ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || need libnginx-mod-stream
  need_cmd wrk wrk
  need_cmd iperf3 iperf3
  need_cmd ip iproute2 # ip netns, veth, tc
  need_cmd iptables iptables
  need_cmd strace strace
  need_cmd pgrep procps
  need_cmd ps procps
  need_cmd sysctl procps
  need_cmd killall psmisc
  need_cmd fuser psmisc
  # Tests rely on OpenBSD netcat's flags (-N, -q, -U); netcat-traditional's `nc` lacks them.
  if ! have nc || ! nc -h 2>&1 | grep -qi openbsd; then need netcat-openbsd; fi
  need_cmd redis-server redis-server
  need_cmd redis-cli redis-tools
  need_cmd haproxy haproxy
  need_cmd python3 python3
  need_cmd promtool prometheus # promtool validates /metrics and the alert rules
  need_cmd chromium chromium   # headless check of the status page
  need_cmd openssl openssl     # test certificates, and s_client as a TLS client
  need_cmd testssl testssl.sh  # audits shunt's TLS listener (no HIGH or CRITICAL finding)
  need_cmd systemd-analyze systemd # rates conf/shunt.service's hardening (security --offline)
  need_cmd setpriv util-linux  # runs a test's shunt as an unprivileged user
  need_cmd nft nftables        # conf/nftables.conf, loaded inside network namespaces
  need_cmd keepalived keepalived # conf/keepalived*.conf pass keepalived's config test
  # A PostgreSQL server (initdb, postgres, pg_basebackup, pgbench) and psql, for check pgsql.
  ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need postgresql
  need_cmd psql postgresql-client
fi

if [ "${#missing[@]}" -eq 0 ]; then
  log "all Debian packages present"
else
  log "installing: ${missing[*]}"
  SUDO=()
  if [ "$(id -u)" -ne 0 ]; then
    if have sudo; then SUDO=(sudo); else
      log "must run as root (or with sudo available) to install: ${missing[*]}"
      exit 1
    fi
  fi

  # Keep postinst scripts from starting services: invoke-rc.d and deb-systemd-invoke both ask
  # /usr/sbin/policy-rc.d, and exit code 101 means "action forbidden". An existing policy file
  # (container images ship one) is left exactly as it is.
  policy=/usr/sbin/policy-rc.d
  made_policy=0
  if [ ! -e "$policy" ]; then
    "${SUDO[@]}" sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"
    made_policy=1
  fi
  cleanup_policy() { if [ "$made_policy" = 1 ]; then "${SUDO[@]}" rm -f "$policy"; fi; }
  trap cleanup_policy EXIT

  export DEBIAN_FRONTEND=noninteractive
  apt_opts=(-y -q --no-install-recommends
    -o DPkg::Lock::Timeout=300
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=300 update
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install "${apt_opts[@]}" "${missing[@]}"

  # Belt and braces for machines where the policy file was not honoured: stop and disable the
  # services this run installed, so nothing (notably nginx on :80) keeps running or starts at boot.
  for svc in nginx redis-server haproxy iperf3 prometheus; do
    case " ${missing[*]} " in *" $svc "*) ;; *) continue ;; esac
    "${SUDO[@]}" service "$svc" stop >/dev/null 2>&1 || true
    if have systemctl; then "${SUDO[@]}" systemctl disable --quiet "$svc" >/dev/null 2>&1 || true; fi
    if have update-rc.d; then "${SUDO[@]}" update-rc.d "$svc" disable >/dev/null 2>&1 || true; fi
  done
  # If a daemon still runs anyway, end it through its pidfile (never by name: that could hit a
  # test's own nginx).
  for pidfile in /run/nginx.pid /run/redis/redis-server.pid /run/haproxy.pid; do
    [ -s "$pidfile" ] || continue
    pid=$(cat "$pidfile" 2>/dev/null || true)
    case "$pid" in ''|*[!0-9]*) continue ;; esac
    if kill -0 "$pid" 2>/dev/null; then
      log "stopping service left running by its package (pid $pid from $pidfile)"
      "${SUDO[@]}" kill "$pid" 2>/dev/null || true
    fi
  done
  log "done"
fi

# ---- cargo-nextest (normally preinstalled; `make test` falls back to `cargo test` without it) ---
if [ "$mode" = all ] && ! cargo nextest --version >/dev/null 2>&1; then
  log "cargo-nextest missing: building it from crates.io (takes several minutes)"
  if ! cargo install cargo-nextest --locked; then
    log "WARNING: could not install cargo-nextest; make test will use cargo test instead"
  fi
fi
exit 0
