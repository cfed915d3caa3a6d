//! scripts/bench.py cannot rot between the rare real benchmark runs: `bench.py --dry-run --all`
//! builds every candidate's config and has the real tools check it, feeds the wrk, iperf3 and
//! strace parsers known outputs and compares every number, and renders the reports from
//! synthetic results (scripts/bench/dryrun.py), all in a few seconds and without load.
//!
//! The test holds the dry run to naming every check it ran, so a dry run that silently checked
//! nothing fails too. A check may say `skip` only where its tool is truly absent: with haproxy
//! and nginx installed (`make test` installs them), their config checks must have run.
//!
//! Standard library only; the shunt checked is the one cargo built for this test (or `$SHUNT_BIN`).

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The dry run takes about a second; this only bounds a hang.
const TIMEOUT: Duration = Duration::from_secs(120);

const NGINX: &str = "/usr/sbin/nginx";
const HAPROXY: &str = "/usr/sbin/haproxy";
const STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

/// The shunt the dry runs check: the one cargo built for this test, or `$SHUNT_BIN`.
fn shunt_bin() -> std::ffi::OsString {
    std::env::var_os("SHUNT_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_shunt").into())
}

/// Runs `python3 scripts/bench.py ARGS` with `SHUNT_ALT_BIN` set to `alt` (or unset): (exit
/// code, stdout, stderr). Killed after TIMEOUT.
fn bench_py_alt(args: &[&str], alt: Option<&std::ffi::OsStr>) -> (Option<i32>, String, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut command = Command::new("python3");
    command.arg(root.join("scripts/bench.py")).args(args).env("SHUNT_BIN", shunt_bin());
    match alt {
        Some(alt) => command.env("SHUNT_ALT_BIN", alt),
        None => command.env_remove("SHUNT_ALT_BIN"),
    };
    let mut child = command
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3 scripts/bench.py (is python3 installed? scripts/install-deps.sh installs it)");
    // Both pipes drained on their own threads, so a chatty child cannot block on a full pipe.
    let drain = |mut r: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut s = String::new();
            r.read_to_string(&mut s).expect("read bench.py output");
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout")));
    let err = drain(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for bench.py") {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().expect("kill bench.py");
            child.wait().expect("reap bench.py");
            panic!("bench.py {} did not finish within {TIMEOUT:?}", args.join(" "));
        }
        thread::sleep(Duration::from_millis(50));
    };
    (status.code(), out.join().expect("stdout reader"), err.join().expect("stderr reader"))
}

fn bench_py(args: &[&str]) -> (Option<i32>, String, String) {
    bench_py_alt(args, None)
}

/// The status word of the dry run's line for check `name` ("ok", "skip", "FAIL"), if any. A line
/// reads `dry-run: STATUS NAME: detail`.
fn status_of<'a>(stdout: &'a str, name: &str) -> Option<&'a str> {
    stdout.lines().find_map(|line| {
        let (status, rest) = line.strip_prefix("dry-run: ")?.split_once(' ')?;
        let rest = rest.trim_start().strip_prefix(name)?;
        (rest.is_empty() || rest.starts_with(':')).then_some(status)
    })
}

#[test]
fn dry_run_checks_configs_parsers_and_reports() {
    let (code, stdout, stderr) = bench_py(&["--dry-run", "--all"]);
    let shown = format!("--- stdout\n{stdout}--- stderr\n{stderr}");
    assert_eq!(code, Some(0), "bench.py --dry-run --all failed\n{shown}");

    let installed = |paths: &[&str]| paths.iter().all(|p| Path::new(p).exists());
    // (check, whether it must have run rather than been skipped)
    let mut checks: Vec<(String, bool)> = vec![
        ("nginx backend conf (nginx-backend.conf.in)".into(), installed(&[NGINX])),
        ("config shunt, workers 1".into(), true),
        ("config shunt, workers 2".into(), true),
    ];
    for (name, workers) in [("haproxy", 1), ("haproxy-splice-auto", 1), ("haproxy-splice", 1), ("haproxy", 2)] {
        checks.push((format!("config {name}, workers {workers}"), installed(&[HAPROXY])));
    }
    for workers in [1, 2] {
        checks.push((format!("config nginx, workers {workers}"), installed(&[NGINX, STREAM_MODULE])));
    }
    // No tool needed: these always run.
    for name in [
        "wrk parser",
        "iperf3 parser",
        "strace parser",
        "number formatting",
        "procfs accounting",
        "results.md and results.json",
        "scaling.md and scaling.json",
    ] {
        checks.push((name.into(), true));
    }
    // These need strace, taskset and a second CPU, lscpu, gnuplot: run or skipped, never silent.
    for name in [
        "strace parser on this machine's strace",
        "hold helper (bench.py --hold-helper)",
        "machine facts",
        "scaling.png",
    ] {
        checks.push((name.into(), false));
    }

    for (name, must_run) in &checks {
        match status_of(&stdout, name) {
            Some("ok") => {}
            Some("skip") if !must_run => {}
            Some(status) => panic!("check {name:?} says {status}, expected ok\n{shown}"),
            None => panic!("the dry run does not name the check {name:?}\n{shown}"),
        }
    }
    assert!(stdout.lines().any(|l| l.starts_with("dry-run: ") && l.contains(" 0 failed")), "no summary line\n{shown}");
}

/// `shunt-alt` (a second build, for A/B runs of two commits) names the variable it needs when it
/// is unset, and with it set has that binary check its config like the main build.
#[test]
fn shunt_alt_candidate_needs_and_checks_its_binary() {
    let (code, stdout, stderr) = bench_py_alt(&["--dry-run", "--only", "shunt-alt"], None);
    assert_ne!(code, Some(0), "shunt-alt without SHUNT_ALT_BIN ran\n{stdout}{stderr}");
    assert!(stderr.contains("SHUNT_ALT_BIN"), "the error does not name SHUNT_ALT_BIN\n{stderr}");

    // A link of its own, so the check's line shows which binary ran it.
    let dir = std::env::temp_dir().join(format!("shunt-bench-alt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a temp dir");
    let alt = dir.join("shunt-other-build");
    let _ = std::fs::remove_file(&alt);
    std::os::unix::fs::symlink(shunt_bin(), &alt).expect("link the alt build");
    let (code, stdout, stderr) = bench_py_alt(&["--dry-run", "--only", "shunt,shunt-alt"], Some(alt.as_os_str()));
    std::fs::remove_dir_all(&dir).expect("remove the temp dir");
    assert_eq!(code, Some(0), "dry run with SHUNT_ALT_BIN failed\n{stdout}{stderr}");
    assert_eq!(status_of(&stdout, "config shunt-alt, workers 1"), Some("ok"), "{stdout}");
    let checked_by = |line: &&str| line.contains("config shunt-alt") && line.contains("shunt-other-build --check");
    assert!(stdout.lines().any(|l| checked_by(&l)), "shunt-alt's config not checked by its own binary\n{stdout}");
}
