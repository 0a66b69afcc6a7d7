//! [`Classifier`]: a table's best entry for a packet without looking at every entry (tuple
//! space search). Entries are grouped by *shape* (which fields they match, the prefix lengths
//! and IP versions); a shape is an exact-match hash of its entries' masked matches. A lookup
//! probes each shape of the table once, highest maximum priority first, and stops when no
//! shape left can beat the best entry found. Entries whose masked matches are equal (other
//! priorities, or host bits past the prefix) are chained behind the best of them.
//!
//! The answer is the one of the priority-ordered list: the highest priority, ties to the
//! entry installed first. Connection setup depends on it: a new connection's first packet
//! misses, and with a list the miss compared the packet with every installed flow.
//!
//! Installing finds the entry it replaces (same table, priority and match) here too: its
//! masked match's chain holds every entry of that table with that match ([`Classifier::find`]),
//! so the tables need no index of their own.

use super::key::FlowKey;
use super::slot_chunks::SlotChunks;
use super::slot_hash::SlotHash;
use super::table::{PackedMatch, Slab, DST, SRC};

const NONE: u32 = u32::MAX;

/// Which fields a match looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Shape {
    set: u16,
    src_len: u8,
    dst_len: u8,
    v6: u8,
}

/// Keeps the first `len` bits of `a` (`max` bits long).
fn mask_prefix(a: &mut [u8; 16], len: u8, max: u8) {
    let len = usize::from(len.min(max));
    let (full, rest) = (len / 8, len % 8);
    if full < 16 {
        if rest != 0 {
            a[full] &= 0xffu8 << (8 - rest);
            a[full + 1..].fill(0);
        } else {
            a[full..].fill(0);
        }
    }
}

impl PackedMatch {
    fn shape(&self) -> Shape {
        Shape {
            set: self.set,
            src_len: self.src_len,
            dst_len: self.dst_len,
            v6: self.v6,
        }
    }

    /// The match with what its shape ignores cleared (host bits of its prefixes).
    fn masked(&self) -> PackedMatch {
        let mut m = *self;
        let max = |v6: bool| if v6 { 128 } else { 32 };
        mask_prefix(&mut m.src, m.src_len, max(m.v6 & 1 != 0));
        mask_prefix(&mut m.dst, m.dst_len, max(m.v6 & 2 != 0));
        m
    }

    /// The packet `k` as a match of shape `s` (masked); None if no such match can take it
    /// (a prefix of another IP version).
    fn of_key(s: &Shape, k: &FlowKey) -> Option<PackedMatch> {
        let bit = |b: u16| s.set & b != 0;
        let ver = |v6: bool| if v6 { 6 } else { 4 };
        if bit(SRC) && k.ip_ver != ver(s.v6 & 1 != 0) || bit(DST) && k.ip_ver != ver(s.v6 & 2 != 0)
        {
            return None;
        }
        let pick = |b: u16, v: u16| if bit(b) { v } else { 0 };
        let mut m = PackedMatch {
            set: s.set,
            in_port: pick(super::table::IN_PORT, k.in_port),
            eth_type: pick(super::table::ETH_TYPE, k.eth_type),
            vlan: pick(super::table::VLAN, k.vlan),
            sport: pick(super::table::SPORT, k.sport),
            dport: pick(super::table::DPORT, k.dport),
            spi: if bit(super::table::SPI) { k.spi } else { 0 },
            proto: if bit(super::table::PROTO) { k.proto } else { 0 },
            src_len: s.src_len,
            dst_len: s.dst_len,
            v6: s.v6,
            src: [0; 16],
            dst: [0; 16],
        };
        if bit(SRC) {
            m.src = k.src;
        }
        if bit(DST) {
            m.dst = k.dst;
        }
        Some(m.masked())
    }
}

/// The entries of one shape in one table.
struct Sub {
    shape: Shape,
    /// At least the highest priority of its entries (an upper bound once some are gone).
    max_priority: u16,
    entries: usize,
    /// The best slot of each masked match.
    heads: SlotHash,
}

