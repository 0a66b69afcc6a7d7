//! The software flow processor of the inline fast path: OpenFlow-like tables with priorities
//! and goto, predefined actions (output, drop, NAT rewrites with incremental checksums, ESP
//! tunnel encap/decap with AES-GCM on the crypto driver, weighted group select), per-flow
//! counters, idle/hard timeouts, and an exact-match cache in front of the wildcard tables.
//!
//! One instance ([`SwInstance`]) serves a vNF; its data path runs on one or more lanes
//! ([`SwLane`], one per worker thread: a virtio-net queue pair each). The lanes share the
//! tables, groups and SAs ([`lanes::LaneLock`]: read without writing a shared line, changed by
//! control requests between batches) and keep their own exact-match cache, crypto queue and
//! counters (per flow and per instance, summed when read). [`SwFlowProcessor`] is an instance
//! with its one lane, for single-threaded users.
//!
//! This is the typed core; the control protocol (`dpacc_spec::fastpath::proto`) and the
//! vhost-user-net device are built on it.

pub mod checksum;
mod classifier;
pub mod esp;
mod instance;
pub mod key;
mod lanes;
mod order;
mod policy;
mod quota;
mod slot_chunks;
mod slot_hash;
mod table;
mod timers;

pub use instance::SwFastPath;
pub use quota::QuotaKind;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use dpacc_spec::fastpath::{PacketBuf, Quotas, Usage, Verdict};
use dpacc_spec::{CryptoDriver, CryptoError, CryptoQueue};

use esp::{Deferred, Sa, SaConfig, SaDir, SaStats};
use key::{parse, FlowKey, Layout, IPPROTO_TCP, IPPROTO_UDP};
use lanes::{LaneLock, LaneToken};
use quota::Ledger;
use table::{Counters, Tables};

pub use dpacc_spec::fastpath::flow::{
    Action, Bucket, Expired, ExpiryReason, FlowSpec, FlowStats, Match,
};

/// Number of tables per instance.
pub const TABLES: usize = 8;
/// Exact-match cache entries before it is flushed.
const EMC_CAP: usize = 8192;
/// Longest goto chain.
const MAX_HOPS: usize = TABLES;
/// Most lanes an instance may have.
pub const MAX_LANES: usize = 64;

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

/// Instance-wide counters (summed over the lanes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InstanceStats {
    /// Packets that missed every table.
    pub misses: u64,
    /// Packets dropped (drop action, ESP failures, bad rewrites).
    pub drops: u64,
    /// Exact-match cache hits.
    pub emc_hits: u64,
    /// Of `drops`, those the operator's policy dropped.
    pub policy_drops: u64,
}

/// One lane's instance counters, written by that lane only (a load and a store).
#[repr(align(64))]
#[derive(Debug, Default)]
struct LaneStats {
    misses: AtomicU64,
    drops: AtomicU64,
    emc_hits: AtomicU64,
    policy_drops: AtomicU64,
}

fn add(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed) + n, Ordering::Relaxed);
}

#[derive(Clone, Copy, Default)]
struct Path {
    n: u8,
    /// (table, slot) of each flow on the way.
    hops: [(u8, u32); MAX_HOPS],
}

impl Path {
    fn hops(&self) -> &[(u8, u32)] {
        &self.hops[..usize::from(self.n)]
    }
}

/// The counter hits of consecutive packets that took one cached path, added to its flows'
/// counters once per burst (packets come in bursts of one flow) instead of once per packet.
/// Flushed before the batch ends, inside its read section (the slots cannot change).
#[derive(Default)]
struct Burst {
    path: Path,
    packets: u64,
    bytes: u64,
}

impl Burst {
    /// Counts a packet of `len` bytes that went through `path`.
    #[inline]
    fn add(&mut self, path: &Path, len: u64, counters: &Counters, now: u64) {
        if self.packets > 0 && self.path.hops() == path.hops() {
            self.packets += 1;
            self.bytes += len;
            return;
        }
        self.flush(counters, now);
        self.path = *path;
        self.packets = 1;
        self.bytes = len;
    }

