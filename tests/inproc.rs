//! In-process integration tests: the balancer runs as a library in this process
//! (tests/common/inproc.rs), backends are real sockets on loopback served by the harness's
//! threads, clients are std TcpStreams.

mod common;

use common::inproc::*;
use common::*;
use shunt::config::{Check, CheckKind};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(10);

#[test]
fn echo_round_trip_every_splice_mode() {
    use shunt::config::Splice;
    for splice in [Splice::Auto, Splice::Always, Splice::Off] {
        let echo = EchoServer::start();
        let mut svc = service(vec![("e", echo.addr, 1)]);
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
        assert_eq!(got.len(), payload.len(), "splice={splice:?}");
        assert!(got == payload, "byte-exact, splice={splice:?}");
        stop(r);
    }
}

#[test]
fn roundrobin_weights_exact() {
    let a = name_server("a");
    let b = name_server("b");
    let (r, addr) = start(config(vec![service(vec![("a", a.addr, 1), ("b", b.addr, 2)])]));
    let mut seq = String::new();
    for _ in 0..90 {
        let mut c = TcpStream::connect(addr).unwrap();
        seq.push_str(std::str::from_utf8(&read_all(&mut c)).unwrap());
    }
    assert_eq!(seq.matches('a').count(), 30, "{seq}");
    assert_eq!(seq.matches('b').count(), 60, "{seq}");
    assert!(!seq.contains("bbb") && !seq.contains("aa"), "smooth interleaving: {seq}");
    stop(r);
}

#[test]
fn dead_server_is_retried_without_client_error() {
    let dead = Refuser::new(); // connects are refused
    let live = name_server("live");
    let mut svc = service(vec![("dead", dead.addr, 1), ("live", live.addr, 1)]);
    svc.check = Check { kind: CheckKind::None, ..Check::default() };
    let (r, addr) = start(config(vec![svc]));
    for _ in 0..20 {
        let mut c = TcpStream::connect(addr).unwrap();
        assert_eq!(read_all(&mut c), b"live");
    }
    let failed = r.snapshot().services[0].servers[0].failed_connects;
    assert!((1..=3).contains(&failed), "a dead server costs at most `fall` connects, got {failed}");
    stop(r);
}

#[test]
fn server_half_close_first_client_keeps_sending() {
    // The server greets, sends FIN, then still reads the client's upload to the end.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = l.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.write_all(b"greeting").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        tx.send(got).unwrap();
    });
    let (r, addr) = start(config(vec![service(vec![("b", backend, 1)])]));
    let mut c = TcpStream::connect(addr).unwrap();
    let mut greeting = Vec::new();
    c.read_to_end(&mut greeting).unwrap();
    assert_eq!(greeting, b"greeting", "server FIN reached the client after its data");
    let upload = vec![0x5au8; 1 << 20];
    c.write_all(&upload).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let got = rx.recv_timeout(T).unwrap();
    assert_eq!(got.len(), upload.len(), "upload after the server's FIN arrives whole");
    wait_for(T, "session closed", || r.stats.active_total.load(Ordering::Relaxed) == 0);
    stop(r);
}

