//! [`TimerWheel`]: when to look at a flow with a timeout again, so that expiry visits the
//! flows that may be due and not every flow.
//!
//! A hashed wheel of [`BUCKETS`] buckets of 2^[`TICK_SHIFT`] ns (16.8 ms; one revolution
//! is 137 s). A timed flow is in exactly one bucket: the one of the tick its deadline falls
//! in (a deadline a revolution or more away waits in its bucket and is looked at once a
//! revolution). Each bucket is a doubly linked list through the slots, so scheduling,
//! rescheduling and cancelling (a flow deleted or replaced) are O(1) and leave nothing
//! stale behind. The wheel only says *when to look*: [`TimerWheel::due`] hands back the slots
//! of the buckets whose tick has come, and the caller checks each one exactly (hard deadline,
//! idle time from the lanes' counters) and expires or reschedules it. Idle timeouts are not
//! pushed forward by traffic (the data path writes no timer state); a flow that turns out to
//! have been used is rescheduled at its last use plus its idle timeout.

/// Log2 of a tick in ns (16.8 ms, below the backend's 100 ms expiry period).
const TICK_SHIFT: u32 = 24;
/// Buckets (a revolution of 8192 ticks, 137 s).
const BUCKETS: usize = 1 << 13;
/// No slot (list ends, unscheduled slots).
const NONE: u32 = u32::MAX;
/// Marks a `prev` that is a bucket's head rather than a slot (its bucket number below).
const HEAD: u32 = 1 << 31;

/// Timers of one instance's flows, by slab slot.
pub(crate) struct TimerWheel {
    /// Per bucket, its first slot.
    heads: Box<[u32]>,
    /// By slot: the next slot in its bucket, or [`NONE`].
    next: Vec<u32>,
    /// By slot: the previous slot in its bucket, `HEAD | bucket` for the first, or [`NONE`]
    /// when not scheduled. Grown only when a slot is first scheduled: an instance without
    /// timeouts pays nothing per flow.
    prev: Vec<u32>,
    /// The tick up to which buckets were handed out; its bucket is looked at again next
    /// time (deadlines later in the same tick).
    cursor: u64,
    scheduled: usize,
}

impl Default for TimerWheel {
    fn default() -> Self {
        Self::new()
    }
}

impl TimerWheel {
    pub(crate) fn new() -> Self {
        Self {
            heads: vec![NONE; BUCKETS].into_boxed_slice(),
            next: Vec::new(),
            prev: Vec::new(),
            cursor: 0,
            scheduled: 0,
        }
    }

    /// Slots scheduled.
    pub(crate) fn len(&self) -> usize {
        self.scheduled
    }

    /// Bytes held by slot (for the memory an instance reports).
    pub(crate) const SLOT_BYTES: usize = 2 * std::mem::size_of::<u32>();

    /// Bytes held whatever the flows (the buckets).
    pub(crate) const BASE_BYTES: usize = BUCKETS * std::mem::size_of::<u32>();

    /// Looks at `slot` again at `deadline` (ns; or in the current tick if that has passed),
    /// instead of when it was scheduled for before.
    pub(crate) fn schedule(&mut self, slot: u32, deadline: u64) {
        debug_assert!(slot < HEAD);
        self.cancel(slot);
        let s = slot as usize;
        if self.prev.len() <= s {
            let n = (s + 1).next_power_of_two().max(64);
            self.prev.resize(n, NONE);
            self.next.resize(n, NONE);
        }
        let tick = (deadline >> TICK_SHIFT).max(self.cursor);
        let b = (tick % BUCKETS as u64) as usize;
        let first = self.heads[b];
        if first != NONE {
            self.prev[first as usize] = slot;
        }
        self.next[s] = first;
        self.prev[s] = HEAD | b as u32;
        self.heads[b] = slot;
        self.scheduled += 1;
    }

