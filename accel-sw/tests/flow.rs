//! The software flow processor: tables, priorities, goto, NAT with incremental checksums
//! (checked against checksums recomputed from scratch), load-balancer buckets, counters,
//! timeouts, quotas and the ESP round trip with replay/tamper rejection.

use std::net::Ipv4Addr;
use std::sync::Arc;

use dpacc_spec::fastpath::{PacketBuf, PortId, Verdict};
use dpacc_sw::flow::checksum::{fold, ipv4_header, sum};
use dpacc_sw::flow::esp::{SaConfig, SaDir};
use dpacc_sw::flow::key::{Match, Prefix, IPPROTO_ESP, IPPROTO_TCP};
use dpacc_sw::flow::{Action, Bucket, ExpiryReason, FlowError, FlowSpec, SwFlowProcessor};
use dpacc_sw::SwDriver;
use zeroize::Zeroizing;

/// An Ethernet + IPv4 + TCP frame with correct checksums and `payload`.
fn tcp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 14 + 20 + 20];
    f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(payload);
    let ip_len = (20 + 20 + payload.len()) as u16;
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = IPPROTO_TCP;
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);
    let c = ipv4_header(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let t = &mut f[34..54];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = 0x18;
    let c = tcp_checksum(&f);
    f[50..52].copy_from_slice(&c.to_be_bytes());
    f
}

/// The TCP checksum of frame `f` computed from scratch.
fn tcp_checksum(f: &[u8]) -> u16 {
    let ip = &f[14..34];
    let seg = &f[34..];
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&ip[12..20]);
    pseudo.extend_from_slice(&[0, IPPROTO_TCP]);
    pseudo.extend_from_slice(&(seg.len() as u16).to_be_bytes());
    let mut s = seg.to_vec();
    s[16] = 0;
    s[17] = 0;
    fold(sum(&s, sum(&pseudo, 0)))
}

fn pkt(frame: &[u8], port: u16) -> PacketBuf {
    let mut p = PacketBuf::new();
    assert!(p.load(frame, PortId(port)));
    p
}

fn proc_(max: usize) -> SwFlowProcessor {
    SwFlowProcessor::new(Arc::new(SwDriver::new()), max).unwrap()
}

fn flow(table: u8, priority: u16, cookie: u64, m: Match, actions: Vec<Action>) -> FlowSpec {
    FlowSpec {
        table,
        priority,
        cookie,
        m,
        actions,
        idle_timeout_ns: 0,
        hard_timeout_ns: 0,
        notify_expiry: false,
    }
}

fn run1(p: &mut SwFlowProcessor, now: u64, b: &mut PacketBuf) -> Verdict {
    let mut v = [Verdict::Drop];
    p.process(now, std::slice::from_mut(b), &mut v);
    v[0]
}

#[test]
fn nat_rewrites_fix_ip_and_tcp_checksums_incrementally() {
    let mut fp = proc_(16);
    fp.add_flow(
        flow(
            0,
            1,
            7,
            Match {
                in_port: Some(1),
                proto: Some(IPPROTO_TCP),
                dport: Some(80),
                ..Match::default()
            },
            vec![
                Action::SetIpv4Dst(Ipv4Addr::new(10, 1, 0, 5)),
                Action::SetL4Dst(8080),
                Action::SetIpv4Src(Ipv4Addr::new(198, 51, 100, 1)),
                Action::SetEthDst([2, 0, 0, 0, 0, 9]),
                Action::Output(PortId(2)),
            ],
        ),
        0,
    )
    .unwrap();
    for payload in [&b""[..], b"GET / HTTP/1.0\r\n\r\n", b"odd"] {
        let mut b = pkt(
            &tcp4([10, 0, 0, 1], [203, 0, 113, 7], 40000, 80, payload),
            1,
        );
        assert_eq!(run1(&mut fp, 1, &mut b), Verdict::Output(PortId(2)));
        let f = b.frame();
        assert_eq!(&f[30..34], &[10, 1, 0, 5]);
        assert_eq!(&f[26..30], &[198, 51, 100, 1]);
        assert_eq!(u16::from_be_bytes([f[36], f[37]]), 8080);
        assert_eq!(&f[0..6], &[2, 0, 0, 0, 0, 9]);
        assert_eq!(u16::from_be_bytes([f[24], f[25]]), ipv4_header(&f[14..34]));
        assert_eq!(
            u16::from_be_bytes([f[50], f[51]]),
            tcp_checksum(f),
            "payload {payload:?}"
        );
    }
    let s = fp.flow_stats(7).unwrap();
    assert_eq!(s.packets, 3);
    assert!(
        fp.stats().emc_hits >= 2,
        "the exact-match cache serves repeats"
    );
}

