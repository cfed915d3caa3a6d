//! A peer that resets right after shunt acknowledged every byte it sent: the other peer, reading
//! slowly through a small receive buffer, still gets every one of those bytes and then the
//! reset (never a clean end), and shunt's log line counts exactly what it delivered.
//!
//! Both directions (a server that resets under a slow client, a client that resets under a
//! slow server), sizes around shunt's buffers (16 KiB copy buffer, 256 KiB pipe), the kernel's
//! socket buffers and 8 MB, with splice on, off and always.

mod common;

use common::*;
use socket2::{Domain, SockRef, Socket, Type};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The slow reader's pinned `SO_RCVBUF` (the kernel doubles it for its bookkeeping).
const READER_RCVBUF: usize = 16 * 1024;
const KIB: u64 = 1024;
/// 0 and 1; the copy buffer (16 KiB) and the reader's doubled receive buffer (32 KiB) ± 1; 64
/// KiB (the default pipe); the 256 KiB pipe ± 1; the default socket receive buffer (128 KiB);
/// and 8 MB, more than any one buffer on the way holds.
const SIZES: &[u64] = &[
    0,
    1,
    16 * KIB - 1,
    16 * KIB,
    16 * KIB + 1,
    32 * KIB,
    64 * KIB,
    128 * KIB,
    256 * KIB - 1,
    256 * KIB,
    256 * KIB + 1,
    1_000_000,
    8_000_000,
];
/// Up to this size the reader reads nothing until the writer has reset, so everything is still
/// in shunt (and the kernels' buffers) when the reset comes. Larger transfers do not fit there:
/// the reader then reads slowly from the start, and the reset finds shunt holding megabytes.
const STILL_READER_MAX: u64 = 1_000_000;
/// The slow reader's pace: at most one read of `SLOW_READ` bytes per `SLOW_PAUSE`.
const SLOW_READ: usize = 64 * 1024;
const SLOW_PAUSE: Duration = Duration::from_millis(5);
/// How long a writer may wait for shunt to acknowledge everything it sent.
const ACK_WAIT: Duration = Duration::from_secs(30);
const T: Duration = Duration::from_secs(30);
const HEADER: usize = 17;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Resetter {
    /// The server sends `len` bytes to a slow client, then resets.
    Server,
    /// The client sends `len` bytes to a slow server, then resets.
    Client,
}

/// `mode, seed, len` as the server reads them first.
fn header(who: Resetter, seed: u64, len: u64) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[0] = if who == Resetter::Server { b'S' } else { b'C' };
    h[1..9].copy_from_slice(&seed.to_le_bytes());
    h[9..17].copy_from_slice(&len.to_le_bytes());
    h
}

/// Bytes this socket sent that its peer has not acknowledged yet (`SIOCOUTQ`).
fn unacked(s: &TcpStream) -> usize {
    let mut n: libc::c_int = 0;
    // why unsafe: ioctl(SIOCOUTQ) writes one int into `n`.
    let rc = unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    assert_eq!(rc, 0, "ioctl(SIOCOUTQ): {}", io::Error::last_os_error());
    n as usize
}

/// Writes `len` bytes of stream `seed`, waits until the peer (shunt) acknowledged all of them,
/// then resets the connection.
fn send_then_reset(mut s: TcpStream, seed: u64, len: u64) -> Result<(), String> {
    write_pattern(&mut s, seed, len).map_err(|e| format!("write: {e}"))?;
    let deadline = Instant::now() + ACK_WAIT;
    while unacked(&s) > 0 {
        if Instant::now() > deadline {
            return Err(format!("shunt did not acknowledge the last {} bytes in {ACK_WAIT:?}", unacked(&s)));
        }
        thread::sleep(Duration::from_millis(2));
    }
    SockRef::from(&s).set_linger(Some(Duration::ZERO)).unwrap();
    drop(s);
    Ok(())
}

/// Reads exactly `len` bytes of stream `seed`, then requires a reset: a clean EOF means the
/// abort was hidden, fewer bytes mean some were lost.
fn expect_pattern_then_reset(s: &mut TcpStream, seed: u64, len: u64) -> Result<(), String> {
    let mut got = vec![0u8; SLOW_READ];
    let mut want = vec![0u8; SLOW_READ];
    let mut off = 0u64;
    loop {
        if len > STILL_READER_MAX {
            thread::sleep(SLOW_PAUSE);
        }
        match s.read(&mut got) {
            Ok(0) => return Err(format!("clean EOF after {off} of {len} bytes: the reset was hidden")),
            Ok(n) => {
                if off + n as u64 > len {
                    return Err(format!("more than the {len} bytes sent"));
                }
                pattern_fill(seed, off, &mut want[..n]);
                if got[..n] != want[..n] {
                    return Err(format!("byte {} differs", off + (0..n).find(|&i| got[i] != want[i]).unwrap() as u64));
                }
                off += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset && off == len => return Ok(()),
            Err(e) => return Err(format!("{e} after {off} of {len} bytes")),
        }
    }
}

/// Outcomes keyed by seed, for the side of a case that runs in the server's threads; also the
/// "the client has reset" flags the slow server waits for before it reads.
#[derive(Default)]
struct Board {
    state: Mutex<HashMap<u64, Result<(), String>>>,
    changed: Condvar,
}

impl Board {
    fn post(&self, key: u64, outcome: Result<(), String>) {
        self.state.lock().unwrap().insert(key, outcome);
        self.changed.notify_all();
    }

    fn take(&self, key: u64) -> Result<(), String> {
        let deadline = Instant::now() + T;
        let mut state = self.state.lock().unwrap();
        loop {
            if let Some(outcome) = state.remove(&key) {
                return outcome;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("no outcome for case {key} in {T:?}"));
            }
            state = self.changed.wait_timeout(state, left).unwrap().0;
        }
    }
}

