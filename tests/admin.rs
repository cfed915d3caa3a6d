//! The admin endpoint, in-process: exact counters, Prometheus output checked by promtool,
//! runtime drain/disable/enable, /healthz, the bearer token, and hostile clients.

mod support;

use shunt::config::{Check, CheckKind};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};
use support::*;

/// Starts shunt with the admin endpoint on a free loopback port.
fn start_with_admin(mut c: shunt::config::Config, token: Option<&str>) -> (shunt::Running, SocketAddr, SocketAddr) {
    c.admin = Some("127.0.0.1:0".parse().unwrap());
    if let Some(t) = token {
        let path = std::env::temp_dir().join(format!("shunt-token-{}-{}", std::process::id(), t.len()));
        std::fs::write(&path, format!("{t}\n")).unwrap();
        c.admin_token = Some(path);
    }
    let r = shunt::start(c).expect("start");
    let addr = r.listening[0].1;
    let admin = r.admin_addr.expect("admin bound");
    (r, addr, admin)
}

/// One raw HTTP exchange: returns (status, body).
fn http(admin: SocketAddr, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

fn get(admin: SocketAddr, path: &str) -> (u16, String) {
    http(admin, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"))
}

fn post(admin: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    http(admin, &format!("POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 0\r\n\r\n"))
}

fn status_json(admin: SocketAddr) -> serde_json::Value {
    let (code, body) = get(admin, "/status");
    assert_eq!(code, 200);
    serde_json::from_str(&body).expect("/status is valid JSON")
}

/// The value of one sample line `name{labels} value` in a metrics document.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
        .parse()
        .unwrap()
}

#[test]
fn counters_are_exact_after_traffic() {
    let (echo, _) = echo_server();
    let (r, addr, admin) = start_with_admin(config(vec![service(vec![("e", echo, 1)])]), None);
    const N: usize = 25;
    const SIZE: usize = 10_000;
    for _ in 0..N {
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(&[7u8; SIZE]).unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(read_all(&mut c).len(), SIZE);
    }
    wait_for(Duration::from_secs(5), "sessions closed", || status_json(admin)["active_connections"] == 0);
    let s = status_json(admin);
    let svc = &s["services"][0];
    assert_eq!(svc["accepted"], N);
    let srv = &svc["servers"][0];
    assert_eq!(srv["total_connections"], N);
    assert_eq!(srv["bytes_out"], N * SIZE);
    assert_eq!(srv["bytes_in"], N * SIZE);
    assert_eq!(srv["state"], "up");
    let (code, text) = get(admin, "/metrics");
    assert_eq!(code, 200);
    assert_eq!(metric(&text, "shunt_service_accepted_total{service=\"svc\"}"), N as f64);
    assert_eq!(metric(&text, "shunt_server_connections_total{service=\"svc\",server=\"e\"}"), N as f64);
    assert_eq!(metric(&text, "shunt_server_sent_bytes_total{service=\"svc\",server=\"e\"}"), (N * SIZE) as f64);
    assert_eq!(metric(&text, "shunt_server_received_bytes_total{service=\"svc\",server=\"e\"}"), (N * SIZE) as f64);
    assert_eq!(metric(&text, "shunt_service_session_duration_seconds_count{service=\"svc\"}"), N as f64);
    assert_eq!(metric(&text, "shunt_server_connect_seconds_count{service=\"svc\",server=\"e\"}"), N as f64);
    assert_eq!(
        metric(&text, "shunt_server_connect_seconds_bucket{service=\"svc\",server=\"e\",le=\"+Inf\"}"),
        N as f64
    );
    stop(r);
}

#[test]
fn counters_are_exact_summed_over_two_workers() {
    let (echo, _) = echo_server();
    let mut c = config(vec![service(vec![("e", echo, 1)])]);
    c.workers = 2;
    let (r, addr, admin) = start_with_admin(c, None);
    const N: usize = 60;
    for _ in 0..N {
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(b"abc").unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(read_all(&mut c), b"abc");
    }
    wait_for(Duration::from_secs(5), "sessions closed", || status_json(admin)["active_connections"] == 0);
    let s = status_json(admin);
    assert_eq!(s["workers"], 2);
    assert_eq!(s["services"][0]["accepted"], N);
    assert_eq!(s["services"][0]["servers"][0]["bytes_out"], N * 3);
    stop(r);
}

#[test]
fn promtool_accepts_live_metrics() {
    let (echo, _) = echo_server();
    let dead = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut svc = service(vec![("e", echo, 1), ("dead", dead, 1)]);
    svc.check = Check { kind: CheckKind::Tcp, interval: Duration::from_millis(100), ..Check::default() };
    let (r, addr, admin) = start_with_admin(config(vec![svc]), None);
    for _ in 0..5 {
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(b"x").unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        read_all(&mut c);
    }
    let (_, text) = get(admin, "/metrics");
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (package prometheus) is installed by scripts/install-deps.sh");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    stop(r);
}

#[test]
fn drain_and_enable_change_routing_exactly() {
    let a = name_server("a");
    let b = name_server("b");
    let (r, addr, admin) = start_with_admin(config(vec![service(vec![("a", a, 1), ("b", b, 1)])]), None);
    let (code, body) = post(admin, "/servers/svc/a/drain", None);
    assert_eq!(code, 200, "{body}");
    assert_eq!(status_json(admin)["services"][0]["servers"][0]["state"], "drain");
    // The POST answered after the message was queued to the worker; the next connections see it.
    let seq: String = (0..10)
        .map(|_| {
            let mut c = TcpStream::connect(addr).unwrap();
            String::from_utf8(read_all(&mut c)).unwrap()
        })
        .collect();
    assert_eq!(seq, "bbbbbbbbbb");
    assert_eq!(post(admin, "/servers/svc/a/enable", None).0, 200);
    assert_eq!(status_json(admin)["services"][0]["servers"][0]["state"], "up");
    let seq: String = (0..10)
        .map(|_| {
            let mut c = TcpStream::connect(addr).unwrap();
            String::from_utf8(read_all(&mut c)).unwrap()
        })
        .collect();
    assert_eq!(seq.matches('a').count(), 5, "{seq}");
    assert_eq!(post(admin, "/servers/svc/nope/drain", None).0, 404);
    assert_eq!(post(admin, "/servers/nope/a/drain", None).0, 404);
    assert_eq!(post(admin, "/servers/svc/a/explode", None).0, 404);
    assert_eq!(get(admin, "/servers/svc/a/drain").0, 405);
    stop(r);
}

#[test]
fn disable_stops_probes_and_enable_resumes_them() {
    let (echo, _) = echo_server();
    let mut svc = service(vec![("e", echo, 1)]);
    svc.check = Check { kind: CheckKind::Tcp, interval: Duration::from_millis(50), ..Check::default() };
    let (r, _addr, admin) = start_with_admin(config(vec![svc]), None);
    let checks = || status_json(admin)["services"][0]["servers"][0]["checks"].as_u64().unwrap();
    wait_for(Duration::from_secs(5), "probes run", || checks() >= 2);
    assert_eq!(post(admin, "/servers/svc/e/disable", None).0, 200);
    assert_eq!(status_json(admin)["services"][0]["servers"][0]["state"], "disabled");
    // A probe may have been in flight; after that one, the count must stay put.
    let settled = {
        let mut last = checks();
        wait_for(Duration::from_secs(5), "probe count settles", || {
            let now = checks();
            let same = now == last;
            last = now;
            same
        });
        last
    };
    let t0 = Instant::now();
    wait_for(Duration::from_secs(5), "several probe intervals pass", || t0.elapsed() > Duration::from_millis(400));
    assert_eq!(checks(), settled, "no probes while disabled");
    assert_eq!(post(admin, "/servers/svc/e/enable", None).0, 200);
    wait_for(Duration::from_secs(5), "probes resume", || checks() > settled);
    stop(r);
}

#[test]
fn healthz_turns_503_when_a_service_has_no_server_and_back() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port_addr = l.local_addr().unwrap();
    drop(l); // nothing listens there now
    let mut svc = service(vec![("only", port_addr, 1)]);
    svc.check = Check { kind: CheckKind::Tcp, interval: Duration::from_millis(50), rise: 1, ..Check::default() };
    let (r, _addr, admin) = start_with_admin(config(vec![svc]), None);
    wait_for(Duration::from_secs(5), "healthz 503", || get(admin, "/healthz").0 == 503);
    assert!(get(admin, "/healthz").1.contains("svc"), "says which service");
    let _server = TcpListener::bind(port_addr).expect("rebind the server port");
    wait_for(Duration::from_secs(5), "healthz 200", || get(admin, "/healthz").0 == 200);
    stop(r);
}