#[test]
fn forward_only_flows_are_answered_from_the_cache_and_counted_per_packet() {
    // Two ports, a forward-only flow each (the 64 B forwarding bench's set-up): batches of
    // one flow, alternating, then the flow replaced: the cached output goes with it.
    let mut fp = proc_(16);
    let on = |port| Match {
        in_port: Some(port),
        ..Match::default()
    };
    fp.add_flow(flow(0, 1, 1, on(1), vec![Action::Output(PortId(2))]), 0)
        .unwrap();
    fp.add_flow(flow(0, 1, 2, on(2), vec![Action::Output(PortId(1))]), 0)
        .unwrap();
    let a = pkt(&tcp4([10, 0, 0, 1], [10, 0, 0, 2], 1, 2, b""), 1);
    let b = pkt(&tcp4([10, 0, 0, 2], [10, 0, 0, 1], 2, 1, b"four"), 2);
    let mut v = [Verdict::Drop; 8];
    for round in 0..3u64 {
        for (p, out) in [(&a, 2), (&b, 1)] {
            let mut batch: Vec<PacketBuf> = (0..8).map(|_| p.clone()).collect();
            fp.process(round, &mut batch, &mut v);
            assert!(
                v.iter().all(|&x| x == Verdict::Output(PortId(out))),
                "{v:?}"
            );
        }
    }
    let (sa, sb) = (fp.flow_stats(1).unwrap(), fp.flow_stats(2).unwrap());
    assert_eq!((sa.packets, sa.bytes), (24, 24 * 54));
    assert_eq!((sb.packets, sb.bytes), (24, 24 * 58));
    assert_eq!(fp.delete_flows(1).len(), 1);
    fp.add_flow(flow(0, 1, 3, on(1), vec![Action::Drop]), 0)
        .unwrap();
    let mut batch: Vec<PacketBuf> = (0..8).map(|_| a.clone()).collect();
    fp.process(4, &mut batch, &mut v);
    assert!(v.iter().all(|&x| x == Verdict::Drop), "{v:?}");
    assert_eq!(fp.flow_stats(3).unwrap().packets, 8);
}

#[test]
fn priorities_goto_misses_and_the_exact_match_cache() {
    let mut fp = proc_(16);
    let any = Match::default();
    let web = Match {
        dport: Some(80),
        ..Match::default()
    };
    let net = Match {
        dst: Some(Prefix {
            addr: "192.168.0.0".parse().unwrap(),
            len: 16,
        }),
        ..Match::default()
    };
    fp.add_flow(flow(0, 10, 1, web, vec![Action::Goto(1)]), 0)
        .unwrap();
    fp.add_flow(flow(0, 1, 2, any, vec![Action::Output(PortId(1))]), 0)
        .unwrap();
    fp.add_flow(flow(1, 5, 3, net, vec![Action::Output(PortId(2))]), 0)
        .unwrap();
    let mut a = pkt(&tcp4([1, 1, 1, 1], [192, 168, 3, 3], 1000, 80, b""), 0);
    let mut b = pkt(&tcp4([1, 1, 1, 1], [192, 168, 3, 3], 1000, 22, b""), 0);
    let mut c = pkt(&tcp4([1, 1, 1, 1], [10, 9, 9, 9], 1000, 80, b""), 0);
    for _ in 0..3 {
        assert_eq!(run1(&mut fp, 0, &mut a.clone()), Verdict::Output(PortId(2)));
        assert_eq!(run1(&mut fp, 0, &mut b.clone()), Verdict::Output(PortId(1)));
        assert_eq!(run1(&mut fp, 0, &mut c.clone()), Verdict::Miss { table: 1 });
    }
    assert_eq!(
        fp.stats().emc_hits,
        4,
        "a and b hit the cache twice each; misses are not cached"
    );
    assert_eq!(fp.flow_stats(1).unwrap().packets, 6);
    assert_eq!(fp.flow_stats(3).unwrap().packets, 3);
    // A change to the tables invalidates the cache: deleting the goto flow sends web to port 1.
    assert_eq!(fp.delete_flows(1).len(), 1);
    assert_eq!(run1(&mut fp, 0, &mut a), Verdict::Output(PortId(1)));
    assert_eq!(run1(&mut fp, 0, &mut c), Verdict::Output(PortId(1)));
    let _ = &mut b;
    // Backward gotos and unknown references are refused.
    let e = fp
        .add_flow(flow(1, 1, 9, any, vec![Action::Goto(0)]), 0)
        .unwrap_err();
    assert!(matches!(e, FlowError::BadTable(_)), "{e}");
    let e = fp
        .add_flow(flow(0, 1, 9, any, vec![Action::Group(5)]), 0)
        .unwrap_err();
    assert_eq!(e.to_string(), "not found: group 5");
}

