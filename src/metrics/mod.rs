//! Counters and histograms of the data path, one set per worker.
//!
//! Each worker is the only writer of its own [`WorkerCounters`] (a relaxed load and store, no
//! locked instruction, no cache line shared with another worker); the admin thread reads every
//! worker's set and sums them, so totals are exact. The sets live in the runtime object of
//! their service or server (`shared.rs`), one per worker; gauges that several workers must
//! agree on (active connections, used by caps and leastconn) live there too.

pub mod names;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A counter with a single writer.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Single-writer increment: a plain load and store is enough and avoids a locked
    /// read-modify-write on the data path.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A gauge with a single writer.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Relaxed);
    }

    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Upper bounds (seconds) of the server connect-time histogram.
pub const CONNECT_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
/// Upper bounds (seconds) of the TLS handshake histogram.
pub const HANDSHAKE_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
/// Upper bounds (seconds) of the session-duration histogram.
pub const DURATION_BUCKETS: &[f64] = &[0.001, 0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0];

/// A fixed-bucket histogram with a single writer. Buckets are not cumulative here; the
/// exposition makes them so.
#[derive(Debug)]
pub struct Histogram {
    pub bounds: &'static [f64],
    /// `counts[i]` counts observations in (bounds[i-1], bounds[i]]; the last slot is +Inf.
    counts: Vec<Counter>,
    sum_us: Counter,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| Counter::default()).collect(),
            sum_us: Counter::default(),
        }
    }

    pub fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        let i = self.bounds.iter().position(|&b| secs <= b).unwrap_or(self.bounds.len());
        self.counts[i].add(1);
        self.sum_us.add(d.as_micros().min(u128::from(u64::MAX)) as u64);
    }

    /// Adds this histogram into `acc` (per-bucket counts, sum in microseconds).
    pub fn sum_into(&self, acc: &mut HistogramSnapshot) {
        if acc.counts.len() != self.counts.len() {
            acc.counts = vec![0; self.counts.len()];
        }
        for (a, c) in acc.counts.iter_mut().zip(&self.counts) {
            *a += c.get();
        }
        acc.sum_us += self.sum_us.get();
    }
}

/// A histogram summed over workers.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct HistogramSnapshot {
    pub counts: Vec<u64>,
    pub sum_us: u64,
}

impl HistogramSnapshot {
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// Per server, per worker (see `shared::ServerRuntime`).
#[derive(Debug)]
pub struct ServerCounters {
    /// Connections established to the server.
    pub connects: Counter,
    pub failed_connects: Counter,
    /// "Down" (server to client): bytes from the server written to clients' sockets.
    pub bytes_down: Counter,
    /// "Up" (client to server): bytes from clients written to the server's sockets.
    pub bytes_up: Counter,
    pub connect_time: Histogram,
}

impl Default for ServerCounters {
    fn default() -> Self {
        ServerCounters {
            connects: Counter::default(),
            failed_connects: Counter::default(),
            bytes_down: Counter::default(),
            bytes_up: Counter::default(),
            connect_time: Histogram::new(CONNECT_BUCKETS),
        }
    }
}

/// Per service, per worker (see `shared::ServiceRuntime`).
#[derive(Debug)]
pub struct ServiceCounters {
    pub accepted: Counter,
    pub refused_acl: Counter,
    /// Refused by `max_conns_per_ip` or `rate_per_ip`.
    pub refused_per_ip: Counter,
    pub refused_limit: Counter,
    pub refused_no_server: Counter,
    /// Times a listener of the service stopped accepting at a connection cap (global or the
    /// service's `max_conns`): clients then wait in the kernel backlog.
    pub limit_pauses: Counter,
    /// Sessions closed because their server went down (`on_down close`).
    pub closed_on_down: Counter,
    pub session_duration: Histogram,
    /// TLS handshakes completed.
    pub tls_ok: Counter,
    /// TLS handshakes failed, one counter per `tls::FAILURE_REASONS` entry.
    pub tls_failed: Vec<Counter>,
    /// Time from accept to the end of a completed handshake.
    pub tls_handshake_time: Histogram,
    /// TLS sessions by version: `[1.2, 1.3]`.
    pub tls_versions: [Counter; 2],
    /// PROXY headers read on `accept_proxy` binds.
    pub proxy_ok: Counter,
    /// Connections closed for their PROXY header, one counter per
    /// `proxy_protocol::parse::REASONS` entry.
    pub proxy_failed: [Counter; 4],
}

impl Default for ServiceCounters {
    fn default() -> Self {
        ServiceCounters {
            accepted: Counter::default(),
            refused_acl: Counter::default(),
            refused_per_ip: Counter::default(),
            refused_limit: Counter::default(),
            refused_no_server: Counter::default(),
            limit_pauses: Counter::default(),
            closed_on_down: Counter::default(),
            session_duration: Histogram::new(DURATION_BUCKETS),
            tls_ok: Counter::default(),
            tls_failed: crate::tls::FAILURE_REASONS.iter().map(|_| Counter::default()).collect(),
            tls_handshake_time: Histogram::new(HANDSHAKE_BUCKETS),
            tls_versions: [Counter::default(), Counter::default()],
            proxy_ok: Counter::default(),
            proxy_failed: Default::default(),
        }
    }
}

/// A worker's own gauges (it is their only writer; set once per loop turn, `sessions` also
/// whenever its table changes) and the one count other workers write.
#[derive(Debug, Default)]
pub struct WorkerCounters {
    /// Sessions in the worker's table now.
    pub sessions: Gauge,
    /// Deadlines in the worker's timer heap now: at most one per live session.
    pub timers: Gauge,
    /// Pipes the worker holds now, lent to flows and idle in its pool (two descriptors each).
    pub pipes: Gauge,
    /// Connections this worker accepted and passed to a less loaded one.
    pub dispatched: Counter,
    /// Connections other workers passed to this one that it has not started yet: part of its
    /// load until it does. Written by the senders (add) and by this worker (take), so a real
    /// read-modify-write, unlike the single-writer counts above.
    pub incoming: AtomicU64,
}

impl WorkerCounters {
    /// How loaded the worker is for dispatching: its sessions and those on their way to it.
    pub fn load(&self) -> u64 {
        self.sessions.get() + self.incoming.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn histogram_buckets_and_sum() {
        let h = Histogram::new(&[0.001, 0.01]);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(1));
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_secs(1));
        let mut s = HistogramSnapshot::default();
        h.sum_into(&mut s);
        h.sum_into(&mut s);
        assert_eq!(s.counts, vec![4, 2, 2]);
        assert_eq!(s.sum_us, 2 * (500 + 1000 + 5000 + 1_000_000));
        assert_eq!(s.count(), 8);
    }

    #[test]
    fn counter_adds() {
        let c = Counter::default();
        c.add(3);
        c.add(4);
        assert_eq!(c.get(), 7);
    }
}
