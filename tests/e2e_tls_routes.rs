//! `route sni`: clients reach the service their server name routes to. Passthrough (the front
//! service has no certificate: shunt only peeks at the ClientHello and the servers terminate
//! TLS, so curl verifying their certificates proves the bytes went through untouched) and
//! terminated routing (shunt's handshake saw the name). Real clients (curl, a rustls client
//! that fragments its ClientHello), real nginx servers.

mod common;

use common::certs::{Ca, Issued, KeyKind};
use common::tls::*;
use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

fn https_nginx(name: &str, cert: &Issued) -> Nginx {
    Nginx::start_opts(NginxOpts { name, ssl: Some(cert), ..NginxOpts::default() })
}

/// What the server behind `name` answers to `GET /` over `addr`, trusting `ca`.
fn who(addr: SocketAddr, name: &str, ca: &Ca) -> Result<String, String> {
    curl_https(addr, name, "/", &ca.cert, &[]).map(|b| String::from_utf8_lossy(&b).trim().to_string())
}

fn failures(shunt: &Shunt, service: &str, reason: &str) -> f64 {
    let m = http_get(shunt.admin(), "/metrics").1;
    metric(&m, &format!("shunt_tls_handshake_failures_total{{service=\"{service}\",reason=\"{reason}\"}}"))
}

#[test]
fn passthrough_routes_by_the_client_hello_and_leaves_the_bytes_untouched() {
    let mut ca = Ca::new("pass-ca");
    let (cert_a, cert_b) =
        (ca.server(&["a.test"], KeyKind::EcdsaP256), ca.server(&["*.b.test", "*.x.b.test"], KeyKind::Rsa2048));
    let cert_d = ca.server(&["other.test"], KeyKind::EcdsaP256);
    let (a, b, d) = (https_nginx("nginx-a", &cert_a), https_nginx("nginx-b", &cert_b), https_nginx("nginx-d", &cert_d));
    let conf = format!(
        "log info\nadmin 127.0.0.1:0\n\
         service edge\n  bind 127.0.0.1:0\n  route sni a.test svc-a\n  route sni *.b.test svc-b\n  server d {}\n\
         service svc-a\n  server a {}\n\
         service svc-b\n  server b {}\n",
        d.addr, a.addr, b.addr
    );
    let mut shunt = start_shunt(&conf);
    let edge = shunt.addr("edge");
    assert_eq!(who(edge, "a.test", &ca).unwrap(), "nginx-a");
    assert_eq!(who(edge, "x.b.test", &ca).unwrap(), "nginx-b");
    assert_eq!(who(edge, "deep.x.b.test", &ca).unwrap(), "nginx-b", "*.b.test routes names at any depth");
    // No route matches: the front service's own server.
    assert_eq!(who(edge, "other.test", &ca).unwrap(), "nginx-d");

    let sessions = shunt.wait_all_logged(T);
    let by = |sni: &str| {
        sessions
            .iter()
            .find(|s| s.raw.ends_with(&format!(" sni={sni}")))
            .unwrap_or_else(|| panic!("{sni}: {sessions:#?}"))
    };
    assert!(
        by("a.test").service == "svc-a" && by("a.test").server == "a" && by("a.test").raw.contains(" via=edge"),
        "{}",
        by("a.test").raw
    );
    assert!(by("x.b.test").service == "svc-b" && by("x.b.test").code == "--", "{}", by("x.b.test").raw);
    assert!(by("deep.x.b.test").server == "b", "{}", by("deep.x.b.test").raw);
    assert!(
        by("other.test").service == "edge" && by("other.test").server == "d" && !by("other.test").raw.contains("via=")
    );
}

/// A rustls client whose ClientHello leaves in `pieces` TCP segments, 30 ms apart: shunt must
/// gather it across reads (and records) before it can route.
fn fragmented_get(addr: SocketAddr, name: &str, ca: &Ca, pieces: usize) -> String {
    let config = client_config(&ca.cert, &[], None);
    let mut conn = rustls::ClientConnection::new(config, name.to_string().try_into().unwrap()).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_nodelay(true).unwrap();
    tcp.set_read_timeout(Some(T)).unwrap();
    for piece in hello.chunks(hello.len().div_ceil(pieces)) {
        tcp.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(30)); // pacing the segments, not a wait
    }
    let mut s = rustls::StreamOwned::new(conn, tcp);
    s.write_all(format!("GET / HTTP/1.0\r\nHost: {name}\r\n\r\n").as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out); // nginx closes without close_notify after HTTP/1.0
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn passthrough_gathers_a_client_hello_sent_in_pieces() {
    let mut ca = Ca::new("frag-ca");
    let cert = ca.server(&["f.test"], KeyKind::EcdsaP256);
    let f = https_nginx("nginx-f", &cert);
    let plain = EchoServer::start();
    let conf = format!(
        "log info\nadmin 127.0.0.1:0\nservice edge\n  bind 127.0.0.1:0\n  route sni f.test svc-f\n  server echo {}\n\
         service svc-f\n  server f {}\n",
        plain.addr, f.addr
    );
    let mut shunt = start_shunt(&conf);
    for pieces in [2, 5] {
        let reply = fragmented_get(shunt.addr("edge"), "f.test", &ca, pieces);
        assert!(reply.starts_with("HTTP/1.1 200") && reply.ends_with("nginx-f\n"), "{pieces} pieces: {reply}");
    }
    let sessions = shunt.wait_all_logged(T);
    assert!(sessions.iter().all(|s| s.service == "svc-f"), "{sessions:#?}");
}

