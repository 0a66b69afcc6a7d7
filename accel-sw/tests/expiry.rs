//! Flow expiry (idle and hard timeouts, FLOW_EXPIRED events and their counters) against a
//! reference: a pass over every flow at each expiry call, which is what the flow processor
//! did before its timer wheel. The wheel looks only at the flows that may be due; the events
//! (which flows, when, why, with which counters, in which order) must be the same.

use std::collections::BTreeMap;
use std::sync::Arc;

use dpacc_spec::fastpath::{PacketBuf, PortId};
use dpacc_sw::flow::key::Match;
use dpacc_sw::flow::{Action, Expired, ExpiryReason, FlowSpec, SwFlowProcessor};
use dpacc_sw::SwDriver;

const MS: u64 = 1_000_000;
const S: u64 = 1_000 * MS;

/// An Ethernet + IPv4 + TCP frame to `dport` (checksums are not looked at).
fn packet(dport: u16) -> PacketBuf {
    let mut f = vec![0u8; 54];
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f[14] = 0x45;
    f[16..18].copy_from_slice(&40u16.to_be_bytes());
    f[22] = 64;
    f[23] = 6;
    f[26..30].copy_from_slice(&[10, 0, 0, 1]);
    f[30..34].copy_from_slice(&[10, 0, 0, 2]);
    f[34..36].copy_from_slice(&1000u16.to_be_bytes());
    f[36..38].copy_from_slice(&dport.to_be_bytes());
    f[46] = 5 << 4;
    let mut p = PacketBuf::new();
    assert!(p.load(&f, PortId(1)));
    p
}

fn spec(table: u8, priority: u16, dport: u16, idle: u64, hard: u64) -> FlowSpec {
    FlowSpec {
        table,
        priority,
        cookie: u64::from(dport) << 8 | u64::from(table),
        m: Match {
            dport: Some(dport),
            ..Match::default()
        },
        actions: vec![Action::Output(PortId(2))],
        idle_timeout_ns: idle,
        hard_timeout_ns: hard,
        notify_expiry: true,
    }
}

/// What the reference knows of a flow.
#[derive(Clone, Debug)]
struct Model {
    table: u8,
    priority: u16,
    /// Install order (kept by a replacement, as the tables keep its place).
    order: u64,
    hard_deadline: u64,
    idle: u64,
    last_used: u64,
    packets: u64,
}

/// The flow processor and the reference side by side.
struct Both {
    fp: SwFlowProcessor,
    model: BTreeMap<u64, Model>,
    installs: u64,
}

impl Both {
    fn new(max: usize) -> Self {
        Self {
            fp: SwFlowProcessor::new(Arc::new(SwDriver::new()), max).unwrap(),
            model: BTreeMap::new(),
            installs: 0,
        }
    }

    fn add(&mut self, s: FlowSpec, now: u64) {
        self.fp.add_flow(s.clone(), now).unwrap();
        self.installs += 1;
        let order = self.model.get(&s.cookie).map_or(self.installs, |m| m.order);
        self.model.insert(
            s.cookie,
            Model {
                table: s.table,
                priority: s.priority,
                order,
                hard_deadline: match s.hard_timeout_ns {
                    0 => u64::MAX,
                    h => now + h,
                },
                idle: s.idle_timeout_ns,
                last_used: now,
                packets: 0,
            },
        );
    }

    /// A packet to the table-0 flow matching `dport` (if any) at `now`.
    fn hit(&mut self, dport: u16, now: u64) {
        let mut p = [packet(dport)];
        let mut v = [dpacc_spec::fastpath::Verdict::Drop];
        self.fp.process(now, &mut p, &mut v);
        if let Some(m) = self.model.get_mut(&(u64::from(dport) << 8)) {
            m.last_used = now;
            m.packets += 1;
        }
    }

    fn delete(&mut self, cookie: u64) {
        let gone = self.fp.delete_flows(cookie);
        assert_eq!(
            gone.len(),
            usize::from(self.model.remove(&cookie).is_some())
        );
    }