#[test]
fn quota_timeouts_and_expiry_events() {
    let mut fp = proc_(2);
    let m = |p| Match {
        dport: Some(p),
        ..Match::default()
    };
    let mut f1 = flow(0, 1, 11, m(1), vec![Action::Output(PortId(1))]);
    f1.idle_timeout_ns = 1_000;
    f1.notify_expiry = true;
    let mut f2 = flow(0, 1, 12, m(2), vec![Action::Output(PortId(1))]);
    f2.hard_timeout_ns = 5_000;
    f2.notify_expiry = true;
    fp.add_flow(f1, 0).unwrap();
    fp.add_flow(f2, 0).unwrap();
    let e = fp
        .add_flow(flow(0, 1, 13, m(3), vec![Action::Drop]), 0)
        .unwrap_err();
    assert_eq!(e.to_string(), "flow quota exceeded (2 flows)");
    // Same table, priority and match: a replacement, not a new flow.
    let mut again = flow(0, 1, 11, m(1), vec![Action::Output(PortId(1))]);
    again.idle_timeout_ns = 1_000;
    again.notify_expiry = true;
    fp.add_flow(again, 0).unwrap();
    assert_eq!(fp.flow_count(), 2);
    // Traffic keeps flow 11 alive past its idle timeout; flow 12 dies at its hard timeout.
    let mut events = Vec::new();
    for now in (500..=4_500).step_by(500) {
        run1(&mut fp, now, &mut pkt(&tcp4([1; 4], [2; 4], 9, 1, b""), 0));
        run1(&mut fp, now, &mut pkt(&tcp4([1; 4], [2; 4], 9, 2, b""), 0));
        fp.expire(now, &mut events);
    }
    assert!(events.is_empty());
    fp.expire(5_000, &mut events);
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].cookie, events[0].reason, events[0].stats.packets),
        (12, ExpiryReason::Hard, 9)
    );
    fp.expire(5_600, &mut events);
    assert_eq!(
        (events[1].cookie, events[1].reason),
        (11, ExpiryReason::Idle)
    );
    assert_eq!(fp.flow_count(), 0);
    assert_eq!(
        run1(
            &mut fp,
            6_000,
            &mut pkt(&tcp4([1; 4], [2; 4], 9, 1, b""), 0)
        ),
        Verdict::Miss { table: 0 }
    );
}

