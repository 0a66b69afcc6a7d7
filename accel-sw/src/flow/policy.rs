//! The operator's policy in the data path (spec: `dpacc_spec::fastpath::policy`,
//! spec/fastpath.md "Operator policy").
//!
//! A [`Compiled`] policy lives in the instance's shared state ([`super::Core`]), so it is
//! swapped whole under the lanes' big-reader lock: a lane reads the pointer once per batch,
//! inside its read section, and a new rule set replaces the old one between batches. With no
//! policy the per-packet cost is one pointer check. Ingress rules run before the tables and
//! their caches; egress rules run on the final output (after every rewrite), so no flow the
//! vNF installs, cached or not, can bypass them.
//!
//! Counters are per lane (written by that lane only, read summed). Rate limits use one
//! token bucket per rule shared by all lanes: a GCRA ("virtual scheduling") with a single
//! atomic theoretical arrival time, advanced by compare-and-swap, so the limit holds for the
//! vNF as a whole whatever the number of lanes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dpacc_spec::fastpath::flow::{FlowKey, Match};
use dpacc_spec::fastpath::policy::{
    ListCounters, Policy, PolicyAction, PolicyCounters, PolicyError, RateUnit, RuleCounters,
    RuleList,
};
use dpacc_spec::fastpath::{PacketBuf, PortId, Verdict};

use super::key::{parse, Layout};

/// Time unit of the token buckets: 1/16 ns (a byte at 128 Gbit/s still costs 1 unit; u64
/// lasts 36 years of uptime).
const UNITS_PER_NS: u64 = 16;
const UNITS_PER_SEC: u128 = 16_000_000_000;

/// One lane's counters of one rule, on a cache line of its own.
#[repr(align(64))]
#[derive(Debug, Default)]
struct LaneCounters {
    packets: AtomicU64,
    bytes: AtomicU64,
    denies: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    // One writer per lane: a load and a store, no read-modify-write.
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

/// A shared token bucket (GCRA).
#[derive(Debug)]
struct Bucket {
    /// Theoretical arrival time, in 1/16 ns since the instance's epoch.
    tat: AtomicU64,
    rate: u64,
    unit: RateUnit,
    /// How far ahead of now the arrival time may run (the burst), in 1/16 ns.
    tau: u64,
}

impl Bucket {
    fn new(rate: u64, unit: RateUnit, burst: u64) -> Self {
        let rate = rate.max(1);
        let burst = if burst == 0 {
            (rate / 20).max(1)
        } else {
            burst
        };
        let tau = (u128::from(burst) * UNITS_PER_SEC / u128::from(rate)).min(u128::from(u64::MAX));
        Self {
            tat: AtomicU64::new(0),
            rate,
            unit,
            tau: tau as u64,
        }
    }

    /// Whether a frame of `len` bytes arriving at `now_ns` is within the rate (and takes its
    /// credit if so).
    fn admit(&self, len: u64, now_ns: u64) -> bool {
        let n = match self.unit {
            RateUnit::Packets => 1,
            RateUnit::Bytes => len,
        };
        let inc = (u128::from(n) * UNITS_PER_SEC / u128::from(self.rate)).min(u128::from(u64::MAX))
            as u64;
        let now = now_ns.saturating_mul(UNITS_PER_NS);
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let base = tat.max(now);
            if base - now > self.tau {
                return false;
            }
            match self.tat.compare_exchange_weak(
                tat,
                base.saturating_add(inc),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(t) => tat = t,
            }
        }
    }
}

/// A rule ready to run.
#[derive(Debug)]
struct Rule {
    m: Match,
    deny: bool,
    bucket: Option<Bucket>,
    lanes: Box<[LaneCounters]>,
}

impl Rule {
    fn new(m: Match, action: PolicyAction, lanes: usize) -> Self {
        let (deny, bucket) = match action {
            PolicyAction::Allow => (false, None),
            PolicyAction::Deny => (true, None),
            PolicyAction::RateLimit { rate, unit, burst } => {
                (false, Some(Bucket::new(rate, unit, burst)))
            }
        };
        Self {
            m,
            deny,
            bucket,
            lanes: (0..lanes).map(|_| LaneCounters::default()).collect(),
        }
    }

