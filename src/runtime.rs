//! Starting and stopping a whole shunt: bind every listener (reporting which address failed
//! and why), start the workers and the health thread, and wire their channels.
//!
//! The configuration travels as an `Arc<Config>`: a reload will build a new value, check it,
//! and hand it over the same channels; nothing here assumes the value never changes.

use crate::config::{Config, ListenAddr};
use crate::health::{self, HealthLink, WorkerLink};
use crate::net;
use crate::shared::{HealthMsg, Stats, WorkerMsg};
use crate::worker::{self, Worker, WorkerSetup};
use crossbeam_channel::{Receiver, Sender};
use mio::{Poll, Waker};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

/// Why start-up failed (exit code 2).
#[derive(Debug)]
pub enum StartError {
    /// `owner` names who wanted the address: `service web`, `the admin endpoint`.
    Bind {
        owner: String,
        addr: ListenAddr,
        error: io::Error,
    },
    Io {
        what: &'static str,
        error: io::Error,
    },
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Bind { owner, addr, error } => {
                write!(f, "{owner}: cannot listen on {addr}: {error}")?;
                match error.kind() {
                    io::ErrorKind::AddrInUse => {
                        write!(f, " (another process holds this port; find it with `ss -ltnp`)")
                    }
                    io::ErrorKind::PermissionDenied => {
                        write!(f, " (ports below 1024 need root or CAP_NET_BIND_SERVICE)")
                    }
                    io::ErrorKind::AddrNotAvailable => {
                        write!(f, " (no local interface has this address)")
                    }
                    _ => Ok(()),
                }
            }
            StartError::Io { what, error } => write!(f, "{what}: {error}"),
        }
    }
}

impl std::error::Error for StartError {}

/// A running shunt.
pub struct Running {
    pub config: Arc<Config>,
    pub stats: Arc<Stats>,
    /// Every listener as bound, port 0 resolved: (service name, address).
    pub listening: Vec<(String, SocketAddr)>,
    /// The admin endpoint's bound address (port 0 resolved), when `admin` is set.
    pub admin_addr: Option<SocketAddr>,
    workers: Vec<WorkerLink>,
    /// Each worker thread sends its index and result here when it ends (a panic included).
    exits: Receiver<(usize, io::Result<()>)>,
    health: HealthLink,
    health_thread: Option<JoinHandle<()>>,
    admin: Option<crate::admin::AdminHandle>,
}

