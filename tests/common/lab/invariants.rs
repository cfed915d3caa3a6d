//! What every fault test ends with ([`Lab::invariants`]): shunt alive, no panic in its log,
//! active connections back to 0 (/status and /metrics), its sockets back to the [`Baseline`]
//! taken after warm-up (pooled pipes allowed), no socket in CLOSE_WAIT, and idle CPU near 0.

use super::super::http::metric_in;
use super::super::procfs::{cpu_over, fd_count, fd_kinds, fd_targets, sockets_in_state, tcp_sockets};
use super::super::wait::wait_for;
use super::{Lab, T};
use std::thread;
use std::time::{Duration, Instant};

/// How much CPU an idle shunt may use in [`IDLE_WINDOW`]: a tenth of a core. Idle, it only runs
/// its health probes (a few per second, well under a millisecond each; measured: 0 or one 10 ms
/// clock tick); a loop that spins (a busy poll, a timer re-armed in the past, a readiness never
/// cleared) takes a whole core, ten times this. A loaded machine slows an idle process down; it
/// does not make it use more CPU.
pub const IDLE_CPU_MAX: Duration = Duration::from_millis(100);
/// How long idle CPU is measured (waiting by design: nothing is supposed to happen).
pub const IDLE_WINDOW: Duration = Duration::from_secs(1);

/// Descriptors and memory of shunt once warmed up.
pub struct Baseline {
    pub sockets: usize,
    pub other: usize,
    pub fds: usize,
    pub rss_kib: u64,
}

impl Lab {
    /// The baseline to come back to. A probe in flight holds a socket for a moment: the fewest
    /// sockets over a few samples (10 ms apart, pacing only) is the baseline.
    pub fn baseline(&self) -> Baseline {
        let pid = self.shunt.pid();
        let mut best: Option<(usize, usize, usize)> = None;
        for _ in 0..20 {
            let k = fd_kinds(pid);
            if best.is_none_or(|b| k.0 < b.0) {
                best = Some(k);
            }
            thread::sleep(Duration::from_millis(10));
        }
        let (sockets, _pipes, other) = best.unwrap();
        Baseline { sockets, other, fds: fd_count(pid), rss_kib: self.shunt.rss_kib() }
    }

    /// The invariants every test ends with; returns a one-line summary.
    pub fn invariants(&mut self, base: &Baseline) -> String {
        let pid = self.shunt.pid();
        assert!(self.shunt.is_running(), "shunt died; log:\n{}", self.shunt.log());
        let log = self.shunt.log();
        assert!(!log.contains("panicked"), "a panic in shunt's log:\n{log}");
        wait_for(T, "active connections back to 0 in /status", || self.active() == 0);
        // Back to the baseline, waited for (sessions and their descriptors close a moment after
        // the last client went). Files the admin thread opens while it answers a scrape
        // (/proc/self/stat, statm, fd) come and go too; a leak shows as more than the baseline
        // for good, never fewer.
        let deadline = Instant::now() + T;
        let mut kinds = fd_kinds(pid);
        let mut close_wait = sockets_in_state(pid, "CLOSE_WAIT");
        loop {
            if kinds.0 <= base.sockets && kinds.2 <= base.other && close_wait == 0 {
                break;
            }
            if Instant::now() >= deadline {
                let other: Vec<String> = fd_targets(pid)
                    .into_iter()
                    .filter(|t| !t.starts_with("socket:") && !t.starts_with("pipe:"))
                    .collect();
                panic!(
                    "after {T:?}: shunt holds {} sockets (baseline {}), {close_wait} in CLOSE_WAIT, {} other \
                     descriptors (baseline {}: {other:?}); its sockets: {:?}",
                    kinds.0,
                    base.sockets,
                    kinds.2,
                    base.other,
                    tcp_sockets(pid).iter().map(|s| (s.local, s.remote, s.state)).collect::<Vec<_>>()
                );
            }
            thread::sleep(Duration::from_millis(20));
            kinds = fd_kinds(pid);
            close_wait = sockets_in_state(pid, "CLOSE_WAIT");
        }
        let pipe_cap = 2 * 256 * self.workers;
        assert!(kinds.1 <= pipe_cap, "{} pipe descriptors (the pools keep at most {pipe_cap})", kinds.1);
        let m = self.metrics();
        assert_eq!(metric_in(&m, "shunt_active_connections"), Some(0.0), "shunt_active_connections");
        let fds_metric = metric_in(&m, "shunt_process_open_fds").unwrap_or(-1.0);
        let (cpu, wall) = cpu_over(pid, IDLE_WINDOW);
        assert!(cpu < IDLE_CPU_MAX, "shunt used {cpu:?} of CPU in {wall:?} of idle time");
        format!(
            "invariants ok: alive, no panic, 0 active, {} fds (baseline {}, metric {fds_metric}), {} pipe ends, \
             0 CLOSE_WAIT, idle CPU {cpu:?}/{wall:.2?}, RSS {} KiB (baseline {})",
            fd_count(pid),
            base.fds,
            kinds.1,
            self.shunt.rss_kib(),
            base.rss_kib
        )
    }
}
