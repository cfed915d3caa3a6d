//! Sessions spread evenly over workers. The kernel's `SO_REUSEPORT` hash picks which worker's
//! listener a client waits on; a worker that accepts while it holds clearly more sessions than
//! the least loaded one passes the connection on. The test stacks sessions on one worker on
//! purpose (it keeps the connections worker 0 took and closes the others, telling them apart
//! by `shunt_worker_sessions`), then opens more: they even the workers out, and every session,
//! passed on or not, carries its bytes. Without the passing on, the stack stays.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// `shunt_worker_sessions` of every worker (`workers` of them).
fn worker_sessions(admin: SocketAddr, workers: usize) -> Vec<u64> {
    let (_, text) = http_get(admin, "/metrics");
    (0..workers).map(|i| metric(&text, &format!("shunt_worker_sessions{{worker=\"{i}\"}}")) as u64).collect()
}

/// A connection through shunt to the echo server, proven by a round trip.
fn echoed(addr: SocketAddr) -> TcpStream {
    echoed_from(loopback(1), addr).expect("an echoed connection")
}

#[test]
fn sessions_stacked_on_one_worker_are_evened_out_by_the_next_connections() {
    const STACK: usize = 120;
    let echo = EchoServer::start();
    let shunt = start_shunt(&format!(
        "workers 2\nadmin 127.0.0.1:0\nservice echo\n  bind 127.0.0.1:0\n  timeout idle 5m\n  server e {}\n",
        echo.0.addr
    ));
    let (addr, admin) = (shunt.addr("echo"), shunt.admin());

    // Stack: open connections one by one and keep those worker 0 holds (its count rose).
    let mut stacked = Vec::new();
    let mut others = Vec::new();
    while stacked.len() < STACK {
        let before = worker_sessions(admin, 2);
        let c = echoed(addr);
        let after = wait_some(Duration::from_secs(10), "the session counted", || {
            let now = worker_sessions(admin, 2);
            (now.iter().sum::<u64>() > before.iter().sum::<u64>()).then_some(now)
        });
        if after[0] > before[0] {
            stacked.push(c);
        } else {
            others.push(c);
        }
        assert!(others.len() < 10 * STACK, "worker 0 took nothing");
    }
    drop(others);
    wait_for(Duration::from_secs(10), "worker 1's sessions closed", || worker_sessions(admin, 2) == [STACK as u64, 0]);

    // The next 2 × STACK connections go where the load is least.
    let mut next: Vec<TcpStream> = (0..2 * STACK).map(|_| echoed(addr)).collect();
    let spread = worker_sessions(admin, 2);
    let mean = (3 * STACK / 2) as f64;
    for &n in &spread {
        assert!((n as f64 - mean).abs() <= mean * 0.1, "sessions per worker {spread:?}, mean {mean}");
    }
    let (_, text) = http_get(admin, "/metrics");
    let dispatched: f64 =
        (0..2).map(|i| metric(&text, &format!("shunt_worker_dispatched_total{{worker=\"{i}\"}}"))).sum();
    assert!(dispatched >= (STACK / 2) as f64, "only {dispatched} connections passed on");

    // Every session, passed on or not, still carries bytes both ways.
    for c in stacked.iter_mut().chain(next.iter_mut()) {
        c.write_all(b"pong").unwrap();
        let mut back = [0u8; 4];
        c.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"pong");
    }
    drop((stacked, next));
    wait_for(Duration::from_secs(10), "every session closed", || worker_sessions(admin, 2) == [0, 0]);
}