    /// Adds what it holds to the counters (all at `now`, the batch's time).
    fn flush(&mut self, counters: &Counters, now: u64) {
        if self.packets > 0 {
            for &(_, slot) in self.path.hops() {
                counters[slot as usize].hit(self.packets, self.bytes, now);
            }
            self.packets = 0;
            self.bytes = 0;
        }
    }
}

/// SAs by SPI.
type SaMap = HashMap<u32, Sa, ahash::RandomState>;

/// What the lanes share: changed only through [`LaneLock::write`].
struct Core {
    t: Tables,
    groups: HashMap<u32, Vec<Bucket>>,
    /// SAs by SPI, looked up twice per ESP packet (ahash: SipHash cost ~4 % of a frame).
    outbound: SaMap,
    inbound: SaMap,
    /// Bumped whenever flows, groups or SAs change: lanes then drop their cached paths.
    generation: u64,
    /// The quotas, and the groups, buckets and SAs held against them (flows are counted by
    /// the tables).
    ledger: Ledger,
    /// The operator's policy (never the vNF's: its control protocol cannot reach it).
    policy: Option<Arc<policy::Compiled>>,
}

/// A vNF's flow-processor instance, shared by its lanes and its control.
pub struct SwInstance {
    core: LaneLock<Core>,
    stats: Box<[LaneStats]>,
    crypto: Arc<dyn CryptoDriver>,
    /// Control requests that run packets through the tables (PACKET_OUT) use this lane
    /// state, with lane 0's counters, while they hold the write side.
    control: Mutex<LaneState>,
    /// The policy in force, for reading its counters without the lanes' lock.
    operator: Mutex<Option<Arc<policy::Compiled>>>,
    /// Uplinks of the instance: valid output ports are 0..=uplinks (checked for control
    /// requests; the typed API trusts its caller).
    pub uplinks: u16,
}

/// What one lane keeps to itself.
struct LaneState {
    /// Keyed per lane (ahash with random keys): fast, and not steerable by crafted traffic
    /// the way a fixed hash would be.
    emc: HashMap<FlowKey, Path, ahash::RandomState>,
    /// The last key looked up and its path (an exact-match cache of one, in front of `emc`).
    last: Option<(FlowKey, Path)>,
    /// The [`Core::generation`] the caches were filled under.
    generation: u64,
    queue: Box<dyn CryptoQueue>,
}

impl LaneState {
    fn new(crypto: &dyn CryptoDriver) -> Result<Self, CryptoError> {
        Ok(Self {
            emc: HashMap::with_capacity_and_hasher(EMC_CAP, ahash::RandomState::new()),
            last: None,
            generation: 0,
            queue: crypto.open_queue(1)?,
        })
    }
}

/// One lane of an instance: its data path on one worker thread.
pub struct SwLane {
    inst: Arc<SwInstance>,
    token: Option<LaneToken>,
    st: LaneState,
    /// The device finishes pending packets ([`SwLane::enable_finish`]).
    defer: bool,
    /// Inside the read section (from `process` until every pending packet is finished).
    inside: bool,
    /// What each pending packet of the batch still needs, by index.
    pending: Vec<Option<Deferred>>,
}

impl Drop for SwLane {
    fn drop(&mut self) {
        self.leave();
        if let Some(t) = self.token.take() {
            self.inst.core.release(t);
        }
    }
}

impl SwLane {
    /// The lane's index.
    pub fn index(&self) -> usize {
        self.token.as_ref().map_or(0, LaneToken::index)
    }

    fn leave(&mut self) {
        if std::mem::take(&mut self.inside) {
            if let Some(t) = &self.token {
                self.inst.core.leave(t);
            }
        }
    }

