//! Starting and stopping a whole shunt: bind every listener (reporting which address failed
//! and why), start the workers, the health thread and the admin endpoint, and wire their
//! channels. What changes a running shunt afterwards (reloads, drains, admin actions) goes
//! through the [`Supervisor`] this builds.

use crate::bind::{self, StartError};
use crate::config::{Config, ListenAddr};
use crate::health::{self, WorkerLink};
use crate::net;
use crate::shared::{HealthMsg, Listening, Stats};
use crate::supervisor::{Parts, Supervisor};
use crate::upgrade::{Inherited, Program};
use crate::worker::{Worker, WorkerListener, WorkerSetup};
use crossbeam_channel::{Receiver, Sender};
use mio::{Poll, Waker};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::JoinHandle;

/// A running shunt.
pub struct Running {
    pub stats: Arc<Stats>,
    pub supervisor: Arc<Supervisor>,
    /// Every listener as bound at start, port 0 resolved: (service name, address).
    pub listening: Vec<(String, SocketAddr)>,
    /// The admin endpoint's bound address (port 0 resolved), when `admin` is set.
    pub admin_addr: Option<SocketAddr>,
    /// Each worker thread sends its index and result here when it ends (a panic included).
    exits: Receiver<(usize, io::Result<()>)>,
    workers: usize,
    health: health::HealthLink,
    health_thread: Option<JoinHandle<()>>,
    /// Shared with the supervisor, which stops the endpoint when an upgrade hands it over.
    admin: Arc<std::sync::Mutex<Option<crate::admin::AdminHandle>>>,
}

/// Binds everything and starts the threads.
pub fn start(config: Config) -> Result<Running, StartError> {
    start_with(config, None, None)
}

/// [`start`] for the `shunt` program: `program` is how an upgrade starts the next binary, and
/// `inherited` what an old process handed over (its listening sockets are used instead of
/// binding, so their accept queues carry on; its servers' states are taken).
pub fn start_with(
    config: Config,
    program: Option<Program>,
    mut inherited: Option<&mut Inherited>,
) -> Result<Running, StartError> {
    let config = Arc::new(config);
    let workers = config.workers.max(1);
    let budget = descriptor_budget(&config, workers);
    let mut stats = Stats::new(Arc::clone(&config), workers);
    stats.descriptor_cap = budget.max_conns;
    stats.max_conns.store(budget.max_conns.min(config.max_conns), Relaxed);

    let mut per_worker: Vec<Vec<WorkerListener>> = (0..workers).map(|_| Vec::new()).collect();
    let mut copies = Vec::new();
    let mut generation = crate::shared::Generation::build(Arc::clone(&config), None, workers);
    generation.tls = crate::tls::server_configs(&config).map_err(StartError::Config)?;
    generation.server_tls = crate::tls::backend_configs(&config).map_err(StartError::Config)?;
    let mut listening = Vec::new();
    for (si, svc) in config.services.iter().enumerate() {
        for b in &svc.binds {
            let ordinal = generation.listening.iter().filter(|l| l.conf == b.addr).count();
            let handed = inherited.as_deref_mut().and_then(|i| i.take_bind(b.addr, ordinal));
            let (addr, sockets) = match handed {
                Some((addr, sockets)) => (addr, top_up(&svc.name, b.addr, addr, sockets, workers)?),
                None => bind::bind_for_workers(&svc.name, b.addr, workers)?,
            };
            listening.push((svc.name.clone(), addr));
            let at = Listening { service: si, conf: b.addr, addr };
            generation.listening.push(at);
            copies.push((at, sockets.iter().filter_map(|s| s.try_clone().ok()).collect()));
            // Worker k takes socket k; sockets from an old process with more workers go to
            // the workers in turn, so every inherited accept queue is served.
            for (k, socket) in sockets.into_iter().enumerate() {
                per_worker[k % workers].push(WorkerListener { service: si, conf: b.addr, ordinal, socket });
            }
        }
    }
    if let Some(i) = inherited.as_deref() {
        i.apply_states(&generation);
    }
    let generation = Arc::new(generation);
    stats.publish(Arc::clone(&generation));
    let stats = Arc::new(stats);

    // The admin listener and token are checked before any thread starts, so every start-up
    // failure leaves nothing running.
    let admin = match config.admin {
        None => None,
        Some(addr) => match inherited.and_then(|i| i.take_admin(addr)) {
            Some(listener) => Some(listener),
            None => Some(net::bind_listener(&ListenAddr::Addr(addr), false).map_err(|error| StartError::Bind {
                owner: "the admin endpoint".into(),
                addr: ListenAddr::Addr(addr),
                error,
            })?),
        },
    };
    let admin_copy = admin.as_ref().and_then(|a| a.try_clone().ok());
    let token = config.admin_token.as_deref().map(bind::read_token).transpose()?;
    // Everything that needs root is done: bound, certificates and token read.
    crate::privileges::drop_to(config.user.as_deref()).map_err(StartError::Privileges)?;

    let io_err = |what| move |error| StartError::Io { what, error };
    let (health_thread, health_link) = health::prepare(&generation).map_err(io_err("health poll"))?;
    // Every worker's poll, waker and channel first: each worker gets the links to all of them
    // (it passes connections to the least loaded).
    let mut links = Vec::new();
    let mut ends = Vec::new();
    for _ in 0..workers {
        let poll = Poll::new().map_err(io_err("worker poll"))?;
        let waker = Arc::new(Waker::new(poll.registry(), crate::token::WAKER).map_err(io_err("worker waker"))?);
        let (tx, rx) = crossbeam_channel::unbounded();
        links.push(WorkerLink { tx, waker });
        ends.push((poll, rx));
    }
    let (exit_tx, exits) = crossbeam_channel::unbounded();
    for (index, (listeners, (poll, rx))) in per_worker.into_iter().zip(ends).enumerate() {
        let setup = WorkerSetup {
            index,
            poll,
            rx,
            listeners,
            generation: Arc::clone(&generation),
            pipe_budget: budget.pipes_per_worker,
            peers: links.clone(),
        };
        let worker =
            Worker::new(setup, Arc::clone(&stats), health_link.clone()).map_err(io_err("worker registration"))?;
        let exit = ExitReport { index, tx: exit_tx.clone(), sent: false };
        std::thread::Builder::new()
            .name(format!("shunt-worker-{index}"))
            .spawn(move || exit.send(worker.run()))
            .map_err(io_err("worker thread"))?;
    }
    let health_handle = health_thread.spawn(links.clone()).map_err(io_err("health thread"))?;
    // The admin thread needs the supervisor, which must be able to stop it (an upgrade hands
    // the endpoint over): the handle waits in a cell both reach.
    let admin_handle: Arc<std::sync::Mutex<Option<crate::admin::AdminHandle>>> = Arc::default();
    let retire = {
        let handle = Arc::clone(&admin_handle);
        Box::new(move || {
            if let Some(h) = handle.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                h.signal_stop();
            }
        }) as Box<dyn FnOnce() + Send>
    };
    let parts = Parts { token, listeners: copies, admin: admin_copy, program, retire: Some(retire) };
    let supervisor = Arc::new(Supervisor::new(Arc::clone(&stats), links, health_link.clone(), parts));
    let mut running = Running {
        stats: Arc::clone(&stats),
        supervisor: Arc::clone(&supervisor),
        listening,
        admin_addr: None,
        exits,
        workers,
        health: health_link,
        health_thread: Some(health_handle),
        admin: admin_handle,
    };
    if let Some(listener) = admin {
        running.admin_addr = listener.local_addr().ok();
        let ctx = crate::admin::Context { supervisor };
        let handle = crate::admin::spawn(listener, ctx).map_err(io_err("admin thread"))?;
        *running.admin.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
    }
    Ok(running)
}