/// Binds everything and starts the threads.
pub fn start(config: Config) -> Result<Running, StartError> {
    let config = Arc::new(config);
    let workers = config.workers.max(1);
    let mut stats = Stats::new(Arc::clone(&config), workers);
    let budget = descriptor_budget(&config, workers);
    stats.max_conns = budget.max_conns;
    let stats = Arc::new(stats);

    // Worker 0 binds first; port 0 is resolved then, and the others bind the same address
    // (SO_REUSEPORT), so every worker gets its own accept queue on one port.
    let mut per_worker: Vec<Vec<(usize, std::net::TcpListener)>> = (0..workers).map(|_| Vec::new()).collect();
    let mut listening = Vec::new();
    for (si, svc) in config.services.iter().enumerate() {
        for bind in &svc.binds {
            let bind_err =
                |addr: ListenAddr, error| StartError::Bind { owner: format!("service {}", svc.name), addr, error };
            let first = net::bind_listener(&bind.addr, true).map_err(|e| bind_err(bind.addr, e))?;
            let bound = first.local_addr().map_err(|e| bind_err(bind.addr, e))?;
            let addr = worker::resolved(&bind.addr, bound);
            listening.push((svc.name.clone(), bound));
            per_worker[0].push((si, first));
            for list in per_worker.iter_mut().skip(1) {
                list.push((si, net::bind_listener(&addr, true).map_err(|e| bind_err(addr, e))?));
            }
        }
    }

    // The admin listener and token are checked before any thread starts, so every start-up
    // failure leaves nothing running.
    let admin =
        match config.admin {
            None => None,
            Some(addr) => {
                let token = config.admin_token.as_deref().map(read_token).transpose()?;
                let listener = net::bind_listener(&ListenAddr::Addr(addr), false).map_err(|error| {
                    StartError::Bind { owner: "the admin endpoint".into(), addr: ListenAddr::Addr(addr), error }
                })?;
                Some((listener, token))
            }
        };

    let io_err = |what| move |error| StartError::Io { what, error };
    let generation = stats.current();
    let (health_thread, health_link) = health::prepare(&generation).map_err(io_err("health poll"))?;
    let mut links = Vec::new();
    let (exit_tx, exits) = crossbeam_channel::unbounded();
    for (index, listeners) in per_worker.into_iter().enumerate() {
        let poll = Poll::new().map_err(io_err("worker poll"))?;
        let waker = Arc::new(Waker::new(poll.registry(), crate::token::WAKER).map_err(io_err("worker waker"))?);
        let (tx, rx) = crossbeam_channel::unbounded();
        let link = WorkerLink { tx, waker: Arc::clone(&waker) };
        let setup = WorkerSetup {
            index,
            poll,
            rx,
            listeners,
            generation: Arc::clone(&generation),
            pipe_budget: budget.pipes_per_worker,
        };
        let worker =
            Worker::new(setup, Arc::clone(&stats), health_link.clone()).map_err(io_err("worker registration"))?;
        let exit = ExitReport { index, tx: exit_tx.clone(), sent: false };
        std::thread::Builder::new()
            .name(format!("shunt-worker-{index}"))
            .spawn(move || exit.send(worker.run()))
            .map_err(io_err("worker thread"))?;
        links.push(link);
    }
    let health_handle = health_thread.spawn(links.clone()).map_err(io_err("health thread"))?;
    let mut running = Running {
        config: Arc::clone(&config),
        stats: Arc::clone(&stats),
        listening,
        admin_addr: None,
        workers: links.clone(),
        exits,
        health: health_link,
        health_thread: Some(health_handle),
        admin: None,
    };
    if let Some((listener, token)) = admin {
        running.admin_addr = listener.local_addr().ok();
        let ctx = crate::admin::Context {
            stats: Arc::clone(&stats),
            listening: running.listening.clone(),
            control: running.control(),
            token,
        };
        running.admin = Some(crate::admin::spawn(listener, ctx).map_err(io_err("admin thread"))?);
    }
    Ok(running)
}

/// Reports a worker thread's end to `Running::wait`, also when it ends by a panic (a test
/// build unwinds; a release build aborts the whole process before this matters).
struct ExitReport {
    index: usize,
    tx: Sender<(usize, io::Result<()>)>,
    sent: bool,
}

impl ExitReport {
    fn send(mut self, result: io::Result<()>) {
        self.sent = true;
        let _ = self.tx.send((self.index, result));
    }
}

impl Drop for ExitReport {
    fn drop(&mut self) {
        if !self.sent {
            let _ = self.tx.send((self.index, Err(io::Error::other("its thread panicked"))));
        }
    }
}

/// The admin token: the file's content without surrounding white space; never logged.
fn read_token(path: &std::path::Path) -> Result<Vec<u8>, StartError> {
    let what = "admin_token";
    let raw = std::fs::read(path).map_err(|error| StartError::Io { what, error })?;
    let token = raw.trim_ascii().to_vec();
    if token.is_empty() {
        return Err(StartError::Io { what, error: io::Error::other(format!("{} is empty", path.display())) });
    }
    Ok(token)
}

/// Descriptors for everything of fixed size that is not a proxied socket or a pipe: stdio, the
/// signal pipe, each thread's epoll and waker, slack for reading /proc and conf files.
const FD_FIXED: usize = 32;
/// The share of the descriptor limit set aside for splice pipes (two descriptors each). Past
/// it, flows take the copy path: a proxied connection stays 2 descriptors, and an eighth of
/// the limit still carries a pipe for bulk flows of thousands of sessions at once.
const PIPE_SHARE: usize = 8;

