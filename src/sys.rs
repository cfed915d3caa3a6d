//! The system calls the standard library, mio and socket2 do not wrap: splice(2) through pipes,
//! reads and sends on borrowed descriptors, `SIOCOUTQ`, `TCP_DEFER_ACCEPT`, `SO_RCVLOWAT`, and
//! the descriptor limit. This is the
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

/// recv(2) with `MSG_PEEK`: copies what the socket holds into `buf` and leaves it there, for the
/// next read (or splice) to take.
pub(crate) fn peek(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the kernel writes at most `buf.len()` bytes into memory we borrow mutably.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_PEEK) };
    cvt(n)
}

/// send(2) of `buf` with `MSG_NOSIGNAL`: a closed peer is an `EPIPE` error for this socket, not
/// a process-wide SIGPIPE.
pub(crate) fn send(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: the kernel reads at most `buf.len()` bytes from memory we borrow.
    let n = unsafe { libc::send(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) };
    cvt(n)
}

/// `SO_RCVLOWAT`: epoll reports the socket readable only once `bytes` are queued (or at the
/// peer's FIN, under memory pressure, or with the receive window nearly closed); 1 is the
/// default, any byte.
pub(crate) fn set_rcvlowat(socket: BorrowedFd<'_>, bytes: usize) -> io::Result<()> {
    set_int_option(socket, libc::SOL_SOCKET, libc::SO_RCVLOWAT, bytes)
}

/// `TCP_DEFER_ACCEPT` on a listening socket: `seconds` > 0 has the kernel hand over a connection
/// only once the client's first bytes arrived (or, for a client that says nothing, once that
/// long has passed and a retransmitted SYN-ACK was answered); 0 turns it off.
pub(crate) fn set_defer_accept(listener: BorrowedFd<'_>, seconds: u32) -> io::Result<()> {
    set_int_option(listener, libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT, seconds as usize)
}

/// An integer socket option socket2 does not wrap (capped at `c_int::MAX`).
fn set_int_option(socket: BorrowedFd<'_>, level: libc::c_int, name: libc::c_int, value: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(value).unwrap_or(libc::c_int::MAX);
    // SAFETY: setsockopt reads exactly size_of::<c_int>() bytes from a live local; the
    // descriptor is borrowed, so it stays open for the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    cvt(rc as isize).map(drop)
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

/// The capacity of a pipe (`F_GETPIPE_SZ`).
pub(crate) fn pipe_size(pipe: BorrowedFd<'_>) -> io::Result<usize> {
    // SAFETY: fcntl on a descriptor the caller keeps open for the call; no memory is passed.
    let n = unsafe { libc::fcntl(pipe.as_raw_fd(), libc::F_GETPIPE_SZ) };
    cvt(n as isize)
}

/// Lets `fd` survive an `exec` (clears `FD_CLOEXEC`): how the upgrade socket reaches the new
/// process.
pub(crate) fn keep_across_exec(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fcntl(F_SETFD) on a descriptor the caller keeps open; no memory is passed.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, 0) };
    cvt(rc as isize).map(|_| ())
}

/// The most descriptors one message carries (the kernel's `SCM_MAX_FD` is 253).
pub(crate) const MAX_FDS_PER_MESSAGE: usize = 250;