/// Where a match goes in the classifier, as [`Classifier::find`] left it: what
/// [`Classifier::insert`] would otherwise look up again.
pub(crate) struct Place {
    /// The hash of the masked match.
    hash: u64,
    /// The best slot with that masked match in its shape's table, if any.
    head: Option<u32>,
}

/// The lookup structure of every table of an instance, beside [`super::table::Tables`].
pub(crate) struct Classifier {
    /// Per table, its shapes by maximum priority, highest first.
    tables: Vec<Vec<Sub>>,
    /// By slot: the next (worse) slot with the same masked match, or [`NONE`].
    next: SlotChunks<u32>,
    /// By slot: when it was installed, as an order (ties go to the earlier). Only the order
    /// of the entries of one table with one priority matters; when the count would wrap,
    /// the live entries are numbered again in that order ([`Classifier::renumber`]).
    seq: SlotChunks<u32>,
    /// The last install's number.
    installs: u32,
    hasher: ahash::RandomState,
}

impl Classifier {
    /// Empty, for `n` tables.
    pub(crate) fn new(n: usize) -> Self {
        Self {
            tables: (0..n).map(|_| Vec::new()).collect(),
            next: SlotChunks::new(|| NONE),
            seq: SlotChunks::new(|| 0),
            installs: 0,
            hasher: ahash::RandomState::new(),
        }
    }

    /// Tables.
    pub(crate) fn tables(&self) -> usize {
        self.tables.len()
    }

    /// When the entry in `slot` was installed, as an order among the entries of its table
    /// with its priority (ties go to the earlier).
    pub(crate) fn installed(&self, slot: u32) -> u32 {
        self.seq[slot as usize]
    }

    /// Whether install numbers have run out: [`renumber`](Self::renumber) before the next
    /// [`insert`](Self::insert).
    pub(crate) fn installs_exhausted(&self) -> bool {
        self.installs == u32::MAX
    }

    /// Numbers the live entries again from 1, in the order of `live` (every live slot, in
    /// install order within each table and priority: the tables' priority order). Once every
    /// 2^32 installs, O(flows).
    pub(crate) fn renumber(&mut self, live: impl Iterator<Item = u32>) {
        let mut n = 0u32;
        for s in live {
            n += 1;
            self.seq[s as usize] = n;
        }
        self.installs = n;
    }

    /// Sets the install count (tests: to cross a wrap quickly).
    #[cfg(test)]
    pub(crate) fn set_installs(&mut self, n: u32) {
        self.installs = n;
    }

    /// The entry of table `t` with `priority` and match `m` (exactly: host bits past a
    /// prefix included), if any, and where an entry with that match goes.
    pub(crate) fn find(
        &self,
        slab: &Slab,
        t: usize,
        priority: u16,
        m: &PackedMatch,
    ) -> (Option<u32>, Place) {
        let (shape, masked) = (m.shape(), m.masked());
        let hash = self.hasher.hash_one(masked);
        let head = self.tables[t]
            .iter()
            .find(|x| x.shape == shape)
            .and_then(|sub| {
                sub.heads
                    .find(hash, |x| slab[x as usize].m.masked() == masked)
            });
        let mut found = None;
        let mut s = head.unwrap_or(NONE);
        // The chain is in priority order (highest first), so it ends below `priority`.
        while s != NONE {
            let e = &slab[s as usize];
            if e.priority < priority {
                break;
            }
            if e.priority == priority && e.m == *m {
                found = Some(s);
                break;
            }
            s = self.next[s as usize];
        }
        (found, Place { hash, head })
    }

    /// Whether slot `a` wins over slot `b`.
    fn better(&self, slab: &Slab, a: u32, b: u32) -> bool {
        let (pa, pb) = (slab[a as usize].priority, slab[b as usize].priority);
        pa > pb || pa == pb && self.seq[a as usize] < self.seq[b as usize]
    }