#[test]
fn many_concurrent_clients_get_their_own_bytes() {
    let echo = EchoServer::start();
    let (r, addr) = start(config(vec![service(vec![("e", echo.addr, 1)])]));
    let clients: Vec<_> = (0..50u32)
        .map(|id| {
            thread::spawn(move || {
                let mut c = TcpStream::connect(addr).unwrap();
                let payload: Vec<u8> = (0..200_000u32).map(|i| (i.wrapping_mul(31) ^ id) as u8).collect();
                let mut w = c.try_clone().unwrap();
                let p2 = payload.clone();
                let writer = thread::spawn(move || {
                    w.write_all(&p2).unwrap();
                    w.shutdown(Shutdown::Write).unwrap();
                });
                let got = read_all(&mut c);
                writer.join().unwrap();
                assert!(got == payload, "client {id} got someone else's or partial bytes");
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    wait_for(T, "all sessions closed", || r.stats.active_total.load(Ordering::Relaxed) == 0);
    stop(r);
}

#[test]
fn http_check_takes_server_down_and_rise_brings_it_back() {
    use std::sync::atomic::AtomicBool;
    let a_ok = Arc::new(AtomicBool::new(true));
    let a = health_server("a", Arc::clone(&a_ok));
    let b = health_server("b", Arc::new(AtomicBool::new(true)));
    let mut svc = service(vec![("a", a.addr, 1), ("b", b.addr, 1)]);
    svc.check = Check {
        kind: CheckKind::Http {
            method: "GET".into(),
            path: "/health".into(),
            expect: shunt::config::StatusMatch::Class(2),
        },
        interval: Duration::from_millis(50),
        timeout: Duration::from_millis(500),
        rise: 3,
        fall: 2,
        port: None,
        line: 0,
    };
    let (r, addr) = start(config(vec![svc]));
    let up = |r: &shunt::Running| r.stats.current().servers[0][0].up.load(Ordering::Relaxed);
    wait_for(T, "first probe of a passes", || {
        r.stats.current().servers[0][0].last_check.lock().unwrap().ok == Some(true)
    });
    a_ok.store(false, Ordering::SeqCst);
    wait_for(T, "a marked down", || !up(&r));
    let detail = r.stats.current().servers[0][0].last_check.lock().unwrap().detail.clone();
    assert!(detail.contains("503"), "last check says why: {detail}");
    // The worker hears the verdict over its channel; once it has, a gets nothing.
    wait_for(T, "traffic avoids a", || (0..4).all(|_| fetch(addr) == "b"));
    a_ok.store(true, Ordering::SeqCst);
    wait_for(T, "a back up after rise", || up(&r));
    wait_for(T, "a serves again", || (0..4).any(|_| fetch(addr) == "a"));
    stop(r);
}

#[test]
fn backup_serves_only_while_every_regular_server_is_down() {
    let (dead1, dead2) = (Refuser::new(), Refuser::new());
    let spare = name_server("spare");
    let mut svc = service(vec![("d1", dead1.addr, 1), ("d2", dead2.addr, 1), ("spare", spare.addr, 1)]);
    svc.servers[2].backup = true;
    svc.check = Check { kind: CheckKind::Tcp, interval: Duration::from_millis(50), ..Check::default() };
    let (r, addr) = start(config(vec![svc]));
    // Active probes find both regular servers dead; from then on the backup takes everything.
    wait_for(T, "regular servers down", || {
        !r.stats.current().servers[0][0].up.load(Ordering::Relaxed)
            && !r.stats.current().servers[0][1].up.load(Ordering::Relaxed)
    });
    for _ in 0..10 {
        let mut c = TcpStream::connect(addr).unwrap();
        assert_eq!(read_all(&mut c), b"spare");
    }
    stop(r);
}

#[test]
fn backup_idle_while_a_regular_server_is_up() {
    let live = name_server("live");
    let spare = name_server("spare");
    let mut svc = service(vec![("live", live.addr, 1), ("spare", spare.addr, 1)]);
    svc.servers[1].backup = true;
    let (r, addr) = start(config(vec![svc]));
    for _ in 0..10 {
        let mut c = TcpStream::connect(addr).unwrap();
        assert_eq!(read_all(&mut c), b"live");
    }
    stop(r);
}

#[test]
fn black_holed_server_times_out_and_client_is_served_elsewhere() {
    let hole = BlackHole::new();
    let live = name_server("live");
    let mut svc = service(vec![("hole", hole.addr, 1), ("live", live.addr, 1)]);
    const CONNECT: Duration = Duration::from_millis(200);
    svc.timeouts.connect = CONNECT;
    let (r, addr) = start(config(vec![svc]));
    let failed = |r: &shunt::Running| r.snapshot().services[0].servers[0].failed_connects;
    let hole_up = |r: &shunt::Running| r.stats.current().servers[0][0].up.load(Ordering::Relaxed);
    let t0 = Instant::now();
    // Round robin reaches the hole within two requests: its connect times out (one failure per
    // session: a retry never goes back to a server it tried) and live serves the client.
    let mut served = 0;
    while failed(&r) == 0 {
        assert!(served < 2, "two requests and the hole was never tried");
        let mut c = TcpStream::connect(addr).unwrap();
        assert_eq!(read_all(&mut c), b"live");
        served += 1;
    }
    // That one failure marks it down (the health thread decides, then tells the worker).
    wait_for(T, "the hole marked down", || !hole_up(&r));
    for _ in 0..4 {
        let mut c = TcpStream::connect(addr).unwrap();
        assert_eq!(read_all(&mut c), b"live");
    }
    // Once down, no connect waits out the timeout again. The time only says that no request
    // hung (one connect timeout takes 200 ms; the bound is generous for a loaded machine).
    assert_eq!(failed(&r), 1);
    assert!(t0.elapsed() < CONNECT * 25, "took {:?}", t0.elapsed());
    stop(r);
}

#[test]
fn idle_timeout_closes_both_sides() {
    const IDLE: Duration = Duration::from_millis(200);
    let echo = EchoServer::start();
    let mut svc = service(vec![("e", echo.addr, 1)]);
    svc.timeouts.idle = IDLE;
    let (r, addr) = start(config(vec![svc]));
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    c.read_exact(&mut buf).unwrap();
    let t0 = Instant::now();
    c.set_read_timeout(Some(T)).unwrap();
    assert_eq!(c.read(&mut buf).unwrap(), 0, "closed by the idle timeout");
    // Never before the idle time (less the moments between the echo's last byte and t0), and
    // not never: the upper bound only tells "the timer fired" from "closed for another reason
    // much later", so it is generous (the read timeout would report a timer that never fires).
    let waited = t0.elapsed();
    assert!(waited >= IDLE - Duration::from_millis(50) && waited < IDLE + Duration::from_secs(5), "waited {waited:?}");
    stop(r);
}

#[test]
fn drained_server_gets_no_new_connections_and_enable_restores_it() {
    use shunt::shared::AdminState;
    let a = name_server("a");
    let b = name_server("b");
    let (r, addr) = start(config(vec![service(vec![("a", a.addr, 1), ("b", b.addr, 1)])]));
    let name = &r.stats.current().config.services[0].name;
    r.supervisor.set_admin(name, "a", AdminState::Drain).unwrap();
    wait_for(T, "drain applied", || {
        (0..4).all(|_| {
            let mut c = TcpStream::connect(addr).unwrap();
            read_all(&mut c) == b"b"
        })
    });
    r.supervisor.set_admin(name, "a", AdminState::Enabled).unwrap();
    wait_for(T, "enable applied", || {
        let mut c = TcpStream::connect(addr).unwrap();
        read_all(&mut c) == b"a"
    });
    stop(r);
}

#[test]
fn max_conns_pauses_accepting_and_resumes() {
    let echo = EchoServer::start();
    let mut c = config(vec![service(vec![("e", echo.addr, 1)])]);
    c.max_conns = 2;
    let (r, addr) = start(c);
    let mut held: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"x").unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).unwrap();
            s
        })
        .collect();
    // The third connects (the kernel backlog takes it) but is not served while at the cap. (A
    // window to watch for a wrong answer: a slow machine can only make it pass more easily.)
    let mut third = TcpStream::connect(addr).unwrap();
    third.write_all(b"y").unwrap();
    third.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut b = [0u8; 1];
    assert!(third.read_exact(&mut b).is_err(), "served beyond max_conns");
    assert!(r.snapshot().services[0].limit_pauses >= 1, "the pause at the cap is counted");
    drop(held.pop());
    third.set_read_timeout(Some(T)).unwrap();
    third.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"y", "served once a slot freed");
    drop((held, third)); // stop() drains: nothing left to wait for
    stop(r);
}