    /// Processes a batch in place: `verdicts[i]` for `pkts[i]`. With
    /// [`enable_finish`](Self::enable_finish), ESP packets followed by an output leave
    /// pending (headers done, AEAD deferred to where the frame lands), and the lane stays in
    /// its read section until [`end_batch`](Self::end_batch) (or the next batch), so that
    /// the SAs finishing them cannot change meanwhile.
    pub fn process(&mut self, now_ns: u64, pkts: &mut [PacketBuf], verdicts: &mut [Verdict]) {
        self.leave();
        clear_pending(&mut self.pending);
        let Some(token) = &self.token else {
            return;
        };
        self.inst.core.enter(token);
        self.inside = true;
        // SAFETY: inside the read section just entered; `core` is not used after `leave`.
        let core = unsafe { self.inst.core.get(token) };
        let lane = token.index();
        // Egress rules judge an output's final headers: nothing is left pending then.
        let pending = if self.defer && !core.policy.as_ref().is_some_and(|p| p.polices_egress()) {
            // Every slot is None between batches (`end_batch`, `finish`, the scan at the
            // start), so the batch writes only the slots of packets it leaves pending.
            if self.pending.len() < pkts.len() {
                self.pending.resize(pkts.len(), None);
            }
            Some(&mut self.pending[..pkts.len()])
        } else {
            None
        };
        run_batch(
            core,
            &mut self.st,
            &self.inst.stats[lane],
            lane,
            now_ns,
            pkts,
            verdicts,
            pending,
        );
        if !self.pending.iter().any(Option::is_some) {
            self.leave();
        }
    }

    /// Lets `process` leave ESP packets pending (see [`process`](Self::process)).
    pub fn enable_finish(&mut self) -> bool {
        self.defer = true;
        true
    }

    /// The SA and work of pending packet `index`, inside the read section. The work is
    /// read where `process` left it, not moved: a copy through the stack right after the
    /// previous frame's AEAD made a load wait for the store buffer (its RX-buffer stores) to
    /// drain. The caller clears the slot ([`done`](Self::done)).
    fn pending_sa(&mut self, index: usize) -> Option<(&Sa, &Deferred, usize, &mut LaneState)> {
        if !self.inside {
            return None;
        }
        let d = self.pending.get(index)?.as_ref()?;
        let token = self.token.as_ref()?;
        // SAFETY: a slot is set only by `process` inside the read section it entered (every
        // slot is cleared before it enters: `clear_pending`), and `inside` says the lane is
        // still in that section: the SA `d` came from is in the core's maps, which change
        // only under the writer lock (no lane inside), at the address it had then.
        let sa = unsafe { d.sa() };
        Some((sa, d, token.index(), &mut self.st))
    }

    /// Pending packet `index` is finished (or dropped): its slot is cleared.
    fn done<T>(&mut self, index: usize, r: T) -> T {
        if let Some(slot) = self.pending.get_mut(index) {
            *slot = None;
        }
        r
    }

