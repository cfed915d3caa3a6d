# shunt — build, run, test. Everything a fresh Debian machine needs is installed by the targets
# themselves (scripts/install-deps.sh, as root), so `make run` and `make test` work on a new box.

CARGO ?= cargo
# rustup installs cargo in ~/.cargo/bin, which a non-login shell (CI, sudo) may not have on PATH.
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: all build run test deps lint fmt bench bench-quick fuzz clean

all: build

build:
	$(CARGO) build --release

run:
	scripts/run-demo.sh

deps:
	scripts/install-deps.sh

# The integration tests run target/release/shunt and the examples (SHUNT_BIN overrides the path),
# so build those first, then run every test even when one fails. The cargo test fallback takes
# --tests to run what nextest runs (unit + integration, no doctests): a trailing doctest summary of
# "0 passed" would otherwise be the run's last word.
test: deps
	$(CARGO) build --release --bins --examples
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		echo "$(CARGO) nextest run --cargo-profile test-release --no-fail-fast"; \
		$(CARGO) nextest run --cargo-profile test-release --no-fail-fast; \
	else \
		echo "cargo-nextest not found: falling back to cargo test"; \
		echo "$(CARGO) test --profile test-release --no-fail-fast --tests"; \
		$(CARGO) test --profile test-release --no-fail-fast --tests; \
	fi

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

bench:
	@test -x scripts/bench.sh || { echo "make bench: scripts/bench.sh does not exist yet" >&2; exit 1; }
	scripts/bench.sh

bench-quick:
	@test -x scripts/bench.sh || { echo "make bench-quick: scripts/bench.sh does not exist yet" >&2; exit 1; }
	scripts/bench.sh --quick

# cargo-fuzz needs nightly-only rustc flags (sanitizers); RUSTC_BOOTSTRAP=1 lets the stable
# toolchain take them. Each target runs FUZZ_SECS seconds on its corpus in fuzz/corpus/<target>/
# (new finds are added there; `cargo fuzz cmin` shrinks it before a commit); a crash stops the run
# with the input in fuzz/artifacts/<target>/. The corpora are also replayed by `make test`
# (tests/fuzz_corpus.rs), which needs none of this.
FUZZ_SECS ?= 60
FUZZ_TARGETS ?= conf probe_reply admin_request upgrade_frame client_hello proxy_header

fuzz:
	@$(CARGO) fuzz --version >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	@set -e; for t in $(FUZZ_TARGETS); do \
		max_len=4096; [ $$t = conf ] && max_len=8192; [ $$t = admin_request ] && max_len=12288; [ $$t = client_hello ] && max_len=20000; \
		echo "== fuzz $$t for $(FUZZ_SECS)s"; \
		RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $$t -- -max_total_time=$(FUZZ_SECS) -max_len=$$max_len \
			-timeout=10 -print_final_stats=1; \
	done

clean:
	$(CARGO) clean
