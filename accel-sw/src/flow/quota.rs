//! Quotas of one instance and what it holds against them: every object a vNF can create is
//! counted (flows by the [`Tables`] themselves, the rest here), and each is charged at its
//! largest size, so the memory an instance can hold is bounded by its quotas
//! ([`Ledger::max_memory`]) and reported ([`Ledger::usage`]).

use std::mem::size_of;

use dpacc_spec::fastpath::flow::{Action, Bucket, FlowKey};
use dpacc_spec::fastpath::{Quotas, Usage};

use super::esp::{LaneSaStats, Sa};
use super::order::PriorityOrder;
use super::slot_chunks::CHUNK;
use super::table::{Entry, FlowCounters, Tables, INLINE_ACTIONS};
use super::timers::TimerWheel;
use super::{FlowError, EMC_CAP};

/// Bytes a crypto session of an SA holds on the driver side (an AES-GCM key schedule and
/// its context, rounded up).
const SA_SESSION_BYTES: u64 = 1024;
/// Hash tables are charged twice their entries (load factor and control bytes).
const HASH_SLACK: u64 = 2;
/// The classifier's tables are charged four buckets a flow: a table between 7/16 and 7/8
/// full, and while it grows the old one beside the new ([`super::slot_hash`]).
const GROWING_HASH_SLACK: u64 = 4;
/// Bytes of a priority's entry in a table's priority map (a B-tree node of 11 `u16` keys and
/// `u32` slots, at least half full).
const PRIORITY_MAP_ENTRY: usize = 16;

/// Which quota a request ran into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaKind {
    /// Flows in all tables.
    Flows,
    /// Groups.
    Groups,
    /// Buckets in all groups.
    Buckets,
    /// SAs.
    Sas,
    /// Actions in one list.
    Actions,
}

impl QuotaKind {
    /// The error text for a quota of `max`.
    pub fn message(self, max: usize) -> String {
        match self {
            QuotaKind::Flows => format!("flow quota exceeded ({max} flows)"),
            QuotaKind::Groups => format!("group quota exceeded ({max} groups)"),
            QuotaKind::Buckets => format!("bucket quota exceeded ({max} buckets in all groups)"),
            QuotaKind::Sas => format!("SA quota exceeded ({max} SAs)"),
            QuotaKind::Actions => format!("too many actions (at most {max} per list)"),
        }
    }
}

/// Bytes held by slot in the structures indexed by slot, which grow a chunk at a time and
/// never double ([`SlotChunks`](super::slot_chunks::SlotChunks)): the 80-byte slab entry, the
/// links in its table's priority order and on the timer wheel and the timeouts beside them
/// (an idle timeout as a `u32`, its exact value if not whole milliseconds, a hard deadline),
/// the classifier's links (chain, install order: a `u32` each) and the counters on every
/// lane. 148 bytes with one lane, 172 with two.
fn cost_slot(lanes: usize) -> usize {
    size_of::<Entry>()
        + PriorityOrder::SLOT_BYTES
        + TimerWheel::SLOT_BYTES
        + 2 * size_of::<u32>()
        + lanes * size_of::<FlowCounters>()
}

/// Bytes one flow holds at most: its slot in every structure indexed by slot (once: they
/// grow by chunks, [`cost_slot`]; the partly filled last chunks are in [`cost_base`]), its
/// place in the free list (once removed; a vector, so charged twice), its buckets in its
/// shape's classifier table (a 4-byte slot and a control byte each, up to four per flow
/// while the table grows: old and new tables together; there is no other index), and the
/// entry of its priority in its table's priority map (one per flow at worst). A short action
/// list (up to two actions) lives inside the entry and costs nothing more. 192 bytes with one
/// lane, 216 with two.
fn cost_flow(lanes: usize) -> u64 {
    let slot = size_of::<u32>();
    (cost_slot(lanes) + 2 * slot + GROWING_HASH_SLACK as usize * (slot + 1) + PRIORITY_MAP_ENTRY)
        as u64
}

