//! Re-encryption: `server NAME ADDR tls [ca FILE | verify none] [sni NAME]`. shunt opens TLS to
//! nginx `ssl` servers, verifying their certificates; health probes go over TLS too, and a
//! server whose certificate does not verify is down, with the reason in /status.

mod common;

use common::certs::{Ca, Issued, KeyKind};
use common::tls::*;
use common::*;
use std::fs;
use std::net::SocketAddr;
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

fn https_nginx(name: &str, cert: &Issued, big_len: usize) -> Nginx {
    Nginx::start_opts(NginxOpts { name, ssl: Some(cert), big_len, ..NginxOpts::default() })
}

fn wait_state(shunt: &Shunt, server: &str, want: &str) -> String {
    shunt.wait_server_state("web", server, want, T)
}

/// `curl http://ADDR{path}`: the body, bytes as they came.
fn plain_get(addr: SocketAddr, path: &str) -> Vec<u8> {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "30"])
        .arg(format!("http://{addr}{path}"))
        .output()
        .expect("run curl");
    assert!(out.status.success(), "curl {path}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

#[test]
fn reencrypts_to_nginx_ssl_servers_verified_with_their_ca() {
    let mut ca = Ca::new("up-ca");
    let cert = ca.server(&["backend.test"], KeyKind::EcdsaP256);
    let big = 20 << 20;
    let s = https_nginx("nginx-ssl", &cert, big);
    let front = ca.server(&["localhost"], KeyKind::EcdsaP256);
    let conf = format!(
        "log info\nadmin 127.0.0.1:0\n\
         service web\n  bind 127.0.0.1:0\n  check http GET /health expect 200 interval 200ms\n  \
         server s {} tls ca {} sni backend.test\n\
         service both\n  bind 127.0.0.1:0\n  tls cert {} key {}\n  server s {} tls ca {} sni backend.test\n",
        s.addr,
        ca.cert.display(),
        front.cert.display(),
        front.key.display(),
        s.addr,
        ca.cert.display()
    );
    let mut shunt = start_shunt(&conf);
    // The health probe completed a TLS handshake and an HTTP check through it (a plain HTTP
    // request to nginx's ssl port gets a 400).
    assert_eq!(wait_state(&shunt, "s", "up"), "ok");
    // Plain TCP in front, TLS behind: byte-exact.
    assert_eq!(plain_get(shunt.addr("web"), "/"), b"nginx-ssl\n");
    assert!(plain_get(shunt.addr("web"), "/big") == fs::read(&s.big_path).unwrap(), "20 MB through re-encryption");
    // TLS on both sides.
    let body = curl_https(shunt.addr("both"), "localhost", "/big", &ca.cert, &[]).unwrap();
    assert!(body == fs::read(&s.big_path).unwrap(), "20 MB through TLS on both sides ({} bytes)", body.len());
    let sessions = shunt.wait_all_logged(T);
    assert!(sessions.iter().all(|s| s.code == "--" && s.server == "s"), "{sessions:#?}");
}

#[test]
fn a_server_whose_certificate_does_not_verify_is_down_with_the_reason() {
    let (mut ca, mut other) = (Ca::new("real-ca"), Ca::new("other-ca"));
    let cert = ca.server(&["backend.test"], KeyKind::EcdsaP256);
    let s = https_nginx("nginx-v", &cert, 1 << 20);
    let _ = other.server(&["unused.test"], KeyKind::EcdsaP256);
    let conf = format!(
        "log info\nadmin 127.0.0.1:0\n\
         service web\n  bind 127.0.0.1:0\n  check tcp interval 200ms\n\
         \x20 server wrong-ca {addr} tls ca {other} sni backend.test\n\
         \x20 server wrong-name {addr} tls ca {ca} sni elsewhere.test\n\
         \x20 server unchecked {addr} tls verify none weight 0\n",
        addr = s.addr,
        other = other.cert.display(),
        ca = ca.cert.display()
    );
    let mut shunt = start_shunt(&conf);
    let wrong_ca = wait_state(&shunt, "wrong-ca", "down");
    assert!(wrong_ca.starts_with("TLS: ") && wrong_ca.contains("UnknownIssuer"), "{wrong_ca}");
    let wrong_name = wait_state(&shunt, "wrong-name", "down");
    assert!(wrong_name.contains("not valid for name \"elsewhere.test\""), "{wrong_name}");
    // `verify none` takes any certificate: up (weight 0 keeps it out of the rotation).
    wait_state(&shunt, "unchecked", "up");
    // No verified server: a client is refused, never sent to an unverified one.
    // (Wait for its line: until shunt accepts it, "every accepted session logged" holds at zero.)
    let _ = std::net::TcpStream::connect(shunt.addr("web"));
    let sessions = shunt.wait_sessions(1, T);
    assert!(sessions.len() == 1 && sessions[0].server == "-" && sessions[0].code.starts_with('N'), "{sessions:#?}");
}

#[test]
fn a_failed_server_handshake_on_the_data_path_is_a_failed_connect_and_the_next_server_serves() {
    // No active check: only the connect (and its handshake) can tell the servers apart.
    let (mut ca, mut other) = (Ca::new("path-ca"), Ca::new("path-other"));
    let good = https_nginx("nginx-good", &ca.server(&["b.test"], KeyKind::EcdsaP256), 1 << 20);
    let bad = https_nginx("nginx-bad", &other.server(&["b.test"], KeyKind::EcdsaP256), 1 << 20);
    let conf = format!(
        "log info\nadmin 127.0.0.1:0\nservice web\n  bind 127.0.0.1:0\n  retries 1\n\
         \x20 server bad {} tls ca {ca} sni b.test\n  server good {} tls ca {ca} sni b.test\n",
        bad.addr,
        good.addr,
        ca = ca.cert.display()
    );
    let mut shunt = start_shunt(&conf);
    for _ in 0..4 {
        assert_eq!(plain_get(shunt.addr("web"), "/"), b"nginx-good\n");
    }
    let sessions = shunt.wait_all_logged(T);
    assert!(sessions.iter().all(|s| s.server == "good" && s.code == "--"), "{sessions:#?}");
    assert!(shunt.log().contains("UnknownIssuer"), "the failed connect's reason is logged:\n{}", shunt.log());
    let (state, detail) = shunt.server_state("web", "bad");
    assert!(state == "down" && detail.contains("UnknownIssuer"), "{state}: {detail}");
}