    /// Runs the deferred AEAD of pending packet `index` over its frame where it landed.
    pub fn finish(&mut self, index: usize, frame: &[dpacc_spec::Seg<'_>]) -> Option<usize> {
        let r = self
            .pending_sa(index)
            .and_then(|(sa, d, lane, st)| sa.finish(d, frame, &mut *st.queue, lane));
        self.done(index, r)
    }

    /// Writes pending packet `index` (`pkt`) where its frame lands (`frame`, nothing of it
    /// there yet) and runs its deferred AEAD on the way: from the packet and its source
    /// buffer straight into `frame` where it can, else after copying the frame there.
    pub fn finish_into(
        &mut self,
        index: usize,
        pkt: &PacketBuf,
        frame: &[dpacc_spec::Seg<'_>],
    ) -> Option<usize> {
        let r = self
            .pending_sa(index)
            .and_then(|(sa, d, lane, st)| sa.finish_into(d, pkt, frame, &mut *st.queue, lane));
        self.done(index, r)
    }

    /// Runs the deferred AEAD of pending packet `index` in its own buffer.
    pub fn finish_here(&mut self, index: usize, pkt: &mut PacketBuf) -> bool {
        let r = match self.pending_sa(index) {
            Some((sa, d, lane, st)) => sa.finish_here(d, pkt, &mut *st.queue, lane),
            None => false,
        };
        self.done(index, r)
    }

    /// Ends the batch: pending packets not finished are dropped.
    pub fn end_batch(&mut self) {
        clear_pending(&mut self.pending);
        self.leave();
    }
}

/// Drops what pending packets not finished still needed (reads every slot, writes only the
/// ones set).
#[inline]
fn clear_pending(pending: &mut [Option<Deferred>]) {
    for d in pending.iter_mut().filter(|d| d.is_some()) {
        *d = None;
    }
}

#[allow(clippy::too_many_arguments)]
fn run_batch(
    core: &Core,
    st: &mut LaneState,
    stats: &LaneStats,
    lane: usize,
    now: u64,
    pkts: &mut [PacketBuf],
    verdicts: &mut [Verdict],
    mut pending: Option<&mut [Option<Deferred>]>,
) {
    if st.generation != core.generation {
        st.emc.clear();
        st.last = None;
        st.generation = core.generation;
    }
    let (mut drops, mut misses, mut hits, mut denied) = (0, 0, 0, 0);
    let mut burst = Burst::default();
    for (i, (p, v)) in pkts.iter_mut().zip(verdicts.iter_mut()).enumerate() {
        let defer = pending.as_deref_mut().and_then(|d| d.get_mut(i));
        let mut kl = parse(p.frame(), p.in_port.0);
        let (verdict, hit) = match &core.policy {
            None => one(core, st, &mut burst, lane, now, p, defer, &mut kl),
            Some(pol) => {
                let (v, hit, d) = pol.police(p, &mut kl, now, lane, |p, kl| {
                    one(core, st, &mut burst, lane, now, p, defer, kl)
                });
                denied += u64::from(d);
                (v, hit)
            }
        };
        *v = verdict;
        hits += u64::from(hit);
        match verdict {
            Verdict::Drop => drops += 1,
            Verdict::Miss { .. } => misses += 1,
            Verdict::Output(_) => {}
        }
    }
    burst.flush(&core.t.lanes[lane].flows, now);
    add(&stats.emc_hits, hits);
    if drops + misses > 0 {
        add(&stats.drops, drops);
        add(&stats.misses, misses);
        if denied > 0 {
            add(&stats.policy_drops, denied);
        }
    }
}

/// One packet, whose parsed key and layout are `kl`: (verdict, whether the exact-match cache
/// answered). With `defer`, an ESP action followed by an output leaves the packet pending and
/// its work in `defer`. When the actions reach a verdict, `kl` holds the packet's key after
/// them (what the operator's egress rules judge; not updated by deferred ESP; after a drop
/// its contents are unspecified). Cache hits are counted in `burst`.
///
/// Packets come in bursts of one flow, so the previous packet's path comes first (a key
/// compare): that case is inlined into the batch loop with [`parse`], so the key is compared
/// from registers. Returned through memory, `parse`'s narrow field stores could not be
/// forwarded to the wider loads that read the key back here, and every packet waited for them
/// to reach the cache. The rest (the exact-match cache, the tables) is [`one_slow`].
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn one(
    core: &Core,
    st: &mut LaneState,
    burst: &mut Burst,
    lane: usize,
    now: u64,
    p: &mut PacketBuf,
    defer: Option<&mut Option<Deferred>>,
    kl: &mut (FlowKey, Layout),
) -> (Verdict, bool) {
    match &st.last {
        Some((k, path)) if *k == kl.0 => {
            let path = *path;
            run_path(core, &mut *st.queue, burst, lane, now, p, defer, kl, path)
        }
        _ => one_slow(core, st, burst, lane, now, p, defer, kl),
    }
}

/// Runs the actions of the flows on a cached `path` (see [`one`]).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn run_path(
    core: &Core,
    queue: &mut dyn CryptoQueue,
    burst: &mut Burst,
    lane: usize,
    now: u64,
    p: &mut PacketBuf,
    defer: Option<&mut Option<Deferred>>,
    kl: &mut (FlowKey, Layout),
    path: Path,
) -> (Verdict, bool) {
    // The actions rewrite `kl` in place: copied out, its fields (written by `parse` with
    // narrow stores a few instructions before) were read back with 16-byte loads, which
    // cannot be forwarded from them and waited for the store buffer to drain (issue 12,
    // pass o: 4 % of the worker at 64 B).
    let (key, lay) = (&mut kl.0, &mut kl.1);
    let len = p.len() as u64;
    let counters = &core.t.lanes[lane].flows;
    let mut x = Exec {
        core,
        queue,
        lane,
        defer,
    };
    for (k, &(_, slot)) in path.hops().iter().enumerate() {
        let e = core.t.entry(slot);
        let actions = core.t.acts.get(&e.actions);
        if let Some(v) = x.run(actions, p, key, lay) {
            // Counted: the flows on the way, up to this one.
            let mut walked = path;
            walked.n = k as u8 + 1;
            burst.add(&walked, len, counters, now);
            return (v, true);
        }
    }
    burst.add(&path, len, counters, now);
    (Verdict::Drop, true)
}

/// [`one`] when the packet is not of the previous packet's flow: the exact-match cache (a hash
/// and a probe), then the tables.
#[allow(clippy::too_many_arguments)]
#[inline(never)]
fn one_slow(
    core: &Core,
    st: &mut LaneState,
    burst: &mut Burst,
    lane: usize,
    now: u64,
    p: &mut PacketBuf,
    defer: Option<&mut Option<Deferred>>,
    kl: &mut (FlowKey, Layout),
) -> (Verdict, bool) {
    let (key, lay) = *kl;
    if let Some(path) = st.emc.get(&key).copied() {
        st.last = Some((key, path));
        return run_path(core, &mut *st.queue, burst, lane, now, p, defer, kl, path);
    }
    let len = p.len() as u64;
    let counters = &core.t.lanes[lane].flows;
    let mut x = Exec {
        core,
        queue: &mut *st.queue,
        lane,
        defer,
    };
    let mut path = Path::default();
    let mut cacheable = true;
    let (mut key, mut lay) = (key, lay);
    let first_key = key;
    let mut t = 0usize;
    loop {
        let Some((slot, e)) = core.t.lookup(t, &key) else {
            return (Verdict::Miss { table: t as u8 }, false);
        };
        counters[slot as usize].hit(1, len, now);
        let actions = core.t.acts.get(&e.actions);
        let goto = match actions.last() {
            Some(Action::Goto(g)) => Some(usize::from(*g)),
            _ => None,
        };
        if goto.is_some() && actions.iter().any(Action::changes_key) {
            cacheable = false; // the next table matches on a rewritten packet
        }
        path.hops[usize::from(path.n)] = (t as u8, slot);
        path.n += 1;
        if let Some(v) = x.run(actions, p, &mut key, &mut lay) {
            if cacheable {
                if st.emc.len() >= EMC_CAP {
                    st.emc.clear();
                }
                st.emc.insert(first_key, path);
                st.last = Some((first_key, path));
            }
            *kl = (key, lay);
            return (v, false);
        }
        match goto {
            Some(g) => t = g,
            None => return (Verdict::Drop, false), // no output action: dropped
        }
    }
}

impl SwInstance {
    /// An empty instance holding at most `max_flows` flows (the other quotas at their
    /// defaults), doing ESP on `crypto`, whose data path runs on `lanes` lanes
    /// (1..=[`MAX_LANES`]; claimed with [`lane`](Self::lane)).
    pub fn new(
        crypto: Arc<dyn CryptoDriver>,
        max_flows: usize,
        lanes: usize,
    ) -> Result<Arc<Self>, CryptoError> {
        let quotas = Quotas {
            flows: max_flows,
            ..Quotas::default()
        };
        Self::with_quotas(crypto, quotas, lanes)
    }

