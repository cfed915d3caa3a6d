//! A consistent-enough picture of a running shunt for the admin endpoint and tests: the
//! configuration's names joined with the shared gauges and every worker's counters, summed.
//!
//! Counters are read with relaxed loads while workers run, so a snapshot is not one instant,
//! but every counter is exact at its own read and never goes backwards.

use crate::config::Server;
use crate::metrics::HistogramSnapshot;
use crate::shared::{AdminState, CheckOutcome, PerWorker, ServerRuntime, Stats};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// A server's state as the operator sees it: the admin state wins over health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    Up,
    Down,
    Drain,
    Disabled,
}

impl ServerState {
    pub fn name(&self) -> &'static str {
        match self {
            ServerState::Up => "up",
            ServerState::Down => "down",
            ServerState::Drain => "drain",
            ServerState::Disabled => "disabled",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServerSnapshot {
    pub name: String,
    pub address: SocketAddr,
    pub weight: u32,
    pub backup: bool,
    pub state: ServerState,
    /// The health verdict alone (a drained server can be healthy).
    pub healthy: bool,
    pub active: u64,
    pub connects: u64,
    pub failed_connects: u64,
    /// Server to clients.
    pub bytes_down: u64,
    /// Clients to server.
    pub bytes_up: u64,
    pub connect_time: HistogramSnapshot,
    /// Active probes finished.
    pub checks: u64,
    pub last_check: CheckOutcome,
}

impl ServerSnapshot {
    /// Can take a new connection now (up, enabled, weight > 0).
    pub fn usable(&self) -> bool {
        self.state == ServerState::Up && self.weight > 0
    }
}

#[derive(Debug, Clone)]
pub struct ServiceSnapshot {
    pub name: String,
    pub listeners: Vec<SocketAddr>,
    pub balance: &'static str,
    pub active: u64,
    pub accepted: u64,
    pub refused_acl: u64,
    pub refused_per_ip: u64,
    /// Its per-source table: sources with live connections, those connections, and newcomers
    /// let in untracked because the table was full of live sources.
    pub per_ip: PerIpSnapshot,
    pub refused_limit: u64,
    pub refused_no_server: u64,
    /// Times accepting paused at a connection cap.
    pub limit_pauses: u64,
    /// Sessions closed because their server went down (`on_down close`).
    pub closed_on_down: u64,
    pub session_duration: HistogramSnapshot,
    pub servers: Vec<ServerSnapshot>,
    /// For a TLS service: its handshakes and sessions.
    pub tls: Option<TlsSnapshot>,
    /// For a service with an `accept_proxy` bind: PROXY headers read, and connections closed
    /// for theirs by `proxy_protocol::parse::REASONS` entry.
    pub proxy: Option<(u64, [u64; 4])>,
}

/// A per-source table's gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PerIpSnapshot {
    pub live_sources: u64,
    pub live_conns: u64,
    pub untracked: u64,
}

impl PerIpSnapshot {
    pub fn of(t: &crate::limits::SourceTable) -> PerIpSnapshot {
        PerIpSnapshot {
            live_sources: t.live_sources.load(Relaxed),
            live_conns: t.live_conns.load(Relaxed),
            untracked: t.table_full.load(Relaxed),
        }
    }
}

/// A TLS service's handshake and session counts, summed over workers.
#[derive(Debug, Clone, Default)]
pub struct TlsSnapshot {
    pub handshakes_ok: u64,
    /// Failed handshakes, by `tls::FAILURE_REASONS` entry.
    pub failed: Vec<u64>,
    pub handshake_time: HistogramSnapshot,
    /// Sessions by version: `[1.2, 1.3]`.
    pub versions: [u64; 2],
}

/// One worker's load, for spotting an uneven spread and leaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerLoad {
    pub sessions: u64,
    pub timers: u64,
    pub pipes: u64,
    /// Connections it accepted and passed to a less loaded worker (a counter).
    pub dispatched: u64,
}

#[derive(Debug, Clone)]
pub struct Snapshot {
    pub uptime: Duration,
    pub active: usize,
    pub max_conns: usize,
    /// The configuration generation in force (1 at start, one more per reload taken).
    pub generation: u64,
    /// A hash of the configuration in force (its canonical text): equal hashes, same settings.
    pub config_hash: u64,
    pub workers: usize,
    pub per_worker: Vec<WorkerLoad>,
    pub services: Vec<ServiceSnapshot>,
    /// The global per-source table.
    pub per_ip: PerIpSnapshot,
}

