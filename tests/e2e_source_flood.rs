//! A flood from many distinct source addresses (10,000 by default, `SHUNT_FLOOD_SOURCES` for
//! more; the whole of 127/8 is local) against the per-source limits and a 10,000-rule ACL: the
//! per-source tables grow with the sources and no further (their memory is bounded by
//! `TABLE_SIZE`), and once the flood is over every counter is back at zero: live sources,
//! live connections, active connections, descriptors. The accept rate with the ACL and
//! without it, measured in the same run, is printed (a figure for the README, not a bound).

mod common;

use common::*;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::thread;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(20);
const CLIENT_THREADS: usize = 4;

/// The `i`-th source address: 127.1.0.1, 127.1.0.2, ... (never 127.0.0.x, which other tests use).
fn source(i: usize) -> IpAddr {
    let n = i + 1;
    IpAddr::V4(Ipv4Addr::new(127, 1 + (n >> 16) as u8, (n >> 8) as u8, n as u8))
}

/// 10,000 `deny` rules for addresses no client uses (/32s and /24s in 10/8), then the allow
/// that lets the flood in: every lookup walks a trie full of rules.
fn big_acl() -> String {
    let mut acl = String::new();
    for i in 0..10_000u32 {
        let (a, b) = ((i >> 8) as u8, i as u8);
        match i % 2 {
            0 => acl.push_str(&format!("  deny 10.{a}.{b}.7\n")),
            _ => acl.push_str(&format!("  deny 10.{b}.{a}.0/24\n")),
        }
    }
    acl + "  allow 127.0.0.0/8\n"
}

/// Sources `range` connect, one each, and read the server's answer to its end; returns how
/// many were served.
fn flood(addr: SocketAddr, range: Range<usize>) -> usize {
    thread::scope(|s| {
        let workers: Vec<_> = (0..CLIENT_THREADS)
            .map(|t| {
                let range = range.clone();
                s.spawn(move || {
                    range
                        .skip(t)
                        .step_by(CLIENT_THREADS)
                        .filter(|&i| {
                            let Ok(mut c) = connect_from(source(i), addr) else { return false };
                            let mut got = Vec::new();
                            c.read_to_end(&mut got).is_ok() && got == b"x"
                        })
                        .count()
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    })
}

fn sources() -> usize {
    std::env::var("SHUNT_FLOOD_SOURCES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000)
}

/// One shunt under the flood, with `acl` lines in its service, and what it was before.
struct Flooded {
    label: &'static str,
    shunt: Shunt,
    _server: TcpServer,
    rss0: u64,
    fds0: usize,
    served: usize,
    busy: Duration,
}

impl Flooded {
    fn start(label: &'static str, acl: &str) -> Flooded {
        let server = name_server("x");
        let conf = format!(
            "log warn\nadmin 127.0.0.1:0\nmax_conns_per_ip 4\nrate_per_ip 1000/s\n\
             service web\n  bind 127.0.0.1:0\n  max_conns_per_ip 2\n{acl}  server x {}\n",
            server.addr
        );
        let shunt = start_shunt(&conf);
        let (rss0, fds0) = (shunt.rss_kib(), shunt.fd_count());
        Flooded { label, shunt, _server: server, rss0, fds0, served: 0, busy: Duration::ZERO }
    }

    fn flood(&mut self, range: Range<usize>) {
        let start = Instant::now();
        self.served += flood(self.shunt.addr("web"), range);
        self.busy += start.elapsed();
    }

    /// Checks what the flood of `n` sources left behind; returns its connections per second.
    fn finish(&self, n: usize) -> f64 {
        let (label, shunt) = (self.label, &self.shunt);
        assert_eq!(self.served, n, "{label}: every source served once");
        let m = http_get(shunt.admin(), "/metrics").1;
        assert_eq!(metric(&m, "shunt_service_accepted_total{service=\"web\"}"), n as f64);
        wait_for(T, "every counter back at zero", || {
            let m = http_get(shunt.admin(), "/metrics").1;
            ["global", "web"].iter().all(|scope| {
                metric(&m, &format!("shunt_per_ip_live_sources{{scope=\"{scope}\"}}")) == 0.0
                    && metric(&m, &format!("shunt_per_ip_live_connections{{scope=\"{scope}\"}}")) == 0.0
            }) && status_json(shunt.admin())["active_connections"] == 0
                && metric(&m, "shunt_service_refused_total{service=\"web\",reason=\"per_ip\"}") == 0.0
        });
        wait_for(T, "descriptors back to where they were", || shunt.fd_count() <= self.fds0 + 2);
        let grown = shunt.rss_kib().saturating_sub(self.rss0);
        let rate = n as f64 / self.busy.as_secs_f64();
        eprintln!(
            "RESULT source flood, {label}: {n} sources at {rate:.0} connections/s; RSS {} -> {} KiB (+{grown} KiB, \
             {:.0} bytes per source for two tables)",
            self.rss0,
            self.rss0 + grown,
            grown as f64 * 1024.0 / n as f64
        );
        // Two tables (global and web) of at most 65,536 sources each: a few MiB, however many come.
        assert!(grown < 32 * 1024, "{label}: RSS grew by {grown} KiB");
        rate
    }
}

#[test]
fn ten_thousand_sources_leave_bounded_memory_and_every_counter_at_zero() {
    let n = sources();
    let mut plain = Flooded::start("no ACL", "");
    let mut ruled = Flooded::start("10,000-rule ACL", &big_acl());
    // Interleaved rounds, so both meet the same machine (the flood's own TIME_WAIT sockets, the
    // other tests of the suite).
    const ROUNDS: usize = 8;
    for round in 0..ROUNDS {
        let range = round * n / ROUNDS..(round + 1) * n / ROUNDS;
        plain.flood(range.clone());
        ruled.flood(range);
    }
    let (plain, ruled) = (plain.finish(n), ruled.finish(n));
    eprintln!("RESULT accept rate with a 10,000-rule ACL: {:.2}x the rate without one", ruled / plain);
}
