//! A session's TLS endpoint: a rustls connection over a non-blocking socket — the server side
//! towards a client (termination), or the client side towards a server (`server ... tls`).
//! The relay's flows read plaintext from it and write plaintext to it as they would a socket;
//! it moves records between rustls and the socket as far as the socket allows, and says
//! `WouldBlock` exactly when the socket does, so edge-triggered readiness stays truthful.
//!
//! Bounded: rustls holds at most one buffer's worth of plaintext to send (`set_buffer_limit`),
//! and records are read from the socket only when no plaintext waits to be taken, so a client
//! that sends faster than its server takes is held back by TCP, as with plain TCP.
//!
//! Half-close: the client's `close_notify` reads as EOF; a TCP FIN without one reads as EOF too,
//! marked `truncated` (logged). Our end's EOF becomes a `close_notify` ([`TlsEnd::close_notify`]).

use crate::relay::BUF_SIZE;
use crate::sys;
use rustls::{ClientConnection, Connection, ServerConfig, ServerConnection};
use std::io::{self, Read, Write};
use std::os::fd::BorrowedFd;
use std::sync::Arc;

/// What a session logs about its TLS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsInfo {
    pub sni: Option<String>,
    /// `1.2` or `1.3`.
    pub version: &'static str,
    pub cipher: String,
    pub alpn: Option<String>,
}

/// Why a handshake failed.
#[derive(Debug)]
pub enum HandshakeError {
    /// The client closed or reset before finishing it.
    Closed,
    /// A TLS protocol failure (an alert was sent to the client when rustls had one to send).
    Tls(rustls::Error),
    /// SNI passthrough: the first bytes are not a ClientHello shunt can route.
    Hello(super::hello::HelloError),
    Io(io::Error),
}

impl HandshakeError {
    /// A short label for the failure reason (a metric label).
    pub fn reason(&self) -> &'static str {
        use rustls::Error as E;
        match self {
            HandshakeError::Closed => "client_closed",
            HandshakeError::Io(_) => "io",
            HandshakeError::Hello(_) => "not_tls",
            HandshakeError::Tls(e) => match e {
                E::InvalidMessage(_) | E::InappropriateMessage { .. } | E::InappropriateHandshakeMessage { .. } => {
                    "not_tls"
                }
                E::PeerIncompatible(_) => "incompatible",
                E::NoCertificatesPresented | E::InvalidCertificate(_) => "client_certificate",
                E::AlertReceived(_) => "alert_received",
                E::PeerMisbehaved(_) => "misbehaved",
                _ => "other",
            },
        }
    }
}

impl HandshakeError {
    /// The position of `reason()` in `tls::FAILURE_REASONS`.
    pub fn reason_index(&self) -> usize {
        let reason = self.reason();
        super::FAILURE_REASONS.iter().position(|r| *r == reason).unwrap_or(super::FAILURE_REASONS.len() - 1)
    }
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeError::Closed => write!(f, "the peer closed during the handshake"),
            HandshakeError::Tls(e) => write!(f, "{e}"),
            HandshakeError::Io(e) => write!(f, "{e}"),
            HandshakeError::Hello(e) => write!(f, "{e}"),
        }
    }
}

/// The client's socket as rustls reads and writes it.
struct Sock<'a>(BorrowedFd<'a>);

impl Read for Sock<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        sys::read(self.0, buf)
    }
}

impl Write for Sock<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        sys::send(self.0, buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub struct TlsEnd {
    conn: Connection,
    /// The client's TCP FIN came without a `close_notify`.
    truncated: bool,
}

impl std::fmt::Debug for TlsEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsEnd").field("handshaking", &self.conn.is_handshaking()).finish()
    }
}

impl TlsEnd {
    /// The server side of a session with a client.
    pub fn new(config: Arc<ServerConfig>) -> io::Result<TlsEnd> {
        let conn = ServerConnection::new(config).map_err(io::Error::other)?;
        Ok(TlsEnd::over(conn.into()))
    }

    /// The client side of a session with a server.
    pub fn client(backend: &super::BackendTls) -> io::Result<TlsEnd> {
        let conn =
            ClientConnection::new(Arc::clone(&backend.config), backend.name.clone()).map_err(io::Error::other)?;
        Ok(TlsEnd::over(conn.into()))
    }

    fn over(mut conn: Connection) -> TlsEnd {
        conn.set_buffer_limit(Some(BUF_SIZE));
        TlsEnd { conn, truncated: false }
    }

    /// Moves the handshake on as far as the socket allows: `Ok(true)` once it is complete (what
    /// the client sent after it stays buffered for the relay), `Ok(false)` while it waits for
    /// the client.
    pub fn handshake(&mut self, sock: BorrowedFd<'_>) -> Result<bool, HandshakeError> {
        loop {
            match self.flush(sock) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(_) => return Err(HandshakeError::Closed),
            }
            if !self.conn.is_handshaking() {
                return Ok(true);
            }
            match self.conn.read_tls(&mut Sock(sock)) {
                Ok(0) => return Err(HandshakeError::Closed),
                Ok(_) => {
                    if let Err(e) = self.conn.process_new_packets() {
                        // rustls queued an alert saying why: the client should hear it.
                        let _ = self.flush(sock);
                        return Err(HandshakeError::Tls(e));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe) => {
                    return Err(HandshakeError::Closed)
                }
                Err(e) => return Err(HandshakeError::Io(e)),
            }
        }
    }

    /// Reads plaintext the client sent: `Ok(0)` at its end (see `truncated`), `WouldBlock` when
    /// neither rustls nor the socket has more now.
    pub fn read_plain(&mut self, sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.conn.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    self.truncated = true;
                    return Ok(0);
                }
                Err(e) => return Err(e),
            }
            // Nothing buffered: one more read from the socket, then decrypt.
            match self.conn.read_tls(&mut Sock(sock)) {
                Ok(_) => {
                    if let Err(e) = self.conn.process_new_packets() {
                        let _ = self.flush(sock);
                        return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                    }
                    // Records that need an answer (a key update) are answered now.
                    match self.flush(sock) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Takes plaintext to send to the client; sends what the socket takes. `WouldBlock` while
    /// records of earlier writes still wait for the socket: the flow holds its bytes meanwhile.
    pub fn write_plain(&mut self, sock: BorrowedFd<'_>, data: &[u8]) -> io::Result<usize> {
        self.flush(sock)?;
        let n = self.conn.writer().write(data)?;
        match self.flush(sock) {
            Ok(()) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(n),
            Err(e) => Err(e),
        }
    }

    /// Writes the records rustls holds, if any (no syscall when none wait); `WouldBlock` if the
    /// socket took only part of them.
    pub fn flush(&mut self, sock: BorrowedFd<'_>) -> io::Result<()> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut Sock(sock)) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Records are waiting for the socket (the session cannot end before they go).
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// Our side is done: a `close_notify` goes out (after what is already queued).
    pub fn close_notify(&mut self, sock: BorrowedFd<'_>) {
        self.conn.send_close_notify();
        let _ = self.flush(sock);
    }

    pub fn truncated(&self) -> bool {
        self.truncated
    }

    pub fn info(&self) -> TlsInfo {
        let version = match self.conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "1.2",
            _ => "-",
        };
        TlsInfo {
            sni: match &self.conn {
                Connection::Server(c) => c.server_name().map(str::to_string),
                Connection::Client(_) => None,
            },
            version,
            cipher: self.conn.negotiated_cipher_suite().map_or("-".into(), |c| format!("{:?}", c.suite())),
            alpn: self.conn.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned()),
        }
    }
}
