//! `allow` and `deny`, global and per service, with clients on many real source addresses
//! (127.0.0.N): the first matching rule decides, a refused client is reset at accept and costs
//! no server connection and no TLS handshake, refusals are counted, and a reload brings new
//! rules for new connections.

mod common;

use common::certs::{Ca, KeyKind};
use common::tls::*;
use common::*;
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

/// Echoes a few bytes from 127.0.0.n: served, or refused (reset or closed at once).
fn served(n: u8, addr: SocketAddr) -> bool {
    echoed_from(loopback(n), addr).is_some()
}

fn refused(shunt: &Shunt, service: &str) -> f64 {
    let m = http_get(shunt.admin(), "/metrics").1;
    metric(&m, &format!("shunt_service_refused_total{{service=\"{service}\",reason=\"acl\"}}"))
}

#[test]
fn the_first_matching_rule_decides_global_rules_first() {
    let echo = EchoServer::start();
    let conf = format!(
        "log info\nadmin 127.0.0.1:0\ndeny 127.0.0.4\n\
         service a\n  bind 127.0.0.1:0\n  deny 127.0.0.5\n  allow 127.0.0.0/29\n  server e {echo}\n\
         service open\n  bind 127.0.0.1:0\n  server e {echo}\n",
        echo = echo.addr
    );
    let mut shunt = start_shunt(&conf);
    let (a, open) = (shunt.addr("a"), shunt.addr("open"));
    let verdicts: Vec<(u8, bool)> = [2, 3, 4, 5, 9].iter().map(|&n| (n, served(n, a))).collect();
    // .2, .3: allowed by 127.0.0.0/29; .4: the global deny; .5: denied before the allow;
    // .9: no rule matches and an allow rule exists.
    assert_eq!(verdicts, [(2, true), (3, true), (4, false), (5, false), (9, false)]);
    // A service without rules of its own still has the global ones.
    assert!(served(9, open) && !served(4, open));
    let sessions = shunt.wait_all_logged(T);
    assert_eq!(sessions.len(), 3, "refused clients never became sessions: {sessions:#?}");
    assert_eq!(echo.accepted(), 3, "refused clients never reached the server");
    assert_eq!((refused(&shunt, "a"), refused(&shunt, "open")), (3.0, 1.0));
    assert!(shunt.log().contains("a: refused 127.0.0.5 (deny 127.0.0.5/32 on line 6)"), "{}", shunt.log());
    assert!(shunt.log().contains("a: refused 127.0.0.9 (no allow rule matches)"), "{}", shunt.log());
}

#[test]
fn ipv4_clients_of_a_dual_stack_listener_match_ipv4_rules() {
    let echo = EchoServer::start();
    let conf = format!(
        "log info\nadmin 127.0.0.1:0\nservice s\n  bind *:0\n  allow 127.0.0.2 ::1\n  server e {}\n",
        echo.addr
    );
    let mut shunt = start_shunt(&conf);
    let port = shunt.addr("s").port();
    let v4 = SocketAddr::from(([127, 0, 0, 1], port));
    assert!(served(2, v4), "127.0.0.2 arrives as ::ffff:127.0.0.2 and matches allow 127.0.0.2");
    assert!(!served(3, v4));
    let mut v6 = connect(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)));
    let mut back = [0u8; 2];
    v6.write_all(b"ok").unwrap();
    v6.read_exact(&mut back).unwrap();
    drop(v6);
    shunt.wait_all_logged(T);
    assert_eq!(refused(&shunt, "s"), 1.0);
}

#[test]
fn a_refused_client_costs_no_tls_handshake() {
    let mut ca = Ca::new("acl-ca");
    let cert = ca.server(&["localhost"], KeyKind::EcdsaP256);
    let backend = Nginx::start("nginx-acl");
    let conf = format!(
        "log info\nadmin 127.0.0.1:0\nservice web\n  bind 127.0.0.1:0\n  deny 127.0.0.7\n  tls cert {} key {}\n  server s {}\n",
        cert.cert.display(),
        cert.key.display(),
        backend.addr
    );
    let mut shunt = start_shunt(&conf);
    let addr = shunt.addr("web");
    // The reset may come before the connect call has even returned.
    match connect_from(loopback(7), addr) {
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!("connect: {e}"),
        Ok(mut c) => {
            let _ = c.write_all(&client_hello("localhost", &client_config(&ca.cert, &[], None)));
            let mut buf = [0u8; 64];
            match c.read(&mut buf) {
                Ok(0) => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
                other => panic!("a denied client got {other:?}, not a reset"),
            }
        }
    }
    assert_eq!(curl_https(addr, "localhost", "/", &ca.cert, &[]).unwrap(), b"nginx-acl\n");
    shunt.wait_all_logged(T);
    let m = http_get(shunt.admin(), "/metrics").1;
    assert_eq!(metric(&m, "shunt_tls_handshakes_total{service=\"web\"}"), 1.0, "only the allowed client's");
    let failed: f64 = ["timeout", "client_closed", "not_tls", "other"]
        .iter()
        .map(|r| metric(&m, &format!("shunt_tls_handshake_failures_total{{service=\"web\",reason=\"{r}\"}}")))
        .sum();
    assert_eq!((failed, refused(&shunt, "web")), (0.0, 1.0));
}

#[test]
fn a_reload_brings_new_rules_for_new_connections() {
    let echo = EchoServer::start();
    let rules =
        |r: &str| format!("log info\nadmin 127.0.0.1:0\nservice s\n  bind 127.0.0.1:0\n{r}  server e {}\n", echo.addr);
    let mut shunt = start_shunt(&rules("  deny 127.0.0.8\n"));
    let addr = shunt.addr("s");
    let mut live = connect_from(loopback(9), addr).unwrap();
    assert!(!served(8, addr) && served(9, addr));
    shunt.reload(&rules("  deny 127.0.0.9\n"));
    shunt.wait_log("taken (generation 2)", T);
    assert!(served(8, addr) && !served(9, addr));
    // The session that was let in before goes on.
    let mut back = [0u8; 4];
    live.write_all(b"live").unwrap();
    live.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"live");
}
