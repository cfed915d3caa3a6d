//! Accepting: batches per listener, admission under the connection caps (one atomic step each),
//! the `timeout queue` refusal at a cap that stays full, and the start of a session.

use super::{Fault, Worker, ACCEPT_BACKOFF, ACCEPT_BATCH};
use crate::acl;
use crate::limits;
use crate::logs;
use crate::net;
use crate::session::{Phase, Session, Settings, SourceHold};
use crate::shared::{Accepted, ServiceRuntime, Stats};
use crate::tls::TlsEnd;
use crate::token::{self, Side};
use log::debug;
use mio::net::TcpStream;
use mio::Interest;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

impl Worker {
    pub(super) fn accept_ready(&mut self, now: Instant) {
        if self.accept_paused_until.is_some_and(|t| now < t) {
            return;
        }
        self.accept_paused_until = None;
        self.cap_blocked = false;
        for i in 0..self.listeners.len() {
            for _ in 0..ACCEPT_BATCH {
                if !self.listeners[i].ready {
                    break;
                }
                let pool = self.listeners[i].pool;
                let rt = Arc::clone(&self.pools[pool].rt);
                let svc = &self.generation.config.services[pool];
                let admitted = self.stats.try_admit(&rt, svc.max_conns);
                if admitted {
                    self.listeners[i].full_since = None;
                } else {
                    // Clients wait in the kernel backlog for room, but not for ever: once no room
                    // has freed for `timeout queue`, they are refused, so they can go elsewhere.
                    // (The kernel does not say how long each one waited; the cap's state does.)
                    let since = match self.listeners[i].full_since {
                        Some(t) => t,
                        None => {
                            rt.counters[self.index].0.limit_pauses.add(1);
                            *self.listeners[i].full_since.insert(now)
                        }
                    };
                    if now.saturating_duration_since(since) < svc.queue_timeout {
                        self.cap_blocked = true;
                        break;
                    }
                }
                let accepted = self.listeners[i].socket.accept();
                if admitted && accepted.is_err() {
                    self.stats.release_admission(&rt);
                }
                match accepted {
                    Ok((stream, addr)) if !admitted => self.refuse_at_cap(pool, stream, addr),
                    Ok((stream, addr)) => {
                        // Behind `accept_proxy` the peer is a proxy: who the client is comes
                        // with its header, and the rules and limits apply then.
                        let accept_proxy = self.listeners[i].accept_proxy;
                        let hold = match accept_proxy {
                            true => None,
                            false => match self.admit_client(pool, addr, now) {
                                Some(hold) => Some(hold),
                                None => {
                                    self.stats.release_admission(&rt);
                                    net::set_linger_zero(&stream);
                                    continue;
                                }
                            },
                        };
                        if self.peers.len() < 2 {
                            self.start_session(pool, stream, addr, hold, accept_proxy, now);
                        } else {
                            let service = Arc::clone(&rt);
                            let conn = Accepted { service, stream, addr, hold, accept_proxy, at: now };
                            if let Some(c) = self.dispatch(conn) {
                                self.start_session(pool, c.stream, c.addr, c.hold, c.accept_proxy, now);
                            }
                        }
                        // Out of descriptors for its server connect: the rest of the batch
                        // would only be accepted to be reset.
                        if self.accept_paused_until.is_some() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.listeners[i].ready = false,
                    Err(e) if net::is_resource_exhaustion(&e) => {
                        logs::limited_warn("accept", format_args!("accept: {e}; pausing accepts"));
                        self.accept_paused_until = Some(now + ACCEPT_BACKOFF);
                        return;
                    }
                    // ECONNABORTED and friends concern one connection that already went away.
                    Err(e) => debug!("accept: {e}"),
                }
            }
        }
    }

    /// A client past a cap that has been full for `timeout queue`: a reset tells it at once
    /// (no TIME_WAIT here), where a backlog overflow would only drop its SYNs.
    fn refuse_at_cap(&mut self, pool: usize, stream: TcpStream, addr: SocketAddr) {
        self.pools[pool].rt.counters[self.index].0.refused_limit.add(1);
        net::set_linger_zero(&stream);
        drop(stream);
        let svc = &self.generation.config.services[pool];
        debug!("{}: refused {} (connection cap full)", svc.name, net::canonical_addr(addr));
        logs::limited_warn(
            "refuse_at_cap",
            format_args!(
                "{}: connection cap full for longer than timeout queue ({:?}): refusing new clients",
                svc.name, svc.queue_timeout
            ),
        );
    }

    /// Whether the client at `addr` may in, by the access rules and then the per-source limits;
    /// `None` refuses it, otherwise what its session releases at close.
    pub(super) fn admit_client(&mut self, pool: usize, addr: SocketAddr, now: Instant) -> Option<SourceHold> {
        if !self.acl_allows(pool, addr) {
            return None;
        }
        self.admit_source(pool, addr, now)
    }

    /// The global `allow`/`deny` rules, then the service's: both must let `addr` in. A refusal
    /// is counted, logged (rate-limited), and the connection reset before anything else is
    /// spent on it.
    fn acl_allows(&mut self, pool: usize, addr: SocketAddr) -> bool {
        let config = &self.generation.config;
        let svc = &config.services[pool];
        let ip = net::canonical_addr(addr).ip();
        let verdict = match config.acl.check(ip) {
            acl::Verdict::Allowed => svc.acl.check(ip),
            denied => denied,
        };
        let acl::Verdict::Denied(rule) = verdict else {
            return true;
        };
        self.pools[pool].rt.counters[self.index].0.refused_acl.add(1);
        let why = rule.map_or("no allow rule matches".to_string(), |r| format!("deny {} on line {}", r.net, r.line));
        logs::limited_warn("acl", format_args!("{}: refused {ip} ({why})", svc.name));
        false
    }

    /// `max_conns_per_ip` and `rate_per_ip`: the global table, then the service's. `None`
    /// refuses the client (counted, logged rate-limited); otherwise what to release at close.
    fn admit_source(&mut self, pool: usize, addr: SocketAddr, now: Instant) -> Option<SourceHold> {
        let config = &self.generation.config;
        let svc = &config.services[pool];
        let (global, own) = (config.per_source, svc.per_source);
        let ip = net::canonical_addr(addr).ip();
        let key = limits::source_key(ip);
        let rt = &self.pools[pool].rt;
        let mut hold = SourceHold { key, global: None, service: None };
        let mut refused = None;
        if global.is_set() {
            match self.stats.sources.admit(key, global, now) {
                Ok(tracked) => hold.global = tracked.then_some(global),
                Err(why) => refused = Some(("global", why)),
            }
        }
        if refused.is_none() && own.is_set() {
            match rt.sources.admit(key, own, now) {
                Ok(tracked) => hold.service = tracked.then_some(own),
                Err(why) => refused = Some(("service", why)),
            }
        }
        let Some((scope, why)) = refused else {
            return Some(hold);
        };
        release_source(&self.stats, rt, hold, now);
        rt.counters[self.index].0.refused_per_ip.add(1);
        let what = match why {
            limits::Refusal::TooMany => "max_conns_per_ip",
            limits::Refusal::TooFast => "rate_per_ip",
        };
        logs::limited_warn("per_ip", format_args!("{}: refused {ip} ({scope} {what})", svc.name));
        None
    }

    /// A client accepted under a connection slot `try_admit` took (the session gives it back
    /// when it closes).
    /// With `accept_proxy`, the session first waits for the client's PROXY header.
    pub(super) fn start_session(
        &mut self,
        pool: usize,
        stream: TcpStream,
        addr: SocketAddr,
        hold: Option<SourceHold>,
        accept_proxy: bool,
        now: Instant,
    ) {
        let rt = Arc::clone(&self.pools[pool].rt);
        rt.counters[self.index].0.accepted.add(1);
        // TCP_NODELAY comes from the listener (Linux copies it to accepted sockets).
        let id = self.next_id;
        self.next_id += 1;
        match self.fault {
            Some(Fault::Panic(n)) if self.next_id == n => panic!("SHUNT_TEST_FAULT: panic at accept {n}"),
            Some(Fault::Error(n)) if self.next_id == n => {
                self.failure = Some(io::Error::other(format!("SHUNT_TEST_FAULT: error at accept {n}")));
            }
            _ => {}
        }
        let settings = Settings::of(&self.generation.config.services[pool]);
        let mut session = Session::new(id, rt, stream, net::canonical_addr(addr), settings, now);
        session.source = hold;
        if let Some(config) = &self.generation.tls[pool] {
            match TlsEnd::new(Arc::clone(config)) {
                Ok(tls) => session = session.with_tls(tls),
                Err(e) => {
                    logs::limited_warn("tls", format_args!("TLS session: {e}"));
                    self.stats.release_admission(&session.service);
                    if let Some(hold) = hold {
                        release_source(&self.stats, &session.service, hold, now);
                    }
                    return;
                }
            }
        }
        if session.tls.is_none() && !self.generation.config.services[pool].routes.is_empty() {
            session = session.awaiting_hello();
        }
        if accept_proxy {
            session = session.awaiting_proxy_header();
        }
        let entry = self.sessions.vacant_entry();
        let slot = entry.key();
        entry.insert(session);
        self.publish_load();
        let session = &mut self.sessions[slot];
        if let Err(e) = self.poll.registry().register(
            &mut session.client,
            token::session(slot, Side::Client),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            logs::limited_warn("register", format_args!("register client: {e}"));
            self.close(slot, logs::Cause::Resource, now);
            return;
        }
        if matches!(session.phase, Phase::Handshake { .. }) {
            // The PROXY header, the handshake or the ClientHello to route by first: it may be
            // here already; its deadline holds from now, whatever trickles in.
            self.arm_timer(slot);
            self.drive_handshake(slot, now);
        } else {
            self.connect_next(slot, now);
        }
    }
}

/// Gives back what a session (or a refused client) held in the per-source tables.
pub(super) fn release_source(stats: &Stats, service: &ServiceRuntime, hold: SourceHold, now: Instant) {
    if let Some(limits) = hold.global {
        stats.sources.release(hold.key, limits, now);
    }
    if let Some(limits) = hold.service {
        service.sources.release(hold.key, limits, now);
    }
}
