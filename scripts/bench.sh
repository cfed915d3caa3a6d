#!/usr/bin/env bash
# Benchmark shunt against HAProxy (mode tcp; no splice, splice-auto, forced splice), nginx stream
# and a direct connection: installs the tools, builds shunt, then runs scripts/bench.py.
#
#   scripts/bench.sh [--quick] [--rounds N] [--only shunt,haproxy,...] [--scaling | --all] [--out DIR]
#
# --quick takes about 2 minutes; the default run (3 rounds) about 20. Results go to target/bench/
# (results.md, results.json; scaling.md, scaling.json, scaling.png with --scaling or --all).
# Every option is described by `scripts/bench.py --help`.
set -euo pipefail

cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

case " $* " in
  *" -h "*|*" --help "*) exec python3 scripts/bench.py --help ;;
esac

# haproxy, nginx + stream module, wrk, iperf3, strace (and the rest of what the tests need).
scripts/install-deps.sh

# gnuplot draws the scaling plot (a PNG); without it bench.py skips the plot.
if ! command -v gnuplot >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "bench: installing gnuplot-nox for the scaling plot" >&2
    { DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=300 update &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        -o DPkg::Lock::Timeout=300 gnuplot-nox; } >&2 ||
      echo "bench: could not install gnuplot-nox; there will be no scaling plot" >&2
  else
    echo "bench: gnuplot missing (not root, not installing); there will be no scaling plot" >&2
  fi
fi

cargo build --release

# The exact command, for the report's header.
export BENCH_COMMAND="scripts/bench.sh${*:+ $*}"
exec python3 scripts/bench.py "$@"
