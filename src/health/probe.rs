//! One active probe as a non-blocking state machine: connect, the TLS handshake for a server
//! reached with `tls` (its certificate must verify, whatever the check), optionally send a
//! request, read until the reply is judged. The health thread drives many of these at once on its own
//! `mio::Poll`, so a black-holed server only costs its own probe's timeout.

use crate::config::{CheckKind, StatusMatch};
use crate::tls::{BackendTls, TlsEnd};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Instant;

/// Replies are judged on at most this many bytes; a server that sends more without matching
/// fails the probe instead of growing our buffer.
pub const MAX_REPLY: usize = 16 * 1024;

#[derive(Debug, PartialEq, Eq)]
enum Stage {
    Connecting,
    /// The TLS handshake with a `tls` server.
    Handshake,
    /// Writing the request; `usize` bytes of it are sent.
    Sending(usize),
    Reading,
}

/// The verdict of a finished probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail(String),
    /// The server answered, and it is not what the check asks for (a database in the other
    /// role): down at once, whatever `fall` says, since `fall` is there to ride out flaky
    /// networks and this answer is no accident. Writes must not wait `fall` probes for it.
    WrongRole(String),
}

pub struct Probe {
    pub stream: mio::net::TcpStream,
    pub started: Instant,
    pub deadline: Instant,
    stage: Stage,
    request: Vec<u8>,
    reply: Vec<u8>,
    /// For a `tls` server: how to reach it, then (once connected) the TLS endpoint.
    tls_config: Option<Arc<BackendTls>>,
    tls: Option<TlsEnd>,
    /// Bytes sent first, in clear, as soon as the connect completes (a PROXY header).
    preamble: Vec<u8>,
    /// `check pgsql`: a conversation rather than one request and its reply.
    pg: Option<super::pgsql::Dialog>,
}

impl Probe {
    /// Starts connecting; the caller registers `stream` for READABLE | WRITABLE.
    pub fn start(
        addr: SocketAddr,
        kind: &CheckKind,
        tls_config: Option<Arc<BackendTls>>,
        preamble: Vec<u8>,
        now: Instant,
        deadline: Instant,
    ) -> io::Result<Probe> {
        let stream = mio::net::TcpStream::connect(addr)?;
        let request = match kind {
            CheckKind::None | CheckKind::Tcp => Vec::new(),
            CheckKind::Send { send, .. } => send.clone(),
            CheckKind::Http { method, path, .. } => format!(
                "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: shunt-health\r\nConnection: close\r\n\r\n"
            )
            .into_bytes(),
            CheckKind::Redis { password, .. } => {
                let words: Vec<String> =
                    password.iter().flat_map(|p| p.value.split_whitespace()).map(String::from).collect();
                super::redis::request(&words)
            }
            CheckKind::Pgsql { user, dbname, .. } => super::pgsql::startup(user, dbname.as_deref().unwrap_or(user)),
        };
        let pg = match kind {
            CheckKind::Pgsql { user, password, role, .. } => {
                Some(super::pgsql::Dialog::new(user, password.as_ref().map(|p| p.value.as_str()), *role))
            }
            _ => None,
        };
        let stage = Stage::Connecting;
        Ok(Probe {
            stream,
            started: now,
            deadline,
            stage,
            request,
            reply: Vec::new(),
            tls_config,
            tls: None,
            preamble,
            pg,
        })
    }

