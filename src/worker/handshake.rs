//! A TLS session's first phase on a worker: the handshake, moved on by the client's readiness
//! and bounded by `timeout handshake` from the accept (never moved by the bytes that trickle
//! in); then, and only then, the server connect.

use super::Worker;
use crate::logs::Cause;
use crate::tls::HandshakeError;
use log::debug;
use std::time::Instant;

impl Worker {
    /// Moves the handshake on; connects a server once it is complete, closes on failure.
    pub(super) fn drive_handshake(&mut self, slot: usize, now: Instant) {
        let session = &mut self.sessions[slot];
        match session.handshake() {
            Ok(false) => {}
            Ok(true) => {
                let c = &session.service.counters[self.index].0;
                c.tls_ok.add(1);
                c.tls_handshake_time.observe(now.saturating_duration_since(session.started));
                if let Some(info) = session.tls.as_ref().map(|t| t.info()) {
                    c.tls_versions[usize::from(info.version == "1.3")].add(1);
                }
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

    /// `timeout handshake` ran out: the client is reset (a slowloris costs no TIME_WAIT here).
    pub(super) fn handshake_timed_out(&mut self, slot: usize, now: Instant) {
        self.sessions[slot].service.counters[self.index].0.tls_failed[0].add(1); // "timeout"
        self.close(slot, Cause::IdleTimeout, now);
    }
}
