//! `FlowTable` over the AF_PACKET transport on a real kernel veth pair: the vNF end talks the
//! control protocol to a software flow-processor instance (dpacc-sw's `SwFastPath`) served on
//! the other end the way the backend serves a vNF port (control frames in, replies and
//! events out to the sender's MAC).
//!
//! Needs root and `ip` (iproute2); otherwise SKIPPED, except with CI=true.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dpacc_guest::net::{AfPacket, Event, FlowTable, FrameIo};
use dpacc_guest::Error;
use dpacc_spec::fastpath::flow::{Action, ExpiryReason, FlowSpec, Match};
use dpacc_spec::fastpath::proto::{self, ErrorCode, ETHERTYPE};
use dpacc_spec::fastpath::{Emit, FastPathDriver, InstanceConfig, PortId};
use dpacc_sw::flow::SwFastPath;
use dpacc_sw::SwDriver;

struct Veth(String);

impl Veth {
    fn create() -> Option<(Self, String, String)> {
        let id = std::process::id() % 100_000;
        let (a, b) = (format!("dpv{id}a"), format!("dpv{id}b"));
        let ok = Command::new("ip")
            .args(["link", "add", &a, "type", "veth", "peer", "name", &b])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let msg = "SKIPPED: cannot create a veth pair (needs root and iproute2)";
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{msg} (CI=true: failure)"
            );
            eprintln!("{msg}");
            return None;
        }
        for n in [&a, &b] {
            assert!(Command::new("ip")
                .args(["link", "set", n, "up"])
                .status()
                .unwrap()
                .success());
        }
        Some((Veth(a.clone()), a, b))
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

/// Serves one instance on `ifname` until `stop`: what `dpacc-backend net` does for a port.
fn serve(ifname: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<Emit>> {
    std::thread::spawn(move || {
        let mut io = AfPacket::open(&ifname, ETHERTYPE).unwrap();
        let drv = SwFastPath::new(Arc::new(SwDriver::new()));
        let inst = drv
            .create_instance(&InstanceConfig {
                name: ifname,
                uplinks: 2,
                quotas: dpacc_spec::fastpath::Quotas {
                    flows: 2,
                    ..Default::default()
                },
                lanes: 1,
            })
            .unwrap();
        let t0 = Instant::now();
        let mut frames = Vec::new();
        let mut vnf_mac = [0xff; 6];
        let mut buf = vec![0u8; 16384];
        let mut out = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let now = t0.elapsed().as_nanos() as u64;
            out.clear();
            if let Some(n) = io.recv(&mut buf, Some(Duration::from_millis(20))).unwrap() {
                if let Some((_, src, payload)) = proto::parse_frame(&buf[..n]) {
                    vnf_mac = src;
                    inst.control(now, payload, &mut out);
                }
            }
            inst.expire(now, &mut out);
            for e in out.drain(..) {
                match e {
                    Emit::Control(p) => {
                        let mut f = Vec::with_capacity(14 + p.len());
                        f.extend_from_slice(&vnf_mac);
                        f.extend_from_slice(&proto::BACKEND_MAC);
                        f.extend_from_slice(&ETHERTYPE.to_be_bytes());
                        f.extend_from_slice(&p);
                        io.send(&f).unwrap();
                    }
                    other => frames.push(other),
                }
            }
        }
        frames
    })
}

#[test]
fn flow_table_over_af_packet_on_a_veth_pair() {
    let Some((_veth, a, b)) = Veth::create() else {
        return;
    };
    let stop = Arc::new(AtomicBool::new(false));
    let server = serve(b, stop.clone());
    let io = AfPacket::open(&a, ETHERTYPE).unwrap();
    let mac = io.mac();
    let mut ft = FlowTable::new(io, mac);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(ft.hello().unwrap(), (8, 2));
    let flow = |cookie, dport, idle_ms: u64| FlowSpec {
        table: 0,
        priority: 5,
        cookie,
        m: Match {
            dport: Some(dport),
            ..Match::default()
        },
        actions: vec![Action::Output(PortId(1))],
        idle_timeout_ns: idle_ms * 1_000_000,
        hard_timeout_ns: 0,
        notify_expiry: true,
    };
    ft.add_flow(flow(1, 80, 0)).unwrap();
    ft.add_flow(flow(2, 443, 300)).unwrap();
    match ft.add_flow(flow(3, 22, 0)) {
        Err(Error::FlowRejected {
            code: ErrorCode::Quota,
            msg,
        }) => {
            assert_eq!(msg, "flow quota exceeded (2 flows)")
        }
        other => panic!("{other:?}"),
    }
    let mut bad = flow(4, 25, 0);
    bad.actions = vec![Action::Output(PortId(9))];
    assert!(matches!(
        ft.add_flow(bad),
        Err(Error::FlowRejected {
            code: ErrorCode::BadActions,
            ..
        })
    ));
    assert_eq!(ft.stats(1).unwrap().packets, 0);
    assert!(matches!(
        ft.stats(42),
        Err(Error::FlowRejected {
            code: ErrorCode::NotFound,
            ..
        })
    ));
    ft.packet_out(PortId(2), false, &[0xee; 60]).unwrap();
    // Flow 2 idles out after 300 ms: the expiry event arrives unasked.
    let ev = ft.next_event(Duration::from_secs(3)).unwrap();
    match ev {
        Some(Event::FlowExpired(e)) => assert_eq!((e.cookie, e.reason), (2, ExpiryReason::Idle)),
        other => panic!("{other:?}"),
    }
    ft.delete_flows(1).unwrap();
    assert!(matches!(
        ft.delete_flows(1),
        Err(Error::FlowRejected {
            code: ErrorCode::NotFound,
            ..
        })
    ));
    stop.store(true, Ordering::Relaxed);
    let frames = server.join().unwrap();
    assert_eq!(
        frames,
        vec![Emit::Frame {
            port: PortId(2),
            frame: vec![0xee; 60]
        }]
    );
}
