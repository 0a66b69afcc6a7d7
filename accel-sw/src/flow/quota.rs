//! Quotas of one instance and what it holds against them: every object a vNF can create is
//! counted, and each is charged at its largest size, so the memory an instance can hold is
//! bounded by its quotas ([`Ledger::max_memory`]) and reported ([`Ledger::usage`]).

use std::mem::size_of;

use dpacc_spec::fastpath::flow::{Action, Bucket, FlowKey, Match};
use dpacc_spec::fastpath::{Quotas, Usage};

use super::esp::Sa;
use super::{FlowError, EMC_CAP};

/// Bytes a crypto session of an SA holds on the driver side (an AES-GCM key schedule and
/// its context, rounded up).
const SA_SESSION_BYTES: u64 = 1024;
/// Hash tables are charged twice their entries (load factor and control bytes).
const HASH_SLACK: u64 = 2;

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

fn cost_flow(q: &Quotas) -> u64 {
    // The entry in its table (tables grow by doubling), its key in the replace index, its
    // action list.
    (2 * size_of::<super::Entry>()
        + HASH_SLACK as usize * size_of::<(u16, Match)>()
        + q.actions * size_of::<Action>()) as u64
}

fn cost_group() -> u64 {
    HASH_SLACK * size_of::<(u32, Vec<Bucket>)>() as u64
}

fn cost_bucket(q: &Quotas) -> u64 {
    (size_of::<Bucket>() + q.actions * size_of::<Action>()) as u64
}

fn cost_sa() -> u64 {
    HASH_SLACK * size_of::<(u32, Sa)>() as u64 + SA_SESSION_BYTES
}

fn cost_base() -> u64 {
    // The exact-match cache is allocated up front.
    HASH_SLACK * (EMC_CAP * size_of::<(FlowKey, super::Path)>()) as u64
}

/// The quotas of an instance and its counts.
#[derive(Clone, Debug)]
pub(crate) struct Ledger {
    pub(crate) quotas: Quotas,
    pub(crate) flows: usize,
    pub(crate) groups: usize,
    pub(crate) buckets: usize,
    pub(crate) sas: usize,
}

impl Ledger {
    pub(crate) fn new(quotas: Quotas) -> Self {
        Self {
            quotas,
            flows: 0,
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

    /// One more flow may be installed.
    pub(crate) fn check_new_flow(&self) -> Result<(), FlowError> {
        if self.flows >= self.quotas.flows {
            return Err(Self::refuse(QuotaKind::Flows, self.quotas.flows));
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

    /// Bytes held now.
    pub(crate) fn memory(&self) -> u64 {
        let q = &self.quotas;
        cost_base()
            + self.flows as u64 * cost_flow(q)
            + self.groups as u64 * cost_group()
            + self.buckets as u64 * cost_bucket(q)
            + self.sas as u64 * cost_sa()
    }

    /// Bytes held with every quota full.
    pub(crate) fn max_memory(&self) -> u64 {
        let q = &self.quotas;
        cost_base()
            + q.flows as u64 * cost_flow(q)
            + q.groups as u64 * cost_group()
            + q.buckets as u64 * cost_bucket(q)
            + q.sas as u64 * cost_sa()
    }

    pub(crate) fn usage(&self) -> Usage {
        let n = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        Usage {
            flows: n(self.flows),
            groups: n(self.groups),
            max_groups: n(self.quotas.groups),
            buckets: n(self.buckets),
            max_buckets: n(self.quotas.buckets),
            sas: n(self.sas),
            max_sas: n(self.quotas.sas),
            max_actions: u16::try_from(self.quotas.actions).unwrap_or(u16::MAX),
            memory: self.memory(),
            max_memory: self.max_memory(),
        }
    }
}