#[test]
fn load_balancer_buckets_follow_weights_and_keep_flows_sticky() {
    let mut fp = proc_(4);
    let backends = [(1u32, [10, 0, 0, 11]), (3, [10, 0, 0, 12])];
    let buckets = backends
        .iter()
        .enumerate()
        .map(|(i, (w, ip))| Bucket {
            weight: *w,
            actions: vec![
                Action::SetIpv4Dst(Ipv4Addr::from(*ip)),
                Action::Output(PortId(i as u16 + 1)),
            ],
        })
        .collect();
    fp.add_group(1, buckets).unwrap();
    fp.add_flow(flow(0, 1, 1, Match::default(), vec![Action::Group(1)]), 0)
        .unwrap();
    let mut count = [0u32; 2];
    for sport in 0..4000u16 {
        let f = tcp4(
            [172, 16, (sport >> 8) as u8, sport as u8],
            [203, 0, 113, 1],
            1024 + sport,
            443,
            b"x",
        );
        let mut a = pkt(&f, 0);
        let v = run1(&mut fp, 0, &mut a);
        let Verdict::Output(PortId(port)) = v else {
            panic!("{v:?}")
        };
        count[usize::from(port) - 1] += 1;
        assert_eq!(&a.frame()[30..34], &backends[usize::from(port) - 1].1);
        assert_eq!(
            u16::from_be_bytes([a.frame()[50], a.frame()[51]]),
            tcp_checksum(a.frame())
        );
        // The same flow again picks the same backend.
        assert_eq!(run1(&mut fp, 0, &mut pkt(&f, 0)), v);
    }
    let share = f64::from(count[1]) / 4000.0;
    assert!(
        (0.70..0.80).contains(&share),
        "weight 3 of 4 got {share:.3} ({count:?})"
    );
}

fn sa(spi: u32, dir: SaDir) -> SaConfig {
    SaConfig {
        spi,
        key: Zeroizing::new((0u8..16).collect()),
        salt: [0xca, 0xfe, 0xba, 0xbe],
        dir,
    }
}

#[test]
fn esp_tunnel_round_trip_rejects_replays_and_tampering() {
    let (gw_a, gw_b) = (Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2));
    let mut a = proc_(4);
    let mut b = proc_(4);
    a.add_sa(sa(
        0x1001,
        SaDir::Outbound {
            src: gw_a,
            dst: gw_b,
        },
    ))
    .unwrap();
    b.add_sa(sa(0x1001, SaDir::Inbound)).unwrap();
    a.add_flow(
        flow(
            0,
            1,
            1,
            Match::default(),
            vec![Action::EspEncap(0x1001), Action::Output(PortId(2))],
        ),
        0,
    )
    .unwrap();
    let esp = Match {
        proto: Some(IPPROTO_ESP),
        spi: Some(0x1001),
        ..Match::default()
    };
    b.add_flow(
        flow(
            0,
            1,
            1,
            esp,
            vec![Action::EspDecap, Action::Output(PortId(1))],
        ),
        0,
    )
    .unwrap();
    let mut wire = Vec::new();
    for (i, payload) in [&b""[..], b"a", b"ab", b"abc", &[7u8; 1400]]
        .iter()
        .enumerate()
    {
        let inner = tcp4([10, 0, 0, 1], [10, 0, 1, 1], 5000 + i as u16, 80, payload);
        let mut p = pkt(&inner, 1);
        assert_eq!(run1(&mut a, 0, &mut p), Verdict::Output(PortId(2)));
        let f = p.frame().to_vec();
        assert_eq!(f[23], IPPROTO_ESP);
        assert_eq!(&f[26..30], &gw_a.octets());
        assert_eq!(u16::from_be_bytes([f[24], f[25]]), ipv4_header(&f[14..34]));
        assert_eq!(
            (f.len() - 14 - 20 - 16 - 16) % 4,
            0,
            "ESP payload 4-byte aligned"
        );
        assert_ne!(&f[50..60], &inner[14..24], "encrypted");
        let mut q = pkt(&f, 2);
        assert_eq!(run1(&mut b, 0, &mut q), Verdict::Output(PortId(1)));
        assert_eq!(
            q.frame(),
            &inner[..],
            "decapsulated packet equals the original"
        );
        wire.push(f);
    }
    // Replay of an accepted packet, and tampered ciphertext / ICV / header: dropped.
    assert_eq!(run1(&mut b, 0, &mut pkt(&wire[2], 2)), Verdict::Drop);
    let mut new = pkt(&tcp4([10, 0, 0, 1], [10, 0, 1, 1], 1, 1, b"z"), 1);
    run1(&mut a, 0, &mut new);
    for at in [60usize, new.len() - 1, 40] {
        let mut f = new.frame().to_vec();
        f[at] ^= 0x20;
        assert_eq!(
            run1(&mut b, 0, &mut pkt(&f, 2)),
            Verdict::Drop,
            "tamper at {at}"
        );
    }
    assert_eq!(
        run1(&mut b, 0, &mut pkt(new.frame(), 2)),
        Verdict::Output(PortId(1))
    );
    let s = b.sa_stats(0x1001).unwrap();
    assert_eq!((s.packets, s.replay_drops, s.auth_drops), (6, 1, 3));
}

