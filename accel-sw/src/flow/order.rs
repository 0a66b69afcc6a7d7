//! [`PriorityOrder`]: each table's entries in priority order (highest first, equal priorities
//! in install order), as doubly linked lists through the slab slots, so that an entry is
//! added and taken out in O(log P) (P distinct priorities in its table) without moving the
//! others: expiry removes flows a few at a time, and a list in a vector costs a pass over the
//! table for each removal. The order is what listing and removal by cookie walk; the data
//! path never looks at it.

use std::collections::BTreeMap;

use super::slot_chunks::SlotChunks;

const NONE: u32 = u32::MAX;

/// The entries of each table in priority order.
pub(crate) struct PriorityOrder {
    /// Per table, its first slot.
    first: Vec<u32>,
    /// Per table: for each priority present, its last slot (where the next entry with that
    /// priority, or the next lower one, goes).
    last_of: Vec<BTreeMap<u16, u32>>,
    /// By slot: the next and the previous slot in its table, or [`NONE`].
    next: SlotChunks<u32>,
    prev: SlotChunks<u32>,
}

impl PriorityOrder {
    /// `n` empty tables.
    pub(crate) fn new(n: usize) -> Self {
        Self {
            first: vec![NONE; n],
            last_of: (0..n).map(|_| BTreeMap::new()).collect(),
            next: SlotChunks::new(|| NONE),
            prev: SlotChunks::new(|| NONE),
        }
    }

    /// Tables.
    pub(crate) fn tables(&self) -> usize {
        self.first.len()
    }

    /// Bytes held by slot (for the memory an instance reports).
    pub(crate) const SLOT_BYTES: usize = 2 * std::mem::size_of::<u32>();

    /// Puts `slot` with `priority` last among the entries of table `t` with its priority.
    pub(crate) fn insert(&mut self, t: usize, slot: u32, priority: u16) {
        let s = slot as usize;
        self.next.grow_to(s + 1);
        self.prev.grow_to(s + 1);
        // After the last entry of the lowest priority not below this one.
        match self.last_of[t].range(priority..).next().map(|(_, &l)| l) {
            Some(a) => {
                let n = self.next[a as usize];
                self.next[s] = n;
                self.prev[s] = a;
                self.next[a as usize] = slot;
                if n != NONE {
                    self.prev[n as usize] = slot;
                }
            }
            None => {
                let f = self.first[t];
                self.next[s] = f;
                self.prev[s] = NONE;
                if f != NONE {
                    self.prev[f as usize] = slot;
                }
                self.first[t] = slot;
            }
        }
        self.last_of[t].insert(priority, slot);
    }

    /// Takes `slot` (in table `t`, with `priority`) out; `priority_of` gives another slot's
    /// priority.
    pub(crate) fn remove(
        &mut self,
        t: usize,
        slot: u32,
        priority: u16,
        priority_of: impl Fn(u32) -> u16,
    ) {
        let s = slot as usize;
        let (p, n) = (self.prev[s], self.next[s]);
        if p != NONE {
            self.next[p as usize] = n;
        } else if self.first[t] == slot {
            self.first[t] = n;
        } else {
            return; // not in this table
        }
        if n != NONE {
            self.prev[n as usize] = p;
        }
        self.next[s] = NONE;
        self.prev[s] = NONE;
        let last = &mut self.last_of[t];
        if last.get(&priority) == Some(&slot) {
            if p != NONE && priority_of(p) == priority {
                last.insert(priority, p);
            } else {
                last.remove(&priority);
            }
        }
    }

    /// The slots of table `t` in order.
    pub(crate) fn iter(&self, t: usize) -> impl Iterator<Item = u32> + '_ {
        let mut s = self.first[t];
        std::iter::from_fn(move || {
            if s == NONE {
                return None;
            }
            let here = s;
            s = self.next[s as usize];
            Some(here)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against a vector kept in order by insertion at its partition point (what the tables
    /// were): the same order through inserts at every position and removals anywhere.
    #[test]
    fn agrees_with_a_sorted_vector() {
        let mut o = PriorityOrder::new(2);
        let mut prio = vec![0u16; 400];
        let mut want: [Vec<u32>; 2] = [Vec::new(), Vec::new()];
        let mut x = 0x2545_f491u32;
        let mut rnd = |n: u32| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x % n
        };
        let mut free: Vec<u32> = (0..400).rev().collect();
        for round in 0..4000 {
            let t = (round % 2) as usize;
            if rnd(3) != 0 {
                let Some(s) = free.pop() else { continue };
                let p = [1, 5, 5, 9, 100, 7][rnd(6) as usize];
                prio[s as usize] = p;
                o.insert(t, s, p);
                let list = &mut want[t];
                let at = list.partition_point(|&x| prio[x as usize] >= p);
                list.insert(at, s);
            } else if !want[t].is_empty() {
                let i = rnd(want[t].len() as u32) as usize;
                let s = want[t].remove(i);
                o.remove(t, s, prio[s as usize], |x| prio[x as usize]);
                free.push(s);
            }
            for (tab, w) in want.iter().enumerate() {
                assert_eq!(o.iter(tab).collect::<Vec<_>>(), *w, "round {round}");
            }
        }
    }
}
