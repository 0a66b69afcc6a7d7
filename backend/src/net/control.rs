//! [`Control`]: the control frames a vNF sends on its own port, between the worker and the
//! vNF's flow processor. A single message goes to the processor as is. A BATCH (protocol
//! version 2, `spec/fastpath.md`) is split: its messages go to the processor one by one, in
//! order, and their replies are gathered into as few reply BATCHes as fit
//! [`proto::MAX_REPLY_PAYLOAD`] (a successful PACKET_OUT has no reply). A HELLO with
//! [`proto::FLAG_CAPS`] is answered with the device's [`CAPS`] appended.
//!
//! Bounded: a BATCH holds at most [`proto::MAX_BATCH`] messages and lies in one frame (at most
//! [`MAX_FRAME`] bytes); the messages after the limit, or after one that runs past the
//! batch's end, are not processed and the batch's txid gets an ERROR saying so. A message
//! that cannot be decoded gets its ERROR (from the processor) and the next one is processed.

use dpacc_spec::fastpath::proto::{self, Body, ErrorCode, Framed, Header, Message};
use dpacc_spec::fastpath::{Emit, FlowProcessor, MAX_FRAME};

/// What this device offers a version-2 vNF.
pub(crate) const CAPS: proto::Caps = proto::Caps {
    version: proto::VERSION_2,
    max_batch: proto::MAX_BATCH,
    max_frame: MAX_FRAME as u16,
};

/// A worker's control path: buffers reused across frames.
#[derive(Default)]
pub(crate) struct Control {
    /// What the processor emits for one message of a batch.
    scratch: Vec<Emit>,
    /// Reply payloads taken back from the processor, reused as reply BATCH buffers.
    spare: Vec<Vec<u8>>,
}

impl Control {
    /// Handles the control `payload` (after the Ethernet header) of a frame from the vNF:
    /// pushes to `out` the frames to send (PACKET_OUT) and the reply payloads, in order.
    pub(crate) fn handle(
        &mut self,
        proc_: &dyn FlowProcessor,
        now_ns: u64,
        payload: &[u8],
        out: &mut Vec<Emit>,
    ) {
        match proto::framed(payload) {
            Ok(Framed::Batch { txid, messages }) => self.batch(proc_, now_ns, txid, messages, out),
            Err(e) if Header::parse(payload).is_ok() => {
                // A BATCH with a bad version or a body past the frame's end.
                let txid = Header::parse(payload).map_or(0, |h| h.txid);
                out.push(Emit::Control(error(txid, e.code(), &e.to_string())));
            }
            // One message, or too short for a header (the processor answers that).
            _ => {
                let first = out.len();
                proc_.control(now_ns, payload, out);
                if Header::parse(payload).is_ok_and(|h| h.asks_caps()) {
                    for e in &mut out[first..] {
                        if let Emit::Control(r) = e {
                            CAPS.append_to_hello_reply(r);
                        }
                    }
                }
            }
        }
    }

    fn batch(
        &mut self,
        proc_: &dyn FlowProcessor,
        now_ns: u64,
        txid: u32,
        messages: proto::BatchMessages<'_>,
        out: &mut Vec<Emit>,
    ) {
        let mut r = ReplyBatch::new(self.reply_buf(), txid);
        let mut n = 0usize;
        for m in messages {
            if n == usize::from(proto::MAX_BATCH) {
                let msg = format!(
                    "batch of more than {} messages: the rest was not processed",
                    proto::MAX_BATCH
                );
                r.push(&error(txid, ErrorCode::Malformed, &msg), out, self);
                break;
            }
            n += 1;
            let msg = match m {
                Ok(msg) => msg,
                Err(e) => {
                    let msg = format!("batch message {n}: {e}: the rest was not processed");
                    r.push(&error(txid, ErrorCode::Malformed, &msg), out, self);
                    break;
                }
            };
            let mut scratch = std::mem::take(&mut self.scratch);
            scratch.clear();
            proc_.control(now_ns, msg, &mut scratch);
            for e in scratch.drain(..) {
                match e {
                    Emit::Control(p) => {
                        r.push(&p, out, self);
                        self.give_back(p);
                    }
                    frame => out.push(frame),
                }
            }
            self.scratch = scratch;
        }
        r.finish(out, self);
    }

    fn reply_buf(&mut self) -> Vec<u8> {
        let mut b = self
            .spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(proto::MAX_REPLY_PAYLOAD));
        b.clear();
        b
    }

    fn give_back(&mut self, b: Vec<u8>) {
        if self.spare.len() < 16 && b.capacity() >= proto::MAX_REPLY_PAYLOAD {
            self.spare.push(b);
        }
    }
}

/// A reply BATCH being filled; a full one goes out and another begins.
struct ReplyBatch {
    buf: Vec<u8>,
    start: usize,
    count: usize,
    txid: u32,
}

impl ReplyBatch {
    fn new(mut buf: Vec<u8>, txid: u32) -> Self {
        let start = proto::begin_batch(&mut buf, txid);
        Self {
            buf,
            start,
            count: 0,
            txid,
        }
    }

