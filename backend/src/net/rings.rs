//! [`NetRings`]: the running virtio-net ring pair of one port, seen from the device: frames in
//! from the driver's TX ring, frames out into its RX ring (over several buffers with
//! MRG_RXBUF), and the notifications both need.

use std::mem::{offset_of, size_of};

use dpacc_spec::fastpath::{PacketBuf, PortId, HEADER_BYTES, MAX_FRAME};
use dpacc_spec::Seg;
use virtio_bindings::virtio_config::{VIRTIO_F_IN_ORDER, VIRTIO_F_VERSION_1};
use virtio_bindings::virtio_net::{virtio_net_hdr, virtio_net_hdr_v1, VIRTIO_NET_F_MRG_RXBUF};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::slot::RingPair;
use crate::split_ring::{prefetch_span, Popped, SplitRing};
use crate::vhost_user::GuestMem;
use crate::virtq::{prefetch_write, read_guest, write_guest, ChainBufs, FastMem};

/// `struct virtio_net_hdr_v1` (VERSION_1 or MRG_RXBUF: 12 bytes, `num_buffers` last).
const NET_HDR_LEN: usize = size_of::<virtio_net_hdr_v1>();
/// Where its `num_buffers` (little endian) is.
const NUM_BUFFERS_AT: usize = offset_of!(virtio_net_hdr_v1, num_buffers);
/// The legacy `struct virtio_net_hdr`, without `num_buffers` (neither VERSION_1 nor
/// MRG_RXBUF: 10 bytes).
const LEGACY_HDR_LEN: usize = size_of::<virtio_net_hdr>();
/// Most frames taken from a TX ring in one call.
const MAX_BATCH: usize = 64;
/// The header put before every received frame: no offloads, `num_buffers` 1 (patched when a
/// frame spans several buffers; absent from the legacy 10-byte header).
const RX_HDR: [u8; NET_HDR_LEN] = {
    let mut h = [0; NET_HDR_LEN];
    h[NUM_BUFFERS_AT] = 1;
    h
};
/// Most RX buffers one frame may span with MRG_RXBUF.
const MAX_RX_BUFS: usize = 16;

/// A frame on its way out: its first bytes in host memory (the headers the flow processor
/// parsed and may have rewritten), the rest, if any, still in the source guest's TX buffer
/// (a partial [`PacketBuf`]). Writing it is the frame's one copy.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OutFrame<'a> {
    head: &'a [u8],
    rest: *const u8,
    rest_len: usize,
    /// Host bytes after the rest (a trailer the processor added to a partial frame).
    tail: &'a [u8],
    /// Pending packet `i` of the batch: the frame must be finished where it lands (the
    /// `finish` callback of [`NetRings::send`]) before it is published.
    finish: Option<usize>,
}

impl<'a> OutFrame<'a> {
    /// A frame wholly in host memory.
    pub(crate) fn whole(frame: &'a [u8]) -> Self {
        Self {
            head: frame,
            rest: std::ptr::null(),
            rest_len: 0,
            tail: &[],
            finish: None,
        }
    }

    /// The frame of `p`, partial or whole. The rest of a partial frame is readable for as
    /// long as `p` is borrowed (`PacketBuf::set_partial`'s contract, which the worker keeps by
    /// holding the source's memory snapshot and TX chains until its batch is forwarded).
    pub(crate) fn of(p: &'a PacketBuf) -> Self {
        let (rest, rest_len) = p.rest().unwrap_or((std::ptr::null(), 0));
        Self {
            head: p.frame(),
            rest,
            rest_len,
            tail: p.tail(),
            finish: None,
        }
    }

    /// The frame of packet `i` of a batch: [`of`](Self::of), to be finished where it lands
    /// if the packet is pending.
    pub(crate) fn of_batch(p: &'a PacketBuf, i: usize) -> Self {
        Self {
            finish: p.is_pending().then_some(i),
            ..Self::of(p)
        }
    }

    /// Length of the whole frame.
    pub(crate) fn len(&self) -> usize {
        self.head.len() + self.rest_len + self.tail.len()
    }

    /// The host bytes after the rest.
    pub(crate) fn tail(&self) -> &'a [u8] {
        self.tail
    }

    /// The bytes in host memory.
    pub(crate) fn head(&self) -> &'a [u8] {
        self.head
    }

    /// Where the rest is, and how long (null, 0 for a whole frame).
    pub(crate) fn rest(&self) -> (*const u8, usize) {
        (self.rest, self.rest_len)
    }

    /// Copies bytes `from..from + n` of the frame into guest memory at `dst`.
    ///
    /// # Safety
    /// `dst..dst + n` must be mapped and writable, and `from + n <= self.len()`.
    unsafe fn copy_to(&self, from: usize, dst: *mut u8, n: usize) {
        let h = self.head.len();
        let in_head = h.saturating_sub(from).min(n);
        if in_head > 0 {
            // SAFETY: `dst..dst + in_head` is inside the caller's range.
            unsafe { write_guest(dst, &self.head[from..from + in_head]) };
        }
        let r_from = (from + in_head).saturating_sub(h);
        let in_rest = self.rest_len.saturating_sub(r_from).min(n - in_head);
        if in_rest > 0 {
            // SAFETY: `r_from + in_rest <= rest_len`, readable by the contract of `of`;
            // `dst + in_head..dst + in_head + in_rest` is the caller's. Both may be guest
            // memory, even the same guest's (a hostile driver may overlap its RX and TX
            // buffers), so a memmove on raw pointers: no reference is formed
            // (docs/decisions/0005-guest-memory-access.md).
            unsafe { std::ptr::copy(self.rest.add(r_from), dst.add(in_head), in_rest) };
        }
        let done = in_head + in_rest;
        if n > done {
            let t_from = from + done - h - self.rest_len;
            // SAFETY: `t_from + (n - done) <= tail.len()` (caller: `from + n <= len`); the
            // destination range is the caller's.
            unsafe { write_guest(dst.add(done), &self.tail[t_from..t_from + n - done]) };
        }
    }
}