    /// Forgets `slot`'s timer, if it has one.
    pub(crate) fn cancel(&mut self, slot: u32) {
        let s = slot as usize;
        let Some(&p) = self.prev.get(s) else {
            return;
        };
        if p == NONE {
            return;
        }
        let n = self.next[s];
        if p & HEAD != 0 {
            self.heads[(p & !HEAD) as usize] = n;
        } else {
            self.next[p as usize] = n;
        }
        if n != NONE {
            self.prev[n as usize] = p;
        }
        self.prev[s] = NONE;
        self.next[s] = NONE;
        self.scheduled -= 1;
    }

    /// Whether `slot` has a timer.
    #[cfg(test)]
    pub(crate) fn is_scheduled(&self, slot: u32) -> bool {
        self.prev.get(slot as usize).is_some_and(|&p| p != NONE)
    }

    /// Unschedules and appends to `out` the slots of every bucket whose tick has come by
    /// `now` (the caller checks each one and reschedules those not due yet). Visits at most
    /// one revolution of buckets, however long since the last call.
    pub(crate) fn due(&mut self, now: u64, out: &mut Vec<u32>) {
        if self.scheduled == 0 {
            self.cursor = self.cursor.max(now >> TICK_SHIFT);
            return;
        }
        let to = (now >> TICK_SHIFT).max(self.cursor);
        let from = self.cursor.max(to.saturating_sub(BUCKETS as u64 - 1));
        for tick in from..=to {
            let b = (tick % BUCKETS as u64) as usize;
            let mut s = std::mem::replace(&mut self.heads[b], NONE);
            while s != NONE {
                let n = self.next[s as usize];
                self.next[s as usize] = NONE;
                self.prev[s as usize] = NONE;
                self.scheduled -= 1;
                out.push(s);
                s = n;
            }
        }
        self.cursor = to;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: u64 = 1 << TICK_SHIFT;

    #[test]
    fn slots_come_due_in_their_tick_and_cancel_leaves_nothing() {
        let mut w = TimerWheel::new();
        let base = 1_000 * TICK;
        w.due(base, &mut Vec::new());
        w.schedule(1, base + 3 * TICK + 5);
        w.schedule(2, base + 10 * TICK);
        w.schedule(3, base + 3 * TICK);
        w.schedule(4, base - 50 * TICK); // past: the current tick
        w.schedule(5, base + (BUCKETS as u64 + 3) * TICK); // next revolution, same bucket as 1
        assert_eq!(w.len(), 5);
        w.cancel(3);
        w.cancel(3);
        assert!(!w.is_scheduled(3));
        let mut out = Vec::new();
        w.due(base + TICK, &mut out);
        assert_eq!(out, [4]);
        out.clear();
        w.due(base + 3 * TICK, &mut out);
        out.sort_unstable();
        assert_eq!(
            out,
            [1, 5],
            "slot 5 comes a revolution early (the caller re-checks)"
        );
        w.schedule(5, base + (BUCKETS as u64 + 3) * TICK);
        out.clear();
        w.due(base + 9 * TICK, &mut out);
        assert_eq!(out, [5], "the last call's tick is looked at again");
        w.schedule(5, base + (BUCKETS as u64 + 3) * TICK);
        out.clear();
        w.due(base + 9 * TICK, &mut out);
        assert!(out.is_empty());
        // Rescheduling moves a slot (no second timer).
        w.schedule(2, base + 12 * TICK);
        w.schedule(2, base + 11 * TICK);
        assert_eq!(w.len(), 2);
        w.due(base + 11 * TICK, &mut out);
        assert_eq!(out, [2]);
        out.clear();
        // A long gap visits each bucket once.
        w.due(base + 100 * BUCKETS as u64 * TICK, &mut out);
        assert_eq!(out, [5]);
        assert_eq!(w.len(), 0);
    }

    /// Unlinking from the middle, the front and the back of a bucket keeps the others.
    #[test]
    fn cancel_anywhere_in_a_bucket() {
        let mut w = TimerWheel::new();
        for s in 0..6 {
            w.schedule(s, 7 * TICK);
        }
        w.cancel(5); // front (last scheduled)
        w.cancel(0); // back
        w.cancel(3); // middle
        let mut out = Vec::new();
        w.due(7 * TICK, &mut out);
        out.sort_unstable();
        assert_eq!(out, [1, 2, 4]);
        assert_eq!(w.len(), 0);
    }
}