    /// Applies the rule to a frame it matched; true if the frame passes.
    #[inline]
    fn apply(&self, len: u64, now: u64, lane: usize) -> bool {
        let pass = !self.deny && self.bucket.as_ref().is_none_or(|b| b.admit(len, now));
        if let Some(c) = self.lanes.get(lane) {
            bump(&c.packets, 1);
            bump(&c.bytes, len);
            if !pass {
                bump(&c.denies, 1);
            }
        }
        pass
    }

    fn counters(&self) -> RuleCounters {
        let r = Ordering::Relaxed;
        self.lanes
            .iter()
            .fold(RuleCounters::default(), |s, c| RuleCounters {
                packets: s.packets + c.packets.load(r),
                bytes: s.bytes + c.bytes.load(r),
                denies: s.denies + c.denies.load(r),
            })
    }
}

/// One direction's rules, the default last (it matches everything).
#[derive(Debug)]
struct List {
    rules: Box<[Rule]>,
    /// Nothing to evaluate: no rules and a default of allow.
    open: bool,
}

impl List {
    fn new(l: &RuleList, lanes: usize) -> Self {
        let rules = l
            .rules
            .iter()
            .map(|r| Rule::new(r.m, r.action, lanes))
            .chain([Rule::new(Match::default(), l.default, lanes)])
            .collect();
        Self {
            rules,
            open: l.is_open(),
        }
    }

    /// First match decides; true if the frame with key `k` passes.
    #[inline]
    fn judge(&self, k: &FlowKey, len: u64, now: u64, lane: usize) -> bool {
        for r in &*self.rules {
            if r.m.matches(k) {
                return r.apply(len, now, lane);
            }
        }
        true // unreachable: the default matches everything
    }

    fn counters(&self) -> ListCounters {
        let mut rules: Vec<RuleCounters> = self.rules.iter().map(Rule::counters).collect();
        let default = rules.pop().unwrap_or_default();
        ListCounters { rules, default }
    }
}

/// A policy ready to run, with its counters and buckets.
#[derive(Debug)]
pub(crate) struct Compiled {
    spec: Policy,
    ingress: List,
    egress: List,
}

impl Compiled {
    /// `p` for an instance with `lanes` lanes.
    pub(crate) fn new(p: Policy, lanes: usize) -> Arc<Self> {
        Arc::new(Self {
            ingress: List::new(&p.ingress, lanes),
            egress: List::new(&p.egress, lanes),
            spec: p,
        })
    }

    /// The policy as set.
    pub(crate) fn spec(&self) -> &Policy {
        &self.spec
    }

    /// Counters, summed over the lanes.
    pub(crate) fn counters(&self) -> PolicyCounters {
        PolicyCounters {
            ingress: self.ingress.counters(),
            egress: self.egress.counters(),
        }
    }

    /// Whether egress rules must see the final headers of every output (so output packets
    /// may not be left pending with headers still to be produced where they land).
    pub(crate) fn polices_egress(&self) -> bool {
        !self.egress.open
    }

    /// Whether frame `p` from an uplink may enter the instance (parsing it).
    #[cfg(test)]
    pub(crate) fn ingress_allows(&self, p: &PacketBuf, now: u64, lane: usize) -> bool {
        if self.ingress.open || p.in_port == PortId::VNF {
            return true;
        }
        let (key, _) = parse(p.frame(), p.in_port.0);
        self.ingress.judge(&key, p.len() as u64, now, lane)
    }

    /// Whether `frame` (of `len` bytes, its headers in `frame`) may leave through `port`.
    #[inline]
    pub(crate) fn egress_allows(
        &self,
        frame: &[u8],
        len: usize,
        port: PortId,
        now: u64,
        lane: usize,
    ) -> bool {
        if self.egress.open || port == PortId::VNF {
            return true;
        }
        let (key, _) = parse(frame, port.0);
        self.egress.judge(&key, len as u64, now, lane)
    }

    /// Runs `tables` for `p` (parsed into `kl`) between the ingress and the egress rules:
    /// (verdict, cache hit, dropped by the policy). Ingress judges `kl` as parsed; `tables`
    /// leaves in `kl` the key after its rewrites, which egress judges (with the output port
    /// as `in_port`): no second parse.
    #[inline]
    pub(crate) fn police(
        &self,
        p: &mut PacketBuf,
        kl: &mut (FlowKey, Layout),
        now: u64,
        lane: usize,
        tables: impl FnOnce(&mut PacketBuf, &mut (FlowKey, Layout)) -> (Verdict, bool),
    ) -> (Verdict, bool, bool) {
        if !self.ingress.open
            && p.in_port != PortId::VNF
            && !self.ingress.judge(&kl.0, p.len() as u64, now, lane)
        {
            return (Verdict::Drop, false, true);
        }
        let (v, hit) = tables(p, kl);
        if let Verdict::Output(port) = v {
            if !self.egress.open && port != PortId::VNF {
                let mut k = kl.0;
                k.in_port = port.0;
                if !self.egress.judge(&k, p.len() as u64, now, lane) {
                    return (Verdict::Drop, hit, true);
                }
            }
        }
        (v, hit, false)
    }
}