/// Adds sockets bound to `addr` (the address an old process handed over) until every worker
/// has one.
fn top_up(
    service: &str,
    conf: ListenAddr,
    addr: SocketAddr,
    mut sockets: Vec<std::net::TcpListener>,
    workers: usize,
) -> Result<Vec<std::net::TcpListener>, StartError> {
    let resolved = match conf {
        ListenAddr::Any(_) => ListenAddr::Any(addr.port()),
        ListenAddr::Addr(_) => ListenAddr::Addr(addr),
    };
    while sockets.len() < workers {
        let socket = net::bind_listener(&resolved, true).map_err(|error| StartError::Bind {
            owner: format!("service {service}"),
            addr: resolved,
            error,
        })?;
        sockets.push(socket);
    }
    Ok(sockets)
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

impl Running {
    /// Counters and states, summed over workers.
    pub fn snapshot(&self) -> crate::snapshot::Snapshot {
        crate::snapshot::take(&self.stats)
    }

    /// Waits until every worker has finished (after a drain), then stops the health and admin
    /// threads. Returns at once with the error of the first worker that fails or panics: the
    /// caller ends the process (the others are not waited for).
    pub fn wait(mut self) -> io::Result<()> {
        for _ in 0..self.workers {
            match self.exits.recv() {
                Ok((_, Ok(()))) => {}
                Ok((index, Err(e))) => return Err(io::Error::new(e.kind(), format!("worker {index} failed: {e}"))),
                Err(_) => return Err(io::Error::other("every worker thread is gone")),
            }
        }
        // Workers end at once when an upgrade took all their sessions; the hand-over itself
        // (sending them) must finish before the process may exit.
        self.supervisor.wait_idle();
        self.health.send(HealthMsg::Stop);
        if let Some(mut admin) = self.admin.lock().unwrap_or_else(|e| e.into_inner()).take() {
            admin.stop();
        }
        if let Some(h) = self.health_thread.take() {
            let _ = h.join();
        }
        Ok(())
    }
}
