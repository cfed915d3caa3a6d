//! The fault lab: the client, shunt and every server in their own network namespace, joined by
//! veth ([`super::topo`]), servers played by `examples/test_peer` processes that a test can
//! kill, freeze, restart or firewall, and clients that are threads of the test in the client
//! namespace checking every byte ([`client`]). [`Lab`] owns all of it and drops it in order.
//!
//! What lives where: [`client`] (requests and how they ended), [`kills`] (which client errors a
//! server's death explains), [`invariants`] (what every fault test ends with), [`rng`] (random
//! choices that can be replayed). Shunt's log is read with [`super::logs`].

pub mod client;
pub mod invariants;
pub mod kills;
pub mod rng;

pub use client::*;
pub use invariants::Baseline;
pub use kills::*;
pub use rng::Rng;

use super::balancer::{start_shunt_wrapped, Shunt};
use super::http::{http_get, metric_in};
use super::netns::run_in;
use super::proc::{Proc, TempDir};
use super::topo::{server_addr, Topo, LB_IP};
use super::wait::wait_for;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The default bound on any one wait or read in the lab.
pub const T: Duration = Duration::from_secs(10);
pub const MIB: u64 = 1 << 20;
/// The service's port on the balancer: inside the lb namespace, so no clash between tests and
/// no need for port 0.
pub const SVC_PORT: u16 = 8000;
/// The admin endpoint, on the lb namespace's own loopback.
pub const ADMIN: &str = "127.0.0.1:9090";

/// The service's address as the client sees it.
pub fn lb_addr() -> SocketAddr {
    SocketAddr::from((LB_IP, SVC_PORT))
}

/// The service block most fault tests use: two retries, quick probes that expect `PONG`
/// (test_peer answers `PING`), rise 2, and the first failure decisive.
pub const FAULT_SVC: &str = "  retries 2\n  timeout connect 500ms\n  timeout idle 30s\n\
  check send \"PING\\n\" expect \"PONG\" interval 300ms timeout 300ms rise 2 fall 1\n";

/// A conf with service `svc` on 10.77.0.1:8000 over `n` servers (with per-server options),
/// the admin endpoint on the lb namespace's loopback, `global` and `service` lines added.
pub fn conf(server_opts: &[&str], global: &str, service: &str) -> String {
    let mut c = format!("log info\nadmin {ADMIN}\n{global}service svc\n  bind {}\n", lb_addr());
    for (i, opts) in server_opts.iter().enumerate() {
        c.push_str(&format!("  server s{i} {}{opts}\n", server_addr(i)));
    }
    c.push_str(service);
    c
}

/// `name{service="svc",server="SERVER"}`: a per-server metric of the lab's service.
pub fn srv_metric(name: &str, server: &str) -> String {
    format!("{name}{{service=\"svc\",server=\"{server}\"}}")
}

/// Declared in drop order: shunt and the servers are killed before the namespaces go.
pub struct Lab {
    pub shunt: Shunt,
    pub servers: Vec<Option<Proc>>,
    server_args: Vec<Vec<String>>,
    dir: TempDir,
    pub workers: usize,
    pub topo: Topo,
}

impl Lab {
    /// Servers `s0..` with test_peer `server_args` each, and shunt with `conf`.
    pub fn start(server_args: &[&[&str]], conf: &str) -> Lab {
        Lab::start_with(server_args, conf, |_| {})
    }

    /// `setup` runs on the topology before the servers and shunt start (sysctl, tc).
    pub fn start_with(server_args: &[&[&str]], conf: &str, setup: impl FnOnce(&Topo)) -> Lab {
        let topo = Topo::new(server_args.len());
        setup(&topo);
        let dir = TempDir::new("faults");
        let server_args: Vec<Vec<String>> =
            server_args.iter().map(|a| a.iter().map(|s| s.to_string()).collect()).collect();
        let servers = (0..server_args.len()).map(|i| Some(spawn_peer(&topo, i, &server_args[i], &dir))).collect();
        let shunt = start_shunt_wrapped(&["ip", "netns", "exec", &topo.lb.name], conf);
        let workers = conf
            .lines()
            .find_map(|l| l.trim().strip_prefix("workers ").and_then(|n| n.trim().parse().ok()))
            .unwrap_or(1);
        Lab { shunt, servers, server_args, dir, workers, topo }
    }

    /// Two servers with `server_args`, service `svc` with `service`, warmed up.
    pub fn two_servers(service: &str, server_args: &[&[&str]]) -> Lab {
        let lab = Lab::start(server_args, &conf(&["", ""], "", service));
        lab.warm_up(4);
        lab
    }

