//! End-to-end tests that need a firewall: each test makes its own network namespace, runs
//! nginx, shunt and curl inside it on its loopback, and black-holes a server there with
//! iptables (dropped SYNs: connects hang instead of being refused). Nothing changes in the
//! root namespace; the namespace is deleted when the test ends, even on panic.
//!
//! Needs root and `ip netns`. When namespaces cannot be made the tests fail, loudly, unless
//! `SHUNT_SKIP_NETNS=1` says to skip them.

mod common;

use common::*;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(10);

/// The test's namespace, or None when it cannot be made and SHUNT_SKIP_NETNS=1.
fn netns() -> Option<Netns> {
    match Netns::new() {
        Ok(ns) => Some(ns),
        Err(e) if std::env::var("SHUNT_SKIP_NETNS").as_deref() == Ok("1") => {
            eprintln!("SKIPPED (SHUNT_SKIP_NETNS=1): cannot make a network namespace: {e}");
            None
        }
        Err(e) => panic!(
            "cannot make a network namespace: {e}\n\
             These tests need root and iproute2 (`ip netns add`). Set SHUNT_SKIP_NETNS=1 to skip them."
        ),
    }
}

/// The iptables arguments that drop SYNs to `port` (append with -A, delete with -D).
fn syn_drop(op: &str, port: u16) -> Vec<String> {
    ["iptables", op, "INPUT", "-p", "tcp", "--dport", &port.to_string(), "--syn", "-j", "DROP"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn iptables(ns: &Netns, op: &str, port: u16) {
    let args = syn_drop(op, port);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    ns.exec_ok(&argv).unwrap_or_else(|e| panic!("iptables inside the namespace: {e}"));
}

/// One curl inside the namespace: (body, curl's own time_total), or curl's complaint.
fn curl(ns: &Netns, port: u16) -> Result<(String, Duration), String> {
    let out = ns
        .command(&["curl", "-sS", "--max-time", "10", "-w", "\n%{time_total}"])
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .expect("run curl in the namespace");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!("curl: {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()));
    }
    let (body, time) = text.rsplit_once('\n').ok_or_else(|| format!("curl output {text:?}"))?;
    let secs: f64 = time.trim().parse().map_err(|_| format!("curl time {time:?}"))?;
    Ok((body.to_string(), Duration::from_secs_f64(secs)))
}

fn is_timeout_reason(line: &str) -> bool {
    let l = line.to_lowercase();
    ["timeout", "timed out", "no answer within"].iter().any(|w| l.contains(w))
}

#[test]
fn black_holed_server_costs_at_most_one_connect_timeout() {
    let Some(ns) = netns() else { return };
    let a = Nginx::start_opts(NginxOpts { name: "nginx-a", netns: Some(&ns.name), ..NginxOpts::default() });
    let b = Nginx::start_opts(NginxOpts { name: "nginx-b", netns: Some(&ns.name), ..NginxOpts::default() });
    // fall 1: the first failure seen (the connect timeout in traffic, or a probe's timeout)
    // takes the server out, so at most one request waits for a connect timeout.
    const CONNECT: Duration = Duration::from_millis(300);
    let conf = format!(
        "log info\nservice web\n  bind 127.0.0.1:0\n  server a {}\n  server b {}\n\
         \x20 timeout connect 300ms\n  retries 2\n  check tcp interval 500ms timeout 250ms rise 2 fall 1\n",
        a.addr, b.addr
    );
    let mut shunt = start_shunt_wrapped(&["ip", "netns", "exec", &ns.name], &conf);
    let port = shunt.addr("web").port();

    let bodies: Vec<String> = (0..4).map(|_| curl(&ns, port).unwrap().0).collect();
    assert_eq!(bodies.iter().filter(|b| *b == "nginx-a\n").count(), 2, "{bodies:?}");

    iptables(&ns, "-A", a.port());
    let mut slow = Vec::new();
    let mut total = Duration::ZERO;
    for i in 0..20 {
        let (body, took) = curl(&ns, port).unwrap_or_else(|e| panic!("request {i} failed: {e}"));
        assert_eq!(body, "nginx-b\n", "request {i}: a black-holed server cannot answer");
        if took >= Duration::from_millis(250) {
            slow.push((i, took));
        }
        total += took;
    }
    eprintln!("20 requests with a black-holed server: {total:?} in curl; slow ones: {slow:?}");
    // shunt logs every failed connect attempt: at most one ran into the connect timeout. This is
    // the proof; the clients' times below only rule out waits the log would not show.
    let timeouts = shunt.log_lines("connect to web/a");
    assert!(timeouts.len() <= 1, "more than one connect to the black hole:\n{}", timeouts.join("\n"));
    assert!(timeouts.iter().all(|l| is_timeout_reason(l)), "{timeouts:?}");
    // Seen from the clients (curl's own time_total, generous for a loaded machine): no request
    // hung (10 connect timeouts' worth), and not every request paid a connect timeout (20 of
    // them would be 6 s; the 20 take a few hundred ms here).
    assert!(slow.iter().all(|(_, d)| *d < CONNECT * 10), "a request waited too long: {slow:?}");
    assert!(total < CONNECT * 20, "20 requests took {total:?} (slow ones: {slow:?})");
    let down = shunt.wait_log("server web/a is DOWN", T);
    assert!(is_timeout_reason(&down), "DOWN for a timeout: {down}");
    assert!(shunt.log_lines("server web/b is DOWN").is_empty(), "{}", shunt.log());

    // The hole closes: probes get through again and `rise` of them bring a back.
    iptables(&ns, "-D", a.port());
    let up = shunt.wait_log("server web/a is UP", T);
    assert!(log_ms_between(&down, &up) > 0, "{down}\n{up}");
    wait_for(T, "a request to reach nginx-a again", || curl(&ns, port).unwrap().0 == "nginx-a\n");
    let bodies: Vec<String> = (0..10).map(|_| curl(&ns, port).unwrap().0).collect();
    assert!(bodies.iter().filter(|b| *b == "nginx-a\n").count() >= 4, "{bodies:?}");
}

#[test]
fn black_holed_probe_does_not_delay_the_verdict_on_another_server() {
    let Some(ns) = netns() else { return };
    let hole = Nginx::start_opts(NginxOpts { name: "nginx-hole", netns: Some(&ns.name), ..NginxOpts::default() });
    iptables(&ns, "-A", hole.port());
    // Nothing listens on `dead` in the test's own namespace (port 9 there is as free as any):
    // its probe is refused at once.
    // The black-holed server comes first, so probing one server after the other would make
    // the dead one wait for the hole's whole probe timeout: 3 s, long enough that "at once" and
    // "after the hole's timeout" stay far apart on a loaded machine.
    const HOLE_TIMEOUT_MS: i64 = 3000;
    let conf = format!(
        "log info\nservice web\n  bind 127.0.0.1:0\n  server hole {}\n  server dead 127.0.0.1:9\n\
         \x20 check tcp interval 200ms timeout {HOLE_TIMEOUT_MS}ms\n",
        hole.addr
    );
    let t0 = Instant::now();
    let mut shunt = start_shunt_wrapped(&["ip", "netns", "exec", &ns.name], &conf);
    let dead_down = shunt.wait_log("server web/dead is DOWN", T);
    let seen_after = t0.elapsed();
    let hole_down = shunt.wait_log("server web/hole is DOWN", T);
    let log = shunt.log();
    let start = log.lines().next().expect("a first log line").to_string();
    let dead_ms = log_ms_between(&start, &dead_down);
    let hole_ms = log_ms_between(&start, &hole_down);
    eprintln!("dead DOWN after {dead_ms} ms (seen {seen_after:?} after spawn), hole DOWN after {hole_ms} ms");
    // The order of the verdicts is the event-driven proof: probes one after the other would
    // give the hole's verdict (after its timeout) first.
    let at = |line: &str| log.lines().position(|l| l == line).expect("a line of the log");
    assert!(at(&dead_down) < at(&hole_down), "the refused server's verdict came after the hole's:\n{log}");
    // In shunt's own clock (no test scheduling in it): well before the hole's timeout.
    assert!(dead_ms < HOLE_TIMEOUT_MS / 2, "the refused server's verdict waited {dead_ms} ms:\n{dead_down}");
    // The setup really black-holed the other one: its probe ran into the timeout.
    assert!(
        hole_ms >= HOLE_TIMEOUT_MS - 200,
        "the black-holed server's probe failed after only {hole_ms} ms: {hole_down}"
    );
    assert!(is_timeout_reason(&hole_down), "{hole_down}");
    assert!(!is_timeout_reason(&dead_down), "the dead server was refused, not timed out: {dead_down}");
}
