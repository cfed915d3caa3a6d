//! One proxied connection as an explicit state machine: a client socket, at most one backend
//! socket, and two [`Flow`]s (client→server "up", server→client "down").
//!
//! The session never touches the poll registry, the balancer or the clock: the worker feeds
//! it readiness and `now`, and acts on the [`Step`] it returns. Phases:
//! `Connecting` (a backend connect is in flight; client bytes wait in the client's socket, so a
//! retry on another server is always safe) → `Streaming` → closed by the worker; or, when a
//! peer resets, `Streaming` → `Aborting` (its last bytes reach the other peer, then that peer
//! gets the reset) → closed.

use crate::config::{Service, Splice, Timeouts};
use crate::limits::PerSource;
use crate::logs::Cause;
use crate::relay::{End, Flow, FlowError, FlowState, Pools, Ready};
use crate::shared::{ServerId, ServerRuntime, ServiceRuntime};
use crate::sys;
use crate::tls::{HandshakeError, TlsEnd};
use crate::token::Side;
use mio::net::TcpStream;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a flow waits on its receive low-water mark with nothing moving before the mark
/// comes off: the worst delay the mark adds to bytes left below it (a paused stream's, or a
/// message's tail: once for a flow of requests and responses, see `relay::LowWater`).
const LOW_WATER_RESCUE: Duration = Duration::from_millis(1);

/// First wait between two looks at the survivor's unacknowledged bytes in `Aborting`; it
/// doubles up to `ACK_POLL_MAX` while the peer takes nothing, and starts again on progress.
const ACK_POLL_MIN: Duration = Duration::from_millis(2);
const ACK_POLL_MAX: Duration = Duration::from_millis(250);

/// What a session keeps of its service's settings when it starts: a reload's new values reach
/// only new sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub splice: Splice,
    pub timeouts: Timeouts,
    /// Failed connects to retry on other servers.
    pub retries: u32,
}

impl Settings {
    pub fn of(svc: &Service) -> Settings {
        Settings { splice: svc.splice, timeouts: svc.timeouts, retries: svc.retries }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Before any server: the client's PROXY header (`accept_proxy`), its TLS handshake
    /// (terminated TLS) or its ClientHello (`route sni` passthrough), since `since` (the
    /// session's start); no server is connected before they are done, so a client that never
    /// finishes costs none.
    Handshake { since: Instant },
    /// A connect to `Session::server` is in flight since `since`.
    Connecting { since: Instant },
    /// Connected: bytes flow both ways.
    Streaming,
    /// `failed` reset (or failed): what it sent before still goes to the other peer, the
    /// survivor; once the survivor's kernel acknowledged all of it, the survivor gets a reset,
    /// as it would have without a proxy in between (a FIN would pass a cut-off stream for a
    /// complete one). Nothing more is read from the survivor.
    Aborting { failed: Side },
}

/// A session's place in the per-source tables: its source's key, and the limits it was
/// admitted under in the global table and in its service's (`None`: not tracked there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceHold {
    pub key: u128,
    pub global: Option<PerSource>,
    pub service: Option<PerSource>,
}

/// What the worker must do after feeding the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Continue,
    /// Close both sides (see [`Session::close`]).
    Close(Cause),
}

