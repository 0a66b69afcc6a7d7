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
