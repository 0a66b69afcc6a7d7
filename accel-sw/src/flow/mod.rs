//! The software flow processor of the inline fast path: OpenFlow-like tables with priorities
//! and goto, predefined actions (output, drop, NAT rewrites with incremental checksums, ESP
//! tunnel encap/decap with AES-GCM on the crypto driver, weighted group select), per-flow
//! counters, idle/hard timeouts, and an exact-match cache in front of the wildcard tables.
//!
//! This is the typed core; the control protocol (`dpacc_spec::fastpath::proto`) and the
//! vhost-user-net device are built on it.

pub mod checksum;
pub mod esp;
mod instance;
pub mod key;
mod quota;

pub use instance::SwFastPath;
pub use quota::QuotaKind;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use dpacc_spec::fastpath::{PacketBuf, Quotas, Usage, Verdict};
use dpacc_spec::{CryptoDriver, CryptoError, CryptoQueue};

use esp::{Sa, SaConfig, SaDir};
use key::{parse, FlowKey, Layout, IPPROTO_TCP, IPPROTO_UDP};
use quota::Ledger;

pub use dpacc_spec::fastpath::flow::{
    Action, Bucket, Expired, ExpiryReason, FlowSpec, FlowStats, Match,
};

/// Number of tables per instance.
pub const TABLES: usize = 8;
/// Exact-match cache entries before it is flushed.
const EMC_CAP: usize = 8192;
/// Longest goto chain.
const MAX_HOPS: usize = TABLES;

/// Why a control operation was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FlowError {
    /// A quota reached (`--max-flows`, `--max-groups`...): which, and its value.
    #[error("{}", .0.message(*.1))]
    Quota(QuotaKind, usize),
    /// A table number out of range or a goto that does not go forward.
    #[error("bad table or goto: {0}")]
    BadTable(String),
    /// An action list that cannot run.
    #[error("bad actions: {0}")]
    BadActions(&'static str),
    /// A group or SA referenced but not installed, or an unknown cookie.
    #[error("not found: {0}")]
    NotFound(String),
    /// The crypto driver refused the SA.
    #[error("SA rejected by the crypto driver: {0}")]
    Crypto(#[from] CryptoError),
}

/// Instance-wide counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InstanceStats {
    /// Packets that missed every table.
    pub misses: u64,
    /// Packets dropped (drop action, ESP failures, bad rewrites).
    pub drops: u64,
    /// Exact-match cache hits.
    pub emc_hits: u64,
}

struct Entry {
    spec: FlowSpec,
    stats: FlowStats,
    created: u64,
    last_used: u64,
}

#[derive(Clone, Copy, Default)]
struct Path {
    n: u8,
    hops: [(u8, u32); MAX_HOPS],
}

/// One vNF's flow processor.
pub struct SwFlowProcessor {
    tables: Vec<Vec<Entry>>,
    /// (priority, match) of every entry per table, so installing is O(1) unless it replaces.
    present: Vec<HashSet<(u16, Match)>>,
    groups: HashMap<u32, Vec<Bucket>>,
    outbound: HashMap<u32, Sa>,
    inbound: HashMap<u32, Sa>,
    /// Keyed per instance (ahash with random keys): fast, and not steerable by crafted
    /// traffic the way a fixed hash would be.
    emc: HashMap<FlowKey, Path, ahash::RandomState>,
    crypto: Arc<dyn CryptoDriver>,
    queue: Box<dyn CryptoQueue>,
    ledger: Ledger,
    /// Uplinks of the instance: valid output ports are 0..=uplinks (checked for control
    /// requests; the typed API trusts its caller).
    pub uplinks: u16,
    /// Counters.
    pub stats: InstanceStats,
}

impl SwFlowProcessor {
    /// An empty instance holding at most `max_flows` flows (the other quotas at their
    /// defaults), doing ESP on `crypto`.
    pub fn new(crypto: Arc<dyn CryptoDriver>, max_flows: usize) -> Result<Self, CryptoError> {
        Self::with_quotas(
            crypto,
            Quotas {
                flows: max_flows,
                ..Quotas::default()
            },
        )
    }