    /// Expires at `now` in both and checks that the events are the same, in order.
    fn expire(&mut self, now: u64) -> Vec<Expired> {
        let mut got = Vec::new();
        self.fp.expire(now, &mut got);
        let mut want: Vec<(u8, std::cmp::Reverse<u16>, u64, Expired)> = Vec::new();
        self.model.retain(|&cookie, m| {
            let hard = now >= m.hard_deadline;
            let idle = m.idle != 0 && now.saturating_sub(m.last_used) >= m.idle;
            if hard || idle {
                want.push((
                    m.table,
                    std::cmp::Reverse(m.priority),
                    m.order,
                    Expired {
                        cookie,
                        reason: if hard {
                            ExpiryReason::Hard
                        } else {
                            ExpiryReason::Idle
                        },
                        stats: dpacc_spec::fastpath::flow::FlowStats {
                            packets: m.packets,
                            bytes: m.packets * 54,
                        },
                    },
                ));
            }
            !(hard || idle)
        });
        want.sort_by_key(|w| (w.0, w.1, w.2));
        let want: Vec<Expired> = want.into_iter().map(|w| w.3).collect();
        assert_eq!(got, want, "at {now} ns");
        assert_eq!(self.fp.flow_count(), self.model.len());
        got
    }
}

/// Many flows with mixed timeouts (idle, hard, both; from milliseconds to past the wheel's
/// 137-second revolution), no traffic: each expires at the first expiry call at or after its
/// deadline, with the right reason, in table and priority order.
#[test]
fn many_flows_with_mixed_timeouts_expire_at_the_right_call() {
    let mut b = Both::new(10_000);
    let t0 = 5 * S + 3;
    for i in 0..6_000u16 {
        let idle = [0, 40 * MS, S, 3 * S + 7, 150 * S, 400 * S][usize::from(i % 6)];
        let hard = [0, 2 * S, 90 * S, 200 * S + 1][usize::from(i / 6 % 4)];
        let (idle, hard) = if idle == 0 && hard == 0 {
            (16_777_216, 0) // exactly a wheel tick
        } else {
            (idle, hard)
        };
        b.add(
            spec((i % 3) as u8, 10 + i % 4, i, idle, hard),
            t0 + u64::from(i) * 1_000,
        );
    }
    let mut now = t0;
    let mut seen = 0;
    while !b.model.is_empty() {
        now += 100 * MS;
        seen += b.expire(now).len();
    }
    assert_eq!(seen, 6_000);
    assert!(now <= t0 + 401 * S, "{now}");
}

/// Traffic keeps idle flows alive (checked again when their time comes, not pushed on every
/// packet); a hard timeout expires a flow despite its traffic.
#[test]
fn traffic_keeps_idle_flows_alive_and_hard_timeouts_win() {
    let mut b = Both::new(100);
    let t0 = 1_000 * S;
    for d in 0..20u16 {
        let hard = if d % 4 == 0 { 3 * S } else { 0 };
        b.add(spec(0, 1, d, S, hard), t0);
    }
    let mut now = t0;
    for step in 1..=100u64 {
        now = t0 + step * 100 * MS;
        // Half the flows see a packet every 300 ms for 6 s.
        if step % 3 == 0 && step <= 60 {
            for d in (0..20).step_by(2) {
                b.hit(d, now);
            }
        }
        let ev = b.expire(now);
        for e in &ev {
            let d = e.cookie >> 8;
            if d % 4 == 0 {
                assert_eq!((e.reason, now), (ExpiryReason::Hard, t0 + 3 * S));
            } else if d % 2 == 0 {
                assert_eq!((e.reason, now), (ExpiryReason::Idle, t0 + 7 * S));
            } else {
                assert_eq!((e.reason, now), (ExpiryReason::Idle, t0 + S));
            }
        }
    }
    assert!(b.model.is_empty(), "{} left at {now}", b.model.len());
}

