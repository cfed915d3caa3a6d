//! `max_conns_per_ip` and `rate_per_ip`, with clients on many real source addresses
//! (127.0.0.N, and a /24 in a network namespace): exact over two workers, a token bucket per
//! source, every counter back to zero after closes, resets, refusals and timeouts, and with
//! `allow` over a namespace's /24.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

/// [`echoed_from`] 127.0.0.n.
fn echoed(n: u8, addr: SocketAddr) -> Option<TcpStream> {
    echoed_from(loopback(n), addr)
}

fn gauge(shunt: &Shunt, name: &str, scope: &str) -> f64 {
    metric(&http_get(shunt.admin(), "/metrics").1, &format!("{name}{{scope=\"{scope}\"}}"))
}

fn refused_per_ip(shunt: &Shunt, service: &str) -> f64 {
    let m = http_get(shunt.admin(), "/metrics").1;
    metric(&m, &format!("shunt_service_refused_total{{service=\"{service}\",reason=\"per_ip\"}}"))
}

#[test]
fn max_conns_per_ip_is_exact_over_two_workers() {
    let echo = EchoServer::start();
    let conf = format!(
        "log info\nadmin 127.0.0.1:0\nworkers 2\nservice s\n  bind 127.0.0.1:0\n  max_conns_per_ip 3\n  server e {}\n",
        echo.addr
    );
    let mut shunt = start_shunt(&conf);
    let addr = shunt.addr("s");
    // Ten tries from one source, each held open: the two workers share one count.
    let mut held: Vec<TcpStream> = (0..10).filter_map(|_| echoed(2, addr)).collect();
    assert_eq!(held.len(), 3, "exactly max_conns_per_ip connections from 127.0.0.2");
    let others: Vec<TcpStream> = (0..3).filter_map(|_| echoed(3, addr)).collect();
    assert_eq!(others.len(), 3, "another source has its own count");
    assert_eq!(gauge(&shunt, "shunt_per_ip_live_connections", "s"), 6.0);
    assert_eq!(gauge(&shunt, "shunt_per_ip_live_sources", "s"), 2.0);
    // One closes: its source may connect once more.
    held.pop().unwrap().shutdown(Shutdown::Both).unwrap();
    wait_for(T, "the closed connection to be released", || gauge(&shunt, "shunt_per_ip_live_connections", "s") == 5.0);
    held.extend(echoed(2, addr));
    assert_eq!(held.len(), 3);
    assert!(echoed(2, addr).is_none());
    assert_eq!(refused_per_ip(&shunt, "s"), 8.0, "7 refused at first, 1 after");
    drop((held, others));
    shunt.wait_all_logged(T);
    assert_eq!(gauge(&shunt, "shunt_per_ip_live_connections", "s"), 0.0);
    assert_eq!(gauge(&shunt, "shunt_per_ip_live_sources", "s"), 0.0);
}

#[test]
fn rate_per_ip_lets_a_burst_through_then_refuses_until_it_refills() {
    let echo = EchoServer::start();
    // 3 per minute: a token every 20 s, far longer than this test runs, however loaded.
    let conf = format!(
        "log info\nadmin 127.0.0.1:0\nrate_per_ip 3/m\nservice s\n  bind 127.0.0.1:0\n  server e {}\n",
        echo.addr
    );
    let mut shunt = start_shunt(&conf);
    let addr = shunt.addr("s");
    let served: Vec<bool> = (0..5).map(|_| echoed(4, addr).is_some()).collect();
    assert_eq!(served, [true, true, true, false, false], "a burst of 3, then refused");
    assert!(echoed(5, addr).is_some(), "another source has its own bucket");
    shunt.wait_all_logged(T);
    assert_eq!(refused_per_ip(&shunt, "s"), 2.0);
    assert!(shunt.log().contains("s: refused 127.0.0.4 (global rate_per_ip)"), "{}", shunt.log());
    assert_eq!(gauge(&shunt, "shunt_per_ip_live_connections", "global"), 0.0);
}

