//! `bind ADDR defer_accept` (`TCP_DEFER_ACCEPT`): the kernel hands a connection to shunt only
//! once its client has spoken, sparing shunt a wake-up per connection. A client that connects and
//! says nothing is not accepted (the service's accepted count stays put; the kernel holds it for
//! at least the 1 s defer period) while one that speaks is served at once, and the silent one is
//! served as soon as it speaks. A reload that adds the option to a kept listener applies it to
//! the socket shunt already holds.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

fn conf(echo: SocketAddr, bind_options: &str) -> String {
    format!("admin 127.0.0.1:0\nservice echo\n  bind 127.0.0.1:0{bind_options}\n  timeout idle 1m\n  server e {echo}\n")
}

fn accepted(admin: SocketAddr) -> f64 {
    metric(&http_get(admin, "/metrics").1, "shunt_service_accepted_total{service=\"echo\"}")
}

/// Sends `word` and reads it back through shunt.
fn echo(c: &mut TcpStream, word: &[u8]) {
    c.write_all(word).unwrap();
    let mut back = vec![0u8; word.len()];
    c.read_exact(&mut back).unwrap();
    assert_eq!(back, word);
}

/// The accepted count stays at `n` for half a second (well inside the kernel's 1 s defer).
fn stays_at(admin: SocketAddr, n: f64) {
    let until = Instant::now() + Duration::from_millis(500);
    while Instant::now() < until {
        assert_eq!(accepted(admin), n, "a silent client was accepted");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_silent_client_waits_in_the_kernel_until_it_speaks() {
    let server = EchoServer::start();
    let shunt = start_shunt(&conf(server.0.addr, " defer_accept"));
    let (addr, admin) = (shunt.addr("echo"), shunt.admin());
    let mut silent = connect(addr);
    let mut speaking = connect(addr);
    echo(&mut speaking, b"hello");
    assert_eq!(accepted(admin), 1.0);
    stays_at(admin, 1.0);
    echo(&mut silent, b"late but served");
    assert_eq!(accepted(admin), 2.0);
}

#[test]
fn a_reload_applies_defer_accept_to_the_listener_it_keeps() {
    let server = EchoServer::start();
    let shunt = start_shunt(&conf(server.0.addr, ""));
    let (addr, admin) = (shunt.addr("echo"), shunt.admin());
    // Without the option a silent client is accepted at once.
    let _before = connect(addr);
    wait_for(Duration::from_secs(10), "the silent client accepted", || accepted(admin) == 1.0);

    shunt.write_conf(&conf(server.0.addr, " defer_accept"));
    let (status, body) = http_post(admin, "/reload", None, b"");
    assert_eq!(status, 200, "{body}");
    // One round trip through the worker: it handled the reload before this accept.
    echo(&mut connect(addr), b"after the reload");
    assert_eq!(accepted(admin), 2.0);
    assert_eq!(shunt.addr("echo"), addr, "the listener was kept, not bound again");

    let mut silent = connect(addr);
    stays_at(admin, 2.0);
    echo(&mut silent, b"now");
    assert_eq!(accepted(admin), 3.0);
}
