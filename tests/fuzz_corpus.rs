//! The fuzz corpora as a regression suite: every file in `fuzz/corpus/<target>/` goes through the
//! very check its cargo-fuzz target runs (`fuzz/src/lib.rs`, included here), so `make test`
//! replays every input the fuzzer found interesting without needing cargo-fuzz or nightly flags.

#[path = "../fuzz/src/lib.rs"]
mod checks;

use std::path::{Path, PathBuf};

/// Runs `check` on every file of one target's corpus; fails naming each file that panicked.
fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no corpus", dir.display());
    let failed: Vec<String> = files
        .iter()
        .filter(|path| {
            let bytes = std::fs::read(path).expect("read corpus file");
            std::panic::catch_unwind(|| check(&bytes)).is_err()
        })
        .map(|p| p.display().to_string())
        .collect();
    assert!(failed.is_empty(), "{} of {} inputs failed:\n{}", failed.len(), files.len(), failed.join("\n"));
}

#[test]
fn conf_corpus_replays_clean() {
    replay("conf", checks::conf);
}

#[test]
fn probe_reply_corpus_replays_clean() {
    replay("probe_reply", checks::probe_reply);
}

#[test]
fn admin_request_corpus_replays_clean() {
    replay("admin_request", checks::admin_request);
}

#[test]
fn upgrade_frame_corpus_replays_clean() {
    replay("upgrade_frame", checks::upgrade_frame);
}

#[test]
fn client_hello_corpus_replays_clean() {
    replay("client_hello", checks::client_hello);
}

#[test]
fn proxy_header_corpus_replays_clean() {
    replay("proxy_header", checks::proxy_header);
}

#[test]
fn redis_reply_corpus_replays_clean() {
    replay("redis_reply", checks::redis_reply);
}

#[test]
fn pgsql_reply_corpus_replays_clean() {
    replay("pgsql_reply", checks::pgsql_reply);
}
