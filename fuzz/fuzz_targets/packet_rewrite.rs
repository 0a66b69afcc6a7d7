//! Packet parsing and rewriting in a vNF's instance: NAT (addresses and ports, incremental
//! checksums), group select, ESP encapsulation and decapsulation (AES-GCM).
//!
//! Oracles, computed here from scratch (RFC 1071): a rewritten IPv4 packet whose header / TCP
//! or UDP checksum was valid still has a valid one; ESP decapsulation of what encapsulation
//! produced gives back the original packet, and a packet with a flipped bit never decrypts.

#![no_main]

use std::net::Ipv4Addr;
use std::sync::Arc;

use dpacc_fuzz::Reader;
use dpacc_spec::fastpath::flow::{Action, Bucket, FlowSpec, Match};
use dpacc_spec::fastpath::{PacketBuf, PortId, Quotas, Verdict};
use dpacc_sw::flow::esp::{SaConfig, SaDir};
use dpacc_sw::flow::SwFlowProcessor;
use libfuzzer_sys::fuzz_target;
use zeroize::Zeroizing;

const SPI: u32 = 0x100;

fn flow(table: u8, priority: u16, m: Match, actions: Vec<Action>) -> FlowSpec {
    FlowSpec {
        table,
        priority,
        cookie: u64::from(priority),
        m,
        actions,
        idle_timeout_ns: 0,
        hard_timeout_ns: 0,
        notify_expiry: false,
    }
}

fn instance() -> SwFlowProcessor {
    let p = SwFlowProcessor::with_quotas(Arc::new(dpacc_sw::SwDriver::new()), Quotas::default())
        .expect("instance");
    let sa = |dir| SaConfig {
        spi: SPI,
        key: Zeroizing::new(vec![0x42; 16]),
        salt: [1, 2, 3, 4],
        dir,
    };
    p.add_sa(sa(SaDir::Inbound)).unwrap();
    p.add_sa(sa(SaDir::Outbound {
        src: Ipv4Addr::new(192, 0, 2, 10),
        dst: Ipv4Addr::new(192, 0, 2, 20),
    }))
    .unwrap();
    p.add_group(
        7,
        vec![
            Bucket {
                weight: 2,
                actions: vec![
                    Action::SetIpv4Dst(Ipv4Addr::new(10, 0, 0, 3)),
                    Action::Output(PortId(1)),
                ],
            },
            Bucket {
                weight: 1,
                actions: vec![
                    Action::SetL4Dst(8443),
                    Action::SetIpv4Src(Ipv4Addr::new(10, 9, 9, 9)),
                    Action::Output(PortId(2)),
                ],
            },
        ],
    )
    .unwrap();
    let m = |proto: Option<u8>, dport: Option<u16>, in_port: Option<u16>| Match {
        proto,
        dport,
        in_port,
        ..Match::default()
    };
    let flows = [
        // ESP in from uplink 1: decapsulate, then table 1.
        flow(
            0,
            200,
            m(Some(50), None, Some(1)),
            vec![Action::EspDecap, Action::Goto(1)],
        ),
        // ICMP from the vNF: encapsulate, out of uplink 2.
        flow(
            0,
            190,
            m(Some(1), None, Some(0)),
            vec![Action::EspEncap(SPI), Action::Output(PortId(2))],
        ),
        flow(
            0,
            100,
            m(Some(6), Some(80), None),
            vec![
                Action::SetIpv4Dst(Ipv4Addr::new(10, 0, 0, 2)),
                Action::SetL4Dst(8080),
                Action::Output(PortId(1)),
            ],
        ),
        flow(
            0,
            90,
            m(Some(17), None, None),
            vec![
                Action::SetIpv4Src(Ipv4Addr::new(192, 0, 2, 1)),
                Action::SetL4Src(5000),
                Action::Output(PortId(2)),
            ],
        ),
        flow(0, 80, m(Some(6), Some(443), None), vec![Action::Group(7)]),
        flow(
            0,
            70,
            m(Some(6), None, None),
            vec![
                Action::SetL4Src(1234),
                Action::SetEthSrc([2; 6]),
                Action::Goto(2),
            ],
        ),
        flow(
            1,
            10,
            Match::default(),
            vec![Action::SetEthDst([4; 6]), Action::Output(PortId(1))],
        ),
        flow(
            2,
            10,
            Match::default(),
            vec![
                Action::SetIpv4Dst(Ipv4Addr::new(172, 16, 0, 1)),
                Action::Output(PortId(0)),
            ],
        ),
    ];
    for f in flows {
        p.add_flow(f, 0).unwrap();
    }
    p
}

