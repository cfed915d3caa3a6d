# shunt — build, run, test. Everything a fresh Debian machine needs is installed by the targets
# themselves (scripts/install-deps.sh, as root), so `make run` and `make test` work on a new box.

CARGO ?= cargo
# rustup installs cargo in ~/.cargo/bin, which a non-login shell (CI, sudo) may not have on PATH.
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: all build run site ha test deps lint fmt bench bench-quick fuzz clean install uninstall

all: build

build:
	$(CARGO) build --release

run:
	scripts/run-demo.sh

# The seed's whole picture on loopback: two web servers, a PostgreSQL primary and standby, a
# Redis master and replica, shunt in front of all of them (prints the addresses and a failover).
site:
	scripts/site-demo.sh

# No single balancer: two shunt nodes and keepalived behind a virtual IP, with a client and two
# web servers, in network namespaces (root); prints what to curl and how to cause a failover.
# HA_ARGS: e.g. --active-active, --balance maglev.
ha:
	scripts/ha-demo.sh $(HA_ARGS)

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

# Installs as a distribution package would: the binary, the systemd unit (its paths set to
# BINDIR and SYSCONFDIR), the sysusers.d entry for the `shunt` user it runs as, and
# $(SYSCONFDIR)/shunt/shunt.conf from conf/example.conf unless one exists (never overwritten).
# DESTDIR stages everything under another root for packaging; without it the user is created
# and systemd told. `make uninstall` removes the same files; a shunt.conf that differs from the
# example (the operator's) stays, as a package's modified conffile does.
PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
SYSCONFDIR ?= /etc
UNITDIR ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
SHUNT_BUILT ?= target/release/shunt

install: build
	install -D -m 0755 $(SHUNT_BUILT) $(DESTDIR)$(BINDIR)/shunt
	install -d -m 0755 $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)$(SYSCONFDIR)/shunt
	sed -e 's|/usr/local/bin/shunt|$(BINDIR)/shunt|g' -e 's|/etc/shunt/|$(SYSCONFDIR)/shunt/|g' \
		conf/shunt.service > $(DESTDIR)$(UNITDIR)/shunt.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/shunt.service
	install -m 0644 conf/shunt.sysusers $(DESTDIR)$(SYSUSERSDIR)/shunt.conf
	@if [ -e $(DESTDIR)$(SYSCONFDIR)/shunt/shunt.conf ]; then \
		echo "$(DESTDIR)$(SYSCONFDIR)/shunt/shunt.conf exists: left as it is"; \
	else \
		install -m 0644 conf/example.conf $(DESTDIR)$(SYSCONFDIR)/shunt/shunt.conf; \
	fi
	@if [ -z "$(DESTDIR)" ]; then \
		if command -v systemd-sysusers >/dev/null; then systemd-sysusers $(SYSUSERSDIR)/shunt.conf; fi; \
		if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi; \
	fi

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/shunt $(DESTDIR)$(UNITDIR)/shunt.service $(DESTDIR)$(SYSUSERSDIR)/shunt.conf
	@if cmp -s conf/example.conf $(DESTDIR)$(SYSCONFDIR)/shunt/shunt.conf; then \
		rm -f $(DESTDIR)$(SYSCONFDIR)/shunt/shunt.conf; \
	elif [ -e $(DESTDIR)$(SYSCONFDIR)/shunt/shunt.conf ]; then \
		echo "$(DESTDIR)$(SYSCONFDIR)/shunt/shunt.conf was changed: kept"; \
	fi
	-rmdir $(DESTDIR)$(SYSCONFDIR)/shunt 2>/dev/null
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi

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
FUZZ_TARGETS ?= conf probe_reply admin_request upgrade_frame client_hello proxy_header redis_reply pgsql_reply

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