    /// Advances on readiness. `Some` once the probe is decided.
    pub fn advance(&mut self, kind: &CheckKind) -> Option<Verdict> {
        loop {
            match self.stage {
                Stage::Connecting => {
                    match self.stream.take_error() {
                        Ok(Some(e)) | Err(e) => return Some(Verdict::Fail(format!("connect: {e}"))),
                        Ok(None) => {}
                    }
                    match self.stream.peer_addr() {
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotConnected => return None,
                        Err(e) => return Some(Verdict::Fail(format!("connect: {e}"))),
                    }
                    // A fresh connection takes these few bytes in one send (as sessions do).
                    if !self.preamble.is_empty() {
                        match self.stream.write(&self.preamble) {
                            Ok(n) if n == self.preamble.len() => {}
                            Ok(n) => return Some(Verdict::Fail(format!("PROXY header: {n} bytes sent"))),
                            Err(e) => return Some(Verdict::Fail(format!("PROXY header: {e}"))),
                        }
                    }
                    if let Some(config) = self.tls_config.take() {
                        match TlsEnd::client(&config) {
                            Ok(tls) => self.tls = Some(tls),
                            Err(e) => return Some(Verdict::Fail(format!("TLS: {e}"))),
                        }
                        self.stage = Stage::Handshake;
                        continue;
                    }
                    if matches!(kind, CheckKind::None | CheckKind::Tcp) {
                        return Some(Verdict::Pass);
                    }
                    self.stage = Stage::Sending(0);
                }
                Stage::Handshake => {
                    let tls = self.tls.as_mut().expect("invariant: a handshake has a TLS endpoint");
                    match tls.handshake(self.stream.as_fd()) {
                        Ok(false) => return None,
                        Ok(true) if matches!(kind, CheckKind::None | CheckKind::Tcp) => return Some(Verdict::Pass),
                        Ok(true) => self.stage = Stage::Sending(0),
                        Err(e) => return Some(Verdict::Fail(format!("TLS: {e}"))),
                    }
                }
                Stage::Sending(sent) => match self.write(sent) {
                    Ok(n) if sent + n == self.request.len() => self.stage = Stage::Reading,
                    Ok(n) => self.stage = Stage::Sending(sent + n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Some(Verdict::Fail(format!("send: {e}"))),
                },
                Stage::Reading => {
                    let mut chunk = [0u8; 4096];
                    match self.read(&mut chunk) {
                        Ok(0) if self.pg.is_some() => {
                            return Some(self.pg.as_ref().map(|d| d.closed()).expect("checked"));
                        }
                        Ok(n) if self.pg.is_some() => {
                            self.reply.extend_from_slice(&chunk[..n]);
                            let dialog = self.pg.as_mut().expect("checked");
                            match dialog.feed(&mut self.reply) {
                                super::pgsql::Step::Wait => {}
                                super::pgsql::Step::Send(next) => {
                                    self.request = next;
                                    self.stage = Stage::Sending(0);
                                }
                                super::pgsql::Step::Done(bye, verdict) => {
                                    // Terminate, so the server logs a clean logout; best effort.
                                    self.request = bye;
                                    let _ = self.write(0);
                                    return Some(verdict);
                                }
                            }
                        }
                        Ok(0) => {
                            return Some(judge(kind, &self.reply, true).unwrap_or_else(|| {
                                Verdict::Fail(format!(
                                    "connection closed after {} byte(s) without a match",
                                    self.reply.len()
                                ))
                            }))
                        }
                        Ok(n) => {
                            let take = n.min(MAX_REPLY - self.reply.len());
                            self.reply.extend_from_slice(&chunk[..take]);
                            if let Some(v) = judge(kind, &self.reply, false) {
                                return Some(v);
                            }
                            if self.reply.len() >= MAX_REPLY {
                                return Some(Verdict::Fail(format!("no match in the first {MAX_REPLY} bytes")));
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Some(Verdict::Fail(format!("read: {e}"))),
                    }
                }
            }
        }
    }
}

impl Probe {
    /// Sends the request from byte `sent` on (through TLS for a `tls` server).
    fn write(&mut self, sent: usize) -> io::Result<usize> {
        match &mut self.tls {
            Some(tls) => tls.write_plain(self.stream.as_fd(), &self.request[sent..]),
            None => self.stream.write(&self.request[sent..]),
        }
    }

    /// Reads reply bytes (through TLS for a `tls` server; its end, with or without
    /// `close_notify`, reads as EOF).
    fn read(&mut self, chunk: &mut [u8]) -> io::Result<usize> {
        match &mut self.tls {
            Some(tls) => {
                // The request's last records may still wait for the socket.
                match tls.flush(self.stream.as_fd()) {
                    Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
                    _ => {}
                }
                tls.read_plain(self.stream.as_fd(), chunk)
            }
            None => self.stream.read(chunk),
        }
    }
}

/// Judges the reply so far; `None` while more bytes could still decide it.
pub fn judge(kind: &CheckKind, reply: &[u8], eof: bool) -> Option<Verdict> {
    match kind {
        CheckKind::None | CheckKind::Tcp => Some(Verdict::Pass),
        CheckKind::Send { expect, .. } => {
            if contains(reply, expect) {
                Some(Verdict::Pass)
            } else if eof {
                Some(Verdict::Fail(format!("reply does not contain {:?}", String::from_utf8_lossy(expect))))
            } else {
                None
            }
        }
        CheckKind::Redis { role, password } => super::redis::judge(reply, password.is_some(), *role, eof),
        // Decided by its dialog (see `Probe::advance`), never by one reply.
        CheckKind::Pgsql { .. } if eof => Some(Verdict::Fail("connection closed".to_string())),
        CheckKind::Pgsql { .. } => None,
        CheckKind::Http { expect, .. } => match http_status(reply) {
            Some(Ok(status)) if expect.matches(status) => Some(Verdict::Pass),
            Some(Ok(status)) => Some(Verdict::Fail(format!("HTTP status {status}, expected {}", show(expect)))),
            Some(Err(())) => Some(Verdict::Fail("reply is not an HTTP/1.x status line".to_string())),
            None if eof => Some(Verdict::Fail("connection closed before a full status line".to_string())),
            None => None,
        },
    }
}

fn show(m: &StatusMatch) -> String {
    match m {
        StatusMatch::Exact(s) => s.to_string(),
        StatusMatch::Class(c) => format!("{c}xx"),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// Parses the status of `HTTP/1.x NNN ...\r\n`. `None` until the line is complete,
/// `Some(Err)` when the bytes cannot be a status line.
pub fn http_status(reply: &[u8]) -> Option<Result<u16, ()>> {
    const PREFIX: &[u8] = b"HTTP/1.";
    let check_len = reply.len().min(PREFIX.len());
    if reply[..check_len] != PREFIX[..check_len] {
        return Some(Err(()));
    }
    let line_end = reply.iter().position(|&b| b == b'\n')?;
    let line = &reply[..line_end];
    // "HTTP/1.1 200" at least: prefix, minor digit, space, three digits.
    if line.len() < 12 || !line[7].is_ascii_digit() || line[8] != b' ' {
        return Some(Err(()));
    }
    let digits = &line[9..12];
    if !digits.iter().all(u8::is_ascii_digit) || line.get(12).is_some_and(|b| !matches!(b, b' ' | b'\r')) {
        return Some(Err(()));
    }
    let status = digits.iter().fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
    Some(Ok(status))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(expect: StatusMatch) -> CheckKind {
        CheckKind::Http { method: "GET".into(), path: "/health".into(), expect }
    }

    #[test]
    fn status_line_parsing() {
        assert_eq!(http_status(b"HTTP/1.1 200 OK\r\n"), Some(Ok(200)));
        assert_eq!(http_status(b"HTTP/1.0 503\r\n"), Some(Ok(503)));
        assert_eq!(http_status(b"HTTP/1.1 204\n"), Some(Ok(204)));
        assert_eq!(http_status(b"HTTP/1.1 200 O"), None, "line not complete yet");
        assert_eq!(http_status(b"HTT"), None);
        assert_eq!(http_status(b""), None);
        assert_eq!(http_status(b"SSH-2.0-OpenSSH\r\n"), Some(Err(())));
        assert_eq!(http_status(b"HTTP/1.1 2x0 OK\r\n"), Some(Err(())));
        assert_eq!(http_status(b"HTTP/1.1 2000 OK\r\n"), Some(Err(())));
        assert_eq!(http_status(b"HTTP/1.1\r\n"), Some(Err(())));
    }

    #[test]
    fn judge_http_exact_and_class() {
        assert_eq!(judge(&http(StatusMatch::Exact(200)), b"HTTP/1.1 200 OK\r\n", false), Some(Verdict::Pass));
        assert!(matches!(judge(&http(StatusMatch::Exact(200)), b"HTTP/1.1 503 No\r\n", false), Some(Verdict::Fail(_))));
        assert_eq!(judge(&http(StatusMatch::Class(2)), b"HTTP/1.1 204 \r\n", false), Some(Verdict::Pass));
        assert_eq!(judge(&http(StatusMatch::Class(2)), b"HTTP/1.1 20", false), None);
        assert!(matches!(judge(&http(StatusMatch::Class(2)), b"HTTP/1.1 20", true), Some(Verdict::Fail(_))));
    }

    #[test]
    fn judge_send_expect() {
        let kind = CheckKind::Send { send: b"PING\r\n".to_vec(), expect: b"+PONG".to_vec() };
        assert_eq!(judge(&kind, b"+PONG\r\n", false), Some(Verdict::Pass));
        assert_eq!(judge(&kind, b"+PO", false), None);
        assert!(matches!(judge(&kind, b"-ERR", true), Some(Verdict::Fail(_))));
    }

    #[test]
    fn garbage_replies_never_panic() {
        let mut seed = 0x1234_5678u64;
        for len in 0..200 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    (seed >> 56) as u8
                })
                .collect();
            let _ = http_status(&bytes);
            let _ = judge(&http(StatusMatch::Class(2)), &bytes, len % 2 == 0);
        }
    }
}