/// A frame loaded the way the backend loads uplink frames for one-copy forwarding: only the
/// first HEADER_BYTES in the buffer, the rest left in `frame` (which must outlive the packet).
fn partial(frame: &[u8], port: u16) -> PacketBuf {
    let mut b = PacketBuf::new();
    // SAFETY: `frame` outlives `b` in every caller, and nothing writes it meanwhile.
    assert!(unsafe { b.load_partial(frame, PortId(port)) });
    assert!(
        b.rest().is_some(),
        "longer than HEADER_BYTES: loaded partially"
    );
    b
}

/// The frame of a partial packet as the backend forwards it: resident bytes, then the rest.
fn forwarded(p: &PacketBuf) -> Vec<u8> {
    let mut f = p.frame().to_vec();
    if let Some((rest, n)) = p.rest() {
        // SAFETY: `rest` points into a frame the test keeps alive.
        f.extend_from_slice(unsafe { std::slice::from_raw_parts(rest, n) });
    }
    f
}

/// Partial frames (headers resident, the rest in the source buffer) give the same results as
/// whole ones: NAT rewrites only the resident headers and leaves the rest to the one copy;
/// ESP encapsulation and decapsulation load the rest first.
#[test]
fn partial_frames_give_the_same_results_as_whole_ones() {
    let inner = tcp4([10, 0, 0, 1], [10, 0, 1, 1], 4000, 80, &[0x5a; 1400]);
    // NAT.
    let mut nat = proc_(4);
    nat.add_flow(
        flow(
            0,
            1,
            1,
            Match::default(),
            vec![
                Action::SetIpv4Dst(Ipv4Addr::new(10, 9, 9, 9)),
                Action::Output(PortId(2)),
            ],
        ),
        0,
    )
    .unwrap();
    let mut whole = pkt(&inner, 1);
    let mut part = partial(&inner, 1);
    assert_eq!(run1(&mut nat, 0, &mut whole), Verdict::Output(PortId(2)));
    assert_eq!(run1(&mut nat, 0, &mut part), Verdict::Output(PortId(2)));
    assert!(!part.is_whole(), "NAT needs no more than the headers");
    assert_eq!(part.len(), inner.len());
    assert_eq!(forwarded(&part), whole.frame());
    let f = forwarded(&part);
    assert_eq!(&f[30..34], &[10, 9, 9, 9]);
    assert_eq!(
        u16::from_be_bytes([f[50], f[51]]),
        tcp_checksum(&f),
        "TCP checksum"
    );
    // ESP: two identical gateways, one fed whole frames, one partial ones.
    let gw = |p: &mut SwFlowProcessor| {
        p.add_sa(sa(
            7,
            SaDir::Outbound {
                src: Ipv4Addr::new(192, 0, 2, 1),
                dst: Ipv4Addr::new(192, 0, 2, 2),
            },
        ))
        .unwrap();
        p.add_flow(
            flow(
                0,
                1,
                1,
                Match::default(),
                vec![Action::EspEncap(7), Action::Output(PortId(2))],
            ),
            0,
        )
        .unwrap();
    };
    let (mut a, mut b) = (proc_(4), proc_(4));
    gw(&mut a);
    gw(&mut b);
    let mut w = pkt(&inner, 1);
    let mut p = partial(&inner, 1);
    assert_eq!(run1(&mut a, 0, &mut w), Verdict::Output(PortId(2)));
    assert_eq!(run1(&mut b, 0, &mut p), Verdict::Output(PortId(2)));
    assert!(p.is_whole());
    assert_eq!(p.frame(), w.frame());
    // Decapsulation of a partial ESP frame.
    let wire = w.frame().to_vec();
    let mut dec = proc_(4);
    dec.add_sa(sa(7, SaDir::Inbound)).unwrap();
    dec.add_flow(
        flow(
            0,
            1,
            1,
            Match::default(),
            vec![Action::EspDecap, Action::Output(PortId(1))],
        ),
        0,
    )
    .unwrap();
    let mut q = partial(&wire, 2);
    assert_eq!(run1(&mut dec, 0, &mut q), Verdict::Output(PortId(1)));
    assert_eq!(q.frame(), &inner[..]);
}

