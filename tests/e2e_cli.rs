//! End-to-end tests of the command line (DESIGN.md, "Command line"): the release binary run as
//! a separate process, its exit codes, and what it prints.

mod common;

use common::*;
use std::fs;
use std::net::TcpListener;
use std::process::{Command, Output};
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

/// Runs the shunt binary with `args` (no RUST_LOG from the developer's shell).
fn shunt(args: &[&str]) -> Output {
    Command::new(shunt_bin()).args(args).env_remove("RUST_LOG").output().expect("run shunt")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn no_panic(out: &Output) {
    let (so, se) = (text(&out.stdout), text(&out.stderr));
    assert!(!se.contains("panicked") && !so.contains("panicked"), "shunt panicked:\n{se}{so}");
    assert!(!se.contains("RUST_BACKTRACE"), "shunt panicked:\n{se}");
}

/// The names of the `service` directives of a conf file, in order.
fn service_names(conf: &str) -> Vec<String> {
    conf.lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            match (w.next(), w.next()) {
                (Some("service"), Some(name)) => Some(name.to_string()),
                _ => None,
            }
        })
        .collect()
}

/// `--check` on a shipped conf: exit 0, nothing on stderr, exactly one line per service that
/// names it, in file order.
fn check_shipped(rel: &str) {
    let path = repo_root().join(rel);
    let conf = fs::read_to_string(&path).unwrap();
    let names = service_names(&conf);
    assert!(!names.is_empty(), "{rel} has no service?");
    let out = shunt(&["--check", "-c", path.to_str().unwrap()]);
    no_panic(&out);
    let (so, se) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "--check {rel}: stdout:\n{so}\nstderr:\n{se}");
    let mut per_service = Vec::new();
    for name in &names {
        let lines: Vec<&str> =
            so.lines().filter(|l| l.split_whitespace().any(|w| w.trim_matches(':') == name)).collect();
        assert_eq!(lines.len(), 1, "--check {rel}: want one line naming service {name:?}, got {lines:?}\n{so}");
        per_service.push(so.lines().position(|l| l == lines[0]).unwrap());
    }
    assert!(per_service.windows(2).all(|w| w[0] < w[1]), "--check {rel}: services not in file order:\n{so}");
    let service_lines = so.lines().filter(|l| l.trim_start().starts_with("service")).count();
    assert_eq!(service_lines, names.len(), "--check {rel}: one line per service:\n{so}");
    assert!(se.trim().is_empty(), "--check {rel} wrote to stderr:\n{se}");
}

#[test]
fn version_prints_name_and_version() {
    for flag in ["--version", "-V"] {
        let out = shunt(&[flag]);
        no_panic(&out);
        assert_eq!(out.status.code(), Some(0), "{flag}");
        let so = text(&out.stdout);
        assert!(so.starts_with("shunt "), "{flag}: {so:?}");
        assert!(so.contains(env!("CARGO_PKG_VERSION")), "{flag}: {so:?}");
    }
}

#[test]
fn help_prints_usage_with_every_flag() {
    for flag in ["--help", "-h"] {
        let out = shunt(&[flag]);
        no_panic(&out);
        assert_eq!(out.status.code(), Some(0), "{flag}");
        let so = text(&out.stdout);
        for word in ["usage", "-c", "--check", "--version", "--help"] {
            assert!(so.to_lowercase().contains(word), "{flag}: no {word:?} in:\n{so}");
        }
    }
}

#[test]
fn check_accepts_shunt_conf() {
    check_shipped("conf/shunt.conf");
}

#[test]
fn check_accepts_example_conf() {
    check_shipped("conf/example.conf");
}

#[test]
fn check_reports_every_error_with_file_and_line() {
    let dir = TempDir::new("bad");
    let path = dir.join("bad.conf");
    // Errors on lines 4, 8 and 10; every other line is valid.
    let conf = "\
# a conf with three mistakes
drain_timeout 5s
log info
frobnicate 12
service web
  bind 127.0.0.1:18080
  server a 127.0.0.1:19001
  server b 127.0.0.1:notaport
  server c 127.0.0.1:19003
  timeout connect forever
  check tcp interval 1s
";
    fs::write(&path, conf).unwrap();
    let out = shunt(&["--check", "-c", path.to_str().unwrap()]);
    no_panic(&out);
    let se = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{se}");
    for line in [4, 8, 10] {
        let want = format!("{}:{line}:", path.display());
        assert!(se.contains(&want), "no error at {want} in:\n{se}");
    }
    for line in [1, 2, 3, 6, 7, 9, 11] {
        let unwanted = format!("{}:{line}:", path.display());
        assert!(!se.contains(&unwanted), "an error at valid line {line}:\n{se}");
    }
    let error_lines = se.lines().filter(|l| l.starts_with(&format!("{}:", path.display()))).count();
    assert!(error_lines >= 3, "one line per error:\n{se}");
    assert!(!text(&out.stdout).contains("configuration ok"), "{}", text(&out.stdout));
}

