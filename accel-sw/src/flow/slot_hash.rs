//! [`SlotHash`]: a hash table of slab slots that grows without stopping the world.
//!
//! The classifier's per-shape tables hold slots (`u32`) whose keys live in the slab, so
//! growing a `hashbrown` table re-hashes every key from a random slab entry: at a million
//! flows that is a cache miss per flow, about 0.1 s with the control path stalled.
//! Here a table grows in small steps instead, two ways (ADR 0015, amended):
//!
//! - **Shards.** Once past [`SHARD_FROM`] buckets a table is [`SHARDS`] independent tables,
//!   picked by bits of the hash that `hashbrown` uses for neither the bucket nor the tag.
//!   Each shard grows on its own, so a growth allocates and initialises 1/64 of what one
//!   table would (at a million flows 160 KB, not 10 MB with 2 MB of control bytes written
//!   at once: 1.2 ms in one insert). A lookup loads the shard's header first (one more
//!   dependent load, from 64 headers that stay in cache).
//! - **Incremental moves.** A shard of at least [`INCREMENTAL_FROM`] buckets that is full
//!   gets a table twice the size; new slots go into it and each insert into the shard moves
//!   the slots of a few buckets of the old one ([`MOVE_BUCKETS`]) until it is empty and
//!   dropped; lookups probe both meanwhile. Splitting one table into shards works the same
//!   way: the single table is emptied into the shards a few buckets per insert.
//!
//! A slot is in exactly one table. Small tables grow at once (a rehash of at most 896
//! slots).

use hashbrown::HashTable;

/// Log2 of [`SHARDS`].
const SHARD_BITS: u32 = 6;
/// Shards of a large table.
const SHARDS: usize = 1 << SHARD_BITS;
/// Where the shard's bits start in the hash: `hashbrown` takes the bucket from the low bits
/// (below 2^24 buckets per shard: 2^30 slots in all) and the tag from the top 7.
const SHARD_SHIFT: u32 = 32;
/// A single table that is full with this many buckets is split into shards (instead of
/// growing at once, which would rehash 1792 slots or more from random slab entries).
const SHARD_FROM: usize = 1 << 10;
/// Shards with fewer buckets grow at once (a rehash of at most 896 slots, about 0.1 ms at
/// worst); larger ones incrementally.
const INCREMENTAL_FROM: usize = 1 << 10;
/// Buckets of the old table emptied per insert while growing. Growth starts with the old
/// table holding at most 7/8 of its `B` buckets and the new one room for twice that; moving
/// 16 buckets per insert empties the old table within `B / 16` inserts (both tables are
/// held for that long: 1/14 of the slots held when it started), so the new one holds at
/// most 7/8 `B` + `B` / 16 slots and never grows while the old one is being emptied. Each
/// insert then moves about 14 slots (a few microseconds) instead of one insert moving all.
/// The same holds for a split: the shards are sized for twice the single table's slots.
const MOVE_BUCKETS: usize = 16;

/// One table of slots, and while it grows the one being emptied into it.
#[derive(Default)]
struct Shard {
    cur: HashTable<u32>,
    /// While growing: the table being emptied into `cur` and its next bucket to move.
    old: Option<(HashTable<u32>, usize)>,
}

impl Shard {
    #[inline]
    fn find(&self, hash: u64, eq: &mut impl FnMut(u32) -> bool) -> Option<u32> {
        if let Some(&s) = self.cur.find(hash, |&s| eq(s)) {
            return Some(s);
        }
        let (old, _) = self.old.as_ref()?;
        old.find(hash, |&s| eq(s)).copied()
    }

    fn find_mut(&mut self, hash: u64, eq: &mut impl FnMut(u32) -> bool) -> Option<&mut u32> {
        if let Some(s) = self.cur.find_mut(hash, |&s| eq(s)) {
            return Some(s);
        }
        let (old, _) = self.old.as_mut()?;
        old.find_mut(hash, |&s| eq(s))
    }

    fn remove(&mut self, hash: u64, eq: &mut impl FnMut(u32) -> bool) -> Option<u32> {
        if let Ok(o) = self.cur.find_entry(hash, |&s| eq(s)) {
            return Some(o.remove().0);
        }
        let (old, _) = self.old.as_mut()?;
        let o = old.find_entry(hash, |&s| eq(s)).ok()?;
        Some(o.remove().0)
    }

    /// Adds `slot` with `hash`, starting an incremental growth if the table is full and
    /// large, and moving the next buckets of a growth under way.
    fn insert(&mut self, hash: u64, slot: u32, rehash: &impl Fn(u32) -> u64) {
        if self.old.is_none()
            && self.cur.len() == self.cur.capacity()
            && self.cur.num_buckets() >= INCREMENTAL_FROM
        {
            let bigger = HashTable::with_capacity(2 * self.cur.capacity());
            self.old = Some((std::mem::replace(&mut self.cur, bigger), 0));
        }
        self.cur.insert_unique(hash, slot, |&s| rehash(s));
        let Some((old, next)) = self.old.as_mut() else {
            return;
        };
        let (moved, n, done) = take_buckets(old, next, rehash);
        for &(h, s) in &moved[..n] {
            self.cur.insert_unique(h, s, |&x| rehash(x));
        }
        if done {
            self.old = None;
        }
    }

