//! Fused ESP: a frame a device loaded partly (its first 128 bytes resident, the rest left in
//! the source buffer) is encapsulated (after NAT on its inner headers) or decapsulated by a
//! lane that leaves it pending, then written where it lands by `finish_into`: into one
//! buffer (the AEAD out of place from the packet and the source) or into pieces cut where the
//! input says (copied, then finished in place).
//!
//! Oracle: the in-memory path of an independent instance with the same flows and SAs (the
//! one scapy checks): the same verdict and, for an output, the same bytes; decapsulation of a
//! sealed frame (one bit flipped where the input says, or none) matches it too, so a
//! tampered frame never comes out.

#![no_main]

use std::net::Ipv4Addr;
use std::sync::Arc;

use dpacc_fuzz::Reader;
use dpacc_spec::fastpath::flow::{Action, FlowSpec, Match};
use dpacc_spec::fastpath::{FlowLane, PacketBuf, PortId, Quotas, Verdict};
use dpacc_spec::Seg;
use dpacc_sw::flow::esp::{SaConfig, SaDir};
use dpacc_sw::flow::{SwFlowProcessor, SwInstance};
use libfuzzer_sys::fuzz_target;
use zeroize::Zeroizing;

const SPI: u32 = 0x200;

fn sa(dir: SaDir) -> SaConfig {
    SaConfig {
        spi: SPI,
        key: Zeroizing::new(vec![0x24; 16]),
        salt: [4, 3, 2, 1],
        dir,
    }
}

fn flows() -> [FlowSpec; 2] {
    let spec = |priority, m, actions| FlowSpec {
        table: 0,
        priority,
        cookie: u64::from(priority),
        m,
        actions,
        idle_timeout_ns: 0,
        hard_timeout_ns: 0,
        notify_expiry: false,
    };
    [
        spec(
            200,
            Match {
                in_port: Some(2),
                proto: Some(50),
                ..Match::default()
            },
            vec![Action::EspDecap, Action::Output(PortId(1))],
        ),
        spec(
            100,
            Match {
                in_port: Some(1),
                ..Match::default()
            },
            vec![
                Action::SetIpv4Dst(Ipv4Addr::new(10, 9, 0, 1)),
                Action::EspEncap(SPI),
                Action::Output(PortId(2)),
            ],
        ),
    ]
}

fn setup(inst: &SwInstance) {
    inst.add_sa(sa(SaDir::Inbound)).unwrap();
    inst.add_sa(sa(SaDir::Outbound {
        src: Ipv4Addr::new(192, 0, 2, 1),
        dst: Ipv4Addr::new(192, 0, 2, 2),
    }))
    .unwrap();
    for f in flows() {
        inst.add_flow(f, 0).unwrap();
    }
}

/// `src` loaded as a device loads it: partial past HEADER_BYTES, whole otherwise.
fn loaded(src: &[u8], port: PortId) -> PacketBuf {
    let mut p = PacketBuf::new();
    // SAFETY: `src` outlives every use of `p` (each call below).
    assert!(unsafe { p.load_partial(src, port) });
    p
}

/// What the fused lane makes of `src` from `port`, written into a destination cut at `cut`
/// (None: one buffer): the verdict and the output frame.
fn fused(lane: &mut dyn FlowLane, src: &[u8], port: PortId, cut: Option<usize>) -> Option<Vec<u8>> {
    let mut p = [loaded(src, port)];
    let mut v = [Verdict::Drop];
    lane.process(0, &mut p, &mut v);
    let out = match v[0] {
        Verdict::Output(_) if p[0].is_pending() => {
            let mut dst = vec![0x5au8; p[0].len()];
            let len = dst.len();
            let base = dst.as_mut_ptr();
            let segs: Vec<Seg<'_>> = match cut.filter(|&c| c > 0 && c < len) {
                // SAFETY: pieces of `dst`, alive until the end of this arm.
                Some(c) => unsafe {
                    vec![Seg::from_raw(base, c), Seg::from_raw(base.add(c), len - c)]
                },
                // SAFETY: as above.
                None => vec![unsafe { Seg::from_raw(base, len) }],
            };
            let n = lane.finish_into(0, &p[0], &segs);
            n.map(|n| {
                assert!(n <= len);
                dst.truncate(n);
                dst
            })
        }
        Verdict::Output(_) => {
            p[0].make_whole();
            Some(p[0].frame().to_vec())
        }
        _ => None,
    };
    lane.end_batch();
    out
}

/// The in-memory path's answer.
fn reference(r: &mut SwFlowProcessor, src: &[u8], port: PortId) -> Option<Vec<u8>> {
    let mut p = [PacketBuf::new()];
    if !p[0].load(src, port) {
        return None;
    }
    let mut v = [Verdict::Drop];
    r.process(0, &mut p, &mut v);
    matches!(v[0], Verdict::Output(_)).then(|| p[0].frame().to_vec())
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let cut = r.u16();
    let flip = r.u16();
    let frame = r.take(9000).to_vec();
    let cut = (cut & 1 == 1).then_some(usize::from(cut >> 1));

    let driver = Arc::new(dpacc_sw::SwDriver::new());
    let inst = SwInstance::with_quotas(driver.clone(), Quotas::default(), 1).unwrap();
    setup(&inst);
    let mut lane = inst.lane(0).unwrap().unwrap();
    assert!(lane.enable_finish());
    let mut want = SwFlowProcessor::with_quotas(driver, Quotas::default()).unwrap();
    setup(&want);

    // The input from uplink 1 (encap, or whatever the flows say), then from uplink 2.
    for port in [PortId(1), PortId(2)] {
        let got = fused(&mut lane, &frame, port, cut);
        let exp = reference(&mut want, &frame, port);
        assert_eq!(
            got, exp,
            "{port:?}: the fused path differs from the in-memory one"
        );
        // A sealed frame comes back through decap (a bit flipped, perhaps): as in memory.
        if port == PortId(1) {
            if let Some(mut esp) = got {
                if flip & 1 == 1 && !esp.is_empty() {
                    let at = usize::from(flip >> 1) % esp.len();
                    esp[at] ^= 1;
                }
                let back = fused(&mut lane, &esp, PortId(2), cut);
                let exp = reference(&mut want, &esp, PortId(2));
                assert_eq!(
                    back, exp,
                    "decap of a sealed frame differs from the in-memory one"
                );
            }
        }
    }
});
