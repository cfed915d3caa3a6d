//! TLS termination with real clients (curl, `openssl s_client`, wrk, testssl.sh) in front of
//! real nginx backends: byte-exact downloads, the certificate SNI picks, protocol versions,
//! ALPN, client certificates (mTLS), and what the logs and metrics say about each handshake.

mod common;

use common::certs::{subject_cn, Ca, Issued, KeyKind};
use common::tls::*;
use common::*;
use std::fs;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

/// A conf with one TLS service `web` on 127.0.0.1:0: `tls` lines, then `server` lines.
fn tls_conf(tls: &[String], servers: &[String]) -> String {
    let mut c = "log info\nadmin 127.0.0.1:0\nservice web\n  bind 127.0.0.1:0\n".to_string();
    for t in tls {
        c.push_str(&format!("  tls {t}\n"));
    }
    for s in servers {
        c.push_str(&format!("  server {s}\n"));
    }
    c
}

fn cert_line(c: &Issued) -> String {
    format!("cert {} key {}", c.cert.display(), c.key.display())
}

fn metrics(shunt: &Shunt) -> String {
    http_get(shunt.admin(), "/metrics").1
}

fn failures(shunt: &Shunt, reason: &str) -> f64 {
    metric(&metrics(shunt), &format!("shunt_tls_handshake_failures_total{{service=\"web\",reason=\"{reason}\"}}"))
}

/// The certificate's CN the server presented, from s_client's `subject=` line.
fn presented_cn(out: &str) -> String {
    let subject = out.lines().find_map(|l| l.strip_prefix("subject=")).unwrap_or_else(|| panic!("no subject:\n{out}"));
    subject.rsplit("CN").next().unwrap().trim_start_matches([' ', '=']).trim().to_string()
}

#[test]
fn curl_openssl_and_wrk_over_https_reach_nginx_byte_exact() {
    let mut ca = Ca::new("web-ca");
    let cert = ca.server(&["localhost"], KeyKind::EcdsaP256);
    let big = 20 << 20;
    let a = Nginx::start_opts(NginxOpts { name: "nginx-a", big_len: big, ..NginxOpts::default() });
    let b = Nginx::start_opts(NginxOpts { name: "nginx-b", big_len: big, ..NginxOpts::default() });
    let conf = tls_conf(&[cert_line(&cert)], &[format!("a {}", a.addr), format!("b {}", b.addr)]);
    let mut shunt = start_shunt(&conf);
    let addr = shunt.addr("web");

    // Round robin over TLS, and a 20 MB download from each backend, byte for byte.
    let names: Vec<String> = (0..4)
        .map(|_| String::from_utf8(curl_https(addr, "localhost", "/", &ca.cert, &[]).unwrap()).unwrap())
        .collect();
    assert_eq!(names, ["nginx-a\n", "nginx-b\n", "nginx-a\n", "nginx-b\n"]);
    for n in [&a, &b] {
        let body = curl_https(addr, "localhost", "/big", &ca.cert, &[]).unwrap();
        assert!(body == fs::read(&n.big_path).unwrap(), "20 MB through TLS differ ({} bytes came)", body.len());
    }

    // openssl s_client verifies the chain and sends a request by hand.
    let s = s_client(
        addr,
        &["-servername", "localhost", "-CAfile", ca.cert.to_str().unwrap(), "-verify_return_error", "-quiet"],
        b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n",
    );
    assert!(s.ok && s.out.contains("HTTP/1.1 200") && s.out.contains("nginx-"), "s_client:\n{}", s.out);

    // wrk, keep-alive and one connection per request.
    for close in [false, true] {
        let (r, report) =
            Wrk::start_url(&format!("https://localhost:{}/", addr.port()), close, Duration::from_secs(2)).finish();
        assert!(r.requests > 0 && r.socket_errors == 0 && r.non_2xx == 0, "wrk (close={close}):\n{report}");
    }

    let sessions = shunt.wait_all_logged(T);
    let m = metrics(&shunt);
    let ok = metric(&m, "shunt_tls_handshakes_total{service=\"web\"}");
    // wrk drops the connections it is still opening when its time is up (CH: the only handshakes
    // that did not complete), and closes a socket with the server's close_notify still unread
    // (the kernel resets it: CD).
    let codes = count_codes(&sessions);
    assert!(codes.keys().all(|c| ["--", "CD", "CH"].contains(&c.as_str())), "{codes:?}");
    let unfinished = codes.get("CH").copied().unwrap_or(0);
    assert_eq!(failures(&shunt, "client_closed") as usize, unfinished, "{m}");
    assert_eq!(ok as usize + unfinished, sessions.len(), "every other session completed a handshake:\n{m}");
    for s in sessions.iter().filter(|s| s.code != "CH") {
        assert!(s.raw.contains(" tls=1.3 cipher=TLS13_") && s.raw.contains(" sni=localhost"), "{}", s.raw);
    }
    let by_version = metric(&m, "shunt_tls_sessions_total{service=\"web\",version=\"1.3\"}");
    assert_eq!(by_version, ok, "{m}");
    assert!(m.contains("shunt_tls_handshake_seconds_count{service=\"web\"}"), "{m}");
}

