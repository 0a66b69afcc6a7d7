//! How flows are stored: compact entries in a slab (a packed match, the action list inline
//! when it has at most two actions, else an interned list, and the cookie: 80 bytes), tables as priority-ordered linked lists of slab slots ([`PriorityOrder`]), the
//! classifier over the slots (what lookups use, and what installing uses to find the entry
//! it replaces: [`Classifier`]), per-lane counters by slot (what the data path writes;
//! [`LaneCounters`]), and a timer wheel over the flows with timeouts, which also keeps their
//! timeouts ([`TimerWheel`]).
//!
//! At 1 M flows with one lane this is about 142 heap bytes per flow, whether the flows share
//! their action lists or each has its own short list, and about 155 with an idle timeout on
//! every flow (benches/flow_processor.rs prints all three).

use std::cmp::Reverse;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use dpacc_spec::fastpath::flow::{Action, FlowKey, FlowSpec, FlowStats, Match, Prefix};

use super::classifier::Classifier;
use super::order::PriorityOrder;
use super::slot_chunks::SlotChunks;
use super::timers::TimerWheel;

/// A [`Match`] packed into 52 bytes: which fields are set, and their values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct PackedMatch {
    pub(crate) set: u16,
    pub(crate) in_port: u16,
    pub(crate) eth_type: u16,
    pub(crate) vlan: u16,
    pub(crate) sport: u16,
    pub(crate) dport: u16,
    pub(crate) spi: u32,
    pub(crate) proto: u8,
    pub(crate) src_len: u8,
    pub(crate) dst_len: u8,
    /// Bit 0: the source prefix is IPv6; bit 1: the destination prefix is.
    pub(crate) v6: u8,
    pub(crate) src: [u8; 16],
    pub(crate) dst: [u8; 16],
}

pub(crate) const IN_PORT: u16 = 1;
pub(crate) const ETH_TYPE: u16 = 1 << 1;
pub(crate) const VLAN: u16 = 1 << 2;
pub(crate) const PROTO: u16 = 1 << 3;
pub(crate) const SPORT: u16 = 1 << 4;
pub(crate) const DPORT: u16 = 1 << 5;
pub(crate) const SPI: u16 = 1 << 6;
pub(crate) const SRC: u16 = 1 << 7;
pub(crate) const DST: u16 = 1 << 8;

fn pack_prefix(p: Option<Prefix>) -> (bool, bool, u8, [u8; 16]) {
    let mut b = [0u8; 16];
    match p {
        None => (false, false, 0, b),
        Some(Prefix {
            addr: IpAddr::V4(a),
            len,
        }) => {
            b[..4].copy_from_slice(&a.octets());
            (true, false, len, b)
        }
        Some(Prefix {
            addr: IpAddr::V6(a),
            len,
        }) => (true, true, len, a.octets()),
    }
}

/// (The reference the classifier is tested against.)
#[cfg(test)]
/// Whether address `key` of IP version `ver` is inside the packed prefix (as
/// [`Prefix::matches`]).
fn prefix_matches(v6: bool, len: u8, addr: &[u8; 16], ver: u8, key: &[u8; 16]) -> bool {
    let (want, max) = if v6 { (6, 128) } else { (4, 32) };
    if ver != want {
        return false;
    }
    let len = usize::from(len.min(max));
    let (full, rest) = (len / 8, len % 8);
    if addr[..full] != key[..full] {
        return false;
    }
    rest == 0 || {
        let m = 0xffu8 << (8 - rest);
        addr[full] & m == key[full] & m
    }
}

/// Seven words, not the thirteen fields one by one (what a derived `Hash` writes): the
/// classifier hashes a match for every install and lookup, and every slot it moves while
/// a table grows. Equal matches write equal words.
impl Hash for PackedMatch {
    fn hash<H: Hasher>(&self, h: &mut H) {
        let w = |a: u16, b: u16, c: u16, d: u16| {
            u64::from(a) | u64::from(b) << 16 | u64::from(c) << 32 | u64::from(d) << 48
        };
        let half = |a: &[u8; 16], i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&a[i..i + 8]);
            u64::from_ne_bytes(b)
        };
        h.write_u64(w(self.set, self.in_port, self.eth_type, self.vlan));
        h.write_u64(w(self.sport, self.dport, 0, 0) | u64::from(self.spi) << 32);
        h.write_u64(
            u64::from(self.proto)
                | u64::from(self.src_len) << 8
                | u64::from(self.dst_len) << 16
                | u64::from(self.v6) << 24,
        );
        h.write_u64(half(&self.src, 0));
        h.write_u64(half(&self.src, 8));
        h.write_u64(half(&self.dst, 0));
        h.write_u64(half(&self.dst, 8));
    }
}

