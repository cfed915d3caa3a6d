//! Spreading sessions evenly over the workers. Each worker accepts on its own `SO_REUSEPORT`
//! listener, and the kernel's hash of the connection's addresses picks which one a client waits
//! on: fair on average, uneven at any moment, and the few long-lived connections it happens to
//! stack on one worker stay there. So a worker that accepts while it holds clearly more than
//! the least loaded worker passes the connection on, as HAProxy's listeners do across threads:
//! the accepted socket, its admission and source hold, and its accept time go over the other
//! worker's channel, and that worker starts the session as if it had accepted it. Caps,
//! per-source limits and leastconn are unaffected: their counts are shared, and they were
//! taken at accept.
//!
//! A worker's load is the sessions in its table (it publishes the count whenever the table
//! changes) plus the connections on their way to it (a sender counts one in before sending,
//! the receiver counts it out as it starts it), so two workers dispatching at once see each
//! other's choices.

use super::Worker;
use crate::logs;
use crate::net;
use crate::shared::{Accepted, WorkerMsg};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

/// How many more sessions than the least loaded worker a worker may hold and still start a new
/// one itself. One: the workers stay within two sessions of each other. A slack that grew with
/// the load would spare hand-offs, but it would also let the newest connections, the ones
/// likely to be busy (a load generator's, say, opened after thousands of idle ones), pile onto
/// one worker, where a burst of them waits behind the others. With 1k–8k idle connections held
/// and wrk on top (the scaling benchmark), a slack of 2 + 1/32 of the load left wrk's p99 no
/// better than the kernel's hash alone (5.4–7.2 ms in one run); a slack of one brought it to
/// 2.6–3.4 ms (medians of 3 rounds).
const SLACK: u64 = 1;

/// Where a connection accepted by worker `me` should go, given every worker's load: the least
/// loaded worker (the first of equals), if `me` holds more than it plus the slack; else `None`,
/// it stays.
pub(super) fn choose(loads: &[u64], me: usize) -> Option<usize> {
    let (least, &min) = loads.iter().enumerate().min_by_key(|&(_, l)| *l)?;
    (*loads.get(me)? > min + SLACK).then_some(least)
}

impl Worker {
    /// Publishes the size of this worker's table, its share of its load.
    pub(super) fn publish_load(&self) {
        self.counters.sessions.set(self.sessions.len() as u64);
    }

    /// Passes `conn` to a less loaded worker, if one should take it (`None`); otherwise gives
    /// it back for this worker to start. (With one worker, `accept` does not ask.)
    pub(super) fn dispatch(&mut self, conn: Accepted) -> Option<Accepted> {
        if self.drain_deadline.is_some() {
            return Some(conn);
        }
        self.loads.clear();
        self.loads.extend(self.stats.workers.iter().map(|w| w.load()));
        let Some(target) = choose(&self.loads, self.index) else {
            return Some(conn);
        };
        let counters = &self.stats.workers[target];
        counters.incoming.fetch_add(1, Relaxed);
        match self.peers[target].tx.send(WorkerMsg::Dispatched(conn)) {
            Ok(()) => {
                self.counters.dispatched.add(1);
                self.wake_pending[target] = true;
                None
            }
            // That worker has exited (a drain in progress): keep the connection here.
            Err(back) => {
                counters.incoming.fetch_sub(1, Relaxed);
                match back.0 {
                    WorkerMsg::Dispatched(conn) => Some(conn),
                    _ => unreachable!("the message sent was Dispatched"),
                }
            }
        }
    }

    /// Wakes the workers this turn passed connections to: one wake each, however many.
    pub(super) fn wake_dispatched(&mut self) {
        for (target, pending) in self.wake_pending.iter_mut().enumerate() {
            if std::mem::take(pending) {
                if let Err(e) = self.peers[target].waker.wake() {
                    logs::limited_warn("dispatch", format_args!("waking worker {target}: {e}"));
                }
            }
        }
    }

    /// Starts the session of a connection another worker accepted and passed here.
    pub(super) fn take_dispatched(&mut self, conn: Accepted, now: Instant) {
        self.counters.incoming.fetch_sub(1, Relaxed);
        match self.pools.iter().position(|p| Arc::ptr_eq(&p.rt, &conn.service)) {
            Some(pool) => self.start_session(pool, conn.stream, conn.addr, conn.hold, conn.accept_proxy, conn.at),
            // A reload removed its service while it was on its way: refuse it, give all back.
            None => {
                net::set_linger_zero(&conn.stream);
                self.stats.release_admission(&conn.service);
                if let Some(hold) = conn.hold {
                    super::accept::release_source(&self.stats, &conn.service, hold, now);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::choose;

    #[test]
    fn a_worker_within_the_slack_keeps_its_connection() {
        assert_eq!(choose(&[0, 0], 0), None);
        assert_eq!(choose(&[1, 0], 0), None, "one more than the least is within the slack");
        assert_eq!(choose(&[500, 499], 0), None);
    }

    #[test]
    fn a_worker_past_the_slack_passes_to_the_least_loaded() {
        assert_eq!(choose(&[2, 0], 0), Some(1));
        assert_eq!(choose(&[10, 4, 1, 7], 0), Some(2));
        assert_eq!(choose(&[502, 500], 0), Some(1));
        // The least loaded never passes on, even to an equal.
        assert_eq!(choose(&[5, 5, 9], 1), None);
    }

    #[test]
    fn loads_kept_by_choose_stay_within_two_of_each_other() {
        // Connections arrive on workers in a skewed pattern (3 of 4 on worker 0); each goes
        // where `choose` says.
        for total in [1_000u64, 4_000, 8_000] {
            let mut loads = [0u64; 2];
            for i in 0..total {
                let me = usize::from(i % 4 == 3);
                let to = choose(&loads, me).unwrap_or(me);
                loads[to] += 1;
            }
            assert!(loads[0].abs_diff(loads[1]) <= 2, "{total}: {loads:?}");
        }
    }

    #[test]
    fn no_loads_or_an_unknown_worker_choose_nothing() {
        assert_eq!(choose(&[], 0), None);
        assert_eq!(choose(&[9, 0], 5), None);
    }
}