/// Two lanes of one instance on two threads (what two queue-pair workers do): the flows and
/// SAs are shared, the counters are summed over the lanes, idle expiry sees traffic on
/// either lane, the outbound sequence numbers of the two lanes never repeat, and a packet
/// accepted on one lane is refused as a replay on the other.
#[test]
fn lanes_share_flows_and_sas_and_sum_their_counters() {
    use dpacc_sw::flow::SwInstance;
    let (gw_a, gw_b) = (Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2));
    let enc = SwInstance::new(Arc::new(SwDriver::new()), 8, 2).unwrap();
    let dec = SwInstance::new(Arc::new(SwDriver::new()), 8, 2).unwrap();
    enc.add_sa(sa(
        7,
        SaDir::Outbound {
            src: gw_a,
            dst: gw_b,
        },
    ))
    .unwrap();
    dec.add_sa(sa(7, SaDir::Inbound)).unwrap();
    let mut idle = flow(
        0,
        1,
        1,
        Match::default(),
        vec![Action::EspEncap(7), Action::Output(PortId(2))],
    );
    idle.idle_timeout_ns = 1_000_000;
    idle.notify_expiry = true;
    enc.add_flow(idle, 0).unwrap();
    dec.add_flow(
        flow(
            0,
            1,
            2,
            Match::default(),
            vec![Action::EspDecap, Action::Output(PortId(1))],
        ),
        0,
    )
    .unwrap();
    // 500 packets per lane, encapsulated on two threads at once.
    let per_lane = 500;
    let threads: Vec<_> = (0..2)
        .map(|i| {
            let mut lane = enc.lane(i).unwrap().expect("lane");
            std::thread::spawn(move || {
                let f = tcp4(
                    [10, 0, 0, 1],
                    [10, 0, 1, 1],
                    1000 + i as u16,
                    80,
                    &[i as u8; 100],
                );
                let mut out = Vec::new();
                for _ in 0..per_lane {
                    let mut p = [pkt(&f, 1)];
                    let mut v = [Verdict::Drop];
                    lane.process(10, &mut p, &mut v);
                    assert_eq!(v[0], Verdict::Output(PortId(2)));
                    out.push(p[0].frame().to_vec());
                }
                out
            })
        })
        .collect();
    let sealed: Vec<Vec<Vec<u8>>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(
        enc.lane(0).unwrap().is_some(),
        "a dropped lane can be taken again"
    );
    assert!(enc.lane(2).unwrap().is_none(), "only two lanes");
    let s = enc.flow_stats(1).unwrap();
    assert_eq!(s.packets, 2 * per_lane, "counters summed over the lanes");
    assert_eq!(enc.sa_stats(7).unwrap().packets, 2 * per_lane);
    // Sequence numbers (ESP header after L2 + outer IP + SPI): each used once, 1..=1000.
    let mut seqs: Vec<u32> = sealed
        .iter()
        .flatten()
        .map(|f| u32::from_be_bytes([f[38], f[39], f[40], f[41]]))
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=2 * per_lane as u32).collect::<Vec<_>>());
    // Decapsulate the same packets on both decap lanes at once: every one is accepted by
    // exactly one lane (the newest 64 are in the window; all arrive in order per lane).
    let all: Vec<Vec<u8>> = sealed.into_iter().flatten().collect();
    let all = Arc::new(all);
    let threads: Vec<_> = (0..2)
        .map(|i| {
            let mut lane = dec.lane(i).unwrap().expect("lane");
            let all = all.clone();
            std::thread::spawn(move || {
                let mut ok = 0;
                for f in all.iter() {
                    let mut p = [pkt(f, 2)];
                    let mut v = [Verdict::Drop];
                    lane.process(10, &mut p, &mut v);
                    ok += u32::from(v[0] == Verdict::Output(PortId(1)));
                }
                ok
            })
        })
        .collect();
    let accepted: u32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let st = dec.sa_stats(7).unwrap();
    assert_eq!(u64::from(accepted), st.packets);
    assert!(
        accepted <= 2 * per_lane as u32,
        "a packet accepted twice: {accepted}"
    );
    assert_eq!(st.auth_drops, 0);
    assert_eq!(st.packets + st.replay_drops, 4 * per_lane);
    // Idle expiry sees lane 1's traffic: used at t = 10 on both lanes; touch it on lane 1
    // only at t = 900 000; it must still live at 1 500 000 and die at 1 900 001.
    let mut l1 = enc.lane(1).unwrap().expect("lane 1");
    let f = tcp4([10, 0, 0, 1], [10, 0, 1, 1], 5, 80, b"x");
    let mut v = [Verdict::Drop];
    l1.process(900_000, &mut [pkt(&f, 1)], &mut v);
    let mut ev = Vec::new();
    enc.expire(1_500_000, &mut ev);
    assert!(ev.is_empty(), "lane 1 used it 600 us ago");
    enc.expire(1_900_001, &mut ev);
    assert_eq!(
        (ev.len(), ev[0].cookie, ev[0].stats.packets),
        (1, 1, 2 * per_lane + 1)
    );
}

