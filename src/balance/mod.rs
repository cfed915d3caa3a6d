//! Server selection: which server of a service gets the next connection.
//!
//! Pure logic with no I/O and no clock: the worker describes each server through [`Candidate`]
//! and gets back an index. Each worker keeps its own [`Balancer`] per service (no shared state
//! on the data path); with several workers each runs its own rotation, so proportions hold
//! overall while the exact interleaving is per worker.

pub mod maglev;

use crate::config::Balance;
use maglev::Maglev;
use std::net::IpAddr;

/// What the balancer needs to know about one server at the moment of a pick.
pub trait Candidate {
    /// Configured weight, 0..=256. Weight 0 takes no new connections.
    fn weight(&self) -> u32;
    /// A backup server is used only while no non-backup server is available.
    fn backup(&self) -> bool;
    /// Healthy and administratively enabled (not drained, not disabled).
    fn available(&self) -> bool;
    /// Below its `maxconn` (always true without one).
    fn has_room(&self) -> bool;
    /// Connections currently open to this server, over all workers.
    fn active(&self) -> u64;
}

/// Per-service selection state of one worker.
#[derive(Debug, Clone)]
pub struct Balancer {
    algorithm: Balance,
    /// Smooth weighted round robin "current weight" per server (nginx's algorithm):
    /// each pick adds every eligible server's weight to its current weight, takes the
    /// largest and subtracts the eligible total from it. Proportions are exact and picks
    /// of a heavy server are spread out instead of coming in bursts.
    current: Vec<i64>,
    /// Rotating start for leastconn ties, so equal servers share the load.
    cursor: usize,
    /// `balance maglev`: the lookup table of the service's servers (`None`: no server weighs).
    maglev: Option<Maglev>,
}

impl Balancer {
    pub fn new(algorithm: Balance, servers: usize) -> Balancer {
        Balancer { algorithm, current: vec![0; servers], cursor: 0, maglev: None }
    }

    /// A balancer for servers given as (name, configured weight) in conf order: `balance maglev`
    /// builds its table from them.
    pub fn for_servers(algorithm: Balance, servers: &[(&str, u32)]) -> Balancer {
        let mut b = Balancer::new(algorithm, servers.len());
        if algorithm == Balance::Maglev {
            b.maglev = Maglev::build(servers);
        }
        b
    }

    /// Picks a server for a connection from `client`, skipping the indices in `tried` (servers
    /// this connection already failed to reach). `None` when no server can take it.
    pub fn pick<C: Candidate>(&mut self, servers: &[C], client: IpAddr, tried: &[usize]) -> Option<usize> {
        debug_assert_eq!(servers.len(), self.current.len());
        // Backups stand in while no regular server is available, or every available one already
        // failed this connection (the health verdict may still be on its way). A regular server
        // that is merely full (maxconn) does not hand its traffic to the backups.
        let use_backup = !servers
            .iter()
            .enumerate()
            .any(|(i, s)| !s.backup() && s.available() && s.weight() > 0 && !tried.contains(&i));
        let eligible = |i: usize, s: &C| {
            s.backup() == use_backup && s.available() && s.weight() > 0 && s.has_room() && !tried.contains(&i)
        };
        match self.algorithm {
            Balance::RoundRobin => self.pick_roundrobin(servers, eligible),
            Balance::LeastConn => self.pick_leastconn(servers, eligible),
            Balance::First => servers.iter().enumerate().position(|(i, s)| eligible(i, s)),
            Balance::Source => pick_source(servers, eligible, client),
            Balance::Maglev => self.maglev.as_ref()?.pick(hash_ip(client), |i| eligible(i, &servers[i])),
        }
    }