impl super::SwInstance {
    /// Replaces the operator's policy (None: none) between two batches of every lane; the
    /// new rules' counters and buckets start fresh.
    pub fn set_policy(&self, p: Option<Policy>) -> Result<(), PolicyError> {
        if let Some(p) = &p {
            p.validate()?;
        }
        let c = p.map(|p| Compiled::new(p, self.lanes()));
        let mut view = self.operator.lock().unwrap_or_else(|e| e.into_inner());
        self.core.write().policy = c.clone();
        *view = c;
        Ok(())
    }

    /// The policy in force and its counters (read without stopping the lanes).
    pub fn policy(&self) -> Option<(Policy, PolicyCounters)> {
        let view = self.operator.lock().unwrap_or_else(|e| e.into_inner());
        view.as_ref().map(|c| (c.spec().clone(), c.counters()))
    }

    /// Whether the vNF may send `frame` out of `port` directly (a PACKET_OUT that skips
    /// the tables): the egress rules, counted on lane 0 while the lanes are held off.
    pub(crate) fn control_egress_allows(&self, now_ns: u64, port: PortId, frame: &[u8]) -> bool {
        let core = self.core.write();
        let Some(pol) = &core.policy else {
            return true;
        };
        if pol.egress_allows(frame, frame.len(), port, now_ns, 0) {
            return true;
        }
        let s = &self.stats[0];
        s.drops.fetch_add(1, Ordering::Relaxed);
        s.policy_drops.fetch_add(1, Ordering::Relaxed);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dpacc_spec::fastpath::flow::{Prefix, IPPROTO_TCP};
    use dpacc_spec::fastpath::policy::PolicyRule;

    /// An Ethernet + IPv4 + TCP frame.
    fn tcp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, in_port: u16) -> PacketBuf {
        let mut f = vec![0u8; 54];
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        f[14] = 0x45;
        f[16..18].copy_from_slice(&40u16.to_be_bytes());
        f[23] = IPPROTO_TCP;
        f[26..30].copy_from_slice(&src);
        f[30..34].copy_from_slice(&dst);
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[36..38].copy_from_slice(&dport.to_be_bytes());
        let mut p = PacketBuf::new();
        assert!(p.load(&f, PortId(in_port)));
        p
    }

    fn rule(m: Match, action: PolicyAction) -> PolicyRule {
        PolicyRule { m, action }
    }

    #[test]
    fn first_match_wins_and_the_default_takes_the_rest() {
        let deny_22 = Match {
            dport: Some(22),
            ..Match::default()
        };
        let net10 = Match {
            src: Some(Prefix {
                addr: "10.0.0.0".parse().unwrap(),
                len: 8,
            }),
            ..Match::default()
        };
        let p = Compiled::new(
            Policy {
                ingress: RuleList {
                    rules: vec![
                        rule(deny_22, PolicyAction::Deny),
                        rule(net10, PolicyAction::Allow),
                    ],
                    default: PolicyAction::Deny,
                },
                egress: RuleList::default(),
            },
            2,
        );
        let ok = tcp([10, 1, 2, 3], [10, 0, 0, 1], 1000, 80, 1);
        let ssh = tcp([10, 1, 2, 3], [10, 0, 0, 1], 1000, 22, 1);
        let other = tcp([192, 168, 0, 1], [10, 0, 0, 1], 1000, 80, 2);
        let from_vnf = tcp([192, 168, 0, 1], [10, 0, 0, 1], 1000, 22, 0);
        assert!(p.ingress_allows(&ok, 0, 0));
        assert!(p.ingress_allows(&ok, 0, 1));
        assert!(!p.ingress_allows(&ssh, 0, 0), "rule 0 comes first");
        assert!(!p.ingress_allows(&other, 0, 0), "default deny");
        assert!(
            p.ingress_allows(&from_vnf, 0, 0),
            "the vNF's own frames are not ingress"
        );
        let c = p.counters();
        assert_eq!(c.ingress.rules.len(), 2);
        assert_eq!(
            c.ingress.rules[0],
            RuleCounters {
                packets: 1,
                bytes: 54,
                denies: 1
            }
        );
        assert_eq!(
            c.ingress.rules[1],
            RuleCounters {
                packets: 2,
                bytes: 108,
                denies: 0
            },
            "summed over lanes"
        );
        assert_eq!(c.ingress.default.denies, 1);
        assert_eq!(
            c.egress.default,
            RuleCounters::default(),
            "egress open: nothing counted"
        );
        assert!(!p.polices_egress());
    }

