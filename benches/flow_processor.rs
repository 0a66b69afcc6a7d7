//! The software flow processor alone (per core, no virtqueues): flow-hit forwarding of 64-byte
//! packets in batches of 32, ESP tunnel encapsulation (AES-128-GCM) of 1400-byte packets, and,
//! printed before the criterion runs, the insert rate and memory per flow for 1 M flows.
//!
//! `cargo bench --bench flow_processor -- --quick`

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use criterion::{Criterion, Throughput};
use dpacc::spec::fastpath::policy::{Policy, PolicyAction, PolicyRule, RuleList};
use dpacc::spec::fastpath::{PacketBuf, PortId, Verdict};
use dpacc::sw::flow::esp::{SaConfig, SaDir};
use dpacc::sw::flow::key::{Match, Prefix};
use dpacc::sw::flow::{Action, FlowSpec, SwFlowProcessor};
use dpacc::sw::SwDriver;

/// Counts live heap bytes, for the memory-per-flow figure.
struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: same layout contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: `p` came from `alloc` with `l`.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        // SAFETY: as for `realloc` on System.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn udp_frame(len: usize, dst_last: u8, sport: u16) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f[14] = 0x45;
    f[16..18].copy_from_slice(&((len - 14) as u16).to_be_bytes());
    f[22] = 64;
    f[23] = 17;
    f[26..30].copy_from_slice(&[10, 0, 0, 1]);
    f[30..34].copy_from_slice(&[10, 0, 1, dst_last]);
    f[34..36].copy_from_slice(&sport.to_be_bytes());
    f[36..38].copy_from_slice(&4789u16.to_be_bytes());
    f
}

/// The calling thread's minor page faults and involuntary context switches so far.
fn usage() -> (i64, i64) {
    // SAFETY: `getrusage` writes one `rusage` into the zeroed value we own.
    unsafe {
        let mut r: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut r);
        (r.ru_minflt, r.ru_nivcsw)
    }
}

fn spec(cookie: u64, m: Match, actions: Vec<Action>) -> FlowSpec {
    FlowSpec {
        table: 0,
        priority: 10,
        cookie,
        m,
        actions,
        idle_timeout_ns: 0,
        hard_timeout_ns: 0,
        notify_expiry: false,
    }
}