fn csum(data: &[u8], init: u32) -> u16 {
    let mut s = init;
    for c in data.chunks(2) {
        s += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// (IPv4 header valid, TCP/UDP checksum valid) for a complete, unfragmented IPv4 packet;
/// None for anything else.
fn checksums(f: &[u8]) -> Option<(bool, Option<bool>)> {
    let mut l3 = 14;
    let mut et = u16::from_be_bytes([*f.get(12)?, *f.get(13)?]);
    if et == 0x8100 {
        et = u16::from_be_bytes([*f.get(16)?, *f.get(17)?]);
        l3 = 18;
    }
    if et != 0x0800 {
        return None;
    }
    let ip = f.get(l3..)?;
    let ihl = usize::from(*ip.first()? & 0x0f) * 4;
    if ip[0] >> 4 != 4 || ihl < 20 || ip.len() < ihl {
        return None;
    }
    let hdr_ok = csum(&ip[..ihl], 0) == 0;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let frag = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff;
    if frag != 0 || total < ihl || total > ip.len() {
        return Some((hdr_ok, None));
    }
    let seg = &ip[ihl..total];
    let proto = ip[9];
    let min = match proto {
        6 => 20,
        17 => 8,
        _ => return Some((hdr_ok, None)),
    };
    if seg.len() < min
        || (proto == 17
            && (usize::from(u16::from_be_bytes([seg[4], seg[5]])) != seg.len()
                || seg[6..8] == [0, 0]))
    {
        return Some((hdr_ok, None));
    }
    let mut pseudo = u32::from(proto) + seg.len() as u32;
    for c in ip[12..20].chunks(2) {
        pseudo += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    Some((hdr_ok, Some(csum(seg, pseudo) == 0)))
}

fn run(
    p: &mut SwFlowProcessor,
    frame: &[u8],
    in_port: u16,
    now: u64,
) -> Option<(Verdict, Vec<u8>)> {
    let mut b = [PacketBuf::new()];
    if !b[0].load(frame, PortId(in_port)) {
        return None;
    }
    let mut v = [Verdict::Drop];
    p.process(now, &mut b, &mut v);
    Some((v[0], b[0].frame().to_vec()))
}

/// Input: `mode u8 | flip offset u16 | flip mask u8 | frame`. Mode bits 0-1: the in-port;
/// bit 7: make the frame an ICMP-over-IPv4 packet from the vNF, encapsulate it, and feed the
/// ESP packet back from uplink 1, with the flip applied (a zero mask: none).
struct Input<'a> {
    in_port: u8,
    esp_round_trip: bool,
    flip: Option<(u16, u8)>,
    frame: &'a [u8],
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let mode = r.u8();
    let (at, x) = (r.u16(), r.u8());
    let i = Input {
        in_port: mode & 3,
        esp_round_trip: mode & 0x80 != 0,
        flip: (x != 0).then_some((at, x)),
        frame: r.rest(),
    };
    let mut p = instance();
    let before = checksums(i.frame);
    if !i.esp_round_trip {
        let Some((v, out)) = run(&mut p, i.frame, u16::from(i.in_port % 3), 1) else {
            return;
        };
        if let (Verdict::Output(_), Some((hdr, l4))) = (v, before) {
            let proto = i.frame.get(23).copied();
            if proto != Some(50) && out.len() == i.frame.len() {
                if let Some((hdr2, l4b)) = checksums(&out) {
                    assert!(!hdr || hdr2, "NAT broke a valid IPv4 header checksum");
                    if l4 == Some(true) {
                        assert_eq!(l4b, Some(true), "NAT broke a valid TCP/UDP checksum");
                    }
                }
            }
        }
        return;
    }
    // [Ethernet][IPv4 header, ICMP][rest], from the vNF.
    let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
    let mut ip = i.frame.to_vec();
    ip.resize(ip.len().max(20), 0);
    ip[0] = 0x45;
    ip[6] &= 0xc0; // not a later fragment
    ip[7] = 0;
    ip[9] = 1;
    f.extend_from_slice(&ip);
    let Some((Verdict::Output(PortId(2)), esp)) = run(&mut p, &f, 0, 1) else {
        return; // too long for the packet buffer
    };
    let mut esp = esp;
    let flipped = match i.flip {
        Some((at, x)) if x != 0 && usize::from(at) >= 14 + 20 && usize::from(at) < esp.len() => {
            esp[usize::from(at)] ^= x;
            true
        }
        _ => false,
    };
    if esp.len() > dpacc_spec::fastpath::MAX_FRAME {
        return;
    }
    let back = run(&mut p, &esp, 1, 2).expect("fits");
    match back {
        (Verdict::Output(PortId(1)), plain) => {
            assert!(!flipped, "a tampered ESP packet decrypted");
            assert_eq!(&plain[14..], &f[14..], "decap(encap(x)) == x");
            assert_eq!(plain[..6], [4; 6]);
        }
        (v, _) => assert!(
            flipped,
            "the untouched ESP packet was not decapsulated: {v:?}"
        ),
    }
});