    fn pick_roundrobin<C: Candidate>(&mut self, servers: &[C], eligible: impl Fn(usize, &C) -> bool) -> Option<usize> {
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (i, s) in servers.iter().enumerate() {
            if !eligible(i, s) {
                continue;
            }
            let w = i64::from(s.weight());
            self.current[i] += w;
            total += w;
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        let chosen = best?;
        self.current[chosen] -= total;
        Some(chosen)
    }

    fn pick_leastconn<C: Candidate>(&mut self, servers: &[C], eligible: impl Fn(usize, &C) -> bool) -> Option<usize> {
        let n = servers.len();
        let mut best: Option<usize> = None;
        for k in 0..n {
            let i = (self.cursor + k) % n;
            let s = &servers[i];
            if !eligible(i, s) {
                continue;
            }
            // Compare active/weight without division: a.active * b.weight < b.active * a.weight.
            let better = match best {
                None => true,
                Some(b) => {
                    let sb = &servers[b];
                    u128::from(s.active()) * u128::from(sb.weight()) < u128::from(sb.active()) * u128::from(s.weight())
                }
            };
            if better {
                best = Some(i);
            }
        }
        self.cursor = (self.cursor + 1) % n.max(1);
        best
    }
}

/// Client-address hash over the eligible servers' weights: a client keeps its server while the
/// set of eligible servers stays the same.
fn pick_source<C: Candidate>(servers: &[C], eligible: impl Fn(usize, &C) -> bool, client: IpAddr) -> Option<usize> {
    let total: u64 =
        servers.iter().enumerate().filter(|(i, s)| eligible(*i, s)).map(|(_, s)| u64::from(s.weight())).sum();
    if total == 0 {
        return None;
    }
    let mut point = hash_ip(client) % total;
    for (i, s) in servers.iter().enumerate() {
        if !eligible(i, s) {
            continue;
        }
        let w = u64::from(s.weight());
        if point < w {
            return Some(i);
        }
        point -= w;
    }
    None
}

/// FNV-1a over the address bytes, then a final mix so that neighbouring addresses spread.
/// IPv4-mapped IPv6 addresses hash like the IPv4 address they carry.
pub fn hash_ip(ip: IpAddr) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    match crate::net::canonical_ip(ip) {
        IpAddr::V4(v4) => eat(&v4.octets()),
        IpAddr::V6(v6) => eat(&v6.octets()),
    }
    // splitmix64 finaliser.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[derive(Clone)]
    struct S {
        weight: u32,
        backup: bool,
        up: bool,
        room: bool,
        active: u64,
    }

    fn s(weight: u32) -> S {
        S { weight, backup: false, up: true, room: true, active: 0 }
    }

    impl Candidate for S {
        fn weight(&self) -> u32 {
            self.weight
        }
        fn backup(&self) -> bool {
            self.backup
        }
        fn available(&self) -> bool {
            self.up
        }
        fn has_room(&self) -> bool {
            self.room
        }
        fn active(&self) -> u64 {
            self.active
        }
    }

    const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    fn picks(b: &mut Balancer, servers: &[S], n: usize) -> Vec<usize> {
        (0..n).map(|_| b.pick(servers, CLIENT, &[]).unwrap()).collect()
    }

    #[test]
    fn roundrobin_equal_weights_alternate() {
        let servers = vec![s(1), s(1)];
        let mut b = Balancer::new(Balance::RoundRobin, 2);
        assert_eq!(picks(&mut b, &servers, 6), vec![0, 1, 0, 1, 0, 1]);
    }

    #[test]
    fn roundrobin_weights_1_2_exact_and_interleaved() {
        let servers = vec![s(1), s(2)];
        let mut b = Balancer::new(Balance::RoundRobin, 2);
        let seq = picks(&mut b, &servers, 90);
        assert_eq!(seq.iter().filter(|&&i| i == 0).count(), 30);
        assert_eq!(seq.iter().filter(|&&i| i == 1).count(), 60);
        // Smooth: the light server never waits more than 3 picks, the heavy one never runs 3 in a row.
        assert_eq!(&seq[..3], &[1, 0, 1]);
        assert!(seq.windows(3).all(|w| w.contains(&0) || w != [1, 1, 1]));
        assert!(seq.windows(3).all(|w| w.contains(&0)));
    }