    /// An empty instance with these quotas, doing ESP on `crypto`, on `lanes` lanes.
    pub fn with_quotas(
        crypto: Arc<dyn CryptoDriver>,
        quotas: Quotas,
        lanes: usize,
    ) -> Result<Arc<Self>, CryptoError> {
        let lanes = lanes.clamp(1, MAX_LANES);
        let control = Mutex::new(LaneState::new(&*crypto)?);
        Ok(Arc::new(Self {
            core: LaneLock::new(
                Core {
                    t: Tables::new(TABLES, lanes),
                    groups: HashMap::new(),
                    outbound: SaMap::default(),
                    inbound: SaMap::default(),
                    generation: 0,
                    ledger: Ledger::new(quotas, lanes),
                    policy: None,
                },
                lanes,
            ),
            stats: (0..lanes).map(|_| LaneStats::default()).collect(),
            crypto,
            control,
            operator: Mutex::new(None),
            uplinks: u16::MAX,
        }))
    }

    /// Sets the number of uplinks (valid output ports 0..=uplinks for control requests).
    /// Only before the instance is shared.
    pub fn set_uplinks(self: &mut Arc<Self>, uplinks: u16) {
        if let Some(i) = Arc::get_mut(self) {
            i.uplinks = uplinks;
        }
    }