#[test]
fn check_missing_file_says_so() {
    let dir = TempDir::new("missing");
    let path = dir.join("no-such.conf");
    let out = shunt(&["--check", "-c", path.to_str().unwrap()]);
    no_panic(&out);
    let se = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{se}");
    assert!(se.contains(&path.display().to_string()), "the message names the file:\n{se}");
    let lower = se.to_lowercase();
    assert!(
        ["no such file", "not found", "cannot read", "can't read", "cannot open", "does not exist"]
            .iter()
            .any(|w| lower.contains(w)),
        "the message says the file is missing:\n{se}"
    );
}

#[test]
fn running_with_a_missing_file_exits_1() {
    let dir = TempDir::new("missing");
    let path = dir.join("no-such.conf");
    let mut cmd = Command::new(shunt_bin());
    cmd.arg("-c").arg(&path).env_remove("RUST_LOG");
    let mut p = Proc::spawn("shunt", cmd, &dir.join("shunt.log"));
    let st = p.wait_timeout(T).expect("shunt exits on a missing conf");
    assert_eq!(st.code(), Some(1), "{}", p.log());
    assert!(p.log().contains(&path.display().to_string()), "{}", p.log());
}

fn garbage(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    pattern_fill(seed, 0, &mut v);
    v
}

#[test]
fn check_binary_garbage_fails_without_panic() {
    let dir = TempDir::new("garbage");
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("random.conf", garbage(64 * 1024, 7)),
        ("elf.conf", fs::read(shunt_bin()).unwrap()[..256 * 1024].to_vec()),
        ("nul.conf", vec![0u8; 1000]),
    ];
    // Text that looks almost right: invalid UTF-8 in a directive, a lone quote, NULs inside
    // a line, a very long line, an unfinished escape.
    let mut almost = b"service w\n  bind 127.0.0.1:1\xff\xfe\n  server a \"127.0.0.1:2\n".to_vec();
    almost.extend_from_slice(b"  check send \"\\x\" expect \"\\\n\0\0server\0b\n");
    almost.extend_from_slice(&vec![b'x'; 1 << 20]);
    almost.extend_from_slice(b"\n  timeout connect 99999999999999999999999ms\n  weight -1\n\"\n");
    cases.push(("almost.conf", almost));
    for (name, bytes) in cases {
        let path = dir.join(name);
        fs::write(&path, bytes).unwrap();
        let out = shunt(&["--check", "-c", path.to_str().unwrap()]);
        no_panic(&out);
        let se = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: stderr:\n{}", &se[..se.len().min(2000)]);
        assert!(se.contains(&path.display().to_string()), "{name}: errors name the file:\n{se:.2000}");
    }
}

#[test]
fn port_in_use_exits_2_and_names_the_address() {
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap();
    // The first bind (port 0: it cannot fail) comes first: the failure must name the busy one,
    // not the first one. Nothing connects to the server: shunt exits before it could.
    let conf =
        format!("drain_timeout 1s\nservice web\n  bind 127.0.0.1:0\n  bind {busy_addr}\n  server a 127.0.0.1:9\n");
    let mut s = spawn_shunt_with(&shunt_bin(), &conf, &[]);
    let st = s.wait_timeout(T).expect("shunt exits when a port is in use");
    let log = s.log();
    assert_eq!(st.code(), Some(2), "{}; log:\n{log}", Proc::describe(st));
    assert!(log.contains(&busy_addr.to_string()), "the message names {busy_addr}:\n{log}");
    assert!(!log.contains("panicked"), "{log}");
    // It failed before it was up: no start-up line claims a listener.
    assert_eq!(Listening::parse(&log), Listening::default(), "{log}");
    drop(busy);
}

#[test]
fn check_does_not_bind() {
    // --check validates only: a port in use is not its business (nor is a server's address:
    // nothing connects to 127.0.0.1:9).
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let conf = format!("service web\n  bind {}\n  server a 127.0.0.1:9\n", busy.local_addr().unwrap());
    let (code, so, se) = shunt_check(&conf);
    assert_eq!(code, 0, "stdout:\n{so}\nstderr:\n{se}");
    assert_eq!(so.lines().filter(|l| l.contains("web")).count(), 1, "{so}");
}

#[test]
fn check_catches_a_bind_conflict_before_run_time() {
    // The same port in two services (`*:P` covers 127.0.0.1:P): a conf error (exit 1, on the
    // second bind's line), not a bind failure at start (exit 2). --check binds nothing, so any
    // fixed port does.
    let conf = "service a\n  bind *:18080\n  server x 127.0.0.1:19001\n\
                service b\n  bind 127.0.0.1:18080\n  server y 127.0.0.1:19002\n";
    let (code, so, se) = shunt_check(conf);
    assert_eq!(code, 1, "stdout:\n{so}\nstderr:\n{se}");
    assert!(se.contains("shunt.conf:5:"), "the error is on the second bind's line:\n{se}");
}

#[test]
fn unknown_argument_exits_1() {
    for args in [&["--bogus"][..], &["-x"], &["--check", "--frobnicate"], &["-c"]] {
        let out = shunt(args);
        no_panic(&out);
        let se = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: stderr:\n{se}");
        assert!(!se.trim().is_empty(), "{args:?}: says what is wrong");
    }
    let se = text(&shunt(&["--bogus"]).stderr);
    assert!(se.contains("--bogus"), "names the argument:\n{se}");
}