pub struct Session {
    /// Unique per worker over its lifetime; guards deferred work against slot reuse.
    pub id: u64,
    /// Its service's runtime (counters, the connection slot the session holds), even after a
    /// reload removed the service.
    pub service: Arc<ServiceRuntime>,
    pub client: TcpStream,
    /// The TLS endpoint over `client`, for a TLS service: the flows read and write plaintext
    /// through it.
    pub tls: Option<Box<TlsEnd>>,
    /// The TLS endpoint over `backend`, for a server reached with `tls`: set once its TCP
    /// connect completes; the session streams once its handshake is done too.
    pub backend_tls: Option<Box<TlsEnd>>,
    /// While its TCP connect is under way: how to speak TLS to the server once it completes.
    pub server_tls: Option<Arc<crate::tls::BackendTls>>,
    /// The service whose servers this session uses when a `route sni` line picked one (its own
    /// `service` keeps the connection slot and the client-side counters).
    pub route: Option<Arc<ServiceRuntime>>,
    /// The server name of a ClientHello peeked for SNI passthrough (for the log).
    pub peeked_sni: Option<String>,
    /// An `accept_proxy` client whose PROXY header has not been read yet (the session's
    /// handshake phase starts with it).
    pub awaiting_proxy: bool,
    /// The address the client connected to, as its PROXY header said (the header shunt sends
    /// on carries it in place of the accepting socket's own).
    pub proxied_local: Option<SocketAddr>,
    /// The per-source tables this session holds a connection in (released when it closes).
    pub source: Option<SourceHold>,
    /// Canonical (IPv4-mapped addresses unmapped).
    pub client_addr: SocketAddr,
    pub backend: Option<TcpStream>,
    /// The server `backend` belongs to (holding one of its `active` slots) while `Some`.
    pub server: Option<Arc<ServerRuntime>>,
    /// Servers that already failed this session's connects; never picked again for it.
    pub tried: Vec<ServerId>,
    pub phase: Phase,
    client_ready: Ready,
    backend_ready: Ready,
    pub up: Flow,
    pub down: Flow,
    /// Its service's settings when the session started.
    pub settings: Settings,
    pub started: Instant,
    /// Last time a byte moved either way, or, in `Aborting`, the survivor's peer acknowledged
    /// more: the idle and fin timeouts run from here.
    pub last_active: Instant,
    /// Time from the start of the successful connect to its completion.
    pub connect_time: Option<Duration>,
    /// The deadline currently set in the worker's timers for this session: never later than
    /// the real one (`deadline()`), which only moves later while bytes flow.
    pub timer_armed: Option<Instant>,
    /// In `Aborting`, once every byte is written: the survivor's unacknowledged bytes at the
    /// last look, and when to look again.
    unacked: Option<(usize, Instant)>,
    /// The wait before the next look at `unacked` (doubles while nothing is acknowledged).
    ack_poll: Duration,
    /// The worker closed it during this event batch; its slot is freed after the batch so
    /// events still queued for it cannot reach a new session in the same slot.
    pub closed: bool,
}

impl Session {
    pub fn new(
        id: u64,
        service: Arc<ServiceRuntime>,
        client: TcpStream,
        client_addr: SocketAddr,
        settings: Settings,
        now: Instant,
    ) -> Session {
        Session {
            id,
            service,
            client,
            tls: None,
            backend_tls: None,
            server_tls: None,
            route: None,
            peeked_sni: None,
            awaiting_proxy: false,
            proxied_local: None,
            source: None,
            client_addr,
            backend: None,
            server: None,
            tried: Vec::new(),
            phase: Phase::Connecting { since: now },
            // A fresh socket may already hold bytes: assume readable until a read says otherwise.
            client_ready: Ready { readable: true, writable: true, ..Ready::default() },
            backend_ready: Ready::default(),
            up: Flow::default(),
            down: Flow::default(),
            settings,
            started: now,
            last_active: now,
            connect_time: None,
            timer_armed: None,
            unacked: None,
            ack_poll: ACK_POLL_MIN,
            closed: false,
        }
    }

    /// Records what epoll reported. Closed and error bits only mean "try the call": the result
    /// of the read or write is the truth.
    pub fn note(&mut self, side: Side, readable: bool, writable: bool, closed: bool) {
        let r = match side {
            Side::Client => &mut self.client_ready,
            Side::Backend => &mut self.backend_ready,
        };
        r.readable |= readable;
        r.writable |= writable;
        r.closed |= closed;
    }

    /// Makes a new session a TLS one: the handshake comes first.
    pub fn with_tls(mut self, tls: TlsEnd) -> Session {
        self.tls = Some(Box::new(tls));
        self.phase = Phase::Handshake { since: self.started };
        self
    }

    /// Makes a new session wait for the client's ClientHello (SNI passthrough routing): its
    /// phase and deadline are the handshake's.
    pub fn awaiting_hello(mut self) -> Session {
        self.phase = Phase::Handshake { since: self.started };
        self
    }

    /// Makes a new session read the client's PROXY header first (an `accept_proxy` bind): its
    /// phase and deadline are the handshake's, which may go on with TLS or a ClientHello after.
    pub fn awaiting_proxy_header(mut self) -> Session {
        self.awaiting_proxy = true;
        self.phase = Phase::Handshake { since: self.started };
        self
    }

    /// epoll reported the client's FIN or an error: bytes still missing will not come.
    pub fn client_closed(&self) -> bool {
        self.client_ready.closed
    }

