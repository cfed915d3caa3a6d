//! A test server for the fault-injection suite (`tests/e2e_faults_*.rs`): it runs as its own
//! process inside a network namespace (`ip netns exec NS test_peer serve ...`), so a test can
//! kill it, freeze it with SIGSTOP, restart it, or firewall it, as it would a real server.
//!
//! ```text
//! test_peer serve --listen ADDR --name NAME [--reset-after N]
//! test_peer echo-loop --listen ADDR
//! ```
//!
//! `serve` runs a thread per connection. A connection starts with `PING\n` (a health probe,
//! answered `PONG\n`) or with a 25-byte header: one mode byte, then `seed`, `len` and `arg` as
//! little-endian u64s. Modes:
//!
//! - `E` echo everything until the client's FIN, then FIN back;
//! - `Q` write `NAME\n`, then `len` bytes of stream `seed`, then close at once (FIN);
//! - `R` write `len` bytes of stream `seed`, then reset (RST);
//! - `H` hold: write `NAME\n`, wait for one byte from the client, then write `len` bytes of
//!   stream `seed` and close first (so the balancer is not the side left in TIME_WAIT).
//!
//! With `--reset-after N`, `E` and `Q` reset the connection once N bytes have been written and
//! acknowledged (`R` too, after its `len` bytes): every byte written reaches the balancer.
//!
//! `echo-loop` is a single-threaded mio echo server for many thousands of mostly idle
//! connections, where a thread per connection would cost a pid each.
//!
//! The byte streams are the harness's `pattern_fill`, from the same file (tests/common/pattern.rs).

use socket2::SockRef;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::exit;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

fn usage() -> ! {
    eprintln!(
        "usage: test_peer serve --listen ADDR --name NAME [--reset-after N]\n       test_peer echo-loop --listen ADDR"
    );
    exit(2);
}

struct Opts {
    listen: SocketAddr,
    name: String,
    reset_after: Option<u64>,
}

fn main() {
    let mut args = std::env::args().skip(1);
    let cmd = args.next().unwrap_or_else(|| usage());
    let (mut listen, mut name, mut reset_after) = (None, String::from("peer"), None);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--listen" => listen = Some(val().parse::<SocketAddr>().unwrap_or_else(|_| usage())),
            "--name" => name = val(),
            "--reset-after" => reset_after = Some(val().parse::<u64>().unwrap_or_else(|_| usage())),
            _ => usage(),
        }
    }
    let opts = Opts { listen: listen.unwrap_or_else(|| usage()), name, reset_after };
    match cmd.as_str() {
        "serve" => serve(opts),
        "echo-loop" => echo_loop(opts.listen),
        _ => usage(),
    }
}

// ------------------------------------------------------------------------------------------------
// The byte stream (the same as the harness's pattern_fill)
// ------------------------------------------------------------------------------------------------

#[path = "../tests/common/pattern.rs"]
mod pattern;
use pattern::pattern_fill;

/// Writes bytes `0..len` of stream `seed`, stopping early after `limit` bytes. Returns whether
/// the whole stream was written.
fn write_pattern(s: &mut TcpStream, seed: u64, len: u64, limit: Option<u64>) -> io::Result<bool> {
    let end = limit.map_or(len, |l| l.min(len));
    let mut buf = vec![0u8; 64 * 1024];
    let mut off = 0u64;
    while off < end {
        let n = (end - off).min(buf.len() as u64) as usize;
        pattern_fill(seed, off, &mut buf[..n]);
        s.write_all(&buf[..n])?;
        off += n as u64;
    }
    Ok(end == len)
}

// ------------------------------------------------------------------------------------------------
// serve: a thread per connection
// ------------------------------------------------------------------------------------------------

