//! End-to-end tests with real nginx backends and real clients (curl, wrk) in front of the
//! release binary: weighted round robin, load with and without keep-alive, a server killed and
//! restarted, backup servers, HTTP health checks.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

/// One `curl` GET of `http://ADDR/`: the body, or curl's complaint.
fn curl(addr: SocketAddr) -> Result<String, String> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--connect-timeout", "5"])
        .arg(format!("http://{addr}/"))
        .output()
        .expect("run curl");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("curl: {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// `n` sequential curls; every one must succeed. Returns how many bodies each backend sent
/// (keyed by the nginx name) and the sequence of names.
fn curl_n(addr: SocketAddr, n: usize) -> (BTreeMap<String, usize>, Vec<String>) {
    let mut counts = BTreeMap::new();
    let mut seq = Vec::new();
    for i in 0..n {
        let body = curl(addr).unwrap_or_else(|e| panic!("request {i} of {n} failed: {e}"));
        let name = body.trim().to_string();
        *counts.entry(name.clone()).or_insert(0) += 1;
        seq.push(name);
    }
    (counts, seq)
}

fn count(counts: &BTreeMap<String, usize>, name: &str) -> usize {
    counts.get(name).copied().unwrap_or(0)
}

/// A shunt conf with one service `web` on 127.0.0.1:0; `servers` are `server` lines' tails
/// (`NAME ADDR [options]`), `extra` more service lines.
fn conf(servers: &[String], extra: &str) -> String {
    let mut c = "log info\ndrain_timeout 2s\nadmin 127.0.0.1:0\nservice web\n  bind 127.0.0.1:0\n".to_string();
    for s in servers {
        c.push_str(&format!("  server {s}\n"));
    }
    c.push_str(extra);
    c
}

#[test]
fn weighted_round_robin_with_curl_is_exact() {
    let a = Nginx::start("nginx-a");
    let b = Nginx::start("nginx-b");
    // Healthy servers that must get nothing: weight 0, and administratively disabled.
    let zero = Nginx::start("nginx-zero");
    let off = Nginx::start("nginx-off");
    let conf = conf(
        &[
            format!("a {} weight 1", a.addr),
            format!("zero {} weight 0", zero.addr),
            format!("b {} weight 2", b.addr),
            format!("off {} disabled", off.addr),
        ],
        "  check tcp interval 1s\n",
    );
    let shunt = start_shunt(&conf);
    let addr = shunt.addr("web");
    let (counts, seq) = curl_n(addr, 90);
    assert_eq!(count(&counts, "nginx-a"), 30, "{counts:?} {seq:?}");
    assert_eq!(count(&counts, "nginx-b"), 60, "{counts:?} {seq:?}");
    assert_eq!(counts.len(), 2, "only the two weighted backends' bodies: {counts:?}");
}

#[test]
fn wrk_parser_reads_errors() {
    let out = "Running 3s test @ http://127.0.0.1:1/\n  1 threads and 20 connections\n\
               \x20 1234 requests in 3.00s, 1.00MB read\n\
               \x20 Socket errors: connect 1, read 2, write 3, timeout 4\n\
               \x20 Non-2xx or 3xx responses: 5\nRequests/sec:    411.00\n";
    let r = parse_wrk(out);
    assert_eq!((r.requests, r.socket_errors, r.non_2xx), (1234, 10, 5));
    let clean = parse_wrk("  99 requests in 3.00s, 1.00MB read\nRequests/sec: 33\n");
    assert_eq!((clean.requests, clean.socket_errors, clean.non_2xx), (99, 0, 0));
}

fn run_wrk(addr: SocketAddr, close: bool) -> (WrkResult, String) {
    Wrk::start(addr, close, Duration::from_secs(3)).finish()
}

#[test]
fn wrk_with_and_without_keepalive_has_no_errors() {
    let a = Nginx::start("nginx-a");
    let b = Nginx::start("nginx-b");
    let conf = conf(&[format!("a {}", a.addr), format!("b {}", b.addr)], "  check tcp interval 1s\n");
    let mut shunt = start_shunt(&conf);
    let addr = shunt.addr("web");

    // New connection per request: thousands of sessions through the accept path.
    let (r, text) = run_wrk(addr, true);
    assert_eq!(r.socket_errors, 0, "Connection: close:\n{text}");
    assert_eq!(r.non_2xx, 0, "Connection: close:\n{text}");
    assert!(r.requests >= 300, "Connection: close: only {} requests:\n{text}", r.requests);
    // Every session of that run has ended and been logged before the next run starts.
    let first = shunt.wait_all_logged(T);
    let served_a = first.iter().filter(|x| x.server == "a").count();
    let served_b = first.iter().filter(|x| x.server == "b").count();
    assert!(served_a >= 100 && served_b >= 100, "both backends served: a={served_a} b={served_b}");
    let before = shunt.log_lines(" web/").len();

    // Keep-alive: 20 long connections, 10 per backend; each logs its line when wrk closes it.
    // (wrk also opens and closes one connection first, to test the address: it carries no
    // byte and is left out.)
    let (r, text) = run_wrk(addr, false);
    assert_eq!(r.socket_errors, 0, "keep-alive:\n{text}");
    assert_eq!(r.non_2xx, 0, "keep-alive:\n{text}");
    assert!(r.requests >= 1000, "keep-alive: only {} requests:\n{text}", r.requests);
    let carried = |l: &String| !l.contains(" up=0 down=0 ");
    let mut ka = Vec::new();
    wait_for(T, "20 keep-alive sessions to be logged", || {
        ka = shunt.log_lines(" web/").into_iter().skip(before).filter(carried).collect();
        ka.len() >= 20
    });
    assert_eq!(ka.len(), 20, "{ka:?}");
    let ka_a = ka.iter().filter(|l| l.contains(" web/a ")).count();
    let ka_b = ka.iter().filter(|l| l.contains(" web/b ")).count();
    assert_eq!((ka_a, ka_b), (10, 10), "keep-alive connections spread 1:1:\n{}", ka.join("\n"));
    // Each keep-alive session carried many requests.
    let downs: Vec<u64> = ka
        .iter()
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("down=")).and_then(|n| n.parse().ok()))
        .collect();
    assert_eq!(downs.len(), 20, "{ka:?}");
    assert!(downs.iter().sum::<u64>() > 1000 * 100, "bytes to the client logged: {downs:?}");
}

