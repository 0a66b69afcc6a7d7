//! vhost-user uplinks: a vNF port of `dpacc-backend net` (in-process) whose uplinks are two
//! more vhost-user virtio-net ports. The peers on those ports are the guest library's
//! virtio-user `VirtioNetPort` and, as an independent implementation, DPDK's virtio-user PMD in
//! `dpdk-testpmd` (Debian's dpdk-dev; SKIPPED without it or hugepages, a failure with CI=true).

mod common;

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::netns::flow;
use common::vhost_net::{parse_port_stats, testpmd_or_skip, VhostNet};
use dpacc::guest::net::{Event, FlowTable, FrameIo, NetOptions, VirtioNetPort};
use dpacc::spec::fastpath::flow::{Action, Bucket, Match, Prefix};
use dpacc::spec::fastpath::PortId;

const WAIT: Option<Duration> = Some(Duration::from_secs(5));

fn vnf(net: &VhostNet) -> FlowTable<VirtioNetPort> {
    let port = VirtioNetPort::connect(&net.vnf, NetOptions::default()).unwrap();
    let mut ft = FlowTable::new(port, [0x02, 0, 0, 0, 0x0f, 0x01]);
    ft.hello().unwrap();
    ft
}

/// A peer on uplink `k`: with MRG_RXBUF it posts 512-byte RX buffers (frames span several),
/// without it 2 KiB ones.
fn peer(net: &VhostNet, k: usize, mrg: bool) -> VirtioNetPort {
    VirtioNetPort::connect(
        &net.uplinks[k],
        NetOptions {
            mrg_rxbuf: mrg,
            rx_buf: if mrg { 512 } else { 2048 },
            ..NetOptions::default()
        },
    )
    .unwrap()
}

/// RFC 1071 one's-complement sum (written here, independent of the fast path's incremental
/// updates).
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

/// An Ethernet/IPv4/UDP frame with correct checksums and a payload tagged with `seq`.
fn udp(src: [u8; 4], dst: [u8; 4], sport: u16, seq: u32, payload_len: usize) -> Vec<u8> {
    let mut payload: Vec<u8> = seq.to_be_bytes().to_vec();
    payload.extend((0..payload_len.saturating_sub(4)).map(|i| (i as u32 * 31 + seq) as u8));
    let ulen = 8 + payload.len();
    let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00];
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&((20 + ulen) as u16).to_be_bytes());
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let c = csum(&ip, 0);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&9000u16.to_be_bytes());
    u.extend_from_slice(&(ulen as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(&payload);
    let c = csum(&u, pseudo(&src, &dst, ulen));
    u[6..8].copy_from_slice(&c.to_be_bytes());
    f.extend(ip);
    f.extend(u);
    f
}

fn pseudo(src: &[u8], dst: &[u8], ulen: usize) -> u32 {
    let mut s = 17 + ulen as u32;
    for c in src.chunks(2).chain(dst.chunks(2)) {
        s += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    s
}

/// Checks the IPv4 header and UDP checksums of `f` from scratch.
fn checksums_ok(f: &[u8]) -> bool {
    let ip = &f[14..34];
    let u = &f[34..];
    csum(ip, 0) == 0 && csum(u, pseudo(&ip[12..16], &ip[16..20], u.len())) == 0
}

fn recv(p: &mut VirtioNetPort) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 10_000];
    let n = p.recv(&mut buf, WAIT).unwrap()?;
    buf.truncate(n);
    Some(buf)
}

fn no_frame(p: &mut VirtioNetPort) -> bool {
    let mut buf = vec![0u8; 10_000];
    p.recv(&mut buf, Some(Duration::from_millis(300)))
        .unwrap()
        .is_none()
}