    /// Moves the TLS handshake with the server on (its TCP connect is complete): `Ok(true)` once
    /// it is done.
    pub fn backend_handshake(&mut self) -> Result<bool, HandshakeError> {
        match (self.backend_tls.as_deref_mut(), self.backend.as_ref()) {
            (Some(tls), Some(backend)) => tls.handshake(backend.as_fd()),
            _ => Ok(true),
        }
    }

    /// Moves the TLS handshake on: `Ok(true)` once it is complete (the worker connects a
    /// server then).
    pub fn handshake(&mut self) -> Result<bool, HandshakeError> {
        match self.tls.as_deref_mut() {
            Some(tls) => tls.handshake(self.client.as_fd()),
            None => Ok(true),
        }
    }

    /// epoll reported an error on `side`'s socket: its peer is gone. Noted, so the session
    /// aborts at once instead of waiting for a call on that socket to fail, which may not come
    /// while the other peer reads nothing (no room to read into, nothing to write).
    pub fn note_error(&mut self, side: Side) {
        match side {
            Side::Client => self.client_ready.error = true,
            Side::Backend => self.backend_ready.error = true,
        }
    }

    /// A new connect attempt started on `backend` towards `server`.
    pub fn connecting(&mut self, backend: TcpStream, server: Arc<ServerRuntime>, now: Instant) {
        self.backend = Some(backend);
        self.backend_tls = None;
        self.server = Some(server);
        self.backend_ready = Ready::default();
        self.phase = Phase::Connecting { since: now };
    }

    /// Whether the backend's events since this connect attempt began show it connected without
    /// asking the kernel: writable, with neither a FIN nor an error. (Linux reports a connecting
    /// TCP socket writable only once connected, and a failed one with EPOLLERR as well.)
    pub fn backend_seen_connected(&self) -> bool {
        let r = &self.backend_ready;
        r.writable && !r.closed && !r.error
    }

    /// The backend connect completed.
    pub fn connected(&mut self, now: Instant) {
        if let Phase::Connecting { since } = self.phase {
            self.connect_time = Some(now.saturating_duration_since(since));
        }
        self.phase = Phase::Streaming;
        self.backend_ready = Ready { readable: true, writable: true, ..self.backend_ready };
        // What the client sent with or after its handshake may already sit decrypted in rustls,
        // where no event will announce it.
        if self.tls.is_some() {
            self.client_ready.readable = true;
        }
        self.last_active = now;
    }

    /// When the session must next be looked at: the connect timeout while connecting; the idle
    /// timeout while streaming, or the (shorter) fin timeout once one direction is finished;
    /// while aborting, the fin timeout, or sooner the next look at what the survivor's peer
    /// acknowledged.
    pub fn deadline(&self) -> Instant {
        let t = &self.settings.timeouts;
        match self.phase {
            Phase::Handshake { since } => since + t.handshake,
            Phase::Connecting { since } => since + t.connect,
            Phase::Streaming if self.waiting_on_low_water() => self.last_active + LOW_WATER_RESCUE,
            Phase::Streaming if self.up.done() || self.down.done() => self.last_active + t.idle.min(t.fin),
            Phase::Streaming => self.last_active + t.idle,
            Phase::Aborting { .. } => {
                let fin = self.last_active + t.fin;
                self.unacked.map_or(fin, |(_, next_look)| next_look.min(fin))
            }
        }
    }

    /// A flow's source has a receive low-water mark and nothing above it: the session's
    /// deadline is then the mark's rescue (see `relay::LowWater`).
    pub fn waiting_on_low_water(&self) -> bool {
        self.up.waiting_on_low_water(&self.client_ready) || self.down.waiting_on_low_water(&self.backend_ready)
    }

    /// The rescue deadline passed with a flow still waiting on its low-water mark: the mark
    /// comes off, and the next pump reads whatever sits below it.
    pub fn rescue_low_water(&mut self) {
        if self.up.waiting_on_low_water(&self.client_ready) {
            self.up.drop_low_water(self.client.as_fd(), &mut self.client_ready);
        }
        if let Some(backend) = &self.backend {
            if self.down.waiting_on_low_water(&self.backend_ready) {
                self.down.drop_low_water(backend.as_fd(), &mut self.backend_ready);
            }
        }
    }

