//! [`SlotHash`]: a hash table of slab slots that grows without stopping the world.
//!
//! The classifier's per-shape tables hold slots (`u32`) whose keys live in the slab, so
//! growing a `hashbrown` table re-hashes every key from a random slab entry: at a million
//! flows that is a cache miss per flow, about 0.1 s with the control path stalled.
//! Here a large table grows incrementally instead: a table twice the size is allocated, new
//! slots go into it, and each insert moves the slots of a few buckets of the old table
//! ([`MOVE_BUCKETS`]) until the old one is empty and dropped. Meanwhile lookups probe both.
//! A slot is in exactly one of the two tables. Small tables grow at once (cheap).

use hashbrown::HashTable;

/// Tables with fewer buckets grow at once (a rehash of at most ~14 k slots: well under a
/// millisecond); larger ones incrementally.
const INCREMENTAL_FROM: usize = 1 << 14;
/// Buckets of the old table emptied per insert while growing. Growth starts with the old
/// table holding at most 7/8 of its `B` buckets and the new one room for twice that; moving
/// 16 buckets per insert empties the old table within `B / 16` inserts (both tables are
/// held for that long: 1/14 of the slots held when it started), so the new one holds at
/// most 7/8 `B` + `B` / 16 slots and never grows while the old one is being emptied. Each
/// insert then moves about 14 slots (a few microseconds) instead of one insert moving all.
const MOVE_BUCKETS: usize = 16;

/// A hash table of slab slots, growing incrementally once large.
pub(crate) struct SlotHash {
    cur: HashTable<u32>,
    /// While growing: the table being emptied into `cur` and its next bucket to move.
    old: Option<(HashTable<u32>, usize)>,
}

impl Default for SlotHash {
    fn default() -> Self {
        Self::new()
    }
}

impl SlotHash {
    pub(crate) fn new() -> Self {
        Self {
            cur: HashTable::new(),
            old: None,
        }
    }

    /// Slots held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.cur.len() + self.old.as_ref().map_or(0, |(o, _)| o.len())
    }

    /// Whether an incremental growth is under way.
    #[cfg(test)]
    pub(crate) fn growing(&self) -> bool {
        self.old.is_some()
    }

    /// The slot with `hash` that `eq` accepts.
    #[inline]
    pub(crate) fn find(&self, hash: u64, mut eq: impl FnMut(u32) -> bool) -> Option<u32> {
        if let Some(&s) = self.cur.find(hash, |&s| eq(s)) {
            return Some(s);
        }
        let (old, _) = self.old.as_ref()?;
        old.find(hash, |&s| eq(s)).copied()
    }

    /// The place of the slot with `hash` that `eq` accepts (to put a slot of the same hash
    /// there).
    pub(crate) fn find_mut(
        &mut self,
        hash: u64,
        mut eq: impl FnMut(u32) -> bool,
    ) -> Option<&mut u32> {
        if let Some(s) = self.cur.find_mut(hash, |&s| eq(s)) {
            return Some(s);
        }
        let (old, _) = self.old.as_mut()?;
        old.find_mut(hash, |&s| eq(s))
    }

    /// Takes out the slot with `hash` that `eq` accepts.
    pub(crate) fn remove(&mut self, hash: u64, mut eq: impl FnMut(u32) -> bool) -> Option<u32> {
        if let Ok(o) = self.cur.find_entry(hash, |&s| eq(s)) {
            return Some(o.remove().0);
        }
        let (old, _) = self.old.as_mut()?;
        let o = old.find_entry(hash, |&s| eq(s)).ok()?;
        Some(o.remove().0)
    }

    /// Adds `slot` (not held yet) with `hash`; `rehash` gives any held slot's hash (to move
    /// slots while growing).
    pub(crate) fn insert(&mut self, hash: u64, slot: u32, rehash: impl Fn(u32) -> u64) {
        if self.old.is_none()
            && self.cur.len() == self.cur.capacity()
            && self.cur.num_buckets() >= INCREMENTAL_FROM
        {
            let bigger = HashTable::with_capacity(2 * self.cur.capacity());
            self.old = Some((std::mem::replace(&mut self.cur, bigger), 0));
        }
        self.cur.insert_unique(hash, slot, |&s| rehash(s));
        self.step(&rehash);
    }

    /// Moves the slots of the next [`MOVE_BUCKETS`] buckets of the old table, dropping it
    /// once empty.
    fn step(&mut self, rehash: &impl Fn(u32) -> u64) {
        let Some((old, next)) = self.old.as_mut() else {
            return;
        };
        let end = (*next + MOVE_BUCKETS).min(old.num_buckets());
        for i in *next..end {
            if let Ok(o) = old.get_bucket_entry(i) {
                let (s, _) = o.remove();
                self.cur.insert_unique(rehash(s), s, |&x| rehash(x));
            }
        }
        *next = end;
        if end == old.num_buckets() || old.is_empty() {
            debug_assert!(old.is_empty());
            self.old = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A poor hash on purpose (three slots share each), spread over the buckets.
    fn h(s: u32) -> u64 {
        u64::from(s / 3).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }

    /// Through growths (incremental ones included) and removals, the table holds exactly
    /// the slots a `HashSet` holds, each found.
    #[test]
    fn agrees_with_a_set_through_incremental_growth() {
        let mut t = SlotHash::new();
        let mut set = std::collections::HashSet::new();
        let mut growths = 0;
        for s in 0..200_000u32 {
            let was = t.growing();
            t.insert(h(s), s, h);
            set.insert(s);
            growths += usize::from(!was && t.growing());
            if s % 3 == 0 {
                // Remove an older one (maybe still in the old table).
                let r = s / 2;
                if set.remove(&r) {
                    assert_eq!(t.remove(h(r), |x| x == r), Some(r));
                }
            }
            if s % 7 == 0 {
                for p in [s, s / 2, s / 5] {
                    assert_eq!(t.find(h(p), |x| x == p).is_some(), set.contains(&p), "{p}");
                }
            }
        }
        assert!(growths >= 2, "{growths} incremental growths");
        assert_eq!(t.len(), set.len());
        for &s in &set {
            assert_eq!(t.find(h(s), |x| x == s), Some(s));
        }
    }

    /// A slot replaced in place by another of the same hash (as the classifier replaces the
    /// head of a chain) while growing is moved and found like any other.
    #[test]
    fn replacement_in_place_while_growing() {
        let mut g = SlotHash::new();
        let mut k = 0u32;
        while !g.growing() {
            g.insert(h(3 * k), 3 * k, h);
            k += 1;
        }
        *g.find_mut(h(0), |x| x == 0).expect("slot 0") = 1; // h(1) == h(0)
        let mut n = 0;
        while g.growing() {
            g.insert(h(3 * k), 3 * k, h);
            k += 1;
            n += 1;
        }
        assert!(n > 1000, "grew over {n} inserts");
        assert_eq!(g.find(h(1), |x| x == 1), Some(1));
        assert_eq!(g.find(h(0), |x| x == 0), None);
        assert_eq!(g.len(), k as usize);
        for i in 1..k {
            assert_eq!(g.find(h(3 * i), |x| x == 3 * i), Some(3 * i));
        }
    }
}
