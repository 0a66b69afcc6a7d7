//! A frame-level fake fast-path device for unit tests of [`FlowTable`](super::FlowTable) (the
//! real backend is in `guest-lib/tests/flow_pipeline.rs`): it keeps every frame the table
//! sends and hands out the frames a test queued, in any order, then (with `flood`) one frame
//! forever.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dpacc_spec::fastpath::proto::{self, Body, Message, BACKEND_MAC};

use super::FrameIo;
use crate::Result;

/// The vNF port's MAC address in these tests.
pub(crate) const VNF_MAC: [u8; 6] = [2, 0, 0, 0, 0, 7];

/// The fake device; clones share their state, so a test keeps one and gives one to the table.
#[derive(Clone, Default)]
pub(crate) struct FramePeer {
    /// Every frame sent to the device so far.
    pub(crate) sent: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Frames the device will deliver, in order.
    pub(crate) inbox: Arc<Mutex<VecDeque<Vec<u8>>>>,
    /// Delivered whenever the inbox is empty.
    pub(crate) flood: Arc<Mutex<Option<Vec<u8>>>>,
}

impl FrameIo for FramePeer {
    fn send(&mut self, frame: &[u8]) -> Result<()> {
        self.sent.lock().unwrap().push(frame.to_vec());
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8], timeout: Option<Duration>) -> Result<Option<usize>> {
        let f = self.inbox.lock().unwrap().pop_front();
        let f = f.or_else(|| self.flood.lock().unwrap().clone());
        match f {
            Some(f) => {
                let n = f.len().min(buf.len());
                buf[..n].copy_from_slice(&f[..n]);
                Ok(Some(n))
            }
            None => {
                std::thread::sleep(timeout.unwrap_or_default().min(Duration::from_millis(2)));
                Ok(None)
            }
        }
    }
}

/// A frame from the backend to the vNF port carrying `payload`.
pub(crate) fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&VNF_MAC);
    f.extend_from_slice(&BACKEND_MAC);
    f.extend_from_slice(&proto::ETHERTYPE.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The payload of one message.
pub(crate) fn payload(txid: u32, body: Body) -> Vec<u8> {
    let mut p = Vec::new();
    Message { txid, body }.encode(&mut p);
    p
}

impl FramePeer {
    /// Queues a frame carrying `payload` as is (a BATCH, a truncated message...).
    pub(crate) fn answer(&self, payload: Vec<u8>) {
        self.inbox.lock().unwrap().push_back(frame(&payload));
    }

    /// Queues one message.
    pub(crate) fn answer_msg(&self, txid: u32, body: Body) {
        self.answer(payload(txid, body));
    }
}
