//! Where the programs under test are: the crate's root, cargo's target directory, the shunt
//! binary and the cargo examples. The tests never build anything themselves (`make test` builds
//! first): a test that invoked cargo would fight the outer cargo for the build lock. The two
//! that run a make target which builds (`make run`, `make install`) find the build done, as
//! long as they call it with [`plain_cargo_env`].

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Takes out of `cmd`'s environment what cargo sets for the crate under test (`CARGO`,
/// `CARGO_PKG_*`, `CARGO_MANIFEST_*`, `CARGO_BIN_EXE_*`, ...), and nextest's own variables. A
/// build run with them is not the build `make test` made: build scripts that watch them run
/// again and shunt is rebuilt, replacing target/release binaries that other tests are running
/// (and the next plain build rebuilds once more). `CARGO_HOME` and `CARGO_TARGET_DIR` stay:
/// they say where things are.
pub fn plain_cargo_env(cmd: &mut Command) -> &mut Command {
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        let keep = matches!(name, "CARGO_HOME" | "CARGO_TARGET_DIR");
        if !keep
            && (name == "CARGO"
                || name.starts_with("CARGO_")
                || name.starts_with("NEXTEST")
                || name == "RUSTUP_TOOLCHAIN")
        {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// `bash scripts/NAME` as a test runs a demo script: without cargo's variables, without
/// `RUST_LOG`, no stdin, stdout and stderr into `log`, in a process group of its own (so a
/// test can send it a terminal's Ctrl-C). Add arguments and environment, then spawn.
pub fn demo_script(name: &str, log: &Path) -> Command {
    let out = std::fs::File::create(log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
    let mut cmd = Command::new("bash");
    plain_cargo_env(&mut cmd)
        .arg(repo_root().join("scripts").join(name))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("clone the log file"))
        .stderr(out)
        .process_group(0);
    cmd
}

/// The crate's root (where Cargo.toml is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Cargo's target directory, honouring `CARGO_TARGET_DIR` as cargo does.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                repo_root().join(d)
            }
        }
        None => repo_root().join("target"),
    }
}

/// The shunt binary under test: `$SHUNT_BIN`, else target/release/shunt, else target/debug/shunt.
pub fn shunt_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SHUNT_BIN") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "SHUNT_BIN={} does not exist", p.display());
        return p;
    }
    for profile in ["release", "debug"] {
        let p = target_dir().join(profile).join("shunt");
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "no shunt binary under {}/{{release,debug}}: run cargo build --release first \
         (make test does), or set SHUNT_BIN",
        target_dir().display()
    );
}

/// A cargo example built with the crate, e.g. `example_bin("demo_backend")`.
pub fn example_bin(name: &str) -> PathBuf {
    for profile in ["release", "debug"] {
        let p = target_dir().join(profile).join("examples").join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("example {name} not built: run cargo build --release --examples first (make test does)");
}
