//! A data queue: the asynchronous batch API ([`Queue`]: push, flush, poll, wait) over one
//! split queue and its per-request slots.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dpacc_spec::error::status_to_result;
use dpacc_spec::virtio_crypto::{status as vc_status, DATA_REQ_SIZE};
use dpacc_spec::{CryptoError, Iv};

use super::device::Inner;
use super::layout::{
    MAX_REQ_DESCS, SLOT_REQ, SLOT_SIZE, SLOT_STATUS, SLOT_TABLE, STATUS_LEN, STATUS_UNSET,
};
use super::op::{Completion, Op, OpBufs, OpKind};
use super::pacing::Pacing;
use super::request::REQ_WORDS;
use crate::error::{Error, Result};
use crate::mem::{DmaBuf, SharedMemory};
use crate::virtq::{copy_changed, CompletionMode, Notifier, RawDesc, SplitQueue, UsedElem};

/// Tokens of chains posted through the raw API (the crypto path ignores their completions).
pub(super) const RAW_TOKEN: u64 = 1 << 63;

/// One data queue's driver state.
pub(super) struct QueueState {
    pub(super) index: u16,
    pub(super) vq: SplitQueue,
    pub(super) notifier: Box<dyn Notifier>,
    /// Offset of this queue's request slots in the region.
    slots_off: usize,
    /// Per slot: what its operation hands back (only the buffers and the user data: moving
    /// the whole `Op` in and out costs `memcpy` calls and stalls on the loads after them).
    slots: Vec<InFlight>,
    /// Per slot: whether an operation is in flight in it.
    busy: Vec<bool>,
    free_slots: Vec<u16>,
    /// Completions reaped while an in-band control request waited on this queue; `poll`
    /// hands them out first. Sized once (at most one per slot).
    stash: VecDeque<Completion>,
    pub(super) broken: bool,
    /// With interrupts and `Options::wait_poll`: the device's pace, for timed sleeps.
    pacing: Pacing,
}

impl QueueState {
    /// A fresh queue of `vq.size()` entries whose request slots start at `slots_off`.
    pub(super) fn new(
        index: u16,
        vq: SplitQueue,
        notifier: Box<dyn Notifier>,
        slots_off: usize,
    ) -> Self {
        let size = vq.size();
        Self {
            index,
            vq,
            notifier,
            slots_off,
            slots: (0..size).map(|_| InFlight::default()).collect(),
            busy: vec![false; usize::from(size)],
            free_slots: (0..size).rev().collect(),
            stash: VecDeque::with_capacity(usize::from(size)),
            broken: false,
            pacing: Pacing::default(),
        }
    }

    /// Turns a reaped used entry into its operation's completion (`None` for a raw or control
    /// chain). A protocol violation marks the queue broken.
    #[inline]
    pub(super) fn complete(
        &mut self,
        used: UsedElem,
        mem: &SharedMemory,
    ) -> Result<Option<Completion>> {
        if used.token & RAW_TOKEN != 0 {
            return Ok(None);
        }
        let slot = used.token as usize;
        // A slot with no operation in flight (or none at all) is a protocol violation.
        let (Some(busy @ &mut true), Some(op)) =
            (self.busy.get_mut(slot), self.slots.get_mut(slot))
        else {
            self.broken = true;
            return Err(Error::Protocol("completion for an empty slot"));
        };
        *busy = false;
        let bufs = std::mem::take(&mut op.bufs);
        let user_data = op.user_data;
        self.free_slots.push(slot as u16);
        let soff = self.slots_off + slot * SLOT_SIZE;
        // SAFETY: the chain was reaped: the device is done with the slot's status byte
        // (volatile: a misbehaving device may still be writing it).
        let status = unsafe { std::ptr::read_volatile(mem.as_ptr().add(soff + SLOT_STATUS)) };
        // The status is the chain's last writable byte, and the used length the whole
        // writable length (spec/README.md §1.5): a shorter one did not write the status.
        let result = if used.len < used.writable {
            Err(CryptoError::Internal(
                "device's used length is short of the request's status byte",
            ))
        } else {
            data_status(status).and_then(|()| bufs.verify())
        };
        Ok(Some(Completion {
            user_data,
            result,
            written: used.len,
            bufs,
        }))
    }

