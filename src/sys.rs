//! The system calls the standard library, mio and socket2 do not wrap: splice(2) through pipes,
//! reads and sends on borrowed descriptors, `SIOCOUTQ`, and the descriptor limit. This is the
//! only module with `unsafe`; every block says why it is sound. Everything else in the crate
//! talks to the kernel through these safe functions.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Turns a `-1` return into the thread's `errno`.
fn cvt(n: isize) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// A non-blocking, close-on-exec pipe: `(read end, write end)`.
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array we own; on success both are open
    // and owned by nobody else, so wrapping each in an OwnedFd (which closes it) is sound.
    unsafe {
        if libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])))
    }
}

/// Asks for a pipe of `size` bytes and returns the size it really has: past
/// `fs.pipe-user-pages-soft` an unprivileged user's pipes get one or two pages whatever it asks.
pub(crate) fn set_pipe_size(pipe: BorrowedFd<'_>, size: usize) -> io::Result<usize> {
    let want = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
    // SAFETY: fcntl on a descriptor the caller keeps open for the call; no memory is passed.
    let set = unsafe { libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, want) };
    if set >= 0 {
        return Ok(set as usize);
    }
    // SAFETY: as above.
    let got = unsafe { libc::fcntl(pipe.as_raw_fd(), libc::F_GETPIPE_SZ) };
    cvt(got as isize)
}

/// Moves up to `len` bytes from `from` to `to` without copying them through userspace; one of
/// the two must be a pipe. Never blocks.
pub(crate) fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    // SAFETY: splice(2) between two descriptors the caller keeps open; null offsets (both are
    // streams) and no user memory involved.
    let n = unsafe {
        libc::splice(
            from.as_raw_fd(),
            std::ptr::null_mut(),
            to.as_raw_fd(),
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    cvt(n)
}

/// read(2) into `buf`.
pub(crate) fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the kernel writes at most `buf.len()` bytes into memory we borrow mutably.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    cvt(n)
}

/// send(2) of `buf` with `MSG_NOSIGNAL`: a closed peer is an `EPIPE` error for this socket, not
/// a process-wide SIGPIPE.
pub(crate) fn send(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: the kernel reads at most `buf.len()` bytes from memory we borrow.
    let n = unsafe { libc::send(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) };
    cvt(n)
}

/// Bytes written to a TCP socket that its peer has not acknowledged yet (`SIOCOUTQ`, tcp(7)):
/// what a close with `SO_LINGER` 0 would throw away.
pub(crate) fn unacked(socket: BorrowedFd<'_>) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: ioctl(SIOCOUTQ) writes one int into `n`, which we own.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n.max(0) as usize)
}

/// The soft and hard `RLIMIT_NOFILE`.
fn nofile() -> Option<libc::rlimit> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit fills a struct we own.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0).then_some(lim)
}

/// The soft descriptor limit, if it is finite.
pub(crate) fn fd_limit() -> Option<usize> {
    nofile().filter(|l| l.rlim_cur != libc::RLIM_INFINITY).map(|l| l.rlim_cur as usize)
}

/// Raises the soft descriptor limit to the hard one (every proxied connection costs two or
/// more). Returns the soft limit in force afterwards.
pub fn raise_fd_limit() -> Option<usize> {
    if let Some(mut lim) = nofile().filter(|l| l.rlim_cur < l.rlim_max) {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit reads a struct we own. Failure leaves the old limit, which is fine.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    }
    fd_limit()
}