#[test]
fn posts_need_the_bearer_token_gets_do_not() {
    let (echo, _) = echo_server();
    let token = "s3cret-token-value";
    let (r, _addr, admin) = start_with_admin(config(vec![service(vec![("e", echo, 1)])]), Some(token));
    assert_eq!(get(admin, "/status").0, 200);
    assert_eq!(post(admin, "/servers/svc/e/drain", None).0, 401);
    assert_eq!(post(admin, "/servers/svc/e/drain", Some("wrong")).0, 401);
    assert_eq!(post(admin, "/servers/svc/e/drain", Some("s3cret-token-valuE")).0, 401);
    assert_eq!(status_json(admin)["services"][0]["servers"][0]["state"], "up", "refused POSTs change nothing");
    assert_eq!(post(admin, "/servers/svc/e/drain", Some(token)).0, 200);
    // Authorized: the reload runs, and fails because this in-process config has no file.
    let (status, body) = post(admin, "/reload", Some(token));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("cannot read the conf file") && body.contains("the running configuration stays"), "{body}");
    assert_eq!(post(admin, "/reload", None).0, 401);
    stop(r);
}

#[test]
fn hostile_requests_get_4xx_and_the_endpoint_keeps_answering() {
    let (echo, _) = echo_server();
    let (r, _addr, admin) = start_with_admin(config(vec![service(vec![("e", echo, 1)])]), None);
    // 100 clients that connect and send nothing (or half a request line) and stay.
    let stalled: Vec<TcpStream> = (0..100)
        .map(|i| {
            let mut s = TcpStream::connect(admin).unwrap();
            if i % 2 == 0 {
                s.write_all(b"GET /sta").unwrap();
            }
            s
        })
        .collect();
    let t0 = Instant::now();
    assert_eq!(get(admin, "/status").0, 200);
    assert!(t0.elapsed() < Duration::from_secs(1), "answered while 100 clients stall: {:?}", t0.elapsed());
    // Huge headers.
    let big = format!("GET /status HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(20_000));
    let (code, _) = http(admin, &big);
    assert!(code == 431 || code == 0, "huge headers refused, got {code}");
    // Too many headers.
    let many: String = (0..40).map(|i| format!("X-{i}: v\r\n")).collect();
    assert_eq!(http(admin, &format!("GET /status HTTP/1.1\r\n{many}\r\n")).0, 431);
    // Garbage.
    assert_eq!(http(admin, "\x16\x03\x01\x02\x00garbage\r\n\r\n").0, 400);
    assert_eq!(http(admin, "GET\r\n\r\n").0, 400);
    // Path traversal and unknown paths.
    assert_eq!(get(admin, "/../../etc/passwd").0, 404);
    assert_eq!(get(admin, "/servers/../status").0, 404);
    assert_eq!(get(admin, "/%2e%2e/etc/passwd").0, 404);
    // Wrong methods.
    assert_eq!(http(admin, "DELETE /status HTTP/1.1\r\n\r\n").0, 405);
    // Oversized body.
    assert_eq!(http(admin, "POST /reload HTTP/1.1\r\nContent-Length: 100000\r\n\r\n").0, 413);
    // Still fine afterwards.
    assert_eq!(get(admin, "/").0, 200);
    assert!(get(admin, "/").1.contains("<title>shunt status</title>"));
    drop(stalled);
    stop(r);
}

#[test]
fn a_slowloris_client_is_cut_off_at_the_read_deadline() {
    let (echo, _) = echo_server();
    let (r, _addr, admin) = start_with_admin(config(vec![service(vec![("e", echo, 1)])]), None);
    let mut s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let t0 = Instant::now();
    let mut buf = [0u8; 512];
    let mut answer = Vec::new();
    // Dribble one byte every 50 ms: the deadline must not move with each byte.
    for b in b"GET /status HTTP/1.1\r\nX-Slow: ".iter().cycle() {
        if s.write_all(&[*b]).is_err() {
            break;
        }
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "never cut off");
    }
    let waited = t0.elapsed();
    assert!(waited >= Duration::from_secs(4) && waited < Duration::from_secs(8), "cut off after {waited:?}");
    assert!(answer.is_empty() || String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 408"));
    stop(r);
}

fn promtool(args: &[&str]) -> String {
    let out = std::process::Command::new("promtool")
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/conf"))
        .output()
        .expect("promtool is installed by scripts/install-deps.sh");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn shipped_prometheus_config_alerts_and_dashboard_are_valid_and_use_real_metrics() {
    promtool(&["check", "config", "prometheus.yml"]);
    promtool(&["check", "rules", "shunt-alerts.yml"]);
    promtool(&["test", "rules", "shunt-alerts.test.yml"]);
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{dir}grafana-dashboard.json")).unwrap()).unwrap();
    let mut exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter().map(|t| t["expr"].as_str().unwrap().to_string()))
        .collect();
    exprs.push(std::fs::read_to_string(format!("{dir}shunt-alerts.yml")).unwrap());
    // Every shunt_* name they use must be a series that a live shunt exposes.
    let (echo, _) = echo_server();
    let (r, _addr, admin) = start_with_admin(config(vec![service(vec![("e", echo, 1)])]), None);
    let (_, live) = get(admin, "/metrics");
    let exposed: std::collections::HashSet<&str> =
        live.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split(['{', ' ']).next()).collect();
    let mut used = 0;
    for text in &exprs {
        for (i, _) in text.match_indices("shunt_") {
            let name: String = text[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if name.starts_with("shunt_")
                && !name.starts_with("shunt-")
                && text[..i].ends_with(|c: char| !c.is_alphanumeric())
            {
                assert!(exposed.contains(name.as_str()), "{name} is used by conf/ but not exposed");
                used += 1;
            }
        }
    }
    assert!(used > 15, "found only {used} metric references");
    stop(r);
}
