//! Tests of the test harness itself (tests/common), so that a failing shunt test points at shunt,
//! not at its tools. None of these needs the shunt binary: start-up handling is exercised with a
//! small Python stand-in that binds what the conf says and prints shunt's start-up lines.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

#[test]
fn free_port_can_be_bound() {
    let p = free_port();
    assert_ne!(p, 0);
    TcpListener::bind(("127.0.0.1", p)).expect("a free port binds");
}

#[test]
fn on_free_port_tries_another_port_when_one_was_taken() {
    // The first port tried is taken (as if by another process between the pick and the bind):
    // the start reports it, and the harness tries again on another port.
    let mut tried = Vec::new();
    let mut held = Vec::new();
    let port = on_free_port("selftest", |port| {
        tried.push(port);
        if tried.len() == 1 {
            held.push(TcpListener::bind(("127.0.0.1", port)).expect("take the port"));
            return Bound::InUse;
        }
        Bound::Up(port)
    });
    assert_eq!(tried.len(), 2, "{tried:?}");
    assert_eq!(port, tried[1]);
}

#[test]
#[should_panic(expected = "every port tried was in use")]
fn on_free_port_gives_up_after_a_few_ports() {
    on_free_port("selftest", |_| Bound::<()>::InUse);
}

#[test]
fn addr_in_use_is_recognised() {
    assert!(says_addr_in_use("bind() to 127.0.0.1:8080 failed (98: Address already in use)"));
    assert!(says_addr_in_use("test_peer: cannot listen on 10.0.0.1:7000: Address already in use (os error 98)"));
    assert!(!says_addr_in_use("bind() to 127.0.0.1:8080 failed (13: Permission denied)"));
}

