//! The running shunt's control: the one place that changes it while it runs. SIGHUP and
//! `POST /reload` take the same [`Supervisor::reload`]; the admin endpoint's server actions,
//! drains and (later) upgrades go through here too. It owns the links to the workers and the
//! health thread; the generation in force is published in [`Stats`] for every reader.
//!
//! A reload in place: the file is read and checked whole (any error: the running
//! configuration stays, every error is returned); listeners whose address is unchanged are
//! kept as they are (never re-bound, so no connection is refused and no backlog lost), new
//! ones are bound for every worker (a failure rejects the whole reload), removed ones close
//! while their sessions go on; services and servers it keeps carry their runtime (see
//! `Generation::build`); then the workers and the health thread get the new generation.

use crate::bind::{self, StartError};
use crate::config::{self, Config, ConfigError, ListenAddr};
use crate::health::{HealthLink, WorkerLink};
use crate::plan::Plan;
use crate::session::Moving;
use crate::shared::{AdminState, Generation, HealthMsg, ListenerChange, Listening, Stats, WorkerMsg};
use crate::upgrade::{Program, Upgraded};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime};

/// Why a reload was not taken. The running configuration stays in every case.
#[derive(Debug)]
pub enum ReloadError {
    /// The file has errors (every one of them, as `FILE:LINE: message`).
    Config(Vec<ConfigError>),
    /// A new listener could not be bound, or the admin token not read.
    Start(StartError),
}

impl std::fmt::Display for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReloadError::Config(errors) => {
                for (i, e) in errors.iter().enumerate() {
                    if i > 0 {
                        writeln!(f)?;
                    }
                    write!(f, "{e}")?;
                }
                Ok(())
            }
            ReloadError::Start(e) => write!(f, "{e}"),
        }
    }
}

/// What a reload did.
#[derive(Debug, Clone)]
pub struct Reloaded {
    pub generation: u64,
    /// Global settings that changed in the file but only take effect after a restart (or an
    /// upgrade), e.g. `workers 4`.
    pub restart_needed: Vec<String>,
}

/// Reload counts for the metrics.
#[derive(Debug, Default)]
pub struct ReloadStats {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    /// Seconds since the epoch of the last reload taken (0: none yet).
    pub last_ok_unix: AtomicU64,
}

/// Copies (dups) of every listening socket the workers hold, one per worker for each bind of
/// the generation in force, in its order: what an upgrade hands over.
pub type ListenerCopies = Vec<(Listening, Vec<TcpListener>)>;

/// What `Supervisor::new` needs besides the threads' links.
pub struct Parts {
    pub token: Option<Vec<u8>>,
    pub listeners: ListenerCopies,
    pub admin: Option<TcpListener>,
    /// How to start a new binary (`None`: upgrades are not possible, e.g. in-process tests).
    pub program: Option<Program>,
    /// Stops this process's admin endpoint once an upgrade handed it over.
    pub retire: Option<Box<dyn FnOnce() + Send>>,
}

pub struct Supervisor {
    stats: Arc<Stats>,
    workers: Vec<WorkerLink>,
    health: HealthLink,
    /// The bearer token admin POSTs need (re-read at each reload).
    token: RwLock<Option<Vec<u8>>>,
    listeners: Mutex<ListenerCopies>,
    admin: Option<TcpListener>,
    program: Option<Program>,
    retire: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    pub reloads: ReloadStats,
    /// One change at a time: a second reload (or an upgrade) waits for the first.
    changing: Mutex<()>,
    /// Where the next adopted batch of sessions goes (round robin over the workers).
    next_adopter: AtomicU64,
}

