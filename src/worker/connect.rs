//! Connecting a session to a server: the balancer's pick, the server's `maxconn` slot, the
//! non-blocking connect and its completion, and retries on other servers (never one this
//! session already failed on), with each failure reported to the health thread.

use super::{Worker, ACCEPT_BACKOFF};
use crate::logs::{self, Cause};
use crate::net;
use crate::shared::HealthMsg;
use crate::tls::TlsEnd;
use crate::token::{self, Side};
use mio::net::TcpStream;
use mio::Interest;
use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Instant;

impl Worker {
    /// Starts a connect to the next server the balancer offers, skipping servers this session
    /// already failed on. Closes the session when none is left or retries are spent.
    pub(super) fn connect_next(&mut self, slot: usize, now: Instant) {
        loop {
            let session = &mut self.sessions[slot];
            // A reload may have removed the service meanwhile: then no server is left for it.
            // A routed session takes its servers from the service its route names.
            let servers_of = session.route.as_ref().unwrap_or(&session.service);
            let pick = self.pools.iter_mut().find(|p| Arc::ptr_eq(&p.rt, servers_of)).and_then(|pool| {
                let tried = pool.positions(&session.tried);
                let i = pool.balancer.pick(&pool.servers, session.client_addr.ip(), &tried)?;
                Some((Arc::clone(&pool.servers[i].rt), pool.servers[i].maxconn, pool.servers[i].tls.clone()))
            });
            let Some((server, maxconn, tls)) = pick else {
                let cause = if session.tried.is_empty() {
                    session.service.counters[self.index].0.refused_no_server.add(1);
                    Cause::NoServer
                } else {
                    Cause::ServerAbort
                };
                self.close(slot, cause, now);
                return;
            };
            if !server.try_acquire(maxconn) {
                // Another worker filled it since the pick: try someone else.
                session.tried.push(server.id);
                continue;
            }
            match TcpStream::connect(server.addr) {
                Ok(mut stream) => {
                    let registered = self.poll.registry().register(
                        &mut stream,
                        token::session(slot, Side::Backend),
                        Interest::READABLE | Interest::WRITABLE,
                    );
                    session.connecting(stream, server, now);
                    session.server_tls = tls;
                    if let Err(e) = registered {
                        logs::limited_warn("register", format_args!("register backend: {e}"));
                        self.close(slot, Cause::Resource, now);
                        return;
                    }
                    self.arm_timer(slot);
                    return;
                }
                Err(e) if net::is_resource_exhaustion(&e) => {
                    server.release();
                    logs::limited_warn("connect", format_args!("socket for a server connect: {e}; pausing accepts"));
                    self.close(slot, Cause::Resource, now);
                    // Accepting more now would only accept-and-reset the backlog: wait for
                    // descriptors to come back.
                    self.accept_paused_until = Some(now + ACCEPT_BACKOFF);
                    return;
                }
                Err(e) => {
                    server.release();
                    if !self.note_connect_failure(slot, &server, &e.to_string()) {
                        self.close(slot, Cause::ServerAbort, now);
                        return;
                    }
                }
            }
        }
    }

    /// Counts a failed connect, reports it to the health thread (passive check) and records
    /// the server as tried. True while the session may retry.
    fn note_connect_failure(&mut self, slot: usize, server: &crate::shared::ServerRuntime, reason: &str) -> bool {
        let session = &mut self.sessions[slot];
        session.tried.push(server.id);
        server.counters[self.index].0.failed_connects.add(1);
        logs::limited_warn(
            "connect-failed",
            format_args!("connect to {}/{} ({}) failed: {reason}", session.service.name, server.name, server.addr),
        );
        self.health.send(HealthMsg::ConnectFailed { id: server.id, reason: reason.to_string() });
        session.tried.len() <= session.settings.retries as usize
    }

    /// The in-flight connect failed or timed out: drop that socket and try the next server.
    pub(super) fn connect_failed(&mut self, slot: usize, reason: &str, timed_out: bool, now: Instant) {
        let session = &mut self.sessions[slot];
        if let Some(mut backend) = session.backend.take() {
            let _ = self.poll.registry().deregister(&mut backend);
        }
        session.backend_tls = None;
        let Some(server) = session.server.take() else {
            return;
        };
        server.release();
        if self.note_connect_failure(slot, &server, reason) {
            self.connect_next(slot, now);
        } else {
            self.close(slot, if timed_out { Cause::ConnectTimeout } else { Cause::ServerAbort }, now);
        }
    }

