//! A worker: one thread, one `mio::Poll`, its own `SO_REUSEPORT` listeners and the sessions it
//! accepted, kept in a slab. It owns everything it touches: no locks on the data path. Health
//! verdicts, admin changes and shutdown arrive as [`WorkerMsg`]s on its channel, announced by
//! its `mio::Waker`.
//!
//! One turn of the loop: poll; handle every event of the batch (sessions are only marked
//! closed); free the slots closed so far; handle messages, accept on ready listeners, fire due
//! timers; free again. A slot is never reused while an event of the batch could still name it.
//!
//! Accepting lives in `accept.rs`, passing accepted connections to a less loaded worker in
//! `dispatch.rs`, connecting and retrying in `connect.rs`, the worker's view of each service's
//! servers in `pool.rs`; the loop, streaming, timers and closing here.

mod accept;
mod connect;
mod dispatch;
mod handshake;
mod moving;
mod pool;

use crate::config::ListenAddr;
use crate::health::{HealthLink, WorkerLink};
use crate::logs::{self, Cause};
use crate::metrics::WorkerCounters;
use crate::relay::Pools;
use crate::session::{Phase, Session, Step};
use crate::shared::ListenerChange;
use crate::shared::{Generation, ServerId, Stats, WorkerMsg};
use crate::timer::Timers;
use crate::token::{self, Kind, Side};
use crossbeam_channel::Receiver;
use log::{debug, info};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll};
use pool::{ServerView, ServicePool};
use slab::Slab;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Connections accepted from one listener per turn before other work gets a go.
const ACCEPT_BATCH: usize = 64;
/// After EMFILE/ENFILE/ENOBUFS, accepting pauses this long unless a session closes first.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// While at `max_conns`, how often to look whether another worker freed room.
const CAP_RECHECK: Duration = Duration::from_millis(20);

struct Listener {
    /// Its service's position in `pools` (and in the generation's services).
    pool: usize,
    /// The address as the conf spells it, and how many binds before it are spelled the same:
    /// what a reload names it by.
    conf: ListenAddr,
    ordinal: usize,
    socket: TcpListener,
    /// Pending connections may be waiting (edge-triggered: set by an event, cleared only by
    /// WouldBlock).
    ready: bool,
    /// Held back by a full connection cap since then (each pause is counted once).
    full_since: Option<Instant>,
    /// Its bind's `accept_proxy` in the running generation.
    accept_proxy: bool,
}

/// A failure a test asks for through `SHUNT_TEST_FAULT` (read once at start; never set in
/// production): `worker-panic-after=N` panics, `worker-error-after=N` makes `run` return an
/// error, when the worker accepts its Nth connection. It proves the failure policy: the whole
/// process goes, none of it lingers half-alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Panic(u64),
    Error(u64),
}

impl Fault {
    fn from_env() -> Option<Fault> {
        let spec = std::env::var("SHUNT_TEST_FAULT").ok()?;
        let (kind, n) = spec.split_once('=')?;
        let n = n.parse().ok()?;
        match kind {
            "worker-panic-after" => Some(Fault::Panic(n)),
            "worker-error-after" => Some(Fault::Error(n)),
            _ => None,
        }
    }
}

/// A listening socket a worker starts with.
pub struct WorkerListener {
    /// Its service's position in the generation.
    pub service: usize,
    /// The bind it serves: its spelling and the ordinal among binds spelled the same.
    pub conf: ListenAddr,
    pub ordinal: usize,
    pub socket: std::net::TcpListener,
}

/// Everything a worker needs before its thread starts.
pub struct WorkerSetup {
    pub index: usize,
    pub poll: Poll,
    pub rx: Receiver<WorkerMsg>,
    pub listeners: Vec<WorkerListener>,
    pub generation: Arc<Generation>,
    /// Pipes the worker may hold at once (its share of the descriptor budget).
    pub pipe_budget: usize,
    /// Every worker's channel and waker, this one's included (`peers[index]`).
    pub peers: Vec<WorkerLink>,
}