/// Installs 1 M flows (all with the same action list, or each with its own: a NAT rewrite to
/// its own address; with `idle`, each with an idle timeout) and prints the insert rate, the
/// heap bytes per flow and the longest single insert (a table growing all at once shows
/// there).
fn million_flows(distinct_actions: bool, idle: bool) {
    let n = 1_000_000u32;
    let before = LIVE.load(Ordering::Relaxed);
    let fp = SwFlowProcessor::new(Arc::new(SwDriver::new()), n as usize).unwrap();
    let t = Instant::now();
    let (mut longest, mut over_1ms, mut over_half) = (0f64, 0, 0);
    // The inserts over 0.25 ms: which insert (flows held before it) and how long, to line
    // them up with what grows at that count (chunks every 4096 slots, hash tables at 7/8 of
    // a power of two).
    // With FLOW_BENCH_LONG set, each insert also reads the thread's page faults and
    // involuntary context switches (two syscalls an insert: the rate is then not comparable),
    // printed beside each long insert to tell the table's own work from the kernel's.
    let mut long = Vec::with_capacity(256);
    let diag = std::env::var_os("FLOW_BENCH_LONG").is_some();
    for i in 0..n {
        let m = Match {
            dst: Some(Prefix {
                addr: Ipv4Addr::from(0x0a00_0000 | i).into(),
                len: 32,
            }),
            sport: Some((i % 50_000) as u16),
            ..Match::default()
        };
        let actions = if distinct_actions {
            vec![
                Action::SetIpv4Dst(Ipv4Addr::from(0x0b00_0000 | i)),
                Action::Output(PortId(1)),
            ]
        } else {
            vec![Action::Output(PortId(1))]
        };
        let mut s = spec(u64::from(i), m, actions);
        if idle {
            s.idle_timeout_ns = 30_000_000_000;
        }
        let r0 = if diag { usage() } else { (0, 0) };
        let one = Instant::now();
        fp.add_flow(s, 0).unwrap();
        let d = one.elapsed().as_secs_f64();
        let r1 = if diag { usage() } else { (0, 0) };
        longest = longest.max(d);
        over_1ms += usize::from(d > 1e-3);
        over_half += usize::from(d > 0.5e-3);
        if d > 0.25e-3 && long.len() < long.capacity() {
            long.push((i, d, r1.0 - r0.0, r1.1 - r0.1));
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let bytes = LIVE.load(Ordering::Relaxed) - before;
    // With timeouts: what one expiry pass (the backend runs one every 100 ms) costs when
    // nothing is due yet.
    let pass = idle.then(|| {
        let mut ev = Vec::new();
        let t = Instant::now();
        for k in 1..=10u64 {
            fp.expire(k * 100_000_000, &mut ev);
        }
        assert!(ev.is_empty());
        t.elapsed().as_secs_f64() / 10.0
    });
    println!(
        "flow_processor/1M_flows{}{}: {} flows installed in {secs:.2} s = {:.0} inserts/s; {:.0} bytes per flow (heap, all structures); longest insert {:.2} ms, {over_half} over 0.5 ms, {over_1ms} over 1 ms",
        if distinct_actions { "_own_actions" } else { "" },
        if idle { "_idle_timeouts" } else { "" },
        fp.flow_count(),
        f64::from(n) / secs,
        bytes as f64 / f64::from(n),
        longest * 1e3
    );
    if diag {
        let l: Vec<String> = long
            .iter()
            .map(|(i, d, f, c)| format!("{i}:{:.2}ms/{f}pf/{c}cs", d * 1e3))
            .collect();
        println!(
            "  inserts over 0.25 ms (flows before it: ms, page faults, involuntary context switches): {}",
            l.join(" ")
        );
    }
    if let Some(p) = pass {
        println!(
            "flow_processor/1M_flows_idle_timeouts: one expiry pass with nothing due: {:.1} us",
            p * 1e6
        );
    }
}

fn bench(c: &mut Criterion) {
    let batch = 32usize;
    let mut g = c.benchmark_group("flow_processor");

    // Flow hit, 64-byte frames, 32 flows (exact-match cache hits after the first pass).
    let mut fp = SwFlowProcessor::new(Arc::new(SwDriver::new()), 1024).unwrap();
    fp.add_flow(
        spec(
            1,
            Match {
                eth_type: Some(0x0800),
                ..Match::default()
            },
            vec![Action::Output(PortId(2))],
        ),
        0,
    )
    .unwrap();
    let frames: Vec<Vec<u8>> = (0..batch)
        .map(|i| udp_frame(64, i as u8, 1000 + i as u16))
        .collect();
    let mut pkts: Vec<PacketBuf> = frames
        .iter()
        .map(|f| {
            let mut p = PacketBuf::new();
            p.load(f, PortId(1));
            p
        })
        .collect();
    let mut verdicts = vec![Verdict::Drop; batch];
    g.throughput(Throughput::Elements(batch as u64));
    g.bench_function("hit_64B_batch32", |b| {
        b.iter(|| {
            fp.process(0, &mut pkts, &mut verdicts);
            assert_eq!(verdicts[0], Verdict::Output(PortId(2)));
        })
    });

    // The same with an operator policy of 4 ingress and 4 egress rules that no frame matches
    // (every frame is parsed twice more and checked against 5 + 5 rules, defaults allow):
    // the cost of a policy next to the line above (no policy: one pointer check per frame).
    let deny_port = |p: u16| PolicyRule {
        m: Match {
            dport: Some(p),
            ..Match::default()
        },
        action: PolicyAction::Deny,
    };
    let list = RuleList {
        rules: (1..=4).map(deny_port).collect(),
        default: PolicyAction::Allow,
    };
    fp.set_policy(Some(Policy {
        ingress: list.clone(),
        egress: list,
    }))
    .unwrap();
    g.bench_function("hit_64B_batch32_policy_4+4_rules", |b| {
        b.iter(|| {
            fp.process(0, &mut pkts, &mut verdicts);
            assert_eq!(verdicts[0], Verdict::Output(PortId(2)));
        })
    });

    // ESP tunnel encapsulation of 1400-byte frames (reloaded each pass: encap grows them).
    let mut fp = SwFlowProcessor::new(Arc::new(SwDriver::new()), 1024).unwrap();
    fp.add_sa(SaConfig {
        spi: 7,
        key: zeroize::Zeroizing::new(vec![9u8; 16]),
        salt: [1, 2, 3, 4],
        dir: SaDir::Outbound {
            src: Ipv4Addr::new(192, 0, 2, 1),
            dst: Ipv4Addr::new(192, 0, 2, 2),
        },
    })
    .unwrap();
    fp.add_flow(
        spec(
            1,
            Match::default(),
            vec![Action::EspEncap(7), Action::Output(PortId(2))],
        ),
        0,
    )
    .unwrap();
    let frames: Vec<Vec<u8>> = (0..batch)
        .map(|i| udp_frame(1400, i as u8, 2000 + i as u16))
        .collect();
    g.throughput(Throughput::Bytes((1400 * batch) as u64));
    g.bench_function("esp_encap_aes128gcm_1400B_batch32", |b| {
        b.iter(|| {
            for (p, f) in pkts.iter_mut().zip(&frames) {
                p.load(f, PortId(1));
            }
            fp.process(0, &mut pkts, &mut verdicts);
            assert_eq!(verdicts[0], Verdict::Output(PortId(2)));
        })
    });
    g.finish();
}

fn main() {
    million_flows(false, false);
    million_flows(true, false);
    million_flows(false, true);
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
