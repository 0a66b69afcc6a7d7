//! The operator's policy in a real instance: flows the vNF installs (cached or not, direct
//! PACKET_OUTs) cannot bypass it, and a rule set is swapped whole while lanes run.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use dpacc_spec::fastpath::flow::{Action, FlowSpec, Match};
use dpacc_spec::fastpath::policy::{Policy, PolicyAction, PolicyRule, RuleList};
use dpacc_spec::fastpath::proto::{Body, Message};
use dpacc_spec::fastpath::{Emit, FastPathDriver, InstanceConfig, PacketBuf, PortId, Verdict};
use dpacc_sw::flow::{SwFastPath, SwInstance};
use dpacc_sw::SwDriver;

fn udp(dport: u16, in_port: u16) -> PacketBuf {
    let mut f = vec![0u8; 60];
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f[14] = 0x45;
    f[16..18].copy_from_slice(&46u16.to_be_bytes());
    f[23] = 17;
    f[26..30].copy_from_slice(&[10, 0, 0, 1]);
    f[30..34].copy_from_slice(&[10, 0, 0, 2]);
    f[34..36].copy_from_slice(&5000u16.to_be_bytes());
    f[36..38].copy_from_slice(&dport.to_be_bytes());
    let mut p = PacketBuf::new();
    assert!(p.load(&f, PortId(in_port)));
    p
}

fn forward_all(inst: &SwInstance) {
    inst.add_flow(
        FlowSpec {
            table: 0,
            priority: 1,
            cookie: 1,
            m: Match::default(),
            actions: vec![Action::Output(PortId(2))],
            idle_timeout_ns: 0,
            hard_timeout_ns: 0,
            notify_expiry: false,
        },
        0,
    )
    .unwrap();
}

fn deny(dport: u16) -> PolicyRule {
    PolicyRule {
        m: Match {
            dport: Some(dport),
            ..Match::default()
        },
        action: PolicyAction::Deny,
    }
}

#[test]
fn a_cached_flow_hit_is_denied_once_the_policy_says_so() {
    let inst = SwInstance::new(Arc::new(SwDriver::new()), 16, 1).unwrap();
    forward_all(&inst);
    let mut lane = inst.lane(0).unwrap().unwrap();
    let mut v = [Verdict::Drop; 4];
    let mut pkts = [udp(22, 1), udp(22, 1), udp(80, 1), udp(22, 1)];
    lane.process(1, &mut pkts, &mut v);
    assert_eq!(v, [Verdict::Output(PortId(2)); 4]);
    assert!(inst.stats().emc_hits >= 2, "the flow is cached");
    for (ingress, egress) in [(vec![deny(22)], vec![]), (vec![], vec![deny(22)])] {
        inst.set_policy(Some(Policy {
            ingress: RuleList {
                rules: ingress,
                default: PolicyAction::Allow,
            },
            egress: RuleList {
                rules: egress,
                default: PolicyAction::Allow,
            },
        }))
        .unwrap();
        let mut pkts = [udp(22, 1), udp(22, 1), udp(80, 1), udp(22, 1)];
        lane.process(2, &mut pkts, &mut v);
        lane.end_batch();
        assert_eq!(
            v,
            [
                Verdict::Drop,
                Verdict::Drop,
                Verdict::Output(PortId(2)),
                Verdict::Drop
            ]
        );
        let (_, c) = inst.policy().unwrap();
        let r = if c.ingress.rules.is_empty() {
            &c.egress
        } else {
            &c.ingress
        };
        assert_eq!((r.rules[0].packets, r.rules[0].denies), (3, 3));
        assert_eq!(r.default.packets, 1);
    }
    assert_eq!(inst.stats().policy_drops, 6);
    inst.set_policy(None).unwrap();
    assert!(inst.policy().is_none());
    let mut pkts = [udp(22, 1)];
    lane.process(3, &mut pkts, &mut v[..1]);
    assert_eq!(v[0], Verdict::Output(PortId(2)));
}

