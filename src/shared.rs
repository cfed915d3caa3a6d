//! State shared between threads: the runtime object of every service and server of the running
//! configuration (its identity, gauges, and one counter set per worker), the generation that
//! groups them, and the messages that steer the workers and the health thread.
//!
//! Identities, not positions: a session holds its service's and server's runtime by `Arc`, and
//! messages name servers by a [`ServerId`] that is never reused. A reload builds a new
//! [`Generation`] that carries the runtime of every service and server it keeps (matched by
//! name, and for servers by address too), so their health, counters and live sessions go on,
//! while sessions of removed ones finish on the runtime they hold.
//!
//! Nothing here is locked on the data path: counters are relaxed atomics with one writer each,
//! and a worker learns about health and admin changes only through [`WorkerMsg`] on its channel.

use crate::config::{Config, ListenAddr};
use crate::metrics::{ServerCounters, ServiceCounters, WorkerCounters};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

/// Names a server in messages: unique over the process's life and never reused, so a message
/// about a server a reload removed cannot reach the one that took its place.
pub type ServerId = u64;

static NEXT_SERVER_ID: AtomicU64 = AtomicU64::new(1);

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

/// One worker's counter set, alone on its cache lines: workers never write a line another
/// worker writes.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct PerWorker<T>(pub T);

fn per_worker<T: Default>(workers: usize) -> Box<[PerWorker<T>]> {
    (0..workers).map(|_| PerWorker::default()).collect()
}

/// One server of the running configuration, as every thread sees it.
#[derive(Debug)]
pub struct ServerRuntime {
    pub id: ServerId,
    pub name: String,
    pub addr: SocketAddr,
    /// The weight in force: the conf's, or what `POST /servers/S/V/weight/N` set until the next
    /// reload (which sets the conf's again).
    pub weight: AtomicU32,
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
    /// `counters[w]` is written by worker `w` only; readers sum them.
    pub counters: Box<[PerWorker<ServerCounters>]>,
}

impl ServerRuntime {
    pub(crate) fn new(server: &crate::config::Server, workers: usize) -> ServerRuntime {
        let rt = ServerRuntime {
            id: NEXT_SERVER_ID.fetch_add(1, Relaxed),
            name: server.name.clone(),
            addr: server.addr,
            weight: AtomicU32::new(server.weight),
            up: AtomicBool::new(true),
            admin: AtomicU8::new(AdminState::Enabled as u8),
            active: AtomicU64::new(0),
            checks: AtomicU64::new(0),
            last_check: Mutex::new(CheckOutcome::default()),
            counters: per_worker(workers),
        };
        if server.disabled {
            rt.set_admin(AdminState::Disabled);
        }
        rt
    }

    /// A server no generation has: what a session that moved in from an old process holds
    /// when this configuration no longer has its server. It finishes there, unseen by metrics.
    pub(crate) fn detached(name: &str, addr: SocketAddr, workers: usize) -> ServerRuntime {
        let conf = crate::config::Server {
            name: name.to_string(),
            addr,
            weight: 0,
            backup: false,
            disabled: false,
            maxconn: None,
            tls: None,
            line: 0,
        };
        ServerRuntime::new(&conf, workers)
    }

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

/// One service of the running configuration, as every thread sees it.
#[derive(Debug)]
pub struct ServiceRuntime {
    pub name: String,
    /// Proxied connections of this service now, over all workers (its `max_conns`).
    pub active: AtomicU64,
    /// Its clients, by source, for `max_conns_per_ip` and `rate_per_ip`.
    pub sources: crate::limits::SourceTable,
    /// `counters[w]` is written by worker `w` only; readers sum them.
    pub counters: Box<[PerWorker<ServiceCounters>]>,
}

impl ServiceRuntime {
    pub(crate) fn new(name: &str, workers: usize) -> ServiceRuntime {
        ServiceRuntime {
            name: name.to_string(),
            active: AtomicU64::new(0),
            sources: crate::limits::SourceTable::default(),
            counters: per_worker(workers),
        }
    }
}

/// One `bind` of a generation, as bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listening {
    /// Its service's position in the generation.
    pub service: usize,
    /// The address as the conf spells it (port 0 not resolved): what a reload compares.
    pub conf: ListenAddr,
    /// The address bound (port 0 resolved).
    pub addr: SocketAddr,
}

