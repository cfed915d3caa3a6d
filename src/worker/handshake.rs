//! A session's first phase on a worker, before any server: the PROXY header of an
//! `accept_proxy` bind, then, when its service speaks TLS, the handshake (terminated TLS) or the
//! ClientHello peeked for `route sni` (passthrough). Moved on by the client's readiness and
//! bounded by `timeout handshake` from the accept (never moved by the bytes that trickle in);
//! then, and only then, the route is chosen and a server connected.

use super::Worker;
use crate::logs::Cause;
use crate::proxy_protocol::parse as proxy;
use crate::sys;
use crate::tls::hello;
use crate::tls::HandshakeError;
use crate::token::Side;
use log::debug;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Instant;

impl Worker {
    /// Moves the handshake on; connects a server once it is complete, closes on failure.
    pub(super) fn drive_handshake(&mut self, slot: usize, now: Instant) {
        let session = &mut self.sessions[slot];
        if session.awaiting_proxy {
            return self.drive_proxy_header(slot, now);
        }
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
                    _ => Cause::BadHandshake,
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

    /// `accept_proxy`: looks at what the client sent so far (peeked) until its PROXY header is
    /// whole, then takes exactly the header off the socket; the client it names is the session's
    /// client from then on, admitted by the access rules and limits as if it had connected
    /// itself. Then the TLS handshake or the ClientHello, if the service wants one; else a server.
    fn drive_proxy_header(&mut self, slot: usize, now: Instant) {
        let session = &mut self.sessions[slot];
        let buf = &mut self.hello[..proxy::MAX_HEADER];
        let n = match sys::peek(session.client.as_fd(), buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return self.drive_proxy_header(slot, now),
            Err(_) => return self.proxy_failed(slot, "truncated", Cause::ClientAbort, now),
        };
        let header = match proxy::parse(&buf[..n]) {
            Ok(Some(header)) => header,
            // More is needed, and will come unless the client already closed.
            Ok(None) if n > 0 && !session.client_closed() => return,
            Ok(None) => return self.proxy_failed(slot, "truncated", Cause::ClientAbort, now),
            Err(e) => {
                debug!("{} {}: {e}", session.client_addr, session.service.name);
                return self.proxy_failed(slot, e.reason(), Cause::BadHandshake, now);
            }
        };
        // The header is queued whole (it was peeked): one read takes exactly it.
        match (&session.client).read(&mut buf[..header.len]) {
            Ok(got) if got == header.len => {}
            _ => return self.proxy_failed(slot, "truncated", Cause::ClientAbort, now),
        }
        session.awaiting_proxy = false;
        session.service.counters[self.index].0.proxy_ok.add(1);
        if let Some((client, local)) = header.addresses {
            session.client_addr = crate::net::canonical_addr(client);
            session.proxied_local = Some(local);
        }
        let Some(pool) = self.pool_of(&self.sessions[slot].service) else {
            return self.close(slot, Cause::NoServer, now); // its service went with a reload
        };
        match self.admit_client(pool, self.sessions[slot].client_addr, now) {
            Some(hold) => self.sessions[slot].source = Some(hold),
            None => return self.close(slot, Cause::Denied, now),
        }
        let session = &mut self.sessions[slot];
        // Bytes after the header may be queued already: the next step reads without an edge.
        session.note(Side::Client, true, false, false);
        let hello = !self.generation.config.services[pool].routes.is_empty();
        if session.tls.is_some() || hello {
            self.drive_handshake(slot, now);
        } else {
            self.connect_next(slot, now);
        }
    }

    /// An `accept_proxy` connection closed for its header: counted by `reason` (one of
    /// `proxy_protocol::parse::REASONS`).
    fn proxy_failed(&mut self, slot: usize, reason: &str, cause: Cause, now: Instant) {
        let counters = &self.sessions[slot].service.counters[self.index].0;
        let i = proxy::REASONS.iter().position(|r| *r == reason).expect("a known reason");
        counters.proxy_failed[i].add(1);
        self.close(slot, cause, now);
    }

    /// A passthrough ClientHello that never came whole: counted with the handshake failures (by
    /// the same reasons), and the connection closed.
    fn hello_failed(&mut self, slot: usize, e: HandshakeError, now: Instant) {
        let session = &self.sessions[slot];
        session.service.counters[self.index].0.tls_failed[e.reason_index()].add(1);
        let cause = match e {
            HandshakeError::Closed => Cause::ClientAbort,
            _ => Cause::BadHandshake,
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
        if self.sessions[slot].awaiting_proxy {
            return self.proxy_failed(slot, "timeout", Cause::IdleTimeout, now);
        }
        self.sessions[slot].service.counters[self.index].0.tls_failed[0].add(1); // "timeout"
        self.close(slot, Cause::IdleTimeout, now);
    }
}
