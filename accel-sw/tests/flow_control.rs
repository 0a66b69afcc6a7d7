//! The control protocol against a software instance (through the `FastPathDriver` and
//! `FlowProcessor` traits, bytes in and out): replies with matching txids, clear errors for
//! quota, bad ports and malformed requests, PACKET_OUT, and expiry events.

use std::sync::Arc;

use dpacc_spec::fastpath::flow::{Action, FlowSpec, Match};
use dpacc_spec::fastpath::proto::{Body, ErrorCode, Message, SaDirection, SaSpec};
use dpacc_spec::fastpath::{Emit, FastPathDriver, FlowProcessor, InstanceConfig, PortId};
use dpacc_sw::flow::SwFastPath;
use dpacc_sw::SwDriver;

fn instance(max_flows: usize) -> std::sync::Arc<dyn FlowProcessor> {
    SwFastPath::new(Arc::new(SwDriver::new()))
        .create_instance(&InstanceConfig {
            name: "test".into(),
            uplinks: 2,
            quotas: dpacc_spec::fastpath::Quotas {
                flows: max_flows,
                ..Default::default()
            },
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
    let Body::HelloReply {
        tables: 8,
        max_flows: 1,
        usage: Some(u),
    } = r.body
    else {
        panic!("{r:?}")
    };
    assert_eq!(r.txid, 1);
    assert_eq!((u.flows, u.groups, u.sas), (0, 0, 0));
    assert!(u.memory > 0 && u.memory < u.max_memory, "{u:?}");
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

fn quota_error(out: &[Emit]) -> String {
    match only_reply(out).body {
        Body::Error {
            code: ErrorCode::Quota,
            msg,
        } => msg,
        other => panic!("expected a quota error, got {other:?}"),
    }
}

fn usage(p: &dyn FlowProcessor) -> dpacc_spec::fastpath::Usage {
    match only_reply(&ask(p, 0, 1, Body::Hello)).body {
        Body::HelloReply { usage: Some(u), .. } => u,
        other => panic!("{other:?}"),
    }
}

/// Every object a vNF can create has a quota with a clear error (groups, buckets, SAs,
/// actions per list, flows); memory is reported, bounded by the quotas, and given back by
/// `clear` (what the backend does once a vNF stayed away too long).
#[test]
fn every_object_has_a_quota_and_clear_frees_them_all() {
    let quotas = dpacc_spec::fastpath::Quotas {
        flows: 4,
        groups: 3,
        buckets: 8,
        sas: 2,
        actions: 4,
    };
    let p = SwFastPath::new(Arc::new(SwDriver::new()))
        .create_instance(&InstanceConfig {
            name: "quota".into(),
            uplinks: 2,
            quotas,
            lanes: 2,
        })
        .unwrap();
    let p = &*p;
    let empty = usage(p);
    assert_eq!(
        (
            empty.max_groups,
            empty.max_buckets,
            empty.max_sas,
            empty.max_actions
        ),
        (3, 8, 2, 4)
    );
    let bucket = |n: usize| dpacc_spec::fastpath::flow::Bucket {
        weight: 1,
        actions: vec![Action::Output(PortId(1)); n],
    };
    let group = |id: u32, buckets: usize, actions: usize| Body::GroupAdd {
        id,
        buckets: (0..buckets).map(|_| bucket(actions)).collect(),
    };
    let ok = |out: Vec<Emit>| assert_eq!(only_reply(&out).body, Body::Ok);
    // Actions per list (a bucket's, a flow's).
    assert_eq!(
        quota_error(&ask(p, 0, 2, group(1, 1, 5))),
        "too many actions (at most 4 per list)"
    );
    assert_eq!(
        quota_error(&ask(p, 0, 2, add(1, 1, vec![Action::Drop; 5], 0))),
        "too many actions (at most 4 per list)"
    );
    // Buckets in all groups, then groups.
    ok(ask(p, 0, 3, group(1, 4, 4)));
    ok(ask(p, 0, 3, group(2, 4, 1)));
    assert_eq!(
        quota_error(&ask(p, 0, 4, group(3, 1, 1))),
        "bucket quota exceeded (8 buckets in all groups)"
    );
    // Replacing a group with a smaller one gives buckets back.
    ok(ask(p, 0, 5, group(2, 1, 1)));
    ok(ask(p, 0, 5, group(3, 1, 1)));
    assert_eq!(
        quota_error(&ask(p, 0, 6, group(4, 1, 1))),
        "group quota exceeded (3 groups)"
    );
    // SAs (inbound and outbound together); replacing one with the same SPI is fine.
    let sa = |spi: u32, out: bool| {
        Body::SaAdd(SaSpec {
            spi,
            key: vec![7; 16],
            salt: [1, 2, 3, 4],
            dir: if out {
                SaDirection::Outbound {
                    src: "192.0.2.1".parse().unwrap(),
                    dst: "192.0.2.2".parse().unwrap(),
                }
            } else {
                SaDirection::Inbound
            },
        })
    };
    ok(ask(p, 0, 7, sa(100, true)));
    ok(ask(p, 0, 7, sa(101, false)));
    ok(ask(p, 0, 7, sa(100, true)));
    assert_eq!(
        quota_error(&ask(p, 0, 8, sa(102, false))),
        "SA quota exceeded (2 SAs)"
    );
    for c in 0..4 {
        ok(ask(p, 0, 9, add(c, c as u16, vec![Action::Group(1)], 0)));
    }
    assert_eq!(
        quota_error(&ask(p, 0, 9, add(9, 9, vec![Action::Drop], 0))),
        "flow quota exceeded (4 flows)"
    );
    let full = usage(p);
    assert_eq!(
        (full.flows, full.groups, full.buckets, full.sas),
        (4, 3, 6, 2)
    );
    assert!(
        empty.memory < full.memory && full.memory <= full.max_memory,
        "{empty:?} {full:?}"
    );
    p.clear();
    let cleared = usage(p);
    assert_eq!(cleared, empty, "everything given back");
    assert_eq!(p.flow_count(), 0);
    // And usable again.
    ok(ask(p, 0, 10, group(1, 8, 4)));
}