/// One configuration and the runtime of its services and servers, in file order:
/// `services[i]` is `config.services[i]`'s, `servers[i][j]` that of its server `j`.
#[derive(Debug)]
pub struct Generation {
    /// 1 at start, one more per reload taken.
    pub number: u64,
    pub config: Arc<Config>,
    pub services: Vec<Arc<ServiceRuntime>>,
    pub servers: Vec<Vec<Arc<ServerRuntime>>>,
    /// Every `bind` of every service, in file order (filled in once bound).
    pub listening: Vec<Listening>,
    /// Each service's TLS configuration (`None`: plain TCP), in file order (filled in once the
    /// certificates are loaded, see `crate::tls::server_configs`).
    pub tls: Vec<Option<Arc<rustls::ServerConfig>>>,
    /// Each server's TLS client configuration (`None`: plain TCP), as `servers` is laid out
    /// (filled in with `tls`, see `crate::tls::backend_configs`).
    pub server_tls: crate::tls::BackendConfigs,
    /// FNV-1a of the configuration's canonical text (`config::render`, without its comment
    /// line): the same settings always hash the same, whatever the file's layout.
    pub hash: u64,
}

impl Generation {
    /// The runtime for `config`: taken over from `previous` for every service it keeps (by
    /// name) and every server it keeps (by service, name and address; a server whose address
    /// changed is a new server), new for the rest.
    pub fn build(config: Arc<Config>, previous: Option<&Generation>, workers: usize) -> Generation {
        let old_service = |name: &str| {
            let prev = previous?;
            let i = prev.config.services.iter().position(|s| s.name == name)?;
            Some(i)
        };
        let mut services = Vec::new();
        let mut servers = Vec::new();
        for svc in &config.services {
            let kept = old_service(&svc.name).zip(previous);
            services.push(match kept {
                Some((i, prev)) => Arc::clone(&prev.services[i]),
                None => Arc::new(ServiceRuntime::new(&svc.name, workers)),
            });
            servers.push(
                svc.servers
                    .iter()
                    .map(|srv| {
                        let old = kept.and_then(|(i, prev)| {
                            prev.servers[i].iter().find(|o| o.name == srv.name && o.addr == srv.addr)
                        });
                        match old {
                            Some(rt) => {
                                rt.weight.store(srv.weight, Relaxed);
                                Arc::clone(rt)
                            }
                            None => Arc::new(ServerRuntime::new(srv, workers)),
                        }
                    })
                    .collect(),
            );
        }
        let text = crate::config::render(&config);
        let settings = text.split_once('\n').map_or("", |(_comment, rest)| rest);
        let hash =
            settings.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        Generation {
            number: previous.map_or(1, |p| p.number + 1),
            tls: vec![None; config.services.len()],
            server_tls: config.services.iter().map(|s| vec![None; s.servers.len()]).collect(),
            config,
            services,
            servers,
            listening: Vec::new(),
            hash,
        }
    }

    /// The service named `name`: its position.
    pub fn service_named(&self, name: &str) -> Option<usize> {
        self.config.services.iter().position(|s| s.name == name)
    }

    /// Every server with its service's index, in file order.
    pub fn all_servers(&self) -> impl Iterator<Item = (usize, &Arc<ServerRuntime>)> {
        self.servers.iter().enumerate().flat_map(|(si, list)| list.iter().map(move |s| (si, s)))
    }

    /// The server with this id, and its service's index.
    pub fn server(&self, id: ServerId) -> Option<(usize, &Arc<ServerRuntime>)> {
        self.all_servers().find(|(_, s)| s.id == id)
    }

