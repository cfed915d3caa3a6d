//! In-process integration tests: the balancer runs as a library in this process, backends are
//! real sockets on loopback served by threads, clients are std TcpStreams.

use shunt::config::{Balance, Bind, Check, CheckKind, Config, ListenAddr, Server, Service};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

fn service(servers: Vec<(&str, SocketAddr, u32)>) -> Service {
    Service {
        name: "svc".into(),
        line: 1,
        binds: vec![Bind {
            addr: ListenAddr::Addr("127.0.0.1:0".parse().unwrap()),
            line: 2,
        }],
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
        connect_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(60),
        max_conns: None,
        splice: true,
    }
}

fn config(services: Vec<Service>) -> Config {
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
fn echo_server() -> (SocketAddr, Arc<AtomicUsize>) {
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
fn name_server(name: &'static str) -> SocketAddr {
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

fn start(c: Config) -> (shunt::Running, SocketAddr) {
    let r = shunt::start(c).expect("start");
    let addr = r.listening[0].1;
    (r, addr)
}

fn read_all(s: &mut TcpStream) -> Vec<u8> {
    let mut v = Vec::new();
    s.read_to_end(&mut v).unwrap();
    v
}

fn stop(r: shunt::Running) {
    r.control().drain(Instant::now() + Duration::from_secs(5));
    r.wait().unwrap();
}

#[test]
fn echo_round_trip_splice_and_copy() {
    for splice in [true, false] {
        let (echo, _) = echo_server();
        let mut svc = service(vec![("e", echo, 1)]);
        svc.splice = splice;
        let (r, addr) = start(config(vec![svc]));
        let mut c = TcpStream::connect(addr).unwrap();
        let payload: Vec<u8> = (0..2_000_000u32).map(|i| (i * 7 + i / 255) as u8).collect();
        let p2 = payload.clone();
        let mut w = c.try_clone().unwrap();
        let writer = thread::spawn(move || {
            w.write_all(&p2).unwrap();
            w.shutdown(Shutdown::Write).unwrap();
        });
        let got = read_all(&mut c);
        writer.join().unwrap();
        assert_eq!(got.len(), payload.len(), "splice={splice}");
        assert!(got == payload, "byte-exact, splice={splice}");
        stop(r);
    }
}

#[test]
fn roundrobin_weights_exact() {
    let a = name_server("a");
    let b = name_server("b");
    let (r, addr) = start(config(vec![service(vec![("a", a, 1), ("b", b, 2)])]));
    let mut seq = String::new();
    for _ in 0..90 {
        let mut c = TcpStream::connect(addr).unwrap();
        seq.push_str(std::str::from_utf8(&read_all(&mut c)).unwrap());
    }
    assert_eq!(seq.matches('a').count(), 30, "{seq}");
    assert_eq!(seq.matches('b').count(), 60, "{seq}");
    assert!(
        !seq.contains("bbb") && !seq.contains("aa"),
        "smooth interleaving: {seq}"
    );
    stop(r);
}

#[test]
fn dead_server_is_retried_without_client_error() {
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }; // closed: connects are refused
    let live = name_server("live");
    let mut svc = service(vec![("dead", dead, 1), ("live", live, 1)]);
    svc.check = Check {
        kind: CheckKind::None,
        ..Check::default()
    };
    let (r, addr) = start(config(vec![svc]));
    for _ in 0..20 {
        let mut c = TcpStream::connect(addr).unwrap();
        assert_eq!(read_all(&mut c), b"live");
    }
    let failed = r.stats.servers[0][0]
        .failed_connects
        .load(Ordering::Relaxed);
    assert!(
        (1..=3).contains(&failed),
        "a dead server costs at most `fall` connects, got {failed}"
    );
    stop(r);
}
