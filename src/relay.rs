//! Moving bytes in one direction of a session: from a source socket, through a pipe (splice)
//! or a fixed buffer (copy), to a destination socket.
//!
//! A [`Flow`] holds a channel only while bytes are in flight and hands it back to the worker's
//! [`Pools`] as soon as it is empty, so an idle proxied connection costs exactly its two
//! sockets. A full channel stops reading from the source: memory per connection is bounded by
//! one pipe or one buffer per direction, whatever the peers do.

use crate::config::Splice;
use crate::sys;
use crate::tls::TlsEnd;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

/// Pipe size requested with `F_SETPIPE_SZ`. The kernel's default is 64 KiB; 256 KiB moves a
/// bulk transfer in a quarter of the splice calls (measured: CPU per GB -15 to -25% in
/// scripts/bench.sh), and costs nothing while idle: a pipe holds pages only while bytes are in
/// flight, and it goes back to the pool when empty. 1 MiB measured no better. The kernel may
/// grant less (see [`Pipe::new`]); flows use the size it really has.
pub const PIPE_SIZE: usize = 256 * 1024;
/// Buffer size of the copy path. Matches the largest TLS record so TLS can share it later.
pub const BUF_SIZE: usize = 16 * 1024;
/// Idle buffers a worker keeps for reuse (idle pipes: see [`Pools::new`]).
const POOL_MAX_IDLE: usize = 256;
/// Fill/drain rounds one flow may run per worker turn (up to 64 pipes' worth, 16 MiB, with
/// splice; 1 MiB with the copy path).
const TURN_BUDGET: usize = 64;
/// Reads and splices smaller than this (and than the room offered) mark small messages.
const BULK_SPLICE: usize = 4096;
/// A splice into the pipe this big says the source streams: it gets a receive low-water mark
/// of [`LOW_WATER`], so the worker wakes once per that much data instead of for every few
/// segments (each wake-up costs the core that delivers the data too).
const LOW_WATER_AFTER: usize = 64 * 1024;
/// A pipe's worth: one wake-up, one full splice. Measured against 128 KiB (interleaved, iperf3):
/// wake-ups per GB halved, CPU per GB 10% lower on one stream and 13% on four; 512 KiB measured
/// no better.
const LOW_WATER: usize = PIPE_SIZE;

/// A flow's receive low-water mark on its source. The kernel does not wake a reader below the
/// mark when the sender simply stops, so a flow waiting on the mark has a rescue deadline (the
/// session's, see `Session::deadline`): then the mark comes off and the source is read. Bytes
/// waiting there mean the sender paused (a stream whose sender lost its CPU) or finished a
/// message; if the other direction then answers, it was a message, and the flow, which carries
/// requests and responses, keeps no mark: each tail would wait for a rescue.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum LowWater {
    /// No mark; one is set after a big splice.
    #[default]
    Off,
    Set,
    /// The mark just came off on its deadline; the next read says whether bytes were waiting.
    Rescued,
    /// Bytes were waiting below the mark: a message ended if the other direction answers now;
    /// the next big splice sets the mark again.
    Suspect,
    /// The other direction answered a rescued tail: no mark again for this flow.
    Never,
}

/// A kernel pipe used as a splice(2) intermediary.
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// What the kernel granted: `PIPE_SIZE`, or less (see [`Pipe::new`]).
    capacity: usize,
}

/// Set once the kernel granted a pipe smaller than asked, so the warning is given once.
static SMALL_PIPE_WARNED: AtomicBool = AtomicBool::new(false);

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let (read, write) = sys::pipe()?;
        // A smaller pipe still works, it just moves less per call. The kernel refuses a bigger
        // one to a user past `fs.pipe-user-pages-soft` and may then give as little as a page:
        // the flow must use the real size, or it would offer room the pipe does not have.
        let capacity = sys::set_pipe_size(write.as_fd(), PIPE_SIZE).unwrap_or(4096);
        if capacity < PIPE_SIZE && !SMALL_PIPE_WARNED.swap(true, Relaxed) {
            log::warn!(
                "pipes get {capacity} bytes, not the {PIPE_SIZE} asked for (fs.pipe-user-pages-soft or \
                 pipe-max-size): bulk transfers take more splice calls"
            );
        }
        Ok(Pipe { read, write, capacity })
    }
}