/// A virtio-net ring pair in use by a vNF worker.
pub(crate) struct NetRings {
    rings: RingPair,
    mem: <GuestMem as GuestAddressSpace>::T,
    rx_call: Option<EventFd>,
    tx_call: Option<EventFd>,
    hdr_len: usize,
    mrg: bool,
    /// VIRTIO_F_IN_ORDER: one used element per TX batch.
    in_order: bool,
    rx_notify: bool,
    /// The driver was asked for kicks (undone at the next receive, while the worker polls).
    armed: bool,
    /// TX chains taken by the last `receive`, returned by `tx_complete` once their frames are
    /// forwarded (a partial frame's rest is read from them until then).
    tx_taken: Vec<u16>,
    /// The avail index of the TX and RX rings as last read ([`SplitRing::pending_since`]: a
    /// batch that needs no more chains than it shows does not read the driver's index).
    tx_seen: u16,
    rx_seen: u16,
}

impl NetRings {
    /// Takes over a started ring pair.
    pub(crate) fn new(rings: RingPair) -> Self {
        let f = rings.rx.features;
        let mrg = f & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0;
        let hdr_len = if mrg || f & (1 << VIRTIO_F_VERSION_1) != 0 {
            NET_HDR_LEN
        } else {
            LEGACY_HDR_LEN
        };
        Self {
            mem: rings.tx.mem.memory(),
            rx_call: rings.rx.call.as_ref().and_then(|c| c.try_clone().ok()),
            tx_call: rings.tx.call.as_ref().and_then(|c| c.try_clone().ok()),
            hdr_len,
            mrg,
            in_order: f & (1 << VIRTIO_F_IN_ORDER) != 0,
            rx_notify: false,
            armed: true,
            tx_taken: Vec::with_capacity(MAX_BATCH),
            tx_seen: rings.tx.queue.next_avail(),
            rx_seen: rings.rx.queue.next_avail(),
            rings,
        }
    }

    /// Gives the rings back (with their current indices).
    pub(crate) fn into_pair(self) -> RingPair {
        self.rings
    }

    /// The TX ring's kick eventfd.
    pub(crate) fn tx_kick(&self) -> &EventFd {
        &self.rings.tx.kick
    }

    /// The RX ring's kick eventfd (the driver added buffers).
    pub(crate) fn rx_kick(&self) -> &EventFd {
        &self.rings.rx.kick
    }

    /// Takes a fresh guest memory snapshot (call once per wake-up, before using the rings).
    pub(crate) fn refresh(&mut self) {
        self.mem = self.rings.tx.mem.memory();
    }

    /// Asks the driver for kicks again before the worker sleeps. True if frames arrived
    /// meanwhile (receive again instead of sleeping).
    pub(crate) fn tx_rearm(&mut self) -> bool {
        let mem: &GuestMemoryMmap = &self.mem;
        let fast = FastMem::new(mem);
        let q = &mut self.rings.tx.queue;
        let Some(mut ring) = SplitRing::open(q, &fast) else {
            return false;
        };
        self.armed = true;
        let more = ring.enable_kicks();
        ring.close(q);
        more
    }

