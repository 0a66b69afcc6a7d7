//! The fast-path control answers from a misbehaving device: unknown txids, duplicates,
//! truncation, answers of the wrong type or after the request timed out, floods, and
//! FLOW_LIST pages that never end. Each request completes exactly once, with its own answer
//! or a clear error, and no call waits past its timeout.

use std::time::{Duration, Instant};

use dpacc_spec::fastpath::flow::{FlowStats, FlowSummary};
use dpacc_spec::fastpath::proto::{self, Body, ErrorCode, Message};
use dpacc_spec::fastpath::PortId;

use crate::net::frame_peer::{frame, payload, FramePeer, VNF_MAC as MAC};
use crate::net::{Completion, FlowTable, FrameIo, Reply, Request};
use crate::{Error, Result};

/// A table whose requests time out after 100 ms (version 1: no HELLO needed).
fn table() -> (FlowTable<FramePeer>, FramePeer) {
    let dev = FramePeer::default();
    let mut ft = FlowTable::new(dev.clone(), MAC);
    ft.timeout = Duration::from_millis(100);
    (ft, dev)
}

/// Collects completions until none is in flight (bounded by a second).
fn drain(ft: &mut FlowTable<FramePeer>) -> Vec<Completion> {
    let mut out = Vec::new();
    let end = Instant::now() + Duration::from_secs(1);
    while ft.in_flight() > 0 && Instant::now() < end {
        ft.wait_completions(&mut out, Duration::from_millis(300))
            .unwrap();
    }
    ft.poll_completions(&mut out).unwrap();
    out
}

fn stats() -> Body {
    Body::FlowStatsReply {
        cookie: 1,
        stats: FlowStats {
            packets: 5,
            bytes: 6,
        },
    }
}

#[test]
fn answers_with_unknown_txids_are_counted_not_taken() {
    let (mut ft, dev) = table();
    let a = ft.submit_stats(1).unwrap();
    for txid in [0, a + 1, a + 1000, u32::MAX] {
        dev.answer_msg(txid, Body::Ok);
    }
    dev.answer_msg(a, stats());
    let c = drain(&mut ft);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].txid, a);
    assert!(matches!(
        c[0].result,
        Ok(Reply::Stats(FlowStats { packets: 5, .. }))
    ));
    assert_eq!(ft.late_replies(), 4);
}

#[test]
fn a_duplicated_answer_completes_its_request_once() {
    let (mut ft, dev) = table();
    let a = ft.submit_delete_flows(1).unwrap();
    let b = ft.submit_delete_flows(2).unwrap();
    dev.answer_msg(a, Body::Ok);
    dev.answer_msg(a, Body::Ok);
    dev.answer_msg(
        a,
        Body::Error {
            code: ErrorCode::NotFound,
            msg: "second".into(),
        },
    );
    dev.answer_msg(b, Body::Ok);
    let c = drain(&mut ft);
    let ids: Vec<_> = c.iter().map(|c| (c.txid, c.result.is_ok())).collect();
    assert_eq!(ids, vec![(a, true), (b, true)]);
    assert_eq!(ft.late_replies(), 2);
}

/// A PACKET_OUT has no reply unless it fails; its ERROR completes it, and a repeated ERROR
/// is a late reply, not a second completion.
#[test]
fn a_duplicated_packet_out_error_completes_it_once() {
    let (mut ft, dev) = table();
    let po = ft.submit_packet_out(PortId(1), false, &[0u8; 60]).unwrap();
    ft.flush().unwrap();
    for _ in 0..3 {
        dev.answer_msg(
            po,
            Body::Error {
                code: ErrorCode::BadActions,
                msg: "no such port".into(),
            },
        );
    }
    let mut out = Vec::new();
    for _ in 0..3 {
        ft.poll_completions(&mut out).unwrap();
    }
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!((out[0].txid, out[0].request), (po, Request::PacketOut));
    assert!(matches!(out[0].result, Err(Error::FlowRejected { .. })));
    assert_eq!(ft.late_replies(), 2);
}

