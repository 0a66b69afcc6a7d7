//! Session control: creating and destroying sessions, one request at a time through the
//! control scratch area (see [`layout`](super::layout)).
//!
//! Requests go on the device's control queue, or in-band on a data queue (dpacc's extension,
//! `dpacc_spec::in_band`) when the device is a VMM's model whose control queue cannot create
//! every session the backend offers (QEMU's `virtio-crypto-pci`). The layouts are the same
//! either way; only the queue differs.

use std::collections::HashSet;
use std::time::Duration;

use dpacc_spec::error::status_to_result;
use dpacc_spec::in_band::{self, GET_CONFIG_INPUT_LEN};
use dpacc_spec::virtio_crypto::{self as vc, Config, CtrlRequest, CTRL_REQ_SIZE};
use dpacc_spec::{CryptoError, SessionParams};
use vm_memory::ByteValued;

use super::device::{lock, Inner};
use super::layout::{
    CTRL_INPUT, CTRL_KEYS, CTRL_REQ, SESSION_INPUT_LEN, SESSION_INPUT_MIN, SESSION_INPUT_STATUS,
    STATUS_LEN, STATUS_UNSET,
};
use super::queue::{wait_used, QueueState};
use crate::error::{Error, Result};
use crate::mem::SharedMemory;
use crate::virtq::{CompletionMode, Notifier, RawDesc, SplitQueue, UsedElem};

/// Token of an in-band control request on a data queue (never a request slot).
const CTRL_TOKEN: u64 = u64::MAX;

/// The control queue's driver state (behind the device's lock).
pub(super) struct CtrlState {
    pub(super) vq: SplitQueue,
    pub(super) notifier: Box<dyn Notifier>,
    /// Offset of the control scratch area in the region.
    scratch_off: usize,
    /// Key material of the request being built (wiped after each use).
    keys: Vec<u8>,
    /// In-band destroys that found every data queue taken: sent with the next request.
    deferred: Vec<(u32, u64)>,
    /// (service, id) of the sessions this handle has open: a device answering a create with
    /// one of them broke the protocol (ids are never reused while open, spec/README.md §1.4).
    open: HashSet<(u32, u64)>,
    /// An in-band request failed after it was posted (its data queue is broken): the device
    /// may still write the scratch area, so it is not used again.
    scratch_lost: bool,
}

impl CtrlState {
    pub(super) fn new(vq: SplitQueue, notifier: Box<dyn Notifier>, scratch_off: usize) -> Self {
        Self {
            vq,
            notifier,
            scratch_off,
            keys: Vec::with_capacity(1024),
            deferred: Vec::new(),
            open: HashSet::new(),
            scratch_lost: false,
        }
    }
}

/// Posts `descs` on `vq`, kicks, and waits for that chain to come back.
fn roundtrip(
    vq: &mut SplitQueue,
    notifier: &dyn Notifier,
    mode: CompletionMode,
    timeout: Duration,
    descs: &[RawDesc],
    token: u64,
) -> Result<UsedElem> {
    let head = vq.add(descs, token)?;
    if vq.publish() {
        notifier.kick()?;
    }
    loop {
        wait_used(vq, notifier, mode, timeout)?;
        if let Some(u) = vq.reap()? {
            if u.head == head {
                return Ok(u);
            }
            // A raw chain someone left behind: drop it.
        }
    }
}

/// A control status as a result: the virtio-crypto spec's values (`OK` ..= `KEY_REJECTED`),
/// and a protocol violation for anything else.
fn ctrl_status(status: u32, what: &'static str) -> Result<()> {
    match u8::try_from(status) {
        Ok(s @ 0..=6) => Ok(status_to_result(s)?),
        _ => Err(Error::Protocol(what)),
    }
}

/// A request with only an opcode (dpacc's in-band requests).
fn bare_request(opcode: u32) -> CtrlRequest {
    let mut r = CtrlRequest::default();
    r.header.opcode = opcode.into();
    r
}

/// Writes `req` at the scratch area's request offset and `fill` at its input offset.
///
/// # Safety
/// The scratch area must be private to the caller (the control lock, or the device not built
/// yet) with nothing in flight on it.
unsafe fn write_scratch(mem: &SharedMemory, off: usize, req: &CtrlRequest, fill: &[u8]) {
    // SAFETY: the offsets are inside the scratch area (see `layout`), which our caller owns.
    unsafe {
        let base = mem.as_ptr().add(off);
        std::ptr::copy_nonoverlapping(req.as_slice().as_ptr(), base.add(CTRL_REQ), CTRL_REQ_SIZE);
        std::ptr::copy_nonoverlapping(fill.as_ptr(), base.add(CTRL_INPUT), fill.len());
    }
}

