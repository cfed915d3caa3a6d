//! A namespace test bed: a client, the balancer and each server in their own network namespace,
//! joined by veth links, so faults can be injected per server (iptables, tc, sysctl, SIGSTOP)
//! without touching the root namespace.
//!
//! ```text
//!   client ns                 lb ns                          server ns i
//!   eth0 10.77.0.2 ──veth── c0 10.77.0.1
//!                             s{i} 10.77.{i+1}.1 ──veth── eth0 10.77.{i+1}.2
//! ```
//!
//! The lb namespace is the hub: every link is a point-to-point /24, so no routes or bridge are
//! needed, and a server only ever sees the balancer. The addresses exist only inside the test's
//! own namespaces, so parallel tests can all use the same ones. Every namespace is deleted on
//! drop (even on panic); namespaces left behind by a test process that was killed outright are
//! removed by the next [`Topo::new`] (their names carry the dead pid).
//!
//! Code runs inside a namespace as processes through `ip netns exec` ([`Topo::spawn_server`],
//! `start_shunt_wrapped`) and as threads of the test through `setns(2)` (see super::netns).

use super::bins::example_bin;
use super::netns::{run_ok, Netns};
use super::proc::{Proc, TempDir};
use super::procfs::is_listening;
use super::wait::{wait_for, START_TIMEOUT};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Prefix of every namespace a [`Topo`] makes: `shf-PID-N-ROLE`.
const PREFIX: &str = "shf-";

/// The balancer's address as the client sees it.
pub const LB_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// The client's address.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// The port every test server listens on inside its own namespace.
pub const SERVER_PORT: u16 = 7000;

/// Server `i`'s address (on its own link to the balancer).
pub fn server_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, (i + 1) as u8, 2)
}

/// Server `i`'s listening address.
pub fn server_addr(i: usize) -> SocketAddr {
    SocketAddr::from((server_ip(i), SERVER_PORT))
}

pub struct Topo {
    pub lb: Netns,
    pub client: Netns,
    pub servers: Vec<Netns>,
}

impl Topo {
    /// A client, a balancer and `n` server namespaces, linked and up.
    pub fn new(n: usize) -> Topo {
        assert!(n < 250);
        remove_stale_namespaces();
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let id = format!("{PREFIX}{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        let lb = make_ns(&format!("{id}-lb"));
        let client = make_ns(&format!("{id}-cl"));
        link(&lb, "c0", LB_IP, &client, CLIENT_IP);
        let mut servers = Vec::new();
        for i in 0..n {
            let s = make_ns(&format!("{id}-s{i}"));
            link(&lb, &Topo::server_if(i), Ipv4Addr::new(10, 77, (i + 1) as u8, 1), &s, server_ip(i));
            servers.push(s);
        }
        Topo { lb, client, servers }
    }

    /// The balancer-side interface of server `i`'s link (for `tc` on the way to it).
    pub fn server_if(i: usize) -> String {
        format!("s{i}")
    }

    /// The balancer-side interface of the client's link.
    pub const CLIENT_IF: &'static str = "c0";

    /// Starts `examples/test_peer` with `args` inside server `i`'s namespace and waits until it
    /// listens on [`SERVER_PORT`]. `ip netns exec` execs in place, so the pid is test_peer's
    /// (SIGSTOP/SIGKILL reach it).
    pub fn spawn_server(&self, i: usize, args: &[&str], dir: &TempDir) -> Proc {
        let mut cmd = self.servers[i].command(&[example_bin("test_peer").to_str().expect("utf-8 path")]);
        cmd.args(args);
        let name = format!("test_peer s{i}");
        let log = dir.join(&format!("s{i}.log"));
        // Each start appends its "listening on" line, printed once the socket listens: a second
        // witness beside /proc, whose socket table a full-suite run under the fault soak's load
        // once failed to show the new listener in for 15 s although the peer had said it.
        let said = |text: &str| text.lines().filter(|l| l.starts_with("listening on ")).count();
        let before = said(&std::fs::read_to_string(&log).unwrap_or_default());
        let mut p = Proc::spawn(&name, cmd, &log);
        wait_for(START_TIMEOUT, &format!("{name} to listen"), || {
            if let Some(st) = p.try_status() {
                panic!("{name} exited ({}): {}", Proc::describe(st), p.log());
            }
            is_listening(p.pid(), SERVER_PORT) || said(&p.log()) > before
        });
        p
    }

    /// `test_peer serve --listen 0.0.0.0:7000 --name s{i}` plus `extra` arguments.
    pub fn serve(&self, i: usize, extra: &[&str], dir: &TempDir) -> Proc {
        let name = format!("s{i}");
        let listen = format!("0.0.0.0:{SERVER_PORT}");
        let mut args = vec!["serve", "--listen", listen.as_str(), "--name", name.as_str()];
        args.extend_from_slice(extra);
        self.spawn_server(i, &args, dir)
    }
}

fn make_ns(name: &str) -> Netns {
    Netns::named(name).unwrap_or_else(|e| {
        panic!("cannot make a network namespace: {e}\nThe fault-injection tests need root and iproute2.")
    })
}

/// `ip -n NS ARGS...`, panicking with ip's complaint.
pub fn ip(ns: &Netns, args: &[&str]) {
    let mut full = vec!["-n", ns.name.as_str()];
    full.extend_from_slice(args);
    run_ok("ip", &full).unwrap_or_else(|e| panic!("{e}"));
}

/// A veth pair: `a_if` in `a` with `a_ip`/24, `eth0` in `b` with `b_ip`/24; both up. Made inside
/// `a` with its peer created straight in `b`, so nothing appears in the root namespace.
fn link(a: &Netns, a_if: &str, a_ip: Ipv4Addr, b: &Netns, b_ip: Ipv4Addr) {
    ip(a, &["link", "add", a_if, "type", "veth", "peer", "name", "eth0", "netns", &b.name]);
    ip(a, &["addr", "add", &format!("{a_ip}/24"), "dev", a_if]);
    ip(b, &["addr", "add", &format!("{b_ip}/24"), "dev", "eth0"]);
    ip(a, &["link", "set", a_if, "up"]);
    ip(b, &["link", "set", "eth0", "up"]);
}

/// Deletes `shf-PID-*` namespaces whose test process is gone (killed before its drops ran).
fn remove_stale_namespaces() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).stderr(Stdio::null()).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else { continue };
        let Some(pid) = name.strip_prefix(PREFIX).and_then(|r| r.split('-').next()) else { continue };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).stderr(Stdio::null()).status();
        }
    }
}