    /// The server named `server` of the service named `service`.
    pub fn server_named(&self, service: &str, server: &str) -> Option<&Arc<ServerRuntime>> {
        let si = self.config.services.iter().position(|s| s.name == service)?;
        self.servers[si].iter().find(|s| s.name == server)
    }
}

/// Process-wide counters and the running generation.
#[derive(Debug)]
pub struct Stats {
    pub started: Instant,
    /// Proxied connections over every service and worker (the global `max_conns`).
    pub active_total: AtomicUsize,
    /// The global cap in force: `max_conns`, lowered if the descriptor limit cannot carry it
    /// (a reload may change it).
    pub max_conns: AtomicUsize,
    /// The most proxied connections the descriptor limit carries (fixed at start).
    pub descriptor_cap: usize,
    /// One set of worker gauges per worker.
    pub workers: Vec<Arc<WorkerCounters>>,
    /// Every client, by source, for the global `max_conns_per_ip` and `rate_per_ip`.
    pub sources: crate::limits::SourceTable,
    /// The generation in force. Read (an `Arc` clone under a read lock) by the admin thread and
    /// at reloads; the workers hold their own copy, handed to them over their channels.
    current: RwLock<Arc<Generation>>,
}

impl Stats {
    pub fn new(config: Arc<Config>, workers: usize) -> Stats {
        Stats {
            started: Instant::now(),
            active_total: AtomicUsize::new(0),
            max_conns: AtomicUsize::new(config.max_conns),
            descriptor_cap: usize::MAX,
            workers: (0..workers).map(|_| Arc::new(WorkerCounters::default())).collect(),
            sources: crate::limits::SourceTable::default(),
            current: RwLock::new(Arc::new(Generation::build(config, None, workers))),
        }
    }

    /// The generation in force.
    pub fn current(&self) -> Arc<Generation> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Makes `generation` the one in force.
    pub fn publish(&self, generation: Arc<Generation>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = generation;
    }

    /// Takes one connection slot under the global cap and under the service's own `cap`, or
    /// none. Each check-and-take is one atomic step, so workers racing for the last slot
    /// cannot overshoot a cap.
    pub fn try_admit(&self, service: &ServiceRuntime, cap: Option<usize>) -> bool {
        let max = self.max_conns.load(Relaxed);
        if self.active_total.fetch_update(Relaxed, Relaxed, |n| (n < max).then_some(n + 1)).is_err() {
            return false;
        }
        let taken = match cap {
            None => {
                service.active.fetch_add(1, Relaxed);
                true
            }
            Some(c) => service.active.fetch_update(Relaxed, Relaxed, |n| (n < c as u64).then_some(n + 1)).is_ok(),
        };
        if !taken {
            self.active_total.fetch_sub(1, Relaxed);
        }
        taken
    }

    /// Gives back a slot `try_admit` took.
    pub fn release_admission(&self, service: &ServiceRuntime) {
        service.active.fetch_sub(1, Relaxed);
        self.active_total.fetch_sub(1, Relaxed);
    }
}

/// What a worker is told. Sent over its crossbeam channel, followed by a wake of its `mio::Waker`.
#[derive(Debug)]
pub enum WorkerMsg {
    /// The health thread's verdict changed.
    Health { id: ServerId, up: bool },
    /// The operator drained, disabled or enabled a server.
    Admin { id: ServerId, state: AdminState },
    /// Operator set a server's weight (until the next reload).
    Weight { id: ServerId, weight: u32 },
    /// Stop accepting now; close what is still open at `deadline`.
    Drain { deadline: Instant },
    /// A reload was taken: new sessions come from `generation`; listeners are as listed (in
    /// the generation's order), and any other this worker holds closes.
    Reload { generation: Arc<Generation>, listeners: Vec<ListenerChange> },
    /// An upgrade: stop accepting, send every session that can move, drain the rest until
    /// `deadline`.
    HandOver { deadline: Instant, sessions: crossbeam_channel::Sender<Vec<crate::session::Moving>> },
    /// Sessions moved in from the old process.
    Adopt(Vec<crate::session::Moving>),
    /// A connection a more loaded worker accepted and passed on.
    Dispatched(Accepted),
}

