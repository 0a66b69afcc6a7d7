//! The net device's data path per backend worker: frames enter a vNF port's vhost-user uplink
//! 1, hit a flow (plain forward, or ESP encapsulation with AES-128-GCM) and leave by uplink 2,
//! all through real vhost-user sockets and virtqueues (in-process backend, guest-library
//! virtio-user peers as the generator). A criterion iteration is one batch of 32 frames sent
//! and all 32 received.
//!
//! `cargo bench --bench net_path -- --quick`. The comparison with DPDK's testpmd between two
//! vhost-user ports is `benches/peers.sh`.

#[path = "../tests/common/vhost_net.rs"]
#[allow(dead_code)]
mod vhost_net;

use std::net::Ipv4Addr;
use std::time::Duration;

use criterion::{Criterion, Throughput};
use dpacc::guest::net::{FlowTable, FrameIo, NetOptions, VirtioNetPort};
use dpacc::spec::fastpath::flow::{Action, FlowSpec, Match};
use dpacc::spec::fastpath::proto::{SaDirection, SaSpec};
use dpacc::spec::fastpath::PortId;
use vhost_net::VhostNet;

const BATCH: usize = 32;

fn frame(size: usize) -> Vec<u8> {
    let mut f = vec![0u8; size];
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f[14] = 0x45;
    f[16..18].copy_from_slice(&((size - 14) as u16).to_be_bytes());
    f[22] = 64;
    f[23] = 17;
    f[26..30].copy_from_slice(&[10, 0, 0, 1]);
    f[30..34].copy_from_slice(&[10, 0, 0, 2]);
    f[38..40].copy_from_slice(&((size - 34) as u16).to_be_bytes());
    f
}

fn bench(c: &mut Criterion, name: &str, size: usize, esp: bool) {
    let net = VhostNet::start(name, 2, 64);
    let port = VirtioNetPort::connect(&net.vnf, NetOptions::default()).unwrap();
    let mut ft = FlowTable::new(port, [2, 0, 0, 0, 0, 9]);
    let mut actions = vec![];
    if esp {
        ft.add_sa(SaSpec {
            spi: 0x100,
            key: vec![7; 16],
            salt: [1, 2, 3, 4],
            dir: SaDirection::Outbound {
                src: Ipv4Addr::new(192, 0, 2, 1),
                dst: Ipv4Addr::new(192, 0, 2, 2),
            },
        })
        .unwrap();
        actions.push(Action::EspEncap(0x100));
    }
    actions.push(Action::Output(PortId(2)));
    ft.add_flow(FlowSpec {
        table: 0,
        priority: 1,
        cookie: 1,
        m: Match {
            in_port: Some(1),
            ..Match::default()
        },
        actions,
        idle_timeout_ns: 0,
        hard_timeout_ns: 0,
        notify_expiry: false,
    })
    .unwrap();
    let mut tx = VirtioNetPort::connect(&net.uplinks[0], NetOptions::default()).unwrap();
    let mut rx = VirtioNetPort::connect(&net.uplinks[1], NetOptions::default()).unwrap();
    let f = frame(size);
    let frames: Vec<&[u8]> = vec![&f[..]; BATCH];
    let mut buf = vec![0u8; 2048];
    let mut g = c.benchmark_group("net_path");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function(name, |b| {
        b.iter(|| {
            let mut sent = 0;
            while sent < BATCH {
                sent += tx.send_batch(&frames[sent..]).unwrap();
            }
            for _ in 0..BATCH {
                rx.recv(&mut buf, Some(Duration::from_secs(5)))
                    .unwrap()
                    .expect("a frame lost in the bench");
            }
        })
    });
    g.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c, "uplink_to_uplink_64B", 64, false);
    bench(&mut c, "uplink_to_uplink_esp_1400B", 1400, true);
    c.final_summary();
}