    /// Starts loading the status lines of the next `n` used entries' slots (written by the
    /// device on its core), so that completing a batch waits for those lines once, in parallel,
    /// rather than one after the other.
    #[inline]
    fn prefetch_statuses(&self, mem: &SharedMemory, n: u16) {
        let (base, slots) = (mem.as_ptr(), self.slots.len());
        self.vq.peek_used_tokens(n, |token| {
            let slot = token as usize;
            if slot < slots {
                // Inside the slot area: `slot` is a slot index of this queue.
                let p = base.wrapping_add(self.slots_off + slot * SLOT_SIZE + SLOT_STATUS);
                crate::mem::prefetch(p);
            }
        });
    }

    /// Keeps a completion for the next `poll` (see `stash`).
    pub(super) fn stash(&mut self, c: Completion) {
        self.stash.push_back(c);
    }

    /// Whether nothing is in flight on the queue (no operation, no raw chain).
    pub(super) fn idle(&self) -> bool {
        self.free_slots.len() == self.slots.len() && self.vq.in_flight() == 0
    }
}

/// A data request's status byte as a result: the values of the virtio-crypto spec, and a
/// device error for anything else (a device that never wrote the status leaves
/// [`STATUS_UNSET`] there).
#[inline]
fn data_status(status: u8) -> std::result::Result<(), CryptoError> {
    match status {
        vc_status::OK => Ok(()),
        // ERR, BADMSG, NOTSUPP, INVSESS, NOSPC, and virtio 1.2's KEY_REJECTED (6).
        1..=6 => status_to_result(status),
        _ => Err(CryptoError::Internal(
            "device wrote a status byte outside the virtio-crypto spec",
        )),
    }
}

/// What a request slot keeps while its operation is in flight.
#[derive(Debug, Default)]
struct InFlight {
    user_data: u64,
    bufs: OpBufs,
}

/// A push the queue refused before the device saw it; the operation (and its buffers) comes
/// back.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct Rejected {
    /// Why.
    pub error: Error,
    /// The operation, untouched.
    pub op: Op,
}

/// Exclusive handle to one data queue: the asynchronous batch API (and, with the `testing`
/// feature, descriptor-level access through `Queue::raw`).
///
/// `push` operations (no device notification), `flush` once per batch (one kick at most, and
/// none if EVENT_IDX says the device is still busy), then `poll` or `wait` for
/// [`Completion`]s. Nothing on this path allocates. Give each thread its own `Queue`.
pub struct Queue {
    pub(super) dev: Arc<Inner>,
    st: Option<QueueState>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("index", &self.st.as_ref().map(|s| s.index))
            .finish()
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        if let Some(st) = self.st.take() {
            self.dev.put_back(st);
        }
    }
}

impl Queue {
    pub(super) fn new(dev: Arc<Inner>, st: QueueState) -> Self {
        Self { dev, st: Some(st) }
    }

    pub(super) fn st(&mut self) -> &mut QueueState {
        // Invariant: `st` is `Some` from construction until `drop`.
        self.st.as_mut().expect("queue state present until drop")
    }

    /// The data queue index.
    pub fn index(&self) -> u16 {
        self.st.as_ref().map_or(u16::MAX, |s| s.index)
    }

    /// Operations pushed and not yet handed out by [`poll`](Self::poll) /
    /// [`wait`](Self::wait).
    pub fn in_flight(&self) -> usize {
        self.st
            .as_ref()
            .map_or(0, |s| s.slots.len() - s.free_slots.len() + s.stash.len())
    }

    /// How many more operations can be pushed right now.
    pub fn free_slots(&self) -> usize {
        let Some(s) = self.st.as_ref() else { return 0 };
        let descs = if self.dev.indirect {
            s.vq.num_free() as usize
        } else {
            s.vq.num_free() as usize / MAX_REQ_DESCS
        };
        s.free_slots.len().min(descs)
    }