/// A fixed-capacity byte buffer; bytes live in `data[start..end]`. Never grows.
pub struct Buffer {
    data: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Buffer {
    fn new() -> Buffer {
        Buffer { data: vec![0u8; BUF_SIZE].into_boxed_slice(), start: 0, end: 0 }
    }
}

/// Where a flow's in-flight bytes sit.
pub enum Channel {
    Pipe(Pipe),
    Buf(Buffer),
}

impl Channel {
    fn capacity(&self) -> usize {
        match self {
            Channel::Pipe(p) => p.capacity,
            Channel::Buf(b) => b.data.len(),
        }
    }
}

/// Reusable pipes and buffers of one worker.
pub struct Pools {
    pipes: Vec<Pipe>,
    bufs: Vec<Buffer>,
    /// Pipes currently lent to flows (for metrics and tests).
    pub pipes_lent: usize,
    /// Pipes this worker may hold at once, lent and idle together: its share of the descriptor
    /// budget (each pipe holds two). Past it, flows take the copy path instead.
    pipe_budget: usize,
}

impl Default for Pools {
    fn default() -> Pools {
        Pools::new(usize::MAX / 2)
    }
}

impl Pools {
    /// A pool that holds at most `pipe_budget` pipes at once.
    pub fn new(pipe_budget: usize) -> Pools {
        Pools { pipes: Vec::new(), bufs: Vec::new(), pipes_lent: 0, pipe_budget }
    }

    /// A pipe when `splice` is wanted and one can be had within the budget; otherwise a buffer.
    /// Running out of descriptors (or budget) for a pipe degrades to the copy path instead of
    /// failing the session.
    fn take(&mut self, pipe: bool) -> Channel {
        if pipe {
            if let Some(p) = self.pipes.pop() {
                self.pipes_lent += 1;
                return Channel::Pipe(p);
            }
            if self.pipes_lent < self.pipe_budget {
                match Pipe::new() {
                    Ok(p) => {
                        self.pipes_lent += 1;
                        return Channel::Pipe(p);
                    }
                    Err(e) => {
                        crate::logs::limited_warn("pipe", format_args!("pipe2 failed ({e}); copying through a buffer"))
                    }
                }
            }
        }
        Channel::Buf(self.bufs.pop().unwrap_or_else(Buffer::new))
    }

    /// Takes back an empty channel.
    fn give(&mut self, chan: Channel) {
        match chan {
            Channel::Pipe(p) => {
                self.pipes_lent -= 1;
                // Idle pipes count against the budget too: keep only what lent ones leave room for.
                if self.pipes.len() + self.pipes_lent < self.pipe_budget {
                    self.pipes.push(p);
                }
            }
            Channel::Buf(mut b) => {
                if self.bufs.len() < POOL_MAX_IDLE {
                    b.start = 0;
                    b.end = 0;
                    self.bufs.push(b);
                }
            }
        }
    }

    /// Pipes held now, lent and idle (each is two descriptors).
    pub fn pipes_held(&self) -> usize {
        self.pipes.len() + self.pipes_lent
    }
}

/// Our own view of a socket's readiness (edge-triggered epoll reports each edge once).
/// A flag is set by an event and cleared when a call returns WouldBlock or a short count.
#[derive(Debug, Default, Clone, Copy)]
pub struct Ready {
    pub readable: bool,
    pub writable: bool,
    /// epoll reported the peer's FIN or an error (sticky): reads must go on until they return
    /// EOF or the error, whatever a short read suggests.
    pub closed: bool,
    /// epoll reported an error (`EPOLLERR`: the peer reset, or the connection timed out):
    /// the connection is dead even if no call has failed yet (sticky).
    pub error: bool,
}

/// Where a flow reads from or writes to: a socket, or the TLS endpoint over the client's socket
/// (which only the copy path can use: splice cannot decrypt).
pub enum End<'a> {
    Sock(BorrowedFd<'a>),
    Tls(&'a mut TlsEnd, BorrowedFd<'a>),
}

impl End<'_> {
    fn is_tls(&self) -> bool {
        matches!(self, End::Tls(..))
    }
}

/// Which end of a flow failed (reset, or any other error but WouldBlock and EINTR).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowError {
    Source,
    Dest,
}