impl PackedMatch {
    /// Packs `m`.
    pub(crate) fn new(m: &Match) -> Self {
        let mut p = Self::default();
        let mut set = |bit: u16, on: bool| {
            if on {
                p.set |= bit;
            }
        };
        set(IN_PORT, m.in_port.is_some());
        set(ETH_TYPE, m.eth_type.is_some());
        set(VLAN, m.vlan.is_some());
        set(PROTO, m.proto.is_some());
        set(SPORT, m.sport.is_some());
        set(DPORT, m.dport.is_some());
        set(SPI, m.spi.is_some());
        let (has_src, src6, src_len, src) = pack_prefix(m.src);
        let (has_dst, dst6, dst_len, dst) = pack_prefix(m.dst);
        set(SRC, has_src);
        set(DST, has_dst);
        p.in_port = m.in_port.unwrap_or(0);
        p.eth_type = m.eth_type.unwrap_or(0);
        p.vlan = m.vlan.unwrap_or(0);
        p.proto = m.proto.unwrap_or(0);
        p.sport = m.sport.unwrap_or(0);
        p.dport = m.dport.unwrap_or(0);
        p.spi = m.spi.unwrap_or(0);
        (p.src_len, p.src, p.dst_len, p.dst) = (src_len, src, dst_len, dst);
        p.v6 = u8::from(src6) | u8::from(dst6) << 1;
        p
    }

    /// Whether the packet with key `k` matches (as [`Match::matches`]); the reference the
    /// classifier is tested against.
    #[cfg(test)]
    pub(crate) fn matches(&self, k: &FlowKey) -> bool {
        let s = self.set;
        let eq = |bit: u16, a: u32, b: u32| s & bit == 0 || a == b;
        eq(IN_PORT, self.in_port.into(), k.in_port.into())
            && eq(ETH_TYPE, self.eth_type.into(), k.eth_type.into())
            && eq(VLAN, self.vlan.into(), k.vlan.into())
            && eq(PROTO, self.proto.into(), k.proto.into())
            && eq(SPORT, self.sport.into(), k.sport.into())
            && eq(DPORT, self.dport.into(), k.dport.into())
            && eq(SPI, self.spi, k.spi)
            && (s & SRC == 0
                || prefix_matches(self.v6 & 1 != 0, self.src_len, &self.src, k.ip_ver, &k.src))
            && (s & DST == 0
                || prefix_matches(self.v6 & 2 != 0, self.dst_len, &self.dst, k.ip_ver, &k.dst))
    }
}

/// Most actions kept inside an entry; longer lists are interned in [`ActionLists`].
pub(crate) const INLINE_ACTIONS: usize = 2;

/// A flow's action list: inline when short (most lists: "output:2", "set_ipv4_dst:X,output:1"
/// — no allocation, no index entry, nothing shared), else an interned list's id. One variant
/// per inline length, so that the tag lives in the first action's unused tag values: 16
/// bytes (a count beside the actions made it 20, and the entry 104).
#[derive(Clone, Copy, Debug)]
pub(crate) enum ActionRef {
    /// No action.
    Inline0,
    /// One action.
    Inline1(Action),
    /// Two actions ([`INLINE_ACTIONS`]).
    Inline2([Action; INLINE_ACTIONS]),
    /// A list in the [`ActionLists`].
    Shared(u32),
}

const _: () = assert!(std::mem::size_of::<ActionRef>() == 16);

/// One installed flow (its counters are per lane, by `slot`: [`LaneCounters`]).
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub(crate) m: PackedMatch,
    pub(crate) actions: ActionRef,
    pub(crate) cookie: u64,
    pub(crate) priority: u16,
    pub(crate) table: u8,
    pub(crate) notify_expiry: bool,
}

const _: () = assert!(std::mem::size_of::<Entry>() <= 80);

impl Entry {
    /// What a slot holds before its first flow (in no table).
    fn vacant() -> Self {
        Self {
            m: PackedMatch::default(),
            actions: ActionRef::Inline0,
            cookie: 0,
            priority: 0,
            table: 0,
            notify_expiry: false,
        }
    }
}

/// Every flow's entry, by slot, in chunks that never move ([`SlotChunks`]).
pub(crate) type Slab = SlotChunks<Entry>;

/// When a flow with idle timeout `idle_ns` (0: none) and hard deadline `hard_deadline` may
/// expire next if last used at `last_used` (ns; `u64::MAX`: never).
fn deadline(idle_ns: u64, hard_deadline: u64, last_used: u64) -> u64 {
    let idle = match idle_ns {
        0 => u64::MAX,
        i => last_used.saturating_add(i),
    };
    idle.min(hard_deadline)
}