/// A reply whose header names a waiting request but whose body is cut short (or garbage)
/// fails that request at once with a protocol error, not at its deadline; a header too
/// short to name anyone is dropped, and its request times out naming itself.
#[test]
fn truncated_answers_fail_their_request_at_once() {
    let (mut ft, dev) = table();
    ft.timeout = Duration::from_secs(5);
    let a = ft.submit_stats(1).unwrap();
    let b = ft.submit_list_page(0).unwrap();
    let c = ft.submit_add_flow(dpacc_spec::fastpath::flow::FlowSpec {
        table: 0,
        priority: 1,
        cookie: 1,
        m: Default::default(),
        actions: vec![],
        idle_timeout_ns: 0,
        hard_timeout_ns: 0,
        notify_expiry: false,
    });
    let c = c.unwrap();
    // a: the body cut in the middle (its length field says more than there is).
    let mut p = payload(a, stats());
    p.truncate(p.len() - 5);
    dev.answer(p);
    // b: the length field says less than the body needs.
    let mut p = payload(
        b,
        Body::FlowListReply {
            total: 1,
            start: 0,
            entries: vec![summary(1)],
        },
    );
    p[8..12].copy_from_slice(&9u32.to_be_bytes());
    dev.answer(p);
    // c: eleven bytes, no txid to read; then a frame too short for a payload at all.
    dev.answer(payload(c, Body::Ok)[..11].to_vec());
    dev.inbox.lock().unwrap().push_back(vec![0u8; 13]);
    let t = Instant::now();
    let mut out = Vec::new();
    while out.len() < 2 && t.elapsed() < Duration::from_secs(1) {
        ft.wait_completions(&mut out, Duration::from_millis(100))
            .unwrap();
    }
    assert!(t.elapsed() < Duration::from_secs(1));
    let got: Vec<_> = out.iter().map(|c| (c.txid, c.request)).collect();
    assert_eq!(got, vec![(a, Request::FlowStats), (b, Request::FlowList)]);
    for c in &out {
        assert!(
            matches!(
                c.result,
                Err(Error::Protocol("a reply that cannot be decoded"))
            ),
            "{:?}",
            c.result
        );
    }
    assert_eq!(ft.in_flight(), 1);
    ft.timeout = Duration::from_millis(50);
    let e = ft.stats(2).unwrap_err();
    assert!(
        matches!(
            e,
            Error::NoReply {
                request: "FLOW_STATS",
                ..
            }
        ),
        "{e}"
    );
    let _ = c;
}

/// A reply of the wrong type fails its request with a protocol error (not a panic, not a
/// reply handed to the wrong caller).
#[test]
fn an_answer_of_the_wrong_type_fails_its_request() {
    let (mut ft, dev) = table();
    let a = ft.submit_stats(1).unwrap();
    dev.answer_msg(
        a,
        Body::HelloReply {
            tables: 1,
            max_flows: 1,
            usage: None,
        },
    );
    let c = drain(&mut ft);
    assert!(matches!(
        c[..],
        [Completion {
            result: Err(Error::Protocol("a reply of the wrong type")),
            ..
        }]
    ));
    // The blocking calls say the same (txids are handed out in sequence).
    dev.answer_msg(a + 1, stats());
    assert!(matches!(
        ft.delete_flows(3),
        Err(Error::Protocol("a reply of the wrong type"))
    ));
}

/// A `timeout` shortened between submissions: the later request still gives up at its own
/// deadline, not at the earlier one's.
#[test]
fn a_shorter_timeout_is_kept_even_behind_a_longer_one() {
    let (mut ft, _dev) = table();
    ft.timeout = Duration::from_secs(5);
    ft.submit_stats(1).unwrap();
    ft.timeout = Duration::from_millis(50);
    let t = Instant::now();
    assert!(matches!(ft.stats(2), Err(Error::NoReply { .. })));
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    let b = ft.submit_stats(3).unwrap();
    let mut out = Vec::new();
    ft.wait_completions(&mut out, Duration::from_secs(1))
        .unwrap();
    assert!(matches!(&out[..], [Completion { txid, .. }] if *txid == b));
    assert!(t.elapsed() < Duration::from_secs(2));
    assert_eq!(ft.in_flight(), 1);
}

/// An answer after its request timed out: the request completed with `NoReply` (once), the
/// late answer is counted and taken for nobody else.
#[test]
fn an_answer_after_the_timeout_is_counted_not_taken() {
    let (mut ft, dev) = table();
    let a = ft.submit_stats(1).unwrap();
    let c = drain(&mut ft);
    assert!(matches!(
        &c[..],
        [Completion { txid, result: Err(Error::NoReply { request: "FLOW_STATS", .. }), .. }] if *txid == a
    ));
    dev.answer_msg(a, stats());
    let b = ft.submit_stats(1).unwrap();
    dev.answer_msg(b, stats());
    let c = drain(&mut ft);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].txid, b);
    assert_eq!(ft.late_replies(), 1);
}

/// A device flooding the port with frames that are no event (late replies, garbage) does
/// not keep `next_event` past its timeout, nor a blocking call past the request's.
#[test]
fn a_flood_does_not_keep_a_caller_past_its_timeout() {
    for flood in [
        frame(&payload(0xdead, Body::Ok)),
        frame(&[1, 2, 3]),
        vec![0; 60],
    ] {
        let (mut ft, dev) = table();
        *dev.flood.lock().unwrap() = Some(flood);
        let t = Instant::now();
        assert_eq!(ft.next_event(Duration::from_millis(50)).unwrap(), None);
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
        let t = Instant::now();
        assert!(matches!(ft.delete_flows(1), Err(Error::NoReply { .. })));
        assert!(
            t.elapsed() < Duration::from_millis(600),
            "{:?}",
            t.elapsed()
        );
        let t = Instant::now();
        let mut out = Vec::new();
        ft.wait_completions(&mut out, Duration::from_millis(50))
            .unwrap();
        assert!(t.elapsed() < Duration::from_millis(500));
    }
}