#[test]
fn killed_server_costs_no_request_and_comes_back_after_rise() {
    let mut a = Nginx::start("nginx-a");
    let b = Nginx::start("nginx-b");
    let a_port = a.port();
    let conf = conf(
        &[format!("a {}", a.addr), format!("b {}", b.addr)],
        "  check tcp interval 200ms timeout 500ms rise 2 fall 2\n  retries 2\n  timeout connect 1s\n",
    );
    let mut shunt = start_shunt(&conf);
    let addr = shunt.addr("web");

    // The sequential loop: a few requests, then nginx-a dies between two of them (never
    // during one: a request already streaming from a server that dies cannot be saved by L4).
    let (counts, _) = curl_n(addr, 10);
    assert_eq!((count(&counts, "nginx-a"), count(&counts, "nginx-b")), (5, 5), "{counts:?}");
    a.proc.signal(libc::SIGKILL);
    a.proc.wait_timeout(T).expect("nginx-a dies");
    let (counts, seq) = curl_n(addr, 30);
    assert_eq!(count(&counts, "nginx-b"), 30, "every request served by b: {seq:?}");
    let down = shunt.wait_log("server web/a is DOWN", T);
    assert!(shunt.log_lines("server web/b is DOWN").is_empty(), "b is fine:\n{}", shunt.log());
    assert!(shunt.log_lines("server web/a is UP").is_empty(), "a is dead:\n{}", shunt.log());

    // Still down: more requests, all b, none failed.
    let (counts, seq) = curl_n(addr, 10);
    assert_eq!(count(&counts, "nginx-b"), 10, "{seq:?}");

    // nginx-a restarts on the same port (on purpose: it is the address shunt's conf names; the
    // port is free since nginx-a died, so no retry): after `rise` good probes it is UP and
    // serves again.
    let a2 = Nginx::start_on(a_port, "nginx-a", 1 << 10);
    let up = shunt.wait_log("server web/a is UP", T);
    assert!(log_ms_between(&down, &up) > 0, "UP after DOWN:\n{down}\n{up}");
    wait_for(T, "a request to reach the restarted nginx-a", || curl(addr).unwrap() == "nginx-a\n");
    let (counts, seq) = curl_n(addr, 20);
    assert!(count(&counts, "nginx-a") >= 8, "a back in the rotation: {seq:?}");
    assert_eq!(count(&counts, "nginx-a") + count(&counts, "nginx-b"), 20, "{seq:?}");
    drop(a2);
}

