//! The per-source table: limits, keys, the bound and its eviction, counters back to zero.

use super::*;
use std::time::Duration;

fn ip(s: &str) -> u128 {
    source_key(s.parse().unwrap())
}

const CONNS_2: PerSource = PerSource { max_conns: Some(2), rate: None };

#[test]
fn live_connections_per_source_are_capped_and_freed() {
    let (t, now) = (SourceTable::default(), Instant::now());
    assert_eq!(t.admit(ip("10.0.0.1"), CONNS_2, now), Ok(true));
    assert_eq!(t.admit(ip("10.0.0.1"), CONNS_2, now), Ok(true));
    assert_eq!(t.admit(ip("10.0.0.1"), CONNS_2, now), Err(Refusal::TooMany));
    assert_eq!(t.admit(ip("10.0.0.2"), CONNS_2, now), Ok(true), "another source has its own count");
    t.release(ip("10.0.0.1"), CONNS_2, now);
    assert_eq!(t.admit(ip("10.0.0.1"), CONNS_2, now), Ok(true));
    for key in [ip("10.0.0.1"), ip("10.0.0.1"), ip("10.0.0.2")] {
        t.release(key, CONNS_2, now);
    }
    assert_eq!((t.live_sources.load(Relaxed), t.live_conns.load(Relaxed), t.len()), (0, 0, 0));
}

#[test]
fn new_connections_per_source_follow_a_token_bucket() {
    let limits = PerSource { max_conns: None, rate: Some(Rate { count: 3, per: Duration::from_secs(60) }) };
    let (t, t0) = (SourceTable::default(), Instant::now());
    for _ in 0..3 {
        assert_eq!(t.admit(ip("10.0.0.1"), limits, t0), Ok(true), "a burst of 3");
        t.release(ip("10.0.0.1"), limits, t0);
    }
    assert_eq!(t.admit(ip("10.0.0.1"), limits, t0), Err(Refusal::TooFast));
    assert_eq!(t.len(), 1, "the source is remembered while its bucket refills");
    assert_eq!(t.admit(ip("10.0.0.1"), limits, t0 + Duration::from_secs(19)), Err(Refusal::TooFast));
    assert_eq!(t.admit(ip("10.0.0.1"), limits, t0 + Duration::from_secs(21)), Ok(true), "one token per 20 s");
    // Released once its bucket has had time to fill again: nothing is left to remember.
    t.release(ip("10.0.0.1"), limits, t0 + Duration::from_secs(200));
    assert_eq!((t.live_sources.load(Relaxed), t.live_conns.load(Relaxed), t.len()), (0, 0, 0));
}

#[test]
fn a_source_is_an_ipv4_address_or_an_ipv6_64() {
    assert_eq!(ip("2001:db8:1:2::1"), ip("2001:db8:1:2:ffff::9"), "one /64");
    assert_ne!(ip("2001:db8:1:2::1"), ip("2001:db8:1:3::1"));
    assert_eq!(ip("::ffff:192.0.2.1"), ip("192.0.2.1"), "a dual-stack listener's IPv4 client");
    assert_ne!(ip("192.0.2.1"), ip("192.0.2.2"));
    assert_ne!(ip("::"), ip("0.0.0.0"));
}

#[test]
fn a_full_table_evicts_idle_sources_and_lets_newcomers_in_untracked_when_none_is_idle() {
    let (t, now) = (SourceTable::default(), Instant::now());
    let limits = PerSource { max_conns: Some(1), rate: None };
    let key = |n: u32| source_key(IpAddr::V4(n.into()));
    // Fill every shard with live sources (keys spread over the shards by the hash).
    let mut n = 0u32;
    while t.len() < TABLE_SIZE && n < 4 * TABLE_SIZE as u32 {
        let _ = t.admit(key(n), limits, now);
        n += 1;
    }
    let tracked = t.len();
    assert!(tracked <= TABLE_SIZE, "bounded: {tracked}");
    let full_before = t.table_full.load(Relaxed);
    // Every source is live: a newcomer in a full shard gets in untracked, and is counted.
    let mut untracked = 0;
    for m in n..n + 2000 {
        if t.admit(key(m), limits, now) == Ok(false) {
            untracked += 1;
        }
    }
    assert!(untracked > 0 && t.table_full.load(Relaxed) - full_before == untracked, "{untracked}");
    assert!(t.len() <= TABLE_SIZE);
    // Once sources close, newcomers are tracked again in their place.
    for m in 0..n {
        t.release(key(m), limits, now);
    }
    assert_eq!(t.admit(key(n + 5000), limits, now), Ok(true));
    t.release(key(n + 5000), limits, now);
    assert_eq!((t.live_sources.load(Relaxed), t.live_conns.load(Relaxed), t.len()), (0, 0, 0));
}