    /// Moves bytes both ways as far as readiness allows. Returns the step and the bytes
    /// written (up, to the server; down, to the client) by this call, including bytes written
    /// just before a failure.
    pub fn pump(&mut self, now: Instant, pools: &mut Pools) -> (Step, usize, usize) {
        let (up_before, down_before) = (self.up.delivered, self.down.delivered);
        let step = match self.phase {
            Phase::Handshake { .. } | Phase::Connecting { .. } => Step::Continue,
            Phase::Streaming => self.stream(now, pools),
            Phase::Aborting { failed } => self.abort(failed, now, pools),
        };
        let up = (self.up.delivered - up_before) as usize;
        let down = (self.down.delivered - down_before) as usize;
        if up + down > 0 {
            self.last_active = now;
        }
        (step, up, down)
    }

    fn stream(&mut self, now: Instant, pools: &mut Pools) -> Step {
        let backend = self.backend.as_ref().expect("invariant: streaming sessions have a backend");
        let (c, b) = (self.client.as_fd(), backend.as_fd());
        let reported = match (self.client_ready.error, self.backend_ready.error) {
            (true, _) => Some(Side::Client),
            (_, true) => Some(Side::Backend),
            _ => None,
        };
        if let Some(failed) = reported {
            self.start_abort(failed, pools);
            return self.abort(failed, now, pools);
        }
        let last = self.down.done();
        let failed = match self.up.pump(
            end(&mut self.tls, c),
            end(&mut self.backend_tls, b),
            &mut self.client_ready,
            &mut self.backend_ready,
            pools,
            self.settings.splice,
            last,
        ) {
            Ok(n) => {
                if n > 0 {
                    self.down.heard_back();
                }
                None
            }
            Err(FlowError::Source) => Some(Side::Client),
            Err(FlowError::Dest) => Some(Side::Backend),
        };
        let failed = failed.or_else(|| {
            let last = self.up.done();
            match self.down.pump(
                end(&mut self.backend_tls, b),
                end(&mut self.tls, c),
                &mut self.backend_ready,
                &mut self.client_ready,
                pools,
                self.settings.splice,
                last,
            ) {
                Ok(n) => {
                    if n > 0 {
                        self.up.heard_back();
                    }
                    None
                }
                Err(FlowError::Source) => Some(Side::Backend),
                Err(FlowError::Dest) => Some(Side::Client),
            }
        });
        match failed {
            Some(failed) => {
                self.start_abort(failed, pools);
                self.abort(failed, now, pools)
            }
            // Both done; a TLS client first gets the records still queued (the close_notify
            // among them), or they would be lost with the socket.
            None if self.up.done() && self.down.done() => {
                let flushed = self.tls.as_deref_mut().is_none_or(|t| t.flush(c).is_ok())
                    && self.backend_tls.as_deref_mut().is_none_or(|t| t.flush(b).is_ok());
                if flushed {
                    Step::Close(Cause::Normal)
                } else {
                    Step::Continue
                }
            }
            None => Step::Continue,
        }
    }

    /// `failed` is gone: the flow into it is dropped, and the flow out of it goes on only to
    /// deliver what it sent before failing (the EOF-flush rule), with no FIN at its end.
    fn start_abort(&mut self, failed: Side, pools: &mut Pools) {
        self.phase = Phase::Aborting { failed };
        let (into_failed, out_of_failed, failed_ready) = match failed {
            Side::Client => (&mut self.down, &mut self.up, &mut self.client_ready),
            Side::Backend => (&mut self.up, &mut self.down, &mut self.backend_ready),
        };
        into_failed.abandon(pools);
        out_of_failed.dst_shut = true;
        // Bytes that arrived before the reset still sit in its receive queue, and a read
        // returns them before it reports the reset (tcp(7)): read until that error or EOF.
        failed_ready.readable = true;
        failed_ready.closed = true;
    }