#[test]
fn every_count_returns_to_zero_after_closes_resets_refusals_and_timeouts() {
    // The server resets connections that send "reset", answers the others.
    let server = TcpServer::start_unheld(|mut s, _| {
        let mut buf = [0u8; 5];
        if s.read_exact(&mut buf).is_err() {
            return;
        }
        if &buf == b"reset" {
            socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO)).unwrap();
            return;
        }
        let _ = s.write_all(&buf);
        let _ = s.read(&mut buf);
    });
    let conf = format!(
        "log info\nadmin 127.0.0.1:0\nmax_conns_per_ip 4\nservice s\n  bind 127.0.0.1:0\n  max_conns_per_ip 2\n\
         \x20 timeout idle 300ms\n  server a {}\n",
        server.addr
    );
    let mut shunt = start_shunt(&conf);
    let addr = shunt.addr("s");
    let live = |shunt: &Shunt| gauge(shunt, "shunt_per_ip_live_connections", "s");
    let mut idle = Vec::new();
    for n in 10..14u8 {
        // A clean close, a client reset, a refusal (the third), a server reset, an idle timeout.
        let clean = echoed(n, addr).unwrap();
        let reset = echoed(n, addr).unwrap();
        assert!(echoed(n, addr).is_none(), "the third from 127.0.0.{n}");
        drop(clean);
        net_reset(reset);
        wait_for(T, "both to be released", || live(&shunt) == 0.0);
        let mut by_server = connect_from(loopback(n), addr).unwrap();
        by_server.write_all(b"reset").unwrap();
        let _ = by_server.read(&mut [0u8; 1]);
        idle.push(echoed(n, addr).unwrap()); // left open: the idle timeout ends it
        wait_for(T, "the server's reset to be released", || live(&shunt) <= 1.0);
    }
    wait_for(T, "every per-source count back to zero", || {
        ["s", "global"].iter().all(|scope| {
            gauge(&shunt, "shunt_per_ip_live_connections", scope) == 0.0
                && gauge(&shunt, "shunt_per_ip_live_sources", scope) == 0.0
        })
    });
    let sessions = shunt.wait_all_logged(T);
    let codes: Vec<&str> = sessions.iter().map(|s| s.code.as_str()).collect();
    assert!(["--", "CD", "SD", "TD"].iter().all(|c| codes.contains(c)), "{codes:?}");
    assert_eq!(refused_per_ip(&shunt, "s"), 4.0);
}

/// Closes with a reset (`SO_LINGER` 0).
fn net_reset(s: TcpStream) {
    socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO)).unwrap();
}

/// A namespace whose loopback answers for the whole of 10.88.0.0/24 (`ip route add local`), so
/// clients can come from fifty real addresses that are not 127/8.
fn slash24() -> Option<Netns> {
    let ns = match Netns::new() {
        Ok(ns) => ns,
        Err(e) if std::env::var("SHUNT_SKIP_NETNS").as_deref() == Ok("1") => {
            eprintln!("SKIPPED (SHUNT_SKIP_NETNS=1): {e}");
            return None;
        }
        Err(e) => panic!("cannot make a network namespace: {e} (set SHUNT_SKIP_NETNS=1 to skip)"),
    };
    ns.exec_ok(&["ip", "route", "add", "local", "10.88.0.0/24", "dev", "lo"]).unwrap();
    Some(ns)
}

#[test]
fn a_slash_24_of_clients_in_a_namespace_meets_allow_and_max_conns_per_ip() {
    let Some(ns) = slash24() else { return };
    let nginx = Nginx::start_opts(NginxOpts { name: "nginx-24", netns: Some(&ns.name), ..NginxOpts::default() });
    let conf = format!(
        "log info\nadmin 127.0.0.1:0\nservice s\n  bind 10.88.0.1:0\n  allow 10.88.0.0/28\n  max_conns_per_ip 1\n  server n {}\n",
        nginx.addr
    );
    let shunt = start_shunt_wrapped(&["ip", "netns", "exec", &ns.name], &conf);
    let (addr, admin) = (shunt.addr("s"), shunt.admin());
    let source = |n: u8| IpAddr::V4(Ipv4Addr::new(10, 88, 0, n));
    let (held, twice, outside) = run_in(&ns.name, || {
        // .2 to .15 are in the allowed /28: one connection each, a second refused.
        let held: Vec<TcpStream> = (2..=15).filter_map(|n| served_from(source(n), addr)).collect();
        let twice = (2..=15).filter(|&n| served_from(source(n), addr).is_some()).count();
        let outside = (16..=50).filter(|&n| served_from(source(n), addr).is_some()).count();
        (held, twice, outside)
    });
    assert_eq!((held.len(), twice, outside), (14, 0, 0), "one each inside the /28, none outside");
    let metrics = || run_in(&ns.name, || http_get(admin, "/metrics").1);
    let m = metrics();
    let refused =
        |reason: &str| metric(&m, &format!("shunt_service_refused_total{{service=\"s\",reason=\"{reason}\"}}"));
    assert_eq!((refused("acl"), refused("per_ip")), (35.0, 14.0));
    assert_eq!(metric(&m, "shunt_per_ip_live_sources{scope=\"s\"}"), 14.0);
    drop(held);
    wait_for(T, "every source released", || metric(&metrics(), "shunt_per_ip_live_connections{scope=\"s\"}") == 0.0);
    assert!(shunt.log().contains("s: refused 10.88.0.16 (no allow rule matches)"), "{}", shunt.log());
}

/// A keep-alive HTTP request from `from` that nginx answered through shunt: the connection,
/// still open; `None` if shunt refused it.
fn served_from(from: IpAddr, addr: SocketAddr) -> Option<TcpStream> {
    let mut c = connect_from(from, addr).ok()?;
    c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    c.read_exact(&mut head).ok()?;
    (&head == b"HTTP/1.1 200").then_some(c)
}