    /// Adds an operation without notifying the device. Lengths are checked here; a bad
    /// operation, a full queue or a buffer from another device is [`Rejected`] with the
    /// operation handed back.
    // The op travels back by value in the error so a rejection costs no allocation.
    #[allow(clippy::result_large_err)]
    #[inline]
    pub fn push(&mut self, op: Op) -> std::result::Result<(), Rejected> {
        // Borrowed, not cloned: an `Arc` clone per operation is a locked instruction, which
        // waits for the stores to the ring and the slot (lines the device reads on its core).
        let Self { dev, st } = self;
        let (indirect, shared) = (dev.indirect, &dev.shared);
        let st = st.as_mut().expect("queue state present until drop");
        if st.broken {
            return Err(Rejected {
                error: Error::Protocol("queue broken by an earlier device protocol violation"),
                op,
            });
        }
        let (req, out_len) = match op.encode() {
            Ok(v) => v,
            Err(e) => {
                return Err(Rejected {
                    error: e.into(),
                    op,
                })
            }
        };
        let foreign = [&op.bufs.src, &op.bufs.dst, &op.bufs.aad, &op.bufs.digest]
            .iter()
            .any(|b| b.as_ref().is_some_and(|b| !Arc::ptr_eq(b.shared(), shared)));
        if foreign {
            return Err(Rejected {
                error: Error::InvalidArgument("DmaBuf from another device"),
                op,
            });
        }
        let Some(&slot) = st.free_slots.last() else {
            return Err(Rejected {
                error: Error::QueueFull,
                op,
            });
        };
        let mem = &shared.mem;
        let soff = st.slots_off + slot as usize * SLOT_SIZE;
        // The request and the IV (zero-padded to `Iv::MAX`) as the words of the slot's first
        // 88 bytes, from registers; polled, stored only where they changed, so a slot reused
        // for the same session and lengths leaves the request's first line alone (see
        // `copy_changed`).
        const WORDS: usize = (DATA_REQ_SIZE + Iv::MAX) / 8;
        let mut words = [0u64; WORDS];
        words[..REQ_WORDS].copy_from_slice(&req.0);
        words[REQ_WORDS..].copy_from_slice(&op.iv);
        // SAFETY: the slot is free (not referenced by any chain in flight) and private to this
        // queue; all offsets are inside its SLOT_SIZE bytes, and the slot (hence SLOT_REQ) is
        // 8-byte aligned (`layout`).
        unsafe {
            let base = mem.as_ptr().add(soff);
            copy_changed(base.add(SLOT_REQ).cast(), &words, !st.vq.interrupts());
            *base.add(SLOT_STATUS) = STATUS_UNSET;
        }
        let b = &op.bufs;
        let g = |o: &Option<DmaBuf>| o.as_ref().map_or((0, 0), |x| (x.gpa(), x.len() as u32));
        let mut d = [RawDesc::default(); MAX_REQ_DESCS];
        let mut k = 0;
        let mut add = |desc: RawDesc| {
            if desc.len > 0 {
                d[k] = desc;
                k += 1;
            }
        };
        // The request and the IV right after it, one descriptor (see `layout`).
        add(RawDesc::readable(
            mem.gpa(soff + SLOT_REQ),
            (DATA_REQ_SIZE + usize::from(op.iv_len)) as u32,
        ));
        let (src_gpa, src_len) = g(&b.src);
        add(RawDesc::readable(src_gpa, src_len));
        let (aad_gpa, aad_len) = g(&b.aad);
        add(RawDesc::readable(aad_gpa, aad_len));
        match op.kind {
            OpKind::Hash => {
                add(RawDesc::writable(g(&b.digest).0, out_len as u32));
            }
            OpKind::Chain => {
                add(RawDesc::writable(g(&b.dst).0, src_len));
                add(RawDesc::writable(
                    g(&b.digest).0,
                    (out_len - src_len as usize) as u32,
                ));
            }
            OpKind::Cipher | OpKind::Aead => {
                let dst = if op.in_place { src_gpa } else { g(&b.dst).0 };
                add(RawDesc::writable(dst, out_len as u32));
            }
        }
        add(RawDesc::writable(
            mem.gpa(soff + SLOT_STATUS),
            STATUS_LEN as u32,
        ));
        let chain = &d[..k];
        let res = if indirect {
            // SAFETY: the slot's table area (room for MAX_REQ_DESCS, 16-aligned: see `layout`)
            // is free and private.
            unsafe {
                st.vq.add_indirect(
                    mem.as_ptr().add(soff + SLOT_TABLE),
                    mem.gpa(soff + SLOT_TABLE),
                    chain,
                    slot as u64,
                )
            }
        } else {
            st.vq.add(chain, slot as u64)
        };
        match res {
            Ok(_) => {
                st.free_slots.pop();
                let s = slot as usize;
                if let (Some(busy), Some(f)) = (st.busy.get_mut(s), st.slots.get_mut(s)) {
                    *busy = true;
                    f.user_data = op.user_data;
                    f.bufs = op.bufs;
                }
                Ok(())
            }
            Err(error) => Err(Rejected { error, op }),
        }
    }

    /// Publishes everything pushed since the last flush and kicks the device if it asked.
    pub fn flush(&mut self) -> Result<()> {
        let st = self.st();
        if st.vq.publish() {
            st.notifier.kick()?;
        }
        Ok(())
    }