pub struct Worker {
    /// This worker's position: its counter set in every runtime object is `counters[index]`.
    index: usize,
    poll: Poll,
    /// The generation new sessions are made from (sessions keep what they started with).
    generation: Arc<Generation>,
    stats: Arc<Stats>,
    /// This worker's own gauges (it is their only writer).
    counters: Arc<WorkerCounters>,
    rx: Receiver<WorkerMsg>,
    health: HealthLink,
    listeners: Vec<Listener>,
    /// `pools[i]` serves the generation's service `i`.
    pools: Vec<ServicePool>,
    sessions: Slab<Session>,
    timers: Timers,
    relay: Pools,
    /// Slots closed during this turn, freed at its end.
    closed: Vec<usize>,
    /// Sessions that yielded with work left: (slot, session id), pumped again next turn.
    again: Vec<(usize, u64)>,
    next_id: u64,
    /// Accepting is paused (out of descriptors) until then, or until a session closes.
    accept_paused_until: Option<Instant>,
    /// A listener is ready but a connection cap holds it back.
    cap_blocked: bool,
    /// Set by `Drain`: listeners are gone; exit when no session is left or at this instant.
    drain_deadline: Option<Instant>,
    fault: Option<Fault>,
    /// An error that ends `run` (only the test fault sets one today).
    failure: Option<io::Error>,
    /// Where SNI passthrough peeks a ClientHello (one at a time, so one buffer per worker).
    hello: Box<[u8]>,
    /// Every worker's channel and waker, for passing connections on (`dispatch.rs`).
    peers: Vec<WorkerLink>,
    /// Workers passed a connection this turn and not woken yet.
    wake_pending: Vec<bool>,
    /// Scratch for the workers' loads, read at each dispatch decision.
    loads: Vec<u64>,
}

impl Worker {
    pub fn new(setup: WorkerSetup, stats: Arc<Stats>, health: HealthLink) -> io::Result<Worker> {
        let mut listeners = Vec::new();
        for (i, l) in setup.listeners.into_iter().enumerate() {
            let mut socket = TcpListener::from_std(l.socket);
            setup.poll.registry().register(&mut socket, token::listener(i), Interest::READABLE)?;
            let (pool, conf, ordinal) = (l.service, l.conf, l.ordinal);
            let accept_proxy = accepts_proxy(&setup.generation, conf, ordinal);
            apply_defer_accept(&socket, &setup.generation, conf, ordinal);
            listeners.push(Listener { pool, conf, ordinal, socket, ready: true, full_since: None, accept_proxy });
        }
        Ok(Worker {
            index: setup.index,
            poll: setup.poll,
            counters: Arc::clone(&stats.workers[setup.index]),
            pools: ServicePool::all(&setup.generation),
            generation: setup.generation,
            stats,
            rx: setup.rx,
            health,
            listeners,
            sessions: Slab::with_capacity(1024),
            timers: Timers::default(),
            relay: Pools::new(setup.pipe_budget),
            closed: Vec::new(),
            again: Vec::new(),
            next_id: 0,
            accept_paused_until: None,
            cap_blocked: false,
            drain_deadline: None,
            fault: Fault::from_env(),
            failure: None,
            hello: vec![0; crate::tls::hello::MAX_HELLO].into_boxed_slice(),
            wake_pending: vec![false; setup.peers.len()],
            loads: Vec::with_capacity(setup.peers.len()),
            peers: setup.peers,
        })
    }

    /// Runs until drained. Errors only if the poll itself fails.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        debug!("worker {} running with {} listener(s)", self.index, self.listeners.len());
        loop {
            let timeout = self.poll_timeout(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let now = Instant::now();
            for event in events.iter() {
                match token::decode(event.token()) {
                    Kind::Waker => {}
                    Kind::Listener(i) => {
                        if let Some(l) = self.listeners.get_mut(i) {
                            l.ready = true;
                        }
                    }
                    Kind::Session(slot, side) => {
                        let closed = event.is_read_closed() || event.is_error();
                        let readable = event.is_readable() || closed;
                        let writable = event.is_writable() || event.is_write_closed() || event.is_error();
                        if event.is_error() {
                            if let Some(s) = self.sessions.get_mut(slot) {
                                s.note_error(side);
                            }
                        }
                        self.on_session_event(slot, side, readable, writable, closed, now);
                    }
                }
            }
            // Every event of the batch is handled: slots closed by them can be reused now, and
            // their descriptors are free for the accepts below.
            self.reap();
            self.handle_messages(now);
            self.resume_yielded(now);
            self.accept_ready(now);
            self.wake_dispatched();
            if let Some(e) = self.failure.take() {
                return Err(e);
            }
            self.fire_timers(now);
            self.reap();
            self.counters.sessions.set(self.sessions.len() as u64);
            self.counters.timers.set(self.timers.len() as u64);
            self.counters.pipes.set(self.relay.pipes_held() as u64);
            if let Some(deadline) = self.drain_deadline {
                if self.sessions.is_empty() {
                    debug!("worker {}: drained", self.index);
                    return Ok(());
                }
                if now >= deadline {
                    self.kill_all(now);
                    return Ok(());
                }
            }
        }
    }