/// Asks the backend, in-band on data queue `st`, for its real config space: `None` when it
/// does not know dpacc's extension (its answer is then `NOTSUPP`).
pub(super) fn get_config_in_band(
    mem: &SharedMemory,
    scratch_off: usize,
    st: &mut QueueState,
    mode: CompletionMode,
    timeout: Duration,
) -> Result<Option<Config>> {
    let mut fill = [0u8; GET_CONFIG_INPUT_LEN];
    fill[GET_CONFIG_INPUT_LEN - 1] = STATUS_UNSET;
    // SAFETY: the device is being brought up: nothing else uses the scratch area.
    unsafe { write_scratch(mem, scratch_off, &bare_request(in_band::GET_CONFIG), &fill) };
    let descs = [
        RawDesc::readable(mem.gpa(scratch_off + CTRL_REQ), CTRL_REQ_SIZE as u32),
        RawDesc::writable(
            mem.gpa(scratch_off + CTRL_INPUT),
            GET_CONFIG_INPUT_LEN as u32,
        ),
    ];
    let used = roundtrip(&mut st.vq, &*st.notifier, mode, timeout, &descs, CTRL_TOKEN)?;
    let mut out = [0u8; GET_CONFIG_INPUT_LEN];
    // SAFETY: the chain was used: the device is done with the input area.
    unsafe {
        std::ptr::copy_nonoverlapping(
            mem.as_ptr().add(scratch_off + CTRL_INPUT),
            out.as_mut_ptr(),
            GET_CONFIG_INPUT_LEN,
        )
    };
    if (used.len as usize) < GET_CONFIG_INPUT_LEN || out[GET_CONFIG_INPUT_LEN - 1] != vc::status::OK
    {
        return Ok(None);
    }
    let mut cfg = Config::default();
    cfg.as_mut_slice()
        .copy_from_slice(&out[..GET_CONFIG_INPUT_LEN - 1]);
    Ok(Some(cfg))
}

/// Closes every session of the device, in-band on data queue `st` (a new owner's clean start).
pub(super) fn close_all_in_band(
    mem: &SharedMemory,
    scratch_off: usize,
    st: &mut QueueState,
    mode: CompletionMode,
    timeout: Duration,
) -> Result<()> {
    // SAFETY: the device is being brought up: nothing else uses the scratch area.
    unsafe {
        write_scratch(
            mem,
            scratch_off,
            &bare_request(in_band::CLOSE_ALL_SESSIONS),
            &[STATUS_UNSET],
        )
    };
    let descs = [
        RawDesc::readable(mem.gpa(scratch_off + CTRL_REQ), CTRL_REQ_SIZE as u32),
        RawDesc::writable(mem.gpa(scratch_off + CTRL_INPUT), STATUS_LEN as u32),
    ];
    let used = roundtrip(&mut st.vq, &*st.notifier, mode, timeout, &descs, CTRL_TOKEN)?;
    if (used.len as usize) < STATUS_LEN {
        return Err(Error::Protocol(
            "close all sessions: device wrote no status",
        ));
    }
    // SAFETY: the device finished writing the status byte.
    let s = unsafe { *mem.as_ptr().add(scratch_off + CTRL_INPUT) };
    ctrl_status(
        s.into(),
        "close all sessions: a status outside the virtio-crypto spec",
    )
}

/// Posts `descs` in-band on a data queue its owner holds, and waits for that chain; the
/// operations' completions seen meanwhile are stashed for the owner's next poll.
fn roundtrip_held(
    st: &mut QueueState,
    mem: &SharedMemory,
    mode: CompletionMode,
    timeout: Duration,
    descs: &[RawDesc],
) -> Result<UsedElem> {
    let head = st.vq.add(descs, CTRL_TOKEN)?;
    if st.vq.publish() {
        st.notifier.kick()?;
    }
    loop {
        wait_used(&mut st.vq, &*st.notifier, mode, timeout)?;
        while let Some(u) = st.vq.reap()? {
            if u.head == head && u.token == CTRL_TOKEN {
                return Ok(u);
            }
            if let Some(c) = st.complete(u, mem)? {
                st.stash(c);
            }
        }
    }
}