    /// Creates a session like [`CryptoDevice::create_session`](super::CryptoDevice::create_session),
    /// sending the request in-band on *this* queue when sessions go in-band: a thread that holds
    /// every data queue (a VM under QEMU has one) can still create sessions. Operations in
    /// flight stay in flight; their completions seen meanwhile are kept for the next
    /// [`poll`](Self::poll). Destroys deferred while every queue was held go out first.
    pub fn create_session(
        &mut self,
        params: &dpacc_spec::SessionParams<'_>,
    ) -> Result<super::Session> {
        let dev = self.dev.clone();
        let st = self.st.as_mut();
        dev.open_session(params, st)
    }

    /// `push` then `flush`.
    #[allow(clippy::result_large_err)]
    pub fn submit(&mut self, op: Op) -> std::result::Result<(), Rejected> {
        self.push(op)?;
        self.flush().map_err(|error| Rejected {
            error,
            op: Op::empty(),
        })
    }

    /// Moves finished operations into `out` (appending; reuse the `Vec` to avoid allocation)
    /// without blocking. Returns how many. An error means the device broke the protocol.
    pub fn poll(&mut self, out: &mut Vec<Completion>) -> Result<usize> {
        self.poll_with(|c| out.push(c))
    }

    /// Like [`poll`](Self::poll), but hands each completion to `f` (no `Vec` in between: a
    /// caller that only takes the buffers back and checks the result moves less).
    #[inline]
    pub fn poll_with(&mut self, mut f: impl FnMut(Completion)) -> Result<usize> {
        let Self { dev, st } = self;
        let mem = &dev.shared;
        let st = st.as_mut().expect("queue state present until drop");
        let mut n = st.stash.len();
        while let Some(c) = st.stash.pop_front() {
            f(c);
        }
        st.prefetch_statuses(&mem.mem, st.vq.used_pending());
        loop {
            let used = match st.vq.reap() {
                Ok(Some(u)) => u,
                Ok(None) => return Ok(n),
                Err(e) => {
                    st.broken = true;
                    return Err(e);
                }
            };
            if let Some(c) = st.complete(used, &mem.mem)? {
                f(c);
                n += 1;
            }
        }
    }

    /// Blocks until at least one operation completes (or the timeout passes), then polls.
    pub fn wait(&mut self, out: &mut Vec<Completion>) -> Result<usize> {
        self.wait_for(out, 1)
    }

    /// Blocks until at least `min` operations (at most all those in flight, at least one) have
    /// completed, or the timeout passes, then polls. With interrupts and EVENT_IDX the device
    /// is asked to interrupt only then, so a pipelining caller (e.g. waiting for a batch while
    /// the next one is queued) is woken once per batch rather than once per completion.
    pub fn wait_for(&mut self, out: &mut Vec<Completion>, min: usize) -> Result<usize> {
        self.wait_for_with(min, |c| out.push(c))
    }

    /// Like [`wait_for`](Self::wait_for), but hands each completion to `f` (see
    /// [`poll_with`](Self::poll_with)).
    #[inline]
    pub fn wait_for_with(&mut self, min: usize, f: impl FnMut(Completion)) -> Result<usize> {
        if self.st.as_ref().is_some_and(|s| !s.stash.is_empty()) {
            return self.poll_with(f);
        }
        let in_flight = self.in_flight();
        if in_flight == 0 {
            return Ok(0);
        }
        // `in_flight` is at most the ring size (≤ 32768), so this fits.
        let min = u16::try_from(min.clamp(1, in_flight)).unwrap_or(u16::MAX);
        let (timeout, mode, look) = {
            let o = &self.dev.opts;
            (o.timeout, o.completion, o.wait_poll)
        };
        let st = self.st();
        let w = Wait {
            mode,
            timeout,
            look,
        };
        wait_used_n(&mut st.vq, &*st.notifier, w, &mut st.pacing, min)?;
        self.poll_with(f)
    }

    /// Runs one operation to completion (the synchronous path). Other operations in flight on
    /// this queue stay in flight, but their completions seen meanwhile are dropped, so use it on
    /// an otherwise idle queue.
    pub fn run(&mut self, op: Op) -> Result<Completion> {
        let ud = op.user_data;
        let tagged = op.with_user_data(u64::MAX);
        self.submit(tagged).map_err(|r| r.error)?;
        let mut out = Vec::with_capacity(4);
        loop {
            out.clear();
            self.wait(&mut out)?;
            if let Some(i) = out.iter().position(|c| c.user_data == u64::MAX) {
                let mut c = out.swap_remove(i);
                c.user_data = ud;
                return Ok(c);
            }
            if self.in_flight() == 0 {
                return Err(Error::Protocol("operation vanished"));
            }
        }
    }
}