    /// An empty instance with these quotas, doing ESP on `crypto`.
    pub fn with_quotas(crypto: Arc<dyn CryptoDriver>, quotas: Quotas) -> Result<Self, CryptoError> {
        let queue = crypto.open_queue(1)?;
        Ok(Self {
            tables: (0..TABLES).map(|_| Vec::new()).collect(),
            present: (0..TABLES).map(|_| HashSet::new()).collect(),
            groups: HashMap::new(),
            outbound: HashMap::new(),
            inbound: HashMap::new(),
            emc: HashMap::with_capacity_and_hasher(EMC_CAP, ahash::RandomState::new()),
            crypto,
            queue,
            ledger: Ledger::new(quotas),
            uplinks: u16::MAX,
            stats: InstanceStats::default(),
        })
    }

    fn invalidate(&mut self) {
        self.emc.clear();
    }

    /// Installs a flow (replacing one with the same table, priority and match).
    pub fn add_flow(&mut self, spec: FlowSpec, now_ns: u64) -> Result<(), FlowError> {
        let t = usize::from(spec.table);
        self.ledger.check_actions(&spec.actions)?;
        if t >= TABLES {
            return Err(FlowError::BadTable(format!("table {t} (0..{TABLES})")));
        }
        for (i, a) in spec.actions.iter().enumerate() {
            match *a {
                Action::Goto(g) if usize::from(g) <= t || usize::from(g) >= TABLES => {
                    return Err(FlowError::BadTable(format!("goto {g} from table {t}")))
                }
                Action::Goto(_) if i + 1 != spec.actions.len() => {
                    return Err(FlowError::BadActions("goto must be the last action"))
                }
                Action::Group(g) if !self.groups.contains_key(&g) => {
                    return Err(FlowError::NotFound(format!("group {g}")))
                }
                Action::EspEncap(spi) if !self.outbound.contains_key(&spi) => {
                    return Err(FlowError::NotFound(format!("outbound SA {spi:#x}")))
                }
                _ => {}
            }
        }
        let table = &mut self.tables[t];
        let entry = Entry {
            spec,
            stats: FlowStats::default(),
            created: now_ns,
            last_used: now_ns,
        };
        let id = (entry.spec.priority, entry.spec.m);
        if self.present[t].contains(&id) {
            let old = table
                .iter_mut()
                .find(|e| (e.spec.priority, e.spec.m) == id)
                .expect("indexed entry exists");
            *old = entry;
        } else {
            self.ledger.check_new_flow()?;
            let at = table.partition_point(|e| e.spec.priority >= entry.spec.priority);
            table.insert(at, entry);
            self.present[t].insert(id);
            self.ledger.flows += 1;
        }
        self.invalidate();
        Ok(())
    }

    /// Removes every flow with `cookie`; returns their final counters.
    pub fn delete_flows(&mut self, cookie: u64) -> Vec<FlowStats> {
        let mut out = Vec::new();
        for (t, present) in self.tables.iter_mut().zip(&mut self.present) {
            t.retain(|e| {
                let keep = e.spec.cookie != cookie;
                if !keep {
                    out.push(e.stats);
                    present.remove(&(e.spec.priority, e.spec.m));
                }
                keep
            });
        }
        self.ledger.flows -= out.len();
        if !out.is_empty() {
            self.invalidate();
        }
        out
    }

    /// Counters of the flows with `cookie` (summed), if any.
    pub fn flow_stats(&self, cookie: u64) -> Option<FlowStats> {
        let mut found = None;
        for e in self
            .tables
            .iter()
            .flatten()
            .filter(|e| e.spec.cookie == cookie)
        {
            let s = found.get_or_insert(FlowStats::default());
            s.packets += e.stats.packets;
            s.bytes += e.stats.bytes;
        }
        found
    }

    /// Up to `max` flows from index `start` (tables in order, then priority order).
    pub fn list(&self, start: usize, max: usize) -> Vec<dpacc_spec::fastpath::flow::FlowSummary> {
        self.tables
            .iter()
            .enumerate()
            .flat_map(|(t, es)| es.iter().map(move |e| (t, e)))
            .skip(start)
            .take(max)
            .map(|(t, e)| dpacc_spec::fastpath::flow::FlowSummary {
                cookie: e.spec.cookie,
                table: t as u8,
                priority: e.spec.priority,
                stats: e.stats,
            })
            .collect()
    }