/// A client whose first message came back through the echo server: its session is live.
fn echoed(addr: std::net::SocketAddr, msg: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, msg);
    s
}

/// The error a client past a full cap gets: a reset (on the read, or on the write if it came first).
fn refused_by_reset(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(s.read_exact(&mut b), Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
}

#[test]
fn max_conns_refuses_with_a_reset_once_full_for_timeout_queue() {
    // Long enough that "waited the queue" and "refused at once" cannot be mistaken for each
    // other on a loaded machine: the second is bounded at half of it.
    const QUEUE: Duration = Duration::from_secs(2);
    let echo = EchoServer::start();
    let mut svc = service(vec![("e", echo.addr, 1)]);
    svc.max_conns = Some(1);
    svc.queue_timeout = QUEUE;
    let (r, addr) = start(config(vec![svc]));
    let held = echoed(addr, b"x");

    // The first client past the cap waits `timeout queue`, then gets a reset, not a hang: never
    // before the queue time (less a little for the accept that precedes t0's connect), and not
    // never (the read timeout is 10 s; the upper bound is generous).
    let t0 = Instant::now();
    let mut waiting = TcpStream::connect(addr).unwrap();
    waiting.write_all(b"y").unwrap();
    waiting.set_read_timeout(Some(T)).unwrap();
    assert!(refused_by_reset(&mut waiting), "a client past the cap was not refused with a reset");
    let waited = t0.elapsed();
    assert!(
        waited >= QUEUE - Duration::from_millis(50) && waited < QUEUE + Duration::from_secs(5),
        "waited {waited:?}"
    );
    // While the cap stays full, a newcomer is refused without waiting again: well under the
    // queue time it would otherwise wait.
    let t1 = Instant::now();
    let mut late = TcpStream::connect(addr).unwrap();
    late.set_read_timeout(Some(T)).unwrap();
    assert!(refused_by_reset(&mut late), "a newcomer at a long-full cap was not refused");
    assert!(t1.elapsed() < QUEUE / 2, "newcomer waited {:?}", t1.elapsed());
    let snap = r.snapshot();
    assert_eq!(snap.services[0].refused_limit, 2, "refusals at the cap are counted");
    assert_eq!(snap.services[0].accepted, 1, "refused clients are not sessions");

    // Room frees: the next client is served.
    drop(held);
    wait_for(T, "the held session closed", || r.stats.active_total.load(Ordering::Relaxed) == 0);
    echoed(addr, b"z");
    assert_eq!(r.snapshot().services[0].refused_limit, 2);
    stop(r);
}

#[test]
fn timeout_queue_zero_refuses_at_once() {
    let echo = EchoServer::start();
    let mut c = config(vec![{
        let mut svc = service(vec![("e", echo.addr, 1)]);
        svc.queue_timeout = Duration::ZERO;
        svc
    }]);
    c.max_conns = 1; // the global cap counts as well
    let (r, addr) = start(c);
    let mut held = echoed(addr, b"x");
    let t0 = Instant::now();
    let mut past = TcpStream::connect(addr).unwrap();
    past.set_read_timeout(Some(T)).unwrap();
    assert!(refused_by_reset(&mut past), "not refused");
    // At once: well under the 5 s a client would wait with the default queue timeout.
    assert!(t0.elapsed() < Duration::from_millis(2500), "took {:?}", t0.elapsed());
    assert_eq!(r.snapshot().services[0].refused_limit, 1);
    held.write_all(b"w").unwrap();
    let mut b = [0u8; 1];
    held.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"w", "the live session is untouched by the refusal");
    drop(held);
    stop(r);
}