    /// One step of `Aborting`: deliver the failed side's last bytes, then wait until the
    /// survivor's peer acknowledged them, so the reset that follows discards nothing.
    fn abort(&mut self, failed: Side, now: Instant, pools: &mut Pools) -> Step {
        let cause = match failed {
            Side::Client => Cause::ClientAbort,
            Side::Backend => Cause::ServerAbort,
        };
        let backend = self.backend.as_ref().expect("invariant: aborting sessions have a backend");
        let (c, b) = (self.client.as_fd(), backend.as_fd());
        let survivor = match failed {
            Side::Client => b,
            Side::Backend => c,
        };
        // Two rounds at most: the reset ends the reading, then what it left pending is drained.
        for _ in 0..2 {
            let tls_queued = self.tls_queued_for(failed);
            let (client, backend) = (end(&mut self.tls, c), end(&mut self.backend_tls, b));
            let (flow, src, dst, src_ready, dst_ready) = match failed {
                Side::Client => (&mut self.up, client, backend, &mut self.client_ready, &mut self.backend_ready),
                Side::Backend => (&mut self.down, backend, client, &mut self.backend_ready, &mut self.client_ready),
            };
            if flow.src_eof && flow.pending() == 0 && !tls_queued {
                break;
            }
            match flow.pump(src, dst, src_ready, dst_ready, pools, self.settings.splice, true) {
                Ok(_) => break,
                // The reset itself, reported once the queued bytes are read: the end of input.
                Err(FlowError::Source) => flow.src_eof = true,
                // The survivor is gone too: nothing left to deliver to.
                Err(FlowError::Dest) => return Step::Close(cause),
            }
        }
        let flow = match failed {
            Side::Client => &self.up,
            Side::Backend => &self.down,
        };
        if !flow.src_eof || flow.pending() > 0 || self.tls_queued_for(failed) {
            // Stuck behind a peer that takes nothing: give up at the fin timeout, as below.
            if now >= self.last_active + self.settings.timeouts.fin {
                return Step::Close(cause);
            }
            return Step::Continue;
        }
        // Every byte is in the survivor's send queue. Look at what its peer acknowledged.
        let unacked = sys::unacked(survivor).unwrap_or(0);
        if unacked == 0 {
            return Step::Close(cause);
        }
        let progress = self.unacked.is_none_or(|(before, _)| unacked < before);
        if progress {
            self.last_active = now;
            self.ack_poll = ACK_POLL_MIN;
        } else {
            self.ack_poll = (self.ack_poll * 2).min(ACK_POLL_MAX);
        }
        if now >= self.last_active + self.settings.timeouts.fin {
            // The peer stopped taking bytes: what it has not acknowledged is lost with the
            // reset, and `close` takes it off the delivered count.
            return Step::Close(cause);
        }
        self.unacked = Some((unacked, now + self.ack_poll));
        Step::Continue
    }

    /// While aborting for `failed`: the survivor still has TLS records to receive, encrypted
    /// from plaintext the flow already counts as delivered.
    fn tls_queued_for(&self, failed: Side) -> bool {
        let survivor = match failed {
            Side::Backend => &self.tls,
            Side::Client => &self.backend_tls,
        };
        survivor.as_ref().is_some_and(|t| t.wants_write())
    }

    /// A flow stopped on its per-turn budget with work left (see `Flow::yielded`).
    pub fn yielded(&self) -> bool {
        self.up.yielded || self.down.yielded
    }

    /// Ends the session for `cause`: the sockets that must see a reset get `SO_LINGER` 0 (an
    /// abort is passed on as an abort; refusals and kills leave no TIME_WAIT here), the bytes
    /// such a reset throws away are taken off what the flows count as delivered, and pooled
    /// channels go back. The sockets themselves close when the session is dropped.
    pub fn close(&mut self, cause: Cause, pools: &mut Pools) {
        let (reset_client, reset_backend) = match cause {
            // A client that never finished its handshake leaves no TIME_WAIT here.
            Cause::IdleTimeout if matches!(self.phase, Phase::Handshake { .. }) => (true, false),
            // A broken PROXY header gets no answer but a reset (TLS has not started).
            Cause::BadHandshake if self.awaiting_proxy => (true, false),
            Cause::ClientAbort => (false, true),
            Cause::ServerAbort | Cause::NoServer | Cause::Resource | Cause::ConnectTimeout | Cause::Denied => {
                (true, false)
            }
            Cause::Killed | Cause::ServerDown => (true, true),
            // A failed handshake ends with rustls' alert, then a FIN.
            Cause::Normal | Cause::IdleTimeout | Cause::BadHandshake => (false, false),
        };
        if reset_client {
            self.down.delivered -= reset(&self.client).min(self.down.delivered);
        }
        if let Some(backend) = self.backend.as_ref().filter(|_| reset_backend) {
            self.up.delivered -= reset(backend).min(self.up.delivered);
        }
        self.up.abandon(pools);
        self.down.abandon(pools);
    }
}

/// The flow endpoint over `fd`: through its TLS endpoint when it has one.
fn end<'a>(tls: &'a mut Option<Box<TlsEnd>>, fd: BorrowedFd<'a>) -> End<'a> {
    match tls.as_deref_mut() {
        Some(t) => End::Tls(t, fd),
        None => End::Sock(fd),
    }
}

