//! The fault lab's clients: threads in the client namespace that speak test_peer's protocol (a
//! 25-byte header: mode, seed, len, arg) and check every byte of every answer against the
//! generated stream, reporting how each session ended ([`End`], [`Outcome`]).

use super::super::clients::abort;
use super::super::pattern::pattern_fill;
use super::{lb_addr, Rng, T};
use socket2::{Domain, Socket, Type};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

/// The 25-byte request header test_peer reads: mode, seed, len, arg.
pub fn header(mode: u8, seed: u64, len: u64) -> [u8; 25] {
    let mut h = [0u8; 25];
    h[0] = mode;
    h[1..9].copy_from_slice(&seed.to_le_bytes());
    h[9..17].copy_from_slice(&len.to_le_bytes());
    h
}

/// Connects (5 s at most) with `read_timeout` on reads and [`T`] on writes.
pub fn dial(addr: SocketAddr, read_timeout: Duration) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(read_timeout))?;
    s.set_write_timeout(Some(T))?;
    Ok(s)
}

/// A client socket whose receive buffer is pinned before connect (the window stays small).
pub fn dial_small_rcvbuf(addr: SocketAddr, rcvbuf: usize, read_timeout: Duration) -> io::Result<TcpStream> {
    dial_bound(addr, Some(rcvbuf), read_timeout).1
}

/// Connects from a source port chosen (by binding) before the connect, and returns that port
/// even when the connect fails: a session that shunt accepted and reset at once (its server
/// died at that instant) can still be matched with shunt's log line for it.
pub fn dial_bound(addr: SocketAddr, rcvbuf: Option<usize>, read_timeout: Duration) -> (u16, io::Result<TcpStream>) {
    let s = match Socket::new(Domain::IPV4, Type::STREAM, None) {
        Ok(s) => s,
        Err(e) => return (0, Err(e)),
    };
    let bound = s.bind(&SocketAddr::from(([0, 0, 0, 0], 0)).into()).and_then(|_| s.local_addr());
    let port = bound.ok().and_then(|a| a.as_socket()).map_or(0, |a| a.port());
    let connected = (|| {
        if let Some(n) = rcvbuf {
            s.set_recv_buffer_size(n)?;
        }
        s.connect_timeout(&addr.into(), Duration::from_secs(5))?;
        let s: TcpStream = s.into();
        s.set_read_timeout(Some(read_timeout))?;
        s.set_write_timeout(Some(T))?;
        Ok(s)
    })();
    (port, connected)
}

/// How a stream from a server ended, as the client saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum End {
    /// Every byte, then a clean EOF.
    Complete,
    /// A connection reset (RST).
    Reset,
    /// A clean EOF before the end: a truncation a client could take for a whole answer.
    Eof,
    Timeout,
    /// A byte that is not the stream's: lost, reordered, or someone else's data.
    Corrupt(String),
    /// The connect to the balancer itself failed.
    NoConnect(String),
    Other(String),
}

impl End {
    pub fn of(e: &io::Error) -> End {
        match e.kind() {
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionAborted => End::Reset,
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => End::Timeout,
            // read_exact met a clean EOF: a FIN where the stream should have gone on.
            io::ErrorKind::UnexpectedEof => End::Eof,
            _ => End::Other(e.to_string()),
        }
    }

    /// A failure that no fault excuses.
    pub fn is_bug(&self) -> bool {
        matches!(self, End::Eof | End::Corrupt(_))
    }
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Complete => write!(f, "complete"),
            End::Reset => write!(f, "reset"),
            End::Eof => write!(f, "clean EOF before the end"),
            End::Timeout => write!(f, "timeout"),
            End::Corrupt(m) => write!(f, "corrupt: {m}"),
            End::NoConnect(m) => write!(f, "connect failed: {m}"),
            End::Other(m) => write!(f, "error: {m}"),
        }
    }
}

/// One `Q` request as the client saw it.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The server that answered (its name line), "" if none did.
    pub server: String,
    /// Stream bytes received and checked.
    pub got: u64,
    pub end: End,
    pub took: Duration,
    /// The client's local port: the session's key in shunt's log.
    pub port: u16,
    /// When the request started, relative to the `epoch` passed in.
    pub at: Duration,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.end == End::Complete
    }
}

/// Reads stream `seed` (`len` bytes) from `r` to EOF or error, checking every byte.
pub fn read_checked(r: &mut impl Read, seed: u64, len: u64, got: &mut u64) -> End {
    let mut buf = vec![0u8; 64 * 1024];
    let mut want = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return if *got == len { End::Complete } else { End::Eof },
            Ok(n) => {
                if *got + n as u64 > len {
                    return End::Corrupt(format!("more than the {len} bytes of the stream"));
                }
                pattern_fill(seed, *got, &mut want[..n]);
                if buf[..n] != want[..n] {
                    let i = (0..n).find(|&i| buf[i] != want[i]).unwrap();
                    return End::Corrupt(format!("byte {} of stream {seed} differs", *got + i as u64));
                }
                *got += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return End::of(&e),
        }
    }
}

/// How a [`query_with`] client behaves.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum How {
    Plain,
    /// FIN right after the request header.
    HalfClose,
    /// A 64 KiB receive buffer and a 10 ms nap after every read: a long-lived session.
    Slow,
}

/// Sleeps after every read: a slow reader (pacing by design).
struct Slow<R>(R, bool);

impl<R: Read> Read for Slow<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.0.read(buf)?;
        if self.1 {
            thread::sleep(Duration::from_millis(10));
        }
        Ok(n)
    }
}

/// `Q` request to the lab's service: the server sends its name line, `len` bytes of stream
/// `seed`, then closes.
pub fn query(seed: u64, len: u64, epoch: Instant) -> Outcome {
    query_at(lb_addr(), seed, len, T, epoch)
}

