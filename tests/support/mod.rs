//! In-process test support: build a `Config` in code, real backends on loopback served by
//! threads, small clients, and a polling `wait_for` (no bare sleeps as synchronisation).
#![allow(dead_code)] // each test binary uses its own subset

use shunt::config::{Balance, Bind, Check, Config, ListenAddr, Server, Service};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

pub fn service(servers: Vec<(&str, SocketAddr, u32)>) -> Service {
    Service {
        name: "svc".into(),
        line: 1,
        binds: vec![Bind { addr: ListenAddr::Addr("127.0.0.1:0".parse().unwrap()), line: 2 }],
        balance: Balance::RoundRobin,
        servers: servers
            .into_iter()
            .enumerate()
            .map(|(i, (name, addr, weight))| Server {
                name: name.into(),
                addr,
                weight,
                backup: false,
                disabled: false,
                maxconn: None,
                line: 3 + i,
            })
            .collect(),
        check: Check::default(),
        retries: 3,
        timeouts: shunt::config::Timeouts {
            connect: Duration::from_secs(2),
            idle: Duration::from_secs(60),
            fin: Duration::from_secs(30),
        },
        max_conns: None,
        queue_timeout: Duration::from_secs(5),
        splice: shunt::config::Splice::Auto,
    }
}

pub fn config(services: Vec<Service>) -> Config {
    Config {
        path: PathBuf::from("test.conf"),
        workers: 1,
        max_conns: 10_000,
        admin: None,
        admin_token: None,
        drain_timeout: Duration::from_secs(5),
        log_level: log::LevelFilter::Info,
        services,
    }
}

/// Echo backend: writes back everything, passes half-close on (FIN after the echo).
pub fn echo_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&count);
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            c.fetch_add(1, Ordering::SeqCst);
            thread::spawn(move || {
                let mut buf = [0u8; 65536];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = s.shutdown(Shutdown::Write);
            });
        }
    });
    (addr, count)
}

/// Backend that answers every connection with its name and closes.
pub fn name_server(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let _ = s.write_all(name.as_bytes());
        }
    });
    addr
}

pub fn start(c: Config) -> (shunt::Running, SocketAddr) {
    let r = shunt::start(c).expect("start");
    let addr = r.listening[0].1;
    (r, addr)
}

pub fn read_all(s: &mut TcpStream) -> Vec<u8> {
    let mut v = Vec::new();
    s.read_to_end(&mut v).unwrap();
    v
}

pub fn stop(r: shunt::Running) {
    r.supervisor.drain(Instant::now() + Duration::from_secs(5));
    r.wait().unwrap();
}

/// Polls `f` every 5 ms until it holds; panics with `what` after `limit`.
pub fn wait_for(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for: {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

/// HTTP backend whose /health answers 200 while `healthy` is set, 503 otherwise; any other
/// request gets the backend's name.
pub fn http_server(name: &'static str, healthy: Arc<std::sync::atomic::AtomicBool>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let healthy = Arc::clone(&healthy);
            thread::spawn(move || {
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]);
                let reply = if req.starts_with("GET /health") {
                    if healthy.load(Ordering::SeqCst) {
                        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_string()
                    } else {
                        "HTTP/1.1 503 Unavailable\r\nContent-Length: 0\r\n\r\n".to_string()
                    }
                } else {
                    name.to_string()
                };
                let _ = s.write_all(reply.as_bytes());
            });
        }
    });
    addr
}

pub fn fetch(addr: SocketAddr) -> String {
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    String::from_utf8(read_all(&mut c)).unwrap()
}

/// A listener whose accept queue is full: further SYNs are dropped, so connects to it hang
/// like connects to a black-holed host.
pub fn black_hole() -> (socket2::Socket, TcpStream, SocketAddr) {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into()).unwrap();
    s.listen(0).unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    let filler = TcpStream::connect(addr).unwrap();
    // Make sure the queue is really full: one more connect must not complete quickly.
    let probe = TcpStream::connect_timeout(&addr, Duration::from_millis(200));
    assert!(probe.is_err(), "accept queue not full, cannot simulate a black hole");
    (s, filler, addr)
}