    fn len(&self) -> usize {
        self.cur.len() + self.old.as_ref().map_or(0, |(o, _)| o.len())
    }
}

/// A hash table of slab slots, growing in small steps once large.
pub(crate) struct SlotHash {
    /// One while small; [`SHARDS`] once split.
    shards: Vec<Shard>,
    /// `SHARDS - 1` once split, else 0: the shard of a hash is `(hash >> SHARD_SHIFT) & mask`.
    mask: usize,
    /// While splitting: the single table being emptied into the shards and its next bucket.
    split: Option<(HashTable<u32>, usize)>,
}

impl Default for SlotHash {
    fn default() -> Self {
        Self::new()
    }
}

impl SlotHash {
    pub(crate) fn new() -> Self {
        Self {
            shards: vec![Shard::default()],
            mask: 0,
            split: None,
        }
    }

    /// Slots held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(Shard::len).sum::<usize>()
            + self.split.as_ref().map_or(0, |(t, _)| t.len())
    }

    /// Whether a split or any shard's incremental growth is under way.
    #[cfg(test)]
    pub(crate) fn growing(&self) -> bool {
        self.split.is_some() || self.shards.iter().any(|s| s.old.is_some())
    }

    /// Whether the table is split into shards.
    #[cfg(test)]
    pub(crate) fn sharded(&self) -> bool {
        self.mask != 0
    }

    #[inline(always)]
    fn shard_of(&self, hash: u64) -> usize {
        (hash >> SHARD_SHIFT) as usize & self.mask
    }

    /// The slot with `hash` that `eq` accepts.
    #[inline]
    pub(crate) fn find(&self, hash: u64, mut eq: impl FnMut(u32) -> bool) -> Option<u32> {
        if let Some(s) = self.shards[self.shard_of(hash)].find(hash, &mut eq) {
            return Some(s);
        }
        let (t, _) = self.split.as_ref()?;
        t.find(hash, |&s| eq(s)).copied()
    }

    /// The place of the slot with `hash` that `eq` accepts (to put a slot of the same hash
    /// there).
    pub(crate) fn find_mut(
        &mut self,
        hash: u64,
        mut eq: impl FnMut(u32) -> bool,
    ) -> Option<&mut u32> {
        let i = self.shard_of(hash);
        if let Some(s) = self.shards[i].find_mut(hash, &mut eq) {
            return Some(s);
        }
        let (t, _) = self.split.as_mut()?;
        t.find_mut(hash, |&s| eq(s))
    }

    /// Takes out the slot with `hash` that `eq` accepts.
    pub(crate) fn remove(&mut self, hash: u64, mut eq: impl FnMut(u32) -> bool) -> Option<u32> {
        let i = self.shard_of(hash);
        if let Some(s) = self.shards[i].remove(hash, &mut eq) {
            return Some(s);
        }
        let (t, _) = self.split.as_mut()?;
        let o = t.find_entry(hash, |&s| eq(s)).ok()?;
        Some(o.remove().0)
    }

    /// Adds `slot` (not held yet) with `hash`; `rehash` gives any held slot's hash (to move
    /// slots while growing).
    pub(crate) fn insert(&mut self, hash: u64, slot: u32, rehash: impl Fn(u32) -> u64) {
        if self.mask == 0 {
            let one = &self.shards[0].cur;
            if one.len() == one.capacity() && one.num_buckets() >= SHARD_FROM {
                self.start_split();
            }
        }
        let i = self.shard_of(hash);
        self.shards[i].insert(hash, slot, &rehash);
        self.step_split(&rehash);
    }

    /// Makes the single table the one being emptied into [`SHARDS`] new shards, each sized
    /// for its share of twice its slots (so that none grows before the split ends).
    fn start_split(&mut self) {
        let cap = 2 * self.shards[0].cur.capacity() / SHARDS;
        let one = std::mem::take(&mut self.shards[0].cur);
        self.shards = (0..SHARDS)
            .map(|_| Shard {
                cur: HashTable::with_capacity(cap),
                old: None,
            })
            .collect();
        self.mask = SHARDS - 1;
        self.split = Some((one, 0));
    }

    /// Moves the slots of the next [`MOVE_BUCKETS`] buckets of the table being split into
    /// their shards, dropping it once empty.
    fn step_split(&mut self, rehash: &impl Fn(u32) -> u64) {
        let Some((t, next)) = self.split.as_mut() else {
            return;
        };
        let (moved, n, done) = take_buckets(t, next, rehash);
        for &(h, s) in &moved[..n] {
            let i = (h >> SHARD_SHIFT) as usize & self.mask;
            self.shards[i].cur.insert_unique(h, s, |&x| rehash(x));
        }
        if done {
            self.split = None;
        }
    }
}