/// Action lists longer than [`INLINE_ACTIONS`], each stored once however many flows use it,
/// with a reference count. The index maps a list's hash to its id; a list whose hash is taken
/// by another (a collision) is stored unindexed, so it is merely not shared.
#[derive(Default)]
pub(crate) struct ActionLists {
    /// (list, references, indexed).
    lists: Vec<(Box<[Action]>, u32, bool)>,
    index: HashMap<u64, u32, ahash::RandomState>,
    hasher: ahash::RandomState,
    free: Vec<u32>,
    /// Lists stored now, and their actions together (for the memory an instance reports).
    live: usize,
    actions: usize,
}

impl ActionLists {
    /// A reference to `a` (inline if short; else interned, with one more reference).
    pub(crate) fn intern(&mut self, a: &[Action]) -> ActionRef {
        match *a {
            [] => return ActionRef::Inline0,
            [x] => return ActionRef::Inline1(x),
            [x, y] => return ActionRef::Inline2([x, y]),
            _ => {}
        }
        let h = self.hasher.hash_one(a);
        let slot = self.index.get(&h).copied();
        if let Some(id) = slot {
            let (list, refs, _) = &mut self.lists[id as usize];
            if **list == *a {
                *refs += 1;
                return ActionRef::Shared(id);
            }
        }
        let entry = (a.into(), 1, slot.is_none());
        self.live += 1;
        self.actions += a.len();
        let id = match self.free.pop() {
            Some(id) => {
                self.lists[id as usize] = entry;
                id
            }
            None => {
                self.lists.push(entry);
                (self.lists.len() - 1) as u32
            }
        };
        if slot.is_none() {
            self.index.insert(h, id);
        }
        ActionRef::Shared(id)
    }

    /// Drops one reference (an interned list is freed with its last).
    pub(crate) fn release(&mut self, r: ActionRef) {
        let ActionRef::Shared(id) = r else {
            return;
        };
        let (list, refs, indexed) = &mut self.lists[id as usize];
        *refs -= 1;
        if *refs == 0 {
            let list = std::mem::take(list);
            self.live -= 1;
            self.actions -= list.len();
            if *indexed {
                self.index.remove(&self.hasher.hash_one(&*list));
            }
            self.free.push(id);
        }
    }

    /// Lists stored (each once, however many flows share it) and their actions together.
    pub(crate) fn held(&self) -> (usize, usize) {
        (self.live, self.actions)
    }

    /// The actions `r` refers to.
    #[inline]
    pub(crate) fn get<'a>(&'a self, r: &'a ActionRef) -> &'a [Action] {
        match r {
            ActionRef::Inline0 => &[],
            ActionRef::Inline1(a) => std::slice::from_ref(a),
            ActionRef::Inline2(a) => a,
            ActionRef::Shared(id) => &self.lists[*id as usize].0,
        }
    }
}

/// One flow's counters on one lane. Only that lane writes them (a load and a store, no
/// read-modify-write: nothing else writes the line); anyone may read them.
#[derive(Debug, Default)]
pub(crate) struct FlowCounters {
    pub(crate) packets: AtomicU64,
    pub(crate) bytes: AtomicU64,
    /// When the lane last matched the flow (monotonic ns, the instance's clock).
    pub(crate) last_used: AtomicU64,
}

/// A copy of the values (what new chunks of counters are filled with: zeros).
impl Clone for FlowCounters {
    fn clone(&self) -> Self {
        let r = Ordering::Relaxed;
        Self {
            packets: AtomicU64::new(self.packets.load(r)),
            bytes: AtomicU64::new(self.bytes.load(r)),
            last_used: AtomicU64::new(self.last_used.load(r)),
        }
    }
}

impl FlowCounters {
    /// Counts `packets` packets of `bytes` bytes at `now` (the owning lane only).
    #[inline]
    pub(crate) fn hit(&self, packets: u64, bytes: u64, now: u64) {
        let r = Ordering::Relaxed;
        self.packets.store(self.packets.load(r) + packets, r);
        self.bytes.store(self.bytes.load(r) + bytes, r);
        self.last_used.store(now, r);
    }

    fn clear(&self, now: u64) {
        let r = Ordering::Relaxed;
        self.packets.store(0, r);
        self.bytes.store(0, r);
        self.last_used.store(now, r);
    }
}

/// One lane's flow counters by slot, in chunks that never move ([`SlotChunks`]): the data
/// path's `counters[slot]` is one bound check (the chunk directory) and one more dependent
/// load than a vector.
pub(crate) type Counters = SlotChunks<FlowCounters>;

/// The flow counters of one lane, by slab slot.
#[derive(Debug)]
pub(crate) struct LaneCounters {
    pub(crate) flows: Counters,
}

impl Default for LaneCounters {
    fn default() -> Self {
        Self {
            flows: SlotChunks::new(FlowCounters::default),
        }
    }
}