    /// Installed flows.
    pub fn flow_count(&self) -> usize {
        self.ledger.flows
    }

    /// What the instance holds against its quotas, and its memory.
    pub fn usage(&self) -> Usage {
        self.ledger.usage()
    }

    /// The quotas.
    pub fn quotas(&self) -> &Quotas {
        &self.ledger.quotas
    }

    /// Removes every flow, group and SA (their crypto sessions close) and frees their memory.
    pub fn clear(&mut self) {
        self.tables = (0..TABLES).map(|_| Vec::new()).collect();
        self.present = (0..TABLES).map(|_| HashSet::new()).collect();
        self.groups = HashMap::new();
        self.outbound = HashMap::new();
        self.inbound = HashMap::new();
        self.invalidate();
        self.ledger = Ledger::new(self.ledger.quotas);
    }

    /// Installs (or replaces) a select group.
    pub fn add_group(&mut self, id: u32, buckets: Vec<Bucket>) -> Result<(), FlowError> {
        if buckets.is_empty() || buckets.iter().any(|b| b.weight == 0) {
            return Err(FlowError::BadActions(
                "a group needs buckets with weights > 0",
            ));
        }
        if buckets.iter().flat_map(|b| &b.actions).any(|a| {
            matches!(
                a,
                Action::Group(_) | Action::Goto(_) | Action::EspEncap(_) | Action::EspDecap
            )
        }) {
            return Err(FlowError::BadActions(
                "bucket actions: rewrites and output only",
            ));
        }
        let old = self.groups.get(&id).map(Vec::len);
        self.ledger.check_group(&buckets, old)?;
        self.ledger.group_added(buckets.len(), old);
        self.groups.insert(id, buckets);
        self.invalidate();
        Ok(())
    }

    /// Installs an ESP SA (creating its AEAD session on the crypto driver).
    pub fn add_sa(&mut self, cfg: SaConfig) -> Result<(), FlowError> {
        let spi = cfg.spi;
        let outbound = matches!(cfg.dir, SaDir::Outbound { .. });
        let map = if outbound {
            &self.outbound
        } else {
            &self.inbound
        };
        self.ledger.check_sa(map.contains_key(&spi))?;
        let sa = Sa::new(cfg, &*self.crypto)?;
        let old = if outbound {
            self.outbound.insert(spi, sa)
        } else {
            self.inbound.insert(spi, sa)
        };
        if old.is_none() {
            self.ledger.sas += 1;
        }
        Ok(())
    }

    /// The SA with `spi` (outbound first), for its counters.
    pub fn sa(&self, spi: u32) -> Option<&Sa> {
        self.outbound.get(&spi).or_else(|| self.inbound.get(&spi))
    }

    /// Processes a batch in place: `verdicts[i]` for `pkts[i]`.
    pub fn process(&mut self, now_ns: u64, pkts: &mut [PacketBuf], verdicts: &mut [Verdict]) {
        for (p, v) in pkts.iter_mut().zip(verdicts.iter_mut()) {
            *v = self.one(now_ns, p);
            match *v {
                Verdict::Drop => self.stats.drops += 1,
                Verdict::Miss { .. } => self.stats.misses += 1,
                Verdict::Output(_) => {}
            }
        }
    }