    /// A backend event while connecting: did the connect complete? For a TLS server, the
    /// handshake follows and the session streams once it is done.
    pub(super) fn check_connect(&mut self, slot: usize, now: Instant) {
        let session = &mut self.sessions[slot];
        if session.backend_tls.is_some() {
            return self.drive_server_handshake(slot, now);
        }
        let Some(stream) = session.backend.as_ref() else {
            return;
        };
        // The happy path costs no call: its events say so (`tcp_poll` reports nothing in
        // SYN_SENT). Anything else asks the kernel, as mio advises: a connected socket has a
        // peer; `NotConnected` means still connecting or failed, which `take_error` tells.
        let outcome = if session.backend_seen_connected() {
            Ok(())
        } else {
            match stream.peer_addr() {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotConnected => match stream.take_error() {
                    Ok(Some(e)) | Err(e) => Err(e),
                    Ok(None) => return,
                },
                Err(e) => Err(e),
            }
        };
        match outcome {
            Err(e) => self.connect_failed(slot, &e.to_string(), false, now),
            Ok(()) => {
                let _ = stream.set_nodelay(true);
                if let Err(e) = self.send_proxy_header(slot) {
                    return self.connect_failed(slot, &format!("PROXY header: {e}"), false, now);
                }
                let session = &mut self.sessions[slot];
                if let Some(tls) = session.server_tls.take() {
                    match TlsEnd::client(&tls) {
                        Ok(end) => session.backend_tls = Some(Box::new(end)),
                        Err(e) => return self.connect_failed(slot, &format!("TLS: {e}"), false, now),
                    }
                    return self.drive_server_handshake(slot, now);
                }
                self.streaming(slot, now);
            }
        }
    }

    /// `proxy_protocol`: the header goes first on the new server connection (before a TLS
    /// handshake too), as the servers' service asks. A fresh connection's send buffer is
    /// empty and holds far more than a header (108 bytes at most), so one send takes it whole;
    /// a short send is an error, never a header cut in two.
    fn send_proxy_header(&mut self, slot: usize) -> io::Result<()> {
        let session = &self.sessions[slot];
        let servers_of = session.route.as_ref().unwrap_or(&session.service);
        let Some(pool) = self.pool_of(servers_of) else {
            return Ok(());
        };
        let Some(version) = self.generation.config.services[pool].proxy_protocol else {
            return Ok(());
        };
        let local = match session.proxied_local {
            Some(local) => local,
            None => session.client.local_addr()?,
        };
        let header = crate::proxy_protocol::header(version, session.client_addr, local);
        let backend = session.backend.as_ref().expect("invariant: connecting sessions have a backend");
        match crate::sys::send(backend.as_fd(), &header)? {
            n if n == header.len() => Ok(()),
            n => Err(io::Error::other(format!("the socket took {n} of {} bytes", header.len()))),
        }
    }

    /// Moves the TLS handshake with the server on; a failure (a certificate that does not
    /// verify, a server that does not speak TLS) is a failed connect, with its reason.
    fn drive_server_handshake(&mut self, slot: usize, now: Instant) {
        match self.sessions[slot].backend_handshake() {
            Ok(false) => {}
            Ok(true) => self.streaming(slot, now),
            Err(e) => self.connect_failed(slot, &format!("TLS: {e}"), false, now),
        }
    }

    /// The server is connected (and its TLS handshake done): the session streams.
    fn streaming(&mut self, slot: usize, now: Instant) {
        let session = &mut self.sessions[slot];
        session.connected(now);
        let server = session.server.as_ref().expect("invariant: connecting sessions have a server");
        let counters = &server.counters[self.index].0;
        counters.connects.add(1);
        if let Some(t) = session.connect_time {
            counters.connect_time.observe(t);
        }
        // The idle deadline may come before the connect deadline still armed.
        self.arm_timer(slot);
        self.pump(slot, now);
    }
}
