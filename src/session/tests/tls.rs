//! A TLS session's state machine with a real rustls client over loopback sockets: the records
//! rustls encrypts must reach the client even when the socket takes them only after the flow
//! has handed over its last plaintext. The client's receive buffer and our send buffer are
//! pinned small, so a 16 KiB record cannot go out in one write: no timing decides the outcome.

use super::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig};
use socket2::SockRef;
use std::io::{ErrorKind, Read};
use std::sync::OnceLock;

/// Plaintext the server sends: one full record, the most one `write_plain` takes.
const LEN: usize = crate::relay::BUF_SIZE;

/// A self-signed certificate for `localhost` (made once per test run with the openssl CLI) as
/// the server's config and a client config that trusts it.
fn configs() -> &'static (Arc<ServerConfig>, Arc<ClientConfig>) {
    static CONFIGS: OnceLock<(Arc<ServerConfig>, Arc<ClientConfig>)> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("shunt-session-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let status = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
            .args(["-subj", "/CN=localhost", "-days", "2", "-addext", "subjectAltName=DNS:localhost"])
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("run openssl (make test installs it)");
        assert!(status.success(), "openssl req failed");
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(&cert).unwrap().map(Result::unwrap).collect();
        let key = PrivateKeyDer::from_pem_file(&key).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let server = ServerConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain.clone(), key)
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(chain[0].clone()).unwrap();
        let client = ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    })
}

/// The rustls client over the fixture's (non-blocking) client socket.
struct Client {
    conn: ClientConnection,
    plaintext: Vec<u8>,
}

impl Client {
    /// Moves records both ways as far as the socket allows; collects plaintext.
    fn step(&mut self, sock: &mut std::net::TcpStream) {
        while self.conn.wants_write() {
            match self.conn.write_tls(sock) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("client write: {e}"),
            }
        }
        loop {
            match self.conn.read_tls(sock) {
                Ok(0) => break,
                Ok(_) => {
                    self.conn.process_new_packets().expect("client: TLS");
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("client read: {e}"),
            }
        }
        let mut buf = [0u8; 4096];
        loop {
            match self.conn.reader().read(&mut buf) {
                Ok(0) => break,
                Ok(n) => self.plaintext.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("client plaintext: {e}"),
            }
        }
    }
}

/// A TLS session through its handshake and connect, streaming; our send buffer to the client
/// and the client's receive buffer pinned at their minimum.
fn tls_session_streaming() -> (Fixture, Client) {
    let (server_config, client_config) = configs();
    let mut f = session_connecting(Splice::Off);
    // The fixture's client socket, with small buffers this time: reconnect it.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let peer = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    peer.set_recv_buffer_size(4096).unwrap();
    peer.connect(&l.local_addr().unwrap().into()).unwrap();
    let (ours, addr) = l.accept().unwrap();
    SockRef::from(&ours).set_send_buffer_size(4096).unwrap();
    ours.set_nonblocking(true).unwrap();
    let backend = f.session.backend.take().unwrap();
    let server = f.session.server.take().unwrap();
    let settings = f.session.settings;
    let service = f.session.service.clone();
    let tls = crate::tls::TlsEnd::new(server_config.clone()).unwrap();
    f.session = Session::new(8, service, TcpStream::from_std(ours), addr, settings, f.t0).with_tls(tls);
    f.client = peer.into();
    f.client.set_nonblocking(true).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut client =
        Client { conn: ClientConnection::new(client_config.clone(), name).unwrap(), plaintext: Vec::new() };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        client.step(&mut f.client);
        let done = f.session.handshake().expect("handshake");
        if done && !client.conn.is_handshaking() {
            break;
        }
        assert!(Instant::now() < deadline, "handshake stalled");
        wait_readable_either(&f.session.client, &f.client);
    }
    f.session.connecting(backend, server, f.t0);
    f.session.connected(f.t0);
    (f, client)
}

/// Waits (poll, up to 100 ms) until either socket is readable.
fn wait_readable_either(a: &impl AsFd, b: &impl AsFd) {
    if !sys::wait_readable(a.as_fd(), 50).unwrap() {
        sys::wait_readable(b.as_fd(), 50).unwrap();
    }
}

/// Pumps with both sides ready (as the worker does on every event) and lets the client read,
/// until the session asks to close or, with `len`, the client has `len` plaintext bytes; the
/// last step. (Borrows the session's parts, so it also works once the server's end is gone.)
fn drive(
    session: &mut Session,
    pools: &mut Pools,
    sock: &mut std::net::TcpStream,
    client: &mut Client,
    len: Option<usize>,
) -> Step {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        session.note(Side::Client, true, true, false);
        session.note(Side::Backend, true, true, false);
        let (step, _, _) = session.pump(Instant::now(), pools);
        client.step(sock);
        if step != Step::Continue || len.is_some_and(|len| client.plaintext.len() >= len) {
            return step;
        }
        assert!(Instant::now() < deadline, "stalled with {} bytes at the client", client.plaintext.len());
        wait_readable_either(sock, session.backend.as_ref().unwrap());
    }
}

fn pattern() -> Vec<u8> {
    (0..LEN).map(|i| (i % 251) as u8).collect()
}

#[test]
fn tls_records_queued_after_the_last_plaintext_go_out_when_the_socket_drains() {
    let (mut f, mut client) = tls_session_streaming();
    f.server.write_all(&pattern()).unwrap();
    wait_readable(f.session.backend.as_ref().unwrap());
    f.pump_at(f.t0);
    // The case under test: rustls took all the plaintext (the flow holds none) but the socket
    // took only part of the records, and the server has nothing more to send.
    assert_eq!(f.session.down.pending(), 0);
    assert!(f.session.tls.as_ref().unwrap().wants_write(), "the record did not have to wait");
    let step = drive(&mut f.session, &mut f.pools, &mut f.client, &mut client, Some(LEN));
    assert_eq!(step, Step::Continue);
    assert!(client.plaintext == pattern(), "{} bytes arrived", client.plaintext.len());
}

#[test]
fn tls_server_reset_delivers_the_queued_records_before_closing() {
    let (mut f, mut client) = tls_session_streaming();
    f.server.write_all(&pattern()).unwrap();
    crate::net::set_linger_zero(&f.server);
    drop(f.server);
    wait_readable(f.session.backend.as_ref().unwrap());
    // The session aborts for the server's reset only once the client has every byte.
    let step = drive(&mut f.session, &mut f.pools, &mut f.client, &mut client, None);
    assert_eq!(step, Step::Close(Cause::ServerAbort));
    client.step(&mut f.client);
    assert!(client.plaintext == pattern(), "{} of {LEN} bytes arrived before the abort", client.plaintext.len());
}