/// One direction of a session.
#[derive(Default)]
pub struct Flow {
    /// Holds in-flight bytes; `None` whenever `pending == 0`.
    chan: Option<Channel>,
    /// Bytes read from the source and not yet written to the destination.
    pending: usize,
    /// The source returned EOF (or is known dead): nothing more will be read.
    pub src_eof: bool,
    /// We sent FIN (`shutdown(SHUT_WR)`) to the destination.
    pub dst_shut: bool,
    /// Bytes written to the destination socket, i.e. handed to its kernel, which delivers them
    /// even after we close it with a FIN. A close with a reset discards what the peer has not
    /// acknowledged yet: the session then takes those bytes off again (see `Session::close`).
    pub delivered: u64,
    /// The last `pump` stopped on its turn budget with work left: edge-triggered epoll will
    /// not say so again, so the worker must come back to this flow by itself.
    pub yielded: bool,
    /// The flow is moving bulk data: the next channel it takes is a pipe (with `splice on`).
    bulk: bool,
    /// The receive low-water mark on the source, and what its rescues said.
    low_water: LowWater,
}

impl Flow {
    /// The source has a low-water mark, nothing above it to read, and nothing is pending for
    /// the destination (whose writability would wake the flow anyway): only the rescue deadline
    /// would bring bytes below the mark.
    pub fn waiting_on_low_water(&self, src_ready: &Ready) -> bool {
        self.low_water == LowWater::Set && !src_ready.readable && !self.src_eof && self.pending == 0
    }

    /// The other direction of the session moved bytes: if this flow's mark was just rescued
    /// with bytes waiting, that was the end of a message, answered.
    pub fn heard_back(&mut self) {
        if self.low_water == LowWater::Suspect {
            self.low_water = LowWater::Never;
        }
    }

    /// The rescue: the mark comes off the source and the source is read on the next pump.
    pub fn drop_low_water(&mut self, src: BorrowedFd<'_>, src_ready: &mut Ready) {
        // why ignore errors: on a socket we hold only EINVAL could come back, and then the
        // mark was never set either.
        let _ = sys::set_rcvlowat(src, 1);
        self.low_water = LowWater::Rescued;
        src_ready.readable = true;
    }

