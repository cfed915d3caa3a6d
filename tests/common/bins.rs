//! Where the programs under test are: the crate's root, cargo's target directory, the shunt
//! binary and the cargo examples. The tests never build anything themselves (`make test` builds
//! first): a test that invoked cargo would fight the outer cargo for the build lock.

use std::path::PathBuf;

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
