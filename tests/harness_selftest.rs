//! Tests of the test harness itself (tests/common), so that a failing shunt test points at shunt,
//! not at its tools. None of these needs the shunt binary: start-up handling is exercised with a
//! small Python stand-in that binds what the conf says.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Command;
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
fn conf_ports_are_parsed() {
    let conf = "admin 127.0.0.1:9090 # comment\n\
                service a\n  bind *:8080\n  bind [::1]:8081 accept_proxy\n\
                # bind 127.0.0.1:1\n  server s 127.0.0.1:9001\n\
                service b\n\tbind\t0.0.0.0:8080\n";
    assert_eq!(conf_listen_ports(conf), vec![9090, 8080, 8081]);
}

/// A stand-in for shunt: reads `-c FILE`, listens on each `bind`/`admin` port, then waits, or
/// exits 1 at once if the conf contains `fail`.
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
for line in conf.splitlines():
    w = line.split("#")[0].split()
    if len(w) >= 2 and w[0] in ("bind", "admin"):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", int(w[1].rsplit(":", 1)[1])))
        s.listen(16)
        socks.append(s)
print("fake-shunt: ready", file=sys.stderr, flush=True)
time.sleep(60)
"##,
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

#[test]
fn start_shunt_waits_for_every_listener() {
    let dir = TempDir::new("fake");
    let (a, b, admin) = (free_port(), free_port(), free_port());
    let conf = format!("admin 127.0.0.1:{admin}\nservice x\n bind 127.0.0.1:{a}\n bind 127.0.0.1:{b}\n");
    let mut s = start_shunt_with(&fake_shunt(&dir), &conf, &[]);
    // Ready means listening, with no connection made to find out.
    assert_eq!(s.sockets_in_state("LISTEN"), 3);
    assert_eq!(s.sockets_in_state("ESTABLISHED"), 0);
    assert!(s.fd_count() >= 3);
    assert!(s.rss_kib() > 0);
    assert!(s.conf_path.is_file());
    let st = s.terminate(T);
    assert_eq!(st.signal(), Some(libc::SIGTERM));
}

#[test]
#[should_panic(expected = "config says fail")]
fn start_shunt_reports_the_log_of_a_process_that_exits() {
    let dir = TempDir::new("fake");
    let conf = format!("# fail\nservice x\n bind 127.0.0.1:{}\n", free_port());
    start_shunt_with(&fake_shunt(&dir), &conf, &[]);
}