    /// Everything the source sent has reached the destination and FIN was passed on.
    pub fn done(&self) -> bool {
        self.src_eof && self.pending == 0 && self.dst_shut
    }

    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Moves as much as readiness allows; returns the bytes delivered by this call. Stops when
    /// neither side can make progress. Passes FIN on once the source is at EOF and drained,
    /// unless `last` says the other direction is done: then the session closes right away and
    /// `close()` sends that FIN itself (nothing is left unread on `dst`, whose own direction
    /// already reached EOF), one syscall fewer per connection.
    #[allow(clippy::too_many_arguments)] // why: both ends and both readiness views are the flow's inputs
    pub fn pump(
        &mut self,
        mut src: End<'_>,
        mut dst: End<'_>,
        src_ready: &mut Ready,
        dst_ready: &mut Ready,
        pools: &mut Pools,
        splice: Splice,
        last: bool,
    ) -> Result<usize, FlowError> {
        let mut delivered = 0;
        self.yielded = false;
        // why a budget: a peer that keeps both sides ready (a fast local transfer) must not
        // starve the other sessions of this worker; `yielded` brings us back next turn.
        for round in 0..=TURN_BUDGET {
            if round == TURN_BUDGET {
                self.yielded = true;
                break;
            }
            let mut progress = false;
            // Records rustls encrypted earlier go first. The plaintext they carry already left
            // the channel, so `pending` may be 0 while they wait: only the socket's writability
            // says when they can go, and nothing else would send them.
            if let (End::Tls(tls, fd), true) = (&mut dst, dst_ready.writable) {
                match tls.flush(*fd) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => dst_ready.writable = false,
                    Err(_) => {
                        self.delivered += delivered as u64;
                        return Err(FlowError::Dest);
                    }
                }
            }
            if self.pending > 0 && dst_ready.writable {
                let chan = self.chan.as_mut().expect("invariant: pending > 0 implies a channel");
                match drain(chan, &mut dst, self.pending) {
                    Ok(n) => {
                        // A short write means the socket buffer is full: the kernel reports
                        // writability again when it drains, so skip the EAGAIN round trip.
                        // (Not so for TLS, which takes at most a buffer's worth at a time.)
                        if n < self.pending && !dst.is_tls() {
                            dst_ready.writable = false;
                        }
                        self.pending -= n;
                        delivered += n;
                        progress = n > 0;
                        // An empty channel goes back at once, so the next fill can take the
                        // kind the flow now wants (a bulk flow leaves the copy path here).
                        if self.pending == 0 {
                            if let Some(chan) = self.chan.take() {
                                pools.give(chan);
                            }
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => dst_ready.writable = false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => progress = true,
                    Err(_) => {
                        // Bytes delivered before the failure count: logs and metrics say what
                        // really reached the peer.
                        self.delivered += delivered as u64;
                        return Err(FlowError::Dest);
                    }
                }
            }
            if !self.src_eof && src_ready.readable && self.chan.as_ref().is_none_or(|c| self.pending < c.capacity()) {
                let want_pipe = !src.is_tls()
                    && !dst.is_tls()
                    && match splice {
                        Splice::Always => true,
                        Splice::Auto => self.bulk,
                        Splice::Off => false,
                    };
                let chan = self.chan.get_or_insert_with(|| pools.take(want_pipe));
                match fill(chan, &mut src, self.pending) {
                    Ok((0, _)) => {
                        self.src_eof = true;
                        progress = true;
                    }
                    Ok((n, asked)) => {
                        self.pending += n;
                        progress = true;
                        if self.low_water == LowWater::Rescued {
                            self.low_water = LowWater::Suspect;
                        }
                        match chan {
                            Channel::Buf(_) => {
                                // A read that fills all the room it was offered is a bulk
                                // transfer: the next channel is a pipe (with `splice on`). A
                                // clearly small read ends it.
                                if n == asked {
                                    self.bulk = true;
                                } else if n < BULK_SPLICE {
                                    self.bulk = false;
                                }
                                // A short read drained the socket (TCP reads return what is
                                // queued): new data raises a new edge. Unless the peer already
                                // closed: then the EOF is queued too and must be read now.
                                // (Not so for TLS: rustls may hold more records.)
                                if n < asked && !src_ready.closed && !src.is_tls() {
                                    src_ready.readable = false;
                                }
                            }
                            // Small splices mean small messages again: back to the copy path
                            // once this pipe is empty. (A nearly full pipe only offers a little
                            // room; a small splice into it says nothing.)
                            Channel::Pipe(_) => {
                                if n < BULK_SPLICE && n < asked {
                                    self.bulk = false;
                                }
                                if n >= LOW_WATER_AFTER && matches!(self.low_water, LowWater::Off | LowWater::Suspect) {
                                    if let End::Sock(fd) = &src {
                                        if sys::set_rcvlowat(*fd, LOW_WATER).is_ok() {
                                            self.low_water = LowWater::Set;
                                        }
                                    }
                                }
                            }
                        }
                    }
                    // A splice into a pipe that still holds bytes can fail for lack of pipe
                    // slots rather than of socket data: keep the flag, retry after a drain.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if self.pending == 0 || matches!(chan, Channel::Buf(_)) {
                            src_ready.readable = false;
                        }
                        // Rescued with nothing waiting: the stream only paused.
                        if self.low_water == LowWater::Rescued {
                            self.low_water = LowWater::Off;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => progress = true,
                    Err(_) => {
                        self.delivered += delivered as u64;
                        return Err(FlowError::Source);
                    }
                }
            }
            if !progress {
                break;
            }
        }
        if self.pending == 0 {
            if let Some(chan) = self.chan.take() {
                pools.give(chan);
            }
        }
        if self.src_eof && self.pending == 0 && !self.dst_shut {
            self.dst_shut = true;
            match &mut dst {
                // The end of a TLS stream is a close_notify, sent even when the session closes
                // right after (the TCP FIN alone would look like a truncation).
                End::Tls(tls, fd) => tls.close_notify(*fd),
                End::Sock(fd) if !last => {
                    // why ignore errors: ENOTCONN means the peer is already gone; the next read
                    // or write on it reports that with the right side attached.
                    let _ = socket2::SockRef::from(&*fd).shutdown(std::net::Shutdown::Write);
                }
                End::Sock(_) => {}
            }
        }
        self.delivered += delivered as u64;
        Ok(delivered)
    }

    /// Ends the flow without delivering what is pending (its destination is gone, or the
    /// session is closing), handing its channel back.
    pub fn abandon(&mut self, pools: &mut Pools) {
        self.src_eof = true;
        self.dst_shut = true;
        self.pending = 0;
        if let Some(chan) = self.chan.take() {
            // A pipe may still hold bytes: it cannot be reused, so drop it instead.
            match chan {
                Channel::Pipe(_) => pools.pipes_lent -= 1,
                buf => pools.give(buf),
            }
        }
    }
}

/// A flow's state as it moves to another process (a binary upgrade): its counts, and the
/// bytes in flight, as the pipe that holds them or a copy of the buffer's.
#[derive(Debug)]
pub struct FlowState {
    pub delivered: u64,
    pub src_eof: bool,
    pub dst_shut: bool,
    pub bulk: bool,
    pub held: Held,
}

/// Where a moving flow's pending bytes are.
#[derive(Debug)]
pub enum Held {
    Nothing,
    /// The pipe itself moves (its descriptors), with `pending` bytes in it.
    Pipe {
        read: OwnedFd,
        write: OwnedFd,
        pending: usize,
    },
    /// The copy path's pending bytes (at most one buffer's).
    Bytes(Vec<u8>),
}

impl Flow {
    /// Takes the flow apart for a move to another process; its channel leaves the pool.
    pub fn export(&mut self, pools: &mut Pools) -> FlowState {
        let held = match self.chan.take() {
            None => Held::Nothing,
            Some(Channel::Pipe(p)) => {
                pools.pipes_lent -= 1;
                Held::Pipe { read: p.read, write: p.write, pending: self.pending }
            }
            Some(Channel::Buf(b)) => {
                let bytes = b.data[b.start..b.end].to_vec();
                pools.give(Channel::Buf(b));
                Held::Bytes(bytes)
            }
        };
        self.pending = 0;
        FlowState { delivered: self.delivered, src_eof: self.src_eof, dst_shut: self.dst_shut, bulk: self.bulk, held }
    }