    fn reap(&mut self) {
        if self.closed.is_empty() {
            return;
        }
        for slot in self.closed.drain(..) {
            self.sessions.remove(slot);
        }
        self.publish_load();
    }

    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        if !self.again.is_empty() {
            return Some(Duration::ZERO);
        }
        let mut wake = self.timers.next();
        let mut consider = |t: Instant| wake = Some(wake.map_or(t, |w| w.min(t)));
        if self.listeners.iter().any(|l| l.ready) {
            match self.accept_paused_until {
                Some(t) => consider(t),
                None if self.cap_blocked => consider(now + CAP_RECHECK),
                None => consider(now),
            }
        }
        if let Some(d) = self.drain_deadline {
            consider(d);
        }
        wake.map(|w| w.saturating_duration_since(now))
    }

    fn handle_messages(&mut self, now: Instant) {
        while let Ok(msg) = self.rx.try_recv() {
            match msg {
                WorkerMsg::Health { id, up } => {
                    if let Some(s) = self.server_mut(id) {
                        s.up = up;
                    }
                    if !up {
                        self.close_on_down(id, now);
                    }
                }
                WorkerMsg::Admin { id, state } => {
                    if let Some(s) = self.server_mut(id) {
                        s.admin = state;
                    }
                }
                WorkerMsg::Weight { id, weight } => {
                    if let Some(s) = self.server_mut(id) {
                        s.weight = weight;
                    }
                }
                WorkerMsg::Drain { deadline } => self.start_drain(deadline, now),
                WorkerMsg::Reload { generation, listeners } => self.reload(generation, listeners),
                WorkerMsg::HandOver { deadline, sessions } => {
                    let moving = self.hand_over(deadline, now);
                    let _ = sessions.send(moving);
                }
                WorkerMsg::Adopt(moved) => self.adopt(moved, now),
                WorkerMsg::Dispatched(conn) => self.take_dispatched(conn, now),
            }
        }
    }

    /// `on_down close`: the server went down (by its probes, in traffic, or because its role
    /// changed), so its live sessions end now, reset both ways, rather than let an application
    /// go on writing to a demoted primary over an old connection.
    fn close_on_down(&mut self, id: ServerId, now: Instant) {
        let Some(pool) = self.pools.iter().position(|p| p.servers.iter().any(|v| v.rt.id == id)) else {
            return;
        };
        if !self.generation.config.services[pool].on_down_close {
            return;
        }
        let doomed: Vec<usize> = self
            .sessions
            .iter()
            .filter(|(_, s)| !s.closed && s.server.as_ref().is_some_and(|v| v.id == id))
            .map(|(slot, _)| slot)
            .collect();
        for slot in doomed {
            self.pools[pool].rt.counters[self.index].0.closed_on_down.add(1);
            self.close(slot, Cause::ServerDown, now);
        }
    }

    /// The position of `service`'s pool in the generation in force (none once a reload removed
    /// it): also its index in `generation.config.services`.
    fn pool_of(&self, service: &Arc<crate::shared::ServiceRuntime>) -> Option<usize> {
        self.pools.iter().position(|p| Arc::ptr_eq(&p.rt, service))
    }

    fn server_mut(&mut self, id: ServerId) -> Option<&mut ServerView> {
        self.pools.iter_mut().flat_map(|p| p.servers.iter_mut()).find(|v| v.rt.id == id)
    }

    /// Takes a reload: new sessions come from `generation` (live ones keep what they hold), and
    /// the listeners become those of `changes`: kept ones as they are (same socket, same
    /// backlog), new ones registered, the rest closed.
    fn reload(&mut self, generation: Arc<Generation>, changes: Vec<ListenerChange>) {
        self.pools = ServicePool::all(&generation);
        self.generation = generation;
        if self.drain_deadline.is_some() {
            return; // draining: listeners stay closed, new sockets close with `changes`
        }
        let mut old = std::mem::take(&mut self.listeners);
        for change in changes {
            // A bind may have several sockets here (inherited from an old process that had
            // more workers): every one is kept.
            let mut sockets: Vec<(TcpListener, bool)> = Vec::new();
            match change.new {
                Some(socket) => sockets.push((TcpListener::from_std(socket), true)),
                None => {
                    while let Some(k) = old.iter().position(|l| l.conf == change.conf && l.ordinal == change.ordinal) {
                        sockets.push((old.swap_remove(k).socket, false));
                    }
                }
            }
            for (mut socket, fresh) in sockets {
                let tok = token::listener(self.listeners.len());
                let registry = self.poll.registry();
                let registered = if fresh {
                    registry.register(&mut socket, tok, Interest::READABLE)
                } else {
                    registry.reregister(&mut socket, tok, Interest::READABLE)
                };
                apply_defer_accept(&socket, &self.generation, change.conf, change.ordinal);
                match registered {
                    // Ready until an accept says otherwise: a kept socket may hold a backlog.
                    Ok(()) => self.listeners.push(Listener {
                        pool: change.service,
                        conf: change.conf,
                        ordinal: change.ordinal,
                        socket,
                        ready: true,
                        full_since: None,
                        accept_proxy: accepts_proxy(&self.generation, change.conf, change.ordinal),
                    }),
                    Err(e) => {
                        logs::limited_warn("register", format_args!("reload: register listener {}: {e}", change.conf))
                    }
                }
            }
        }
        for mut l in old {
            let _ = self.poll.registry().deregister(&mut l.socket);
        }
    }

    /// Stops accepting at once: closing the listeners (rather than just ignoring them) lets
    /// the kernel refuse new connections instead of queueing them for nobody.
    fn start_drain(&mut self, deadline: Instant, now: Instant) {
        if self.drain_deadline.is_some() {
            return;
        }
        for mut l in self.listeners.drain(..) {
            let _ = self.poll.registry().deregister(&mut l.socket);
        }
        self.drain_deadline = Some(deadline);
        info!(
            "worker {}: draining {} live session(s) for up to {:.1}s",
            self.index,
            self.sessions.len(),
            deadline.saturating_duration_since(now).as_secs_f64()
        );
    }

    fn kill_all(&mut self, now: Instant) {
        let slots: Vec<usize> = self.sessions.iter().filter(|(_, s)| !s.closed).map(|(k, _)| k).collect();
        for slot in slots {
            self.close(slot, Cause::Killed, now);
        }
        self.closed.clear();
        self.sessions.clear();
    }

    // ---- streaming ----

    fn on_session_event(
        &mut self,
        slot: usize,
        side: Side,
        readable: bool,
        writable: bool,
        closed: bool,
        now: Instant,
    ) {
        let Some(session) = self.sessions.get_mut(slot) else {
            return;
        };
        if session.closed {
            return;
        }
        session.note(side, readable, writable, closed);
        match session.phase {
            Phase::Handshake { .. } if side == Side::Client => self.drive_handshake(slot, now),
            Phase::Handshake { .. } => {}
            Phase::Connecting { .. } if side == Side::Backend => self.check_connect(slot, now),
            // Client bytes wait in the client socket until a server is connected.
            Phase::Connecting { .. } => {}
            Phase::Streaming | Phase::Aborting { .. } => self.pump(slot, now),
        }
    }

    fn pump(&mut self, slot: usize, now: Instant) {
        let session = &mut self.sessions[slot];
        let (step, up, down) = session.pump(now, &mut self.relay);
        if let Some(server) = &session.server {
            let counters = &server.counters[self.index].0;
            if up > 0 {
                counters.bytes_up.add(up as u64);
            }
            if down > 0 {
                counters.bytes_down.add(down as u64);
            }
        }
        match step {
            Step::Close(cause) => self.close(slot, cause, now),
            Step::Continue => {
                if session.yielded() {
                    self.again.push((slot, session.id));
                }
                // Aborting looks at the survivor's acknowledged bytes on a timer of its own; a
                // flow waiting on its low-water mark has a rescue deadline.
                if matches!(session.phase, Phase::Aborting { .. }) || session.waiting_on_low_water() {
                    self.arm_timer(slot);
                }
            }
        }
    }

    /// Pumps the sessions that used up their budget last turn. The id check skips a slot
    /// that was closed and reused meanwhile.
    fn resume_yielded(&mut self, now: Instant) {
        let again = std::mem::take(&mut self.again);
        for (slot, id) in again {
            let live =
                |s: &Session| s.id == id && !s.closed && matches!(s.phase, Phase::Streaming | Phase::Aborting { .. });
            if self.sessions.get(slot).is_some_and(live) {
                self.pump(slot, now);
            }
        }
    }

    // ---- timers ----

    /// Sets the session's timer to its deadline if that is earlier than the one set. (A later
    /// deadline waits until the set one falls due: bytes moving push the idle deadline on
    /// every pump, and a heap update per pump would cost more than the rare early wake-up.)
    fn arm_timer(&mut self, slot: usize) {
        let session = &mut self.sessions[slot];
        let at = session.deadline();
        if session.timer_armed.is_none_or(|armed| at < armed) {
            session.timer_armed = Some(at);
            self.timers.set(slot, at);
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(slot) = self.timers.pop_due(now) {
            // Closing cancels a session's timer, so every entry names a live session.
            let session = &mut self.sessions[slot];
            session.timer_armed = None;
            if session.deadline() > now {
                self.arm_timer(slot);
                continue;
            }
            match session.phase {
                Phase::Handshake { .. } => self.handshake_timed_out(slot, now),
                Phase::Connecting { .. } => {
                    let reason = format!("no answer within {}ms", session.settings.timeouts.connect.as_millis());
                    self.connect_failed(slot, &reason, true, now);
                }
                Phase::Streaming if session.waiting_on_low_water() => {
                    session.rescue_low_water();
                    self.pump(slot, now);
                    // The popped entry was the session's only one: its idle deadline needs one.
                    if !self.sessions[slot].closed {
                        self.arm_timer(slot);
                    }
                }
                Phase::Streaming => self.close(slot, Cause::IdleTimeout, now),
                // Time to look at what the survivor's peer acknowledged (or to give up on it).
                Phase::Aborting { .. } => self.pump(slot, now),
            }
        }
    }

    // ---- closing ----

    /// Closes a session: closes its sockets (aborts as RST), returns its pooled channels and
    /// server slot, logs one line. The slab slot itself is freed at the end of the turn.
    fn close(&mut self, slot: usize, cause: Cause, now: Instant) {
        let session = &mut self.sessions[slot];
        if session.closed {
            return;
        }
        session.closed = true;
        // No deregister: closing a descriptor removes it from epoll (nothing dups ours), and
        // events already in this batch are ignored through `closed`. Two syscalls saved per
        // connection.
        session.close(cause, &mut self.relay);
        self.timers.cancel(slot);
        let server_name = match &session.server {
            Some(server) => {
                server.release();
                server.name.as_str()
            }
            None => "-",
        };
        self.stats.release_admission(&session.service);
        if let Some(hold) = session.source.take() {
            accept::release_source(&self.stats, &session.service, hold, now);
        }
        let duration = now.saturating_duration_since(session.started);
        session.service.counters[self.index].0.session_duration.observe(duration);
        let phase = match session.phase {
            Phase::Handshake { .. } => logs::Phase::Handshake,
            Phase::Connecting { .. } => logs::Phase::Connect,
            Phase::Streaming | Phase::Aborting { .. } => logs::Phase::Data,
        };
        let [a, b] = logs::term_code(cause, phase);
        let mut tls = session.tls.as_ref().map_or(String::new(), |t| logs::tls_fields(&t.info(), t.truncated()));
        if let Some(sni) = &session.peeked_sni {
            tls = format!(" sni={sni}");
        }
        // A routed session is logged under the service whose server it used, and where it came in.
        let via = session.route.as_ref().map_or(String::new(), |_| format!(" via={}", session.service.name));
        info!(
            "{} {}/{} {a}{b} up={} down={} connect_ms={} duration_ms={}{via}{tls}",
            session.client_addr,
            session.route.as_ref().unwrap_or(&session.service).name,
            server_name,
            session.up.delivered,
            session.down.delivered,
            session.connect_time.map_or(-1, |d| d.as_millis() as i64),
            duration.as_millis(),
        );
        session.backend = None;
        self.closed.push(slot);
        if cause != Cause::Resource {
            // Descriptors were freed: paused accepts may go on.
            self.accept_paused_until = None;
        }
    }
}

