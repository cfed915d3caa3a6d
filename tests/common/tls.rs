//! TLS clients for the tests: a rustls client in the test's process (the only one that can
//! half-close a TLS session: send `close_notify` and keep reading), `openssl s_client` and curl
//! over https, and a real ClientHello as bytes for tests that dribble or cut one.

use super::certs::Issued;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// A client config that trusts `ca`, offers `alpn` and presents `client_cert` if given.
pub fn client_config(ca: &Path, alpn: &[&str], client_cert: Option<&Issued>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("read CA") {
        roots.add(c.expect("CA PEM")).expect("add CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let mut config = match client_cert {
        Some(c) => builder.with_client_auth_cert(pem_certs(&c.cert), pem_key(&c.key)).expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

/// Every certificate in PEM file `path`, DER-encoded.
pub fn pem_certs(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path).expect("read certs").map(|c| c.expect("cert PEM")).collect()
}

fn pem_key(path: &Path) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_file(path).expect("read key")
}

/// A TLS session over TCP, driven by rustls with blocking I/O.
pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// Connects to `addr` and completes the handshake for server name `sni`.
pub fn tls_connect(addr: SocketAddr, sni: &str, config: &Arc<ClientConfig>) -> io::Result<TlsStream> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(20)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(20)))?;
    tls_over(tcp, sni, config)
}

/// Completes a handshake for server name `sni` over a connected `tcp` (its timeouts stay).
pub fn tls_over(tcp: TcpStream, sni: &str, config: &Arc<ClientConfig>) -> io::Result<TlsStream> {
    let name = ServerName::try_from(sni.to_string()).expect("server name");
    let conn = ClientConnection::new(config.clone(), name).expect("client connection");
    let mut s = StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    Ok(s)
}

/// Sends `close_notify` (our half of the session is done) and flushes it; reading goes on.
pub fn send_close_notify(s: &mut TlsStream) -> io::Result<()> {
    s.conn.send_close_notify();
    while s.conn.wants_write() {
        s.conn.write_tls(&mut s.sock)?;
    }
    Ok(())
}

/// Reads until the peer's `close_notify` (Ok) or an error (a TCP FIN without `close_notify` is
/// rustls' `UnexpectedEof`).
pub fn read_to_close_notify(s: &mut TlsStream) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(out)
}

/// The bytes of a real TLS 1.3 ClientHello for `sni` (what a client sends first).
pub fn client_hello(sni: &str, config: &Arc<ClientConfig>) -> Vec<u8> {
    let name = ServerName::try_from(sni.to_string()).expect("server name");
    let mut conn = ClientConnection::new(config.clone(), name).expect("client connection");
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).expect("write to a Vec");
    }
    out
}

/// What `openssl s_client` printed, and whether it exited 0.
pub struct SClient {
    pub ok: bool,
    pub out: String,
}

/// Runs `openssl s_client -connect ADDR` with `args`, sending `input` then keeping the session
/// open until the server closes it (`-ign_eof`), with a 20 s deadline.
pub fn s_client(addr: SocketAddr, args: &[&str], input: &[u8]) -> SClient {
    run_s_client(addr, &[&["-ign_eof"], args].concat(), Some(input))
}

/// `openssl s_client` that only completes a handshake (no request) and prints the session.
pub fn s_client_handshake(addr: SocketAddr, args: &[&str]) -> SClient {
    run_s_client(addr, args, None)
}

/// `openssl s_client -connect ADDR ARGS` with a 20 s deadline: `input` on its stdin, or an
/// empty stdin (it ends at once after the handshake).
fn run_s_client(addr: SocketAddr, args: &[&str], input: Option<&[u8]>) -> SClient {
    let mut child = Command::new("timeout")
        .args(["20", "openssl", "s_client", "-connect", &addr.to_string()])
        .args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl s_client");
    if let Some(input) = input {
        child.stdin.take().expect("stdin").write_all(input).expect("write to s_client");
    }
    let out = child.wait_with_output().expect("wait for s_client");
    SClient {
        ok: out.status.success(),
        out: format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    }
}

/// The value after `key` (e.g. `"ALPN protocol: "`) on s_client's output, if printed.
pub fn s_client_field<'a>(out: &'a str, key: &str) -> Option<&'a str> {
    out.lines().find_map(|l| l.trim().strip_prefix(key)).map(str::trim)
}

/// `curl https://NAME:PORT{path}` for a name resolved to 127.0.0.1, trusting `ca`; `extra` more
/// curl arguments. The body, or curl's complaint.
pub fn curl_https(addr: SocketAddr, name: &str, path: &str, ca: &Path, extra: &[&str]) -> Result<Vec<u8>, String> {
    let port = addr.port();
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30", "--connect-timeout", "5", "--cacert"])
        .arg(ca)
        .args(["--resolve", &format!("{name}:{port}:{}", addr.ip())])
        .args(extra)
        .arg(format!("https://{name}:{port}{path}"))
        .output()
        .expect("run curl");
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(format!("curl: {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()))
    }
}
