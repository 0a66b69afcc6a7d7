//! The pipelined `FlowTable` and protocol version 2 against a real `dpacc-backend net` port
//! (in-process, software fast path) over virtio-user: many requests in flight, quota errors
//! on exactly the requests over the quota, a version-1 vNF and a version-2 one on the same
//! device, malformed BATCH frames answered with ERRORs while the daemon stays up.

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dpacc_backend::net::{serve, NetBackendConfig};
use dpacc_guest::net::{Completion, FlowTable, FrameIo, NetOptions, Reply, Request, VirtioNetPort};
use dpacc_guest::Error;
use dpacc_spec::fastpath::flow::{Action, FlowSpec, Match};
use dpacc_spec::fastpath::proto::{self, Body, ErrorCode, Framed, Message, BACKEND_MAC};
use dpacc_spec::fastpath::PortId;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const MAC: [u8; 6] = [2, 0, 0, 0, 0x15, 0xb];

struct Backend {
    path: PathBuf,
    stop: Arc<EventFd>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Backend {
    fn start(tag: &str, max_flows: usize) -> Self {
        let path =
            std::env::temp_dir().join(format!("dpacc-pipe-{}-{tag}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let stop = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let cfg = NetBackendConfig {
                uplinks: vec![],
                quotas: dpacc_spec::fastpath::Quotas {
                    flows: max_flows,
                    ..Default::default()
                },
                keep_detached: Duration::from_secs(300),
                queue_size: 1024,
                mac: [0x52, 0x54, 0, 1, 2, 4],
                fastpath: Arc::new(dpacc_sw::flow::SwFastPath::new(Arc::new(
                    dpacc_sw::SwDriver::new(),
                ))),
                busy_poll: Duration::from_micros(50),
                queue_pairs: 1,
            };
            serve(&listener, cfg, &stop2).unwrap();
        });
        Self {
            path,
            stop,
            thread: Some(thread),
        }
    }

    fn table(&self, max_version: u8) -> FlowTable<VirtioNetPort> {
        let port = VirtioNetPort::connect(&self.path, NetOptions::default()).unwrap();
        let mut ft = FlowTable::new(port, MAC);
        ft.set_max_version(max_version);
        ft.set_max_frame(2036);
        assert_eq!(ft.hello().unwrap().0, 8);
        assert_eq!(ft.version(), max_version);
        ft
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn flow(cookie: u64, dport: u16) -> FlowSpec {
    FlowSpec {
        table: 0,
        priority: 10,
        cookie,
        m: Match {
            eth_type: Some(0x0800),
            proto: Some(17),
            dport: Some(dport),
            ..Match::default()
        },
        actions: vec![Action::Output(PortId(0))],
        idle_timeout_ns: 0,
        hard_timeout_ns: 0,
        notify_expiry: false,
    }
}

/// Submits `n` FLOW_ADDs at once and collects every completion (in txid order).
fn add_many(ft: &mut FlowTable<VirtioNetPort>, cookie: u64, n: u16) -> Vec<(u32, Completion)> {
    let txids: Vec<u32> = (0..n)
        .map(|i| ft.submit_add_flow(flow(cookie, i)).unwrap())
        .collect();
    assert_eq!(ft.in_flight(), usize::from(n));
    let mut c = Vec::new();
    while c.len() < usize::from(n) {
        let got = ft.wait_completions(&mut c, Duration::from_secs(5)).unwrap();
        assert!(got > 0, "{} of {n} completions", c.len());
    }
    c.sort_by_key(|c| c.txid);
    txids.into_iter().zip(c).collect()
}

/// Many requests in flight, batched (version 2) and one per frame (version 1, an old vNF on
/// the new device): each completes with its own result, the quota errors on exactly the
/// requests past it, in submission order.
#[test]
fn pipelined_requests_and_quota_errors_per_request() {
    let b = Backend::start("quota", 100);
    for (version, cookie) in [(2u8, 1u64), (1, 2)] {
        let mut ft = b.table(version);
        let done = add_many(&mut ft, cookie, 160);
        for (i, (txid, c)) in done.iter().enumerate() {
            assert_eq!(c.txid, *txid);
            assert_eq!(c.request, Request::FlowAdd);
            match &c.result {
                Ok(Reply::Ok) => assert!(i < 100, "request {i} (version {version})"),
                Err(Error::FlowRejected { code, msg }) => {
                    assert!(i >= 100, "request {i} (version {version}): {msg}");
                    assert_eq!(*code, ErrorCode::Quota);
                    assert_eq!(msg, "flow quota exceeded (100 flows)");
                }
                other => panic!("request {i}: {other:?}"),
            }
        }
        let listed = ft.list().unwrap();
        assert_eq!(listed.len(), 100);
        assert!(listed.iter().all(|f| f.cookie == cookie));
        // Blocking calls between pipelined ones.
        let s = ft.submit_stats(cookie).unwrap();
        ft.delete_flows(cookie).unwrap();
        let mut c = Vec::new();
        ft.wait_completions(&mut c, Duration::from_secs(5)).unwrap();
        assert!(
            matches!(&c[..], [Completion { txid, result: Ok(Reply::Stats(_)), .. }] if *txid == s),
            "{c:?}"
        );
        assert!(ft.list().unwrap().is_empty());
    }
}

/// Raw frames on the vNF port: the reply payloads of one control frame.
fn exchange(port: &mut VirtioNetPort, payload: &[u8]) -> Vec<Message> {
    let mut f = Vec::new();
    f.extend_from_slice(&BACKEND_MAC);
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&proto::ETHERTYPE.to_be_bytes());
    f.extend_from_slice(payload);
    port.send(&f).unwrap();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 16384];
    while let Some(n) = port
        .recv(&mut buf, Some(Duration::from_millis(300)))
        .unwrap()
    {
        let (_, _, p) = proto::parse_frame(&buf[..n]).unwrap();
        match proto::framed(p).unwrap() {
            Framed::One(p) => out.push(Message::decode(p).unwrap()),
            Framed::Batch { messages, .. } => {
                out.extend(messages.map(|m| Message::decode(m.unwrap()).unwrap()))
            }
        }
    }
    out
}