/// A flow deleted (or replaced without a timeout) before its deadline leaves no timer that
/// could expire whatever takes its slot next: with a quota of a few flows every slot is
/// reused, by flows without timeouts and by flows with later ones.
#[test]
fn delete_and_slot_reuse_leave_no_stale_timer() {
    let mut b = Both::new(4);
    let t0 = 77 * S;
    for d in 0..4 {
        b.add(spec(0, 1, d, S, 0), t0);
    }
    // Deleted before their deadline: their slots get flows without timeouts...
    b.delete(1 << 8);
    b.delete(2 << 8);
    b.add(spec(0, 1, 10, 0, 0), t0 + 1);
    // ...and with a later hard timeout, in the other slot.
    b.add(spec(0, 1, 11, 0, 5 * S), t0 + 2);
    // Replaced in place without a timeout: no timer any more.
    b.add(spec(0, 1, 3, 0, 0), t0 + 3);
    for step in 1..=40 {
        let ev = b.expire(t0 + step * 250 * MS);
        for e in ev {
            match e.cookie >> 8 {
                0 => assert_eq!(step, 4, "flow 0's idle timeout"),
                11 => assert_eq!(step, 21, "flow 11's hard timeout, not the old idle one"),
                c => panic!("flow {c} expired"),
            }
        }
    }
    assert_eq!(b.fp.flow_count(), 2);
    // The quota is counted right after all that: two more fit, a third does not.
    b.add(spec(0, 1, 20, 0, 0), t0);
    b.add(spec(0, 1, 21, 0, 0), t0);
    assert!(b.fp.add_flow(spec(0, 1, 22, 0, 0), t0).is_err());
}

/// Random installs, replacements, deletions, traffic and expiry calls at irregular times
/// (nanoseconds apart to minutes apart, and a gap of hours) against the reference.
#[test]
fn random_operations_agree_with_a_scan_of_every_flow() {
    let mut b = Both::new(3_000);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = |n: u64| {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    };
    let mut now = 3 * S;
    let mut events = 0;
    for round in 0..3_000 {
        for _ in 0..rnd(6) {
            let d = rnd(2_000) as u16;
            let idle = [0, 1, 30 * MS, S, 20 * S, 200 * S][rnd(6) as usize];
            let hard = [0, 0, 50 * MS, 2 * S, 300 * S][rnd(5) as usize];
            // One priority per dport: the same cookie is always the same flow.
            b.add(spec(rnd(2) as u8, d % 3, d, idle, hard), now);
        }
        for _ in 0..rnd(10) {
            b.hit(rnd(2_000) as u16, now);
        }
        if rnd(10) == 0 {
            let d = rnd(2_000);
            b.delete(d << 8 | rnd(2));
        }
        now += match rnd(20) {
            0 => 1,
            1..=10 => rnd(100 * MS),
            11..=18 => rnd(2 * S),
            _ if round == 2_000 => 5 * 3_600 * S,
            _ => rnd(120 * S),
        };
        events += b.expire(now).len();
    }
    assert!(events > 1_000, "{events} events");
}

/// Idle timeouts the timer wheel keeps exactly in a second vector (not whole milliseconds, or
/// 2^31 ms and longer) and in its `u32` (whole milliseconds), also when a slot goes from one
/// kind to the other or to none: each flow expires at the first call at or after its
/// deadline, to the nanosecond.
#[test]
fn idle_timeouts_are_exact_across_their_encodings() {
    let mut b = Both::new(4);
    let t0 = 11 * S;
    let long = (1u64 << 31) * MS; // 24.9 days: past the u32 of milliseconds
    let max_ms = ((1u64 << 31) - 1) * MS;
    b.add(spec(0, 1, 1, 1, 0), t0);
    b.add(spec(0, 1, 2, MS - 1, 0), t0);
    b.add(spec(0, 1, 3, long + 1, 0), t0);
    b.add(spec(0, 1, 4, max_ms, 0), t0);
    for at in [t0, t0 + 1, t0 + MS - 2, t0 + MS - 1] {
        b.expire(at);
    }
    assert_eq!(b.model.len(), 2, "flows 1 and 2 gone");
    // Their slots get a whole-millisecond timeout and none, replacing exact ones.
    b.add(spec(0, 1, 5, 7 * MS, 0), t0 + S);
    b.add(spec(0, 1, 6, 0, 0), t0 + S);
    // Flow 4 replaced by an exact one, flow 3 by a whole-millisecond one.
    b.add(spec(0, 1, 4, long, 0), t0 + S);
    b.add(spec(0, 1, 3, 3 * MS + 1, 0), t0 + S);
    for at in [
        t0 + S + 3 * MS,
        t0 + S + 3 * MS + 1,
        t0 + S + 7 * MS - 1,
        t0 + S + 7 * MS,
        t0 + S + long - 1,
        t0 + S + long,
    ] {
        b.expire(at);
    }
    assert_eq!(b.fp.flow_count(), 1, "flow 6 has no timeout");
}