    /// Moves up to `pkts.len()` frames from the TX ring into `pkts` (arriving on `port`).
    /// With `partial`, a frame longer than [`HEADER_BYTES`] in one buffer is loaded only up to
    /// them, its rest left in place for the one copy that forwards it. The chains stay taken
    /// until [`tx_complete`](Self::tx_complete), which the caller must call once the batch is
    /// forwarded (before the next `receive`, `refresh` or `into_pair`). Returns (chains
    /// taken, frames loaded); chains without a usable frame (broken, too short, too long) are
    /// counted in `bad`.
    pub(crate) fn receive(
        &mut self,
        chain: &mut ChainBufs,
        pkts: &mut [PacketBuf],
        port: PortId,
        partial: bool,
        bad: &mut u64,
    ) -> (usize, usize) {
        self.tx_taken.clear();
        let mem: &GuestMemoryMmap = &self.mem;
        let q = &mut self.rings.tx.queue;
        let fast = FastMem::new(mem);
        let Some(mut ring) = SplitRing::open(q, &fast) else {
            return (0, 0);
        };
        if std::mem::take(&mut self.armed) {
            ring.disable_kicks();
        }
        // Enough for this batch and the next one's prefetches without reading the index?
        let want = pkts.len().min(MAX_BATCH) * 2;
        let avail = ring.pending_since(self.tx_seen, want as u16);
        self.tx_seen = ring.avail_seen();
        let k = usize::from(avail).min(pkts.len()).min(MAX_BATCH);
        ring.prefetch(k as u16);
        // Walk the batch's chains first, starting the loads of their frames, then copy.
        let hdr = self.hdr_len;
        let mut frames = [(None::<Seg<'static>>, 0u16); MAX_BATCH];
        let mut taken = 0;
        for f in &mut frames[..k] {
            let Some(popped) = ring.pop_one(chain) else {
                break;
            };
            taken += 1;
            *f = match popped {
                Popped::One {
                    head,
                    seg,
                    writable: false,
                } => {
                    // The lines the copy into the packet buffer reads: past the virtio-net
                    // header (not read; often a line of its own), up to the headers.
                    let end = seg.len().min(hdr + HEADER_BYTES);
                    if end > hdr {
                        prefetch_span(seg.ptr().wrapping_add(hdr), end - hdr, false);
                    }
                    (Some(seg), head)
                }
                Popped::One { head, .. } => (None, head),
                Popped::Walked(head, _) => (None, head),
            };
        }
        // The lines `tx_complete` will write: the batch's used element(s) (with IN_ORDER only
        // the last one) and the used index.
        if taken > 0 {
            let t = taken as u16;
            let (from, n) = if self.in_order { (t - 1, 1) } else { (0, t) };
            ring.prefetch_used(from, n, true);
        }
        // The next batch's frames (their descriptors were prefetched by the call before) and
        // the one after's descriptors: their misses overlap this batch's processing.
        ring.prefetch_ahead(
            0,
            MAX_BATCH as u16 / 2,
            false,
            hdr as u32,
            (hdr + HEADER_BYTES) as u32,
        );
        // The frame after the header, if its length is one we forward.
        let frame_len = |total: usize| {
            total
                .checked_sub(hdr)
                .filter(|l| (14..=MAX_FRAME).contains(l))
        };
        let mut n = 0;
        for &(seg, head) in &frames[..taken] {
            self.tx_taken.push(head);
            let p = &mut pkts[n];
            let loaded = match seg {
                Some(s) => frame_len(s.len()).inspect(|&len| {
                    // SAFETY: `s` lies in guest memory that `mem` keeps mapped; `hdr..s.len()`
                    // is inside it.
                    let src = unsafe { s.ptr().add(hdr) };
                    let area = p.load_area(port);
                    if partial && len > HEADER_BYTES {
                        // SAFETY: as above for the first HEADER_BYTES; the rest stays readable
                        // until the batch is forwarded: the chain is returned only by
                        // `tx_complete`, and `mem` (this snapshot) is replaced only by
                        // `refresh`, which the worker calls between batches.
                        unsafe {
                            read_guest(src, &mut area[..HEADER_BYTES]);
                            p.set_partial(HEADER_BYTES, src.add(HEADER_BYTES), len - HEADER_BYTES);
                        }
                    } else {
                        // SAFETY: as above.
                        unsafe { read_guest(src, &mut area[..len]) };
                        p.set_len(len);
                    }
                }),
                // Several segments (or a broken chain): walk it again the general way.
                None => ring
                    .walk(head, chain)
                    .ok()
                    .and_then(|()| frame_len(chain.readable_len()))
                    .filter(|&len| chain.read(hdr, &mut p.load_area(port)[..len]).is_ok())
                    .inspect(|&len| {
                        p.set_len(len);
                    }),
            };
            match loaded {
                Some(_) => n += 1,
                None => *bad += 1,
            }
        }
        ring.close(q);
        (taken, n)
    }

    /// Returns the TX chains the last [`receive`](Self::receive) took to the driver (with
    /// IN_ORDER as one used element), once their frames are forwarded.
    pub(crate) fn tx_complete(&mut self) {
        if self.tx_taken.is_empty() {
            return;
        }
        let mem: &GuestMemoryMmap = &self.mem;
        let fast = FastMem::new(mem);
        let q = &mut self.rings.tx.queue;
        let Some(ring) = SplitRing::open(q, &fast) else {
            self.tx_taken.clear();
            return;
        };
        let mut ring = ring.in_order(self.in_order);
        for &h in &self.tx_taken {
            ring.put_used(h, 0);
        }
        self.tx_taken.clear();
        if ring.close(q) {
            signal(&self.tx_call);
        }
    }

    /// Puts `frames` (each after a virtio-net header) into the RX ring, in order, until a
    /// frame does not fit. A frame to be finished ([`OutFrame::of_batch`]) is not written:
    /// `finish(i, where it lands)` writes it there before it is published (its one copy may
    /// be an AEAD from the source buffer): its final length, or None
    /// (the frame is dropped and its buffers stay available). Returns how many frames were
    /// put or dropped that way (the caller drops the rest for want of room).
    pub(crate) fn send<'f>(
        &mut self,
        chain: &mut ChainBufs,
        frames: impl IntoIterator<Item = OutFrame<'f>>,
        finish: &mut dyn FnMut(usize, &[Seg<'_>]) -> Option<usize>,
    ) -> usize {
        let mem: &GuestMemoryMmap = &self.mem;
        let fast = FastMem::new(mem);
        let q = &mut self.rings.rx.queue;
        let Some(mut ring) = SplitRing::open(q, &fast) else {
            return 0;
        };
        // Enough buffers for a batch, the next one's and the descriptors after them (see
        // the end) without reading the index?
        let avail = ring.pending_since(self.rx_seen, MAX_BATCH as u16 / 2 * 3);
        self.rx_seen = ring.avail_seen();
        ring.prefetch(avail.min(MAX_BATCH as u16));
        // The used index's line, which the close writes (its elements were asked for by the
        // send before).
        ring.prefetch_used(0, 0, true);
        // Frames that fit the one buffer of their chain (every frame of the common case) are
        // staged: their buffers are taken first and the copies run back to back afterwards
        // (DPDK's batch_copy idea). A copy into an RX buffer stores to lines the driver's
        // core owns, so its stores wait in the store buffer for their lines; interleaved with
        // the descriptor work of the next frame, every store and forwarded load of that work
        // waited behind them.
        let mut staged = Staged::new();
        let mut sent = 0;
        for f in frames {
            let total = self.hdr_len + f.len();
            let Some(popped) = ring.pop_one(chain) else {
                break;
            };
            match popped {
                Popped::One {
                    head,
                    seg,
                    writable: true,
                } if seg.len() >= total && f.finish.is_none() => {
                    staged.push(head, seg.ptr(), f);
                    if staged.is_full() {
                        staged.write(&mut ring, self.hdr_len);
                    }
                }
                first => {
                    // In ring order: what is staged goes first.
                    staged.write(&mut ring, self.hdr_len);
                    if !place(&mut ring, chain, f, self.hdr_len, self.mrg, finish, first) {
                        break;
                    }
                }
            }
            sent += 1;
        }
        staged.write(&mut ring, self.hdr_len);
        // The next batch's buffers (for write) and the one after's descriptors: their misses
        // overlap this batch's processing instead of stalling the next copies (the buffers
        // are most often lines the driver's core touched last).
        // The header and a 64-byte frame's lines (two when the frame starts a line).
        let upto = (self.hdr_len + 64) as u32;
        ring.prefetch_ahead(0, MAX_BATCH as u16 / 2, true, 0, upto);
        // And the used elements the next batch will write.
        ring.prefetch_used(0, MAX_BATCH as u16 / 2, false);
        self.rx_notify |= ring.close(q);
        sent
    }

    /// Notifies the driver of frames put into its RX ring since the last flush.
    pub(crate) fn rx_flush(&mut self) {
        if std::mem::take(&mut self.rx_notify) {
            signal(&self.rx_call);
        }
    }
}

fn signal(call: &Option<EventFd>) {
    if let Some(c) = call {
        let _ = c.write(1);
    }
}

/// Most pieces of guest memory a frame to be finished may land in.
const MAX_PIECES: usize = 32;

/// Frames staged by [`NetRings::send`]: each in the one buffer (at least header + frame
/// bytes, device-writable, in guest memory the send's snapshot maps) of chain `head`, not
/// yet written (never a frame to be finished).
///
/// The frames are kept field by field, each field an array of its own: an `OutFrame` array
/// had every frame copied in as one 64-byte struct, four 16-byte loads from where the
/// send's loop had put the frame with 8-byte stores, and a load that spans two stores cannot
/// be forwarded from them: each waited until they had reached the cache (issue 12, pass o:
/// 2 % of the worker at 64 B). Fields are stored and loaded at their own widths.
struct Staged<'f> {
    n: usize,
    heads: [u16; STAGE],
    dst: [*mut u8; STAGE],
    /// The frames' host bytes ([`OutFrame::head`]).
    bytes: [&'f [u8]; STAGE],
    /// Where their rest is, and how long ([`OutFrame::rest`]).
    rest: [(*const u8, usize); STAGE],
    /// Their host bytes after the rest ([`OutFrame::tail`]).
    tails: [&'f [u8]; STAGE],
}

/// Most frames staged before their copies run.
const STAGE: usize = 32;

impl<'f> Staged<'f> {
    fn new() -> Self {
        Self {
            n: 0,
            heads: [0; STAGE],
            dst: [std::ptr::null_mut(); STAGE],
            bytes: [&[]; STAGE],
            rest: [(std::ptr::null(), 0); STAGE],
            tails: [&[]; STAGE],
        }
    }

    /// Stages `frame` (not one to be finished) for the buffer at `dst` of chain `head` (see
    /// the type).
    #[inline(always)]
    fn push(&mut self, head: u16, dst: *mut u8, frame: OutFrame<'f>) {
        let i = self.n;
        if i < STAGE {
            self.heads[i] = head;
            self.dst[i] = dst;
            self.bytes[i] = frame.head;
            self.rest[i] = (frame.rest, frame.rest_len);
            self.tails[i] = frame.tail;
            self.n = i + 1;
        }
    }

    /// Staged frame `i` (< `n`).
    #[inline(always)]
    fn frame(&self, i: usize) -> OutFrame<'f> {
        let (rest, rest_len) = self.rest[i];
        OutFrame {
            head: self.bytes[i],
            rest,
            rest_len,
            tail: self.tails[i],
            finish: None,
        }
    }

    fn is_full(&self) -> bool {
        self.n == STAGE
    }

    /// Writes the staged frames (header, frame), back to back, then publishes their buffers.
    #[inline(always)]
    fn write<G: vm_memory::GuestMemoryBackend>(&mut self, ring: &mut SplitRing<'_, G>, hdr: usize) {
        let n = std::mem::take(&mut self.n).min(STAGE);
        // Every line the copies will write is asked for first, for write: their misses (the
        // driver's core touched them last) overlap instead of queueing behind each other's
        // stores.
        for i in 0..n {
            let dst = self.dst[i];
            prefetch_write(dst);
            prefetch_write(dst.wrapping_add(hdr + self.frame(i).len() - 1));
        }
        for i in 0..n {
            let (dst, f) = (self.dst[i], self.frame(i));
            // SAFETY: `dst` is the start of a device-writable buffer of at least hdr +
            // f.len() bytes (checked when staged) in guest memory the ring's snapshot keeps
            // mapped for the whole send.
            unsafe {
                write_rx_hdr(dst, hdr);
                f.copy_to(0, dst.add(hdr), f.len());
            }
        }
        for i in 0..n {
            ring.put_used(self.heads[i], (hdr + self.frame(i).len()) as u32);
        }
    }
}

/// Writes [`RX_HDR`]'s first `hdr` bytes (the negotiated header: 12 or 10) at `dst`. The
/// 12-byte branch was meant as a copy of a known length (two stores inline), but the release
/// build merges both branches into one `memcpy` call per frame (pass q, docs/performance.md);
/// an inline header write measured together with other inline copies was slower at 1400 B and
/// is not kept.
///
/// # Safety
/// `dst..dst + hdr` must be mapped and writable, and `hdr <= NET_HDR_LEN`.
#[inline(always)]
unsafe fn write_rx_hdr(dst: *mut u8, hdr: usize) {
    if hdr == NET_HDR_LEN {
        // SAFETY: the caller's range, `NET_HDR_LEN` bytes.
        unsafe { write_guest(dst, &RX_HDR) };
    } else {
        // SAFETY: the caller's range, `hdr` bytes.
        unsafe { write_guest(dst, &RX_HDR[..hdr.min(NET_HDR_LEN)]) };
    }
}

/// Puts one frame into the RX ring (over several chains with MRG_RXBUF), `first` the chain
/// already popped for it. On a shortage the chains it took are put back and false is
/// returned; unusable chains before the frame's first are returned to the driver empty. A
/// frame to be finished is finished before it is published (dropped, its chains put back,
/// if `finish` says so: true all the same).
fn place<G: vm_memory::GuestMemoryBackend>(
    ring: &mut SplitRing<'_, G>,
    chain: &mut ChainBufs,
    frame: OutFrame<'_>,
    hdr: usize,
    mrg: bool,
    finish: &mut dyn FnMut(usize, &[Seg<'_>]) -> Option<usize>,
    first: Popped,
) -> bool {
    let total = hdr + frame.len();
    match first {
        Popped::One {
            head,
            seg,
            writable: true,
        } if seg.len() >= total => put_whole(ring, head, seg, frame, hdr, finish),
        first => put_frame_chained(ring, chain, frame, hdr, mrg, finish, first),
    }
}

/// Writes the header and the whole frame into `seg`, the one writable buffer of chain `head`
/// (at least header + frame bytes long; a pending frame through `finish`), and
/// publishes the buffer; a frame whose finish fails is dropped and the buffer put back.
#[inline(always)]
fn put_whole<G: vm_memory::GuestMemoryBackend>(
    ring: &mut SplitRing<'_, G>,
    head: u16,
    seg: Seg<'_>,
    frame: OutFrame<'_>,
    hdr: usize,
    finish: &mut dyn FnMut(usize, &[Seg<'_>]) -> Option<usize>,
) -> bool {
    // SAFETY: `seg` is a device-writable buffer in guest memory that the caller's snapshot
    // keeps mapped, at least hdr + frame bytes long.
    unsafe { write_rx_hdr(seg.ptr(), hdr) };
    let mut len = frame.len();
    match frame.finish {
        // SAFETY: as above.
        None => unsafe { frame.copy_to(0, seg.ptr().add(hdr), frame.len()) },
        Some(i) => {
            // `finish` writes the frame there itself (its one copy may be its AEAD).
            // SAFETY: the frame's bytes in the same buffer.
            let at = [unsafe { Seg::from_raw(seg.ptr().add(hdr), frame.len()) }];
            match finish(i, &at) {
                Some(n) if n <= len => len = n,
                _ => {
                    ring.unpop(1);
                    return true;
                }
            }
        }
    }
    ring.put_used(head, (hdr + len) as u32);
    true
}

/// [`place`] when the first buffer popped (`first`) does not take the whole frame: the
/// frame spread over the buffers of one chain, or of several with MRG_RXBUF.
#[inline(never)]
fn put_frame_chained<G: vm_memory::GuestMemoryBackend>(
    ring: &mut SplitRing<'_, G>,
    chain: &mut ChainBufs,
    frame: OutFrame<'_>,
    hdr: usize,
    mrg: bool,
    finish: &mut dyn FnMut(usize, &[Seg<'_>]) -> Option<usize>,
    first: Popped,
) -> bool {
    let mut pieces = [Seg::from_ref(&[]); MAX_PIECES];
    let mut np = 0usize;
    let mut heads = [(0u16, 0u32); MAX_RX_BUFS];
    let mut nb = 0usize;
    let total = hdr + frame.len();
    let mut done = 0usize;
    let mut first = Some(first);
    while done < total {
        let popped = if let Some(f) = first.take() {
            Some(f)
        } else if nb == heads.len() || (nb == 1 && !mrg) {
            None
        } else {
            ring.pop_one(chain)
        };
        let Some(popped) = popped else {
            ring.unpop(nb as u16);
            return false;
        };
        let walked = match popped {
            Popped::One {
                head,
                seg,
                writable: true,
            } if nb == 0 && seg.len() >= total => {
                // The whole frame fits the first buffer: write it directly.
                return put_whole(ring, head, seg, frame, hdr, finish);
            }
            // Otherwise walk it (again) the general way.
            Popped::One { head, .. } => ring.walk(head, chain),
            Popped::Walked(_, r) => r,
        };
        let room = chain.writable_len();
        if walked.is_err() || room == 0 || (nb == 0 && room < hdr) {
            if nb > 0 {
                // The driver's ring is broken mid-frame: drop the frame and leave the ring
                // for the next one; it only hurts the driver's own reception.
                ring.unpop(nb as u16 + 1);
                return false;
            }
            // Hand the unusable buffer back empty and go on with the next one.
            ring.put_used(chain.head(), 0);
            continue;
        }
        let mut written = 0usize;
        if nb == 0 {
            if chain.write(0, &RX_HDR[..hdr]).is_err() {
                ring.unpop(1);
                return false;
            }
            written = hdr;
            done = hdr;
        }
        let take = (room - written).min(total - done);
        let from = done - hdr;
        // SAFETY: every piece `fill` hands out is device-writable guest memory of the walked
        // chain (mapped by the caller's snapshot); `from + take <= frame.len()`.
        let r = chain.fill(written, take, |dst, at, k| unsafe {
            if frame.finish.is_none() {
                frame.copy_to(from + at, dst, k);
            } else {
                // Written by `finish`, once every piece is known.
                if np < MAX_PIECES {
                    pieces[np] = Seg::from_raw(dst, k);
                }
                np += 1;
            }
        });
        if r.is_err() {
            ring.unpop(nb as u16 + 1);
            return false;
        }
        done += take;
        written += take;
        heads[nb] = (chain.head(), written as u32);
        nb += 1;
    }
    if let Some(i) = frame.finish {
        let n = if np <= MAX_PIECES {
            finish(i, &pieces[..np])
        } else {
            None
        };
        match n {
            Some(n) if n <= frame.len() => {
                // A shorter frame (ESP decap): the lengths follow, and chains left with
                // nothing (the last taken) are put back.
                let mut left = hdr + n;
                let mut keep = 0;
                for h in &mut heads[..nb] {
                    let l = (h.1 as usize).min(left);
                    h.1 = l as u32;
                    left -= l;
                    keep += usize::from(l > 0);
                }
                ring.unpop((nb - keep) as u16);
                nb = keep;
            }
            _ => {
                ring.unpop(nb as u16);
                return true;
            }
        }
    }
    if nb > 1 && hdr == NET_HDR_LEN {
        // num_buffers (little endian) in the first chain's header: walk that chain again.
        if ring.walk(heads[0].0, chain).is_ok() {
            let _ = chain.write(NUM_BUFFERS_AT, &(nb as u16).to_le_bytes());
        }
    }
    for &(h, len) in &heads[..nb] {
        ring.put_used(h, len);
    }
    true
}

#[cfg(test)]
mod tests {
    //! Hostile rings: whatever the driver puts in them, the port returns every chain it takes,
    //! counts what it cannot use, and never reads or writes outside guest memory.

    use super::*;
    use crate::vhost_user::QueueStart;
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::Queue;
    use virtio_queue::QueueT;
    use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryAtomic};
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    const MEM: u64 = 0x10_0000;
    const TX_Q: u64 = 0x0;
    const RX_Q: u64 = 0x8000;
    const R: u16 = 0; // readable
    const W: u16 = crate::virtq::F_WRITE;
    const NEXT: u16 = crate::virtq::F_NEXT;

    fn d(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags, next))
    }

    fn start(index: usize, q: Queue, m: &GuestMemoryMmap, features: u64) -> QueueStart {
        QueueStart {
            index,
            queue: q,
            kick: EventFd::new(EFD_NONBLOCK).unwrap(),
            call: Some(EventFd::new(EFD_NONBLOCK).unwrap()),
            mem: GuestMemoryAtomic::new(m.clone()),
            features,
        }
    }

    /// A port over two mock rings of 16 entries; `fill` adds chains before the port starts.
    fn port(
        m: &GuestMemoryMmap,
        features: u64,
        tx: &[RawDescriptor],
        rx: &[RawDescriptor],
    ) -> NetRings {
        port_at(m, features, (TX_Q, RX_Q), tx, rx)
    }

    /// As `port`, with the rings at `(tx, rx)`.
    fn port_at(
        m: &GuestMemoryMmap,
        features: u64,
        (tx_at, rx_at): (u64, u64),
        tx: &[RawDescriptor],
        rx: &[RawDescriptor],
    ) -> NetRings {
        let txq = MockSplitQueue::create(m, GuestAddress(tx_at), 16);
        let rxq = MockSplitQueue::create(m, GuestAddress(rx_at), 16);
        if !tx.is_empty() {
            txq.add_desc_chains(tx, 0).unwrap();
        }
        if !rx.is_empty() {
            rxq.add_desc_chains(rx, 0).unwrap();
        }
        NetRings::new(RingPair {
            rx: start(0, rxq.create_queue().unwrap(), m, features),
            tx: start(1, txq.create_queue().unwrap(), m, features),
        })
    }

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap()
    }

    fn used(m: &GuestMemoryMmap, q: &Queue, i: u64) -> (u32, u32) {
        let used = GuestAddress(q.used_ring());
        (
            m.read_obj(used.unchecked_add(4 + 8 * i)).unwrap(),
            m.read_obj(used.unchecked_add(8 + 8 * i)).unwrap(),
        )
    }

    fn used_idx(m: &GuestMemoryMmap, q: &Queue) -> u16 {
        let used = GuestAddress(q.used_ring());
        m.read_obj(used.unchecked_add(2)).unwrap()
    }

    const V1: u64 = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_NET_F_MRG_RXBUF);

    #[test]
    fn broken_tx_chains_are_returned_and_counted_good_ones_delivered() {
        let m = mem();
        let frame: Vec<u8> = (0..60u8).collect();
        m.write_slice(&frame, GuestAddress(0x2_000c)).unwrap(); // after a 12-byte header
        m.write_slice(&frame, GuestAddress(0x3000)).unwrap(); // a separate data descriptor
        let tx = [
            d(0x2_0000, 72, R, 0),                      // 0: header + 60-byte frame: good
            d(MEM - 8, 64, R, 0),                       // 1: runs off guest memory
            d(0x2_0000, 20, R, 0),                      // 2: too short for a header + Ethernet
            d(0x2_0000, 72, W, 0),                      // 3: writable: nothing to transmit
            d(0x4000, 12, R | NEXT, 5),                 // 4: header ...
            d(0x3000, 60, R, 0), // 5: ... + data in a second descriptor: good
            d(0x2_0000, (MAX_FRAME + 13) as u32, R, 0), // 6: longer than MAX_FRAME
            d(0x2_0000, 40, R | NEXT, 7), // 7: loops on itself
        ];
        let mut p = port(&m, V1, &tx, &[]);
        let mut chain = ChainBufs::new();
        let mut pkts: Vec<PacketBuf> = (0..8).map(|_| PacketBuf::new()).collect();
        let mut bad = 0;
        let (chains, n) = p.receive(&mut chain, &mut pkts, PortId(1), true, &mut bad);
        assert_eq!((chains, n, bad), (7, 2, 5));
        // Taken, not yet returned: the frames may still be read from the driver's buffers.
        assert_eq!(used_idx(&m, &p.rings.tx.queue), 0);
        p.tx_complete();
        assert_eq!(pkts[0].frame(), &frame[..]);
        assert_eq!(pkts[1].frame(), &frame[..]);
        assert_eq!(pkts[0].in_port, PortId(1));
        // Every chain went back to the driver, with nothing written.
        assert_eq!(used_idx(&m, &p.rings.tx.queue), 7);
        for (i, head) in [0u32, 1, 2, 3, 4, 6, 7].iter().enumerate() {
            assert_eq!(used(&m, &p.rings.tx.queue, i as u64), (*head, 0));
        }
    }

    #[test]
    fn an_avail_index_far_ahead_is_ignored() {
        let m = mem();
        let mut p = port(&m, V1, &[d(0x2_0000, 72, R, 0)], &[]);
        let avail = GuestAddress(p.rings.tx.queue.avail_ring());
        m.write_obj(40_000u16, avail.unchecked_add(2)).unwrap();
        let mut pkts = vec![PacketBuf::new()];
        let mut bad = 0;
        let r = p.receive(&mut ChainBufs::new(), &mut pkts, PortId(1), true, &mut bad);
        p.tx_complete();
        assert_eq!((r, bad), ((0, 0), 0));
        assert_eq!(used_idx(&m, &p.rings.tx.queue), 0);
    }

    #[test]
    fn unusable_rx_buffers_are_skipped_and_the_frame_lands_whole() {
        let m = mem();
        let rx = [
            d(0x5_0000, 2048, R, 0), // readable: useless for receiving
            d(0x5_1000, 8, W, 0),    // shorter than the header
            d(MEM - 16, 2048, W, 0), // outside guest memory
            d(0x5_2000, 2048, W, 0), // good
        ];
        let mut p = port(&m, V1, &[], &rx);
        let frame: Vec<u8> = (0..100u8).collect();
        assert_eq!(
            p.send(
                &mut ChainBufs::new(),
                [OutFrame::whole(&frame[..])],
                &mut |_, _| None
            ),
            1
        );
        assert_eq!(used_idx(&m, &p.rings.rx.queue), 4);
        for i in 0..3 {
            assert_eq!(used(&m, &p.rings.rx.queue, i), (i as u32, 0));
        }
        assert_eq!(used(&m, &p.rings.rx.queue, 3), (3, 112));
        let mut got = vec![0u8; 112];
        m.read_slice(&mut got, GuestAddress(0x5_2000)).unwrap();
        assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1, "num_buffers");
        assert_eq!(&got[12..], &frame[..]);
        // No buffer left: the next frame is refused and the ring stays as it was.
        assert_eq!(
            p.send(
                &mut ChainBufs::new(),
                [OutFrame::whole(&frame[..])],
                &mut |_, _| None
            ),
            0
        );
        assert_eq!(used_idx(&m, &p.rings.rx.queue), 4);
    }

    #[test]
    fn mergeable_buffers_carry_a_large_frame_and_count_themselves() {
        let m = mem();
        let rx: Vec<_> = (0..4).map(|i| d(0x6_0000 + i * 0x100, 64, W, 0)).collect();
        let mut p = port(&m, V1, &[], &rx);
        let frame: Vec<u8> = (0..200u32).map(|i| (i * 7) as u8).collect();
        assert_eq!(
            p.send(
                &mut ChainBufs::new(),
                [OutFrame::whole(&frame[..])],
                &mut |_, _| None
            ),
            1
        );
        assert_eq!(used_idx(&m, &p.rings.rx.queue), 4);
        let mut all = Vec::new();
        for i in 0..4u64 {
            let (id, len) = used(&m, &p.rings.rx.queue, i);
            assert_eq!(id, i as u32);
            let mut b = vec![0u8; len as usize];
            m.read_slice(&mut b, GuestAddress(0x6_0000 + i * 0x100))
                .unwrap();
            all.extend(b);
        }
        assert_eq!(u16::from_le_bytes([all[10], all[11]]), 4, "num_buffers");
        assert_eq!(&all[12..], &frame[..]);
        // Without MRG_RXBUF the same frame does not fit one 64-byte buffer: dropped, and the
        // buffers stay available.
        let m = mem();
        let mut p = port(&m, 1 << VIRTIO_F_VERSION_1, &[], &rx);
        assert_eq!(
            p.send(
                &mut ChainBufs::new(),
                [OutFrame::whole(&frame[..])],
                &mut |_, _| None
            ),
            0
        );
        assert_eq!(used_idx(&m, &p.rings.rx.queue), 0);
        assert_eq!(
            p.send(
                &mut ChainBufs::new(),
                [OutFrame::whole(&frame[..40])],
                &mut |_, _| None
            ),
            1
        );
        assert_eq!(used(&m, &p.rings.rx.queue, 0), (0, 52));
    }

    /// One-copy forwarding: frames longer than HEADER_BYTES stay in the source's TX buffer
    /// (only their headers are loaded, and may be rewritten), the TX chains are returned only
    /// after the frames left, and each lands whole in the destination: over MRG_RXBUF buffers
    /// (num_buffers counted), over a chain of several RX descriptors without MRG_RXBUF, or in
    /// one buffer. Frames of several TX descriptors and short frames are loaded whole.
    #[test]
    fn one_copy_forward_to_mrg_and_non_mrg_peers_and_chained_rx_buffers() {
        let big: Vec<u8> = (0..1400u32).map(|i| (i * 13 + 7) as u8).collect();
        let small: Vec<u8> = (0..90u8).collect();
        for case in ["mrg", "chained", "one"] {
            let m = mem();
            m.write_slice(&big, GuestAddress(0x2_000c)).unwrap();
            m.write_slice(&small, GuestAddress(0x3_000c)).unwrap();
            m.write_slice(&big[..700], GuestAddress(0x4_0000)).unwrap();
            m.write_slice(&big[700..], GuestAddress(0x4_1000)).unwrap();
            let tx = [
                d(0x2_0000, 12 + 1400, R, 0),  // 0: one buffer: partial
                d(0x3_0000, 12 + 90, R, 0),    // 1: short: whole
                d(0x4_2000, 12, R | NEXT, 3),  // 2: header ...
                d(0x4_0000, 700, R | NEXT, 4), // 3: ... data in two descriptors: whole
                d(0x4_1000, 700, R, 0),        // 4
            ];
            let (features, rx): (u64, Vec<RawDescriptor>) = match case {
                // Buffers of 512 bytes: 1412 bytes need three.
                "mrg" => (
                    V1,
                    (0..9).map(|i| d(0x6_0000 + i * 0x400, 512, W, 0)).collect(),
                ),
                // Without MRG_RXBUF: chains of three 600-byte descriptors.
                "chained" => (
                    1 << VIRTIO_F_VERSION_1,
                    (0..9)
                        .map(|i| {
                            let last = i % 3 == 2;
                            let f = if last { W } else { W | NEXT };
                            d(
                                0x6_0000 + i * 0x400,
                                600,
                                f,
                                if last { 0 } else { i as u16 + 1 },
                            )
                        })
                        .collect(),
                ),
                _ => (
                    V1,
                    (0..3)
                        .map(|i| d(0x6_0000 + i * 0x800, 2048, W, 0))
                        .collect(),
                ),
            };
            let mut src = port(&m, V1, &tx, &[]);
            let mut dst = port_at(&m, features, (0x1_0000, 0x1_8000), &[], &rx);
            let mut pkts: Vec<PacketBuf> = (0..4).map(|_| PacketBuf::new()).collect();
            let mut bad = 0;
            let r = src.receive(&mut ChainBufs::new(), &mut pkts, PortId(1), true, &mut bad);
            assert_eq!((r, bad), ((3, 3), 0), "{case}");
            assert!(!pkts[0].is_whole() && pkts[0].frame().len() == HEADER_BYTES);
            assert_eq!(pkts[0].len(), 1400);
            assert!(pkts[1].is_whole() && pkts[2].is_whole());
            // A rewrite of the headers (what NAT or a MAC rewrite does).
            pkts[0].frame_mut()[..6].copy_from_slice(&[0xaa; 6]);
            // A hostile driver rewrites its TX buffer after handing it over: what leaves is
            // the headers the processor saw (our copy) and whatever the rest now holds, never
            // headers it did not see.
            m.write_slice(&[0xee; 1400], GuestAddress(0x2_000c))
                .unwrap();
            let sent = dst.send(
                &mut ChainBufs::new(),
                pkts.iter().take(3).map(OutFrame::of),
                &mut |_, _| None,
            );
            assert_eq!(sent, 3, "{case}");
            // The source's chains go back only now.
            assert_eq!(used_idx(&m, &src.rings.tx.queue), 0);
            src.tx_complete();
            assert_eq!(
                used_idx(&m, &src.rings.tx.queue),
                3,
                "every chain returned once"
            );
            let mut want0 = big.clone();
            want0[..6].copy_from_slice(&[0xaa; 6]);
            want0[HEADER_BYTES..].fill(0xee);
            // Read back what the destination's driver sees, frame by frame.
            let q = &dst.rings.rx.queue;
            let n_used = used_idx(&m, q);
            let mut frames = Vec::new();
            let mut i = 0u64;
            while i < u64::from(n_used) {
                let (id, len) = used(&m, q, i);
                let mut bytes = vec![0u8; len as usize];
                // Read the chain `id` describes (one buffer, or three chained ones).
                let mut at = 0usize;
                let mut desc = id as u64;
                while at < bytes.len() {
                    let (addr, cap) = match case {
                        "mrg" => (0x6_0000 + desc * 0x400, 512),
                        "chained" => (0x6_0000 + desc * 0x400, 600),
                        _ => (0x6_0000 + desc * 0x800, 2048),
                    };
                    let k = (bytes.len() - at).min(cap);
                    m.read_slice(&mut bytes[at..at + k], GuestAddress(addr))
                        .unwrap();
                    at += k;
                    desc += 1;
                }
                let nb = if case == "mrg" {
                    u16::from_le_bytes([bytes[10], bytes[11]])
                } else {
                    1
                };
                let mut f = bytes[12..].to_vec();
                for _ in 1..nb {
                    i += 1;
                    let (id, len) = used(&m, q, i);
                    let mut more = vec![0u8; len as usize];
                    m.read_slice(&mut more, GuestAddress(0x6_0000 + u64::from(id) * 0x400))
                        .unwrap();
                    f.extend(more);
                }
                frames.push(f);
                i += 1;
            }
            assert_eq!(frames.len(), 3, "{case}");
            assert!(
                frames[0] == want0,
                "{case}: the big frame, headers rewritten"
            );
            assert_eq!(frames[1], small, "{case}");
            assert!(frames[2] == big, "{case}: the frame of two TX descriptors");
        }
    }
}
