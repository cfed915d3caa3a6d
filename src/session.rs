//! One proxied connection as an explicit state machine: a client socket, at most one backend
//! socket, and two [`Flow`]s (client→server "up", server→client "down").
//!
//! The session never touches the poll registry, the balancer or the clock: the worker feeds
//! it readiness and `now`, and acts on the [`Step`] it returns. Phases:
//! `Connecting` (a backend connect is in flight; client bytes wait in the client's socket, so a
//! retry on another server is always safe) → `Streaming` → closed by the worker.

use crate::config::Splice;
use crate::logs::Cause;
use crate::relay::{Flow, FlowError, Pools, Ready};
use crate::token::Side;
use mio::net::TcpStream;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// A connect to `server` is in flight since `since`.
    Connecting { since: Instant },
    /// Connected: bytes flow both ways.
    Streaming,
}

/// What the worker must do after feeding the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Continue,
    /// Close both sides. For aborts the worker resets the surviving peer (RST), mirroring what
    /// it would have seen without a proxy in between.
    Close(Cause),
}

pub struct Session {
    /// Unique per worker over its lifetime; guards timer entries against slot reuse.
    pub id: u64,
    pub service: usize,
    pub client: TcpStream,
    /// Canonical (IPv4-mapped addresses unmapped).
    pub client_addr: SocketAddr,
    pub backend: Option<TcpStream>,
    /// The server `backend` belongs to (holding one of its `active` slots) while `Some`.
    pub server: Option<usize>,
    /// Servers that already failed this session's connects; never picked again for it.
    pub tried: Vec<usize>,
    pub phase: Phase,
    client_ready: Ready,
    backend_ready: Ready,
    pub up: Flow,
    pub down: Flow,
    pub started: Instant,
    /// Last time a byte moved either way (the idle timeout runs from here).
    pub last_active: Instant,
    /// Time from the start of the successful connect to its completion.
    pub connect_time: Option<Duration>,
    /// Earliest deadline currently queued in the worker's timer heap for this session.
    pub timer_armed: Option<Instant>,
    /// A side that reset or failed: the flow out of it is being flushed, then we close.
    aborted: Option<Side>,
    splice: Splice,
    /// The worker closed it during this event batch; its slot is freed after the batch so
    /// events still queued for it cannot reach a new session in the same slot.
    pub closed: bool,
}

impl Session {
    pub fn new(
        id: u64,
        service: usize,
        client: TcpStream,
        client_addr: SocketAddr,
        splice: Splice,
        now: Instant,
    ) -> Session {
        Session {
            id,
            service,
            client,
            client_addr,
            backend: None,
            server: None,
            tried: Vec::new(),
            phase: Phase::Connecting { since: now },
            // A fresh socket may already hold bytes: assume readable until a read says otherwise.
            client_ready: Ready { readable: true, writable: true, closed: false },
            backend_ready: Ready::default(),
            up: Flow::default(),
            down: Flow::default(),
            started: now,
            last_active: now,
            connect_time: None,
            timer_armed: None,
            aborted: None,
            splice,
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

    /// A new connect attempt started on `backend` towards `server`.
    pub fn connecting(&mut self, backend: TcpStream, server: usize, now: Instant) {
        self.backend = Some(backend);
        self.server = Some(server);
        self.backend_ready = Ready::default();
        self.phase = Phase::Connecting { since: now };
    }

    /// The backend connect completed.
    pub fn connected(&mut self, now: Instant) {
        if let Phase::Connecting { since } = self.phase {
            self.connect_time = Some(now.saturating_duration_since(since));
        }
        self.phase = Phase::Streaming;
        self.backend_ready = Ready { readable: true, writable: true, closed: self.backend_ready.closed };
        self.last_active = now;
    }

    /// When the session must next be looked at by the timer.
    pub fn deadline(&self, connect_timeout: Duration, idle_timeout: Duration) -> Instant {
        match self.phase {
            Phase::Connecting { since } => since + connect_timeout,
            Phase::Streaming => self.last_active + idle_timeout,
        }
    }

    /// Moves bytes both ways as far as readiness allows. Returns the step and the bytes
    /// delivered (to the server, to the client) by this call.
    pub fn pump(&mut self, now: Instant, pools: &mut Pools) -> (Step, usize, usize) {
        let Some(backend) = self.backend.as_ref() else {
            return (Step::Continue, 0, 0);
        };
        debug_assert_eq!(self.phase, Phase::Streaming);
        let (c, b) = (self.client.as_raw_fd(), backend.as_raw_fd());
        let (mut to_server, mut to_client) = (0, 0);
        if self.aborted.is_none() {
            match self.up.pump(c, b, &mut self.client_ready, &mut self.backend_ready, pools, self.splice) {
                Ok(n) => to_server = n,
                Err(FlowError::Source(_)) => self.aborted = Some(Side::Client),
                Err(FlowError::Dest(_)) => self.aborted = Some(Side::Backend),
            }
        }
        if self.aborted.is_none() {
            match self.down.pump(b, c, &mut self.backend_ready, &mut self.client_ready, pools, self.splice) {
                Ok(n) => to_client = n,
                Err(FlowError::Source(_)) => self.aborted = Some(Side::Backend),
                Err(FlowError::Dest(_)) => self.aborted = Some(Side::Client),
            }
        }
        if to_server + to_client > 0 {
            self.last_active = now;
        }
        if let Some(failed) = self.aborted {
            let step = self.flush_after_abort(failed, pools, &mut to_server, &mut to_client);
            return (step, to_server, to_client);
        }
        if self.up.done() && self.down.done() {
            return (Step::Close(Cause::Normal), to_server, to_client);
        }
        (Step::Continue, to_server, to_client)
    }

    /// A flow stopped on its per-turn budget with work left (see `Flow::yielded`).
    pub fn yielded(&self) -> bool {
        self.up.yielded || self.down.yielded
    }

    /// `failed` is gone. Bytes it sent before failing still reach the other peer (EOF-flush
    /// rule); the flow into it is dropped. Closes once the flush is done or impossible.
    fn flush_after_abort(
        &mut self,
        failed: Side,
        pools: &mut Pools,
        to_server: &mut usize,
        to_client: &mut usize,
    ) -> Step {
        let cause = match failed {
            Side::Client => Cause::ClientAbort,
            Side::Backend => Cause::ServerAbort,
        };
        let backend = self.backend.as_ref().expect("invariant: streaming sessions have a backend");
        let (c, b) = (self.client.as_raw_fd(), backend.as_raw_fd());
        let (into_failed, out_of_failed, src, dst, src_ready, dst_ready, counter) = match failed {
            Side::Client => {
                (&mut self.down, &mut self.up, c, b, &mut self.client_ready, &mut self.backend_ready, to_server)
            }
            Side::Backend => {
                (&mut self.up, &mut self.down, b, c, &mut self.backend_ready, &mut self.client_ready, to_client)
            }
        };
        into_failed.abandon(pools);
        // Nothing more is read from the failed side, and the survivor gets a reset at close
        // rather than a FIN it could mistake for a clean end.
        out_of_failed.src_eof = true;
        out_of_failed.dst_shut = true;
        match out_of_failed.pump(src, dst, src_ready, dst_ready, pools, self.splice) {
            Ok(n) => *counter += n,
            Err(_) => return Step::Close(cause),
        }
        if out_of_failed.pending() == 0 {
            Step::Close(cause)
        } else {
            Step::Continue
        }
    }

    /// Returns pooled channels; called once when the worker closes the session.
    pub fn release(&mut self, pools: &mut Pools) {
        self.up.release(pools);
        self.down.release(pools);
    }
}