/// Seeds the client posts under when it has reset (the server's cue to start reading).
const CLIENT_RESET: u64 = 1 << 63;

/// The test's server: a listener with a small receive buffer (inherited by accepted sockets,
/// so the slow-server case has a small window from the handshake on).
fn start_server(board: Arc<Board>) -> SocketAddr {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(READER_RCVBUF).unwrap();
    socket.set_reuse_address(true).unwrap();
    socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
    socket.listen(128).unwrap();
    let listener: TcpListener = socket.into();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let board = board.clone();
            thread::spawn(move || serve(conn, &board));
        }
    });
    addr
}

fn serve(mut s: TcpStream, board: &Board) {
    s.set_read_timeout(Some(T)).unwrap();
    let mut h = [0u8; HEADER];
    if s.read_exact(&mut h).is_err() {
        return;
    }
    let seed = u64::from_le_bytes(h[1..9].try_into().unwrap());
    let len = u64::from_le_bytes(h[9..17].try_into().unwrap());
    let outcome = match h[0] {
        b'S' => send_then_reset(s, seed, len),
        _ if len > STILL_READER_MAX => expect_pattern_then_reset(&mut s, seed, len),
        _ => {
            // Read nothing more until the client has reset: everything it sent sits in shunt.
            match board.take(seed | CLIENT_RESET) {
                Ok(()) => expect_pattern_then_reset(&mut s, seed, len),
                Err(e) => Err(e),
            }
        }
    };
    board.post(seed, outcome);
}

/// One case: a fresh session through shunt at `addr`; returns what went wrong, if anything.
fn run_case(
    shunt: &Mutex<Shunt>,
    addr: SocketAddr,
    board: &Board,
    who: Resetter,
    seed: u64,
    len: u64,
) -> Result<(), String> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    if who == Resetter::Server {
        socket.set_recv_buffer_size(READER_RCVBUF).unwrap();
    }
    socket.connect_timeout(&addr.into(), T).map_err(|e| e.to_string())?;
    let mut c: TcpStream = socket.into();
    c.set_read_timeout(Some(T)).unwrap();
    let me = c.local_addr().unwrap();
    c.write_all(&header(who, seed, len)).map_err(|e| e.to_string())?;
    match who {
        Resetter::Server if len > STILL_READER_MAX => {
            expect_pattern_then_reset(&mut c, seed, len)?;
            board.take(seed)?;
        }
        Resetter::Server => {
            // The server writes and resets while this client reads nothing.
            board.take(seed)?;
            expect_pattern_then_reset(&mut c, seed, len)?;
        }
        Resetter::Client => {
            send_then_reset(c, seed, len)?;
            if len <= STILL_READER_MAX {
                board.post(seed | CLIENT_RESET, Ok(()));
            }
            board.take(seed)?;
        }
    }
    // The log line counts what was delivered: the header plus, one way, every byte.
    let needle = format!("{me} ");
    let line = shunt.lock().unwrap().wait_log(&needle, T);
    let (code, up, down) = match who {
        Resetter::Server => ("SD", HEADER as u64, len),
        Resetter::Client => ("CD", HEADER as u64 + len, 0),
    };
    let ok = line.contains(&format!(" {code} ")) && field(&line, "up=") == up && field(&line, "down=") == down;
    if !ok {
        return Err(format!("log line {line:?}, expected {code} up={up} down={down}"));
    }
    Ok(())
}

fn peer_reset_delivers_every_acknowledged_byte(splice: &str) {
    let board = Arc::new(Board::default());
    let server = start_server(board.clone());
    let conf = format!("log info\nservice s\n  bind 127.0.0.1:0\n  server b {server}\n  splice {splice}\n");
    let shunt = start_shunt(&conf);
    let addr = shunt.addr("s");
    let shunt = Mutex::new(shunt);
    let failures: Vec<String> = thread::scope(|scope| {
        let runs: Vec<_> = [Resetter::Server, Resetter::Client]
            .into_iter()
            .map(|who| {
                let (shunt, board) = (&shunt, &board);
                scope.spawn(move || {
                    let mut failed = Vec::new();
                    for (i, &len) in SIZES.iter().enumerate() {
                        let seed = (who as u64) << 32 | i as u64;
                        if let Err(e) = run_case(shunt, addr, board, who, seed, len) {
                            failed.push(format!("{who:?} resets after {len} bytes: {e}"));
                        }
                    }
                    failed
                })
            })
            .collect();
        runs.into_iter().flat_map(|r| r.join().unwrap()).collect()
    });
    let shunt = shunt.into_inner().unwrap();
    assert!(failures.is_empty(), "splice {splice}:\n{}\nshunt log:\n{}", failures.join("\n"), shunt.log());
}

#[test]
fn peer_reset_delivers_every_acknowledged_byte_splice_on() {
    peer_reset_delivers_every_acknowledged_byte("on");
}

#[test]
fn peer_reset_delivers_every_acknowledged_byte_splice_off() {
    peer_reset_delivers_every_acknowledged_byte("off");
}

#[test]
fn peer_reset_delivers_every_acknowledged_byte_splice_always() {
    peer_reset_delivers_every_acknowledged_byte("always");
}
