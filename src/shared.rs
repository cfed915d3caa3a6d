//! State shared between threads: per-server and per-service counters (atomics, written by the
//! workers and the health thread, read by the admin thread), and the messages that steer the
//! workers and the health thread.
//!
//! Nothing here is locked on the data path: counters are relaxed atomics, and a worker learns
//! about health and admin changes only through [`WorkerMsg`] on its channel.

use crate::metrics::WorkerCounters;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Identifies a server by its position in the running configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServerId {
    pub service: usize,
    pub server: usize,
}

/// The operator's say on a server, independent of its health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum AdminState {
    /// Takes traffic while healthy.
    Enabled = 0,
    /// No new connections; live ones go on; probes go on.
    Drain = 1,
    /// No new connections; live ones go on; probes stop.
    Disabled = 2,
}

impl AdminState {
    fn from_u8(v: u8) -> AdminState {
        match v {
            1 => AdminState::Drain,
            2 => AdminState::Disabled,
            _ => AdminState::Enabled,
        }
    }
}

/// Outcome of the last active probe of a server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckOutcome {
    /// `None` before the first probe.
    pub ok: Option<bool>,
    /// Why it failed (or "ok").
    pub detail: String,
    pub duration_us: u64,
}

/// Counters and state of one server, summed over all workers.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// The health thread's verdict (the single writer).
    pub up: AtomicBool,
    admin: AtomicU8,
    /// Connections open to this server now, over all workers (read by leastconn and
    /// `maxconn`, so it cannot be a per-worker counter).
    pub active: AtomicU64,
    /// Active probes finished (health thread is the only writer).
    pub checks: AtomicU64,
    /// Written only by the health thread, read by the admin thread: never on the data path.
    pub last_check: Mutex<CheckOutcome>,
}

impl ServerStats {
    pub fn admin(&self) -> AdminState {
        AdminState::from_u8(self.admin.load(Relaxed))
    }
    pub fn set_admin(&self, state: AdminState) {
        self.admin.store(state as u8, Relaxed);
    }

    /// Reserves a connection slot under `maxconn`; false when the server is full.
    pub fn try_acquire(&self, maxconn: Option<u32>) -> bool {
        match maxconn {
            None => {
                self.active.fetch_add(1, Relaxed);
                true
            }
            Some(max) => self.active.fetch_update(Relaxed, Relaxed, |n| (n < u64::from(max)).then_some(n + 1)).is_ok(),
        }
    }
    pub fn release(&self) {
        self.active.fetch_sub(1, Relaxed);
    }
}

/// Gauges of one service that every worker must see (the per-service `max_conns`).
#[derive(Debug, Default)]
pub struct ServiceStats {
    pub active: AtomicU64,
}

/// All counters of a running shunt. Built from the config at start; a reload carries the
/// entries of servers that keep their (service, server) names.
#[derive(Debug)]
pub struct Stats {
    pub started: Instant,
    /// Proxied connections over every service and worker (the global `max_conns`).
    pub active_total: AtomicUsize,
    /// The global cap in force: `max_conns`, lowered if the descriptor limit cannot carry it.
    pub max_conns: usize,
    pub services: Vec<Arc<ServiceStats>>,
    /// `servers[service][server]`.
    pub servers: Vec<Vec<Arc<ServerStats>>>,
    /// One counter set per worker, summed by readers.
    pub workers: Vec<Arc<WorkerCounters>>,
}

impl Stats {
    pub fn new(config: &crate::config::Config, workers: usize) -> Stats {
        Stats {
            workers: (0..workers).map(|_| Arc::new(WorkerCounters::new(config))).collect(),
            started: Instant::now(),
            active_total: AtomicUsize::new(0),
            max_conns: config.max_conns,
            services: config.services.iter().map(|_| Arc::default()).collect(),
            servers: config
                .services
                .iter()
                .map(|svc| {
                    svc.servers
                        .iter()
                        .map(|srv| {
                            let stats = ServerStats { up: AtomicBool::new(true), ..Default::default() };
                            if srv.disabled {
                                stats.set_admin(AdminState::Disabled);
                            }
                            Arc::new(stats)
                        })
                        .collect()
                })
                .collect(),
        }
    }

    /// Takes one connection slot under the global cap and under `service`'s own `cap`, or
    /// none. Each check-and-take is one atomic step, so workers racing for the last slot
    /// cannot overshoot a cap.
    pub fn try_admit(&self, service: usize, cap: Option<usize>) -> bool {
        let below = |max: usize| move |n: usize| (n < max).then_some(n + 1);
        if self.active_total.fetch_update(Relaxed, Relaxed, below(self.max_conns)).is_err() {
            return false;
        }
        let active = &self.services[service].active;
        let taken = match cap {
            None => {
                active.fetch_add(1, Relaxed);
                true
            }
            Some(c) => active.fetch_update(Relaxed, Relaxed, |n| (n < c as u64).then_some(n + 1)).is_ok(),
        };
        if !taken {
            self.active_total.fetch_sub(1, Relaxed);
        }
        taken
    }

    /// Gives back a slot `try_admit` took.
    pub fn release_admission(&self, service: usize) {
        self.services[service].active.fetch_sub(1, Relaxed);
        self.active_total.fetch_sub(1, Relaxed);
    }

    pub fn server(&self, id: ServerId) -> &Arc<ServerStats> {
        &self.servers[id.service][id.server]
    }
}

/// What a worker is told. Sent over its crossbeam channel, followed by a wake of its `mio::Waker`.
#[derive(Debug, Clone)]
pub enum WorkerMsg {
    /// The health thread's verdict changed.
    Health { id: ServerId, up: bool },
    /// The operator drained, disabled or enabled a server.
    Admin { id: ServerId, state: AdminState },
    /// Stop accepting now; close what is still open at `deadline`.
    Drain { deadline: Instant },
}

/// What the health thread is told.
#[derive(Debug, Clone)]
pub enum HealthMsg {
    /// A worker's connect to this server failed (passive check).
    ConnectFailed {
        id: ServerId,
        reason: String,
    },
    /// The operator changed a server's admin state (disabled servers are not probed).
    Admin {
        id: ServerId,
        state: AdminState,
    },
    Stop,
}
