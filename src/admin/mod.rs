//! The admin HTTP endpoint: its own thread and `mio::Poll`, so a slow or hostile admin client
//! never touches the workers. Requests are parsed with `httparse`, bounded in size and in total
//! read time (a deadline that does not move per byte), and every response closes the
//! connection. When the connection table is full the oldest connection still sending its
//! request is dropped, so stalled clients cannot lock operators out.

mod json;
mod page;
pub mod prometheus;
mod request;
mod routes;

pub use json::string as json_string;
pub use request::{parse_head, Head, ParsedHead, MAX_REQUEST};
pub use routes::{constant_time_eq, Context};

use log::debug;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use routes::{Request, Response};
use slab::Slab;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX);
/// The whole request must arrive within this time, however slowly it trickles.
const READ_DEADLINE: Duration = Duration::from_secs(5);
const WRITE_DEADLINE: Duration = Duration::from_secs(10);
/// Admin connections open at once; past it the oldest one still reading is dropped.
pub(crate) const MAX_CONNECTIONS: usize = 256;

enum Stage {
    Reading,
    Writing { out: Vec<u8>, sent: usize },
}

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    stage: Stage,
    accepted: Instant,
    deadline: Instant,
}

/// The running endpoint; dropping it does not stop it, `stop` does.
pub struct AdminHandle {
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl AdminHandle {
    /// Asks the thread to stop after the request it is answering, without waiting for it (the
    /// caller may be that very thread: `POST /upgrade`).
    pub fn signal_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.waker.wake();
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts serving on an already bound listener.
pub fn spawn(listener: std::net::TcpListener, ctx: Context) -> io::Result<AdminHandle> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let mut listener = TcpListener::from_std(listener);
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    let stop = Arc::new(AtomicBool::new(false));
    let server = Server { poll, listener, ctx, conns: Slab::new(), stop: Arc::clone(&stop) };
    let thread = std::thread::Builder::new().name("shunt-admin".into()).spawn(move || server.run())?;
    Ok(AdminHandle { waker, stop, thread: Some(thread) })
}

struct Server {
    poll: Poll,
    listener: TcpListener,
    ctx: Context,
    conns: Slab<Conn>,
    stop: Arc<AtomicBool>,
}

impl Server {
    fn run(mut self) {
        let mut events = Events::with_capacity(256);
        while !self.stop.load(Ordering::Relaxed) {
            let timeout =
                self.conns.iter().map(|(_, c)| c.deadline).min().map(|d| d.saturating_duration_since(Instant::now()));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("admin: poll failed: {e}");
                    return;
                }
                continue;
            }
            for event in events.iter() {
                match event.token() {
                    WAKER => {}
                    LISTENER => self.accept(),
                    Token(key) => self.advance(key),
                }
            }
            self.expire(Instant::now());
        }
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, peer)) => {
                    if self.conns.len() >= MAX_CONNECTIONS {
                        self.evict_oldest_reader();
                    }
                    let now = Instant::now();
                    let entry = self.conns.vacant_entry();
                    let key = entry.key();
                    if self
                        .poll
                        .registry()
                        .register(&mut stream, Token(key), Interest::READABLE | Interest::WRITABLE)
                        .is_err()
                    {
                        continue;
                    }
                    debug!("admin: connection from {peer}");
                    entry.insert(Conn {
                        stream,
                        buf: Vec::new(),
                        stage: Stage::Reading,
                        accepted: now,
                        deadline: now + READ_DEADLINE,
                    });
                    self.advance(key);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if crate::net::is_resource_exhaustion(&e) => {
                    crate::logs::limited_warn("admin-accept", format_args!("admin: accept: {e}"));
                    return;
                }
                Err(_) => {}
            }
        }
    }

    fn evict_oldest_reader(&mut self) {
        let oldest =
            self.conns.iter().filter(|(_, c)| matches!(c.stage, Stage::Reading)).min_by_key(|(_, c)| c.accepted);
        let key = match oldest {
            Some((k, _)) => k,
            None => match self.conns.iter().min_by_key(|(_, c)| c.accepted) {
                Some((k, _)) => k,
                None => return,
            },
        };
        self.close(key);
    }

    fn close(&mut self, key: usize) {
        if self.conns.contains(key) {
            let mut c = self.conns.remove(key);
            let _ = self.poll.registry().deregister(&mut c.stream);
        }
    }

    fn expire(&mut self, now: Instant) {
        let late: Vec<(usize, bool)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(k, c)| (k, matches!(c.stage, Stage::Reading)))
            .collect();
        for (key, reading) in late {
            if reading {
                // One non-blocking attempt to say why; the connection is closed either way.
                let msg = Response::text(408, "request not received in time").serialize(false);
                let _ = self.conns[key].stream.write(&msg);
            }
            self.close(key);
        }
    }

    /// Reads what arrived, answers when the request is whole, writes what is pending.
    fn advance(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        if matches!(conn.stage, Stage::Reading) {
            match read_request(conn) {
                ReadOutcome::Closed => {
                    self.close(key);
                    return;
                }
                ReadOutcome::TooLarge => self.respond(key, Response::text(431, "request too large"), false),
                // A client may send its request and its FIN together (`printf ... | nc -N`):
                // the request still gets its answer, which can be written after the FIN.
                ReadOutcome::Eof => match parse(&conn.buf, &self.ctx) {
                    Parsed::Incomplete => {
                        self.close(key);
                        return;
                    }
                    Parsed::Done(resp, head_only) => self.respond(key, resp, head_only),
                },
                ReadOutcome::More => match parse(&conn.buf, &self.ctx) {
                    Parsed::Incomplete => return,
                    Parsed::Done(resp, head_only) => self.respond(key, resp, head_only),
                },
            }
        }
        self.flush(key);
    }

    fn respond(&mut self, key: usize, resp: Response, head_only: bool) {
        if let Some(conn) = self.conns.get_mut(key) {
            conn.stage = Stage::Writing { out: resp.serialize(head_only), sent: 0 };
            conn.deadline = Instant::now() + WRITE_DEADLINE;
        }
    }

    fn flush(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        let Stage::Writing { out, sent } = &mut conn.stage else { return };
        while *sent < out.len() {
            match conn.stream.write(&out[*sent..]) {
                Ok(n) => *sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let _ = conn.stream.shutdown(std::net::Shutdown::Write);
        self.close(key);
    }
}

enum ReadOutcome {
    /// The peer failed, or closed before sending anything.
    Closed,
    /// The peer finished sending (FIN) after some bytes: they may be a whole request.
    Eof,
    /// More than `MAX_REQUEST` bytes arrived.
    TooLarge,
    /// Read until WouldBlock; the buffer may hold a whole request.
    More,
}

fn read_request(conn: &mut Conn) -> ReadOutcome {
    let mut chunk = [0u8; 4096];
    loop {
        match conn.stream.read(&mut chunk) {
            Ok(0) if conn.buf.is_empty() => return ReadOutcome::Closed,
            Ok(0) => return ReadOutcome::Eof,
            Ok(n) if conn.buf.len() + n > MAX_REQUEST => return ReadOutcome::TooLarge,
            Ok(n) => conn.buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ReadOutcome::More,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return ReadOutcome::Closed,
        }
    }
}

enum Parsed {
    Incomplete,
    /// The response, and whether only its head is wanted (HEAD).
    Done(Response, bool),
}

fn parse(buf: &[u8], ctx: &Context) -> Parsed {
    match parse_head(buf) {
        ParsedHead::Incomplete => Parsed::Incomplete,
        ParsedHead::Refuse(status, message) => Parsed::Done(Response::text(status, message), false),
        ParsedHead::Request(Head { method, path, query, authorization, .. }) => {
            let resp = routes::route(ctx, &Request { method, path, query, authorization });
            Parsed::Done(resp, method == "HEAD")
        }
    }
}