    fn one(&mut self, now: u64, p: &mut PacketBuf) -> Verdict {
        let (key, lay) = parse(p.frame(), p.in_port.0);
        let len = p.len() as u64;
        if let Some(path) = self.emc.get(&key).copied() {
            self.stats.emc_hits += 1;
            let mut lay = lay;
            let mut key = key;
            for &(t, i) in &path.hops[..usize::from(path.n)] {
                let e = &mut self.tables[usize::from(t)][i as usize];
                e.stats.packets += 1;
                e.stats.bytes += len;
                e.last_used = now;
                let actions = std::mem::take(&mut e.spec.actions);
                let r = self.run(&actions, p, &mut key, &mut lay);
                self.tables[usize::from(t)][i as usize].spec.actions = actions;
                if let Some(v) = r {
                    return v;
                }
            }
            return Verdict::Drop;
        }
        let mut path = Path::default();
        let mut cacheable = true;
        let (mut key, mut lay) = (key, lay);
        let first_key = key;
        let mut t = 0usize;
        loop {
            let Some(i) = self.tables[t].iter().position(|e| e.spec.m.matches(&key)) else {
                return Verdict::Miss { table: t as u8 };
            };
            let e = &mut self.tables[t][i];
            e.stats.packets += 1;
            e.stats.bytes += len;
            e.last_used = now;
            let goto = match e.spec.actions.last() {
                Some(Action::Goto(g)) => Some(usize::from(*g)),
                _ => None,
            };
            if goto.is_some() && e.spec.actions.iter().any(Action::changes_key) {
                cacheable = false; // the next table matches on a rewritten packet
            }
            path.hops[usize::from(path.n)] = (t as u8, i as u32);
            path.n += 1;
            let actions = std::mem::take(&mut e.spec.actions);
            let r = self.run(&actions, p, &mut key, &mut lay);
            self.tables[t][i].spec.actions = actions;
            if let Some(v) = r {
                if cacheable {
                    if self.emc.len() >= EMC_CAP {
                        self.emc.clear();
                    }
                    self.emc.insert(first_key, path);
                }
                return v;
            }
            match goto {
                Some(g) => t = g,
                None => return Verdict::Drop, // no output action: dropped
            }
        }
    }

    /// Runs `actions`; returns the verdict once one is reached (None: go on / goto).
    fn run(
        &mut self,
        actions: &[Action],
        p: &mut PacketBuf,
        key: &mut FlowKey,
        lay: &mut Layout,
    ) -> Option<Verdict> {
        for a in actions {
            match *a {
                Action::Output(port) => return Some(Verdict::Output(port)),
                Action::Drop => return Some(Verdict::Drop),
                Action::Goto(_) => return None,
                Action::Group(g) => return Some(self.select(g, p, key, lay)),
                Action::EspEncap(spi) => {
                    let sa = self.outbound.get_mut(&spi)?;
                    if sa.encap(p, lay.l3, &mut *self.queue).is_err() {
                        return Some(Verdict::Drop);
                    }
                    (*key, *lay) = parse(p.frame(), key.in_port);
                }
                Action::EspDecap => {
                    let Some(sa) = self.inbound.get_mut(&key.spi).filter(|_| lay.l4 != 0) else {
                        return Some(Verdict::Drop);
                    };
                    if sa.decap(p, lay.l3, lay.l4, &mut *self.queue).is_err() {
                        return Some(Verdict::Drop);
                    }
                    (*key, *lay) = parse(p.frame(), key.in_port);
                }
                _ => {
                    if !rewrite(*a, p.frame_mut(), key, lay) {
                        return Some(Verdict::Drop);
                    }
                }
            }
        }
        None
    }

    fn select(
        &mut self,
        g: u32,
        p: &mut PacketBuf,
        key: &mut FlowKey,
        lay: &mut Layout,
    ) -> Verdict {
        let Some(buckets) = self.groups.get(&g) else {
            return Verdict::Drop;
        };
        let total: u64 = buckets.iter().map(|b| u64::from(b.weight)).sum();
        let mut pick = five_tuple_hash(key) % total;
        let bucket = buckets
            .iter()
            .find(|b| {
                let w = u64::from(b.weight);
                if pick < w {
                    true
                } else {
                    pick -= w;
                    false
                }
            })
            .expect("pick < total");
        for a in &bucket.actions {
            match *a {
                Action::Output(port) => return Verdict::Output(port),
                Action::Drop => return Verdict::Drop,
                other => {
                    if !rewrite(other, p.frame_mut(), key, lay) {
                        return Verdict::Drop;
                    }
                }
            }
        }
        Verdict::Drop
    }