#[test]
fn backup_serves_only_while_both_primaries_are_down() {
    let mut p1 = Nginx::start("nginx-p1");
    let mut p2 = Nginx::start("nginx-p2");
    let spare = Nginx::start("nginx-spare");
    let p1_port = p1.port();
    let conf = conf(
        &[format!("p1 {}", p1.addr), format!("p2 {}", p2.addr), format!("spare {} backup", spare.addr)],
        "  check tcp interval 200ms timeout 500ms rise 2 fall 1\n",
    );
    let mut shunt = start_shunt(&conf);
    let addr = shunt.addr("web");

    // Both primaries up: the backup gets nothing.
    let (counts, seq) = curl_n(addr, 12);
    assert_eq!((count(&counts, "nginx-p1"), count(&counts, "nginx-p2")), (6, 6), "{seq:?}");

    // One primary down: still nothing for the backup.
    p1.proc.signal(libc::SIGKILL);
    p1.proc.wait_timeout(T).expect("p1 dies");
    shunt.wait_log("server web/p1 is DOWN", T);
    let (counts, seq) = curl_n(addr, 10);
    assert_eq!(count(&counts, "nginx-p2"), 10, "{seq:?}");

    // Both down: the backup takes everything.
    p2.proc.signal(libc::SIGKILL);
    p2.proc.wait_timeout(T).expect("p2 dies");
    shunt.wait_log("server web/p2 is DOWN", T);
    wait_for(T, "the backup to take traffic", || curl(addr).is_ok_and(|b| b == "nginx-spare\n"));
    let (counts, seq) = curl_n(addr, 10);
    assert_eq!(count(&counts, "nginx-spare"), 10, "{seq:?}");

    // A primary comes back, on the address shunt knows it by: the backup is idle again.
    let p1b = Nginx::start_on(p1_port, "nginx-p1", 1 << 10);
    shunt.wait_log("server web/p1 is UP", T);
    wait_for(T, "p1 to take traffic again", || curl(addr).unwrap() == "nginx-p1\n");
    let (counts, seq) = curl_n(addr, 10);
    assert_eq!(count(&counts, "nginx-p1"), 10, "{seq:?}");
    assert!(shunt.log_lines("server web/spare is DOWN").is_empty(), "{}", shunt.log());
    drop(p1b);
}

#[test]
fn http_check_takes_a_503_server_out() {
    let good = Nginx::start("nginx-good");
    let sick = Nginx::start_opts(NginxOpts { name: "nginx-sick", health_status: 503, ..NginxOpts::default() });
    // The sick one serves pages fine; only its /health says 503.
    assert_eq!(http_get(sick.addr, "/"), (200, "nginx-sick\n".to_string()));
    assert_eq!(http_get(sick.addr, "/health").0, 503);
    let conf = conf(
        &[format!("sick {}", sick.addr), format!("good {}", good.addr)],
        "  check http GET /health expect 200 interval 200ms timeout 1s rise 2 fall 2\n",
    );
    let mut shunt = start_shunt(&conf);
    let addr = shunt.addr("web");

    let down = shunt.wait_log("server web/sick is DOWN", T);
    assert!(down.contains("503"), "the reason names the status: {down}");
    // The worker hears the verdict just after it is logged: two in a row from `good` (1:1
    // round robin would alternate otherwise) shows it has.
    wait_for(T, "traffic to avoid the sick server", || {
        curl(addr).unwrap() == "nginx-good\n" && curl(addr).unwrap() == "nginx-good\n"
    });
    let (counts, seq) = curl_n(addr, 20);
    assert_eq!(count(&counts, "nginx-good"), 20, "{seq:?}");
    // The failing probes never brought it back, and the good one never fell.
    assert!(shunt.log_lines("server web/sick is UP").is_empty(), "{}", shunt.log());
    assert!(shunt.log_lines("server web/good is DOWN").is_empty(), "{}", shunt.log());
}