/// Blocks until the used ring has an entry (spinning or sleeping), or times out.
pub(super) fn wait_used(
    vq: &mut SplitQueue,
    n: &dyn Notifier,
    mode: CompletionMode,
    timeout: Duration,
) -> Result<()> {
    let w = Wait {
        mode,
        timeout,
        look: Duration::ZERO,
    };
    wait_used_n(vq, n, w, &mut Pacing::default(), 1)
}

/// How a wait notices completions.
#[derive(Clone, Copy, Debug)]
struct Wait {
    mode: CompletionMode,
    /// Longest wait before [`Error::Timeout`].
    timeout: Duration,
    /// With interrupts: how long to look at the used ring (after a timed sleep when the
    /// device's pace is known) before arming the interrupt and sleeping on it; zero: sleep on
    /// the interrupt at once (see [`Pacing`]).
    look: Duration,
}

/// How long a polling wait spins before it yields the core between looks at the used ring:
/// longer than the device takes for a batch (a 64-operation batch of 64 B requests takes the
/// backend ~13 µs), as long as the backend's own busy-poll window (`--busy-poll-us`, 50 µs).
const POLL_YIELD_AFTER: Duration = Duration::from_micros(50);

/// Blocks until the used ring has `min` (≥ 1) unreaped entries, or times out.
fn wait_used_n(
    vq: &mut SplitQueue,
    n: &dyn Notifier,
    w: Wait,
    pacing: &mut Pacing,
    min: u16,
) -> Result<()> {
    let min = min.max(1);
    let pending = vq.used_pending();
    if pending >= min {
        return Ok(());
    }
    let start = Instant::now();
    let deadline = start + w.timeout;
    match w.mode {
        CompletionMode::Poll => {
            let mut spins = 0u32;
            while vq.used_pending() < min {
                spins = spins.wrapping_add(1);
                if spins % 64 == 0 {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(Error::Timeout);
                    }
                    // Only a long wait gives the core away: a yield lets any other runnable
                    // task on this core run for up to a time slice (milliseconds), while the
                    // device, finishing a batch meanwhile, runs dry.
                    if now - start >= POLL_YIELD_AFTER {
                        std::thread::yield_now();
                    }
                } else {
                    std::hint::spin_loop();
                }
            }
            Ok(())
        }
        CompletionMode::Interrupt => {
            if !w.look.is_zero() && look_before_sleep(vq, w.look, pacing, min, pending, deadline) {
                return Ok(());
            }
            loop {
                if !vq.prepare_wait_for(min) {
                    break;
                }
                let now = Instant::now();
                if now >= deadline {
                    return Err(Error::Timeout);
                }
                n.wait(Some(deadline - now))?;
            }
            if !w.look.is_zero() {
                pacing.learn(start.elapsed(), vq.used_pending().wrapping_sub(pending));
            }
            Ok(())
        }
    }
}

/// With interrupts, before arming the interrupt: sleeps on a timer for most of the time the
/// device's recent pace says `min` completions take (`pending` are already there), then looks
/// at the used ring for up to `look`. The interrupt stays suppressed meanwhile (the driver left
/// `used_event` behind the used index when it last woke), so a wait that ends here cost the
/// device no signal. True: `min` entries are pending.
fn look_before_sleep(
    vq: &SplitQueue,
    look: Duration,
    pacing: &mut Pacing,
    min: u16,
    pending: u16,
    deadline: Instant,
) -> bool {
    let start = Instant::now();
    let needed = min - pending;
    match pacing.sleep_for(needed) {
        Some(d) if start + d < deadline => {
            pacing.sleep(d);
            pacing.learn_sleep(d, start.elapsed());
        }
        // Too long to look for, too short to sleep on a timer for: the interrupt it is.
        _ if pacing.longer_than(needed, look) => return false,
        _ => {}
    }
    let look_start = Instant::now();
    let mut spins = 0u32;
    loop {
        let now_pending = vq.used_pending();
        if now_pending >= min {
            pacing.learn(start.elapsed(), now_pending.wrapping_sub(pending));
            return true;
        }
        spins = spins.wrapping_add(1);
        if spins % 64 == 0 && look_start.elapsed() >= look {
            return false;
        }
        std::hint::spin_loop();
    }
}