/// The flow tables of one instance.
pub(crate) struct Tables {
    /// Every flow, by slot (a free slot holds a stale entry, in no table).
    pub(crate) slab: Slab,
    free: Vec<u32>,
    /// Per table, the slots of its entries in priority order (highest first; equal
    /// priorities in install order).
    order: PriorityOrder,
    pub(crate) acts: ActionLists,
    /// Per lane, the flows' counters by slot.
    pub(crate) lanes: Vec<LaneCounters>,
    flows: usize,
    /// What the data path looks entries up in, and where installing finds the entry it
    /// replaces (same table, priority and match).
    cls: Classifier,
    /// The entries with an idle or hard timeout, by when to look at them again.
    timers: TimerWheel,
}

impl Tables {
    /// `n` empty tables whose flows are counted on `lanes` lanes.
    pub(crate) fn new(n: usize, lanes: usize) -> Self {
        Self {
            slab: SlotChunks::new(Entry::vacant),
            free: Vec::new(),
            order: PriorityOrder::new(n),
            acts: ActionLists::default(),
            lanes: (0..lanes).map(|_| LaneCounters::default()).collect(),
            flows: 0,
            cls: Classifier::new(n),
            timers: TimerWheel::new(),
        }
    }

    pub(crate) fn flows(&self) -> usize {
        self.flows
    }

    /// Entries with an idle or hard timeout (none: expiry has nothing to look for).
    pub(crate) fn timed(&self) -> usize {
        self.timers.len()
    }

    /// The summed counters of the flow in `slot` over every lane, and when any lane last
    /// used it.
    pub(crate) fn counters(&self, slot: u32) -> (FlowStats, u64) {
        let r = Ordering::Relaxed;
        let mut s = FlowStats::default();
        let mut last = 0;
        for l in &self.lanes {
            if let Some(c) = l.flows.get(slot as usize) {
                s.packets += c.packets.load(r);
                s.bytes += c.bytes.load(r);
                last = last.max(c.last_used.load(r));
            }
        }
        (s, last)
    }

    /// Installs `spec` in table `t` (checked by the caller), replacing the entry with the same
    /// priority and match (whose counters start again). False (nothing installed) when a new
    /// entry would exceed `max`.
    pub(crate) fn insert(&mut self, t: usize, spec: &FlowSpec, now: u64, max: usize) -> bool {
        let m = PackedMatch::new(&spec.m);
        let table = t as u8;
        let (old, place) = self.cls.find(&self.slab, t, spec.priority, &m);
        if old.is_none() && self.flows >= max {
            return false;
        }
        let hard = match spec.hard_timeout_ns {
            0 => u64::MAX,
            h => now.saturating_add(h),
        };
        let idle = spec.idle_timeout_ns;
        let entry = Entry {
            m,
            actions: self.acts.intern(&spec.actions),
            cookie: spec.cookie,
            priority: spec.priority,
            table,
            notify_expiry: spec.notify_expiry,
        };
        if let Some(s) = old {
            let old = std::mem::replace(&mut self.slab[s as usize], entry);
            self.acts.release(old.actions);
            for l in &self.lanes {
                l.flows[s as usize].clear(now);
            }
            self.set_timer(s, now, idle, hard);
            return true;
        }
        let slot = match self.free.pop() {
            Some(s) => {
                self.slab[s as usize] = entry;
                s
            }
            None => {
                let s = self.slab.push(entry);
                for l in &mut self.lanes {
                    l.flows.grow_to(s + 1);
                }
                s as u32
            }
        };
        for l in &self.lanes {
            l.flows[slot as usize].clear(now);
        }
        if self.cls.installs_exhausted() {
            let order = &self.order;
            self.cls
                .renumber((0..order.tables()).flat_map(|t| order.iter(t)));
        }
        self.order.insert(t, slot, spec.priority);
        self.cls.insert(&self.slab, slot, place);
        self.set_timer(slot, now, idle, hard);
        self.flows += 1;
        true
    }

    /// Gives the entry in `slot`, last used at `now`, its idle timeout (ns; 0: none) and
    /// hard deadline (ns; `u64::MAX`: none), and schedules it on the timer wheel if it has
    /// one (else makes sure it has neither timer nor timeouts).
    fn set_timer(&mut self, slot: u32, now: u64, idle: u64, hard: u64) {
        if idle != 0 || hard != u64::MAX {
            self.timers.set_timeouts(slot, idle, hard);
            self.timers.schedule(slot, deadline(idle, hard, now));
        } else {
            self.timers.forget(slot);
        }
    }

