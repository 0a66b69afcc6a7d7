//! Where the driver keeps request headers in the shared region: one slot per data-queue entry
//! (data request, IV, status, indirect table) and one control scratch area (control request,
//! keys, session input). The offsets are checked against the spec structs at compile time.
//!
//! A slot is laid out so that an ordinary request costs the device three cache lines, all
//! written by this driver on its core and read (the status written) on the device's: the
//! 72-byte request and the IV right after it (one readable descriptor for both), the status
//! byte in the same line as the request's tail and the IV, and an indirect table of four
//! descriptors (request and IV, source, destination, status) in one line of its own. Requests
//! with AAD or a digest beside the destination spill into a fourth line.

use std::mem::{align_of, offset_of, size_of};

use dpacc_spec::algo::{MAX_AUTH_KEY_LEN, MAX_CIPHER_KEY_LEN};
use dpacc_spec::virtio_crypto::{DataRequest, SessionInput, CTRL_REQ_SIZE, DATA_REQ_SIZE};
use dpacc_spec::Iv;

use crate::mem::DMA_ALIGN;
use crate::virtq::DESC_SIZE;

/// Most descriptors one data request takes: request and IV, source, AAD, then destination and
/// digest (a chain writes both), then the status byte. Zero-length parts are left out.
pub(super) const MAX_REQ_DESCS: usize = 6;
/// The device-writable status of a data request or a destroy-session request
/// (`struct virtio_crypto_inhdr`: one byte).
pub(super) const STATUS_LEN: usize = 1;
/// Status byte value before the device writes one.
pub(super) const STATUS_UNSET: u8 = 0xff;

/// Bytes of per-request memory, one slot per data-queue entry.
pub(super) const SLOT_SIZE: usize = 256;
/// The slot's data request ([`DATA_REQ_SIZE`] bytes), at the start of a cache line.
pub(super) const SLOT_REQ: usize = 0;
/// The slot's IV (up to [`Iv::MAX`] bytes), right after the request: one descriptor covers
/// both.
pub(super) const SLOT_IV: usize = SLOT_REQ + DATA_REQ_SIZE;
/// The slot's status byte, in the line that holds the request's tail and the IV.
pub(super) const SLOT_STATUS: usize = SLOT_IV + Iv::MAX;
/// The slot's indirect descriptor table (room for [`MAX_REQ_DESCS`]), on a line boundary.
pub(super) const SLOT_TABLE: usize = 128;

const _: () = {
    // In order, without overlap, inside the slot.
    assert!(SLOT_REQ + DATA_REQ_SIZE == SLOT_IV);
    assert!(SLOT_IV + Iv::MAX <= SLOT_STATUS);
    assert!(SLOT_STATUS + STATUS_LEN <= SLOT_TABLE);
    assert!(SLOT_TABLE + MAX_REQ_DESCS * DESC_SIZE <= SLOT_SIZE);
    assert!(size_of::<DataRequest>() == DATA_REQ_SIZE);
    // Request tail, IV and status share the request's second line; four descriptors fill the
    // table's first line.
    assert!(SLOT_STATUS / 64 == (SLOT_REQ + DATA_REQ_SIZE - 1) / 64);
    assert!(SLOT_TABLE % 64 == 0);
    // Every slot's indirect table is 16-byte aligned (as `SplitQueue::add_indirect` asks), the
    // request naturally aligned, and the arena after the slots stays cache-line aligned.
    assert!(SLOT_TABLE % DESC_SIZE == 0 && SLOT_SIZE % DESC_SIZE == 0);
    assert!(SLOT_REQ % align_of::<DataRequest>() == 0);
    // The request and the IV are stored as 8-byte words (`Queue::push`).
    assert!(
        SLOT_REQ % 8 == 0 && (DATA_REQ_SIZE + Iv::MAX) % 8 == 0 && SLOT_STATUS == SLOT_IV + Iv::MAX
    );
    assert!(SLOT_SIZE % DMA_ALIGN == 0);
};

/// Bytes of the control queue's scratch area (one request at a time: the queue's lock).
pub(super) const CTRL_SCRATCH: usize = 4096;
/// The control request ([`CTRL_REQ_SIZE`] bytes).
pub(super) const CTRL_REQ: usize = 0;
/// The key material following a create-session request.
pub(super) const CTRL_KEYS: usize = 128;
/// The device-writable part: a [`SessionInput`] (create) or a status byte (destroy).
pub(super) const CTRL_INPUT: usize = 2048;
/// Bytes of a [`SessionInput`].
pub(super) const SESSION_INPUT_LEN: usize = size_of::<SessionInput>();
/// Offset of the status inside a [`SessionInput`].
pub(super) const SESSION_INPUT_STATUS: usize = offset_of!(SessionInput, status);
/// Bytes a device must write for a usable [`SessionInput`]: the session id and the status.
pub(super) const SESSION_INPUT_MIN: usize = offset_of!(SessionInput, padding);

const _: () = {
    assert!(CTRL_REQ + CTRL_REQ_SIZE <= CTRL_KEYS);
    // The longest keys a valid session carries (a chain: cipher key and MAC key) fit.
    assert!(CTRL_KEYS + MAX_CIPHER_KEY_LEN + MAX_AUTH_KEY_LEN <= CTRL_INPUT);
    assert!(CTRL_INPUT + SESSION_INPUT_LEN <= CTRL_SCRATCH);
    assert!(CTRL_INPUT + STATUS_LEN <= CTRL_SCRATCH);
    assert!(CTRL_INPUT % align_of::<SessionInput>() == 0);
    assert!(SESSION_INPUT_STATUS + size_of::<u32>() == SESSION_INPUT_MIN);
    // What follows the scratch (the request slots, then the arena) stays page aligned.
    assert!(CTRL_SCRATCH % 4096 == 0);
};
