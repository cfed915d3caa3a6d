//! Waiting for a state instead of sleeping: every wait polls a condition and fails with a message
//! that says what did not happen, so tests run as fast as the machine allows and a slow machine
//! only makes them slower, not red.

use std::net::{SocketAddr, ToSocketAddrs};
use std::thread;
use std::time::{Duration, Instant};

/// How long a process gets to come up (bind its ports) before the test fails.
pub const START_TIMEOUT: Duration = Duration::from_secs(15);

/// Polls `f` every 10 ms until it returns true; panics with `what` after `timeout`.
pub fn wait_for(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Polls `f` every 10 ms until it returns `Some`, and returns that; panics with `what` after
/// `timeout`.
pub fn wait_some<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let mut found = None;
    wait_for(timeout, what, || {
        found = f();
        found.is_some()
    });
    found.expect("wait_for returned, so f gave Some")
}

/// The first address `addr` resolves to.
pub fn resolve(addr: impl ToSocketAddrs) -> SocketAddr {
    addr.to_socket_addrs().expect("resolve address").next().expect("address resolves to nothing")
}