impl Inner {
    /// Sends `descs` to wherever control requests go (the control queue; in-band: `held`, or
    /// an idle data queue) and waits for the answer.
    fn ctrl_roundtrip(
        &self,
        c: &mut CtrlState,
        descs: &[RawDesc],
        held: Option<&mut QueueState>,
    ) -> Result<UsedElem> {
        let (mode, timeout) = (self.opts.completion, self.opts.timeout);
        if !self.in_band {
            // A request that timed out may still be in the device's hands, and with it the
            // scratch area: take its answer if it came meanwhile, and never reuse the area
            // under a request the device may still answer.
            while c.vq.in_flight() > 0 {
                if c.vq.reap()?.is_none() {
                    return Err(Error::Protocol(
                        "an earlier control request is still unanswered (it timed out)",
                    ));
                }
            }
            let t = self.opts.timeout;
            return roundtrip(
                &mut c.vq,
                &*c.notifier,
                CompletionMode::Interrupt,
                t,
                descs,
                0,
            );
        }
        if c.scratch_lost {
            return Err(Error::Protocol(
                "an earlier in-band session request failed and may still be answered",
            ));
        }
        if let Some(st) = held {
            if st.broken {
                return Err(Error::Protocol(
                    "queue broken by an earlier device protocol violation",
                ));
            }
            // A full queue is the caller's business, not a broken one: refuse before posting.
            if usize::from(st.vq.num_free()) < descs.len() {
                return Err(Error::QueueFull);
            }
            let r = roundtrip_held(st, &self.shared.mem, mode, timeout, descs);
            if r.is_err() {
                // The chain may still be in flight (timeout) or the ring is corrupt.
                st.broken = true;
                c.scratch_lost = true;
            }
            return r;
        }
        let mut st = self.take_idle()?;
        let r = roundtrip(&mut st.vq, &*st.notifier, mode, timeout, descs, CTRL_TOKEN);
        if r.is_err() {
            // The chain may still be in flight (timeout) or the ring is corrupt.
            st.broken = true;
            c.scratch_lost = true;
        }
        self.put_back(st);
        r
    }

    /// Creates a session for validated parameters; returns the device's session id.
    pub(super) fn create_session(
        &self,
        p: &SessionParams<'_>,
        mut held: Option<&mut QueueState>,
    ) -> Result<u64> {
        let mut guard = lock(&self.ctrl);
        let c = &mut *guard;
        self.flush_deferred(c, held.as_deref_mut());
        let req = dpacc_spec::ctrl::encode_create(p, &mut c.keys);
        let mem = &self.shared.mem;
        let off = c.scratch_off;
        if c.keys.len() > CTRL_INPUT - CTRL_KEYS {
            c.keys.fill(0);
            return Err(CryptoError::InvalidKeyLength.into());
        }
        let klen = c.keys.len();
        // SAFETY: the scratch area is private to the control path (we hold its lock) and no
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
        let res = self.ctrl_roundtrip(c, &descs[..k], held);
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
        ctrl_status(
            input.status.to_native(),
            "create session: a status outside the virtio-crypto spec",
        )?;
        let id = input.session_id.to_native();
        if !c.open.insert((p.service(), id)) {
            return Err(Error::Protocol(
                "create session: the device returned the id of a session already open",
            ));
        }
        Ok(id)
    }

    /// Destroys session `id` of `service`, reporting the device's status. In-band with every
    /// data queue taken, the destroy is deferred to the next control request.
    pub(super) fn destroy_session(&self, service: u32, id: u64) -> Result<()> {
        let mut guard = lock(&self.ctrl);
        let c = &mut *guard;
        c.open.remove(&(service, id));
        match self.destroy_locked(c, service, id, None) {
            Err(Error::NoQueue) => {
                c.deferred.push((service, id));
                Ok(())
            }
            r => r,
        }
    }

    /// Sends the deferred destroys while a data queue is free (or on `held`).
    fn flush_deferred(&self, c: &mut CtrlState, mut held: Option<&mut QueueState>) {
        while let Some((service, id)) = c.deferred.pop() {
            if let Err(Error::NoQueue) = self.destroy_locked(c, service, id, held.as_deref_mut()) {
                c.deferred.push((service, id));
                return;
            }
        }
    }

    fn destroy_locked(
        &self,
        c: &mut CtrlState,
        service: u32,
        id: u64,
        held: Option<&mut QueueState>,
    ) -> Result<()> {
        let req = dpacc_spec::ctrl::encode_destroy(service, id);
        let mem = &self.shared.mem;
        let off = c.scratch_off;
        // SAFETY: scratch is private to the control path (lock held), nothing in flight.
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
        let used = self.ctrl_roundtrip(c, &descs, held)?;
        if (used.len as usize) < STATUS_LEN {
            return Err(Error::Protocol("destroy session: device wrote no status"));
        }
        // SAFETY: the device finished writing the status byte.
        let st = unsafe { *mem.as_ptr().add(off + CTRL_INPUT) };
        ctrl_status(
            st.into(),
            "destroy session: a status outside the virtio-crypto spec",
        )
    }
}
