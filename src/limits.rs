//! Per-source limits: `max_conns_per_ip N` (live connections from one source) and
//! `rate_per_ip N/s` (new connections, a token bucket holding at most N), global and per
//! service, exact over every worker: each scope has one table, shared by the workers behind
//! a few mutexes (a lock per accept and per close, held for a hash lookup).
//!
//! A source is an IPv4 address, or an IPv6 /64 (one subscriber usually gets a whole /64, so
//! a per-address key would let one client take 2^64 slots).
//!
//! Memory is bounded: a table holds at most [`TABLE_SIZE`] sources. A new source in a full
//! table takes the place of an idle one (no live connection); when every source holds live
//! connections, the newcomer is let in untracked and counted (`table_full`), as HAProxy's
//! stick tables do: a full table of live sources means that many real clients are connected,
//! which the global `max_conns` bounds anyway, and refusing every new client then would turn a
//! crowd into an outage.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Instant;

/// Sources a table tracks at most (all shards together).
pub const TABLE_SIZE: usize = 65_536;
const SHARDS: usize = 16;

/// The limits of one scope (global, or a service).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PerSource {
    /// `max_conns_per_ip N`.
    pub max_conns: Option<u32>,
    /// `rate_per_ip N/s` (or `N/m`): N new connections per `per`, in bursts of up to N.
    pub rate: Option<Rate>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub per: std::time::Duration,
}

impl PerSource {
    pub fn is_set(&self) -> bool {
        self.max_conns.is_some() || self.rate.is_some()
    }
}

/// Why a source was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    TooMany,
    TooFast,
}

/// The table key of a client address.
pub fn source_key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => 0xffff_0000_0000 | u128::from(u32::from(v4)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => 0xffff_0000_0000 | u128::from(u32::from(v4)),
            None => u128::from(v6) & !((1u128 << 64) - 1),
        },
    }
}

#[derive(Debug)]
struct Entry {
    live: u32,
    /// Tokens of the rate bucket, and when they were last topped up.
    tokens: f64,
    refilled: Instant,
}

/// One scope's sources.
#[derive(Debug)]
pub struct SourceTable {
    shards: Box<[Mutex<HashMap<u128, Entry>>]>,
    /// Sources with at least one live connection (a gauge: back to 0 when all are closed).
    pub live_sources: AtomicU64,
    /// Live connections over all sources.
    pub live_conns: AtomicU64,
    /// New sources let in untracked because every tracked one held live connections.
    pub table_full: AtomicU64,
}

impl Default for SourceTable {
    fn default() -> SourceTable {
        SourceTable {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            live_sources: AtomicU64::new(0),
            live_conns: AtomicU64::new(0),
            table_full: AtomicU64::new(0),
        }
    }
}

impl SourceTable {
    fn shard(&self, key: u128) -> std::sync::MutexGuard<'_, HashMap<u128, Entry>> {
        // The low bits of an IPv6 key are zero (/64): mix the halves.
        let h = (key ^ (key >> 64) ^ (key >> 17)) as usize;
        // A panic while holding the lock aborts the process (panic = "abort"), so a poisoned
        // lock cannot be seen in release; in tests, go on with the data as it is.
        self.shards[h % SHARDS].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a connection for `key` under `limits`: `Ok(true)` tracked (release it with
    /// [`SourceTable::release`]), `Ok(false)` let in untracked (the table is full of live
    /// sources), or why it is refused.
    pub fn admit(&self, key: u128, limits: PerSource, now: Instant) -> Result<bool, Refusal> {
        let mut shard = self.shard(key);
        if !shard.contains_key(&key) {
            if shard.len() >= TABLE_SIZE / SHARDS && !evict_idle(&mut shard, limits, now) {
                self.table_full.fetch_add(1, Relaxed);
                return Ok(false);
            }
            let full = limits.rate.map_or(0.0, |r| f64::from(r.count));
            shard.insert(key, Entry { live: 0, tokens: full, refilled: now });
        }
        let e = shard.get_mut(&key).expect("inserted above");
        if limits.max_conns.is_some_and(|max| e.live >= max) {
            return Err(Refusal::TooMany);
        }
        if let Some(rate) = limits.rate {
            refill(e, rate, now);
            if e.tokens < 1.0 {
                return Err(Refusal::TooFast);
            }
            e.tokens -= 1.0;
        }
        e.live += 1;
        if e.live == 1 {
            self.live_sources.fetch_add(1, Relaxed);
        }
        self.live_conns.fetch_add(1, Relaxed);
        Ok(true)
    }

    /// A tracked connection of `key` ended. A source with nothing live and a full bucket is
    /// forgotten at once, so an idle table is empty.
    pub fn release(&self, key: u128, limits: PerSource, now: Instant) {
        let mut shard = self.shard(key);
        let Some(e) = shard.get_mut(&key) else {
            return;
        };
        e.live = e.live.saturating_sub(1);
        self.live_conns.fetch_sub(1, Relaxed);
        if e.live == 0 {
            self.live_sources.fetch_sub(1, Relaxed);
            if forgettable(e, limits, now) {
                shard.remove(&key);
            }
        }
    }

    /// Sources tracked now (live or remembered for their rate).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn refill(e: &mut Entry, rate: Rate, now: Instant) {
    let elapsed = now.saturating_duration_since(e.refilled).as_secs_f64();
    let per_sec = f64::from(rate.count) / rate.per.as_secs_f64();
    e.tokens = (e.tokens + elapsed * per_sec).min(f64::from(rate.count));
    e.refilled = now;
}

/// Nothing live and nothing the rate still remembers.
fn forgettable(e: &mut Entry, limits: PerSource, now: Instant) -> bool {
    if e.live > 0 {
        return false;
    }
    match limits.rate {
        None => true,
        Some(rate) => {
            refill(e, rate, now);
            e.tokens >= f64::from(rate.count)
        }
    }
}

/// Makes room in a full shard: drops a forgettable source if there is one, else any source
/// with nothing live (its rate history is lost). False when every source holds live
/// connections.
fn evict_idle(shard: &mut HashMap<u128, Entry>, limits: PerSource, now: Instant) -> bool {
    let victim = shard
        .iter_mut()
        .find_map(|(k, e)| forgettable(e, limits, now).then_some(*k))
        .or_else(|| shard.iter().find_map(|(k, e)| (e.live == 0).then_some(*k)));
    match victim {
        Some(k) => {
            shard.remove(&k);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests;
