//! How flows are stored: compact entries (a packed match, an interned action list, counters
//! and timeouts: 112 bytes), priority-ordered per table, with a counted index of
//! (priority, match) hashes so that installing a flow is O(1) unless it replaces one.
//!
//! At 1 M flows this is about 150 heap bytes per flow (the entry, the vector's slack and the
//! index), against 324 when every entry carried a `FlowSpec` (a `Vec` of actions each) and the
//! index held whole matches.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;

use dpacc_spec::fastpath::flow::{Action, FlowKey, FlowSpec, FlowStats, Match, Prefix};

/// A [`Match`] packed into 52 bytes: which fields are set, and their values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct PackedMatch {
    set: u16,
    in_port: u16,
    eth_type: u16,
    vlan: u16,
    sport: u16,
    dport: u16,
    spi: u32,
    proto: u8,
    src_len: u8,
    dst_len: u8,
    /// Bit 0: the source prefix is IPv6; bit 1: the destination prefix is.
    v6: u8,
    src: [u8; 16],
    dst: [u8; 16],
}

const IN_PORT: u16 = 1;
const ETH_TYPE: u16 = 1 << 1;
const VLAN: u16 = 1 << 2;
const PROTO: u16 = 1 << 3;
const SPORT: u16 = 1 << 4;
const DPORT: u16 = 1 << 5;
const SPI: u16 = 1 << 6;
const SRC: u16 = 1 << 7;
const DST: u16 = 1 << 8;

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

    /// Whether the packet with key `k` matches (as [`Match::matches`]).
    #[inline]
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

/// One installed flow.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub(crate) m: PackedMatch,
    /// Its action list in the [`ActionLists`].
    pub(crate) actions: u32,
    pub(crate) cookie: u64,
    pub(crate) idle_timeout_ns: u64,
    /// When the hard timeout passes (`u64::MAX`: never).
    pub(crate) hard_deadline: u64,
    pub(crate) last_used: u64,
    pub(crate) stats: FlowStats,
    pub(crate) priority: u16,
    pub(crate) notify_expiry: bool,
}

const _: () = assert!(std::mem::size_of::<Entry>() <= 112);

/// Action lists, each stored once however many flows use it (most flows of a table share a
/// few lists: "output:2", "set_ipv4_dst:X,output:1"), with a reference count. The index maps
/// a list's hash to its id; a list whose hash is taken by another (a collision) is stored
/// unindexed, so it is merely not shared.
#[derive(Default)]
pub(crate) struct ActionLists {
    /// (list, references, indexed).
    lists: Vec<(Box<[Action]>, u32, bool)>,
    index: HashMap<u64, u32, ahash::RandomState>,
    hasher: ahash::RandomState,
    free: Vec<u32>,
}

impl ActionLists {
    /// The id of `a` (stored if new), with one more reference.
    pub(crate) fn intern(&mut self, a: &[Action]) -> u32 {
        let h = self.hasher.hash_one(a);
        let slot = self.index.get(&h).copied();
        if let Some(id) = slot {
            let (list, refs, _) = &mut self.lists[id as usize];
            if **list == *a {
                *refs += 1;
                return id;
            }
        }
        let entry = (a.into(), 1, slot.is_none());
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
        id
    }

    /// Drops one reference to list `id` (freed with the last).
    pub(crate) fn release(&mut self, id: u32) {
        let (list, refs, indexed) = &mut self.lists[id as usize];
        *refs -= 1;
        if *refs == 0 {
            let list = std::mem::take(list);
            if *indexed {
                self.index.remove(&self.hasher.hash_one(&*list));
            }
            self.free.push(id);
        }
    }

    /// List `id`.
    #[inline]
    pub(crate) fn get(&self, id: u32) -> &[Action] {
        &self.lists[id as usize].0
    }
}