/// What a moving session needs besides its descriptors and bytes in flight: its identity and
/// its clock. Times are ages, since an `Instant` means nothing in another process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovedMeta {
    pub client_addr: SocketAddr,
    pub service: String,
    pub server: String,
    pub server_addr: SocketAddr,
    /// Since it started.
    pub age: Duration,
    /// Since a byte last moved.
    pub idle: Duration,
    pub connect_time: Option<Duration>,
    pub settings: Settings,
}

/// A session as it moves to another process in a binary upgrade: both sockets, the bytes in
/// flight (see `FlowState`), and what it needs to go on where it stopped.
#[derive(Debug)]
pub struct Moving {
    pub client: std::net::TcpStream,
    pub backend: std::net::TcpStream,
    pub meta: MovedMeta,
    pub up: FlowState,
    pub down: FlowState,
}

impl Session {
    /// Only a plain streaming session moves; one that is connecting or aborting finishes where
    /// it is, and so does a TLS one (rustls' session keys cannot be handed to another process)
    /// and a routed one (its server is another service's, which the move does not carry).
    pub fn can_move(&self) -> bool {
        self.phase == Phase::Streaming
            && !self.closed
            && self.backend.is_some()
            && self.tls.is_none()
            && self.backend_tls.is_none()
            && self.route.is_none()
    }

    /// Takes a streaming session apart to move it. The caller has deregistered its sockets and
    /// given back its connection slots; nothing is closed.
    pub fn export(mut self, now: Instant, pools: &mut Pools) -> Moving {
        let backend = self.backend.take().expect("invariant: streaming sessions have a backend");
        let server = self.server.take().expect("invariant: streaming sessions have a server");
        let meta = MovedMeta {
            client_addr: self.client_addr,
            service: self.service.name.clone(),
            server: server.name.clone(),
            server_addr: server.addr,
            age: now.saturating_duration_since(self.started),
            idle: now.saturating_duration_since(self.last_active),
            connect_time: self.connect_time,
            settings: self.settings,
        };
        Moving {
            client: self.client.into(),
            backend: backend.into(),
            meta,
            up: self.up.export(pools),
            down: self.down.export(pools),
        }
    }

    /// A session that moved in, streaming again under `service` and `server` (whose slots the
    /// caller took). Every readiness flag starts set: whatever arrived during the move is
    /// read, and a socket with nothing says so with WouldBlock.
    pub fn import(
        m: Moving,
        id: u64,
        service: Arc<ServiceRuntime>,
        server: Arc<ServerRuntime>,
        now: Instant,
        pools: &mut Pools,
    ) -> std::io::Result<Session> {
        m.client.set_nonblocking(true)?;
        m.backend.set_nonblocking(true)?;
        // A low-water mark the old process set would hold back bytes this one is not waiting
        // for: every flow starts without one.
        sys::set_rcvlowat(m.client.as_fd(), 1)?;
        sys::set_rcvlowat(m.backend.as_fd(), 1)?;
        let meta = &m.meta;
        let mut session =
            Session::new(id, service, TcpStream::from_std(m.client), meta.client_addr, meta.settings, now);
        session.backend = Some(TcpStream::from_std(m.backend));
        session.server = Some(server);
        session.phase = Phase::Streaming;
        session.client_ready = Ready { readable: true, writable: true, ..Ready::default() };
        session.backend_ready = Ready { readable: true, writable: true, ..Ready::default() };
        session.started = now.checked_sub(meta.age).unwrap_or(now);
        session.last_active = now.checked_sub(meta.idle).unwrap_or(now);
        session.connect_time = meta.connect_time;
        session.up = Flow::import(m.up, pools)?;
        session.down = match Flow::import(m.down, pools) {
            Ok(flow) => flow,
            Err(e) => {
                session.up.abandon(pools);
                return Err(e);
            }
        };
        Ok(session)
    }
}

/// Arms a reset for `socket`'s close; returns the bytes it will discard (sent, not yet
/// acknowledged by the peer).
fn reset(socket: &TcpStream) -> u64 {
    let discarded = sys::unacked(socket.as_fd()).unwrap_or(0) as u64;
    let _ = socket2::SockRef::from(socket).set_linger(Some(Duration::ZERO));
    discarded
}

#[cfg(test)]
mod tests;
