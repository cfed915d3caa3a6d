//! `balance maglev`: consistent hashing of the client address through a Maglev lookup table
//! (Eisenbud et al., NSDI 2016). Each server, known by its name, has its own permutation of the
//! table's slots; servers take turns claiming their next free slot (a server of weight w takes
//! w turns per round) until the table is full. A client's address hashes to a slot, the slot
//! names a server.
//!
//! The table depends only on the servers' names and weights, never on their order in the conf,
//! so two shunt nodes with the same servers send a client to the same server. A server that
//! cannot take the client (down, drained, full, already tried, weight 0 at run time) is skipped
//! by walking on to the next slots: only that server's clients move, each to the server of the
//! next slot (the same on every node), and they come back when it does.

/// Slots in the table: a prime, so every skip is coprime with it and each permutation visits
/// every slot. 65,537 as in the paper: about 100 slots per server for hundreds of servers, and
/// evenness within a few percent.
pub const TABLE_SIZE: usize = 65_537;

/// A built table: `slots[i]` is a server's position in the service's server list.
#[derive(Debug, Clone)]
pub struct Maglev {
    slots: Vec<u16>,
}

impl Maglev {
    /// Builds the table for servers given as (name, weight) in conf order; servers of weight 0
    /// get no slot. `None` when no server has a weight.
    pub fn build(servers: &[(&str, u32)]) -> Option<Maglev> {
        Maglev::build_sized(servers, TABLE_SIZE)
    }

    fn build_sized(servers: &[(&str, u32)], size: usize) -> Option<Maglev> {
        // Claims go in name order, so the conf's order does not matter.
        let mut order: Vec<usize> = (0..servers.len()).filter(|&i| servers[i].1 > 0).collect();
        if order.is_empty() {
            return None;
        }
        order.sort_by(|&a, &b| servers[a].0.cmp(servers[b].0));
        let m = size as u64;
        let perm: Vec<(u64, u64)> = order
            .iter()
            .map(|&i| {
                let name = servers[i].0.as_bytes();
                (fnv1a(name, 0x6d61_676c_6576_0001) % m, fnv1a(name, 0x6d61_676c_6576_0002) % (m - 1) + 1)
            })
            .collect();
        let mut next = vec![0u64; order.len()];
        let mut slots = vec![u16::MAX; size];
        let mut filled = 0;
        'fill: loop {
            for (k, &i) in order.iter().enumerate() {
                for _ in 0..servers[i].1 {
                    let (offset, skip) = perm[k];
                    let mut slot = ((offset + next[k] * skip) % m) as usize;
                    while slots[slot] != u16::MAX {
                        next[k] += 1;
                        slot = ((offset + next[k] * skip) % m) as usize;
                    }
                    slots[slot] = i as u16;
                    next[k] += 1;
                    filled += 1;
                    if filled == size {
                        break 'fill;
                    }
                }
            }
        }
        Some(Maglev { slots })
    }

    /// The server for a client whose address hashes to `hash`: the slot's server if `takes`
    /// it, else the server of the first slot after it that `takes` one (at most one full turn).
    pub fn pick(&self, hash: u64, takes: impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.slots.len();
        let start = (hash % n as u64) as usize;
        let mut refused = Vec::new();
        for k in 0..n {
            let server = usize::from(self.slots[(start + k) % n]);
            if refused.contains(&server) {
                continue;
            }
            if takes(server) {
                return Some(server);
            }
            refused.push(server);
        }
        None
    }
}

/// FNV-1a, 64 bits, from `seed`: the same on every node and every run (std's hasher is not).
pub fn fnv1a(bytes: &[u8], seed: u64) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325 ^ seed, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("web-{i:02}")).collect()
    }

    fn table(names: &[String], weight: impl Fn(usize) -> u32) -> Maglev {
        let servers: Vec<(&str, u32)> = names.iter().enumerate().map(|(i, n)| (n.as_str(), weight(i))).collect();
        Maglev::build(&servers).unwrap()
    }

    fn shares(t: &Maglev, n: usize) -> Vec<usize> {
        let mut count = vec![0; n];
        for &s in &t.slots {
            count[usize::from(s)] += 1;
        }
        count
    }

    #[test]
    fn slots_are_shared_evenly_and_by_weight() {
        for n in [2, 3, 7, 20] {
            let count = shares(&table(&names(n), |_| 1), n);
            let even = TABLE_SIZE as f64 / n as f64;
            for c in count {
                assert!((c as f64 - even).abs() / even < 0.02, "{n} servers: {c} slots, {even:.0} expected");
            }
        }
        // Weights 1, 2, 3: a sixth, a third, a half.
        let count = shares(&table(&names(3), |i| i as u32 + 1), 3);
        for (i, c) in count.iter().enumerate() {
            let want = TABLE_SIZE as f64 * (i + 1) as f64 / 6.0;
            assert!((*c as f64 - want).abs() / want < 0.02, "weight {}: {c} slots, {want:.0} expected", i + 1);
        }
    }

    #[test]
    fn the_conf_order_does_not_matter() {
        let forward = names(5);
        let mut backward = forward.clone();
        backward.reverse();
        let (a, b) = (table(&forward, |_| 1), table(&backward, |_| 1));
        // Same server (by name) in every slot.
        assert!(a.slots.iter().zip(&b.slots).all(|(&x, &y)| forward[usize::from(x)] == backward[usize::from(y)]));
    }

    #[test]
    fn a_server_that_leaves_moves_only_its_own_clients_and_gets_them_back() {
        let t = table(&names(5), |_| 1);
        let hashes: Vec<u64> = (0..20_000u64).map(|i| fnv1a(&i.to_be_bytes(), 7)).collect();
        let before: Vec<usize> = hashes.iter().map(|&h| t.pick(h, |_| true).unwrap()).collect();
        let without_2: Vec<usize> = hashes.iter().map(|&h| t.pick(h, |s| s != 2).unwrap()).collect();
        let moved = before.iter().zip(&without_2).filter(|(a, b)| a != b).count();
        let owned = before.iter().filter(|&&s| s == 2).count();
        assert_eq!(moved, owned, "only server 2's clients move");
        assert!(without_2.iter().all(|&s| s != 2));
        // Server 2 is back: everyone is where they were.
        let again: Vec<usize> = hashes.iter().map(|&h| t.pick(h, |_| true).unwrap()).collect();
        assert_eq!(again, before);
        // Its clients spread over the others, not onto one of them.
        let mut heirs = vec![0; 5];
        for (a, b) in before.iter().zip(&without_2) {
            if a != b {
                heirs[*b] += 1;
            }
        }
        assert!(heirs.iter().enumerate().all(|(i, &h)| i == 2 || h > owned / 8), "{heirs:?}");
    }

    #[test]
    fn adding_a_server_moves_about_its_share_only() {
        let (four, five) = (table(&names(4), |_| 1), table(&names(5), |_| 1));
        let changed = four.slots.iter().zip(&five.slots).filter(|(a, b)| a != b).count();
        let share = TABLE_SIZE / 5;
        // The paper's bound: a little more than the new server's share changes hands.
        assert!(changed < share * 13 / 10, "{changed} slots changed, {share} is the new server's share");
    }

    #[test]
    fn nobody_available_is_none_and_weight_zero_has_no_slot() {
        let t = table(&names(3), |i| u32::from(i != 1));
        assert!(t.slots.iter().all(|&s| s != 1));
        assert_eq!(t.pick(42, |_| false), None);
        assert!(Maglev::build(&[("a", 0)]).is_none());
    }
}
