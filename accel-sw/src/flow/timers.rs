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
//!
//! The wheel also keeps each timed flow's timeouts beside its links (the slab entry holds
//! none: a flow without timeouts pays nothing for them). An idle timeout is a `u32`: whole
//! milliseconds below 2^31 ms (24.8 days) as such, any other value (not a whole number of
//! milliseconds, or longer) marked and kept exactly in a second vector grown only when such a
//! value first appears; hard deadlines (absolute ns) are in a vector grown only when a flow
//! first has one. Every ns value of the wire format is kept exactly.

use super::slot_chunks::SlotChunks;

/// Log2 of a tick in ns (16.8 ms, below the backend's 100 ms expiry period).
const TICK_SHIFT: u32 = 24;
/// Buckets (a revolution of 8192 ticks, 137 s).
const BUCKETS: usize = 1 << 13;
/// No slot (list ends, unscheduled slots).
const NONE: u32 = u32::MAX;
/// Marks a `prev` that is a bucket's head rather than a slot (its bucket number below).
const HEAD: u32 = 1 << 31;

/// An idle timeout kept as [`EXACT`] | nothing: the value is in `idle_exact`.
const EXACT: u32 = 1 << 31;
/// Nanoseconds in a millisecond (the unit of a `u32` idle timeout without [`EXACT`]).
const MS: u64 = 1_000_000;

/// Timers of one instance's flows, and their timeouts, by slab slot.
pub(crate) struct TimerWheel {
    /// Per bucket, its first slot.
    heads: Box<[u32]>,
    /// By slot: the next slot in its bucket, or [`NONE`].
    next: SlotChunks<u32>,
    /// By slot: the previous slot in its bucket, `HEAD | bucket` for the first, or [`NONE`]
    /// when not scheduled. Grown only when a slot is first scheduled: an instance without
    /// timeouts pays nothing per flow.
    prev: SlotChunks<u32>,
    /// By slot: its idle timeout (0: none; whole milliseconds, or [`EXACT`]: in
    /// `idle_exact`). As long as `prev`.
    idle: SlotChunks<u32>,
    /// By slot: idle timeouts (ns) marked [`EXACT`]; empty until one is.
    idle_exact: SlotChunks<u64>,
    /// By slot: hard deadlines (ns; `u64::MAX`: none); empty until a flow has one.
    hard: SlotChunks<u64>,
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
            next: SlotChunks::new(|| NONE),
            prev: SlotChunks::new(|| NONE),
            idle: SlotChunks::new(|| 0),
            idle_exact: SlotChunks::new(|| 0),
            hard: SlotChunks::new(|| u64::MAX),
            cursor: 0,
            scheduled: 0,
        }
    }

    /// Slots scheduled.
    pub(crate) fn len(&self) -> usize {
        self.scheduled
    }

    /// Bytes held by slot at most (for the memory an instance reports): the links, the idle
    /// timeout, its exact value and the hard deadline.
    pub(crate) const SLOT_BYTES: usize =
        3 * std::mem::size_of::<u32>() + 2 * std::mem::size_of::<u64>();

    /// Grows the links and idle timeouts by slot to hold `slot` (a chunk at a time: nothing
    /// moves).
    fn reserve_slot(&mut self, s: usize) {
        if self.prev.capacity() <= s {
            self.prev.grow_to(s + 1);
            self.next.grow_to(s + 1);
            self.idle.grow_to(s + 1);
        }
    }

    /// Keeps `slot`'s timeouts: `idle_ns` (0: none) and `hard_deadline` (ns; `u64::MAX`:
    /// none). Any slot given timeouts must have them cleared ([`Self::forget`]) or replaced
    /// before it holds a flow without.
    pub(crate) fn set_timeouts(&mut self, slot: u32, idle_ns: u64, hard_deadline: u64) {
        let s = slot as usize;
        self.reserve_slot(s);
        self.idle[s] = match u32::try_from(idle_ns / MS) {
            Ok(ms) if idle_ns % MS == 0 && ms < EXACT => ms,
            _ => {
                self.idle_exact.grow_to(s + 1);
                self.idle_exact[s] = idle_ns;
                EXACT
            }
        };
        if hard_deadline != u64::MAX || s < self.hard.capacity() {
            self.hard.grow_to(s + 1);
            self.hard[s] = hard_deadline;
        }
    }

    /// `slot`'s idle timeout (ns; 0: none) and hard deadline (ns; `u64::MAX`: none).
    #[inline]
    pub(crate) fn timeouts(&self, slot: u32) -> (u64, u64) {
        let s = slot as usize;
        let idle = match self.idle.get(s).copied().unwrap_or(0) {
            EXACT => self.idle_exact[s],
            ms => u64::from(ms) * MS,
        };
        (idle, self.hard.get(s).copied().unwrap_or(u64::MAX))
    }

    /// Forgets `slot`'s timer and its timeouts.
    pub(crate) fn forget(&mut self, slot: u32) {
        self.cancel(slot);
        let s = slot as usize;
        if let Some(i) = self.idle.get_mut(s) {
            *i = 0;
        }
        if let Some(h) = self.hard.get_mut(s) {
            *h = u64::MAX;
        }
    }

    /// Bytes held whatever the flows (the buckets).
    pub(crate) const BASE_BYTES: usize = BUCKETS * std::mem::size_of::<u32>();

    /// Looks at `slot` again at `deadline` (ns; or in the current tick if that has passed),
    /// instead of when it was scheduled for before.
    pub(crate) fn schedule(&mut self, slot: u32, deadline: u64) {
        debug_assert!(slot < HEAD);
        self.cancel(slot);
        let s = slot as usize;
        self.reserve_slot(s);
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

    /// Idle timeouts in whole milliseconds below 2^31 ms are kept in the `u32`, every other
    /// value exactly beside it; hard deadlines only once a slot has one; `forget` clears both.
    #[test]
    fn timeouts_are_kept_exactly() {
        let mut w = TimerWheel::new();
        let cases = [
            (0, u64::MAX),
            (1, u64::MAX),
            (MS, 5),
            (30_000 * MS, u64::MAX),
            (((1 << 31) - 1) * MS, 9),
            ((1 << 31) * MS, u64::MAX),
            (u64::MAX, u64::MAX - 1),
            (3 * MS + 7, 0),
        ];
        for (s, &(idle, hard)) in cases.iter().enumerate() {
            w.set_timeouts(s as u32 * 100, idle, hard);
        }
        for (s, &(idle, hard)) in cases.iter().enumerate() {
            assert_eq!(w.timeouts(s as u32 * 100), (idle, hard), "{idle} {hard}");
        }
        assert!(w.idle[0] == 0 && w.idle[200] == 1 && w.idle[300] == 30_000);
        assert_eq!(w.idle[100], EXACT);
        assert_eq!(w.idle[500], EXACT);
        w.forget(600);
        assert_eq!(w.timeouts(600), (0, u64::MAX));
        assert_eq!(w.timeouts(5_000), (0, u64::MAX), "never given any");
        let mut w = TimerWheel::new();
        w.set_timeouts(3, 30_000 * MS, u64::MAX);
        assert!(
            w.hard.is_empty() && w.idle_exact.is_empty(),
            "nothing allocated"
        );
    }
}