/// Sends all of `bytes` on a Unix stream socket, with `fds` attached to its first byte
/// (`SCM_RIGHTS`, unix(7)): the receiver gets its own descriptors for the same open files.
pub(crate) fn send_with_fds(socket: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    assert!(fds.len() <= MAX_FDS_PER_MESSAGE, "too many descriptors for one message");
    let raw: Vec<libc::c_int> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let payload = std::mem::size_of_val(raw.as_slice()) as u32;
    // SAFETY: CMSG_SPACE is a pure computation on a length.
    let space = unsafe { libc::CMSG_SPACE(payload) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)]; // u64s: cmsghdr alignment
    let mut sent = 0;
    while sent < bytes.len() {
        let mut iov =
            libc::iovec { iov_base: bytes[sent..].as_ptr() as *mut libc::c_void, iov_len: bytes.len() - sent };
        // SAFETY: an all-zero msghdr is a valid empty one; every pointer set below points into
        // memory (`iov`, `control`) that outlives the sendmsg call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if sent == 0 && !raw.is_empty() {
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            // SAFETY: `control` holds CMSG_SPACE(payload) bytes, so the first header and its
            // data (`raw`, `payload` bytes) fit; CMSG_FIRSTHDR/CMSG_DATA point inside it.
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                (*cmsg).cmsg_level = libc::SOL_SOCKET;
                (*cmsg).cmsg_type = libc::SCM_RIGHTS;
                (*cmsg).cmsg_len = libc::CMSG_LEN(payload) as _;
                std::ptr::copy_nonoverlapping(raw.as_ptr().cast::<u8>(), libc::CMSG_DATA(cmsg), payload as usize);
            }
        }
        // SAFETY: `msg` is fully initialised above and refers to live buffers.
        let n = unsafe { libc::sendmsg(socket.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        match cvt(n) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Receives up to `buf.len()` bytes from a Unix stream socket and the descriptors attached to
/// them (close-on-exec). `(0, [])` at EOF.
pub(crate) fn recv_with_fds(socket: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let payload = (MAX_FDS_PER_MESSAGE * std::mem::size_of::<libc::c_int>()) as u32;
    // SAFETY: CMSG_SPACE is a pure computation on a length.
    let space = unsafe { libc::CMSG_SPACE(payload) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: as in `send_with_fds`; the kernel writes at most `iov_len` bytes into `buf` and
    // `msg_controllen` bytes into `control`.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    let n = loop {
        // SAFETY: `msg` points at live, writable buffers of the sizes it states.
        let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        match cvt(n) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => break other?,
        }
    };
    let mut fds = Vec::new();
    // SAFETY: the kernel filled `msg_control` with `msg_controllen` bytes of well-formed
    // headers; CMSG_FIRSTHDR/CMSG_NXTHDR walk them and stop at the end. Each SCM_RIGHTS
    // descriptor is new in this process and owned by nobody else, so OwnedFd may close it.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let len = (*cmsg).cmsg_len as usize - (data as usize - cmsg as usize);
                for i in 0..len / std::mem::size_of::<libc::c_int>() {
                    let fd = std::ptr::read_unaligned(data.cast::<libc::c_int>().add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other("descriptors were lost: the control buffer was too small"));
    }
    Ok((n, fds))
}

/// The monotonic clock, as `CLOCK_MONOTONIC` (what systemd's `MONOTONIC_USEC` is read against).
pub(crate) fn monotonic_now(ts: &mut libc::timespec) -> io::Result<()> {
    // SAFETY: clock_gettime writes one timespec we borrow mutably.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, ts) };
    cvt(rc as isize).map(|_| ())
}

/// Takes ownership of a descriptor this process inherited and was told the number of (the
/// upgrade socket named by `SHUNT_UPGRADE_FD`). Refuses stdio and descriptors that are not
/// open.
pub fn inherited_fd(raw: i32) -> io::Result<OwnedFd> {
    if raw <= 2 {
        return Err(io::Error::other(format!("descriptor {raw} is stdio, not an upgrade socket")));
    }
    // SAFETY: fcntl(F_GETFD) only asks whether `raw` is open; no memory is passed.
    if unsafe { libc::fcntl(raw, libc::F_GETFD) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is open (checked above), was inherited for this purpose, and nothing else in
    // this process refers to it: OwnedFd becomes its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Waits up to `ms` milliseconds for `fd` to be readable (poll(2)); for tests that need a
/// readiness check rather than a sleep.
#[cfg(test)]
pub(crate) fn wait_readable(fd: BorrowedFd<'_>, ms: i32) -> io::Result<bool> {
    let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: poll(2) on one pollfd we own, for a descriptor the caller keeps open.
    let n = unsafe { libc::poll(&mut p, 1, ms) };
    cvt(n as isize).map(|n| n == 1)
}

/// A user's ids from the password database (`getpwnam_r`): `Ok(None)` when there is no such user.
pub(crate) fn user_ids(name: &str) -> io::Result<Option<(u32, u32)>> {
    let c_name = std::ffi::CString::new(name).map_err(|_| io::Error::other("a user name with a NUL byte"))?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    loop {
        // SAFETY: an all-zero passwd is a valid value to be overwritten; getpwnam_r writes the
        // entry into `pwd` and its strings into `buf` (both ours, `buf.len()` bytes at most),
        // and `found` points at `pwd` or is null. Only the two integers are read after.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        let rc = unsafe { libc::getpwnam_r(c_name.as_ptr(), &mut pwd, buf.as_mut_ptr(), buf.len(), &mut found) };
        match rc {
            0 if found.is_null() => return Ok(None),
            0 => return Ok(Some((pwd.pw_uid, pwd.pw_gid))),
            libc::ERANGE if buf.len() < 1 << 20 => buf.resize(buf.len() * 4, 0),
            // "Not found" comes back as one of these errors from some NSS modules.
            libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM => return Ok(None),
            errno => return Err(io::Error::from_raw_os_error(errno)),
        }
    }
}

/// Becomes `uid`/`gid` for good: the supplementary groups become `gid` alone, then the group,
/// then the user (real, effective and saved ids, for every thread: glibc applies set*id to the
/// whole process).
pub(crate) fn set_identity(uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: setgroups reads one gid_t from memory we own; setgid/setuid take integers.
    unsafe {
        if libc::setgroups(1, &gid) != 0 || libc::setgid(gid) != 0 || libc::setuid(uid) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The process's (real, effective, saved) user ids and (real, effective, saved) group ids.
pub(crate) fn identity() -> ([u32; 3], [u32; 3]) {
    let (mut u, mut g) = ([0u32; 3], [0u32; 3]);
    // SAFETY: getresuid/getresgid write three ids each into arrays we own; they cannot fail
    // with valid pointers.
    unsafe {
        libc::getresuid(&mut u[0], &mut u[1], &mut u[2]);
        libc::getresgid(&mut g[0], &mut g[1], &mut g[2]);
    }
    (u, g)
}

/// Whether the process can become root again (`setuid(0)` succeeds; it is undone at once).
pub(crate) fn can_regain_root() -> bool {
    // SAFETY: setuid/seteuid take integers; on success the effective id is put back.
    unsafe {
        let before = libc::geteuid();
        if libc::setuid(0) == 0 {
            libc::seteuid(before);
            return true;
        }
    }
    false
}
