//! Plain TCP clients with the harness's defaults: every socket gets [`IO_TIMEOUT`] on reads and
//! writes, so a test that waits for bytes that never come fails instead of hanging.

use super::wait::resolve;
use socket2::{Domain, SockRef, Socket};
use std::io::Read;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Read/write timeout on client sockets the harness makes.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects with a timeout and sets [`IO_TIMEOUT`] on reads and writes.
pub fn connect(addr: impl ToSocketAddrs) -> TcpStream {
    let addr = resolve(addr);
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

/// [`connect`] with `SO_RCVBUF` pinned to `bytes` before the connect, so the advertised window
/// is small from the handshake on (a slow or non-reading client that the kernel cannot hide).
pub fn connect_rcvbuf(addr: SocketAddr, bytes: usize) -> TcpStream {
    let s = Socket::new(Domain::for_address(addr), socket2::Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(bytes).unwrap();
    s.connect_timeout(&addr.into(), IO_TIMEOUT).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

/// Everything `s` sends until EOF; panics on an error.
pub fn read_all(s: &mut TcpStream) -> Vec<u8> {
    let mut v = Vec::new();
    s.read_to_end(&mut v).unwrap_or_else(|e| panic!("read to EOF: {e}"));
    v
}

/// Sets `SO_LINGER` 0, so that closing `s` sends a reset instead of a FIN.
pub fn set_linger_zero(s: &TcpStream) {
    SockRef::from(s).set_linger(Some(Duration::ZERO)).unwrap();
}

/// Closes `s` with a reset (RST) instead of a FIN.
pub fn abort(s: TcpStream) {
    let _ = SockRef::from(&s).set_linger(Some(Duration::ZERO));
    drop(s);
}

/// Connects from source address `from` (any port): the whole of 127.0.0.0/8 is local, so tests
/// can play many clients. The connect itself may fail (a refusal); reads and writes get
/// [`IO_TIMEOUT`].
pub fn connect_from(from: std::net::IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = Socket::new(Domain::for_address(addr), socket2::Type::STREAM, None)?;
    s.bind(&SocketAddr::new(from, 0).into())?;
    s.connect_timeout(&addr.into(), IO_TIMEOUT)?;
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(s)
}

/// `127.0.0.n`: one of the many local source addresses tests play clients from.
pub fn loopback(n: u8) -> std::net::IpAddr {
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, n))
}

/// A connection from `from` that an echo server answered through the balancer (5 bytes sent
/// and read back), still open; `None` if it was refused (a reset at connect or at the read).
pub fn echoed_from(from: std::net::IpAddr, addr: SocketAddr) -> Option<TcpStream> {
    use std::io::Write;
    let mut c = connect_from(from, addr).ok()?;
    let mut back = [0u8; 5];
    (c.write_all(b"hello").is_ok() && c.read_exact(&mut back).is_ok() && &back == b"hello").then_some(c)
}

/// Reads (and discards) until the peer closes (EOF or reset): how long that took, or `None`
/// after `limit`.
pub fn closed_within(s: &mut TcpStream, limit: std::time::Duration) -> Option<std::time::Duration> {
    use std::io::{ErrorKind, Read};
    let start = std::time::Instant::now();
    s.set_read_timeout(Some(std::time::Duration::from_millis(100))).unwrap();
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}