    #[test]
    fn roundrobin_5_1_1_is_smooth() {
        let servers = vec![s(5), s(1), s(1)];
        let mut b = Balancer::new(Balance::RoundRobin, 3);
        assert_eq!(picks(&mut b, &servers, 7), vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn weight_zero_and_down_servers_get_nothing() {
        let mut servers = vec![s(1), s(0), s(1)];
        servers[2].up = false;
        let mut b = Balancer::new(Balance::RoundRobin, 3);
        assert_eq!(picks(&mut b, &servers, 4), vec![0, 0, 0, 0]);
    }

    #[test]
    fn tried_servers_are_skipped_and_exhaustion_is_none() {
        let servers = vec![s(1), s(1)];
        let mut b = Balancer::new(Balance::RoundRobin, 2);
        assert_eq!(b.pick(&servers, CLIENT, &[0]), Some(1));
        assert_eq!(b.pick(&servers, CLIENT, &[1]), Some(0));
        assert_eq!(b.pick(&servers, CLIENT, &[0, 1]), None);
    }

    #[test]
    fn backups_only_while_no_regular_server_is_available() {
        let mut servers = vec![s(1), s(1), S { backup: true, ..s(1) }];
        let mut b = Balancer::new(Balance::RoundRobin, 3);
        assert!(!picks(&mut b, &servers, 10).contains(&2));
        servers[0].up = false;
        assert_eq!(picks(&mut b, &servers, 3), vec![1, 1, 1]);
        servers[1].up = false;
        assert_eq!(picks(&mut b, &servers, 3), vec![2, 2, 2]);
        servers[1].up = true;
        assert_eq!(picks(&mut b, &servers, 2), vec![1, 1]);
    }

    #[test]
    fn backups_take_over_when_every_regular_server_failed_this_connection() {
        let servers = vec![s(1), s(1), S { backup: true, ..s(1) }];
        let mut b = Balancer::new(Balance::RoundRobin, 3);
        assert_eq!(b.pick(&servers, CLIENT, &[0]), Some(1), "a regular server is still untried");
        assert_eq!(b.pick(&servers, CLIENT, &[0, 1]), Some(2), "then the backup");
        assert_eq!(b.pick(&servers, CLIENT, &[0, 1, 2]), None);
    }

    #[test]
    fn full_regular_servers_do_not_spill_to_backups() {
        let servers = vec![S { room: false, ..s(1) }, S { backup: true, ..s(1) }];
        let mut b = Balancer::new(Balance::RoundRobin, 2);
        assert_eq!(b.pick(&servers, CLIENT, &[]), None);
    }

    #[test]
    fn maxconn_full_server_is_skipped() {
        let servers = vec![S { room: false, ..s(1) }, s(1)];
        let mut b = Balancer::new(Balance::RoundRobin, 2);
        assert_eq!(picks(&mut b, &servers, 3), vec![1, 1, 1]);
    }

    #[test]
    fn leastconn_prefers_fewest_active_per_weight() {
        let servers = vec![S { active: 4, ..s(1) }, S { active: 2, ..s(1) }, S { active: 5, ..s(2) }];
        let mut b = Balancer::new(Balance::LeastConn, 3);
        assert_eq!(b.pick(&servers, CLIENT, &[]), Some(1));
        let servers = vec![S { active: 4, ..s(1) }, S { active: 3, ..s(1) }, S { active: 5, ..s(2) }];
        assert_eq!(b.pick(&servers, CLIENT, &[]), Some(2));
    }

    #[test]
    fn leastconn_ties_rotate() {
        let servers = vec![s(1), s(1), s(1)];
        let mut b = Balancer::new(Balance::LeastConn, 3);
        let seq = picks(&mut b, &servers, 3);
        let mut sorted = seq.clone();
        sorted.sort();
        assert_eq!(sorted, vec![0, 1, 2]);
    }

    #[test]
    fn first_fills_in_file_order() {
        let mut servers = vec![s(1), s(1), s(1)];
        let mut b = Balancer::new(Balance::First, 3);
        assert_eq!(b.pick(&servers, CLIENT, &[]), Some(0));
        servers[0].room = false;
        assert_eq!(b.pick(&servers, CLIENT, &[]), Some(1));
        servers[1].up = false;
        assert_eq!(b.pick(&servers, CLIENT, &[]), Some(2));
    }

    #[test]
    fn source_is_sticky_and_spreads() {
        let servers = vec![s(1), s(1), s(1), s(1)];
        let mut b = Balancer::new(Balance::Source, 4);
        let mut seen = [0usize; 4];
        for n in 0..400u32 {
            let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n));
            let first = b.pick(&servers, ip, &[]).unwrap();
            assert_eq!(b.pick(&servers, ip, &[]), Some(first), "same client, same server");
            seen[first] += 1;
        }
        assert!(seen.iter().all(|&c| c > 50), "spread over servers: {seen:?}");
    }

    #[test]
    fn source_mapped_ipv6_hashes_like_ipv4() {
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(hash_ip(v4), hash_ip(mapped));
    }
}
