//! Ports for programs that must be told theirs before they start.
//!
//! shunt itself never needs this: the harness gives it `127.0.0.1:0` and reads the bound address
//! from its start-up lines ([`crate::common::Shunt::addr`]). Some peers cannot bind port 0 (nginx
//! refuses `listen 127.0.0.1:0`, and a script must know its backends' ports to write a conf).
//! For those, [`on_free_port`] picks a port that was free a moment ago and, because another
//! process can take it before the peer binds it, starts again on another port when the start
//! failed with "address in use". That retry lives here once, so no caller races.

use std::net::TcpListener;

/// How many ports [`on_free_port`] tries before it gives up.
pub const PORT_TRIES: usize = 5;

/// A port that was free a moment ago. Racy on its own: use it only through [`on_free_port`].
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// What one start on a chosen port came to.
pub enum Bound<T> {
    /// Started and listening on the port.
    Up(T),
    /// The port was taken by the time the program bound it (EADDRINUSE): try another.
    InUse,
}

/// Runs `start` on a free port, and again on another one each time it reports [`Bound::InUse`];
/// panics after [`PORT_TRIES`] attempts. `start` panics itself on any other failure.
pub fn on_free_port<T>(what: &str, mut start: impl FnMut(u16) -> Bound<T>) -> T {
    let mut taken = Vec::new();
    for _ in 0..PORT_TRIES {
        let port = free_port();
        match start(port) {
            Bound::Up(t) => return t,
            Bound::InUse => {
                eprintln!("[harness] {what}: port {port} was taken before it bound it; trying another");
                taken.push(port);
            }
        }
    }
    panic!("{what}: every port tried was in use by the time it bound it: {taken:?}");
}

/// Whether a program's error output says its bind failed because the address was taken.
pub fn says_addr_in_use(text: &str) -> bool {
    text.contains("Address already in use") || text.contains("os error 98") || text.contains("EADDRINUSE")
}