#[test]
fn the_vnf_cannot_packet_out_past_egress_and_cannot_reach_the_policy() {
    let d = SwFastPath::new(Arc::new(SwDriver::new()));
    let p = d
        .create_instance(&InstanceConfig {
            name: "t".into(),
            uplinks: 2,
            quotas: dpacc_spec::fastpath::Quotas {
                flows: 8,
                ..Default::default()
            },
            lanes: 1,
        })
        .unwrap();
    p.set_policy(Some(Policy {
        ingress: RuleList::default(),
        egress: RuleList {
            rules: vec![deny(22)],
            default: PolicyAction::Allow,
        },
    }))
    .unwrap();
    // The vNF's own flow sends everything out of uplink 1.
    let mut req = Vec::new();
    Message {
        txid: 1,
        body: Body::FlowAdd(FlowSpec {
            table: 0,
            priority: 1,
            cookie: 1,
            m: Match::default(),
            actions: vec![Action::Output(PortId(1))],
            idle_timeout_ns: 0,
            hard_timeout_ns: 0,
            notify_expiry: false,
        }),
    }
    .encode(&mut req);
    let mut out = Vec::new();
    p.control(0, &req, &mut out);
    assert_eq!(p.flow_count(), 1, "{out:?}");
    let before = p.policy().unwrap();
    for (through, dport) in [(false, 22), (true, 22), (false, 80)] {
        let mut req = Vec::new();
        Message {
            txid: 7,
            body: Body::PacketOut {
                port: PortId(1),
                through_tables: through,
                frame: udp(dport, 0).frame().to_vec(),
            },
        }
        .encode(&mut req);
        let mut out = Vec::new();
        p.control(0, &req, &mut out);
        let sent = out.iter().any(|e| matches!(e, Emit::Frame { .. }));
        assert_eq!(sent, dport != 22, "{through} {dport}: {out:?}");
    }
    // Every message kind a vNF could send: none of them changes or reveals the policy.
    for t in 0u8..=255 {
        let mut req = vec![1, t, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0];
        let mut out = Vec::new();
        p.control(0, &req, &mut out);
        req.extend([0u8; 64]);
        let l = req.len() as u32 - 12;
        req[8..12].copy_from_slice(&l.to_be_bytes());
        p.control(0, &req, &mut out);
    }
    let after = p.policy().unwrap();
    assert_eq!(before.0, after.0, "the rules are the operator's");
    assert_eq!(p.counters().policy_drops, 2);
}

/// Rule set A denies port 22 on ingress, B on egress: a frame judged by half of each would
/// pass. Lanes process port-22 frames while the operator swaps A and B: none passes.
#[test]
fn rule_sets_are_swapped_whole_while_lanes_run() {
    let inst = SwInstance::new(Arc::new(SwDriver::new()), 16, 2).unwrap();
    forward_all(&inst);
    let a = Policy {
        ingress: RuleList {
            rules: vec![deny(22)],
            default: PolicyAction::Allow,
        },
        egress: RuleList::default(),
    };
    let b = Policy {
        ingress: RuleList::default(),
        egress: RuleList {
            rules: vec![deny(22)],
            default: PolicyAction::Allow,
        },
    };
    inst.set_policy(Some(a.clone())).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // Batches each lane has run: the swaps go on until both lanes ran many batches under them
    // (in a release build 2000 swaps can end before a lane thread has started).
    let done: Arc<[AtomicU64; 2]> = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let lanes: Vec<_> = (0..2)
        .map(|i| {
            let (inst, stop, done) = (inst.clone(), stop.clone(), done.clone());
            std::thread::spawn(move || {
                let mut lane = inst.lane(i).unwrap().unwrap();
                let mut v = [Verdict::Drop; 8];
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let mut pkts: [PacketBuf; 8] = std::array::from_fn(|_| udp(22, 1));
                    lane.process(n, &mut pkts, &mut v);
                    lane.end_batch();
                    assert!(v.iter().all(|v| *v == Verdict::Drop), "{v:?}");
                    n += 1;
                    done[i].store(n, Ordering::Relaxed);
                }
                n
            })
        })
        .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut i = 0u64;
    while i < 2000 || done.iter().any(|d| d.load(Ordering::Relaxed) < 100) {
        inst.set_policy(Some(if i % 2 == 0 { b.clone() } else { a.clone() }))
            .unwrap();
        i += 1;
        assert!(
            std::time::Instant::now() < deadline,
            "lanes made no progress"
        );
    }
    stop.store(true, Ordering::Relaxed);
    for l in lanes {
        assert!(l.join().unwrap() > 0);
    }
}

/// Egress rules judge what leaves, after the vNF's rewrites (here a port NAT 22 -> 80), on
/// the first packet and on cached ones alike.
#[test]
fn egress_judges_the_rewritten_headers() {
    let inst = SwInstance::new(Arc::new(SwDriver::new()), 16, 1).unwrap();
    inst.add_flow(
        FlowSpec {
            table: 0,
            priority: 1,
            cookie: 1,
            m: Match {
                dport: Some(22),
                ..Match::default()
            },
            actions: vec![Action::SetL4Dst(80), Action::Output(PortId(2))],
            idle_timeout_ns: 0,
            hard_timeout_ns: 0,
            notify_expiry: false,
        },
        0,
    )
    .unwrap();
    let mut lane = inst.lane(0).unwrap().unwrap();
    let mut v = [Verdict::Drop; 3];
    for (denied, passes) in [(80, false), (22, true)] {
        inst.set_policy(Some(Policy {
            ingress: RuleList {
                rules: vec![],
                default: PolicyAction::Allow,
            },
            egress: RuleList {
                rules: vec![deny(denied)],
                default: PolicyAction::Allow,
            },
        }))
        .unwrap();
        for _ in 0..2 {
            let mut pkts = [udp(22, 1), udp(22, 1), udp(22, 1)];
            lane.process(1, &mut pkts, &mut v);
            lane.end_batch();
            let want = if passes {
                Verdict::Output(PortId(2))
            } else {
                Verdict::Drop
            };
            assert_eq!(v, [want; 3], "egress deny {denied}");
            if passes {
                assert_eq!(&pkts[0].frame()[36..38], &80u16.to_be_bytes());
            }
        }
    }
}