#[test]
fn sni_picks_the_certificate_and_the_first_is_the_default() {
    let mut ca = Ca::new("sni-ca");
    let first = ca.server(&["a.test"], KeyKind::EcdsaP256);
    let second = ca.server(&["b.test", "*.b.test"], KeyKind::Rsa2048);
    let backend = Nginx::start("nginx-sni");
    let shunt = start_shunt(&tls_conf(&[cert_line(&first), cert_line(&second)], &[format!("s {}", backend.addr)]));
    let addr = shunt.addr("web");
    let ca_file = ca.cert.to_str().unwrap().to_string();

    for (sni, cn, bits) in [
        (Some("a.test"), "a.test", "256 bit"),
        (Some("b.test"), "b.test", "2048 bit"),
        (Some("www.b.test"), "b.test", "2048 bit"),
        (Some("nobody.test"), "a.test", "256 bit"),
        (None, "a.test", "256 bit"),
    ] {
        let mut args = vec!["-CAfile", &ca_file];
        match sni {
            Some(name) => args.extend(["-servername", name]),
            None => args.push("-noservername"),
        }
        let s = s_client_handshake(addr, &args);
        assert_eq!(presented_cn(&s.out), cn, "SNI {sni:?}:\n{}", s.out);
        assert!(s.out.contains(&format!("public key is {bits}")), "SNI {sni:?}: key size {bits}:\n{}", s.out);
        assert!(s.out.contains("Verify return code: 0 (ok)"), "SNI {sni:?}:\n{}", s.out);
    }
    assert_eq!(subject_cn(&second.cert), "b.test", "the harness reads CNs right");
}

#[test]
fn protocol_versions_below_the_floor_are_refused() {
    let mut ca = Ca::new("ver-ca");
    let cert = ca.server(&["localhost"], KeyKind::EcdsaP256);
    let backend = Nginx::start("nginx-ver");
    // OpenSSL's client offers TLS 1.1 only at security level 0.
    let tls11 = ["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"];

    let servers = [format!("s {}", backend.addr)];
    let shunt = start_shunt(&tls_conf(&[cert_line(&cert)], &servers));
    let addr = shunt.addr("web");
    for v in ["-tls1_2", "-tls1_3"] {
        let s = s_client_handshake(addr, &[v]);
        assert!(s.out.contains("Cipher is") && !s.out.contains("Cipher is (NONE)"), "{v} by default:\n{}", s.out);
    }
    let s = s_client_handshake(addr, &tls11);
    assert!(s.out.contains("Cipher is (NONE)") || !s.ok, "TLS 1.1 refused:\n{}", s.out);
    // The refusal is shunt's (the ClientHello reached it), not the client's own.
    wait_for(T, "TLS 1.1 counted as incompatible", || failures(&shunt, "incompatible") == 1.0);

    let shunt13 = start_shunt(&tls_conf(&[cert_line(&cert), "versions 1.3".into()], &servers));
    let addr = shunt13.addr("web");
    let s = s_client_handshake(addr, &["-tls1_3"]);
    assert!(s.out.contains("TLSv1.3"), "1.3 accepted:\n{}", s.out);
    let s = s_client_handshake(addr, &["-tls1_2"]);
    assert!(s.out.contains("Cipher is (NONE)") || !s.ok, "`tls versions 1.3` refuses 1.2:\n{}", s.out);
    wait_for(T, "TLS 1.2 counted as incompatible", || failures(&shunt13, "incompatible") == 1.0);
}