/// What a panicking vNF worker or a vNF that stayed away does: clearing the shared instance
/// while its lanes forward on other threads. The clear waits for the lanes' batches, the lanes
/// find the instance empty from their next batch (misses), and the usage is back to empty.
#[test]
fn clearing_a_shared_instance_under_running_lanes() {
    use dpacc_sw::flow::SwInstance;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let inst = SwInstance::new(Arc::new(SwDriver::new()), 8, 2).unwrap();
    let empty = inst.usage();
    inst.add_flow(
        flow(
            0,
            1,
            1,
            Match::default(),
            vec![
                Action::SetL4Dst(8080),
                Action::SetL4Src(1),
                Action::Output(PortId(2)),
            ],
        ),
        0,
    )
    .unwrap();
    assert!(inst.usage().memory > empty.memory);
    let (stop, cleared) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let misses_after = Arc::new(AtomicU64::new(0));
    let outputs: Arc<[AtomicU64; 2]> = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let threads: Vec<_> = (0..2)
        .map(|i| {
            let mut lane = inst.lane(i).unwrap().expect("lane");
            let (stop, cleared, misses_after, outputs) = (
                stop.clone(),
                cleared.clone(),
                misses_after.clone(),
                outputs.clone(),
            );
            std::thread::spawn(move || {
                let f = tcp4([10, 0, 0, 1], [10, 0, 1, 1], 1000, 80, &[1; 64]);
                while !stop.load(Ordering::Relaxed) {
                    let was_cleared = cleared.load(Ordering::Acquire);
                    let mut p = [pkt(&f, 1)];
                    let mut v = [Verdict::Drop];
                    lane.process(10, &mut p, &mut v);
                    match v[0] {
                        Verdict::Output(_) => {
                            assert!(!was_cleared, "a flow survived the clear");
                            outputs[i].fetch_add(1, Ordering::Relaxed);
                        }
                        // (A miss before the flag: the clear came between the two.)
                        Verdict::Miss { .. } => {
                            if was_cleared {
                                misses_after.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Verdict::Drop => panic!("dropped"),
                    }
                }
            })
        })
        .collect();
    // Both lanes forward through the flow before it goes.
    while outputs.iter().any(|o| o.load(Ordering::Relaxed) < 100) {
        std::thread::yield_now();
    }
    inst.clear();
    cleared.store(true, Ordering::Release);
    while misses_after.load(Ordering::Relaxed) < 200 {
        std::thread::yield_now();
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(inst.flow_count(), 0);
    assert_eq!(inst.usage(), empty, "everything given back");
    // And usable again.
    inst.add_flow(
        flow(0, 1, 2, Match::default(), vec![Action::Output(PortId(1))]),
        0,
    )
    .unwrap();
    assert_eq!(inst.usage().flows, 1);
}
