//! The health thread: the single writer of every server's health.
//!
//! It runs every active probe concurrently on its own `mio::Poll` (one black-holed server only
//! costs its own probe's timeout), folds in the failed connects that workers report (passive
//! checks), applies rise/fall hysteresis, and sends each up/down edge to every worker over its
//! crossbeam channel followed by a wake of that worker's `mio::Waker`.

mod hysteresis;
pub mod pgsql;
pub mod probe;
pub mod redis;

pub use hysteresis::Hysteresis;

use crate::config::{Check, CheckKind};
use crate::shared::{AdminState, CheckOutcome, Generation, HealthMsg, ServerId, ServerRuntime, WorkerMsg};
use crossbeam_channel::{Receiver, Sender};
use log::{debug, warn};
use mio::{Events, Interest, Poll, Token, Waker};
use probe::{Probe, Verdict};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const WAKER: Token = Token(usize::MAX);

/// A way to tell one worker something: its channel plus its waker.
#[derive(Clone)]
pub struct WorkerLink {
    pub tx: Sender<WorkerMsg>,
    pub waker: Arc<Waker>,
}

impl WorkerLink {
    /// Sends and wakes. A worker that already exited is not an error.
    pub fn send(&self, msg: WorkerMsg) {
        if self.tx.send(msg).is_ok() {
            let _ = self.waker.wake();
        }
    }
}

/// The other threads' handle on the health thread.
#[derive(Clone)]
pub struct HealthLink {
    tx: Sender<HealthMsg>,
    waker: Arc<Waker>,
}

impl HealthLink {
    pub fn send(&self, msg: HealthMsg) {
        if self.tx.send(msg).is_ok() {
            let _ = self.waker.wake();
        }
    }
}

/// One server as the health thread tracks it.
struct Target {
    server: Arc<ServerRuntime>,
    /// Its service's check (kind, timings, port).
    check: Check,
    /// For a server reached with `tls`: probes handshake first.
    tls: Option<Arc<crate::tls::BackendTls>>,
    /// `proxy_protocol`: what a probe sends first (a header without a client).
    preamble: Vec<u8>,
    /// Where probes go (the server's address, or its host with the check's `port`).
    addr: SocketAddr,
    label: String,
    health: Hysteresis,
    admin: AdminState,
    next_due: Instant,
    probe: Option<Probe>,
}

pub struct HealthThread {
    workers: Vec<WorkerLink>,
    rx: Receiver<HealthMsg>,
    poll: Poll,
    targets: Vec<Target>,
}

/// Creates the health thread's poll and link; `run` it on its own thread once the workers exist.
pub fn prepare(generation: &Generation) -> io::Result<(HealthThread, HealthLink)> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let (tx, rx) = crossbeam_channel::unbounded();
    let mut thread = HealthThread { workers: Vec::new(), rx, poll, targets: Vec::new() };
    thread.track(generation, Instant::now());
    Ok((thread, HealthLink { tx, waker }))
}

impl HealthThread {
    pub fn spawn(mut self, workers: Vec<WorkerLink>) -> io::Result<JoinHandle<()>> {
        self.workers = workers;
        std::thread::Builder::new().name("shunt-health".into()).spawn(move || self.run())
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(256);
        loop {
            let now = Instant::now();
            self.start_due_probes(now);
            self.expire_probes(now);
            let timeout = self.next_wakeup().map(|t| t.saturating_duration_since(Instant::now()));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    warn!("health: poll failed: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
                continue;
            }
            for event in events.iter() {
                match event.token() {
                    WAKER => {}
                    Token(i) => self.advance_probe(i),
                }
            }
            while let Ok(msg) = self.rx.try_recv() {
                match msg {
                    HealthMsg::Stop => return,
                    HealthMsg::ConnectFailed { id, reason } => self.passive_failure(id, &reason),
                    HealthMsg::Admin { id, state } => self.set_admin(id, state),
                    HealthMsg::Track(generation) => self.track(&generation, Instant::now()),
                }
            }
        }
    }

