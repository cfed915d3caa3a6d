//! The admin endpoint, in-process: exact counters, Prometheus output checked by promtool,
//! runtime drain/disable/enable, /healthz, the bearer token, and hostile clients.

mod common;

use common::inproc::*;
use common::*;
use shunt::config::{Check, CheckKind};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(10);
/// The admin endpoint's read deadline (src/admin/mod.rs): a client that has not sent a whole
/// request by then is cut off, and does not move the deadline by dribbling bytes.
const READ_DEADLINE: Duration = Duration::from_secs(5);

/// The balancer with its admin endpoint on 127.0.0.1:0: (it, its service's address, the admin
/// endpoint's), and the directory of the token file, if any.
fn start_with_admin(
    mut c: shunt::config::Config,
    token: Option<&str>,
) -> (shunt::Running, SocketAddr, SocketAddr, TempDir) {
    let dir = TempDir::new("admin");
    c.admin = Some("127.0.0.1:0".parse().unwrap());
    if let Some(t) = token {
        c.admin_token = Some(write_file(&dir, "token", format!("{t}\n").as_bytes()));
    }
    let r = shunt::start(c).expect("start");
    let addr = r.listening[0].1;
    let admin = r.admin_addr.expect("admin bound");
    (r, addr, admin, dir)
}

fn get(admin: SocketAddr, path: &str) -> (u16, String) {
    http_get(admin, path)
}

fn post(admin: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    http_post(admin, path, token, b"")
}

#[test]
fn counters_are_exact_after_traffic() {
    let echo = EchoServer::start();
    let (r, addr, admin, _dir) = start_with_admin(config(vec![service(vec![("e", echo.addr, 1)])]), None);
    const N: usize = 25;
    const SIZE: usize = 10_000;
    for _ in 0..N {
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(&[7u8; SIZE]).unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(read_all(&mut c).len(), SIZE);
    }
    wait_for(T, "sessions closed", || status_json(admin)["active_connections"] == 0);
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
    let echo = EchoServer::start();
    let mut c = config(vec![service(vec![("e", echo.addr, 1)])]);
    c.workers = 2;
    let (r, addr, admin, _dir) = start_with_admin(c, None);
    const N: usize = 60;
    for _ in 0..N {
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(b"abc").unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(read_all(&mut c), b"abc");
    }
    wait_for(T, "sessions closed", || status_json(admin)["active_connections"] == 0);
    let s = status_json(admin);
    assert_eq!(s["workers"], 2);
    assert_eq!(s["services"][0]["accepted"], N);
    assert_eq!(s["services"][0]["servers"][0]["bytes_out"], N * 3);
    stop(r);
}

#[test]
fn promtool_accepts_live_metrics() {
    let echo = EchoServer::start();
    let dead = Refuser::new();
    let mut svc = service(vec![("e", echo.addr, 1), ("dead", dead.addr, 1)]);
    svc.check = Check { kind: CheckKind::Tcp, interval: Duration::from_millis(100), ..Check::default() };
    let (r, addr, admin, _dir) = start_with_admin(config(vec![svc]), None);
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
    let (r, addr, admin, _dir) =
        start_with_admin(config(vec![service(vec![("a", a.addr, 1), ("b", b.addr, 1)])]), None);
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
    let echo = EchoServer::start();
    let mut svc = service(vec![("e", echo.addr, 1)]);
    svc.check = Check { kind: CheckKind::Tcp, interval: Duration::from_millis(50), ..Check::default() };
    let (r, _addr, admin, _dir) = start_with_admin(config(vec![svc]), None);
    let checks = || status_json(admin)["services"][0]["servers"][0]["checks"].as_u64().unwrap();
    wait_for(T, "probes run", || checks() >= 2);
    assert_eq!(post(admin, "/servers/svc/e/disable", None).0, 200);
    assert_eq!(status_json(admin)["services"][0]["servers"][0]["state"], "disabled");
    // A probe may have been in flight; after that one, the count must stay put. Settled means
    // unchanged for 10 probe intervals (a prober still running at 50 ms would have moved it),
    // not merely between two polls 10 ms apart, which an active prober passes too.
    let settled = {
        let mut last = (checks(), Instant::now());
        wait_for(T, "probe count settles", || {
            let now = checks();
            if now != last.0 {
                last = (now, Instant::now());
            }
            last.1.elapsed() >= Duration::from_millis(500)
        });
        last.0
    };
    // Several probe intervals pass (waiting by design: nothing may happen in them).
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(checks(), settled, "no probes while disabled");
    assert_eq!(post(admin, "/servers/svc/e/enable", None).0, 200);
    wait_for(T, "probes resume", || checks() > settled);
    stop(r);
}