impl Supervisor {
    pub fn new(stats: Arc<Stats>, workers: Vec<WorkerLink>, health: HealthLink, parts: Parts) -> Supervisor {
        Supervisor {
            stats,
            workers,
            health,
            token: RwLock::new(parts.token),
            listeners: Mutex::new(parts.listeners),
            admin: parts.admin,
            program: parts.program,
            retire: Mutex::new(parts.retire),
            reloads: ReloadStats::default(),
            changing: Mutex::new(()),
            next_adopter: AtomicU64::new(0),
        }
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// The bearer token admin POSTs need now.
    pub fn token(&self) -> Option<Vec<u8>> {
        self.token.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Re-reads the running configuration's file and takes it, or keeps the running one and
    /// says why. Logs the outcome either way.
    pub fn reload(&self) -> Result<Reloaded, ReloadError> {
        let _one_at_a_time = self.changing.lock().unwrap_or_else(|e| e.into_inner());
        crate::notify::reloading();
        let old = self.stats.current();
        let result =
            config::load(&old.config.path).map_err(ReloadError::Config).and_then(|config| self.take(&old, config));
        match &result {
            Ok(r) => {
                self.reloads.ok.fetch_add(1, Relaxed);
                let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
                self.reloads.last_ok_unix.store(now, Relaxed);
                log::warn!("reload: {} taken (generation {})", old.config.path.display(), r.generation);
                for what in &r.restart_needed {
                    log::warn!("reload: {what}");
                }
            }
            Err(e) => {
                self.reloads.failed.fetch_add(1, Relaxed);
                log::error!("reload: {} rejected, the running configuration stays:\n{e}", old.config.path.display());
            }
        }
        crate::notify::send("READY=1");
        result
    }

    /// Binds what is new, builds the generation, hands it out. Nothing changes until every
    /// fallible step succeeded.
    fn take(&self, old: &Generation, mut config: Config) -> Result<Reloaded, ReloadError> {
        let token = config.admin_token.as_deref().map(bind::read_token).transpose().map_err(ReloadError::Start)?;
        // Certificates and keys are read again: new handshakes get the new files.
        let tls = crate::tls::server_configs(&config).map_err(ReloadError::Config)?;
        let server_tls = crate::tls::backend_configs(&config).map_err(ReloadError::Config)?;
        let workers = self.workers.len();
        let plan = plan_listeners(old, &config);
        // Bind every new address before changing anything: a failure drops what was bound.
        let mut fresh: Vec<Option<(std::net::SocketAddr, Vec<TcpListener>)>> = Vec::new();
        for (service, conf, kept) in &plan {
            fresh.push(match kept {
                Some(_) => None,
                None => Some(
                    bind::bind_for_workers(&config.services[*service].name, *conf, workers)
                        .map_err(ReloadError::Start)?,
                ),
            });
        }
        let restart_needed = crate::plan::restart_needed(&old.config, &config);
        // What cannot change live keeps its running value, so the generation (and `GET
        // /config`) says what really runs; `restart_needed` says what the file asks for.
        config.workers = old.config.workers;
        config.admin = old.config.admin;
        config.log_level = old.config.log_level;
        let mut generation = Generation::build(Arc::new(config), Some(old), workers);
        generation.tls = tls;
        generation.server_tls = server_tls;
        let mut per_worker: Vec<Vec<ListenerChange>> = (0..workers).map(|_| Vec::new()).collect();
        let mut copies = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        let mut old_copies = std::mem::take(&mut *copies);
        for ((service, conf, kept), bound) in plan.into_iter().zip(fresh) {
            let ordinal = ordinal_of(&generation.listening, conf);
            let (addr, dups) = match (kept, bound) {
                (Some(addr), _) => {
                    for list in per_worker.iter_mut() {
                        list.push(ListenerChange { service, conf, ordinal, new: None });
                    }
                    let was = old_copies.iter().position(|(l, _)| l.conf == conf && l.addr == addr);
                    (addr, was.map(|i| old_copies.swap_remove(i).1).unwrap_or_default())
                }
                (None, Some((addr, sockets))) => {
                    let dups = sockets.iter().filter_map(|s| s.try_clone().ok()).collect();
                    for (list, socket) in per_worker.iter_mut().zip(sockets) {
                        list.push(ListenerChange { service, conf, ordinal, new: Some(socket) });
                    }
                    (addr, dups)
                }
                (None, None) => unreachable!("a listener is kept or bound"),
            };
            let listening = Listening { service, conf, addr };
            generation.listening.push(listening);
            copies.push((listening, dups));
        }
        let generation = Arc::new(generation);
        let number = generation.number;
        // A reloaded `max_conns` takes effect, never above what the descriptor budget allows.
        self.stats.max_conns.store(generation.config.max_conns.min(self.stats.descriptor_cap), Relaxed);
        *self.token.write().unwrap_or_else(|e| e.into_inner()) = token;
        self.stats.publish(Arc::clone(&generation));
        for (link, listeners) in self.workers.iter().zip(per_worker) {
            link.send(WorkerMsg::Reload { generation: Arc::clone(&generation), listeners });
        }
        self.health.send(HealthMsg::Track(generation));
        Ok(Reloaded { generation: number, restart_needed })
    }

    /// What reloading the running configuration's file would change (`POST /reload?dry_run=1`);
    /// changes nothing.
    pub fn plan(&self) -> Result<Plan, ReloadError> {
        let old = self.stats.current();
        let new = config::load(&old.config.path).map_err(ReloadError::Config)?;
        crate::tls::server_configs(&new).map_err(ReloadError::Config)?;
        crate::tls::backend_configs(&new).map_err(ReloadError::Config)?;
        Ok(crate::plan::diff(&old.config, &new, &LiveNow(&old)))
    }

    /// Starts the executable at this process's path and hands it everything (see `upgrade`).
    /// On `Err` this process goes on serving as before.
    pub fn upgrade(&self) -> Result<Upgraded, String> {
        let _one_at_a_time = self.changing.lock().unwrap_or_else(|e| e.into_inner());
        let Some(program) = &self.program else {
            return Err("this shunt was not started as a program: nothing to upgrade to".into());
        };
        log::warn!("upgrade: starting {}", program.exe.display());
        let result = crate::upgrade::hand_over(self, program);
        match &result {
            Ok(u) => log::warn!(
                "upgrade: pid {} took over {} listener(s) and {} established session(s); the rest finish here",
                u.pid,
                u.listeners,
                u.sessions_moved
            ),
            Err(why) => log::error!("upgrade failed, this process keeps serving: {why}"),
        }
        result
    }

    /// Waits until no reload or upgrade is under way (the process must not exit in the middle
    /// of handing its sessions over).
    pub fn wait_idle(&self) {
        drop(self.changing.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// The listening sockets an upgrade hands over.
    pub(crate) fn listener_copies(&self) -> MutexGuard<'_, ListenerCopies> {
        self.listeners.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn admin_copy(&self) -> Option<&TcpListener> {
        self.admin.as_ref()
    }

    /// Every worker stops accepting and gives up its sessions that can move; the rest finish
    /// here within `drain_timeout`.
    pub(crate) fn hand_over_sessions(&self) -> Vec<Moving> {
        let deadline = Instant::now() + self.stats.current().config.drain_timeout;
        let (tx, rx) = crossbeam_channel::unbounded();
        for w in &self.workers {
            w.send(WorkerMsg::HandOver { deadline, sessions: tx.clone() });
        }
        drop(tx);
        let mut all = Vec::new();
        for _ in &self.workers {
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(batch) => all.extend(batch),
                Err(_) => break,
            }
        }
        all
    }

    /// This process no longer serves: its admin endpoint stops (the new process's answers).
    pub(crate) fn retire(&self) {
        if let Some(stop) = self.retire.lock().unwrap_or_else(|e| e.into_inner()).take() {
            stop();
        }
    }

    /// Sessions moved in from the old process, spread over the workers.
    pub(crate) fn adopt(&self, sessions: Vec<Moving>) {
        let n = self.workers.len().max(1);
        let first = self.next_adopter.fetch_add(1, Relaxed) as usize;
        let mut per_worker: Vec<Vec<Moving>> = (0..n).map(|_| Vec::new()).collect();
        for (i, s) in sessions.into_iter().enumerate() {
            per_worker[(first + i) % n].push(s);
        }
        for (w, batch) in self.workers.iter().zip(per_worker) {
            if !batch.is_empty() {
                w.send(WorkerMsg::Adopt(batch));
            }
        }
    }

    /// Stop accepting now; live sessions get until `deadline`.
    pub fn drain(&self, deadline: Instant) {
        // The copies kept for an upgrade would keep the listening sockets open after the
        // workers close theirs: the kernel would go on queueing clients for nobody.
        self.listener_copies().clear();
        for w in &self.workers {
            w.send(WorkerMsg::Drain { deadline });
        }
    }

    /// Sets a server's admin state; returns the state it had. `Err` names what was not found.
    pub fn set_admin(&self, service: &str, server: &str, state: AdminState) -> Result<AdminState, String> {
        let generation = self.stats.current();
        let rt = find(&generation, service, server)?;
        let before = rt.admin();
        rt.set_admin(state);
        for w in &self.workers {
            w.send(WorkerMsg::Admin { id: rt.id, state });
        }
        self.health.send(HealthMsg::Admin { id: rt.id, state });
        Ok(before)
    }

    /// Sets a server's weight until the next reload; returns the weight it had.
    pub fn set_weight(&self, service: &str, server: &str, weight: u32) -> Result<u32, String> {
        let generation = self.stats.current();
        let rt = find(&generation, service, server)?;
        let before = rt.weight.swap(weight, Relaxed);
        for w in &self.workers {
            w.send(WorkerMsg::Weight { id: rt.id, weight });
        }
        Ok(before)
    }
}

/// Live session counts read from a generation's runtime gauges.
struct LiveNow<'g>(&'g Generation);

impl crate::plan::Live for LiveNow<'_> {
    fn service(&self, service: &str) -> u64 {
        self.0.service_named(service).map_or(0, |i| self.0.services[i].active.load(Relaxed))
    }
    fn server(&self, service: &str, server: &str) -> u64 {
        self.0.server_named(service, server).map_or(0, |s| s.active.load(Relaxed))
    }
}

fn find<'g>(
    generation: &'g Generation,
    service: &str,
    server: &str,
) -> Result<&'g Arc<crate::shared::ServerRuntime>, String> {
    if generation.service_named(service).is_none() {
        return Err(format!("no service named {service:?}"));
    }
    generation.server_named(service, server).ok_or_else(|| format!("service {service} has no server named {server:?}"))
}

/// How many binds before this one in `listening` have the same spelling.
fn ordinal_of(listening: &[Listening], conf: ListenAddr) -> usize {
    listening.iter().filter(|l| l.conf == conf).count()
}

/// Every `bind` of `new` in file order: (service, address as spelled, the bound address of the
/// old listener it keeps, if any). A listener is kept when the old generation had a bind with
/// the same spelling (the n-th such spelling matches the n-th), whichever service had it.
fn plan_listeners(old: &Generation, new: &Config) -> Vec<(usize, ListenAddr, Option<std::net::SocketAddr>)> {
    let mut seen: Vec<ListenAddr> = Vec::new();
    let mut out = Vec::new();
    for (si, svc) in new.services.iter().enumerate() {
        for bind in &svc.binds {
            let ordinal = seen.iter().filter(|&&c| c == bind.addr).count();
            seen.push(bind.addr);
            let kept = old.listening.iter().filter(|l| l.conf == bind.addr).nth(ordinal).map(|l| l.addr);
            out.push((si, bind.addr, kept));
        }
    }
    out
}