    /// Adds the entry newly installed in `slot` (not a replacement in place), at `place`
    /// (what [`find`](Self::find) gave for its table, priority and match, nothing having
    /// changed since).
    pub(crate) fn insert(&mut self, slab: &Slab, slot: u32, place: Place) {
        let s = slot as usize;
        self.next.grow_to(s + 1);
        self.seq.grow_to(s + 1);
        debug_assert!(!self.installs_exhausted());
        self.installs += 1;
        self.seq[s] = self.installs;
        self.next[s] = NONE;
        let e = &slab[s];
        let shape = e.m.shape();
        let Place { hash: h, head } = place;
        let subs = &mut self.tables[usize::from(e.table)];
        let i = match subs.iter().position(|x| x.shape == shape) {
            Some(i) => i,
            None => {
                subs.push(Sub {
                    shape,
                    max_priority: e.priority,
                    entries: 0,
                    heads: SlotHash::new(),
                });
                subs.len() - 1
            }
        };
        let sub = &mut subs[i];
        sub.entries += 1;
        let raise = e.priority > sub.max_priority;
        sub.max_priority = sub.max_priority.max(e.priority);
        let hasher = &self.hasher;
        match head {
            None => {
                sub.heads
                    .insert(h, slot, |x| hasher.hash_one(slab[x as usize].m.masked()));
            }
            Some(head) => {
                let (pa, pb) = (e.priority, slab[head as usize].priority);
                // The newest entry wins only with a higher priority.
                if pa > pb {
                    self.next[s] = head;
                    if let Some(x) = sub.heads.find_mut(h, |x| x == head) {
                        *x = slot;
                    }
                } else {
                    let mut prev = head;
                    loop {
                        let n = self.next[prev as usize];
                        if n == NONE || slab[n as usize].priority < e.priority {
                            self.next[s] = n;
                            self.next[prev as usize] = slot;
                            break;
                        }
                        prev = n;
                    }
                }
            }
        }
        if raise || i + 1 == subs.len() {
            subs.sort_by_key(|s| std::cmp::Reverse(s.max_priority));
        }
    }

    /// Takes out the entry in `slot` (still in `slab`).
    pub(crate) fn remove(&mut self, slab: &Slab, slot: u32) {
        let e = &slab[slot as usize];
        let (shape, m) = (e.m.shape(), e.m.masked());
        let h = self.hasher.hash_one(m);
        let subs = &mut self.tables[usize::from(e.table)];
        let Some(i) = subs.iter().position(|x| x.shape == shape) else {
            return;
        };
        let sub = &mut subs[i];
        let Some(head) = sub.heads.find(h, |x| slab[x as usize].m.masked() == m) else {
            return;
        };
        let next = self.next[slot as usize];
        if head == slot {
            if next == NONE {
                if sub.heads.remove(h, |x| x == slot).is_none() {
                    return;
                }
            } else {
                match sub.heads.find_mut(h, |x| x == slot) {
                    Some(x) => *x = next,
                    None => return,
                }
            }
        } else {
            let mut prev = head;
            loop {
                let n = self.next[prev as usize];
                if n == NONE {
                    return; // not here
                }
                if n == slot {
                    self.next[prev as usize] = next;
                    break;
                }
                prev = n;
            }
        }
        self.next[slot as usize] = NONE;
        sub.entries -= 1;
        if sub.entries == 0 {
            subs.remove(i);
        }
    }