/// Bytes one interned action list holds besides its actions: its slot (doubling), its free
/// list id and its index entry (a list longer than two actions is stored once, however many
/// flows share it).
fn cost_list() -> u64 {
    (2 * (size_of::<(Box<[Action]>, u32, bool)>() + size_of::<u32>())) as u64
        + HASH_SLACK * (size_of::<(u64, u32)>() + 1) as u64
}

/// Bytes an interned action list of `n` actions holds (none if it is short: inline).
fn cost_own_list(n: usize) -> u64 {
    if n <= INLINE_ACTIONS {
        0
    } else {
        cost_list() + (n * size_of::<Action>()) as u64
    }
}

fn cost_group() -> u64 {
    HASH_SLACK * size_of::<(u32, Vec<Bucket>)>() as u64
}

fn cost_bucket(q: &Quotas) -> u64 {
    (size_of::<Bucket>() + q.actions * size_of::<Action>()) as u64
}

fn cost_sa(lanes: usize) -> u64 {
    HASH_SLACK * size_of::<(u32, Sa)>() as u64
        + (lanes * size_of::<LaneSaStats>()) as u64
        + SA_SESSION_BYTES
}

fn cost_base(lanes: usize) -> u64 {
    // An exact-match cache per lane and one for control requests, allocated up front, the
    // timer wheel's buckets, and the last chunk of each structure indexed by slot (held
    // whole however few of its slots are used).
    (lanes as u64 + 1) * HASH_SLACK * (EMC_CAP * (size_of::<(FlowKey, super::Path)>() + 1)) as u64
        + TimerWheel::BASE_BYTES as u64
        + (CHUNK * cost_slot(lanes)) as u64
}

/// The quotas of an instance and its counts.
#[derive(Clone, Debug)]
pub(crate) struct Ledger {
    pub(crate) quotas: Quotas,
    /// Lanes of the instance (each has its own counters and caches).
    lanes: usize,
    pub(crate) groups: usize,
    pub(crate) buckets: usize,
    pub(crate) sas: usize,
}

impl Ledger {
    pub(crate) fn new(quotas: Quotas, lanes: usize) -> Self {
        Self {
            quotas,
            lanes,
            groups: 0,
            buckets: 0,
            sas: 0,
        }
    }

    fn refuse(kind: QuotaKind, max: usize) -> FlowError {
        FlowError::Quota(kind, max)
    }

    /// An action list may be installed.
    pub(crate) fn check_actions(&self, actions: &[Action]) -> Result<(), FlowError> {
        if actions.len() > self.quotas.actions {
            return Err(Self::refuse(QuotaKind::Actions, self.quotas.actions));
        }
        Ok(())
    }

    /// A group of `buckets` may replace one of `old` buckets (None: a new group).
    pub(crate) fn check_group(
        &self,
        buckets: &[Bucket],
        old: Option<usize>,
    ) -> Result<(), FlowError> {
        for b in buckets {
            self.check_actions(&b.actions)?;
        }
        if old.is_none() && self.groups >= self.quotas.groups {
            return Err(Self::refuse(QuotaKind::Groups, self.quotas.groups));
        }
        let after = self.buckets - old.unwrap_or(0) + buckets.len();
        if after > self.quotas.buckets {
            return Err(Self::refuse(QuotaKind::Buckets, self.quotas.buckets));
        }
        Ok(())
    }

    /// A group of `buckets` replaced one of `old` buckets (None: it is new).
    pub(crate) fn group_added(&mut self, buckets: usize, old: Option<usize>) {
        if old.is_none() {
            self.groups += 1;
        }
        self.buckets = self.buckets - old.unwrap_or(0) + buckets;
    }

    /// One more SA may be installed (`replaces`: it takes the place of one with its SPI).
    pub(crate) fn check_sa(&self, replaces: bool) -> Result<(), FlowError> {
        if !replaces && self.sas >= self.quotas.sas {
            return Err(Self::refuse(QuotaKind::Sas, self.quotas.sas));
        }
        Ok(())
    }

    /// Bytes held now, with the flows and action lists of `t`.
    pub(crate) fn memory(&self, t: &Tables) -> u64 {
        let (lists, actions) = t.acts.held();
        cost_base(self.lanes)
            + t.flows() as u64 * cost_flow(self.lanes)
            + lists as u64 * cost_list()
            + (actions * size_of::<Action>()) as u64
            + self.groups as u64 * cost_group()
            + self.buckets as u64 * cost_bucket(&self.quotas)
            + self.sas as u64 * cost_sa(self.lanes)
    }

