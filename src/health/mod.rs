//! The health thread: the single writer of every server's health.
//!
//! It runs every active probe concurrently on its own `mio::Poll` (one black-holed server only
//! costs its own probe's timeout), folds in the failed connects that workers report (passive
//! checks), applies rise/fall hysteresis, and sends each up/down edge to every worker over its
//! crossbeam channel followed by a wake of that worker's `mio::Waker`.

mod hysteresis;
pub mod probe;

pub use hysteresis::Hysteresis;

use crate::config::{CheckKind, Config};
use crate::shared::{AdminState, CheckOutcome, HealthMsg, ServerId, Stats, WorkerMsg};
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
    id: ServerId,
    /// Where probes go (the server's address, or its host with the check's `port`).
    addr: SocketAddr,
    label: String,
    health: Hysteresis,
    admin: AdminState,
    next_due: Instant,
    probe: Option<Probe>,
}

pub struct HealthThread {
    config: Arc<Config>,
    stats: Arc<Stats>,
    workers: Vec<WorkerLink>,
    rx: Receiver<HealthMsg>,
    poll: Poll,
    targets: Vec<Target>,
}

/// Creates the health thread's poll and link; `run` it on its own thread once the workers exist.
pub fn prepare(config: Arc<Config>, stats: Arc<Stats>) -> io::Result<(HealthThread, HealthLink)> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let (tx, rx) = crossbeam_channel::unbounded();
    let now = Instant::now();
    let mut targets = Vec::new();
    for (si, svc) in config.services.iter().enumerate() {
        for (vi, srv) in svc.servers.iter().enumerate() {
            let id = ServerId { service: si, server: vi };
            let addr = SocketAddr::new(srv.addr.ip(), svc.check.port.unwrap_or(srv.addr.port()));
            targets.push(Target {
                id,
                addr,
                label: format!("{}/{}", svc.name, srv.name),
                health: Hysteresis::default(),
                admin: stats.server(id).admin(),
                next_due: now,
                probe: None,
            });
        }
    }
    let thread = HealthThread { config, stats, workers: Vec::new(), rx, poll, targets };
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
                }
            }
        }
    }

    fn index(&self, id: ServerId) -> Option<usize> {
        self.targets.iter().position(|t| t.id == id)
    }

    /// Probes run while a check is configured, or, without one, only to bring back a server
    /// that passive checks took down. Disabled servers are never probed.
    fn wants_probe(&self, t: &Target) -> bool {
        let kind = &self.config.services[t.id.service].check.kind;
        t.admin != AdminState::Disabled && (*kind != CheckKind::None || !t.health.is_up())
    }

    fn start_due_probes(&mut self, now: Instant) {
        for i in 0..self.targets.len() {
            let t = &self.targets[i];
            if t.probe.is_some() || now < t.next_due || !self.wants_probe(t) {
                continue;
            }
            let check = &self.config.services[t.id.service].check;
            let kind = check.kind.clone();
            let deadline = now + check.timeout;
            let interval = check.interval;
            match Probe::start(t.addr, &kind, now, deadline) {
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
                let timeout = self.config.services[self.targets[i].id.service].check.timeout;
                self.finish_probe(i, Verdict::Fail(format!("timeout after {}ms", timeout.as_millis())));
            }
        }
    }

    fn next_wakeup(&self) -> Option<Instant> {
        self.targets
            .iter()
            .filter_map(|t| match &t.probe {
                Some(p) => Some(p.deadline),
                None if self.wants_probe(t) => Some(t.next_due),
                None => None,
            })
            .min()
    }

    fn advance_probe(&mut self, i: usize) {
        let Some(t) = self.targets.get_mut(i) else {
            return;
        };
        let Some(p) = t.probe.as_mut() else { return };
        let kind = &self.config.services[t.id.service].check.kind;
        if let Some(verdict) = p.advance(kind) {
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
        let interval = self.config.services[self.targets[i].id.service].check.interval;
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
            Verdict::Fail(why) => (false, why.clone()),
        };
        debug!("health: {} probe {}: {detail} ({duration_us}us)", t.label, if ok { "passed" } else { "failed" });
        let shared = self.stats.server(t.id);
        shared.checks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut last) = shared.last_check.lock() {
            *last = CheckOutcome { ok: Some(ok), detail: detail.clone(), duration_us };
        }
        self.record(i, ok, &detail);
    }

    fn passive_failure(&mut self, id: ServerId, reason: &str) {
        let Some(i) = self.index(id) else { return };
        if self.targets[i].admin == AdminState::Disabled {
            return;
        }
        self.record(i, false, &format!("connect failed in traffic: {reason}"));
    }

    fn record(&mut self, i: usize, ok: bool, reason: &str) {
        let check = &self.config.services[self.targets[i].id.service].check;
        let (rise, fall, interval) = (check.rise, check.fall, check.interval);
        let t = &mut self.targets[i];
        let was_up = t.health.is_up();
        let Some(up) = t.health.record(ok, rise, fall) else {
            return;
        };
        if was_up && !up && t.probe.is_none() {
            // Without a configured check, probing starts now to bring the server back.
            t.next_due = t.next_due.min(Instant::now() + interval);
        }
        let (id, label) = (t.id, t.label.clone());
        if up {
            warn!("server {label} is UP ({reason}; {rise} consecutive success(es))");
        } else {
            warn!("server {label} is DOWN ({reason})");
        }
        self.stats.server(id).up.store(up, std::sync::atomic::Ordering::Relaxed);
        for w in &self.workers {
            w.send(WorkerMsg::Health { id, up });
        }
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