#[test]
fn frames_cross_between_two_vhost_user_uplinks_with_nat_and_reconnects() {
    let net = VhostNet::start("fwd", 2, 64);
    let mut ft = vnf(&net);
    let mut a = peer(&net, 0, true);
    let mut b = peer(&net, 1, false);
    let (ip_a, ip_b, vip) = ([10, 1, 0, 1], [10, 2, 0, 1], Ipv4Addr::new(192, 0, 2, 7));

    // The first frame from A misses and reaches the vNF with the uplink it came in on.
    let first = udp(ip_a, ip_b, 4000, 0, 60);
    a.send(&first).unwrap();
    match ft.next_event(Duration::from_secs(5)).unwrap() {
        Some(Event::PacketIn { in_port, frame, .. }) => {
            assert_eq!(in_port, PortId(1));
            assert_eq!(frame, first);
        }
        e => panic!("expected a PACKET_IN, got {e:?}"),
    }
    let m = |p: u16| Match {
        in_port: Some(p),
        ..Match::default()
    };
    ft.add_flow(flow(1, m(1), vec![Action::Output(PortId(2))]))
        .unwrap();
    ft.add_flow(flow(
        2,
        m(2),
        vec![Action::SetIpv4Src(vip), Action::Output(PortId(1))],
    ))
    .unwrap();

    // A -> B unchanged, in order, small and large (B posts 2 KiB buffers, no MRG_RXBUF).
    let sizes = [18, 100, 1400, 1990];
    for seq in 1..=100u32 {
        let f = udp(ip_a, ip_b, 4000, seq, sizes[seq as usize % 4]);
        a.send(&f).unwrap();
        assert_eq!(recv(&mut b).as_deref(), Some(&f[..]), "frame {seq}");
    }
    // B -> A rewritten, checksums right when recomputed from scratch; A's buffers are 512
    // bytes, so larger frames span several (MRG_RXBUF).
    for seq in 1..=50u32 {
        let f = udp(ip_b, ip_a, 5000, seq, sizes[seq as usize % 4]);
        b.send(&f).unwrap();
        let got = recv(&mut a).expect("rewritten frame");
        assert_eq!(got.len(), f.len());
        assert_eq!(&got[26..30], &vip.octets());
        assert_eq!(&got[42..], &f[42..], "payload {seq}");
        assert!(checksums_ok(&got), "checksums of frame {seq}");
    }
    let s1 = ft.stats(1).unwrap();
    let s2 = ft.stats(2).unwrap();
    assert_eq!(s1.packets, 100);
    assert_eq!(s2.packets, 50);

    // The vNF leaves: its flows keep forwarding.
    drop(ft);
    let f = udp(ip_a, ip_b, 4000, 1000, 64);
    a.send(&f).unwrap();
    assert_eq!(recv(&mut b).as_deref(), Some(&f[..]));

    // B leaves: frames for it are dropped; B comes back and gets the next ones.
    drop(b);
    for seq in 2000..2010 {
        a.send(&udp(ip_a, ip_b, 4000, seq, 64)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    let mut b = peer(&net, 1, true);
    assert!(no_frame(&mut b), "a frame sent while B was away was kept");
    let f = udp(ip_a, ip_b, 4000, 3000, 1400);
    a.send(&f).unwrap();
    assert_eq!(recv(&mut b).as_deref(), Some(&f[..]));

    // The vNF comes back to the same instance: its flows and counters are there.
    let mut ft = vnf(&net);
    assert_eq!(ft.stats(1).unwrap().packets, 100 + 1 + 10 + 1);
    // Control frames sent by an uplink peer are data, not control: they miss (no flow for
    // port 1's EtherType 0x88B5 besides the in_port one, which forwards them to B).
    let mut ctl = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x88, 0xb5];
    ctl.extend_from_slice(&[1, 3, 0, 0, 0, 0, 0, 9, 0, 0]);
    ctl.resize(60, 0);
    a.send(&ctl).unwrap();
    let got = recv(&mut b).expect("forwarded control-typed frame");
    assert_eq!(got, ctl);
    assert_eq!(
        ft.list().unwrap().len(),
        2,
        "an uplink changed the instance"
    );
}

/// DPDK's virtio-user PMD (in `dpdk-testpmd`, io forwarding with `start tx_first`) on both
/// uplinks: every frame it sends on one port must be counted once by the flow into the other
/// and come back to it, with no frame lost while both sides run.
#[test]
fn dpdk_testpmd_virtio_user_loops_frames_through_two_vhost_user_uplinks() {
    let Some(testpmd) = testpmd_or_skip() else {
        return;
    };
    let net = VhostNet::start("pmd", 2, 64);
    let mut ft = vnf(&net);
    for (cookie, from, to) in [(1, 1, 2), (2, 2, 1)] {
        ft.add_flow(flow(
            cookie,
            Match {
                in_port: Some(from),
                ..Match::default()
            },
            vec![Action::Output(PortId(to))],
        ))
        .unwrap();
    }
    let mut child = Command::new(testpmd)
        .args(["-l", "0,1", "--main-lcore", "1", "-m", "256", "--no-pci"])
        .args(["--single-file-segments", "--in-memory"])
        .arg(format!(
            "--vdev=net_virtio_user0,path={}",
            net.uplinks[0].display()
        ))
        .arg(format!(
            "--vdev=net_virtio_user1,path={}",
            net.uplinks[1].display()
        ))
        .args(["--", "-i", "--forward-mode=io", "--nb-cores=1"])
        .args(["--total-num-mbufs=8192", "--txd=512", "--rxd=512"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("dpdk-testpmd");
    let mut stdin = child.stdin.take().unwrap();
    let script = "start tx_first\n";
    std::thread::sleep(Duration::from_secs(3));
    stdin.write_all(script.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    stdin.write_all(b"stop\n").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    stdin.write_all(b"show port stats all\nquit\n").unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let tail = &text[text.rfind("show port stats all").unwrap_or(0)..];
    let stats = parse_port_stats(tail);
    assert_eq!(
        stats.len(),
        2,
        "testpmd output:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (s1, s2) = (ft.stats(1).unwrap(), ft.stats(2).unwrap());
    eprintln!(
        "testpmd ports (rx, tx): {stats:?}; flows: {} {}",
        s1.packets, s2.packets
    );
    // Everything testpmd sent on a port entered that uplink and hit its flow, once.
    assert_eq!(s1.packets, stats[0].1, "port 0 tx vs flow 1");
    assert_eq!(s2.packets, stats[1].1, "port 1 tx vs flow 2");
    // What testpmd received on a port came from the other uplink's flow; the loop ran.
    assert!(stats[1].0 <= s1.packets && stats[0].0 <= s2.packets);
    assert!(stats[0].0 + stats[1].0 > 10_000, "{stats:?}");
}

/// Server load balancing through the device: a select group with weights 1:2:1 rewrites the
/// destination to one of three servers (two behind uplink 2, one behind uplink 3). Each
/// connection (5-tuple) sticks to one server; the split follows the weights; the rewritten
/// frames carry correct checksums; the group flow's counters see every frame; an idle flow
/// expires with an event to the vNF.
#[test]
fn a_select_group_spreads_connections_over_servers_by_weight() {
    let net = VhostNet::start("lb", 3, 64);
    let mut ft = vnf(&net);
    let mut client = peer(&net, 0, true);
    let mut left = peer(&net, 1, true);
    let mut right = peer(&net, 2, true);
    let servers = [
        Ipv4Addr::new(10, 7, 0, 11),
        Ipv4Addr::new(10, 7, 0, 12),
        Ipv4Addr::new(10, 7, 0, 13),
    ];
    let bucket = |w: u32, ip: Ipv4Addr, port: u16| Bucket {
        weight: w,
        actions: vec![Action::SetIpv4Dst(ip), Action::Output(PortId(port))],
    };
    ft.add_group(
        7,
        vec![
            bucket(1, servers[0], 2),
            bucket(2, servers[1], 2),
            bucket(1, servers[2], 3),
        ],
    )
    .unwrap();
    let vip = [192, 0, 2, 80];
    let mut lb = flow(
        1,
        Match {
            in_port: Some(1),
            dst: Some(Prefix {
                addr: Ipv4Addr::from(vip).into(),
                len: 32,
            }),
            ..Match::default()
        },
        vec![Action::Group(7)],
    );
    lb.idle_timeout_ns = 300_000_000;
    lb.notify_expiry = true;
    ft.add_flow(lb).unwrap();

    let conns = 1200u16;
    let mut chosen = vec![usize::MAX; usize::from(conns)];
    let mut count = [0usize; 3];
    for round in 0..2 {
        for c in 0..conns {
            let f = udp(
                [10, 1, (c >> 8) as u8, c as u8],
                vip,
                20_000 + c,
                u32::from(c),
                32,
            );
            client.send(&f).unwrap();
            let (got, side) = loop {
                let mut buf = vec![0u8; 2048];
                if let Some(n) = left.recv(&mut buf, Some(Duration::ZERO)).unwrap() {
                    buf.truncate(n);
                    break (buf, 2);
                }
                if let Some(n) = right.recv(&mut buf, Some(Duration::ZERO)).unwrap() {
                    buf.truncate(n);
                    break (buf, 3);
                }
                std::thread::yield_now();
            };
            let dst = Ipv4Addr::new(got[30], got[31], got[32], got[33]);
            let s = servers
                .iter()
                .position(|&x| x == dst)
                .expect("a server address");
            assert_eq!(
                side,
                if s == 2 { 3 } else { 2 },
                "server {s} on the wrong uplink"
            );
            assert!(checksums_ok(&got), "checksums after the rewrite");
            assert_eq!(&got[42..], &f[42..]);
            let prev = &mut chosen[usize::from(c)];
            if round == 0 {
                *prev = s;
                count[s] += 1;
            } else {
                assert_eq!(*prev, s, "connection {c} moved to another server");
            }
        }
    }
    eprintln!("connections per server (weights 1:2:1): {count:?}");
    // Expected 300 / 600 / 300; a fair hash stays well within +-20% (binomial sd ~ 15-17).
    let want = [300.0, 600.0, 300.0];
    for (got, want) in count.iter().zip(want) {
        let r = *got as f64 / want;
        assert!((0.8..=1.2).contains(&r), "{count:?} is not 1:2:1");
    }
    assert_eq!(ft.stats(1).unwrap().packets, 2 * u64::from(conns));
    // No more traffic: the flow expires and the vNF hears of it.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left_ = deadline.saturating_duration_since(std::time::Instant::now());
        assert!(!left_.is_zero(), "no expiry event");
        match ft.next_event(left_).unwrap() {
            Some(Event::FlowExpired(e)) => {
                assert_eq!(e.cookie, 1);
                assert_eq!(e.stats.packets, 2 * u64::from(conns));
                break;
            }
            _ => continue,
        }
    }
}

/// ESP where frames land: between vhost-user uplinks the fast path seals (encap, after NAT on
/// the inner headers) or opens (decap) each frame as its one copy: into one RX buffer straight
/// from the packet buffer's headers and the source's TX buffer (out of place), or, with
/// MRG_RXBUF, copied into several buffers and finished in place across them (a decapsulated
/// frame that needs fewer buffers gives the rest back). Every encapsulated frame must be byte
/// for byte what the in-memory path (the one scapy checks in accel-sw/tests/esp_scapy.rs)
/// makes of the same frame with the same sequence number; every decapsulated frame must be
/// the original after NAT; a replayed or tampered ESP frame never arrives.
#[test]
fn esp_sealed_and_opened_where_frames_land_matches_the_in_memory_path() {
    use dpacc::spec::fastpath::proto::{SaDirection, SaSpec};
    use dpacc::spec::fastpath::{PacketBuf, Verdict};
    use dpacc::sw::flow::esp::{SaConfig, SaDir};
    use dpacc::sw::flow::{Action as SwAction, SwFlowProcessor};
    let key: Vec<u8> = (0x40u8..0x50).collect();
    let salt = [9, 8, 7, 6];
    let (gw_a, gw_b) = (
        Ipv4Addr::new(198, 51, 100, 1),
        Ipv4Addr::new(198, 51, 100, 2),
    );
    for (mrg_a, mrg_b) in [(true, false), (false, true)] {
        let net = VhostNet::start(if mrg_a { "espa" } else { "espb" }, 2, 64);
        let mut ft = vnf(&net);
        for dir in [
            SaDirection::Outbound {
                src: gw_a,
                dst: gw_b,
            },
            SaDirection::Inbound,
        ] {
            ft.add_sa(SaSpec {
                spi: 0x300,
                key: key.clone(),
                salt,
                dir,
            })
            .unwrap();
        }
        let ip = Match {
            in_port: Some(1),
            eth_type: Some(0x0800),
            ..Match::default()
        };
        let esp = Match {
            in_port: Some(2),
            proto: Some(50),
            ..Match::default()
        };
        let nat = Ipv4Addr::new(10, 4, 0, 9);
        ft.add_flow(flow(
            1,
            ip,
            vec![
                Action::SetIpv4Dst(nat),
                Action::EspEncap(0x300),
                Action::Output(PortId(2)),
            ],
        ))
        .unwrap();
        ft.add_flow(flow(
            2,
            esp,
            vec![Action::EspDecap, Action::Output(PortId(1))],
        ))
        .unwrap();
        // The reference: the in-memory path with the same SA; and NAT alone (what decap
        // gives back).
        let spec = |actions| dpacc::sw::flow::FlowSpec {
            table: 0,
            priority: 1,
            cookie: 1,
            m: Match::default(),
            actions,
            idle_timeout_ns: 0,
            hard_timeout_ns: 0,
            notify_expiry: false,
        };
        let mut natted =
            SwFlowProcessor::new(std::sync::Arc::new(dpacc::sw::SwDriver::new()), 4).unwrap();
        natted
            .add_flow(
                spec(vec![SwAction::SetIpv4Dst(nat), SwAction::Output(PortId(2))]),
                0,
            )
            .unwrap();
        let mut reference =
            SwFlowProcessor::new(std::sync::Arc::new(dpacc::sw::SwDriver::new()), 4).unwrap();
        reference
            .add_sa(SaConfig {
                spi: 0x300,
                key: zeroize::Zeroizing::new(key.clone()),
                salt,
                dir: SaDir::Outbound {
                    src: gw_a,
                    dst: gw_b,
                },
            })
            .unwrap();
        reference
            .add_flow(
                spec(vec![
                    SwAction::SetIpv4Dst(nat),
                    SwAction::EspEncap(0x300),
                    SwAction::Output(PortId(2)),
                ]),
                0,
            )
            .unwrap();
        let mut a = peer(&net, 0, mrg_a);
        let mut b = peer(&net, 1, mrg_b);
        let sizes = [60usize, 127, 128, 129, 200, 1000, 1400, 1500];
        let mut sealed = Vec::new();
        for (n, &size) in sizes.iter().enumerate() {
            let f = udp([10, 3, 0, 1], [10, 4, 0, 1], 5000, n as u32, size - 42);
            assert_eq!(f.len(), size);
            a.send(&f).unwrap();
            let got = recv(&mut b).unwrap_or_else(|| panic!("no ESP frame for {size} B"));
            let mut p = [PacketBuf::new()];
            p[0].load(&f, PortId(1));
            let mut v = [Verdict::Drop];
            reference.process(0, &mut p, &mut v);
            assert_eq!(v[0], Verdict::Output(PortId(2)));
            assert!(
                got == p[0].frame(),
                "{size} B (mrg {mrg_a}/{mrg_b}): the ESP frame differs from the in-memory path's"
            );
            p[0].load(&f, PortId(1));
            natted.process(0, &mut p, &mut v);
            assert!(checksums_ok(p[0].frame()));
            sealed.push((p[0].frame().to_vec(), got));
        }
        for (orig, esp) in &sealed {
            b.send(esp).unwrap();
            let back = recv(&mut a).expect("decapsulated frame");
            assert!(back == *orig, "{} B: decap is not the original", orig.len());
        }
        // A replay and a tampered frame are dropped.
        b.send(&sealed[6].1).unwrap();
        assert!(no_frame(&mut a), "a replayed ESP frame came through");
        a.send(&udp([10, 3, 0, 1], [10, 4, 0, 1], 5000, 99, 300))
            .unwrap();
        let mut t = recv(&mut b).expect("one more ESP frame");
        let at = t.len() - 20;
        t[at] ^= 1;
        b.send(&t).unwrap();
        assert!(no_frame(&mut a), "a tampered ESP frame came through");
        assert_eq!(ft.stats(1).unwrap().packets, sizes.len() as u64 + 1);
        assert_eq!(ft.stats(2).unwrap().packets, sizes.len() as u64 + 2);
    }
}
