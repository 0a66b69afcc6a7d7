//! A plug-in queue as a [`CryptoQueue`]: ops are translated to the C layout in reusable
//! scratch space, completions come back by tag through a slot table that rejects unknown tags.

use std::collections::VecDeque;
use std::ffi::c_void;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dpacc_spec::error::status_to_result;
use dpacc_spec::{Completion, CryptoError, CryptoOp, CryptoQueue, Seg};

use super::{ffi, Lib, PluginSession};

/// One queue of a vendor plug-in.
pub struct PluginQueue {
    lib: Arc<Lib>,
    q: *mut c_void,
    notify: OwnedFd,
    /// `user_data` of the operation in flight under each tag (= slot index).
    slots: Box<[Option<u64>]>,
    free: Vec<u32>,
    /// Completions decided without the plug-in (foreign sessions).
    ready: VecDeque<Completion>,
    ops: Vec<ffi::Op>,
    sgs: Vec<ffi::Sg>,
    raw: Box<[ffi::Completion]>,
}

// SAFETY: the queue handle is used only through `&mut self` (one thread at a time), which is
// what the ABI requires of queue entry points; the library itself is Send + Sync.
unsafe impl Send for PluginQueue {}

impl PluginQueue {
    pub(crate) fn open(lib: Arc<Lib>, depth: usize) -> Result<Self, CryptoError> {
        let depth = depth.clamp(1, 1 << 16);
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(CryptoError::Internal("eventfd failed"));
        }
        // SAFETY: a fresh descriptor owned by nobody else.
        let notify = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut q = std::ptr::null_mut();
        let open = lib.ops.queue_open.expect("checked at load");
        // SAFETY: plug-in context, a live eventfd, and a live output slot.
        let rc = unsafe { open(lib.ops.ctx, depth as u32, notify.as_raw_fd(), &mut q) };
        if rc != 0 || q.is_null() {
            tracing::warn!("plug-in queue_open failed: {rc}");
            return Err(CryptoError::Internal("plug-in queue_open failed"));
        }
        Ok(Self {
            lib,
            q,
            notify,
            slots: vec![None; depth].into_boxed_slice(),
            free: (0..depth as u32).rev().collect(),
            ready: VecDeque::with_capacity(depth),
            ops: Vec::with_capacity(64),
            sgs: Vec::with_capacity(256),
            raw: vec![ffi::Completion::default(); depth.min(256)].into_boxed_slice(),
        })
    }

    fn plugin_session<'s>(&self, op: &'s CryptoOp<'_>) -> Option<&'s PluginSession> {
        op.session
            .as_any()
            .downcast_ref::<PluginSession>()
            .filter(|s| s.belongs_to(&self.lib))
    }

    /// Translates and submits `ops` (all with sessions of this plug-in, at most `free` of
    /// them); returns how many the plug-in accepted.
    fn submit_run(&mut self, ops: &[CryptoOp<'_>]) -> usize {
        self.ops.clear();
        self.sgs.clear();
        let push = |sgs: &mut Vec<ffi::Sg>, list: &[Seg<'_>]| {
            for s in list {
                sgs.push(ffi::Sg {
                    addr: s.ptr(),
                    len: s.len() as u64,
                });
            }
        };
        // First the segment lists (so the vector no longer moves), then the op table.
        for op in ops {
            push(&mut self.sgs, op.src);
            push(&mut self.sgs, op.dst);
            push(&mut self.sgs, op.aad);
            push(&mut self.sgs, op.digest);
        }
        let base = self.sgs.as_ptr();
        let mut at = 0usize;
        for op in ops {
            let session = self.plugin_session(op).expect("caller checked").handle;
            let slot = self.free.pop().expect("caller bounded the run");
            self.slots[slot as usize] = Some(op.user_data);
            let mut iv = [0u8; 16];
            let ivs = op.iv.as_slice();
            iv[..ivs.len()].copy_from_slice(ivs);
            let (ns, nd, na, ng) = (op.src.len(), op.dst.len(), op.aad.len(), op.digest.len());
            // SAFETY: all offsets are within `sgs`, filled above in the same order.
            let p = |off: usize| unsafe { base.add(off) };
            self.ops.push(ffi::Op {
                session,
                tag: u64::from(slot),
                iv,
                iv_len: ivs.len() as u32,
                n_src: ns as u32,
                n_dst: nd as u32,
                n_aad: na as u32,
                n_digest: ng as u32,
                reserved0: 0,
                src: p(at),
                dst: p(at + ns),
                aad: p(at + ns + nd),
                digest: p(at + ns + nd + na),
            });
            at += ns + nd + na + ng;
        }
        let submit = self.lib.ops.submit.expect("checked at load");
        // SAFETY: `ops` and `sgs` are live for the call; the data they point to stays valid
        // until completion per our own enqueue contract.
        let took = unsafe { submit(self.q, self.ops.as_ptr(), self.ops.len() as u32) } as usize;
        let took = took.min(ops.len());
        // Give back the slots of the operations the plug-in did not take.
        for o in &self.ops[took..] {
            self.slots[o.tag as usize] = None;
            self.free.push(o.tag as u32);
        }
        took
    }
}