    /// Number of lanes.
    pub fn lanes(&self) -> usize {
        self.core.lanes()
    }

    /// Lane `i`, once (None if out of range or already taken; a dropped lane may be taken
    /// again).
    pub fn lane(self: &Arc<Self>, i: usize) -> Result<Option<SwLane>, CryptoError> {
        let Some(token) = self.core.claim(i) else {
            return Ok(None);
        };
        let st = match LaneState::new(&*self.crypto) {
            Ok(s) => s,
            Err(e) => {
                self.core.release(token);
                return Err(e);
            }
        };
        Ok(Some(SwLane {
            inst: self.clone(),
            token: Some(token),
            st,
            defer: false,
            inside: false,
            pending: Vec::new(),
        }))
    }

    /// Instance counters, summed over the lanes.
    pub fn stats(&self) -> InstanceStats {
        let r = Ordering::Relaxed;
        let mut s = InstanceStats::default();
        for l in &*self.stats {
            s.misses += l.misses.load(r);
            s.drops += l.drops.load(r);
            s.emc_hits += l.emc_hits.load(r);
            s.policy_drops += l.policy_drops.load(r);
        }
        s
    }

    /// Installs a flow (replacing one with the same table, priority and match).
    pub fn add_flow(&self, spec: FlowSpec, now_ns: u64) -> Result<(), FlowError> {
        let t = usize::from(spec.table);
        let mut core = self.core.write();
        core.ledger.check_actions(&spec.actions)?;
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
                Action::Group(g) if !core.groups.contains_key(&g) => {
                    return Err(FlowError::NotFound(format!("group {g}")))
                }
                Action::EspEncap(spi) if !core.outbound.contains_key(&spi) => {
                    return Err(FlowError::NotFound(format!("outbound SA {spi:#x}")))
                }
                _ => {}
            }
        }
        let max = core.ledger.quotas.flows;
        if !core.t.insert(t, &spec, now_ns, max) {
            return Err(FlowError::Quota(QuotaKind::Flows, max));
        }
        core.generation += 1;
        Ok(())
    }

    /// Removes every flow with `cookie`; returns their final counters.
    pub fn delete_flows(&self, cookie: u64) -> Vec<FlowStats> {
        let mut out = Vec::new();
        let mut core = self.core.write();
        let n = core
            .t
            .remove_if(|e, _| e.cookie == cookie, |_, s| out.push(s));
        if n > 0 {
            core.generation += 1;
        }
        out
    }

    /// Counters of the flows with `cookie` (summed over flows and lanes), if any.
    pub fn flow_stats(&self, cookie: u64) -> Option<FlowStats> {
        let core = self.core.write();
        let mut found = None;
        for t in 0..TABLES {
            for (slot, _) in core.t.table(t).filter(|(_, e)| e.cookie == cookie) {
                let s = found.get_or_insert(FlowStats::default());
                let (c, _) = core.t.counters(slot);
                s.packets += c.packets;
                s.bytes += c.bytes;
            }
        }
        found
    }

    /// Up to `max` flows from index `start` (tables in order, then priority order).
    pub fn list(&self, start: usize, max: usize) -> Vec<dpacc_spec::fastpath::flow::FlowSummary> {
        let core = self.core.write();
        (0..TABLES)
            .flat_map(|t| core.t.table(t).map(move |(s, e)| (t, s, e)))
            .skip(start)
            .take(max)
            .map(|(t, s, e)| dpacc_spec::fastpath::flow::FlowSummary {
                cookie: e.cookie,
                table: t as u8,
                priority: e.priority,
                stats: core.t.counters(s).0,
            })
            .collect()
    }

    /// The flow quota.
    pub fn max_flows(&self) -> usize {
        self.quotas().flows
    }

    /// The quotas.
    pub fn quotas(&self) -> Quotas {
        self.core.write().ledger.quotas
    }

    /// Installed flows.
    pub fn flow_count(&self) -> usize {
        self.core.write().t.flows()
    }

    /// What the instance holds against its quotas, and its memory.
    pub fn usage(&self) -> Usage {
        let core = self.core.write();
        core.ledger.usage(&core.t)
    }

    /// Removes every flow, group and SA (their crypto sessions close) and frees their memory,
    /// once no lane is inside a batch; lanes find the instance empty from their next batch.
    /// The instance counters stay.
    pub fn clear(&self) {
        let mut core = self.core.write();
        let quotas = core.ledger.quotas;
        let lanes = self.lanes();
        core.t = Tables::new(TABLES, lanes);
        core.groups = HashMap::new();
        core.outbound = SaMap::default();
        core.inbound = SaMap::default();
        core.ledger = Ledger::new(quotas, lanes);
        core.generation += 1;
    }

    /// Installs (or replaces) a select group.
    pub fn add_group(&self, id: u32, buckets: Vec<Bucket>) -> Result<(), FlowError> {
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
        let mut core = self.core.write();
        let old = core.groups.get(&id).map(Vec::len);
        core.ledger.check_group(&buckets, old)?;
        core.ledger.group_added(buckets.len(), old);
        core.groups.insert(id, buckets);
        core.generation += 1;
        Ok(())
    }

    /// Installs an ESP SA (creating its AEAD session on the crypto driver).
    pub fn add_sa(&self, cfg: SaConfig) -> Result<(), FlowError> {
        let spi = cfg.spi;
        let outbound = matches!(cfg.dir, SaDir::Outbound { .. });
        let replaces = |core: &Core| {
            if outbound {
                core.outbound.contains_key(&spi)
            } else {
                core.inbound.contains_key(&spi)
            }
        };
        // Checked before the session is made (a refused SA costs the driver nothing), and
        // again under the same lock as the insert (a concurrent SA_ADD may have taken the
        // last place meanwhile).
        {
            let core = self.core.write();
            core.ledger.check_sa(replaces(&core))?;
        }
        let sa = Sa::in_instance(cfg, &*self.crypto, self.lanes())?;
        let mut core = self.core.write();
        core.ledger.check_sa(replaces(&core))?;
        let old = if outbound {
            core.outbound.insert(spi, sa)
        } else {
            core.inbound.insert(spi, sa)
        };
        if old.is_none() {
            core.ledger.sas += 1;
        }
        core.generation += 1;
        Ok(())
    }

    /// The counters of the SA with `spi` (outbound first), summed over the lanes.
    pub fn sa_stats(&self, spi: u32) -> Option<SaStats> {
        let core = self.core.write();
        core.outbound
            .get(&spi)
            .or_else(|| core.inbound.get(&spi))
            .map(Sa::stats)
    }

    /// Runs a batch through the tables outside any lane (PACKET_OUT through the tables),
    /// counted on lane 0.
    pub fn process_control(&self, now_ns: u64, pkts: &mut [PacketBuf], verdicts: &mut [Verdict]) {
        let mut st = self.control.lock().unwrap_or_else(|e| e.into_inner());
        let core = self.core.write();
        run_batch(
            &core,
            &mut st,
            &self.stats[0],
            0,
            now_ns,
            pkts,
            verdicts,
            None,
        );
    }

    /// Removes flows past their timeouts (idle: on no lane for the idle timeout), returning
    /// events for those that asked. Looks only at the flows whose time may have come (a
    /// timer wheel), not at every flow.
    pub fn expire(&self, now_ns: u64, out: &mut Vec<Expired>) {
        let mut core = self.core.write();
        if core.t.timed() == 0 {
            return; // no flow has a timeout
        }
        let removed = core.t.expire(now_ns, |e, hard, stats| {
            if e.notify_expiry {
                out.push(Expired {
                    cookie: e.cookie,
                    reason: if hard {
                        ExpiryReason::Hard
                    } else {
                        ExpiryReason::Idle
                    },
                    stats,
                });
            }
        });
        if removed > 0 {
            core.generation += 1;
        }
    }
}

