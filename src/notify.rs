//! systemd's readiness protocol (sd_notify(3)), written by hand: one datagram to the Unix socket
//! named by `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace). Without the
//! variable (not under systemd with `Type=notify`) every call does nothing.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends `state` (`READY=1`, `RELOADING=1`, `MAINPID=N`, ...; several separated by newlines).
/// Failures are logged and otherwise ignored: systemd's view is not worth stopping for.
pub fn send(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let bytes = path.as_encoded_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name),
        None => SocketAddr::from_pathname(std::path::Path::new(&path)),
    };
    let sent = addr.and_then(|addr| UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr));
    if let Err(e) = sent {
        log::warn!("sd_notify {state:?} to {}: {e}", path.to_string_lossy());
    }
}

/// `RELOADING=1` needs the time the reload started (systemd 253 and later), on the monotonic
/// clock, in microseconds.
pub fn reloading() {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    let usec = match crate::sys::monotonic_now(&mut ts) {
        Ok(()) => ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000,
        Err(_) => 0,
    };
    send(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
}