/// [`query`] to `addr` with `read_timeout`.
pub fn query_at(addr: SocketAddr, seed: u64, len: u64, read_timeout: Duration, epoch: Instant) -> Outcome {
    query_with(addr, seed, len, read_timeout, epoch, How::Plain)
}

/// [`query_at`] by a client that behaves as `how` says.
pub fn query_with(addr: SocketAddr, seed: u64, len: u64, rt: Duration, epoch: Instant, how: How) -> Outcome {
    let t0 = Instant::now();
    let at = t0.saturating_duration_since(epoch);
    let mut out = Outcome { server: String::new(), got: 0, end: End::Complete, took: Duration::ZERO, port: 0, at };
    let finish = |mut o: Outcome, end: End| {
        o.end = end;
        o.took = t0.elapsed();
        o
    };
    let (port, dialed) = dial_bound(addr, (how == How::Slow).then_some(64 * 1024), rt);
    out.port = port;
    let mut s = match dialed {
        Ok(s) => s,
        // A refusal can be so quick that the reset beats connect()'s own completion check.
        Err(e) if End::of(&e) == End::Reset => return finish(out, End::Reset),
        Err(e) => return finish(out, End::NoConnect(e.to_string())),
    };
    if let Err(e) = s.write_all(&header(b'Q', seed, len)) {
        return finish(out, End::of(&e));
    }
    if how == How::HalfClose {
        let _ = s.shutdown(Shutdown::Write);
    }
    let mut r = BufReader::with_capacity(64 * 1024, Slow(s, how == How::Slow));
    let mut name = Vec::new();
    match r.read_until(b'\n', &mut name) {
        Ok(_) if name.ends_with(b"\n") => out.server = String::from_utf8_lossy(&name[..name.len() - 1]).into_owned(),
        Ok(_) => return finish(out, if name.is_empty() { End::Eof } else { End::Other(format!("name {name:?}")) }),
        Err(e) => return finish(out, End::of(&e)),
    }
    let mut got = 0;
    let end = read_checked(&mut r, seed, len, &mut got);
    out.got = got;
    finish(out, end)
}

/// Sends small requests every 20 ms until one is served; returns how long after `since` that
/// was. Fails the test if none is served within `limit` of `since`.
pub fn first_served_since(since: Instant, limit: Duration, seed: u64, what: &str) -> Duration {
    let epoch = Instant::now();
    for i in 0.. {
        let o = query(seed + i, 1000, epoch);
        if o.ok() {
            return since.elapsed();
        }
        assert!(since.elapsed() < limit, "no request served within {limit:?} {what}: {o:?}");
        thread::sleep(Duration::from_millis(20));
    }
    unreachable!()
}

/// An echo session of `len` bytes of stream `seed`, in chunks of up to `chunk_max` bytes, each
/// read back before the next is sent; then FIN, and a clean EOF must follow. With `abort_at`,
/// the client resets the connection once that many bytes went out (with one more chunk in
/// flight, sometimes). Returns whether it aborted.
pub fn echo_session(
    addr: SocketAddr,
    seed: u64,
    len: u64,
    chunk_max: u64,
    abort_at: Option<u64>,
    rng: &mut Rng,
) -> Result<bool, (End, String)> {
    let mut s = dial(addr, T).map_err(|e| (End::NoConnect(e.to_string()), format!("connect: {e}")))?;
    let fail = |what: String, e: &io::Error| (End::of(e), format!("{what}: {e}"));
    s.write_all(&header(b'E', seed, len)).map_err(|e| fail("header".into(), &e))?;
    let mut out = vec![0u8; chunk_max as usize];
    let mut back = vec![0u8; chunk_max as usize];
    let mut sent = 0u64;
    while sent < len {
        let n = rng.range(1, chunk_max).min(len - sent) as usize;
        pattern_fill(seed, sent, &mut out[..n]);
        s.write_all(&out[..n]).map_err(|e| fail(format!("write at {sent}"), &e))?;
        s.read_exact(&mut back[..n]).map_err(|e| fail(format!("echo of {sent}..{}", sent + n as u64), &e))?;
        if back[..n] != out[..n] {
            let i = (0..n).find(|&i| back[i] != out[i]).unwrap();
            let m = format!("echo byte {} of stream {seed} differs", sent + i as u64);
            return Err((End::Corrupt(m.clone()), m));
        }
        sent += n as u64;
        if abort_at.is_some_and(|a| sent >= a) {
            if sent < len && rng.chance(0.5) {
                let n = rng.range(1, chunk_max).min(len - sent) as usize;
                pattern_fill(seed, sent, &mut out[..n]);
                let _ = s.write_all(&out[..n]);
            }
            abort(s);
            return Ok(true);
        }
    }
    s.shutdown(Shutdown::Write).map_err(|e| fail("shutdown".into(), &e))?;
    let mut rest = Vec::new();
    match s.read_to_end(&mut rest) {
        Ok(_) if rest.is_empty() => Ok(false),
        Ok(_) => {
            let m = format!("{} bytes after the echo", rest.len());
            Err((End::Corrupt(m.clone()), m))
        }
        Err(e) => Err(fail("waiting for the echo's EOF".into(), &e)),
    }
}

/// Of `outs`, how many `server` answered in full.
pub fn served_by(outs: &[Outcome], server: &str) -> usize {
    outs.iter().filter(|o| o.ok() && o.server == server).count()
}

/// The longest any of `outs` took.
pub fn max_took(outs: &[Outcome]) -> Duration {
    outs.iter().map(|o| o.took).max().unwrap_or_default()
}

/// The `p` quantile (0.0..=1.0) of `v` (sorted in place); zero for an empty `v`.
pub fn percentile(v: &mut [Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}