/// Takes the slots out of the next [`MOVE_BUCKETS`] buckets of `t` from bucket `*next` (and
/// advances it), with their hashes; true when `t` is then empty. The hashes are computed
/// for all the slots before any is inserted elsewhere: each is a load of a random slab
/// entry, and with no insert between them the loads may overlap (measured: no change).
#[inline(always)]
fn take_buckets(
    t: &mut HashTable<u32>,
    next: &mut usize,
    rehash: &impl Fn(u32) -> u64,
) -> ([(u64, u32); MOVE_BUCKETS], usize, bool) {
    let mut moved = [(0u64, 0u32); MOVE_BUCKETS];
    let mut n = 0;
    let end = (*next + MOVE_BUCKETS).min(t.num_buckets());
    for b in *next..end {
        if let Ok(o) = t.get_bucket_entry(b) {
            moved[n].1 = o.remove().0;
            n += 1;
        }
    }
    for m in &mut moved[..n] {
        m.0 = rehash(m.1);
    }
    *next = end;
    let done = end == t.num_buckets() || t.is_empty();
    debug_assert!(!done || t.is_empty());
    (moved, n, done)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A poor hash on purpose (three slots share each), spread over the buckets and shards.
    fn h(s: u32) -> u64 {
        u64::from(s / 3).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }

    impl SlotHash {
        /// Shards growing incrementally now.
        fn shards_growing(&self) -> usize {
            self.shards.iter().filter(|s| s.old.is_some()).count()
        }

        /// The largest table allocated (buckets): what one growth allocates at most.
        fn largest_table(&self) -> usize {
            self.shards
                .iter()
                .map(|s| s.cur.num_buckets())
                .max()
                .unwrap_or(0)
        }
    }

    /// Through the split into shards, the shards' incremental growths and removals, the
    /// table holds exactly the slots a `HashSet` holds, each found.
    #[test]
    fn agrees_with_a_set_through_split_and_incremental_growth() {
        let mut t = SlotHash::new();
        let mut set = std::collections::HashSet::new();
        let (mut split_at, mut shard_growths) = (None, 0);
        for s in 0..300_000u32 {
            let before = t.shards_growing();
            t.insert(h(s), s, h);
            set.insert(s);
            if split_at.is_none() && t.sharded() {
                split_at = Some(set.len());
                assert!(t.growing(), "a split empties the single table step by step");
            }
            shard_growths += t.shards_growing().saturating_sub(before);
            if s % 3 == 0 {
                // Remove an older one (maybe still in the single table or an old table).
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
        let split_at = split_at.expect("split into shards");
        assert!(split_at < 1000, "split at {split_at} slots");
        assert!(
            shard_growths >= SHARDS,
            "{shard_growths} incremental shard growths"
        );
        assert_eq!(t.len(), set.len());
        for &s in &set {
            assert_eq!(t.find(h(s), |x| x == s), Some(s));
        }
        // What one growth allocates stays a shard's share (the set is ~200 k slots: one
        // table would be 2^18 buckets).
        assert!(
            t.largest_table() <= (1 << 18) / SHARDS * 2,
            "{}",
            t.largest_table()
        );
    }

    /// A slot replaced in place by another of the same hash (as the classifier replaces the
    /// head of a chain) while the table is split, and while a shard grows, is moved and found
    /// like any other.
    #[test]
    fn replacement_in_place_while_splitting_and_growing() {
        let mut g = SlotHash::new();
        let mut k = 0u32;
        let add = |g: &mut SlotHash, k: &mut u32| {
            g.insert(h(3 * *k), 3 * *k, h);
            *k += 1;
        };
        while !g.sharded() {
            add(&mut g, &mut k);
        }
        // Slot 0 is still in the table being split (its bucket may be moved already:
        // either way it is found and replaced where it is).
        *g.find_mut(h(0), |x| x == 0).expect("slot 0") = 1; // h(1) == h(0)
        let mut n = 0;
        while g.growing() {
            add(&mut g, &mut k);
            n += 1;
        }
        assert!(n > 10, "split over {n} inserts");
        // Now until a shard grows incrementally, then replace a slot of that shard.
        while g.shards_growing() == 0 {
            add(&mut g, &mut k);
        }
        let i = g.shards.iter().position(|s| s.old.is_some()).unwrap();
        let victim = (0..k)
            .map(|x| 3 * x)
            .find(|&x| g.shard_of(h(x)) == i && x != 0)
            .unwrap();
        *g.find_mut(h(victim), |x| x == victim).expect("victim") = victim + 1;
        while g.growing() {
            add(&mut g, &mut k);
        }
        assert_eq!(g.find(h(1), |x| x == 1), Some(1));
        assert_eq!(g.find(h(0), |x| x == 0), None);
        assert_eq!(g.find(h(victim + 1), |x| x == victim + 1), Some(victim + 1));
        assert_eq!(g.find(h(victim), |x| x == victim), None);
        assert_eq!(g.len(), k as usize);
        for i in 1..k {
            let want = if 3 * i == victim { victim + 1 } else { 3 * i };
            assert_eq!(g.find(h(want), |x| x == want), Some(want));
        }
    }
}