/// The flow tables of one instance.
pub(crate) struct Tables {
    /// Per table, entries in priority order (highest first; equal priorities in install order).
    pub(crate) tables: Vec<Vec<Entry>>,
    pub(crate) acts: ActionLists,
    /// How many entries of each (table, priority, match) hash exist: installing checks here
    /// and searches the table only when the hash is present (a replacement, in practice).
    present: HashMap<u64, u32, ahash::RandomState>,
    hasher: ahash::RandomState,
    flows: usize,
}

impl Tables {
    pub(crate) fn new(n: usize) -> Self {
        Self {
            tables: (0..n).map(|_| Vec::new()).collect(),
            acts: ActionLists::default(),
            present: HashMap::default(),
            hasher: ahash::RandomState::new(),
            flows: 0,
        }
    }

    pub(crate) fn flows(&self) -> usize {
        self.flows
    }

    fn id(&self, t: usize, priority: u16, m: &PackedMatch) -> u64 {
        self.hasher.hash_one((t, priority, m))
    }

    /// Installs `spec` in table `t` (checked by the caller), replacing the entry with the same
    /// priority and match. False (nothing installed) when a new entry would exceed `max`.
    pub(crate) fn insert(&mut self, t: usize, spec: &FlowSpec, now: u64, max: usize) -> bool {
        let m = PackedMatch::new(&spec.m);
        let id = self.id(t, spec.priority, &m);
        let replaces = self.present.contains_key(&id);
        if !replaces && self.flows >= max {
            return false;
        }
        let entry = Entry {
            m,
            actions: self.acts.intern(&spec.actions),
            cookie: spec.cookie,
            idle_timeout_ns: spec.idle_timeout_ns,
            hard_deadline: match spec.hard_timeout_ns {
                0 => u64::MAX,
                h => now.saturating_add(h),
            },
            last_used: now,
            stats: FlowStats::default(),
            priority: spec.priority,
            notify_expiry: spec.notify_expiry,
        };
        let table = &mut self.tables[t];
        if replaces {
            if let Some(old) = table
                .iter_mut()
                .find(|e| e.priority == entry.priority && e.m == entry.m)
            {
                let old_actions = std::mem::replace(old, entry).actions;
                self.acts.release(old_actions);
                return true;
            }
            // Only the hash was the same (a collision): a new entry after all.
            if self.flows >= max {
                self.acts.release(entry.actions);
                return false;
            }
        }
        let at = table.partition_point(|e| e.priority >= entry.priority);
        table.insert(at, entry);
        *self.present.entry(id).or_insert(0) += 1;
        self.flows += 1;
        true
    }

    /// Removes the entries `drop` selects (calling `removed` for each), keeping the index and
    /// the action lists in step. Returns how many were removed.
    pub(crate) fn remove_if(
        &mut self,
        mut drop: impl FnMut(&Entry) -> bool,
        mut removed: impl FnMut(&Entry),
    ) -> usize {
        let mut n = 0;
        let Self {
            tables,
            acts,
            present,
            hasher,
            ..
        } = self;
        for (t, table) in tables.iter_mut().enumerate() {
            table.retain(|e| {
                if !drop(e) {
                    return true;
                }
                removed(e);
                acts.release(e.actions);
                let id = hasher.hash_one((t, e.priority, &e.m));
                if let Some(c) = present.get_mut(&id) {
                    *c -= 1;
                    if *c == 0 {
                        present.remove(&id);
                    }
                }
                n += 1;
                false
            });
        }
        self.flows -= n;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dpacc_spec::fastpath::flow::{ETH_IPV4, NO_VLAN};

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
    fn action_lists_are_shared_and_freed() {
        let mut a = ActionLists::default();
        let out = [Action::Output(dpacc_spec::fastpath::PortId(1))];
        let x = a.intern(&out);
        let y = a.intern(&out);
        assert_eq!(x, y);
        let z = a.intern(&[Action::Drop]);
        assert_ne!(x, z);
        a.release(x);
        assert_eq!(a.get(y), &out);
        a.release(y);
        // Freed: the id is reused for the next new list.
        assert_eq!(a.intern(&[Action::Goto(3)]), x);
        assert_eq!(a.get(z), &[Action::Drop]);
    }
}
