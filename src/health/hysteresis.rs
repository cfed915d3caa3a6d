//! Rise/fall hysteresis: turns a stream of probe results into up/down edges.
//!
//! Rules (DESIGN.md): a server starts up; its first failure marks it down at once; after that
//! `fall` consecutive failures take it down and `rise` consecutive successes bring it up.
//! Active probes and passive failures (failed connects seen by the workers) feed the same state.

/// Health of one server as the health thread sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hysteresis {
    up: bool,
    /// False until the first result: the first failure of a never-judged server is decisive,
    /// so a server that is dead at start-up is not handed `fall` connections first.
    judged: bool,
    /// Consecutive successes; reset by any failure.
    ok_run: u32,
    /// Consecutive failures; reset by any success.
    fail_run: u32,
}

impl Default for Hysteresis {
    fn default() -> Self {
        Hysteresis { up: true, judged: false, ok_run: 0, fail_run: 0 }
    }
}

impl Hysteresis {
    /// A server already judged down (one handed over by an upgrade): it needs `rise`
    /// successes to come up.
    pub fn down() -> Hysteresis {
        Hysteresis { up: false, judged: true, ok_run: 0, fail_run: 0 }
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Records one result; returns the new state when it flipped.
    pub fn record(&mut self, ok: bool, rise: u32, fall: u32) -> Option<bool> {
        let first = !self.judged;
        self.judged = true;
        if ok {
            self.fail_run = 0;
            self.ok_run = self.ok_run.saturating_add(1);
            if !self.up && self.ok_run >= rise {
                self.up = true;
                return Some(true);
            }
        } else {
            self.ok_run = 0;
            self.fail_run = self.fail_run.saturating_add(1);
            if self.up && (first || self.fail_run >= fall) {
                self.up = false;
                return Some(false);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_up_and_first_failure_marks_down_at_once() {
        let mut h = Hysteresis::default();
        assert!(h.is_up());
        assert_eq!(h.record(false, 2, 3), Some(false));
    }

    #[test]
    fn rise_consecutive_successes_bring_it_up() {
        let mut h = Hysteresis::default();
        h.record(false, 2, 3);
        assert_eq!(h.record(true, 2, 3), None);
        assert_eq!(h.record(false, 2, 3), None, "a failure resets the success run");
        assert_eq!(h.record(true, 2, 3), None);
        assert_eq!(h.record(true, 2, 3), Some(true));
        assert!(h.is_up());
    }

    #[test]
    fn after_first_verdict_fall_failures_take_it_down() {
        let mut h = Hysteresis::default();
        assert_eq!(h.record(true, 2, 3), None);
        assert_eq!(h.record(false, 2, 3), None);
        assert_eq!(h.record(false, 2, 3), None);
        assert_eq!(h.record(true, 2, 3), None, "a success resets the failure run");
        assert_eq!(h.record(false, 2, 3), None);
        assert_eq!(h.record(false, 2, 3), None);
        assert_eq!(h.record(false, 2, 3), Some(false));
        assert_eq!(h.record(false, 2, 3), None, "edges only, no repeats");
    }

    #[test]
    fn a_server_handed_over_down_needs_rise_successes() {
        let mut h = Hysteresis::down();
        assert!(!h.is_up());
        assert_eq!(h.record(false, 2, 3), None, "no edge: already down");
        assert_eq!(h.record(true, 2, 3), None);
        assert_eq!(h.record(true, 2, 3), Some(true));
    }

    #[test]
    fn rise_one_fall_one() {
        let mut h = Hysteresis::default();
        assert_eq!(h.record(true, 1, 1), None);
        assert_eq!(h.record(false, 1, 1), Some(false));
        assert_eq!(h.record(true, 1, 1), Some(true));
    }
}