#[test]
fn passthrough_closes_what_is_not_tls_and_clients_that_send_nothing() {
    let mut ca = Ca::new("bad-ca");
    let cert = ca.server(&["ok.test"], KeyKind::EcdsaP256);
    let ok = https_nginx("nginx-ok", &cert);
    let counted = TcpServer::start(|_, _| {});
    let conf = format!(
        "log info\nadmin 127.0.0.1:0\n\
         service edge\n  bind 127.0.0.1:0\n  timeout handshake 1s\n  route sni ok.test svc-ok\n  server counted {}\n\
         service svc-ok\n  server ok {}\n",
        counted.addr, ok.addr
    );
    let mut shunt = start_shunt(&conf);
    let edge = shunt.addr("edge");
    // Plain HTTP: closed at once, never sent to a server.
    let mut http = TcpStream::connect(edge).unwrap();
    http.set_read_timeout(Some(T)).unwrap();
    http.write_all(b"GET / HTTP/1.1\r\nHost: ok.test\r\n\r\n").unwrap();
    let mut rest = Vec::new();
    let _ = http.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{rest:?}");
    // Silent: closed at `timeout handshake`, never sent to a server.
    let mut silent = TcpStream::connect(edge).unwrap();
    silent.set_read_timeout(Some(T)).unwrap();
    let _ = silent.read_to_end(&mut rest);
    // Meanwhile a real client is served.
    assert_eq!(who(edge, "ok.test", &ca).unwrap(), "nginx-ok");
    let sessions = shunt.wait_all_logged(T);
    let codes: Vec<&str> = sessions.iter().map(|s| s.code.as_str()).collect();
    assert!(codes.contains(&"HH") && codes.contains(&"TH") && codes.contains(&"--"), "{sessions:#?}");
    assert_eq!(counted.accepted(), 0, "a connection that never sent a ClientHello reached a server");
    assert_eq!((failures(&shunt, "edge", "not_tls"), failures(&shunt, "edge", "timeout")), (1.0, 1.0));
}

#[test]
fn terminated_routing_uses_the_name_the_handshake_saw() {
    let mut ca = Ca::new("term-ca");
    let cert = ca.server(&["www.test", "api.test", "*.img.test"], KeyKind::EcdsaP256);
    let (www, api, img) = (Nginx::start("nginx-www"), Nginx::start("nginx-api"), Nginx::start("nginx-img"));
    let conf = format!(
        "log info\nadmin 127.0.0.1:0\nservice web\n  bind 127.0.0.1:0\n  tls cert {} key {}\n  route sni api.test api\n  route sni *.img.test img\n  server www {}\n\
         service api\n  server api {}\n\
         service img\n  server img {}\n",
        cert.cert.display(),
        cert.key.display(),
        www.addr,
        api.addr,
        img.addr
    );
    let mut shunt = start_shunt(&conf);
    let web = shunt.addr("web");
    assert_eq!(who(web, "api.test", &ca).unwrap(), "nginx-api");
    assert_eq!(who(web, "a.img.test", &ca).unwrap(), "nginx-img");
    assert_eq!(who(web, "www.test", &ca).unwrap(), "nginx-www");
    let sessions = shunt.wait_all_logged(T);
    let api_line = sessions.iter().find(|s| s.service == "api").unwrap_or_else(|| panic!("{sessions:#?}"));
    assert!(api_line.raw.contains(" via=web tls=1.3 ") && api_line.raw.contains(" sni=api.test"), "{}", api_line.raw);
}

#[test]
fn a_name_no_route_takes_is_closed_when_the_front_has_no_servers() {
    let mut ca = Ca::new("none-ca");
    let cert = ca.server(&["known.test", "unknown.test"], KeyKind::EcdsaP256);
    let known = https_nginx("nginx-known", &cert);
    let conf = format!(
        "log info\nadmin 127.0.0.1:0\nservice edge\n  bind 127.0.0.1:0\n  route sni known.test svc\nservice svc\n  server k {}\n",
        known.addr
    );
    let mut shunt = start_shunt(&conf);
    assert_eq!(who(shunt.addr("edge"), "known.test", &ca).unwrap(), "nginx-known");
    assert!(who(shunt.addr("edge"), "unknown.test", &ca).is_err());
    let sessions = shunt.wait_all_logged(T);
    let refused =
        sessions.iter().find(|s| s.raw.ends_with(" sni=unknown.test")).unwrap_or_else(|| panic!("{sessions:#?}"));
    assert!(refused.service == "edge" && refused.server == "-" && refused.code.starts_with('N'), "{}", refused.raw);
}