#[test]
fn sigterm_style_drain_lets_live_sessions_finish() {
    let echo = EchoServer::start();
    let (r, addr) = start(config(vec![service(vec![("e", echo.addr, 1)])]));
    let mut live = TcpStream::connect(addr).unwrap();
    live.write_all(b"before").unwrap();
    let mut b = [0u8; 6];
    live.read_exact(&mut b).unwrap();
    r.supervisor.drain(Instant::now() + Duration::from_secs(10));
    // New connections are refused once the listener is closed.
    wait_for(T, "listener closed", || TcpStream::connect(addr).is_err());
    live.write_all(b"after").unwrap();
    let mut b = [0u8; 5];
    live.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"after", "live session still streams during the drain");
    live.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_all(&mut live), b"");
    r.wait().unwrap();
}

#[test]
fn backup_serves_a_connection_whose_every_regular_server_just_failed() {
    // The only regular server dies; before any health verdict, the backup must already take
    // the connection that found it dead (retries allow it), not fail the client.
    let dead = Refuser::new();
    let spare = name_server("spare");
    let mut svc = service(vec![("dead", dead.addr, 1), ("spare", spare.addr, 1)]);
    svc.servers[1].backup = true;
    svc.check = Check { kind: CheckKind::None, fall: 3, ..Check::default() };
    let (r, addr) = start(config(vec![svc]));
    for _ in 0..5 {
        let mut c = TcpStream::connect(addr).unwrap();
        assert_eq!(read_all(&mut c), b"spare");
    }
    stop(r);
}

/// TCP sockets of this namespace in TIME_WAIT towards `port` (the balancer runs in this process,
/// and TIME_WAIT sockets belong to no process any more: the namespace's table is the place).
/// TIME_WAIT sockets towards `server`, as (local, remote) pairs.
fn time_wait_towards(server: SocketAddr) -> Vec<(SocketAddr, SocketAddr)> {
    let sockets = net_sockets("/proc/net");
    sockets
        .iter()
        .filter(|s| s.state == TcpState::TimeWait && s.remote == server)
        .map(|s| (s.local, s.remote))
        .collect()
}

#[test]
fn health_probes_leave_no_time_wait_on_the_balancer() {
    // A server that closes each connection once the probe side has closed (a FIN, read as EOF,
    // or a reset): with a FIN, the probe side, closing first, would end in TIME_WAIT.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server = listener.local_addr().unwrap();
    thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            thread::spawn(move || {
                let _ = s.read(&mut [0u8; 64]);
            });
        }
    });
    // Sockets of other tests, from before this port was ours, may linger towards it: only new
    // ones count.
    let before = time_wait_towards(server);
    let mut svc = service(vec![("s", server, 1)]);
    svc.check = Check {
        kind: CheckKind::Tcp,
        interval: Duration::from_millis(20),
        timeout: Duration::from_millis(500),
        rise: 1,
        fall: 1,
        port: None,
        line: 0,
    };
    let (r, _) = start(config(vec![svc]));
    let checks = || r.stats.current().servers[0][0].checks.load(Ordering::Relaxed);
    wait_for(T, "20 probes", || checks() >= 20);
    assert!(r.stats.current().servers[0][0].up.load(Ordering::Relaxed), "the server passed its probes");
    let lingering = time_wait_towards(server).iter().filter(|s| !before.contains(s)).count();
    assert_eq!(lingering, 0, "{lingering} probe connection(s) left in TIME_WAIT after {} probes", checks());
    stop(r);
}