/// An instance with its one lane: the flow processor for single-threaded users (tests,
/// benches, PACKET_OUT), with the instance's typed API (through `Deref`) and `process`.
pub struct SwFlowProcessor {
    lane: SwLane,
}

impl SwFlowProcessor {
    /// An empty one-lane instance holding at most `max_flows` flows (the other quotas at
    /// their defaults), doing ESP on `crypto`.
    pub fn new(crypto: Arc<dyn CryptoDriver>, max_flows: usize) -> Result<Self, CryptoError> {
        let quotas = Quotas {
            flows: max_flows,
            ..Quotas::default()
        };
        Self::with_quotas(crypto, quotas)
    }

    /// An empty one-lane instance with these quotas, doing ESP on `crypto`.
    pub fn with_quotas(crypto: Arc<dyn CryptoDriver>, quotas: Quotas) -> Result<Self, CryptoError> {
        let inst = SwInstance::with_quotas(crypto, quotas, 1)?;
        let lane = inst
            .lane(0)?
            .ok_or(CryptoError::Internal("lane 0 of a new instance"))?;
        Ok(Self { lane })
    }

    /// Processes a batch in place: `verdicts[i]` for `pkts[i]`.
    pub fn process(&mut self, now_ns: u64, pkts: &mut [PacketBuf], verdicts: &mut [Verdict]) {
        self.lane.process(now_ns, pkts, verdicts);
    }
}