    /// Appends the reply `p` (starting a new BATCH if it would not fit).
    fn push(&mut self, p: &[u8], out: &mut Vec<Emit>, c: &mut Control) {
        if self.count > 0 && self.buf.len() + p.len() > proto::MAX_REPLY_PAYLOAD {
            let full = std::mem::replace(self, ReplyBatch::new(c.reply_buf(), self.txid));
            full.finish(out, c);
        }
        self.buf.extend_from_slice(p);
        self.count += 1;
    }

    /// Sends it if it holds anything (every message a successful PACKET_OUT: nothing).
    fn finish(mut self, out: &mut Vec<Emit>, c: &mut Control) {
        if self.count == 0 {
            c.give_back(self.buf);
            return;
        }
        proto::end_batch(&mut self.buf, self.start);
        out.push(Emit::Control(self.buf));
    }
}

fn error(txid: u32, code: ErrorCode, msg: &str) -> Vec<u8> {
    let mut p = Vec::new();
    Message {
        txid,
        body: Body::Error {
            code,
            msg: msg.into(),
        },
    }
    .encode(&mut p);
    p
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use dpacc_spec::fastpath::flow::{Action, FlowSpec, Match};
    use dpacc_spec::fastpath::proto::{Caps, Header, BATCH, VERSION_2};
    use dpacc_spec::fastpath::{FastPathDriver, InstanceConfig, PortId};
    use dpacc_sw::flow::SwFastPath;

    use super::*;

    fn instance(max_flows: usize) -> Arc<dyn FlowProcessor> {
        SwFastPath::new(Arc::new(dpacc_sw::SwDriver::new()))
            .create_instance(&InstanceConfig {
                name: "t".into(),
                uplinks: 2,
                quotas: dpacc_spec::fastpath::Quotas {
                    flows: max_flows,
                    ..Default::default()
                },
                lanes: 1,
            })
            .unwrap()
    }

    fn add(txid: u32, dport: u16) -> Message {
        Message {
            txid,
            body: Body::FlowAdd(FlowSpec {
                table: 0,
                priority: 1,
                cookie: u64::from(dport),
                m: Match {
                    dport: Some(dport),
                    ..Match::default()
                },
                actions: vec![Action::Output(PortId(1))],
                idle_timeout_ns: 0,
                hard_timeout_ns: 0,
                notify_expiry: false,
            }),
        }
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

    fn enc(m: &Message) -> Vec<u8> {
        let mut p = Vec::new();
        m.encode(&mut p);
        p
    }

    /// Every reply message of `out`, in order, with whether it came in a BATCH; reply
    /// frames within the limit.
    fn replies(out: &[Emit]) -> Vec<(bool, Message)> {
        let mut v = Vec::new();
        for e in out {
            let Emit::Control(p) = e else { continue };
            assert!(p.len() <= proto::MAX_REPLY_PAYLOAD, "{}", p.len());
            match proto::framed(p).unwrap() {
                Framed::One(p) => v.push((false, Message::decode(p).unwrap())),
                Framed::Batch { messages, .. } => {
                    for m in messages {
                        v.push((true, Message::decode(m.unwrap()).unwrap()))
                    }
                }
            }
        }
        v
    }

    fn run(p: &dyn FlowProcessor, payload: &[u8]) -> Vec<Emit> {
        let mut out = Vec::new();
        Control::default().handle(p, 0, payload, &mut out);
        out
    }

    /// A batch is processed in order; its replies come back in reply batches that fit, the
    /// quota errors on exactly the requests over it; PACKET_OUTs send their frames.
    #[test]
    fn a_batch_is_answered_in_order_in_batches_that_fit() {
        let p = instance(150);
        let mut parts: Vec<Vec<u8>> = (0..200).map(|i| enc(&add(i + 1, i as u16))).collect();
        let mut po = Vec::new();
        proto::encode_packet_out(999, PortId(2), false, &[7u8; 60], &mut po);
        parts.insert(10, po);
        let out = run(&*p, &batch(5000, &parts));
        let frames: Vec<_> = out
            .iter()
            .filter_map(|e| match e {
                Emit::Frame { port, frame } => Some((*port, frame.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(frames, [(PortId(2), vec![7u8; 60])]);
        let r = replies(&out);
        assert!(out.len() < 20, "{} reply frames for 200 replies", out.len());
        assert_eq!(r.len(), 200, "no reply for the PACKET_OUT");
        for (i, (in_batch, m)) in r.iter().enumerate() {
            assert!(in_batch);
            assert_eq!(m.txid, i as u32 + 1);
            if i < 150 {
                assert_eq!(m.body, Body::Ok);
            } else {
                assert_eq!(
                    m.body,
                    Body::Error {
                        code: ErrorCode::Quota,
                        msg: "flow quota exceeded (150 flows)".into()
                    }
                );
            }
        }
        assert_eq!(p.flow_count(), 150);
    }

    /// Malformed batches: ERRORs with the right txids, never a panic; what comes before the
    /// fault is processed, an undecodable message alone does not stop the batch.
    #[test]
    fn malformed_batches_get_errors() {
        let p = instance(1000);
        // An undecodable message in the middle (its own txid), a nested batch, then fine.
        let mut bad = enc(&add(2, 2));
        bad[HEADER_AT_BODY] = 99; // table 99
        let nested = batch(3, &[enc(&add(4, 4))]);
        let out = run(
            &*p,
            &batch(77, &[enc(&add(1, 1)), bad, nested, enc(&add(5, 5))]),
        );
        let r: Vec<_> = replies(&out).into_iter().map(|x| x.1).collect();
        assert_eq!(r.len(), 4);
        assert_eq!((r[0].txid, &r[0].body), (1, &Body::Ok));
        assert!(
            matches!(
                &r[1],
                Message {
                    txid: 2,
                    body: Body::Error {
                        code: ErrorCode::BadTable,
                        ..
                    }
                }
            ),
            "{:?}",
            r[1]
        );
        assert!(
            matches!(&r[2], Message { txid: 3, body: Body::Error { code: ErrorCode::Malformed, msg } } if msg.contains("nested")),
            "{:?}",
            r[2]
        );
        assert_eq!((r[3].txid, &r[3].body), (5, &Body::Ok));
        // A message running past the batch's end: processed up to it, then the batch's
        // ERROR.
        let mut cut = enc(&add(7, 7));
        cut.truncate(20);
        let out = run(&*p, &batch(78, &[enc(&add(6, 6)), cut]));
        let r: Vec<_> = replies(&out).into_iter().map(|x| x.1).collect();
        assert_eq!((r[0].txid, &r[0].body), (6, &Body::Ok));
        assert!(
            matches!(&r[1], Message { txid: 78, body: Body::Error { code: ErrorCode::Malformed, msg } } if msg.contains("batch message 2")),
            "{:?}",
            r[1]
        );
        // More than MAX_BATCH messages: the first MAX_BATCH answered, then the batch's ERROR.
        let many: Vec<_> = (0..300u32)
            .map(|i| {
                enc(&Message {
                    txid: 1000 + i,
                    body: Body::FlowStatsRequest { cookie: 1 },
                })
            })
            .collect();
        let r: Vec<_> = replies(&run(&*p, &batch(79, &many)))
            .into_iter()
            .map(|x| x.1)
            .collect();
        assert_eq!(r.len(), usize::from(proto::MAX_BATCH) + 1);
        assert!(
            matches!(&r[256], Message { txid: 79, body: Body::Error { code: ErrorCode::Malformed, msg } } if msg.contains("more than 256"))
        );
        // A BATCH header with version 1, a length past the frame, an empty batch.
        let mut v1 = batch(80, &[enc(&add(8, 8))]);
        v1[0] = 1;
        let r = replies(&run(&*p, &v1));
        assert!(
            matches!(
                &r[..],
                [(
                    false,
                    Message {
                        txid: 80,
                        body: Body::Error {
                            code: ErrorCode::BadVersion,
                            ..
                        }
                    }
                )]
            ),
            "{r:?}"
        );
        let mut long = batch(81, &[enc(&add(9, 9))]);
        long.truncate(long.len() - 1);
        let r = replies(&run(&*p, &long));
        assert!(
            matches!(
                &r[..],
                [(
                    false,
                    Message {
                        txid: 81,
                        body: Body::Error {
                            code: ErrorCode::Malformed,
                            ..
                        }
                    }
                )]
            ),
            "{r:?}"
        );
        assert!(run(&*p, &batch(82, &[])).is_empty());
        // Garbage of every length and header-shaped garbage: no panic.
        for n in 0..64 {
            let mut g: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
            if n >= 2 {
                g[0] = VERSION_2;
                g[1] = BATCH;
            }
            let _ = run(&*p, &g);
        }
    }

    /// HELLO with FLAG_CAPS gets the capabilities; a HELLO without gets the processor's reply
    /// untouched.
    #[test]
    fn capabilities_only_for_those_who_ask() {
        let p = instance(10);
        let mut v2 = Vec::new();
        proto::encode_hello_v2(9, &mut v2);
        let out = run(&*p, &v2);
        let [Emit::Control(r)] = &out[..] else {
            panic!("{out:?}")
        };
        assert_eq!(Caps::of_hello_reply(r), Some(CAPS));
        assert_eq!(
            Message::decode(r).unwrap().body,
            Body::HelloReply {
                tables: 8,
                max_flows: 10,
                usage: Some(p.usage()),
            }
        );
        let out = run(
            &*p,
            &enc(&Message {
                txid: 10,
                body: Body::Hello,
            }),
        );
        let [Emit::Control(r)] = &out[..] else {
            panic!("{out:?}")
        };
        assert_eq!(Header::parse(r).unwrap().flags, 0);
        let mut plain = Vec::new();
        Message {
            txid: 10,
            body: Body::HelloReply {
                tables: 8,
                max_flows: 10,
                usage: Some(p.usage()),
            },
        }
        .encode(&mut plain);
        assert_eq!(r, &plain, "exactly what the processor said");
        assert_eq!(Caps::of_hello_reply(r), None);
    }

    /// The FLOW_ADD body's first byte (the table).
    const HEADER_AT_BODY: usize = proto::HEADER_LEN;
}
