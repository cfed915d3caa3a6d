//! Fault injection at capacity (see tests/common/lab for the lab: namespaces joined by veth,
//! test_peer servers, and the invariants every test ends with): 8,000 concurrent connections,
//! then more than `max_conns` (they wait, then are refused, then service recovers), and an
//! ephemeral-port squeeze on the balancer (fail over to the backup, refuse cleanly, recover).
//!
//! Each test prints a `RESULT` line with its figures (`--no-capture` shows them). Needs root,
//! iproute2 (`ip netns`) and sysctl inside a namespace.

mod common;

use common::lab::*;
use common::*;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

/// One echo round trip of an 8-byte token.
fn echo_token(s: &mut TcpStream, token: u64) -> io::Result<()> {
    s.write_all(&token.to_le_bytes())?;
    let mut b = [0u8; 8];
    s.read_exact(&mut b)?;
    if u64::from_le_bytes(b) != token {
        return Err(io::Error::other(format!("token {token} came back as {}", u64::from_le_bytes(b))));
    }
    Ok(())
}

#[test]
fn eight_thousand_connections_then_more_than_max_conns_wait_then_are_refused_and_recover() {
    const N: usize = 8000;
    const EXTRA: usize = 100;
    const REFUSED: usize = 50;
    // Long enough that the first phase (100 waiting clients served once slots free) stays well
    // inside it even on a loaded machine.
    const QUEUE: Duration = Duration::from_secs(5);
    let c = conf(
        &["", ""],
        &format!("workers 2\nmax_conns {N}\n"),
        &format!("  timeout idle 5m\n  timeout queue {}s\n  check tcp interval 1s\n", QUEUE.as_secs()),
    );
    let mut lab = Lab::start(&[&["echo-loop"], &["echo-loop"]], &c);
    lab.client(|| {
        for t in 0..4u64 {
            let mut s = dial(lb_addr(), T).unwrap();
            echo_token(&mut s, t).unwrap();
        }
    });
    wait_for(T, "warm-up sessions closed", || lab.active() == 0);
    let base = lab.baseline();
    assert_eq!(lab.metric("shunt_max_connections"), N as f64, "max_conns in force");
    let t0 = Instant::now();
    let mut held: Vec<TcpStream> = lab.client(|| {
        let hs: Vec<_> = (0..4)
            .map(|t| {
                thread::spawn(move || {
                    (0..N / 4)
                        .map(|i| {
                            let token = (t * N / 4 + i) as u64;
                            let mut s = dial(lb_addr(), T).unwrap_or_else(|e| panic!("connection {token}: {e}"));
                            echo_token(&mut s, token).unwrap_or_else(|e| panic!("connection {token}: {e}"));
                            s
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let open_took = t0.elapsed();
    assert_eq!(held.len(), N);
    assert_eq!(lab.active(), N as u64, "/status active_connections");
    let (sockets, pipes, _) = fd_kinds(lab.shunt.pid());
    assert!(sockets >= base.sockets + 2 * N && sockets <= base.sockets + 2 * N + 2, "{sockets} sockets");
    let rss_full = lab.shunt.rss_kib();
    assert!(rss_full < base.rss_kib + 64 * 1024, "RSS {rss_full} KiB for {N} idle connections");

    // More clients than max_conns: they wait in the backlog, unserved, not refused (for up to
    // `timeout queue`). Their first read watches for a wrong answer for 300 ms (a window, not a
    // bound: a slow machine only makes it pass more easily).
    let t_extra = Instant::now();
    let mut extra: Vec<TcpStream> = lab.client(|| {
        (0..EXTRA)
            .map(|i| {
                let mut s = dial(lb_addr(), Duration::from_millis(300)).expect("the backlog takes the connection");
                s.write_all(&(1_000_000 + i as u64).to_le_bytes()).unwrap();
                s
            })
            .collect()
    });
    let mut b = [0u8; 8];
    let waited = extra[0].read(&mut b);
    assert!(
        matches!(&waited, Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut),
        "a connection beyond max_conns was served (or refused): {waited:?}"
    );
    let m = lab.metrics();
    assert_eq!(metric_in(&m, "shunt_active_connections"), Some(N as f64));
    assert_eq!(metric_in(&m, "shunt_service_refused_total{service=\"svc\",reason=\"limit\"}"), Some(0.0));
    assert_eq!(metric_in(&m, "shunt_service_refused_total{service=\"svc\",reason=\"no_server\"}"), Some(0.0));
    // The wait is visible: accepting paused at the cap (per worker and listener, at least once).
    let pauses = metric_in(&m, "shunt_service_limit_pauses_total{service=\"svc\"}").unwrap_or(0.0);
    assert!(pauses >= 1.0, "the pause at max_conns is counted: {pauses}");
    // Slots free up: the waiting clients are served.
    let t_free = Instant::now();
    held.drain(..EXTRA).for_each(drop);
    for (i, s) in extra.iter_mut().enumerate() {
        s.set_read_timeout(Some(T)).unwrap();
        s.read_exact(&mut b).unwrap_or_else(|e| panic!("waiting client {i} not served once slots freed: {e}"));
        assert_eq!(u64::from_le_bytes(b), 1_000_000 + i as u64);
    }
    let served_after = t_free.elapsed();
    // A precondition, not a figure of shunt's: the waiting clients were served, not refused at
    // `timeout queue`, only if the slots freed before it ran out (measured: well under 1 s).
    assert!(t_free - t_extra < QUEUE, "the test was too slow to free slots within timeout queue");
    // The cap is full again (the served clients took the freed slots). Clients beyond it now wait
    // `timeout queue`, then are refused with a reset, each counted once in refused_total{limit}.
    assert_eq!(lab.active(), N as u64);
    let refused: Vec<(Duration, io::Result<usize>)> = lab.client(|| {
        let t0 = Instant::now();
        let mut late: Vec<TcpStream> = (0..REFUSED)
            .map(|i| {
                let mut s = dial(lb_addr(), T).expect("the backlog takes the connection");
                s.write_all(&(2_000_000 + i as u64).to_le_bytes()).unwrap();
                s
            })
            .collect();
        late.iter_mut()
            .map(|s| {
                let r = s.read(&mut [0u8; 8]);
                (t0.elapsed(), r)
            })
            .collect()
    });
    let mut refused_after = Vec::new();
    for (i, (at, r)) in refused.iter().enumerate() {
        assert!(
            matches!(r, Err(e) if e.kind() == io::ErrorKind::ConnectionReset),
            "client {i} beyond a full cap was not refused with a reset: {r:?}"
        );
        refused_after.push(*at);
    }
    // Refused at `timeout queue`: never before it (less the moments between t0 and the
    // connects), and not much after (4 s for a loaded machine, still inside the clients' 10 s
    // read timeout, which would report a refusal that never comes).
    let (first_refusal, last_refusal) = (refused_after[0], refused_after[REFUSED - 1]);
    assert!(
        first_refusal >= QUEUE - Duration::from_millis(200) && last_refusal <= QUEUE + Duration::from_secs(4),
        "refusals came {first_refusal:.2?}-{last_refusal:.2?} after the clients arrived (timeout queue {QUEUE:?})"
    );
    let m = lab.metrics();
    assert_eq!(
        metric_in(&m, "shunt_service_refused_total{service=\"svc\",reason=\"limit\"}"),
        Some(REFUSED as f64),
        "every refusal at the cap counted once"
    );
    assert_eq!(metric_in(&m, "shunt_active_connections"), Some(N as f64), "the refusals touched no session");
    // Recovery: with room again, a new client is served at once.
    held.drain(..1).for_each(drop);
    wait_for(T, "a slot freed", || lab.active() < N as u64);
    lab.client(|| {
        let mut s = dial(lb_addr(), T).unwrap();
        echo_token(&mut s, 3_000_000).expect("a client after the cap freed is served");
    });
    // The long-held connections still carry bytes.
    for (i, s) in held.iter_mut().enumerate().step_by(20) {
        echo_token(s, 5_000_000 + i as u64).unwrap_or_else(|e| panic!("held connection {i}: {e}"));
    }
    assert!(lab.shunt.is_running());
    drop(held);
    drop(extra);
    let inv = lab.invariants(&base);
    eprintln!(
        "RESULT 8000 connections: opened and echoed in {open_took:.2?}; {sockets} sockets (baseline {}), {pipes} pipe \
         ends, RSS {rss_full} KiB (baseline {} KiB); {EXTRA} more than max_conns waited unserved with \
         refused_total 0, and were served {served_after:.2?} after {EXTRA} slots freed; with the cap full \
         again, {REFUSED} more were refused with a reset {first_refusal:.2?}-{last_refusal:.2?} after arriving \
         (timeout queue {QUEUE:?}), refused_total{{limit}} = {REFUSED}, and a client was served as soon as a slot \
         freed; {inv}",
        base.sockets, base.rss_kib
    );
}

#[test]
fn ephemeral_port_squeeze_fails_over_to_the_backup_then_refuses_cleanly_and_recovers() {
    // In the lb namespace only ~100 source ports exist (40000-40100), per destination. Held
    // connections use them up towards s0; the next connect fails (EADDRNOTAVAIL) and is retried
    // on the backup s1 on another address, which has its own ~100; once both are spent, clients
    // are refused at once with a reset and counted. Closing the connections (servers first, so
    // no port is left in TIME_WAIT on the balancer) brings service back.
    const CLIENTS: usize = 260;
    // Connects fail at once here (EADDRNOTAVAIL), so the connect timeout only matters to tell a
    // refusal from a wait for it: 3 s, against refusals bounded at 2 s below.
    const CONNECT: Duration = Duration::from_secs(3);
    let c = conf(&["", " backup"], "", "  retries 3\n  timeout connect 3s\n  timeout idle 5m\n");
    let mut lab = Lab::start_with(&[&[], &[]], &c, |topo| {
        topo.lb
            .exec_ok(&["sysctl", "-w", "net.ipv4.ip_local_port_range=40000 40100"])
            .unwrap_or_else(|e| panic!("{e}"));
    });
    lab.warm_up(3);
    let base = lab.baseline();
    let t0 = Instant::now();
    // (stream if held, the server's name or the error, how long the answer took)
    let results: Vec<(Option<TcpStream>, String, Duration)> = lab.client(|| {
        (0..CLIENTS as u64)
            .map(|i| {
                let t = Instant::now();
                let mut s = match dial(lb_addr(), T) {
                    Ok(s) => s,
                    // (a refusal can be so quick that connect() itself reports the reset)
                    Err(e) => return (None, format!("{:?}", e.kind()), t.elapsed()),
                };
                if let Err(e) = s.write_all(&header(b'H', 400_000 + i, 0)) {
                    return (None, format!("{:?}", e.kind()), t.elapsed());
                }
                let mut name = [0u8; 3];
                match s.read_exact(&mut name) {
                    Ok(()) => (Some(s), String::from_utf8_lossy(&name[..2]).into_owned(), t.elapsed()),
                    Err(e) => (None, format!("{:?}", e.kind()), t.elapsed()),
                }
            })
            .collect()
    });
    let hold_took = t0.elapsed();
    let on = |n: &str| results.iter().filter(|r| r.0.is_some() && r.1 == n).count();
    let (s0, s1) = (on("s0"), on("s1"));
    let refused: Vec<(usize, String, Duration)> =
        results.iter().enumerate().filter(|(_, r)| r.0.is_none()).map(|(i, r)| (i, r.1.clone(), r.2)).collect();
    assert!((90..=101).contains(&s0), "connections held on s0 with ~100 source ports: {s0}");
    assert!((90..=101).contains(&s1), "connections held on the backup s1: {s1}");
    assert_eq!(s0 + s1 + refused.len(), CLIENTS);
    assert!(!refused.is_empty(), "the squeeze refused nobody");
    // No client was refused while the backup still had ports: every refusal comes after.
    assert!(refused.iter().all(|(i, _, _)| *i >= s0 + s1), "refused before both were full: {refused:?}");
    for (i, why, took) in &refused {
        assert!(
            ["ConnectionReset", "BrokenPipe"].contains(&why.as_str()),
            "client {i}: a clear refusal is a reset: {why}"
        );
        // At once (measured: a few ms), not after a connect timeout.
        assert!(*took < CONNECT * 2 / 3, "client {i} waited {took:?} for its refusal");
    }
    assert!(lab.shunt.is_running());
    // The refusals' lines come from the log thread a moment after the refusals themselves.
    let refusal = |x: &Session| x.code == "NC" || x.code == "SC";
    wait_for(T, "a line for every refusal", || {
        lab.shunt.sessions().iter().filter(|x| refusal(x)).count() >= refused.len()
    });
    let log = lab.shunt.log();
    assert!(log.contains("os error 99"), "EADDRNOTAVAIL logged:\n{log}");
    let m = lab.metrics();
    let fail0 = metric_in(&m, &srv_metric("shunt_server_connect_failures_total", "s0")).unwrap();
    let fail1 = metric_in(&m, &srv_metric("shunt_server_connect_failures_total", "s1")).unwrap();
    let no_server = metric_in(&m, "shunt_service_refused_total{service=\"svc\",reason=\"no_server\"}").unwrap();
    assert!(fail0 >= 1.0 && fail1 >= 1.0, "failed connects counted: s0 {fail0}, s1 {fail1}");
    let s = sessions(&log);
    let codes = count_codes(&s);
    let nc = codes.get("NC").copied().unwrap_or(0);
    let sc = codes.get("SC").copied().unwrap_or(0);
    assert_eq!(nc + sc, refused.len(), "every refusal logged as NC or SC: {codes:?}");
    assert_eq!(no_server as usize, nc, "refused_total{{reason=no_server}} counts the NC refusals");

    // Release: each held client asks its server to close first.
    let t_release = Instant::now();
    let held: Vec<TcpStream> = results.into_iter().filter_map(|r| r.0).collect();
    lab.client(move || {
        for mut s in held {
            s.write_all(b"!").unwrap();
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).unwrap();
        }
    });
    wait_for(T, "held sessions closed", || lab.active() == 0);
    let recovered = lab.client(|| first_served_since(t_release, Duration::from_secs(20), 500_000, "after release"));
    let s0_back = lab.wait_served_by("s0", t_release, Duration::from_secs(20));
    let outs = lab.sequential(20, 1000, 600_000);
    assert!(outs.iter().all(Outcome::ok), "{outs:?}");
    assert_eq!(served_by(&outs, "s0"), 20, "s0 back, the backup idle again");
    // Source ports still parked in TIME_WAIT towards the servers (health probes close first).
    let time_wait = lab.in_lb(&["ss", "-Htn", "state", "time-wait", "dport", "=", ":7000"]).lines().count();
    let inv = lab.invariants(&base);
    eprintln!(
        "RESULT port squeeze: {CLIENTS} held clients in {hold_took:.2?}: {s0} on s0, then {s1} on the backup s1 \
         (0 refusals while it had ports), {} refused with RST in at most {:.2?} ({nc} NC = refused_total no_server, \
         {sc} SC; failed connects s0 {fail0}, s1 {fail1}); after release first request served in {recovered:.2?}, \
         s0 serving in {s0_back:.2?}; {time_wait} source ports in TIME_WAIT towards the servers; {inv}",
        refused.len(),
        refused.iter().map(|r| r.2).max().unwrap()
    );
}