fn summary(cookie: u64) -> FlowSummary {
    FlowSummary {
        cookie,
        table: 0,
        priority: 1,
        stats: FlowStats::default(),
    }
}

/// A device answering FLOW_LIST and HELLO as it is told, from inside `send` (so a blocking
/// `list` gets its answers on this thread).
struct Lister {
    dev: FramePeer,
    pages: u32,
    page: fn(pages: u32, start: u32) -> (u32, u32, u32),
    max_flows: u32,
}

impl FrameIo for Lister {
    fn send(&mut self, frame: &[u8]) -> Result<()> {
        let (_, _, p) = proto::parse_frame(frame).unwrap();
        let m = Message::decode(p).unwrap();
        match m.body {
            Body::FlowListRequest { start } => {
                self.pages += 1;
                let (total, start, n) = (self.page)(self.pages, start);
                let entries = (0..n).map(|k| summary(u64::from(start + k))).collect();
                self.dev.answer_msg(
                    m.txid,
                    Body::FlowListReply {
                        total,
                        start,
                        entries,
                    },
                )
            }
            Body::Hello => self.dev.answer_msg(
                m.txid,
                Body::HelloReply {
                    tables: 1,
                    max_flows: self.max_flows,
                    usage: None,
                },
            ),
            _ => {}
        }
        Ok(())
    }
    fn recv(&mut self, buf: &mut [u8], t: Option<Duration>) -> Result<Option<usize>> {
        self.dev.recv(buf, t)
    }
}

fn lister(page: fn(u32, u32) -> (u32, u32, u32), max_flows: u32) -> FlowTable<Lister> {
    let mut ft = FlowTable::new(
        Lister {
            dev: FramePeer::default(),
            pages: 0,
            page,
            max_flows,
        },
        MAC,
    );
    ft.timeout = Duration::from_millis(100);
    ft
}

/// FLOW_LIST pages: a device that keeps raising the total cannot keep the walk going past
/// the first page's total (nor make it keep more entries); a total above the flow quota HELLO
/// reported, or a page for another start than asked, is an error.
#[test]
fn flow_list_pages_cannot_run_the_walk_forever() {
    // Total 90 on the first page, 40 more on each later one; 40 entries a page.
    let raising = |pages: u32, start: u32| (50 + 40 * pages, start, 40);
    let mut ft = lister(raising, 1000);
    let all = ft.list().unwrap();
    assert_eq!(all.len(), 90, "the first page's total bounds the walk");
    assert_eq!(all.last().unwrap().cookie, 89);
    assert_eq!(ft.io().pages, 3);
    // After HELLO said the quota is 60 flows, a total of 90 is a violation.
    let mut ft = lister(raising, 60);
    ft.hello().unwrap();
    assert!(matches!(
        ft.list(),
        Err(Error::Protocol(
            "FLOW_LIST total above the flow quota HELLO reported"
        ))
    ));
    let mut ft = lister(|_, start| (100, start + 40, 1), 1000);
    assert!(matches!(
        ft.list(),
        Err(Error::Protocol("FLOW_LIST reply for another page"))
    ));
    // An honest device: 45 flows in two pages.
    let mut ft = lister(|_, start| (45, start, 40.min(45 - start)), 1000);
    assert_eq!(ft.list().unwrap().len(), 45);
}

/// A reply BATCH whose last message runs past the batch: the messages before it complete
/// their requests; the cut one's request fails at its deadline, naming itself.
#[test]
fn a_cut_reply_batch_completes_what_it_holds() {
    let (mut ft, dev) = table();
    let a = ft.submit_delete_flows(1).unwrap();
    let b = ft.submit_delete_flows(2).unwrap();
    let mut p = Vec::new();
    let s = proto::begin_batch(&mut p, 0);
    Message {
        txid: a,
        body: Body::Ok,
    }
    .encode(&mut p);
    let cut = p.len();
    Message {
        txid: b,
        body: Body::Ok,
    }
    .encode(&mut p);
    proto::end_batch(&mut p, s);
    // Make b's header claim a body longer than the batch holds.
    p[cut + 8..cut + 12].copy_from_slice(&100u32.to_be_bytes());
    dev.answer(p);
    let c = drain(&mut ft);
    let got: Vec<_> = c.iter().map(|c| (c.txid, c.result.is_ok())).collect();
    assert_eq!(got, vec![(a, true), (b, false)]);
    assert!(matches!(c[1].result, Err(Error::NoReply { .. })));
}
