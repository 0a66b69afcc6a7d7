//! The control protocol against a software instance (through the `FastPathDriver` and
//! `FlowProcessor` traits, bytes in and out): replies with matching txids, clear errors for
//! quota, bad ports and malformed requests, PACKET_OUT, and expiry events.

use std::sync::Arc;

use dpacc_spec::fastpath::flow::{Action, FlowSpec, Match};
use dpacc_spec::fastpath::proto::{Body, ErrorCode, Message};
use dpacc_spec::fastpath::{Emit, FastPathDriver, FlowProcessor, InstanceConfig, PortId};
use dpacc_sw::flow::SwFastPath;
use dpacc_sw::SwDriver;

fn instance(max_flows: usize) -> std::sync::Arc<dyn FlowProcessor> {
    SwFastPath::new(Arc::new(SwDriver::new()))
        .create_instance(&InstanceConfig {
            name: "test".into(),
            uplinks: 2,
            max_flows,
            lanes: 1,
        })
        .unwrap()
}

fn ask(p: &dyn FlowProcessor, now: u64, txid: u32, body: Body) -> Vec<Emit> {
    let mut req = Vec::new();
    Message { txid, body }.encode(&mut req);
    let mut out = Vec::new();
    p.control(now, &req, &mut out);
    out
}

fn only_reply(out: &[Emit]) -> Message {
    assert_eq!(out.len(), 1, "{out:?}");
    let Emit::Control(p) = &out[0] else {
        panic!("{out:?}")
    };
    Message::decode(p).unwrap()
}

fn add(cookie: u64, dport: u16, actions: Vec<Action>, idle: u64) -> Body {
    Body::FlowAdd(FlowSpec {
        table: 0,
        priority: 1,
        cookie,
        m: Match {
            dport: Some(dport),
            ..Match::default()
        },
        actions,
        idle_timeout_ns: idle,
        hard_timeout_ns: 0,
        notify_expiry: true,
    })
}

#[test]
fn requests_get_replies_and_clear_errors() {
    let p = instance(1);
    let r = only_reply(&ask(&*p, 0, 1, Body::Hello));
    assert_eq!(
        r,
        Message {
            txid: 1,
            body: Body::HelloReply {
                tables: 8,
                max_flows: 1
            }
        }
    );
    let r = only_reply(&ask(
        &*p,
        0,
        2,
        add(5, 80, vec![Action::Output(PortId(2))], 100),
    ));
    assert_eq!(
        r,
        Message {
            txid: 2,
            body: Body::Ok
        }
    );
    let r = only_reply(&ask(
        &*p,
        0,
        3,
        add(6, 81, vec![Action::Output(PortId(1))], 0),
    ));
    assert_eq!(
        r.body,
        Body::Error {
            code: ErrorCode::Quota,
            msg: "flow quota exceeded (1 flows)".into()
        }
    );
    let r = only_reply(&ask(
        &*p,
        0,
        4,
        add(5, 80, vec![Action::Output(PortId(3))], 0),
    ));
    assert!(
        matches!(
            r.body,
            Body::Error {
                code: ErrorCode::BadActions,
                ..
            }
        ),
        "{r:?}"
    );
    let r = only_reply(&ask(&*p, 0, 5, Body::FlowStatsRequest { cookie: 9 }));
    assert_eq!(
        r.body,
        Body::Error {
            code: ErrorCode::NotFound,
            msg: "not found: flow with cookie 9".into()
        }
    );
    let r = only_reply(&ask(
        &*p,
        0,
        6,
        Body::PacketIn {
            in_port: PortId(0),
            table: 0,
            frame: vec![],
        },
    ));
    assert!(matches!(
        r.body,
        Body::Error {
            code: ErrorCode::Unsupported,
            ..
        }
    ));
    // Malformed bytes: an error reply carrying the txid if it was readable.
    for junk in [
        &[][..],
        &[1u8, 5, 0, 0, 0, 0, 0, 42, 0, 0, 0, 200][..],
        &[9u8; 40][..],
    ] {
        let mut out = Vec::new();
        p.control(0, junk, &mut out);
        let r = only_reply(&out);
        assert!(matches!(r.body, Body::Error { .. }), "{junk:?} -> {r:?}");
    }
    assert_eq!(p.flow_count(), 1);
}

#[test]
fn packet_out_and_expiry_events() {
    let p = instance(8);
    only_reply(&ask(
        &*p,
        0,
        1,
        add(5, 80, vec![Action::Output(PortId(2))], 1_000),
    ));
    let out = ask(
        &*p,
        0,
        2,
        Body::PacketOut {
            port: PortId(1),
            through_tables: false,
            frame: vec![7; 60],
        },
    );
    assert_eq!(
        out,
        vec![Emit::Frame {
            port: PortId(1),
            frame: vec![7; 60]
        }]
    );
    // Through the tables as if it arrived on port 1: a TCP frame to port 80 hits cookie 5.
    let mut f = vec![0u8; 60];
    f[12] = 0x08;
    f[14] = 0x45;
    f[23] = 6;
    f[36..38].copy_from_slice(&80u16.to_be_bytes());
    let out = ask(
        &*p,
        10,
        3,
        Body::PacketOut {
            port: PortId(1),
            through_tables: true,
            frame: f.clone(),
        },
    );
    assert_eq!(
        out,
        vec![Emit::Frame {
            port: PortId(2),
            frame: f
        }]
    );
    let mut ev = Vec::new();
    p.expire(500, &mut ev);
    assert!(ev.is_empty());
    p.expire(2_000, &mut ev);
    let m = only_reply(&ev);
    let Body::FlowExpired(e) = m.body else {
        panic!("{m:?}")
    };
    assert_eq!((m.txid, e.cookie, e.stats.packets), (0, 5, 1));
}

#[test]
fn flow_list_is_paged() {
    let p = instance(100);
    for c in 0..100u16 {
        only_reply(&ask(&*p, 0, 1, add(u64::from(c), c, vec![Action::Drop], 0)));
    }
    for (start, want) in [(0u32, 40usize), (40, 40), (80, 20), (100, 0)] {
        let r = only_reply(&ask(&*p, 0, 2, Body::FlowListRequest { start }));
        let Body::FlowListReply {
            total,
            start: s,
            entries,
        } = r.body
        else {
            panic!("{r:?}")
        };
        assert_eq!((total, s, entries.len()), (100, start, want));
        if want > 0 {
            assert_eq!(entries[0].cookie, u64::from(start));
        }
    }
}
