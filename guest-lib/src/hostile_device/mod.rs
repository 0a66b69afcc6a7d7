//! The library facing a broken or hostile device: unit tests over [`FakeDevice`], a device
//! side in the library's own shared memory that writes whatever each test tells it. Whatever
//! the device writes, the library must answer with a clear error (`Error::Protocol`, the queue
//! or port then broken) or a per-request error, never a panic, an out-of-bounds access, a
//! wait without a timeout, a request completed twice or a buffer handed back twice.
//!
//! - `split_queue`: the used ring itself (ids, indices, lengths), under every device.
//! - `crypto_data`: data-queue completions (status bytes, used lengths, other queues' ids).
//! - `crypto_control`: session create and destroy answers (statuses, ids, lost answers).
//! - `flow_table`: the fast-path control answers (txids, duplicates, truncation, lateness).
//! - `net_port`: RX buffers of the fast-path port (buffer counts, lengths).

mod crypto_control;
mod crypto_data;
mod flow_table;
mod net_port;
mod split_queue;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dpacc_spec::{AeadAlg, Direction, SessionParams};

use crate::fake_device::{Chain, DeviceRing, FakeDevice, Handler};
use crate::{CompletionMode, CryptoDevice, Options, Session};

/// What the fake control queue does with one request.
#[derive(Clone, Copy, Debug)]
struct Answer {
    /// Session id of a create's answer.
    id: u64,
    /// Status (a create's `u32`; a destroy's byte is its low 8 bits).
    status: u32,
    /// Used length (`None`: the whole writable length, as the spec says).
    used: Option<u32>,
    /// Used id (`None`: the request's own head).
    used_id: Option<u32>,
}

impl Answer {
    fn ok(id: u64) -> Self {
        Self {
            id,
            status: 0,
            used: None,
            used_id: None,
        }
    }
}

/// Whether a control request is a create (`0x?02`) rather than a destroy (`0x?03`).
fn is_create(opcode: u32) -> bool {
    opcode & 0xff == 0x02
}

/// Writes `a` as the answer to control chain `c`.
fn answer_ctrl(r: &mut DeviceRing, c: &Chain, a: Answer) {
    let wl = c.writable_len();
    if wl >= 16 {
        let mut si = [0u8; 16];
        si[..8].copy_from_slice(&a.id.to_le_bytes());
        si[8..12].copy_from_slice(&a.status.to_le_bytes());
        r.write_writable(c, 0, &si);
    } else if wl > 0 {
        r.write_writable(c, wl as usize - 1, &[a.status as u8]);
    }
    r.push_used(a.used_id.unwrap_or(u32::from(c.head)), a.used.unwrap_or(wl));
}

/// A control-queue handler: `f(opcode)` says how to answer (`None`: keep the chain unanswered,
/// in `lost`).
fn control(
    lost: Arc<Mutex<Vec<Chain>>>,
    mut f: impl FnMut(u32) -> Option<Answer> + Send + 'static,
) -> Handler {
    Box::new(move |r, c| {
        let req = r.read_readable(&c);
        let opcode = u32::from_le_bytes(req[..4].try_into().unwrap());
        match f(opcode) {
            Some(a) => answer_ctrl(r, &c, a),
            None => lost.lock().unwrap().push(c),
        }
    })
}

/// A control queue that answers every create with the next id from 1 and every destroy OK.
fn well_behaved_control() -> Handler {
    let mut next = 0;
    control(Arc::default(), move |op| {
        next += 1;
        Some(Answer::ok(if is_create(op) { next } else { 0 }))
    })
}

fn options(indirect: bool) -> Options {
    Options {
        queue_size: 8,
        completion: CompletionMode::Poll,
        arena_size: 1 << 20,
        timeout: Duration::from_millis(200),
        indirect,
        ..Options::default()
    }
}

/// A crypto device with `queues` data queues over a fake device whose control queue answers
/// as `ctrl` says (data queues are left to the test).
fn crypto(queues: u16, indirect: bool, ctrl: Handler) -> (FakeDevice, CryptoDevice) {
    let fake = FakeDevice::crypto(queues);
    fake.set_handler(queues, ctrl);
    let dev = CryptoDevice::with_transport(fake.transport(), options(indirect)).unwrap();
    (fake, dev)
}

fn gcm_session(dev: &CryptoDevice) -> crate::Result<Session> {
    dev.create_session(&SessionParams::Aead {
        alg: AeadAlg::AesGcm,
        key: &[7u8; 32],
        tag_len: 0,
        dir: Direction::Encrypt,
    })
}