fn enc(m: Message) -> Vec<u8> {
    let mut p = Vec::new();
    m.encode(&mut p);
    p
}

fn batch(txid: u32, parts: &[Vec<u8>]) -> Vec<u8> {
    let mut p = Vec::new();
    let s = proto::begin_batch(&mut p, txid);
    for x in parts {
        p.extend_from_slice(x);
    }
    proto::end_batch(&mut p, s);
    p
}

fn is_error(m: &Message, txid: u32, code: ErrorCode) -> bool {
    m.txid == txid && matches!(&m.body, Body::Error { code: c, .. } if *c == code)
}

/// Malformed BATCH frames through the daemon get ERRORs (with the batch's or the message's
/// txid); the daemon stays up and serves the next vNF.
#[test]
fn malformed_batches_get_errors_and_the_daemon_stays_up() {
    let b = Backend::start("malformed", 10);
    let mut port = VirtioNetPort::connect(&b.path, NetOptions::default()).unwrap();
    // A version-1 HELLO gets no capabilities.
    let r = exchange(
        &mut port,
        &enc(Message {
            txid: 1,
            body: Body::Hello,
        }),
    );
    assert!(
        matches!(
            &r[..],
            [Message {
                txid: 1,
                body: Body::HelloReply {
                    tables: 8,
                    max_flows: 10,
                    ..
                }
            }]
        ),
        "{r:?}"
    );
    let add = |txid: u32, dport: u16| {
        enc(Message {
            txid,
            body: Body::FlowAdd(flow(9, dport)),
        })
    };
    // A message cut short inside the batch: the one before it is done, then the batch's
    // ERROR.
    let mut cut = add(3, 2);
    cut.truncate(30);
    let r = exchange(&mut port, &batch(2, &[add(4, 1), cut]));
    assert_eq!(r.len(), 2, "{r:?}");
    assert_eq!(
        r[0],
        Message {
            txid: 4,
            body: Body::Ok
        }
    );
    assert!(is_error(&r[1], 2, ErrorCode::Malformed), "{r:?}");
    // An undecodable message (bad boolean) and a nested batch: their own ERRORs, the rest
    // done.
    let mut bad = add(5, 3);
    let notify_at = proto::HEADER_LEN + 1 + 2 + 8 + 8 + 8;
    bad[notify_at] = 7;
    let r = exchange(
        &mut port,
        &batch(6, &[bad, batch(7, &[add(8, 4)]), add(9, 5)]),
    );
    assert_eq!(r.len(), 3, "{r:?}");
    assert!(is_error(&r[0], 5, ErrorCode::Malformed), "{r:?}");
    assert!(is_error(&r[1], 7, ErrorCode::Malformed), "{r:?}");
    assert_eq!(
        r[2],
        Message {
            txid: 9,
            body: Body::Ok
        }
    );
    // A BATCH claiming more bytes than the frame has; a version-1 BATCH header.
    let mut long = batch(10, &[add(11, 6)]);
    long.truncate(long.len() - 3);
    let r = exchange(&mut port, &long);
    assert!(
        matches!(&r[..], [m] if is_error(m, 10, ErrorCode::Malformed)),
        "{r:?}"
    );
    let mut v1 = batch(12, &[add(13, 7)]);
    v1[0] = 1;
    let r = exchange(&mut port, &v1);
    assert!(
        matches!(&r[..], [m] if is_error(m, 12, ErrorCode::BadVersion)),
        "{r:?}"
    );
    drop(port);
    // Still serving: a version-2 vNF finds the flows of the good messages.
    let mut ft = b.table(2);
    assert_eq!(ft.list().unwrap().len(), 2);
    ft.delete_flows(9).unwrap();
}