    /// Tracks the servers of `generation`: a server it keeps goes on with its health state and
    /// probe cadence; a new one starts up, as at start-up, and is probed at once.
    fn track(&mut self, generation: &Generation, now: Instant) {
        let old = std::mem::take(&mut self.targets);
        for (si, server) in generation.all_servers() {
            let svc = &generation.config.services[si];
            let position = generation.servers[si].iter().position(|s| Arc::ptr_eq(s, server));
            let tls = position.and_then(|j| generation.server_tls[si][j].clone());
            let addr = SocketAddr::new(server.addr.ip(), svc.check.port.unwrap_or(server.addr.port()));
            let kept = old.iter().find(|t| t.server.id == server.id);
            self.targets.push(Target {
                server: Arc::clone(server),
                check: role_for(&svc.check, position.is_some_and(|j| svc.servers[j].backup)),
                tls,
                preamble: svc.proxy_protocol.map_or(Vec::new(), crate::proxy_protocol::local_header),
                addr,
                label: format!("{}/{}", svc.name, server.name),
                health: match kept {
                    Some(t) => t.health.clone(),
                    // A server handed over down by an upgrade stays down until it rises.
                    None if !server.up.load(std::sync::atomic::Ordering::Relaxed) => Hysteresis::down(),
                    None => Hysteresis::default(),
                },
                admin: server.admin(),
                next_due: kept.map_or(now, |t| t.next_due),
                probe: None,
            });
        }
        // Probes in flight to removed or kept servers are dropped; a kept one is due again.
        for mut t in old {
            if let Some(mut p) = t.probe.take() {
                let _ = self.poll.registry().deregister(&mut p.stream);
                if let Some(kept) = self.targets.iter_mut().find(|k| k.server.id == t.server.id) {
                    kept.next_due = now;
                }
            }
        }
    }

    fn index(&self, id: ServerId) -> Option<usize> {
        self.targets.iter().position(|t| t.server.id == id)
    }

    /// Probes run while a check is configured, or, without one, only to bring back a server
    /// that passive checks took down. Disabled servers are never probed.
    fn wants_probe(t: &Target) -> bool {
        t.admin != AdminState::Disabled && (t.check.kind != CheckKind::None || !t.health.is_up())
    }

    fn start_due_probes(&mut self, now: Instant) {
        for i in 0..self.targets.len() {
            let t = &self.targets[i];
            if t.probe.is_some() || now < t.next_due || !Self::wants_probe(t) {
                continue;
            }
            let deadline = now + t.check.timeout;
            let interval = t.check.interval;
            match Probe::start(t.addr, &t.check.kind, t.tls.clone(), t.preamble.clone(), now, deadline) {
                Ok(mut p) => {
                    if let Err(e) =
                        self.poll.registry().register(&mut p.stream, Token(i), Interest::READABLE | Interest::WRITABLE)
                    {
                        self.conclude(i, now, Verdict::Fail(format!("register: {e}")));
                        self.targets[i].next_due = now + interval;
                        continue;
                    }
                    self.targets[i].probe = Some(p);
                }
                Err(e) => {
                    self.targets[i].next_due = now + interval;
                    self.conclude(i, now, Verdict::Fail(format!("connect: {e}")));
                }
            }
        }
    }

    fn expire_probes(&mut self, now: Instant) {
        for i in 0..self.targets.len() {
            if self.targets[i].probe.as_ref().is_some_and(|p| now >= p.deadline) {
                let timeout = self.targets[i].check.timeout;
                self.finish_probe(i, Verdict::Fail(format!("timeout after {}ms", timeout.as_millis())));
            }
        }
    }

    fn next_wakeup(&self) -> Option<Instant> {
        self.targets
            .iter()
            .filter_map(|t| match &t.probe {
                Some(p) => Some(p.deadline),
                None if Self::wants_probe(t) => Some(t.next_due),
                None => None,
            })
            .min()
    }