#[test]
fn alpn_is_offered_and_logged() {
    let mut ca = Ca::new("alpn-ca");
    let cert = ca.server(&["localhost"], KeyKind::EcdsaP256);
    let backend = Nginx::start("nginx-alpn");
    let conf = tls_conf(&[cert_line(&cert), "alpn http/1.1".into()], &[format!("s {}", backend.addr)]);
    let mut shunt = start_shunt(&conf);
    let addr = shunt.addr("web");

    let s = s_client(addr, &["-alpn", "h2,http/1.1", "-servername", "localhost"], b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(s_client_field(&s.out, "ALPN protocol:"), Some("http/1.1"), "{}", s.out);
    assert!(s.out.contains("nginx-alpn"), "{}", s.out);
    let sessions = shunt.wait_all_logged(T);
    assert!(sessions.len() == 1 && sessions[0].raw.contains(" alpn=http/1.1"), "{sessions:?}");
}

#[test]
fn mtls_takes_a_client_certificate_from_its_ca_only() {
    let mut ca = Ca::new("mtls-ca");
    let cert = ca.server(&["localhost"], KeyKind::EcdsaP256);
    let good = ca.client("alice");
    let mut other_ca = Ca::new("other-ca");
    let stranger = other_ca.client("mallory");
    let backend = Nginx::start("nginx-mtls");
    let conf =
        tls_conf(&[cert_line(&cert), format!("client_ca {}", ca.cert.display())], &[format!("s {}", backend.addr)]);
    let mut shunt = start_shunt(&conf);
    let addr = shunt.addr("web");
    let curl_as = |client: Option<&Issued>| {
        let args: Vec<String> = client.map_or(vec![], |c| {
            vec!["--cert".into(), c.cert.display().to_string(), "--key".into(), c.key.display().to_string()]
        });
        curl_https(addr, "localhost", "/", &ca.cert, &args.iter().map(String::as_str).collect::<Vec<_>>())
    };

    assert_eq!(curl_as(Some(&good)).as_deref(), Ok(&b"nginx-mtls\n"[..]), "a certificate from client_ca is taken");
    let none = curl_as(None);
    assert!(none.is_err(), "no client certificate: refused, got {none:?}");
    let wrong = curl_as(Some(&stranger));
    assert!(wrong.is_err(), "a certificate from another CA: refused, got {wrong:?}");

    // The refused ones never reached a server and are counted by reason.
    let sessions = shunt.wait_all_logged(T);
    let served: Vec<_> = sessions.iter().filter(|s| s.server == "s").collect();
    assert_eq!(served.len(), 1, "only the good client reached the server: {sessions:?}");
    let refused: Vec<_> = sessions.iter().filter(|s| s.code == "HH").collect();
    assert_eq!(refused.len(), 2, "two handshakes refused: {sessions:?}");
    assert_eq!(failures(&shunt, "client_certificate"), 2.0, "{}", metrics(&shunt));
}

/// testssl.sh (the Debian package) against the listener: no finding rated HIGH or CRITICAL.
#[test]
fn testssl_finds_nothing_high_or_critical() {
    let mut ca = Ca::new("testssl-ca");
    let cert = ca.server(&["localhost"], KeyKind::EcdsaP256);
    let backend = Nginx::start("nginx-testssl");
    let shunt = start_shunt(&tls_conf(&[cert_line(&cert)], &[format!("s {}", backend.addr)]));
    let addr: SocketAddr = shunt.addr("web");
    let json = ca.dir.join("testssl.json");
    let out = Command::new("timeout")
        .args(["300", "testssl", "--quiet", "--color", "0", "--warnings", "off", "--sneaky", "--add-ca"])
        .arg(&ca.cert)
        .arg("--jsonfile")
        .arg(&json)
        .args(["--protocols", "--server-defaults", "--vulnerable", "--std", "--each-cipher"])
        .arg(format!("{addr}"))
        .output()
        .expect("run testssl (scripts/install-deps.sh installs the testssl.sh package)");
    let report = String::from_utf8_lossy(&out.stdout);
    let findings: serde_json::Value = serde_json::from_str(&fs::read_to_string(&json).unwrap_or_default())
        .unwrap_or_else(|e| panic!("testssl wrote no JSON ({e}); exit {}:\n{report}", out.status));
    let findings = findings.as_array().expect("a JSON array of findings");
    assert!(findings.len() > 20, "testssl ran its checks:\n{report}");
    let bad: Vec<_> = findings
        .iter()
        .filter(|f| matches!(f["severity"].as_str(), Some("HIGH" | "CRITICAL")))
        .map(|f| format!("{} {}: {}", f["severity"], f["id"], f["finding"]))
        .collect();
    assert!(bad.is_empty(), "testssl findings:\n{}\n\n{report}", bad.join("\n"));
}