/// How the descriptor limit is shared out, so that the connection cap is true: however the
/// sessions use their pipes, the process never runs out of descriptors below the cap.
struct DescriptorBudget {
    /// The global cap in force: `max_conns`, lowered to what the limit carries.
    max_conns: usize,
    /// Pipes each worker may hold at once, lent and idle.
    pipes_per_worker: usize,
}

/// `max_conns`, lowered so that accepting stops before the process runs out of descriptors,
/// and each worker's pipe budget. Every proxied connection holds two descriptors; pipes come
/// out of their own share; the admin endpoint, probes and listeners out of theirs.
/// Out-of-descriptor errors are still handled, but a cap that holds connections in the kernel
/// backlog serves clients better than accept-then-reset.
fn descriptor_budget(config: &Config, workers: usize) -> DescriptorBudget {
    let Some(limit) = crate::sys::fd_limit() else {
        return DescriptorBudget { max_conns: config.max_conns, pipes_per_worker: usize::MAX / 2 };
    };
    let listeners: usize = config.services.iter().map(|s| s.binds.len()).sum::<usize>() * workers;
    let probes: usize = config.services.iter().map(|s| s.servers.len()).sum();
    let admin = if config.admin.is_some() { 1 + crate::admin::MAX_CONNECTIONS } else { 0 };
    let fixed = FD_FIXED + 2 * workers + listeners + probes + admin;
    let pipes = limit / PIPE_SHARE / 2;
    let pipes_per_worker = pipes / workers;
    let room = limit.saturating_sub(fixed + 2 * pipes_per_worker * workers) / 2;
    let max_conns = if room < config.max_conns {
        // Only a cap the operator asked for deserves a warning; the default is just a ceiling.
        let level =
            if config.max_conns == crate::config::DEFAULT_MAX_CONNS { log::Level::Info } else { log::Level::Warn };
        log::log!(
            level,
            "the descriptor limit ({limit}) carries at most {room} proxied connections (and {} splice pipes): \
             max_conns lowered from {}",
            pipes_per_worker * workers,
            config.max_conns
        );
        room.max(1)
    } else {
        config.max_conns
    };
    DescriptorBudget { max_conns, pipes_per_worker }
}

/// The handles other threads (signals, admin) use to steer the workers.
#[derive(Clone)]
pub struct Control {
    workers: Vec<WorkerLink>,
    health: HealthLink,
}

impl Control {
    /// Stop accepting now; live sessions get until `deadline`.
    pub fn drain(&self, deadline: Instant) {
        for w in &self.workers {
            w.send(WorkerMsg::Drain { deadline });
        }
    }

    pub fn to_workers(&self, msg: WorkerMsg) {
        for w in &self.workers {
            w.send(msg.clone());
        }
    }

    pub fn to_health(&self, msg: HealthMsg) {
        self.health.send(msg);
    }
}

impl Running {
    /// Counters and states, summed over workers.
    pub fn snapshot(&self) -> crate::snapshot::Snapshot {
        crate::snapshot::take(&self.stats, &self.listening)
    }

    pub fn control(&self) -> Control {
        Control { workers: self.workers.clone(), health: self.health.clone() }
    }

    /// Waits until every worker has finished (after a drain), then stops the health and admin
    /// threads. Returns at once with the error of the first worker that fails or panics: the
    /// caller ends the process (the others are not waited for).
    pub fn wait(mut self) -> io::Result<()> {
        for _ in 0..self.workers.len() {
            match self.exits.recv() {
                Ok((_, Ok(()))) => {}
                Ok((index, Err(e))) => return Err(io::Error::new(e.kind(), format!("worker {index} failed: {e}"))),
                Err(_) => return Err(io::Error::other("every worker thread is gone")),
            }
        }
        self.health.send(HealthMsg::Stop);
        if let Some(mut admin) = self.admin.take() {
            admin.stop();
        }
        if let Some(h) = self.health_thread.take() {
            let _ = h.join();
        }
        Ok(())
    }
}
