//! Moving bytes in one direction of a session: from a source socket, through a pipe (splice)
//! or a fixed buffer (copy), to a destination socket.
//!
//! A [`Flow`] holds a channel only while bytes are in flight and hands it back to the worker's
//! [`Pools`] as soon as it is empty, so an idle proxied connection costs exactly its two
//! sockets. A full channel stops reading from the source: memory per connection is bounded by
//! one pipe or one buffer per direction, whatever the peers do.

use crate::config::Splice;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Pipe size requested with `F_SETPIPE_SZ`. The kernel's default is 64 KiB; 256 KiB moves a
/// bulk transfer in a quarter of the splice calls (measured: CPU per GB -15 to -25% in
/// scripts/bench.sh), and costs nothing while idle: a pipe holds pages only while bytes are in
/// flight, and it goes back to the pool when empty. 1 MiB measured no better.
pub const PIPE_SIZE: usize = 256 * 1024;
/// Buffer size of the copy path. Matches the largest TLS record so TLS can share it later.
pub const BUF_SIZE: usize = 16 * 1024;
/// Idle pipes and buffers a worker keeps for reuse; more are freed. Each idle pipe holds two
/// descriptors, so this bounds what the pool takes from the descriptor budget.
const POOL_MAX_IDLE: usize = 256;
/// Fill/drain rounds one flow may run per worker turn (up to 64 x 64 KiB = 4 MiB with splice).
const TURN_BUDGET: usize = 64;
/// Reads and splices smaller than this (and than the room offered) mark small messages.
const BULK_SPLICE: usize = 4096;

/// A kernel pipe used as a splice(2) intermediary.
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds = [0 as libc::c_int; 2];
        // why unsafe: pipe2 writes two descriptors into the array we own; we take ownership
        // of both right after checking the result.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // Best effort: a smaller pipe still works, it just moves less per call.
        unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE as libc::c_int) };
        Ok(Pipe { read, write })
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

/// Reusable pipes and buffers of one worker.
#[derive(Default)]
pub struct Pools {
    pipes: Vec<Pipe>,
    bufs: Vec<Buffer>,
    /// Pipes currently lent to flows (for metrics and tests).
    pub pipes_lent: usize,
}

impl Pools {
    /// A pipe when `splice` is wanted and one can be had; otherwise a buffer. Running out of
    /// descriptors for a pipe degrades to the copy path instead of failing the session.
    fn take(&mut self, pipe: bool) -> Channel {
        if pipe {
            if let Some(p) = self.pipes.pop() {
                self.pipes_lent += 1;
                return Channel::Pipe(p);
            }
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
        Channel::Buf(self.bufs.pop().unwrap_or_else(Buffer::new))
    }

    /// Takes back an empty channel.
    fn give(&mut self, chan: Channel) {
        match chan {
            Channel::Pipe(p) => {
                self.pipes_lent -= 1;
                if self.pipes.len() < POOL_MAX_IDLE {
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
}

/// Which end of a flow failed.
#[derive(Debug)]
pub enum FlowError {
    Source(io::Error),
    Dest(io::Error),
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
    /// Bytes delivered to the destination.
    pub delivered: u64,
    /// The last `pump` stopped on its turn budget with work left: edge-triggered epoll will
    /// not say so again, so the worker must come back to this flow by itself.
    pub yielded: bool,
    /// The flow is moving bulk data: the next channel it takes is a pipe (with `splice on`).
    bulk: bool,
}

impl Flow {
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
        src: RawFd,
        dst: RawFd,
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
            if self.pending > 0 && dst_ready.writable {
                let chan = self.chan.as_mut().expect("invariant: pending > 0 implies a channel");
                match drain(chan, dst, self.pending) {
                    Ok(n) => {
                        // A short write means the socket buffer is full: the kernel reports
                        // writability again when it drains, so skip the EAGAIN round trip.
                        if n < self.pending {
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
                    Err(e) => {
                        // Bytes delivered before the failure count: logs and metrics say what
                        // really reached the peer.
                        self.delivered += delivered as u64;
                        return Err(FlowError::Dest(e));
                    }
                }
            }
            if !self.src_eof && src_ready.readable && self.pending < capacity(self.chan.as_ref()) {
                let want_pipe = match splice {
                    Splice::Always => true,
                    Splice::Auto => self.bulk,
                    Splice::Off => false,
                };
                let chan = self.chan.get_or_insert_with(|| pools.take(want_pipe));
                match fill(chan, src, self.pending) {
                    Ok((0, _)) => {
                        self.src_eof = true;
                        progress = true;
                    }
                    Ok((n, asked)) => {
                        self.pending += n;
                        progress = true;
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
                                if n < asked && !src_ready.closed {
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
                            }
                        }
                    }
                    // A splice into a pipe that still holds bytes can fail for lack of pipe
                    // slots rather than of socket data: keep the flag, retry after a drain.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if self.pending == 0 || matches!(chan, Channel::Buf(_)) {
                            src_ready.readable = false;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => progress = true,
                    Err(e) => {
                        self.delivered += delivered as u64;
                        return Err(FlowError::Source(e));
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
            if !last {
                // why ignore errors: ENOTCONN means the peer is already gone; the next read
                // or write on it reports that with the right side attached.
                unsafe { libc::shutdown(dst, libc::SHUT_WR) };
            }
        }
        self.delivered += delivered as u64;
        Ok(delivered)
    }

    /// Ends the flow without delivering what is pending (its destination is gone).
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

    /// Hands the channel back when the session goes away.
    pub fn release(&mut self, pools: &mut Pools) {
        self.abandon(pools);
    }
}

fn capacity(chan: Option<&Channel>) -> usize {
    match chan {
        Some(Channel::Buf(_)) => BUF_SIZE,
        // Before the channel exists we do not know its kind; any non-zero room will do.
        Some(Channel::Pipe(_)) | None => PIPE_SIZE,
    }
}

/// Reads into the channel: `(bytes read, bytes asked for)`.
fn fill(chan: &mut Channel, src: RawFd, pending: usize) -> io::Result<(usize, usize)> {
    match chan {
        Channel::Pipe(p) => splice(src, p.write.as_raw_fd(), PIPE_SIZE - pending).map(|n| (n, PIPE_SIZE - pending)),
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
            // why unsafe: read(2) into a slice we own, bounded by its length.
            let n = unsafe { libc::read(src, room.as_mut_ptr().cast(), room.len()) };
            let n = cvt(n)?;
            b.end += n;
            Ok((n, room.len()))
        }
    }
}

fn drain(chan: &mut Channel, dst: RawFd, pending: usize) -> io::Result<usize> {
    match chan {
        Channel::Pipe(p) => splice(p.read.as_raw_fd(), dst, pending),
        Channel::Buf(b) => {
            let data = &b.data[b.start..b.end];
            // why unsafe: send(2) from a slice we own; MSG_NOSIGNAL so a closed peer is an
            // EPIPE error on this session, not a process-wide SIGPIPE.
            let n = unsafe { libc::send(dst, data.as_ptr().cast(), data.len(), libc::MSG_NOSIGNAL) };
            let n = cvt(n)?;
            b.start += n;
            Ok(n)
        }
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // why unsafe: splice(2) between two descriptors we own, no user memory involved.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    cvt(n)
}

fn cvt(n: isize) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
