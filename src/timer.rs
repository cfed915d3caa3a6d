//! Deadlines of a worker's sessions: a min-heap of (when, slot, session id) with lazy
//! cancellation. Entries are never removed early; when one comes due the worker checks the
//! session's real deadline (which only moves later while bytes flow) and re-arms if needed.
//! The session id guards against a slot that was freed and reused meanwhile.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

#[derive(Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Instant, usize, u64)>>,
}

impl Timers {
    pub fn arm(&mut self, at: Instant, slot: usize, id: u64) {
        self.heap.push(Reverse((at, slot, id)));
    }

    pub fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Pops one entry due at `now`: `(slot, id)`.
    pub fn pop_due(&mut self, now: Instant) -> Option<(usize, u64)> {
        match self.heap.peek() {
            Some(Reverse((at, _, _))) if *at <= now => self.heap.pop().map(|Reverse((_, slot, id))| (slot, id)),
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pops_in_deadline_order_only_when_due() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        t.arm(t0 + Duration::from_secs(2), 1, 10);
        t.arm(t0 + Duration::from_secs(1), 2, 20);
        assert_eq!(t.next(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(t.pop_due(t0), None);
        assert_eq!(t.pop_due(t0 + Duration::from_secs(1)), Some((2, 20)));
        assert_eq!(t.pop_due(t0 + Duration::from_secs(1)), None);
        assert_eq!(t.pop_due(t0 + Duration::from_secs(5)), Some((1, 10)));
        assert!(t.is_empty());
    }
}
