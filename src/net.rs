//! Socket plumbing shared by workers, probes and the admin thread: listener set-up with
//! `SO_REUSEPORT`, address canonicalisation, and the few socket options we set by hand.

use crate::config::ListenAddr;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io;
use std::net::{IpAddr, SocketAddr};

/// IPv4 clients of a dual-stack `[::]` listener appear as `::ffff:a.b.c.d`; ACLs, per-source
/// limits, hashing and logs all want the plain IPv4 address.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// `canonical_ip` applied to a socket address.
pub fn canonical_addr(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical_ip(addr.ip()), addr.port())
}

/// Listen backlog: the kernel caps it at `net.core.somaxconn`.
const BACKLOG: i32 = 4096;

/// Binds one non-blocking listener. `reuse_port` lets every worker bind its own socket to the
/// same address so the kernel spreads incoming connections over the workers.
pub fn bind_listener(addr: &ListenAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    let sa = addr.socket_addr();
    let socket = Socket::new(Domain::for_address(sa), Type::STREAM, Some(Protocol::TCP))?;
    if sa.is_ipv6() {
        // `*:port` is one dual-stack socket; an explicit `[::]:port` is IPv6 only, like nginx.
        socket.set_only_v6(!matches!(addr, ListenAddr::Any(_)))?;
    }
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    // Accepted sockets inherit TCP_NODELAY from the listener: one setsockopt per listener
    // instead of one per connection.
    socket.set_tcp_nodelay(true)?;
    socket.bind(&SockAddr::from(sa))?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Makes the next `close()` send RST instead of FIN: used to pass an abort on to the other
/// peer and to shed connections we refuse without leaving TIME_WAIT behind.
pub fn set_linger_zero(socket: &impl std::os::fd::AsFd) {
    // why ignore errors: only EBADF/ENOTSOCK are possible, and callers hold a live TCP socket.
    let _ = socket2::SockRef::from(socket).set_linger(Some(std::time::Duration::ZERO));
}

/// Number of open descriptors of this process (for metrics and tests).
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count().saturating_sub(1)).unwrap_or(0)
}

/// True for the accept errors that mean "out of descriptors or memory": accepting must pause,
/// not spin, and resume later.
pub fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}