#[test]
fn healthz_turns_503_when_a_service_has_no_server_and_back() {
    // Nothing listens on the server's address until the test says so, and nobody else can take
    // it meanwhile: the port is held bound, not listening.
    let port = Refuser::new();
    let mut svc = service(vec![("only", port.addr, 1)]);
    svc.check = Check { kind: CheckKind::Tcp, interval: Duration::from_millis(50), rise: 1, ..Check::default() };
    let (r, _addr, admin, _dir) = start_with_admin(config(vec![svc]), None);
    wait_for(T, "healthz 503", || get(admin, "/healthz").0 == 503);
    assert!(get(admin, "/healthz").1.contains("svc"), "says which service");
    let _server = port.listen();
    wait_for(T, "healthz 200", || get(admin, "/healthz").0 == 200);
    stop(r);
}

#[test]
fn posts_need_the_bearer_token_gets_do_not() {
    let echo = EchoServer::start();
    let token = "s3cret-token-value";
    let (r, _addr, admin, _dir) = start_with_admin(config(vec![service(vec![("e", echo.addr, 1)])]), Some(token));
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
    let echo = EchoServer::start();
    let (r, _addr, admin, _dir) = start_with_admin(config(vec![service(vec![("e", echo.addr, 1)])]), None);
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
    // Answered while they stall: an endpoint that served one client at a time would wait for
    // the first stalled one until its read deadline (5 s), so half of that is a generous bound
    // that still tells the two apart.
    let t0 = Instant::now();
    assert_eq!(get(admin, "/status").0, 200);
    assert!(t0.elapsed() < READ_DEADLINE / 2, "answered while 100 clients stall: {:?}", t0.elapsed());
    // Huge headers.
    let big = format!("GET /status HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(20_000));
    let (code, _) = http_raw(admin, big.as_bytes());
    assert!(code == 431 || code == 0, "huge headers refused, got {code}");
    // Too many headers.
    let many: String = (0..40).map(|i| format!("X-{i}: v\r\n")).collect();
    assert_eq!(http_raw(admin, format!("GET /status HTTP/1.1\r\n{many}\r\n").as_bytes()).0, 431);
    // Garbage.
    assert_eq!(http_raw(admin, b"\x16\x03\x01\x02\x00garbage\r\n\r\n").0, 400);
    assert_eq!(http_raw(admin, b"GET\r\n\r\n").0, 400);
    // Path traversal and unknown paths.
    assert_eq!(get(admin, "/../../etc/passwd").0, 404);
    assert_eq!(get(admin, "/servers/../status").0, 404);
    assert_eq!(get(admin, "/%2e%2e/etc/passwd").0, 404);
    // Wrong methods.
    assert_eq!(http_raw(admin, b"DELETE /status HTTP/1.1\r\n\r\n").0, 405);
    // Oversized body.
    assert_eq!(http_raw(admin, b"POST /reload HTTP/1.1\r\nContent-Length: 100000\r\n\r\n").0, 413);
    // Still fine afterwards.
    assert_eq!(get(admin, "/").0, 200);
    assert!(get(admin, "/").1.contains("<title>shunt status</title>"));
    drop(stalled);
    stop(r);
}

#[test]
fn a_slowloris_client_is_cut_off_at_the_read_deadline() {
    let echo = EchoServer::start();
    let (r, _addr, admin, _dir) = start_with_admin(config(vec![service(vec![("e", echo.addr, 1)])]), None);
    let mut s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let t0 = Instant::now();
    let mut buf = [0u8; 512];
    let mut answer = Vec::new();
    // Dribble one byte every 50 ms (the read timeout paces it): the deadline must not move with
    // each byte. A deadline that did would never cut this client off.
    for b in b"GET /status HTTP/1.1\r\nX-Slow: ".iter().cycle() {
        if s.write_all(&[*b]).is_err() {
            break;
        }
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        assert!(t0.elapsed() < READ_DEADLINE * 6, "never cut off");
    }
    // Cut off at the deadline: never before it (less a second of slack between t0 and the
    // accept), and well before "never" (the upper bound leaves a loaded machine 5 s).
    let waited = t0.elapsed();
    assert!(
        waited >= READ_DEADLINE - Duration::from_secs(1) && waited < READ_DEADLINE + Duration::from_secs(5),
        "cut off after {waited:?}"
    );
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
    let echo = EchoServer::start();
    let (r, _addr, admin, _dir) = start_with_admin(config(vec![service(vec![("e", echo.addr, 1)])]), None);
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