impl std::ops::Deref for SwFlowProcessor {
    type Target = SwInstance;
    fn deref(&self) -> &SwInstance {
        &self.lane.inst
    }
}

/// Running actions over the shared state, on one lane.
struct Exec<'a> {
    core: &'a Core,
    queue: &'a mut dyn CryptoQueue,
    lane: usize,
    /// Where a deferred ESP packet's work goes (None: ESP runs here, on a whole frame).
    defer: Option<&'a mut Option<Deferred>>,
}

impl Exec<'_> {
    /// Runs `actions`; returns the verdict once one is reached (None: go on / goto).
    fn run(
        &mut self,
        actions: &[Action],
        p: &mut PacketBuf,
        key: &mut FlowKey,
        lay: &mut Layout,
    ) -> Option<Verdict> {
        for (k, a) in actions.iter().enumerate() {
            // ESP right before an output can leave its AEAD to where the frame lands.
            let last = matches!(actions.get(k + 1), Some(Action::Output(_)));
            match *a {
                Action::Output(port) => return Some(Verdict::Output(port)),
                Action::Drop => return Some(Verdict::Drop),
                Action::Goto(_) => return None,
                Action::Group(g) => return Some(self.select(g, p, key, lay)),
                Action::EspEncap(spi) => {
                    let sa = self.core.outbound.get(&spi)?;
                    if let (true, Some(slot)) = (last, self.defer.as_deref_mut()) {
                        if sa.encap_deferred_into(p, lay.l3, self.lane, slot).is_err() {
                            return Some(Verdict::Drop);
                        }
                        continue;
                    }
                    if sa.encap(p, lay.l3, self.queue, self.lane).is_err() {
                        return Some(Verdict::Drop);
                    }
                    (*key, *lay) = parse(p.frame(), key.in_port);
                }
                Action::EspDecap => {
                    let Some(sa) = self.core.inbound.get(&key.spi).filter(|_| lay.l4 != 0) else {
                        return Some(Verdict::Drop);
                    };
                    if let (true, Some(slot)) = (last, self.defer.as_deref_mut()) {
                        if sa
                            .decap_deferred_into(p, lay.l3, lay.l4, self.lane, slot)
                            .is_err()
                        {
                            return Some(Verdict::Drop);
                        }
                        continue;
                    }
                    if sa.decap(p, lay.l3, lay.l4, self.queue, self.lane).is_err() {
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
        let Some(buckets) = self.core.groups.get(&g) else {
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