    /// The slot of table `t`'s best entry for the packet `key`.
    #[inline]
    pub(crate) fn lookup(&self, slab: &Slab, t: usize, key: &FlowKey) -> Option<u32> {
        let mut best: Option<(u32, u16)> = None;
        for sub in &self.tables[t] {
            if best.is_some_and(|(_, p)| sub.max_priority < p) {
                break;
            }
            let Some(m) = PackedMatch::of_key(&sub.shape, key) else {
                continue;
            };
            let h = self.hasher.hash_one(m);
            let Some(slot) = sub.heads.find(h, |x| slab[x as usize].m.masked() == m) else {
                continue;
            };
            if best.is_none_or(|(b, _)| self.better(slab, slot, b)) {
                best = Some((slot, slab[slot as usize].priority));
            }
        }
        best.map(|(s, _)| s)
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use dpacc_spec::fastpath::flow::{Action, FlowSpec, Match, Prefix};
    use dpacc_spec::fastpath::PortId;

    use super::super::key::FlowKey;
    use super::super::table::Tables;

    /// xorshift64*: a fixed sequence, no dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Small value spaces so that matches, priorities and keys collide often.
    fn random_match(r: &mut Rng) -> Match {
        let mut m = Match::default();
        let v6 = r.below(4) == 0;
        let addr = |r: &mut Rng| -> IpAddr {
            if v6 {
                IpAddr::V6(Ipv6Addr::new(
                    0x2001,
                    0xdb8,
                    0,
                    0,
                    0,
                    0,
                    0,
                    r.below(4) as u16,
                ))
            } else {
                IpAddr::V4(Ipv4Addr::new(10, 0, r.below(3) as u8, r.below(4) as u8))
            }
        };
        if r.below(2) == 0 {
            m.in_port = Some(r.below(3) as u16);
        }
        if r.below(2) == 0 {
            m.eth_type = Some(if v6 { 0x86dd } else { 0x0800 });
        }
        if r.below(3) == 0 {
            m.src = Some(Prefix {
                addr: addr(r),
                len: [0, 8, 24, 30, 32][r.below(5) as usize],
            });
        }
        if r.below(3) == 0 {
            m.dst = Some(Prefix {
                addr: addr(r),
                len: [16, 31, 32, 128][r.below(4) as usize].min(if v6 { 128 } else { 32 }),
            });
        }
        if r.below(3) == 0 {
            m.proto = Some([6, 17][r.below(2) as usize]);
        }
        if r.below(3) == 0 {
            m.dport = Some(r.below(3) as u16);
        }
        if r.below(5) == 0 {
            m.sport = Some(r.below(2) as u16);
        }
        m
    }

    fn random_key(r: &mut Rng) -> FlowKey {
        let v6 = r.below(4) == 0;
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        for a in [&mut src, &mut dst] {
            if v6 {
                a[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
                a[15] = r.below(4) as u8;
            } else {
                a[..4].copy_from_slice(&[10, 0, r.below(3) as u8, r.below(4) as u8]);
            }
        }
        FlowKey {
            in_port: r.below(3) as u16,
            eth_type: if v6 { 0x86dd } else { 0x0800 },
            vlan: dpacc_spec::fastpath::flow::NO_VLAN,
            ip_ver: if v6 { 6 } else { 4 },
            proto: [6, 17][r.below(2) as usize],
            src,
            dst,
            sport: r.below(2) as u16,
            dport: r.below(3) as u16,
            spi: 0,
        }
    }

    /// Against the priority-ordered list walked entry by entry (the reference), through
    /// installs, replacements in place, removals and the install numbers' wrap: the same
    /// entry for every key.
    #[test]
    fn lookups_agree_with_the_priority_ordered_list() {
        let mut r = Rng(0x9e37_79b9_7f4a_7c15);
        let mut t = Tables::new(2, 1);
        // Install numbers run out after ~500 installs (and are numbered again).
        t.set_installs(u32::MAX - 500);
        let mut cookie = 0u64;
        let (mut hits, mut misses) = (0, 0);
        for round in 0..60 {
            for _ in 0..40 {
                cookie += 1;
                let spec = FlowSpec {
                    table: r.below(2) as u8,
                    priority: [1, 5, 5, 9, 100][r.below(5) as usize],
                    cookie,
                    m: random_match(&mut r),
                    actions: vec![Action::Output(PortId(1))],
                    idle_timeout_ns: 0,
                    hard_timeout_ns: 0,
                    notify_expiry: false,
                };
                assert!(t.insert(usize::from(spec.table), &spec, 0, 100_000));
            }
            // Remove about a quarter, by cookie.
            let (a, b) = (r.below(4), round);
            t.remove_if(|e, _| (e.cookie + b) % 4 == a, |_, _| {});
            for _ in 0..300 {
                let k = random_key(&mut r);
                for tab in 0..2 {
                    let want = t.table(tab).find(|(_, e)| e.m.matches(&k)).map(|x| x.0);
                    let got = t.lookup(tab, &k).map(|x| x.0);
                    assert_eq!(got, want, "round {round}, table {tab}, key {k:?}");
                    if got.is_some() {
                        hits += 1;
                    } else {
                        misses += 1;
                    }
                }
            }
        }
        assert!(hits > 1000 && misses > 20, "{hits} hits, {misses} misses");
        assert!(t.flows() > 30, "{} flows", t.flows());
    }
}