    /// Bytes held with every quota full (each flow with its own longest action list).
    pub(crate) fn max_memory(&self) -> u64 {
        let q = &self.quotas;
        cost_base(self.lanes)
            + q.flows as u64 * (cost_flow(self.lanes) + cost_own_list(q.actions))
            + q.groups as u64 * cost_group()
            + q.buckets as u64 * cost_bucket(q)
            + q.sas as u64 * cost_sa(self.lanes)
    }

    /// What `t` and the rest hold against the quotas.
    pub(crate) fn usage(&self, t: &Tables) -> Usage {
        let n = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        Usage {
            flows: n(t.flows()),
            groups: n(self.groups),
            max_groups: n(self.quotas.groups),
            buckets: n(self.buckets),
            max_buckets: n(self.quotas.buckets),
            sas: n(self.sas),
            max_sas: n(self.quotas.sas),
            max_actions: u16::try_from(self.quotas.actions).unwrap_or(u16::MAX),
            memory: self.memory(t),
            max_memory: self.max_memory(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dpacc_spec::fastpath::flow::{FlowSpec, Match};
    use dpacc_spec::fastpath::PortId;

    fn spec(dport: u16, actions: Vec<Action>) -> FlowSpec {
        FlowSpec {
            table: 0,
            priority: 1,
            cookie: u64::from(dport),
            m: Match {
                dport: Some(dport),
                ..Match::default()
            },
            actions,
            idle_timeout_ns: 0,
            hard_timeout_ns: 0,
            notify_expiry: false,
        }
    }

    /// Memory follows what the tables hold: a flow with a short (inline) list costs its slab
    /// entry, classifier buckets and counters; a long list is charged once however many flows share
    /// it; removing everything gives it all back; the bound holds with every quota full.
    #[test]
    fn memory_follows_the_tables_and_stays_under_the_bound() {
        let lanes = 2;
        let l = Ledger::new(Quotas::default(), lanes);
        let mut t = Tables::new(8, lanes);
        let empty = l.memory(&t);
        assert_eq!(empty, cost_base(lanes));
        let out = vec![Action::Output(PortId(1))];
        assert!(t.insert(0, &spec(1, out.clone()), 0, 10));
        let one = l.memory(&t);
        assert_eq!(one - empty, cost_flow(lanes));
        assert!(cost_flow(lanes) >= 80, "an 80-byte slab entry");
        assert_eq!(cost_flow(1), 192);
        assert_eq!(cost_flow(2), 216);
        let long = vec![
            Action::SetL4Dst(7),
            Action::SetL4Src(8),
            Action::Output(PortId(1)),
        ];
        assert!(t.insert(0, &spec(2, long.clone()), 0, 10));
        let two = l.memory(&t);
        assert_eq!(two - one, cost_flow(lanes) + cost_own_list(3));
        assert!(t.insert(0, &spec(3, long), 0, 10));
        assert_eq!(l.memory(&t) - two, cost_flow(lanes), "the list is shared");
        // Replacing a flow's long list by a short one frees the list once unused.
        assert!(t.insert(0, &spec(2, out.clone()), 0, 10));
        assert!(t.insert(0, &spec(3, out), 0, 10));
        assert_eq!(l.memory(&t), empty + 3 * cost_flow(lanes));
        t.remove_if(|_, _| true, |_, _| {});
        assert_eq!(l.memory(&t), empty);
        for lanes in [1, 2, 4] {
            let max = Ledger::new(Quotas::default(), lanes).max_memory();
            println!(
                "default quotas, {lanes} lane(s): {} bytes per flow (+{} with its own list of \
                 {} actions), at most {} MiB, of which {} MiB exact-match caches",
                cost_flow(lanes),
                cost_own_list(Quotas::default().actions),
                Quotas::default().actions,
                max >> 20,
                cost_base(lanes) >> 20
            );
            assert!(max < 128 << 20, "{max}");
        }
    }
}