    /// Takes the entry in `slot` out of every structure and frees the slot.
    fn remove_slot(&mut self, s: u32) {
        let e = &self.slab[s as usize];
        let slab = &self.slab;
        self.order.remove(usize::from(e.table), s, e.priority, |x| {
            slab[x as usize].priority
        });
        self.timers.forget(s);
        self.cls.remove(&self.slab, s);
        let a = e.actions;
        self.acts.release(a);
        self.free.push(s);
        self.flows -= 1;
    }

    /// Removes the entries `drop` selects (calling `removed` with each, its slot and its
    /// summed counters), keeping the classifier, the action lists and the counters in step.
    /// Returns how many were removed.
    pub(crate) fn remove_if(
        &mut self,
        mut drop: impl FnMut(&Entry, u32) -> bool,
        mut removed: impl FnMut(&Entry, FlowStats),
    ) -> usize {
        let mut gone = Vec::new();
        for t in 0..self.cls.tables() {
            gone.extend(
                self.order
                    .iter(t)
                    .filter(|&s| drop(&self.slab[s as usize], s)),
            );
        }
        for &s in &gone {
            let (stats, _) = self.counters(s);
            removed(&self.slab[s as usize], stats);
            self.remove_slot(s);
        }
        gone.len()
    }

    /// Removes the flows past a timeout at `now`: the hard deadline passed, or used on no
    /// lane for the idle timeout. Calls `removed` with each, whether its hard timeout passed
    /// and its summed counters, in table order then priority order (as a pass over the
    /// tables would). Looks only at the flows the timer wheel has due (rescheduling those
    /// that were used since), not at every flow. Returns how many were removed.
    pub(crate) fn expire(
        &mut self,
        now: u64,
        mut removed: impl FnMut(&Entry, bool, FlowStats),
    ) -> usize {
        let mut due = Vec::new();
        self.timers.due(now, &mut due);
        let mut doomed = Vec::new();
        for s in due {
            let (idle, hard_deadline) = self.timers.timeouts(s);
            let last = self.counters(s).1;
            let hard = now >= hard_deadline;
            if hard || idle != 0 && now.saturating_sub(last) >= idle {
                doomed.push((s, hard));
            } else {
                self.timers.schedule(s, deadline(idle, hard_deadline, last));
            }
        }
        let (slab, cls) = (&self.slab, &self.cls);
        doomed.sort_unstable_by_key(|&(s, _)| {
            let e = &slab[s as usize];
            (e.table, Reverse(e.priority), cls.installed(s))
        });
        for &(s, hard) in &doomed {
            let (stats, _) = self.counters(s);
            removed(&self.slab[s as usize], hard, stats);
            self.remove_slot(s);
        }
        doomed.len()
    }

    /// The entry in `slot`.
    #[inline]
    pub(crate) fn entry(&self, slot: u32) -> &Entry {
        &self.slab[slot as usize]
    }

    /// Table `t`'s best entry for the packet `key` (the first of [`table`](Self::table)
    /// that matches it), with its slot.
    #[inline]
    pub(crate) fn lookup(&self, t: usize, key: &FlowKey) -> Option<(u32, &Entry)> {
        let s = self.cls.lookup(&self.slab, t, key)?;
        Some((s, &self.slab[s as usize]))
    }