#[test]
fn echo_server_echoes_and_honours_half_close() {
    let echo = EchoServer::start();
    // 1 MiB, more than socket buffers hold: the writer runs in a thread while we read, then
    // half-closes; the echo must still deliver every byte and then close its side.
    let data = big_content(1 << 20);
    let mut s = connect(echo.addr);
    let mut w = s.try_clone().unwrap();
    let sent = data.clone();
    let writer = thread::spawn(move || {
        w.write_all(&sent).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut got = Vec::new();
    s.read_to_end(&mut got).expect("read echo to EOF");
    writer.join().unwrap();
    assert!(got == data, "echo returned {} bytes, not the same 1 MiB", got.len());
    assert_eq!(echo.accepted(), 1);
    wait_for(T, "echo handler to finish", || echo.active() == 0);
    assert_eq!(echo.bytes_in(), data.len() as u64);
}

#[test]
fn echo_server_keeps_answering_after_client_half_close() {
    // The client's FIN must not make the echo drop what it has yet to send: send, half-close at
    // once, and still read the answer.
    let echo = EchoServer::start();
    let mut s = connect(echo.addr);
    s.write_all(b"ping").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut got = String::new();
    s.read_to_string(&mut got).unwrap();
    assert_eq!(got, "ping");
}

#[test]
fn sink_server_counts_bytes_and_close_all_ends_connections() {
    let sink = SinkServer::start();
    let mut s = connect(sink.addr);
    s.write_all(&[7u8; 100_000]).unwrap();
    sink.wait_bytes(100_000, T);
    assert_eq!(sink.active(), 1);
    sink.close_all();
    let mut buf = [0u8; 1];
    assert_eq!(s.read(&mut buf).unwrap_or(0), 0, "connection closed by the sink");
    wait_for(T, "sink handler to finish", || sink.active() == 0);
}

#[test]
fn nginx_serves_name_health_and_big_file() {
    let n = Nginx::start("nginx-a");
    assert_eq!(http_get(n.addr, "/"), (200, "nginx-a\n".to_string()));
    assert_eq!(http_get(n.addr, "/anything/else"), (200, "nginx-a\n".to_string()));
    assert_eq!(http_get(n.addr, "/health"), (200, "ok\n".to_string()));

    // /big through a raw socket: the body is binary, which http_get would mangle as text.
    let mut s = connect(n.addr);
    s.write_all(b"GET /big HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let body_at = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(resp.starts_with(b"HTTP/1.1 200"));
    assert_eq!(resp.len() - body_at, n.big_len());
    assert!(resp[body_at..] == big_content(n.big_len())[..]);

    // Introspection works on any process: nginx holds its listener, some fds, some memory.
    let listeners: Vec<_> = tcp_sockets(n.pid()).into_iter().filter(|s| s.state == TcpState::Listen).collect();
    assert_eq!(listeners.len(), 1, "{listeners:?}");
    assert_eq!(listeners[0].local, n.addr);
    assert!(fd_count(n.pid()) >= 3);
    assert!(rss_kib(n.pid()) > 0);
}

#[test]
#[should_panic(expected = "is in use")]
fn nginx_on_a_taken_port_is_recognised_as_such() {
    // What on_free_port relies on to retry nginx elsewhere: its failure to bind a taken port
    // is told apart from any other failure.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    Nginx::start_on(taken.local_addr().unwrap().port(), "nginx-taken", 1024);
}

#[test]
fn close_wait_sockets_are_counted() {
    // Our own process: accept a connection, let the client close it, and leave our side open.
    // That is exactly the CLOSE_WAIT leak the proxy tests look for. Other tests in this process
    // (under plain `cargo test`) make sockets too, so look for this one socket by its addresses.
    let me = std::process::id();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let client_addr = c.local_addr().unwrap();
    let (server_side, _) = l.accept().unwrap();
    let state_of_ours = || {
        tcp_sockets(me)
            .into_iter()
            .find(|s| s.local == l.local_addr().unwrap() && s.remote == client_addr)
            .map(|s| s.state)
    };
    assert_eq!(state_of_ours(), Some(TcpState::Established));
    drop(c);
    wait_for(T, "our accepted socket to reach CLOSE_WAIT", || state_of_ours() == Some(TcpState::CloseWait));
    assert!(sockets_in_state(me, "CLOSE_WAIT") >= 1);
    assert!(sockets_in_state(me, "close-wait") >= 1);
    drop(server_side);
    wait_for(T, "our socket to leave the process", || state_of_ours().is_none());
}

#[test]
fn proc_signal_and_wait_timeout() {
    let dir = TempDir::new("proc");
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg("echo started >&2; exec sleep 30");
    let mut p = Proc::spawn("sleep", cmd, &dir.join("sleep.log"));
    assert!(p.pid() > 0);
    assert_eq!(p.wait_timeout(Duration::from_millis(50)), None);
    p.signal(libc::SIGTERM);
    let st = p.wait_timeout(T).expect("exits after SIGTERM");
    assert_eq!(st.signal(), Some(libc::SIGTERM));
    assert!(p.log().contains("started"), "log: {:?}", p.log());
}

#[test]
#[should_panic(expected = "timed out after")]
fn wait_for_panics_with_what() {
    wait_for(Duration::from_millis(30), "something that never happens", || false);
}

#[test]
fn conf_listeners_are_counted() {
    let conf = "admin 127.0.0.1:9090 # comment\n\
                service a\n  bind *:0\n  bind [::1]:8081 accept_proxy\n\
                # bind 127.0.0.1:1\n  server s 127.0.0.1:9001\n\
                service b\n\tbind\t0.0.0.0:8080\n";
    assert_eq!(conf_listeners(conf), (3, true));
    assert_eq!(conf_listeners("service a\n bind 127.0.0.1:0\n# admin 127.0.0.1:0\n"), (1, false));
}

#[test]
fn startup_lines_are_parsed() {
    let log = "[2026-11-29T20:17:51.120Z INFO  shunt] starting\n\
               [2026-11-29T20:17:51.123Z INFO  shunt::startup] service web listening on 127.0.0.1:41234\n\
               [2026-11-29T20:17:51.123Z INFO  shunt::startup] service web listening on [::]:41235\n\
               [2026-11-29T20:17:51.123Z INFO  shunt::startup] service db listening on [::1]:41236\n\
               [2026-11-29T20:17:51.124Z INFO  shunt::startup] admin endpoint listening on 127.0.0.1:41237\n\
               [2026-11-29T20:17:52.000Z INFO  shunt] 127.0.0.1:5000 web/a -- up=1 down=2 connect_ms=0 duration_ms=1\n";
    let l = Listening::parse(log);
    let a = |s: &str| s.parse::<SocketAddr>().unwrap();
    assert_eq!(l.of("web"), vec![a("127.0.0.1:41234"), a("[::]:41235")]);
    assert_eq!(l.of("db"), vec![a("[::1]:41236")]);
    assert!(l.of("nope").is_empty());
    assert_eq!(l.admin, Some(a("127.0.0.1:41237")));
    assert_eq!(Listening::parse("no start-up line\n"), Listening::default());
}

#[test]
fn session_lines_are_parsed() {
    let log = "[2026-11-29T20:17:51.123Z INFO  shunt::startup] service svc listening on 10.77.0.1:8000\n\
               [2026-11-29T20:17:52.000Z INFO  shunt] 10.77.0.2:40001 svc/s0 -- up=25 down=1003 connect_ms=0 duration_ms=2\n\
               [2026-11-29T20:17:52.001Z WARN  shunt] server svc/s1 is DOWN (timeout)\n\
               [2026-11-29T20:17:52.002Z INFO  shunt] [::1]:40002 svc/s1 SD up=25 down=7 connect_ms=12 duration_ms=40\n";
    let s = sessions(log);
    assert_eq!(s.len(), 2, "{s:?}");
    assert_eq!(
        (s[0].port, s[0].server.as_str(), s[0].code.as_str(), s[0].up, s[0].down),
        (40001, "s0", "--", 25, 1003)
    );
    assert_eq!((s[1].port, s[1].code.as_str(), s[1].connect_ms, s[1].duration_ms), (40002, "SD", 12, 40));
    assert_eq!(count_codes(&s).get("SD"), Some(&1));
    assert_eq!(field(&s[0].raw, "down="), 1003);
    assert_eq!(log_ms_between(&s[0].raw, &s[1].raw), 2);
}

/// A stand-in for shunt: reads `-c FILE`, listens on each `bind`/`admin` address (port 0 as the
/// kernel picks), prints shunt's start-up lines, then waits; or exits 1 at once if the conf
/// contains `fail`.
fn fake_shunt(dir: &TempDir) -> PathBuf {
    let p = dir.join("fake-shunt");
    std::fs::write(
        &p,
        r##"#!/usr/bin/env python3
import socket, sys, time
conf = open(sys.argv[sys.argv.index("-c") + 1]).read()
if "fail" in conf:
    print("fake-shunt: config says fail", file=sys.stderr)
    sys.exit(1)
socks = []
time.sleep(0.2)  # listeners come up late: the harness must wait, not assume
def log(msg):
    print("[2026-01-01T00:00:00.000Z INFO  shunt::startup] " + msg, file=sys.stderr, flush=True)
service, lines, admin = None, [], None
for line in conf.splitlines():
    w = line.split("#")[0].split()
    if len(w) >= 2 and w[0] == "service":
        service = w[1]
    if len(w) >= 2 and w[0] in ("bind", "admin"):
        s = socket.socket()
        s.bind(("127.0.0.1", int(w[1].rsplit(":", 1)[1])))
        s.listen(16)
        socks.append(s)
        addr = "127.0.0.1:%d" % s.getsockname()[1]
        if w[0] == "admin":
            admin = "admin endpoint listening on " + addr
        else:
            lines.append("service %s listening on %s" % (service, addr))
        time.sleep(0.05)  # one line at a time: the harness must wait for all of them
for l in lines + ([admin] if admin else []):
    log(l)
    time.sleep(0.05)
time.sleep(60)
"##,
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

#[test]
fn start_shunt_waits_for_every_listener_and_reads_its_addresses() {
    let dir = TempDir::new("fake");
    let conf = "admin 127.0.0.1:0\nservice x\n bind 127.0.0.1:0\n bind 127.0.0.1:0\nservice y\n bind 127.0.0.1:0\n";
    let mut s = start_shunt_with(&fake_shunt(&dir), conf, &[]);
    // Ready means every start-up line printed, with no connection made to find out.
    assert_eq!(s.sockets_in_state("LISTEN"), 4);
    assert_eq!(s.sockets_in_state("ESTABLISHED"), 0);
    let (x, y, admin) = (s.addrs("x"), s.addr("y"), s.admin());
    assert_eq!(x.len(), 2, "{:?}", s.listening);
    let mut ports: Vec<u16> = x.iter().chain([&y, &admin]).map(|a| a.port()).collect();
    ports.sort();
    ports.dedup();
    assert!(ports.len() == 4 && !ports.contains(&0), "four real ports: {:?}", s.listening);
    // They are the ports the process holds, and they accept connections.
    let listening: Vec<u16> = tcp_sockets(s.pid()).iter().map(|t| t.local.port()).collect();
    for p in &ports {
        assert!(listening.contains(p), "port {p} not held by the process: {listening:?}");
    }
    drop(connect(y));
    assert!(s.fd_count() >= 4);
    assert!(s.rss_kib() > 0);
    assert!(s.conf_path.is_file());
    let st = s.terminate(T);
    assert_eq!(st.signal(), Some(libc::SIGTERM));
}

#[test]
#[should_panic(expected = "no listening line for service")]
fn asking_for_a_service_that_does_not_listen_fails() {
    let dir = TempDir::new("fake");
    let s = start_shunt_with(&fake_shunt(&dir), "service x\n bind 127.0.0.1:0\n", &[]);
    s.addr("other");
}

#[test]
#[should_panic(expected = "config says fail")]
fn start_shunt_reports_the_log_of_a_process_that_exits() {
    let dir = TempDir::new("fake");
    start_shunt_with(&fake_shunt(&dir), "# fail\nservice x\n bind 127.0.0.1:0\n", &[]);
}

#[test]
fn refuser_refuses_until_it_listens_on_the_same_port() {
    let r = Refuser::new();
    let addr = r.addr;
    let e = TcpStream::connect_timeout(&addr, T).expect_err("nothing listens on a Refuser");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
    // Nobody else can take the port while it is held.
    assert!(TcpListener::bind(addr).is_err(), "the held port could be bound by someone else");
    let l = r.listen();
    assert_eq!(l.local_addr().unwrap(), addr);
    drop(connect(addr));
}

#[test]
fn name_and_health_servers_answer_and_close() {
    let n = name_server("alpha");
    assert_eq!(read_all(&mut connect(n.addr)), b"alpha");
    let healthy = Arc::new(AtomicBool::new(true));
    let h = health_server("beta", Arc::clone(&healthy));
    assert_eq!(fetch(h.addr), "beta");
    assert_eq!(http_get(h.addr, "/health"), (200, "ok".to_string()));
    healthy.store(false, Ordering::SeqCst);
    assert_eq!(http_get(h.addr, "/health").0, 503);
}

#[test]
fn http_raw_sends_what_it_is_given() {
    // A server that answers only a request that arrived byte for byte, and closes silently on
    // anything else.
    let srv = TcpServer::start_unheld(|mut s, _| {
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap_or(0);
        if &buf[..n] == b"BREW /pot HTCPCP/1.0\r\n\r\n" {
            let _ = s.write_all(b"HTTP/1.1 418 I'm a teapot\r\n\r\nshort and stout");
        }
    });
    assert_eq!(http_raw(srv.addr, b"BREW /pot HTCPCP/1.0\r\n\r\n"), (418, "short and stout".to_string()));
    assert_eq!(http_raw(srv.addr, b"GET / HTTP/1.0\r\n\r\n"), (0, String::new()));
}

#[test]
fn metrics_are_read_by_exact_key() {
    let text = "# HELP x\nshunt_active_connections 3\nshunt_x_total{service=\"svc\"} 7\n\
                shunt_x_total{service=\"svc2\"} 9\n";
    assert_eq!(metric_in(text, "shunt_active_connections"), Some(3.0));
    assert_eq!(metric(text, "shunt_x_total{service=\"svc\"}"), 7.0);
    assert_eq!(metric_in(text, "shunt_x"), None, "a prefix of a name is not the name");
}

#[test]
fn wait_some_returns_the_value() {
    let mut n = 0;
    let got = wait_some(T, "the third poll", || {
        n += 1;
        (n == 3).then_some(n * 10)
    });
    assert_eq!(got, 30);
}