    /// A flow that moved in from another process: its pipe joins this worker's lent pipes, or
    /// its bytes fill one of this worker's buffers.
    pub fn import(state: FlowState, pools: &mut Pools) -> io::Result<Flow> {
        let (chan, pending) = match state.held {
            Held::Nothing => (None, 0),
            Held::Pipe { read, write, pending } => {
                let capacity = sys::pipe_size(write.as_fd())?;
                if pending > capacity {
                    return Err(io::Error::other(format!("{pending} bytes pending in a pipe of {capacity}")));
                }
                pools.pipes_lent += 1;
                (Some(Channel::Pipe(Pipe { read, write, capacity })), pending)
            }
            Held::Bytes(bytes) if bytes.len() > BUF_SIZE => {
                return Err(io::Error::other(format!("{} pending bytes exceed a buffer", bytes.len())));
            }
            Held::Bytes(bytes) if bytes.is_empty() => (None, 0),
            Held::Bytes(bytes) => {
                let Channel::Buf(mut b) = pools.take(false) else { unreachable!("take(false) gives a buffer") };
                b.data[..bytes.len()].copy_from_slice(&bytes);
                (b.start, b.end) = (0, bytes.len());
                (Some(Channel::Buf(b)), bytes.len())
            }
        };
        Ok(Flow {
            chan,
            pending,
            src_eof: state.src_eof,
            dst_shut: state.dst_shut,
            delivered: state.delivered,
            yielded: false,
            bulk: state.bulk,
            // The session's import takes any mark the old process left off its sockets.
            low_water: LowWater::Off,
        })
    }
}

/// Reads into the channel: `(bytes read, bytes asked for)`.
fn fill(chan: &mut Channel, src: &mut End<'_>, pending: usize) -> io::Result<(usize, usize)> {
    match chan {
        Channel::Pipe(p) => {
            let End::Sock(src) = src else { unreachable!("pipes are taken for sockets only") };
            let room = p.capacity - pending;
            sys::splice(*src, p.write.as_fd(), room).map(|n| (n, room))
        }
        Channel::Buf(b) => {
            if b.start == b.end {
                b.start = 0;
                b.end = 0;
            } else if b.end == b.data.len() {
                b.data.copy_within(b.start..b.end, 0);
                b.end -= b.start;
                b.start = 0;
            }
            let room = &mut b.data[b.end..];
            let asked = room.len();
            let n = match src {
                End::Sock(fd) => sys::read(*fd, room)?,
                End::Tls(tls, fd) => tls.read_plain(*fd, room)?,
            };
            b.end += n;
            Ok((n, asked))
        }
    }
}

fn drain(chan: &mut Channel, dst: &mut End<'_>, pending: usize) -> io::Result<usize> {
    match chan {
        Channel::Pipe(p) => {
            let End::Sock(dst) = dst else { unreachable!("pipes are taken for sockets only") };
            sys::splice(p.read.as_fd(), *dst, pending)
        }
        Channel::Buf(b) => {
            let data = &b.data[b.start..b.end];
            let n = match dst {
                End::Sock(fd) => sys::send(*fd, data)?,
                End::Tls(tls, fd) => tls.write_plain(*fd, data)?,
            };
            b.start += n;
            Ok(n)
        }
    }
}