    #[test]
    fn egress_matches_the_output_port_and_police_wraps_the_tables() {
        let to2 = Match {
            in_port: Some(2),
            dport: Some(443),
            ..Match::default()
        };
        let p = Compiled::new(
            Policy {
                ingress: RuleList::default(),
                egress: RuleList {
                    rules: vec![rule(to2, PolicyAction::Deny)],
                    default: PolicyAction::Allow,
                },
            },
            1,
        );
        assert!(p.polices_egress());
        let mut pk = tcp([1, 1, 1, 1], [2, 2, 2, 2], 5, 443, 1);
        let f443 = tcp([1, 1, 1, 1], [2, 2, 2, 2], 5, 443, 1);
        let kl = || parse(f443.frame(), 1);
        let r = p.police(&mut pk, &mut kl(), 0, 0, |_, _| {
            (Verdict::Output(PortId(2)), true)
        });
        assert_eq!(
            r,
            (Verdict::Drop, true, true),
            "a cached flow hit is denied too"
        );
        let r = p.police(&mut pk, &mut kl(), 0, 0, |_, _| {
            (Verdict::Output(PortId(3)), true)
        });
        assert_eq!(r, (Verdict::Output(PortId(3)), true, false));
        let r = p.police(&mut pk, &mut kl(), 0, 0, |_, _| {
            (Verdict::Output(PortId::VNF), false)
        });
        assert_eq!(
            r.0,
            Verdict::Output(PortId::VNF),
            "to the vNF is not egress"
        );
        // A rewrite by the tables is seen: the frame leaves with port 80.
        let r = p.police(&mut pk, &mut kl(), 0, 0, |_, kl| {
            kl.0.dport = 80;
            (Verdict::Output(PortId(2)), false)
        });
        assert_eq!(r.0, Verdict::Output(PortId(2)));
        // And the other way round: rewritten to 443, denied.
        let mut pk80 = tcp([1, 1, 1, 1], [2, 2, 2, 2], 5, 80, 1);
        let mut kl80 = parse(pk80.frame(), 1);
        let r = p.police(&mut pk80, &mut kl80, 0, 0, |_, kl| {
            kl.0.dport = 443;
            (Verdict::Output(PortId(2)), false)
        });
        assert_eq!(r, (Verdict::Drop, false, true));
    }

    #[test]
    fn a_shared_bucket_holds_the_rate_across_lanes() {
        let p = Compiled::new(
            Policy {
                ingress: RuleList {
                    rules: vec![],
                    default: PolicyAction::RateLimit {
                        rate: 1000,
                        unit: RateUnit::Packets,
                        burst: 10,
                    },
                },
                egress: RuleList::default(),
            },
            4,
        );
        let pk = tcp([1, 1, 1, 1], [2, 2, 2, 2], 5, 80, 1);
        // 10 s of offered load at 10 000 packets/s spread over 4 lanes.
        let mut passed = 0u64;
        for i in 0..100_000u64 {
            let now = i * 100_000; // ns
            passed += u64::from(p.ingress_allows(&pk, now, (i % 4) as usize));
        }
        assert!(
            (10_000..=10_011).contains(&passed),
            "{passed} passed at 1000/s for 10 s"
        );
        let c = p.counters().ingress.default;
        assert_eq!(c.packets, 100_000);
        assert_eq!(c.packets - c.denies, passed);
    }

    #[test]
    fn a_byte_bucket_counts_bytes() {
        let b = Bucket::new(54_000, RateUnit::Bytes, 54);
        let mut passed = 0;
        for i in 0..10_000u64 {
            passed += u64::from(b.admit(54, i * 100_000)); // 10 000/s offered, 1 s
        }
        assert!((1000..=1002).contains(&passed), "{passed}");
    }
}