    /// Removes flows past their timeouts, returning events for those that asked.
    pub fn expire(&mut self, now_ns: u64, out: &mut Vec<Expired>) {
        let mut removed = 0;
        for (t, present) in self.tables.iter_mut().zip(&mut self.present) {
            t.retain(|e| {
                let idle = e.spec.idle_timeout_ns != 0
                    && now_ns.saturating_sub(e.last_used) >= e.spec.idle_timeout_ns;
                let hard = e.spec.hard_timeout_ns != 0
                    && now_ns.saturating_sub(e.created) >= e.spec.hard_timeout_ns;
                if !(idle || hard) {
                    return true;
                }
                removed += 1;
                present.remove(&(e.spec.priority, e.spec.m));
                if e.spec.notify_expiry {
                    out.push(Expired {
                        cookie: e.spec.cookie,
                        reason: if hard {
                            ExpiryReason::Hard
                        } else {
                            ExpiryReason::Idle
                        },
                        stats: e.stats,
                    });
                }
                false
            });
        }
        if removed > 0 {
            self.ledger.flows -= removed;
            self.invalidate();
        }
    }
}

/// FNV-1a over the 5-tuple with a final avalanche (FNV's low bits alone are poorly mixed),
/// stable across runs, so a flow always picks the same bucket.
fn five_tuple_hash(k: &FlowKey) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: &[u8]| {
        for &x in b {
            h ^= u64::from(x);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(&k.src);
    eat(&k.dst);
    eat(&[k.proto]);
    eat(&k.sport.to_be_bytes());
    eat(&k.dport.to_be_bytes());
    // splitmix64 finaliser
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Applies a rewrite to the frame (and the key); false if the packet lacks the field.
fn rewrite(a: Action, f: &mut [u8], key: &mut FlowKey, lay: &Layout) -> bool {
    match a {
        Action::SetEthDst(m) if f.len() >= 14 => f[0..6].copy_from_slice(&m),
        Action::SetEthSrc(m) if f.len() >= 14 => f[6..12].copy_from_slice(&m),
        Action::SetIpv4Src(ip) | Action::SetIpv4Dst(ip) if key.ip_ver == 4 => {
            let at = lay.l3
                + if matches!(a, Action::SetIpv4Src(_)) {
                    12
                } else {
                    16
                };
            let old: [u8; 4] = f[at..at + 4].try_into().expect("4 bytes");
            let new = ip.octets();
            let c = u16::from_be_bytes([f[lay.l3 + 10], f[lay.l3 + 11]]);
            f[lay.l3 + 10..lay.l3 + 12]
                .copy_from_slice(&checksum::update32(c, old, new).to_be_bytes());
            fix_l4(f, key, lay, |c| checksum::update32(c, old, new));
            f[at..at + 4].copy_from_slice(&new);
            let k = if matches!(a, Action::SetIpv4Src(_)) {
                &mut key.src
            } else {
                &mut key.dst
            };
            k[..4].copy_from_slice(&new);
        }
        Action::SetL4Src(port) | Action::SetL4Dst(port)
            if lay.l4 != 0 && matches!(key.proto, IPPROTO_TCP | IPPROTO_UDP) =>
        {
            let src = matches!(a, Action::SetL4Src(_));
            let at = lay.l4 + if src { 0 } else { 2 };
            let old = u16::from_be_bytes([f[at], f[at + 1]]);
            fix_l4(f, key, lay, |c| checksum::update16(c, old, port));
            f[at..at + 2].copy_from_slice(&port.to_be_bytes());
            if src {
                key.sport = port;
            } else {
                key.dport = port;
            }
        }
        _ => return false,
    }
    true
}

/// Updates the TCP/UDP checksum with `upd` (UDP checksum 0 means "none" and stays 0).
fn fix_l4(f: &mut [u8], key: &FlowKey, lay: &Layout, upd: impl Fn(u16) -> u16) {
    if lay.l4 == 0 {
        return;
    }
    let at = match key.proto {
        IPPROTO_TCP if f.len() >= lay.l4 + 18 => lay.l4 + 16,
        IPPROTO_UDP if f.len() >= lay.l4 + 8 => lay.l4 + 6,
        _ => return,
    };
    let c = u16::from_be_bytes([f[at], f[at + 1]]);
    if key.proto == IPPROTO_UDP && c == 0 {
        return;
    }
    let mut n = upd(c);
    if key.proto == IPPROTO_UDP && n == 0 {
        n = 0xffff;
    }
    f[at..at + 2].copy_from_slice(&n.to_be_bytes());
}