    pub fn client_ns(&self) -> String {
        self.topo.client.name.clone()
    }

    /// Runs `f` on a thread in the client namespace.
    pub fn client<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        run_in(&self.topo.client.name, f)
    }

    /// `n` sequential queries of `len` bytes from the client: outcomes, in order.
    pub fn sequential(&self, n: usize, len: u64, seed0: u64) -> Vec<Outcome> {
        let epoch = Instant::now();
        self.client(|| (0..n).map(|i| query(seed0 + i as u64, len, epoch)).collect())
    }

    /// Waits until every session shunt accepted has ended and been logged; returns the lines.
    pub fn wait_all_logged(&self) -> Vec<crate::common::Session> {
        let mut found = Vec::new();
        crate::common::wait_for(Duration::from_secs(20), "every accepted session logged", || {
            found = self.shunt.sessions();
            crate::common::all_logged(found.len(), &self.admin("/metrics").1)
        });
        found
    }

    pub fn admin(&self, path: &str) -> (u16, String) {
        run_in(&self.topo.lb.name, || http_get(ADMIN, path))
    }

    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.admin("/status").1).expect("/status is JSON")
    }

    pub fn active(&self) -> u64 {
        self.status()["active_connections"].as_u64().expect("active_connections")
    }

    pub fn metrics(&self) -> String {
        self.admin("/metrics").1
    }

    pub fn metric(&self, key: &str) -> f64 {
        let m = self.metrics();
        metric_in(&m, key).unwrap_or_else(|| panic!("no metric {key} in:\n{m}"))
    }

    /// Runs `argv` inside server `i`'s namespace.
    pub fn in_server(&self, i: usize, argv: &[&str]) {
        self.topo.servers[i].exec_ok(argv).unwrap_or_else(|e| panic!("{e}"));
    }

    pub fn in_lb(&self, argv: &[&str]) -> String {
        self.topo.lb.exec_ok(argv).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.servers[i].take() {
            p.signal(libc::SIGKILL);
            p.wait_timeout(T).expect("a SIGKILLed server exits");
        }
    }

    pub fn restart(&mut self, i: usize) {
        assert!(self.servers[i].is_none(), "s{i} is running");
        self.servers[i] = Some(spawn_peer(&self.topo, i, &self.server_args[i], &self.dir));
    }

    pub fn signal(&mut self, i: usize, sig: i32) {
        self.servers[i].as_mut().expect("server running").signal(sig);
    }

    /// The servers shunt holds UP now (/status).
    pub fn up_servers(&self) -> Vec<String> {
        let st = self.status();
        st["services"][0]["servers"]
            .as_array()
            .expect("servers in /status")
            .iter()
            .filter(|v| v["state"] == "up")
            .map(|v| v["name"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    pub fn up_lines(&self, server: &str) -> usize {
        self.shunt.log_lines(&format!("server svc/{server} is UP")).len()
    }

    pub fn down_lines(&self, server: &str) -> usize {
        self.shunt.log_lines(&format!("server svc/{server} is DOWN")).len()
    }

    /// `n` queries spread over the servers, so every worker and pool has seen traffic.
    pub fn warm_up(&self, n: usize) {
        let outs = self.client(|| (0..n).map(|i| query(900_000 + i as u64, 1000, Instant::now())).collect::<Vec<_>>());
        for o in &outs {
            assert!(o.ok(), "warm-up query failed: {o:?}");
        }
    }

    /// Waits for `count` to exceed `before`; returns how long that took from `since`.
    pub fn wait_edge(
        &self,
        what: &str,
        before: usize,
        since: Instant,
        timeout: Duration,
        count: impl Fn(&Lab) -> usize,
    ) -> Duration {
        wait_for(timeout, what, || count(self) > before);
        since.elapsed()
    }

    /// Queries until one is answered by `server`; returns how long that took from `since`.
    pub fn wait_served_by(&self, server: &str, since: Instant, timeout: Duration) -> Duration {
        let epoch = Instant::now();
        self.client(|| {
            wait_for(timeout, &format!("a query answered by {server}"), || {
                let o = query(7_000_000 + epoch.elapsed().as_micros() as u64, 100, epoch);
                o.ok() && o.server == server
            })
        });
        since.elapsed()
    }
}

fn spawn_peer(topo: &Topo, i: usize, args: &[String], dir: &TempDir) -> Proc {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    if args.first() == Some(&"echo-loop") {
        let listen = server_addr(i).to_string();
        topo.spawn_server(i, &["echo-loop", "--listen", &listen], dir)
    } else {
        topo.serve(i, &args, dir)
    }
}