/// Builds a snapshot of the generation in force.
pub fn take(stats: &Stats) -> Snapshot {
    let generation = stats.current();
    let services = generation
        .config
        .services
        .iter()
        .enumerate()
        .map(|(si, svc)| {
            let rt = &generation.services[si];
            let mut s = ServiceSnapshot {
                name: svc.name.clone(),
                listeners: generation.listening.iter().filter(|l| l.service == si).map(|l| l.addr).collect(),
                balance: svc.balance.name(),
                active: rt.active.load(Relaxed),
                accepted: 0,
                refused_acl: 0,
                refused_per_ip: 0,
                per_ip: PerIpSnapshot::of(&rt.sources),
                refused_limit: 0,
                refused_no_server: 0,
                limit_pauses: 0,
                closed_on_down: 0,
                session_duration: HistogramSnapshot::default(),
                servers: Vec::new(),
                // A service that peeks ClientHellos for `route sni` counts their failures too.
                tls: (generation.tls[si].is_some() || !generation.config.services[si].routes.is_empty()).then(|| {
                    TlsSnapshot { failed: vec![0; crate::tls::FAILURE_REASONS.len()], ..TlsSnapshot::default() }
                }),
                proxy: svc.binds.iter().any(|b| b.accept_proxy).then_some((0, [0; 4])),
            };
            for PerWorker(c) in rt.counters.iter() {
                s.accepted += c.accepted.get();
                s.refused_acl += c.refused_acl.get();
                s.refused_per_ip += c.refused_per_ip.get();
                s.refused_limit += c.refused_limit.get();
                s.refused_no_server += c.refused_no_server.get();
                s.limit_pauses += c.limit_pauses.get();
                s.closed_on_down += c.closed_on_down.get();
                c.session_duration.sum_into(&mut s.session_duration);
                if let Some(t) = &mut s.tls {
                    t.handshakes_ok += c.tls_ok.get();
                    for (sum, n) in t.failed.iter_mut().zip(&c.tls_failed) {
                        *sum += n.get();
                    }
                    c.tls_handshake_time.sum_into(&mut t.handshake_time);
                    t.versions[0] += c.tls_versions[0].get();
                    t.versions[1] += c.tls_versions[1].get();
                }
                if let Some((ok, failed)) = &mut s.proxy {
                    *ok += c.proxy_ok.get();
                    for (sum, n) in failed.iter_mut().zip(&c.proxy_failed) {
                        *sum += n.get();
                    }
                }
            }
            s.servers = svc.servers.iter().zip(&generation.servers[si]).map(|(srv, rt)| server(srv, rt)).collect();
            s
        })
        .collect();
    Snapshot {
        uptime: stats.started.elapsed(),
        active: stats.active_total.load(Relaxed),
        max_conns: stats.max_conns.load(Relaxed),
        generation: generation.number,
        config_hash: generation.hash,
        workers: stats.workers.len(),
        per_worker: stats
            .workers
            .iter()
            .map(|w| WorkerLoad {
                sessions: w.sessions.get(),
                timers: w.timers.get(),
                pipes: w.pipes.get(),
                dispatched: w.dispatched.get(),
            })
            .collect(),
        services,
        per_ip: PerIpSnapshot::of(&stats.sources),
    }
}

fn server(srv: &Server, rt: &ServerRuntime) -> ServerSnapshot {
    let healthy = rt.up.load(Relaxed);
    let state = match rt.admin() {
        AdminState::Disabled => ServerState::Disabled,
        AdminState::Drain => ServerState::Drain,
        AdminState::Enabled if healthy => ServerState::Up,
        AdminState::Enabled => ServerState::Down,
    };
    let mut out = ServerSnapshot {
        name: srv.name.clone(),
        address: srv.addr,
        weight: rt.weight.load(Relaxed),
        backup: srv.backup,
        state,
        healthy,
        active: rt.active.load(Relaxed),
        connects: 0,
        failed_connects: 0,
        bytes_down: 0,
        bytes_up: 0,
        connect_time: HistogramSnapshot::default(),
        checks: rt.checks.load(Relaxed),
        last_check: rt.last_check.lock().map(|c| c.clone()).unwrap_or_default(),
    };
    for PerWorker(c) in rt.counters.iter() {
        out.connects += c.connects.get();
        out.failed_connects += c.failed_connects.get();
        out.bytes_down += c.bytes_down.get();
        out.bytes_up += c.bytes_up.get();
        c.connect_time.sum_into(&mut out.connect_time);
    }
    out
}