impl CryptoQueue for PluginQueue {
    unsafe fn enqueue(&mut self, ops: &[CryptoOp<'_>]) -> usize {
        let mut i = 0;
        while i < ops.len() {
            if self.plugin_session(&ops[i]).is_none() {
                if self.ready.len() >= self.slots.len() {
                    break;
                }
                self.ready.push_back(Completion {
                    user_data: ops[i].user_data,
                    result: Err(CryptoError::InvalidSession),
                });
                i += 1;
                continue;
            }
            let mut end = i;
            while end < ops.len()
                && end - i < self.free.len()
                && self.plugin_session(&ops[end]).is_some()
            {
                end += 1;
            }
            if end == i {
                break; // no free slot
            }
            let run = end - i;
            let took = self.submit_run(&ops[i..end]);
            i += took;
            if took < run {
                break;
            }
        }
        i
    }

    fn dequeue(&mut self, out: &mut [Completion]) -> usize {
        let mut n = crate::take_ready(&mut self.ready, out);
        while n < out.len() && self.free.len() < self.slots.len() {
            let max = (out.len() - n).min(self.raw.len());
            let poll = self.lib.ops.poll.expect("checked at load");
            // SAFETY: a live output array of at least `max` entries.
            let got = unsafe { poll(self.q, self.raw.as_mut_ptr(), max as u32) } as usize;
            if got == 0 {
                break;
            }
            for c in &self.raw[..got.min(max)] {
                let slot = usize::try_from(c.tag).unwrap_or(usize::MAX);
                let Some(user_data) = self.slots.get_mut(slot).and_then(Option::take) else {
                    tracing::warn!(tag = c.tag, "plug-in completed an unknown tag; ignored");
                    continue;
                };
                self.free.push(slot as u32);
                out[n] = Completion {
                    user_data,
                    result: status_to_result(u8::try_from(c.status).unwrap_or(u8::MAX)),
                };
                n += 1;
            }
        }
        n
    }

    fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len() + self.ready.len()
    }

    fn notifier(&self) -> Option<RawFd> {
        Some(self.notify.as_raw_fd())
    }
}

impl Drop for PluginQueue {
    fn drop(&mut self) {
        // The ABI closes queues with nothing in flight: collect what is left (bounded).
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut sink = [Completion::default(); 64];
        while self.free.len() < self.slots.len() && Instant::now() < deadline {
            if self.dequeue(&mut sink) == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        if self.free.len() < self.slots.len() {
            tracing::error!("plug-in queue closed with operations still in flight");
        }
        let close = self.lib.ops.queue_close.expect("checked at load");
        // SAFETY: the queue came from queue_open and is closed once.
        unsafe { close(self.q) };
    }
}
