//! Deadlines of a worker's sessions: an indexed binary min-heap with at most one entry per slab
//! slot. Setting a slot's deadline moves its entry in place and closing a session cancels it,
//! so the heap holds exactly the live sessions that wait for something: its size follows the
//! number of live sessions, never the connection rate (a lazily cancelled heap keeps every
//! closed session's deadlines until they fall due: at 50k connections/s and a 5 s connect
//! timeout, a quarter of a million dead entries).
//!
//! The worker keeps each entry at or before the session's real deadline (which only moves later
//! while bytes flow); when one comes due it looks at the session and sets the next one.

use std::time::Instant;

/// Marks a slot with no entry in `pos`.
const NONE: usize = usize::MAX;

#[derive(Default)]
pub(crate) struct Timers {
    /// A min-heap on the instant: `heap[i]` is no later than its children `2i+1`, `2i+2`.
    heap: Vec<(Instant, usize)>,
    /// `pos[slot]` is the index of `slot`'s entry in `heap`, or `NONE`. Grows to the highest
    /// slot ever armed (the slab's own high-water mark).
    pos: Vec<usize>,
}

impl Timers {
    /// Sets `slot`'s deadline to `at`, whether it had one or not.
    pub(crate) fn set(&mut self, slot: usize, at: Instant) {
        if slot >= self.pos.len() {
            self.pos.resize(slot + 1, NONE);
        }
        match self.pos[slot] {
            NONE => {
                self.heap.push((at, slot));
                self.pos[slot] = self.heap.len() - 1;
                self.sift_up(self.heap.len() - 1);
            }
            i => {
                let earlier = at < self.heap[i].0;
                self.heap[i].0 = at;
                if earlier {
                    self.sift_up(i);
                } else {
                    self.sift_down(i);
                }
            }
        }
    }

    /// Removes `slot`'s deadline, if it has one.
    pub(crate) fn cancel(&mut self, slot: usize) {
        let Some(&i) = self.pos.get(slot).filter(|&&i| i != NONE) else {
            return;
        };
        self.remove_at(i);
    }

    /// The earliest deadline.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.heap.first().map(|&(at, _)| at)
    }

    /// Removes and returns one slot whose deadline is at or before `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<usize> {
        let &(at, slot) = self.heap.first()?;
        if at > now {
            return None;
        }
        self.remove_at(0);
        Some(slot)
    }

    /// Entries held (for the worker's gauge and tests).
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    fn remove_at(&mut self, i: usize) {
        let slot = self.heap[i].1;
        self.pos[slot] = NONE;
        let last = self.heap.len() - 1;
        if i != last {
            self.heap.swap(i, last);
            self.pos[self.heap[i].1] = i;
        }
        self.heap.pop();
        if i < self.heap.len() {
            self.sift_down(i);
            self.sift_up(i);
        }
    }

    fn sift_up(&mut self, mut i: usize) {
        while i > 0 {
            let parent = (i - 1) / 2;
            if self.heap[parent].0 <= self.heap[i].0 {
                break;
            }
            self.swap(i, parent);
            i = parent;
        }
    }

    fn sift_down(&mut self, mut i: usize) {
        loop {
            let (l, r) = (2 * i + 1, 2 * i + 2);
            let mut least = i;
            if l < self.heap.len() && self.heap[l].0 < self.heap[least].0 {
                least = l;
            }
            if r < self.heap.len() && self.heap[r].0 < self.heap[least].0 {
                least = r;
            }
            if least == i {
                return;
            }
            self.swap(i, least);
            i = least;
        }
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        self.pos[self.heap[a].1] = a;
        self.pos[self.heap[b].1] = b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ms(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_millis(n)
    }

    /// Every entry's index is recorded in `pos`, and the heap order holds.
    fn check(t: &Timers) {
        for (i, &(at, slot)) in t.heap.iter().enumerate() {
            assert_eq!(t.pos[slot], i);
            if i > 0 {
                assert!(t.heap[(i - 1) / 2].0 <= at);
            }
        }
        assert_eq!(t.pos.iter().filter(|&&p| p != NONE).count(), t.heap.len());
    }

    #[test]
    fn pops_in_deadline_order_only_when_due() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        t.set(1, ms(t0, 2000));
        t.set(2, ms(t0, 1000));
        assert_eq!(t.next(), Some(ms(t0, 1000)));
        assert_eq!(t.pop_due(t0), None);
        assert_eq!(t.pop_due(ms(t0, 1000)), Some(2));
        assert_eq!(t.pop_due(ms(t0, 1000)), None);
        assert_eq!(t.pop_due(ms(t0, 5000)), Some(1));
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn set_moves_an_entry_in_place_both_ways() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        for slot in 0..10 {
            t.set(slot, ms(t0, 100 * (slot as u64 + 1)));
        }
        t.set(9, ms(t0, 1)); // earlier
        t.set(0, ms(t0, 5000)); // later
        check(&t);
        assert_eq!(t.len(), 10, "one entry per slot");
        let order: Vec<usize> = std::iter::from_fn(|| t.pop_due(ms(t0, 10_000))).collect();
        assert_eq!(order, vec![9, 1, 2, 3, 4, 5, 6, 7, 8, 0]);
    }

    #[test]
    fn cancel_removes_only_that_slot() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        for slot in 0..8 {
            t.set(slot, ms(t0, slot as u64));
        }
        t.cancel(3);
        t.cancel(3);
        t.cancel(100);
        check(&t);
        let order: Vec<usize> = std::iter::from_fn(|| t.pop_due(ms(t0, 100))).collect();
        assert_eq!(order, vec![0, 1, 2, 4, 5, 6, 7]);
    }

    #[test]
    fn size_follows_live_sessions_under_churn() {
        // A slot armed, moved and cancelled again and again, as a worker does for short
        // connections: the heap never holds more than the live ones.
        let t0 = Instant::now();
        let mut t = Timers::default();
        let mut seed = 7u64;
        for round in 0..100_000u64 {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let slot = (seed >> 33) as usize % 64;
            match round % 3 {
                0 | 1 => t.set(slot, ms(t0, seed >> 50)),
                _ => t.cancel(slot),
            }
            assert!(t.len() <= 64);
        }
        check(&t);
    }
}