    fn advance_probe(&mut self, i: usize) {
        let Some(t) = self.targets.get_mut(i) else {
            return;
        };
        let Some(p) = t.probe.as_mut() else { return };
        if let Some(verdict) = p.advance(&t.check.kind) {
            self.finish_probe(i, verdict);
        }
    }

    fn finish_probe(&mut self, i: usize, verdict: Verdict) {
        let Some(mut p) = self.targets[i].probe.take() else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut p.stream);
        // The probe is decided: end it with a reset rather than a FIN. Closing first with a FIN
        // would leave a TIME_WAIT socket here per probe (60 s each: at 1 probe/s per server,
        // thousands of source ports the traffic to that server also needs). HAProxy ends its
        // checks the same way. A server that already closed loses nothing either way.
        crate::net::set_linger_zero(&p.stream);
        let interval = self.targets[i].check.interval;
        // Keep the cadence: the next probe is due one interval after this one started.
        self.targets[i].next_due = p.started + interval;
        self.conclude(i, p.started, verdict);
    }

    /// Records an active probe's verdict and passes on any edge.
    fn conclude(&mut self, i: usize, started: Instant, verdict: Verdict) {
        let t = &self.targets[i];
        let duration_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let (ok, detail) = match &verdict {
            Verdict::Pass => (true, "ok".to_string()),
            Verdict::Fail(why) | Verdict::WrongRole(why) => (false, why.clone()),
        };
        let decisive = matches!(verdict, Verdict::WrongRole(_));
        debug!("health: {} probe {}: {detail} ({duration_us}us)", t.label, if ok { "passed" } else { "failed" });
        let shared = &t.server;
        shared.checks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut last) = shared.last_check.lock() {
            *last = CheckOutcome { ok: Some(ok), detail: detail.clone(), duration_us };
        }
        self.record(i, ok, decisive, &detail);
    }

    fn passive_failure(&mut self, id: ServerId, reason: &str) {
        let Some(i) = self.index(id) else { return };
        if self.targets[i].admin == AdminState::Disabled {
            return;
        }
        self.record(i, false, false, &format!("connect failed in traffic: {reason}"));
    }

    /// One result; a `decisive` failure takes an up server down at once.
    fn record(&mut self, i: usize, ok: bool, decisive: bool, reason: &str) {
        let t = &mut self.targets[i];
        let (rise, fall, interval) = (t.check.rise, t.check.fall, t.check.interval);
        let was_up = t.health.is_up();
        let Some(up) = t.health.record(ok, rise, if decisive { 1 } else { fall }) else {
            return;
        };
        if was_up && !up && t.probe.is_none() {
            // Without a configured check, probing starts now to bring the server back.
            t.next_due = t.next_due.min(Instant::now() + interval);
        }
        let (id, label) = (t.server.id, t.label.clone());
        if up {
            warn!("server {label} is UP ({reason}; {rise} consecutive success(es))");
        } else {
            warn!("server {label} is DOWN ({reason})");
        }
        for w in &self.workers {
            w.send(WorkerMsg::Health { id, up });
        }
        // After the messages: whoever reads the new verdict here (the admin endpoint, a test)
        // can count on every worker having it queued, ahead of any connection accepted later.
        t.server.up.store(up, std::sync::atomic::Ordering::Relaxed);
    }

    fn set_admin(&mut self, id: ServerId, state: AdminState) {
        let Some(i) = self.index(id) else { return };
        self.targets[i].admin = state;
        if state == AdminState::Disabled {
            if let Some(mut p) = self.targets[i].probe.take() {
                let _ = self.poll.registry().deregister(&mut p.stream);
            }
        } else {
            self.targets[i].next_due = Instant::now();
        }
    }
}

/// The check a server's probes run: its service's, except that a database role applies only to
/// the regular servers; a `backup` passes in any role (a read service falls back to the
/// primary when no replica is left).
fn role_for(check: &Check, backup: bool) -> Check {
    let mut check = check.clone();
    match (&mut check.kind, backup) {
        (CheckKind::Redis { role, .. }, true) => *role = None,
        (CheckKind::Pgsql { role, .. }, true) => *role = None,
        _ => {}
    }
    check
}