/// How long `defer_accept` lets a client that says nothing wait before the kernel hands it over
/// anyway (a retransmitted SYN-ACK answered): one second, as nginx's `deferred`.
const DEFER_ACCEPT_SECS: u32 = 1;

/// `TCP_DEFER_ACCEPT` on a listener as its bind says now, set or cleared at start and at every
/// reload, so a kept socket follows the conf. Failing costs only the saved wake-up: warned.
fn apply_defer_accept(socket: &TcpListener, generation: &Generation, conf: ListenAddr, ordinal: usize) {
    let on = generation.config.bind_at(conf, ordinal).is_some_and(|b| b.defer_accept);
    let seconds = if on { DEFER_ACCEPT_SECS } else { 0 };
    if let Err(e) = crate::sys::set_defer_accept(std::os::fd::AsFd::as_fd(socket), seconds) {
        logs::limited_warn("defer_accept", format_args!("listener {conf}: TCP_DEFER_ACCEPT: {e}"));
    }
}

/// Whether the bind a listener serves (by its spelling and ordinal) has `accept_proxy` now.
fn accepts_proxy(generation: &Generation, conf: ListenAddr, ordinal: usize) -> bool {
    generation.config.bind_at(conf, ordinal).is_some_and(|b| b.accept_proxy)
}