    /// The entries of table `t` in priority order, with their slots.
    pub(crate) fn table(&self, t: usize) -> impl Iterator<Item = (u32, &Entry)> + '_ {
        self.order.iter(t).map(|s| (s, &self.slab[s as usize]))
    }

    /// Sets the classifier's install count (tests: to cross its wrap quickly); `n` must not
    /// be below the count now.
    #[cfg(test)]
    pub(crate) fn set_installs(&mut self, n: u32) {
        self.cls.set_installs(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dpacc_spec::fastpath::flow::{ETH_IPV4, NO_VLAN};
    use dpacc_spec::fastpath::PortId;

    /// The packed match decides like `Match::matches` on every field and prefix shape.
    #[test]
    fn packed_matches_agree_with_match() {
        let p4 = |a: &str, len| {
            Some(Prefix {
                addr: a.parse().unwrap(),
                len,
            })
        };
        let matches = [
            Match::default(),
            Match {
                in_port: Some(1),
                proto: Some(17),
                dport: Some(53),
                ..Match::default()
            },
            Match {
                dst: p4("192.168.6.0", 23),
                ..Match::default()
            },
            Match {
                src: p4("10.0.0.0", 8),
                sport: Some(7),
                spi: Some(9),
                ..Match::default()
            },
            Match {
                src: p4("::", 0),
                ..Match::default()
            },
            Match {
                dst: p4("2001:db8::", 33),
                eth_type: Some(0x86dd),
                vlan: Some(5),
                ..Match::default()
            },
            Match {
                dst: p4("10.1.2.3", 40),
                ..Match::default()
            },
        ];
        let mut keys = Vec::new();
        for (ver, src, dst) in [
            (4u8, [10u8, 1, 2, 3], [192u8, 168, 7, 9]),
            (4, [11, 0, 0, 1], [192, 168, 8, 9]),
            (4, [10, 1, 2, 3], [10, 1, 2, 3]),
        ] {
            let mut k = FlowKey {
                in_port: 1,
                eth_type: ETH_IPV4,
                vlan: NO_VLAN,
                ip_ver: ver,
                proto: 17,
                sport: 7,
                dport: 53,
                spi: 9,
                ..FlowKey::default()
            };
            k.src[..4].copy_from_slice(&src);
            k.dst[..4].copy_from_slice(&dst);
            keys.push(k);
        }
        let mut k6 = FlowKey {
            eth_type: 0x86dd,
            vlan: 5,
            ip_ver: 6,
            ..FlowKey::default()
        };
        k6.dst = "2001:db8:8000::1"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets();
        keys.push(k6);
        k6.dst = "2001:db8::1"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets();
        keys.push(k6);
        for m in &matches {
            let p = PackedMatch::new(m);
            for k in &keys {
                assert_eq!(p.matches(k), m.matches(k), "{m:?} on {k:?}");
            }
        }
    }

    #[test]
    fn short_lists_are_inline_and_long_ones_shared_and_freed() {
        let mut a = ActionLists::default();
        let out = [Action::Output(PortId(1))];
        let r = a.intern(&out);
        assert!(matches!(r, ActionRef::Inline1(_)));
        assert_eq!(a.get(&r), &out);
        let two = [Action::SetL4Dst(7), Action::Output(PortId(2))];
        let r2 = a.intern(&two);
        assert_eq!(a.get(&r2), &two);
        let long = [Action::SetL4Src(1), Action::SetL4Dst(2), Action::Goto(3)];
        let x = a.intern(&long);
        let y = a.intern(&long);
        let (ActionRef::Shared(xi), ActionRef::Shared(yi)) = (x, y) else {
            panic!("a list of three is interned")
        };
        assert_eq!(xi, yi);
        let other = [Action::SetL4Src(1), Action::SetL4Dst(2), Action::Drop];
        let z = a.intern(&other);
        a.release(x);
        assert_eq!(a.get(&y), &long);
        a.release(y);
        // Freed: the id is reused for the next new list.
        let w = a.intern(&[Action::Goto(3), Action::Goto(4), Action::Goto(5)]);
        assert!(matches!(w, ActionRef::Shared(i) if i == xi));
        assert_eq!(a.get(&z), &other);
    }

    fn spec(priority: u16, dport: u16, cookie: u64) -> FlowSpec {
        FlowSpec {
            table: 0,
            priority,
            cookie,
            m: Match {
                dport: Some(dport),
                ..Match::default()
            },
            actions: vec![Action::Output(PortId(1))],
            idle_timeout_ns: 1,
            hard_timeout_ns: 0,
            notify_expiry: false,
        }
    }

    /// Slots are reused, the index follows replacements and removals, the priority order
    /// holds, and every lane's counters of a slot start again when it is reused.
    #[test]
    fn slots_index_and_counters_stay_in_step() {
        let mut t = Tables::new(2, 2);
        assert!(t.insert(0, &spec(5, 1, 1), 0, 3));
        assert!(t.insert(0, &spec(9, 2, 2), 0, 3));
        assert!(t.insert(0, &spec(5, 3, 3), 0, 3));
        assert!(!t.insert(0, &spec(5, 4, 4), 0, 3), "quota");
        assert!(t.insert(0, &spec(5, 3, 33), 0, 3), "a replacement fits");
        let order: Vec<u64> = t.table(0).map(|(_, e)| e.cookie).collect();
        assert_eq!(order, [2, 1, 33]);
        t.lanes[0].flows[1].hit(2, 100, 7);
        t.lanes[1].flows[1].hit(1, 50, 9);
        assert_eq!(
            t.counters(1),
            (
                FlowStats {
                    packets: 3,
                    bytes: 150
                },
                9
            )
        );
        let mut seen = Vec::new();
        assert_eq!(
            t.remove_if(
                |e, _| e.cookie == 2,
                |e, s| seen.push((e.cookie, s.packets))
            ),
            1
        );
        assert_eq!(seen, [(2, 3)]);
        assert!(t.insert(0, &spec(9, 2, 22), 10, 3), "slot 1 reused");
        assert_eq!(t.counters(1).0, FlowStats::default());
        assert_eq!(t.slab.len(), 3);
        // The index finds the new entry: replacing it keeps the count.
        assert!(t.insert(0, &spec(9, 2, 222), 10, 3));
        assert_eq!(t.flows(), 3);
        let order: Vec<u64> = t.table(0).map(|(_, e)| e.cookie).collect();
        assert_eq!(order, [222, 1, 33]);
    }

    fn spec_in(table: u8, priority: u16, m: Match, cookie: u64) -> FlowSpec {
        FlowSpec {
            table,
            priority,
            cookie,
            m,
            actions: vec![Action::Output(PortId(1))],
            idle_timeout_ns: 0,
            hard_timeout_ns: 0,
            notify_expiry: false,
        }
    }

    fn dst(a: &str, len: u8) -> Match {
        Match {
            dst: Some(Prefix {
                addr: a.parse().unwrap(),
                len,
            }),
            ..Match::default()
        }
    }

    fn cookies(t: &Tables, tab: usize) -> Vec<u64> {
        t.table(tab).map(|(_, e)| e.cookie).collect()
    }

    /// Installing finds the entry it replaces through the classifier: the same table,
    /// priority and match (host bits past a prefix included) is replaced in place (the count
    /// stays, its counters start again, its place in the order stays); another priority,
    /// another table or other host bits (the same masked match) make a new entry.
    #[test]
    fn replacement_is_found_through_the_classifier() {
        let mut t = Tables::new(2, 1);
        let m = dst("10.1.2.3", 24);
        assert!(t.insert(0, &spec_in(0, 5, m, 1), 0, 100));
        assert!(t.insert(0, &spec_in(0, 7, m, 2), 0, 100), "other priority");
        assert!(t.insert(1, &spec_in(1, 5, m, 3), 0, 100), "other table");
        // Same /24 network, other host bits: the same chain, not the same match.
        assert!(t.insert(0, &spec_in(0, 5, dst("10.1.2.9", 24), 4), 0, 100));
        assert!(t.insert(0, &spec_in(0, 3, m, 5), 0, 100), "lower priority");
        assert_eq!(t.flows(), 5);
        assert_eq!(cookies(&t, 0), [2, 1, 4, 5]);
        assert_eq!(cookies(&t, 1), [3]);
        // Counters on the entry about to be replaced.
        let slot = t.table(0).find(|(_, e)| e.cookie == 1).unwrap().0;
        t.lanes[0].flows[slot as usize].hit(3, 300, 5);
        // Replace the priority-5 entry of table 0 (its chain holds priorities 7, 5, 5, 3).
        assert!(
            t.insert(0, &spec_in(0, 5, m, 11), 9, 5),
            "a replacement fits"
        );
        assert_eq!(t.flows(), 5);
        assert_eq!(cookies(&t, 0), [2, 11, 4, 5], "in place");
        assert_eq!(
            t.counters(slot),
            (FlowStats::default(), 9),
            "counters restart"
        );
        // Full quota: a new match is refused, every replacement is taken.
        assert!(!t.insert(0, &spec_in(0, 6, m, 6), 9, 5));
        for (tab, p, c) in [(0, 7, 12), (0, 3, 15), (1, 5, 13)] {
            assert!(t.insert(tab, &spec_in(tab as u8, p, m, c), 9, 5));
        }
        assert!(t.insert(0, &spec_in(0, 5, dst("10.1.2.9", 24), 14), 9, 5));
        assert_eq!(t.flows(), 5);
        assert_eq!(cookies(&t, 0), [12, 11, 14, 15]);
        assert_eq!(cookies(&t, 1), [13]);
        // Lookups still give the best of the chain; removing the head leaves the rest
        // findable for replacement.
        let mut k = FlowKey {
            ip_ver: 4,
            ..FlowKey::default()
        };
        k.dst[..4].copy_from_slice(&[10, 1, 2, 77]);
        assert_eq!(t.lookup(0, &k).map(|(_, e)| e.cookie), Some(12));
        assert_eq!(t.remove_if(|e, _| e.cookie == 12, |_, _| {}), 1);
        assert_eq!(t.lookup(0, &k).map(|(_, e)| e.cookie), Some(11));
        assert!(t.insert(0, &spec_in(0, 3, m, 25), 9, 5));
        assert!(t.insert(0, &spec_in(0, 5, m, 21), 9, 5));
        assert_eq!(cookies(&t, 0), [21, 14, 25]);
        assert_eq!(t.flows(), 4);
    }

    /// Slots grow across chunk boundaries without moving entries or counters, lookups find
    /// flows in every chunk, a freed slot is reused (no new chunk), and the quota refuses the
    /// flow past the last slot of the last chunk without allocating for it.
    #[test]
    fn slots_grow_by_chunks_and_the_quota_ends_at_the_last_one() {
        use super::super::slot_chunks::CHUNK;
        let max = 2 * CHUNK;
        let by_port = |i: usize| {
            let mut s = spec_in(
                0,
                5,
                Match {
                    dport: Some(i as u16),
                    ..Match::default()
                },
                i as u64,
            );
            // Timed flows in the second chunk: the wheel's links and timeouts grow too.
            if i >= CHUNK {
                s.idle_timeout_ns = 1_000_000;
                s.hard_timeout_ns = 7;
            }
            s
        };
        let mut t = Tables::new(1, 2);
        let mut first = None;
        for i in 0..max {
            assert!(t.insert(0, &by_port(i), 0, max), "flow {i}");
            if i == CHUNK - 1 {
                t.lanes[1].flows[i].hit(4, 400, 3);
                first = Some((
                    t.entry(0) as *const Entry as usize,
                    &t.lanes[1].flows[i] as *const FlowCounters as usize,
                ));
                assert_eq!(t.slab.capacity(), CHUNK);
            }
        }
        assert_eq!(t.slab.len(), max);
        assert_eq!(
            first,
            Some((
                t.entry(0) as *const Entry as usize,
                &t.lanes[1].flows[CHUNK - 1] as *const FlowCounters as usize,
            )),
            "nothing moved"
        );
        assert_eq!(t.counters(CHUNK as u32 - 1).0.packets, 4);
        for l in &t.lanes {
            assert_eq!(l.flows.capacity(), max);
        }
        let key = |port: usize| FlowKey {
            dport: port as u16,
            ..FlowKey::default()
        };
        for i in [0, CHUNK - 1, CHUNK, max - 1] {
            let (s, e) = t.lookup(0, &key(i)).expect("found");
            assert_eq!((s as usize, e.cookie), (i, i as u64));
        }
        // Full: the next flow is refused and no chunk is added for it.
        assert!(!t.insert(0, &by_port(max), 0, max));
        assert_eq!((t.slab.capacity(), t.flows()), (max, max));
        assert!(t.lookup(0, &key(max)).is_none());
        // A freed slot in the last chunk is reused.
        let gone = max - 3;
        t.lanes[0].flows[gone].hit(1, 60, 5);
        assert_eq!(t.remove_if(|e, _| e.cookie == gone as u64, |_, _| {}), 1);
        assert!(t.insert(0, &by_port(max), 9, max));
        assert_eq!(t.lookup(0, &key(max)).map(|(s, _)| s as usize), Some(gone));
        assert_eq!(t.counters(gone as u32), (FlowStats::default(), 9));
        assert_eq!((t.slab.capacity(), t.slab.len()), (max, max));
        // The timed flows (the second chunk's) all expire, the others stay.
        assert_eq!(t.expire(1 << 40, |_, _, _| {}), CHUNK);
        assert_eq!(t.flows(), CHUNK);
        assert_eq!(t.timed(), 0);
    }

    /// Install numbers run out after 2^32 installs: the live entries are numbered again in
    /// their order, so ties (equal priority, several shapes matching) still go to the entry
    /// installed first, in lookups and in expiry's event order.
    #[test]
    fn install_numbers_wrap_without_changing_ties() {
        let mut t = Tables::new(1, 1);
        t.set_installs(u32::MAX - 2);
        let any = |m: Match, c| {
            let mut s = spec_in(0, 5, m, c);
            s.idle_timeout_ns = 1;
            s
        };
        let by_port = Match {
            dport: Some(80),
            ..Match::default()
        };
        let by_proto = Match {
            proto: Some(17),
            ..Match::default()
        };
        let by_port_in = Match {
            in_port: Some(1),
            ..Match::default()
        };
        // Numbers MAX - 1 and MAX, then the third runs out and renumbers.
        assert!(t.insert(0, &any(by_port, 1), 0, 10));
        assert!(t.insert(0, &any(dst("10.0.0.0", 8), 2), 0, 10));
        assert!(t.insert(0, &any(by_proto, 3), 0, 10));
        assert!(t.insert(0, &any(by_port_in, 4), 0, 10));
        let mut k = FlowKey {
            in_port: 1,
            ip_ver: 4,
            proto: 17,
            dport: 80,
            ..FlowKey::default()
        };
        k.dst[..4].copy_from_slice(&[10, 9, 9, 9]);
        let best = |t: &Tables| t.lookup(0, &k).map(|(_, e)| e.cookie);
        assert_eq!(best(&t), Some(1), "the first installed wins the tie");
        // A replacement keeps its place (and its number).
        assert!(t.insert(0, &any(by_port, 11), 0, 10));
        assert_eq!(best(&t), Some(11));
        assert_eq!(t.remove_if(|e, _| e.cookie == 11, |_, _| {}), 1);
        assert_eq!(best(&t), Some(2));
        let mut order = Vec::new();
        assert_eq!(t.expire(1_000_000_000, |e, _, _| order.push(e.cookie)), 3);
        assert_eq!(order, [2, 3, 4], "install order");
    }
}