/// A client connection as it leaves `accept`: admitted under its service's caps (`service`
/// holds the slot), allowed by the rules and per-source limits (`hold`, unless its PROXY header
/// is still to come), not yet registered with any poll. Whichever worker starts its session
/// gives all of it back at close.
#[derive(Debug)]
pub struct Accepted {
    pub service: Arc<ServiceRuntime>,
    pub stream: mio::net::TcpStream,
    pub addr: std::net::SocketAddr,
    pub hold: Option<crate::session::SourceHold>,
    pub accept_proxy: bool,
    /// When it was accepted: its handshake deadline counts from then.
    pub at: Instant,
}

/// One listener of a worker after a reload: the one it holds for `conf` (the `ordinal`-th of
/// the binds spelled so), or a new socket.
#[derive(Debug)]
pub struct ListenerChange {
    pub service: usize,
    pub conf: ListenAddr,
    pub ordinal: usize,
    pub new: Option<std::net::TcpListener>,
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
    /// A reload was taken: probe the servers of this generation.
    Track(Arc<Generation>),
    Stop,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_bytes;
    use std::path::Path;

    fn config(text: &str) -> Arc<Config> {
        Arc::new(parse_bytes(text.as_bytes(), Path::new("t.conf")).unwrap())
    }

    const BASE: &str = "service a\n bind 127.0.0.1:0\n server x 127.0.0.1:1\n server y 127.0.0.1:2\n\
                        service b\n bind 127.0.0.1:0\n server z 127.0.0.1:3\n";

    #[test]
    fn a_reload_keeps_the_runtime_of_what_it_keeps_by_name_and_address() {
        let g1 = Generation::build(config(BASE), None, 2);
        // b goes, a's y moves to another address, a gains w, c is new.
        let next = "service c\n bind 127.0.0.1:0\n server z 127.0.0.1:3\n\
                    service a\n bind 127.0.0.1:0\n server w 127.0.0.1:4\n server y 127.0.0.1:9\n server x 127.0.0.1:1\n";
        let g2 = Generation::build(config(next), Some(&g1), 2);
        assert_eq!(g2.number, 2);
        assert!(Arc::ptr_eq(&g2.services[1], &g1.services[0]), "service a kept");
        assert!(!Arc::ptr_eq(&g2.services[0], &g1.services[1]), "c is not b, though it has b's server");
        let [w, y, x] = [&g2.servers[1][0], &g2.servers[1][1], &g2.servers[1][2]];
        assert!(Arc::ptr_eq(x, &g1.servers[0][0]), "x kept: same name, same address");
        assert!(!Arc::ptr_eq(y, &g1.servers[0][1]), "y changed address: a new server");
        assert_ne!(y.id, g1.servers[0][1].id, "and a new id");
        assert!(g1.all_servers().all(|(_, s)| s.id != w.id));
        assert_eq!(g2.server(x.id).map(|(si, _)| si), Some(1));
        assert!(g2.server(g1.servers[1][0].id).is_none(), "b's z is gone");
    }

    #[test]
    fn admission_never_overshoots_a_cap() {
        let stats = Stats::new(config(BASE), 1);
        stats.max_conns.store(3, Relaxed);
        let svc = Arc::clone(&stats.current().services[0]);
        let taken = (0..5).filter(|_| stats.try_admit(&svc, Some(2))).count();
        assert_eq!(taken, 2, "the service's cap");
        assert_eq!(stats.active_total.load(Relaxed), 2, "a refused service slot gives the global one back");
        let other = Arc::clone(&stats.current().services[1]);
        assert!(stats.try_admit(&other, None));
        assert!(!stats.try_admit(&other, None), "the global cap");
        stats.release_admission(&svc);
        assert!(stats.try_admit(&other, None));
    }
}
