//! The control queue: creating and destroying sessions, one request at a time through the
//! control scratch area (see [`layout`](super::layout)).

use dpacc_spec::error::status_to_result;
use dpacc_spec::virtio_crypto::{self as vc, CTRL_REQ_SIZE};
use dpacc_spec::{CryptoError, SessionParams};
use vm_memory::ByteValued;

use super::device::{lock, Inner};
use super::layout::{
    CTRL_INPUT, CTRL_KEYS, CTRL_REQ, SESSION_INPUT_LEN, SESSION_INPUT_MIN, SESSION_INPUT_STATUS,
    STATUS_LEN, STATUS_UNSET,
};
use super::queue::wait_used;
use crate::error::{Error, Result};
use crate::virtq::{CompletionMode, Notifier, RawDesc, SplitQueue, UsedElem};

/// The control queue's driver state (behind the device's lock).
pub(super) struct CtrlState {
    pub(super) vq: SplitQueue,
    pub(super) notifier: Box<dyn Notifier>,
    /// Offset of the control scratch area in the region.
    scratch_off: usize,
    /// Key material of the request being built (wiped after each use).
    keys: Vec<u8>,
}

impl CtrlState {
    pub(super) fn new(vq: SplitQueue, notifier: Box<dyn Notifier>, scratch_off: usize) -> Self {
        Self {
            vq,
            notifier,
            scratch_off,
            keys: Vec::with_capacity(1024),
        }
    }
}

impl Inner {
    /// Creates a session for validated parameters; returns the device's session id.
    pub(super) fn create_session(&self, p: &SessionParams<'_>) -> Result<u64> {
        let mut guard = lock(&self.ctrl);
        let c = &mut *guard;
        let req = dpacc_spec::ctrl::encode_create(p, &mut c.keys);
        let mem = &self.shared.mem;
        let off = c.scratch_off;
        if c.keys.len() > CTRL_INPUT - CTRL_KEYS {
            c.keys.fill(0);
            return Err(CryptoError::InvalidKeyLength.into());
        }
        let klen = c.keys.len();
        // SAFETY: the scratch area is private to the control queue (we hold its lock) and no
        // request is in flight on it; the offsets are inside it (see `layout`).
        unsafe {
            let base = mem.as_ptr().add(off);
            std::ptr::copy_nonoverlapping(
                req.as_slice().as_ptr(),
                base.add(CTRL_REQ),
                CTRL_REQ_SIZE,
            );
            std::ptr::copy_nonoverlapping(c.keys.as_ptr(), base.add(CTRL_KEYS), klen);
            std::ptr::write_bytes(base.add(CTRL_INPUT), 0, SESSION_INPUT_LEN);
            // The status field of the session input pre-set to "unset".
            *base.add(CTRL_INPUT + SESSION_INPUT_STATUS) = STATUS_UNSET;
        }
        c.keys.fill(0);
        let mut descs = [RawDesc::default(); 3];
        let mut k = 0;
        descs[k] = RawDesc::readable(mem.gpa(off + CTRL_REQ), CTRL_REQ_SIZE as u32);
        k += 1;
        if klen > 0 {
            descs[k] = RawDesc::readable(mem.gpa(off + CTRL_KEYS), klen as u32);
            k += 1;
        }
        descs[k] = RawDesc::writable(mem.gpa(off + CTRL_INPUT), SESSION_INPUT_LEN as u32);
        k += 1;
        let res = self.ctrl_roundtrip(c, &descs[..k]);
        // SAFETY: as above; the request completed (or the queue is dead), wipe the key copy.
        unsafe { std::ptr::write_bytes(mem.as_ptr().add(off + CTRL_KEYS), 0, klen) };
        let used = res?;
        if (used.len as usize) < SESSION_INPUT_MIN {
            return Err(Error::Protocol(
                "create session: device wrote no session input",
            ));
        }
        let mut input = vc::SessionInput::default();
        // SAFETY: the device finished writing the session input (used entry reaped).
        unsafe {
            std::ptr::copy_nonoverlapping(
                mem.as_ptr().add(off + CTRL_INPUT),
                input.as_mut_slice().as_mut_ptr(),
                SESSION_INPUT_LEN,
            )
        };
        let st = input.status.to_native();
        status_to_result(u8::try_from(st).unwrap_or(vc::status::ERR))?;
        Ok(input.session_id.to_native())
    }

    /// Destroys session `id` of `service`, reporting the device's status.
    pub(super) fn destroy_session(&self, service: u32, id: u64) -> Result<()> {
        let mut guard = lock(&self.ctrl);
        let c = &mut *guard;
        let req = dpacc_spec::ctrl::encode_destroy(service, id);
        let mem = &self.shared.mem;
        let off = c.scratch_off;
        // SAFETY: scratch is private to the control queue (lock held), nothing in flight.
        unsafe {
            let base = mem.as_ptr().add(off);
            std::ptr::copy_nonoverlapping(
                req.as_slice().as_ptr(),
                base.add(CTRL_REQ),
                CTRL_REQ_SIZE,
            );
            *base.add(CTRL_INPUT) = STATUS_UNSET;
        }
        let descs = [
            RawDesc::readable(mem.gpa(off + CTRL_REQ), CTRL_REQ_SIZE as u32),
            RawDesc::writable(mem.gpa(off + CTRL_INPUT), STATUS_LEN as u32),
        ];
        let used = self.ctrl_roundtrip(c, &descs)?;
        if (used.len as usize) < STATUS_LEN {
            return Err(Error::Protocol("destroy session: device wrote no status"));
        }
        // SAFETY: the device finished writing the status byte.
        let st = unsafe { *mem.as_ptr().add(off + CTRL_INPUT) };
        Ok(status_to_result(st)?)
    }

    fn ctrl_roundtrip(&self, c: &mut CtrlState, descs: &[RawDesc]) -> Result<UsedElem> {
        let head = c.vq.add(descs, 0)?;
        if c.vq.publish() {
            c.notifier.kick()?;
        }
        loop {
            wait_used(
                &mut c.vq,
                &*c.notifier,
                CompletionMode::Interrupt,
                self.opts.timeout,
            )?;
            if let Some(u) = c.vq.reap()? {
                if u.head == head {
                    return Ok(u);
                }
                // A raw chain someone left behind: drop it.
            }
        }
    }
}