fn serve(opts: Opts) {
    let listener = TcpListener::bind(opts.listen).unwrap_or_else(|e| {
        eprintln!("test_peer: cannot listen on {}: {e}", opts.listen);
        exit(1);
    });
    println!("listening on {} as {}", listener.local_addr().expect("local_addr"), opts.name);
    let _ = io::stdout().flush();
    let opts = Arc::new(opts);
    for conn in listener.incoming() {
        match conn {
            Ok(s) => {
                let opts = Arc::clone(&opts);
                let spawned = thread::Builder::new().stack_size(256 * 1024).spawn(move || {
                    let _ = handle(s, &opts);
                });
                if let Err(e) = spawned {
                    eprintln!("test_peer: spawn: {e}");
                    thread::sleep(Duration::from_millis(10));
                }
            }
            Err(e) => {
                eprintln!("test_peer: accept: {e}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Resets the connection once the balancer acknowledged every byte written to it: a reset
/// throws away what this socket still holds, and a test that counts bytes must not count what
/// this end lost (a balancer's job is every byte that reached it). A reader that takes nothing
/// for 5 s gets the reset anyway.
fn reset(s: TcpStream) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while unacked(&s) > 0 && std::time::Instant::now() < deadline {
        thread::sleep(Duration::from_millis(1));
    }
    let _ = SockRef::from(&s).set_linger(Some(Duration::ZERO));
    drop(s);
}

/// Bytes written to `s` that the peer has not acknowledged (`SIOCOUTQ`); 0 on error.
fn unacked(s: &TcpStream) -> i32 {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // why unsafe: ioctl(SIOCOUTQ) writes one int into `n`, which we own.
    let rc = unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    if rc == 0 {
        n
    } else {
        0
    }
}

fn handle(mut s: TcpStream, opts: &Opts) -> io::Result<()> {
    let _ = s.set_nodelay(true);
    let mut mode = [0u8; 1];
    s.read_exact(&mut mode)?;
    if mode[0] == b'P' {
        let mut rest = [0u8; 4];
        s.read_exact(&mut rest)?;
        s.write_all(b"PONG\n")?;
        return Ok(());
    }
    let mut hdr = [0u8; 24];
    s.read_exact(&mut hdr)?;
    let word = |i: usize| u64::from_le_bytes(hdr[i * 8..i * 8 + 8].try_into().unwrap());
    let (seed, len) = (word(0), word(1));
    match mode[0] {
        b'E' => echo(s, opts.reset_after),
        b'Q' => {
            s.write_all(format!("{}\n", opts.name).as_bytes())?;
            if write_pattern(&mut s, seed, len, opts.reset_after)? {
                Ok(()) // dropped: close() sends FIN after the data
            } else {
                reset(s);
                Ok(())
            }
        }
        b'R' => {
            write_pattern(&mut s, seed, len, None)?;
            reset(s);
            Ok(())
        }
        b'H' => {
            s.write_all(format!("{}\n", opts.name).as_bytes())?;
            let mut go = [0u8; 1];
            if s.read(&mut go)? == 1 {
                write_pattern(&mut s, seed, len, None)?;
            }
            Ok(())
        }
        other => Err(io::Error::other(format!("unknown mode {other}"))),
    }
}

fn echo(mut s: TcpStream, reset_after: Option<u64>) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) => {
                s.shutdown(Shutdown::Write)?;
                return Ok(());
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if let Some(limit) = reset_after {
            let room = limit.saturating_sub(written) as usize;
            if n >= room {
                s.write_all(&buf[..room])?;
                reset(s);
                return Ok(());
            }
        }
        s.write_all(&buf[..n])?;
        written += n as u64;
    }
}

// ------------------------------------------------------------------------------------------------
// echo-loop: one thread, mio, for thousands of connections
// ------------------------------------------------------------------------------------------------

struct Conn {
    stream: mio::net::TcpStream,
    out: Vec<u8>,
    eof: bool,
}

/// Moves what it can; false once the connection is finished (closed or failed).
fn drive(c: &mut Conn) -> bool {
    let mut tmp = [0u8; 16 * 1024];
    loop {
        let mut progress = false;
        if !c.out.is_empty() {
            match c.stream.write(&c.out) {
                Ok(n) => {
                    c.out.drain(..n);
                    progress = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
        if !c.eof && c.out.len() < 64 * 1024 {
            match c.stream.read(&mut tmp) {
                Ok(0) => {
                    c.eof = true;
                    progress = true;
                }
                Ok(n) => {
                    c.out.extend_from_slice(&tmp[..n]);
                    progress = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
        if c.eof && c.out.is_empty() {
            let _ = c.stream.shutdown(Shutdown::Write);
            return false;
        }
        if !progress {
            return true;
        }
    }
}

fn echo_loop(listen: SocketAddr) {
    use mio::{Events, Interest, Poll, Token};
    const LISTENER: Token = Token(usize::MAX);
    let mut listener = mio::net::TcpListener::bind(listen).unwrap_or_else(|e| {
        eprintln!("test_peer: cannot listen on {listen}: {e}");
        exit(1);
    });
    println!("listening on {} (echo-loop)", listener.local_addr().expect("local_addr"));
    let _ = io::stdout().flush();
    let mut poll = Poll::new().expect("poll");
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE).expect("register listener");
    let mut conns: std::collections::HashMap<usize, Conn> = std::collections::HashMap::new();
    let mut next = 0usize;
    let mut events = Events::with_capacity(1024);
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            eprintln!("test_peer: poll: {e}");
            exit(1);
        }
        for ev in events.iter() {
            if ev.token() == LISTENER {
                loop {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            let _ = stream.set_nodelay(true);
                            let t = next;
                            next += 1;
                            if poll
                                .registry()
                                .register(&mut stream, Token(t), Interest::READABLE | Interest::WRITABLE)
                                .is_ok()
                            {
                                let mut c = Conn { stream, out: Vec::new(), eof: false };
                                if drive(&mut c) {
                                    conns.insert(t, c);
                                }
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            eprintln!("test_peer: accept: {e}");
                            break;
                        }
                    }
                }
            } else if let Some(c) = conns.get_mut(&ev.token().0) {
                if !drive(c) {
                    conns.remove(&ev.token().0);
                }
            }
        }
    }
}
