//! A session's first phase on a worker when its service speaks TLS: the handshake (terminated
//! TLS), or the ClientHello peeked for `route sni` (passthrough). Moved on by the client's
//! readiness and bounded by `timeout handshake` from the accept (never moved by the bytes that
//! trickle in); then, and only then, the route is chosen and a server connected.

use super::Worker;
use crate::logs::Cause;
use crate::sys;
use crate::tls::hello;
use crate::tls::HandshakeError;
use log::debug;
use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Instant;

impl Worker {
    /// Moves the handshake on; connects a server once it is complete, closes on failure.
    pub(super) fn drive_handshake(&mut self, slot: usize, now: Instant) {
        let session = &mut self.sessions[slot];
        if session.tls.is_none() {
            return self.drive_peek(slot, now);
        }
        match session.handshake() {
            Ok(false) => {}
            Ok(true) => {
                let c = &session.service.counters[self.index].0;
                c.tls_ok.add(1);
                c.tls_handshake_time.observe(now.saturating_duration_since(session.started));
                let info = session.tls.as_ref().map(|t| t.info()).unwrap_or_default();
                c.tls_versions[usize::from(info.version == "1.3")].add(1);
                self.route(slot, info.sni.as_deref());
                self.connect_next(slot, now);
            }
            Err(e) => {
                session.service.counters[self.index].0.tls_failed[e.reason_index()].add(1);
                debug!("{} {}: TLS handshake failed: {e}", session.client_addr, session.service.name);
                let cause = match e {
                    HandshakeError::Closed => Cause::ClientAbort,
                    _ => Cause::TlsError,
                };
                self.close(slot, cause, now);
            }
        }
    }

    /// SNI passthrough: looks at what the client sent so far (peeked: the bytes stay in the
    /// socket for the server) until its ClientHello is complete, then routes by its server name.
    fn drive_peek(&mut self, slot: usize, now: Instant) {
        let session = &mut self.sessions[slot];
        let n = match sys::peek(session.client.as_fd(), &mut self.hello) {
            Ok(n) => n,
            // Nothing new: the next bytes raise a new edge.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return self.drive_peek(slot, now),
            Err(_) => return self.hello_failed(slot, HandshakeError::Closed, now),
        };
        match hello::server_name(&self.hello[..n]) {
            // More is needed, and will come unless the client already closed.
            Ok(None) if n > 0 && !session.client_closed() => {}
            Ok(None) => self.hello_failed(slot, HandshakeError::Closed, now),
            Ok(Some(name)) => {
                self.route(slot, name.as_deref());
                self.sessions[slot].peeked_sni = name;
                self.connect_next(slot, now);
            }
            Err(e) => {
                debug!("{} {}: {e}", session.client_addr, session.service.name);
                self.hello_failed(slot, HandshakeError::Hello(e), now);
            }
        }
    }

    /// A passthrough ClientHello that never came whole: counted with the handshake failures (by
    /// the same reasons), and the connection closed.
    fn hello_failed(&mut self, slot: usize, e: HandshakeError, now: Instant) {
        let session = &self.sessions[slot];
        session.service.counters[self.index].0.tls_failed[e.reason_index()].add(1);
        let cause = match e {
            HandshakeError::Closed => Cause::ClientAbort,
            _ => Cause::TlsError,
        };
        self.close(slot, cause, now);
    }

    /// Points the session at the service the first matching `route sni` line names, if any;
    /// otherwise it stays with its own service's servers. Routes are those of the running
    /// generation (a reload since the accept applies).
    fn route(&mut self, slot: usize, sni: Option<&str>) {
        let Some(front) = self.pool_of(&self.sessions[slot].service) else {
            return;
        };
        let routes = &self.generation.config.services[front].routes;
        if let Some(r) = sni.and_then(|name| routes.iter().find(|r| r.pattern.matches(name))) {
            self.sessions[slot].route = Some(Arc::clone(&self.pools[r.target].rt));
        }
    }

    /// `timeout handshake` ran out: the client is reset (a slowloris costs no TIME_WAIT here).
    pub(super) fn handshake_timed_out(&mut self, slot: usize, now: Instant) {
        self.sessions[slot].service.counters[self.index].0.tls_failed[0].add(1); // "timeout"
        self.close(slot, Cause::IdleTimeout, now);
    }
}
