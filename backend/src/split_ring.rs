//! The ring layer: [`SplitRing`], one batch's view of a split virtqueue, used by every ring
//! of every device (crypto data queues, the crypto control queue, virtio-net RX and TX).
//!
//! `virtio_queue::Queue` only holds a ring's configuration and indices between batches (what
//! the vhost-user server sets up and GET_VRING_BASE reads back); no device uses its per-chain
//! operations, which go through the generic guest-memory accessors (a region lookup and bounds
//! checks per field, a used-index store per chain). A `SplitRing` translates the avail and
//! used rings once per batch into host pointers (through [`FastMem`]), reads the avail index
//! once ([`SplitRing::pending`]), writes used elements without publishing them
//! ([`SplitRing::put_used`]; with IN_ORDER the zero-length ones of a batch collapse into one
//! element), and publishes the used index and decides on a notification once, at
//! [`SplitRing::close`], which writes the indices back into the `Queue`. Descriptor chains
//! (direct or indirect) are walked and checked by [`ChainBufs::walk_table`]. Kicks are turned
//! off while a worker drains a ring and back on before it sleeps
//! ([`SplitRing::disable_kicks`], [`SplitRing::enable_kicks`]; EVENT_IDX or the used ring's
//! NO_NOTIFY flag). The virtio constants come from `virtio-bindings`, in `virtq`.
//!
//! Everything the driver controls is checked: ring addresses must be aligned and inside one
//! guest memory region (otherwise the ring is not used at all), an avail index more than the
//! ring size ahead is ignored (a broken driver), and head indices are checked by the walk.
//! Ring fields are accessed with atomics or volatile stores: the driver writes them
//! concurrently (docs/decisions/0005-guest-memory-access.md).

use std::sync::atomic::{fence, AtomicU16, Ordering};

use dpacc_spec::Seg;
use virtio_bindings::virtio_ring::{VRING_AVAIL_F_NO_INTERRUPT, VRING_USED_F_NO_NOTIFY};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryBackend;

use crate::virtq::{
    prefetch, prefetch_write, ChainBufs, ChainError, FastMem, F_INDIRECT, F_NEXT, F_WRITE,
};

/// `VRING_AVAIL_F_NO_INTERRUPT`, in the avail ring's 16-bit `flags`.
const AVAIL_F_NO_INTERRUPT: u16 = VRING_AVAIL_F_NO_INTERRUPT as u16;
/// `VRING_USED_F_NO_NOTIFY`, in the used ring's 16-bit `flags`.
const USED_F_NO_NOTIFY: u16 = VRING_USED_F_NO_NOTIFY as u16;

/// What [`SplitRing::pop_one`] took.
#[derive(Debug)]
pub(crate) enum Popped {
    /// A chain of one non-empty direct descriptor.
    One {
        /// Its head (for [`SplitRing::put_used`]).
        head: u16,
        /// Its buffer in guest memory.
        seg: Seg<'static>,
        /// Device-writable.
        writable: bool,
    },
    /// Any other chain, walked into the caller's `ChainBufs` (or refused by the walk).
    Walked(u16, Result<(), ChainError>),
}

/// A split virtqueue opened for one batch.
pub(crate) struct SplitRing<'a, G: GuestMemoryBackend> {
    mem: &'a FastMem<'a, G>,
    desc: u64,
    size: u16,
    /// `size - 1`: ring positions wrap with a mask (the size is a power of two, checked at
    /// `open`), not with `%`, which the compiler cannot know and would compile to a `div`
    /// (several per frame: taking, prefetching and returning chains).
    mask: u16,
    /// Host address of the avail ring: flags, idx, ring[size], used_event.
    avail: *const u8,
    /// Host address of the used ring: flags, idx, ring[size] of (id, len), avail_event.
    used: *mut u8,
    next_avail: u16,
    next_used: u16,
    old_used: u16,
    avail_idx: u16,
    event_idx: bool,
    in_order: bool,
    /// IN_ORDER: the head of the last zero-length used element not yet written (it stands for
    /// every element since the last one written).
    deferred: Option<u16>,
}

impl<'a, G: GuestMemoryBackend> SplitRing<'a, G> {
    /// Opens `q` over `mem`. None if the ring is not ready or its avail or used ring is
    /// misaligned or not inside one region of guest memory.
    pub(crate) fn open(q: &Queue, mem: &'a FastMem<'a, G>) -> Option<Self> {
        let size = q.size();
        if !q.ready() || size == 0 || !size.is_power_of_two() {
            return None;
        }
        let s = u64::from(size);
        let (a, u) = (q.avail_ring(), q.used_ring());
        if a % 2 != 0 || u % 4 != 0 {
            return None;
        }
        let avail = mem.host(a, 6 + 2 * s)?;
        let used = mem.host(u, 6 + 8 * s)?;
        let mut r = Self {
            mem,
            desc: q.desc_table(),
            size,
            mask: size - 1,
            avail,
            used,
            next_avail: q.next_avail(),
            next_used: q.next_used(),
            old_used: q.next_used(),
            avail_idx: 0,
            event_idx: q.event_idx_enabled(),
            in_order: false,
            deferred: None,
        };
        r.avail_idx = r.next_avail;
        Some(r)
    }

    /// For a driver-to-device ring (virtio-net TX: every used length is 0) with
    /// VIRTIO_F_IN_ORDER negotiated: the used elements of a batch are written as one element,
    /// the last one's (virtio 1.2 §2.7.9; drivers then count buffers instead of reading ids).
    /// Not for rings whose used lengths matter (RX): the driver reads each element's length.
    pub(crate) fn in_order(mut self, on: bool) -> Self {
        self.in_order = on;
        self
    }

    fn avail_u16(&self, i: u64) -> &AtomicU16 {
        // SAFETY: `open` checked that the avail ring (6 + 2 * size bytes) is mapped and 2-byte
        // aligned; callers pass i <= size + 2 (in u16 units). Guest memory may change under
        // us, which atomics allow.
        unsafe { AtomicU16::from_ptr(self.avail.add(2 * i as usize) as *mut u16) }
    }

    fn used_u16(&self, off: usize) -> &AtomicU16 {
        // SAFETY: `open` checked that the used ring (6 + 8 * size bytes) is mapped and 4-byte
        // aligned; callers pass even offsets inside it.
        unsafe { AtomicU16::from_ptr(self.used.add(off) as *mut u16) }
    }

    /// Chains the driver has made available and we have not taken (0 if its index is more
    /// than a ring ahead: a broken driver gets nothing done until it repairs it).
    pub(crate) fn pending(&mut self) -> u16 {
        let idx = u16::from_le(self.avail_u16(1).load(Ordering::Acquire));
        let n = idx.wrapping_sub(self.next_avail);
        if n > self.size {
            return 0;
        }
        self.avail_idx = idx;
        n
    }

    /// [`pending`](Self::pending), without reading the driver's avail index when `seen`, an
    /// index this ring's driver published earlier (what [`avail_seen`](Self::avail_seen)
    /// returned after a batch before), still shows at least `want` chains not taken. The
    /// index only grows and a driver never takes a chain back, so an older index is a valid,
    /// shorter view; it saves a load that misses (the driver's core writes the index line at
    /// every burst) on batches that need no more than it shows. A `seen` that is not ahead of
    /// the chains taken by at most the ring size (a stale or foreign value) is not used.
    pub(crate) fn pending_since(&mut self, seen: u16, want: u16) -> u16 {
        let n = seen.wrapping_sub(self.next_avail);
        if n >= want && n <= self.size {
            self.avail_idx = seen;
            return n;
        }
        self.pending()
    }

    /// The avail index this ring's view goes up to (for [`pending_since`](Self::pending_since)
    /// at the next batch).
    pub(crate) fn avail_seen(&self) -> u16 {
        self.avail_idx
    }

    /// The head index the driver put at avail position `pos`.
    fn head_at(&self, pos: u16) -> u16 {
        let slot = u64::from(pos & self.mask);
        u16::from_le(self.avail_u16(2 + slot).load(Ordering::Relaxed))
    }

    /// Takes the next available chain's head (unchecked: the walk checks it), or None when no
    /// chain is pending (as of the last [`pending`](Self::pending)).
    pub(crate) fn pop_head(&mut self) -> Option<u16> {
        if self.next_avail == self.avail_idx {
            return None;
        }
        let head = self.head_at(self.next_avail);
        self.next_avail = self.next_avail.wrapping_add(1);
        Some(head)
    }

    /// Takes the next available chain: None when no chain is pending (as of the last
    /// [`pending`](Self::pending)). A chain of one plain descriptor (the common shape of a
    /// network buffer) comes back as that descriptor's segment; any other is walked into
    /// `chain` and checked (a chain failing the checks must still be returned as used).
    ///
    /// Inlined into its callers: the result then stays in registers. Returned through memory
    /// (a call), the caller's first wide load of it could not be forwarded from the narrower
    /// stores that wrote it and waited until the store buffer drained, i.e. until every
    /// RX-buffer store of the frame before (lines the driver's core owns) had completed.
    #[inline(always)]
    pub(crate) fn pop_one(&mut self, chain: &mut ChainBufs) -> Option<Popped> {
        let head = self.pop_head()?;
        if head < self.size {
            if let Ok((addr, len, flags, _)) = self.mem.read_desc(self.desc, head) {
                if flags & (F_NEXT | F_INDIRECT) == 0 && len > 0 {
                    if let Ok(seg) = self.mem.seg(addr, len) {
                        return Some(Popped::One {
                            head,
                            seg,
                            writable: flags & F_WRITE != 0,
                        });
                    }
                }
            }
        }
        Some(Popped::Walked(head, self.walk(head, chain)))
    }

    /// Starts loading the descriptors of the next `n` pending chains into the cache (a
    /// batch's misses then overlap instead of coming one after another).
    pub(crate) fn prefetch(&self, n: u16) {
        for k in 0..n.min(self.avail_idx.wrapping_sub(self.next_avail)) {
            let head = self.head_at(self.next_avail.wrapping_add(k));
            if head < self.size {
                if let Some(p) = self.mem.host(self.desc + 16 * u64::from(head), 16) {
                    prefetch(p);
                }
            }
        }
    }

    /// Prefetches for a later batch: the descriptors of the pending chains `skip + n..skip +
    /// 2n` (ahead of the next `skip`), and the cache lines of bytes `from..upto` (cut at the
    /// descriptor's length) of the buffers of chains `skip..skip + n` (whose descriptors an
    /// earlier call prefetched): for write on a device-writable ring (`write`: the RX buffers
    /// the next send copies into, lines the driver's core touched last, so that their
    /// ownership is on its way while this batch is processed), for read otherwise (a TX
    /// ring's next frames, past the virtio-net header the device does not read: a line not
    /// needed is a cross-core transfer and a fill buffer taken for nothing). Hints only: the
    /// descriptor fields are read once as plain data to aim a prefetch, which never faults;
    /// nothing is taken or trusted.
    pub(crate) fn prefetch_ahead(&self, skip: u16, n: u16, write: bool, from: u32, upto: u32) {
        let pending = self.avail_idx.wrapping_sub(self.next_avail);
        let desc_at = |k: u16| {
            let head = self.head_at(self.next_avail.wrapping_add(k));
            (head < self.size)
                .then(|| self.mem.host(self.desc + 16 * u64::from(head), 16))
                .flatten()
        };
        for k in skip..skip.saturating_add(n).min(pending) {
            if let Some(d) = desc_at(k) {
                // SAFETY: `d..d + 16` is mapped guest memory (checked by `host`); unaligned
                // reads of plain data (the address and the length), used only to aim
                // prefetches.
                let (addr, len) = unsafe {
                    (
                        u64::from_le(std::ptr::read_unaligned(d as *const u64)),
                        u32::from_le(std::ptr::read_unaligned(d.add(8) as *const u32)),
                    )
                };
                let end = len.min(upto);
                if end > from {
                    if let Some(b) = self.mem.host(addr, 1) {
                        prefetch_span(b.wrapping_add(from as usize), (end - from) as usize, write);
                    }
                }
            }
        }
        let far = skip.saturating_add(n);
        for k in far..far.saturating_add(n).min(pending) {
            if let Some(d) = desc_at(k) {
                prefetch(d);
            }
        }
    }

    /// Starts loading, for each of the next `n` pending chains whose head is an indirect
    /// descriptor, its descriptor table (up to two cache lines), so that the walks of a batch
    /// find the tables in cache instead of missing on each in turn (the driver wrote them on
    /// another core). Reads the head descriptors, which [`prefetch`](Self::prefetch) should
    /// have started loading. Only hints: nothing is checked or kept.
    pub(crate) fn prefetch_tables(&self, n: u16) {
        for k in 0..n.min(self.avail_idx.wrapping_sub(self.next_avail)) {
            let head = self.head_at(self.next_avail.wrapping_add(k));
            if head >= self.size {
                continue;
            }
            if let Ok((addr, len, flags, _)) = self.mem.read_desc(self.desc, head) {
                if flags & F_INDIRECT != 0 && len >= 16 {
                    prefetch_lines(self.mem, addr, u64::from(len).min(128));
                }
            }
        }
    }

    /// Starts loading the first buffer (up to two cache lines: a request header) of the
    /// `k`-th pending chain after the last one taken, through its indirect table if it has one
    /// (which [`prefetch_tables`](Self::prefetch_tables) should have loaded). Only a hint.
    /// Always inlined: out of line (when the parse around its call site grew) it cost a call
    /// and a reload of the ring's indices per chain.
    #[inline(always)]
    pub(crate) fn prefetch_first_buffer(&self, k: u16) {
        if k >= self.avail_idx.wrapping_sub(self.next_avail) {
            return;
        }
        let head = self.head_at(self.next_avail.wrapping_add(k));
        if head >= self.size {
            return;
        }
        let Ok((mut addr, mut len, flags, _)) = self.mem.read_desc(self.desc, head) else {
            return;
        };
        if flags & F_INDIRECT != 0 {
            match self.mem.read_desc(addr, 0) {
                Ok((a, l, _, _)) => (addr, len) = (a, l),
                Err(_) => return,
            }
        }
        if len > 0 {
            prefetch_lines(self.mem, addr, u64::from(len).min(128));
        }
    }

    /// Walks and checks chain `head` into `chain` (again, e.g. to patch a header after later
    /// chains were taken).
    pub(crate) fn walk(&self, head: u16, chain: &mut ChainBufs) -> Result<(), ChainError> {
        chain.walk_table(head, self.desc, self.size, self.mem)
    }

    /// Un-takes the last `n` chains taken (they will be taken again next time).
    pub(crate) fn unpop(&mut self, n: u16) {
        self.next_avail = self.next_avail.wrapping_sub(n);
    }

    /// Writes used element `pos` (a ring position, wrapped here): id and length as one 8-byte
    /// store (one store-buffer entry per element, not two, while the buffer is full of
    /// RX-buffer stores waiting for their lines).
    fn write_used(&self, pos: u16, head: u16, len: u32) {
        let off = 4 + 8 * usize::from(pos & self.mask);
        let e = (u64::from(len) << 32 | u64::from(head)).to_le();
        // SAFETY: `off + 8 <= 4 + 8 * size` lies inside the used ring `open` checked (mapped,
        // 4-byte aligned: the element may straddle an 8-byte boundary, hence unaligned). A
        // raw-pointer store like every write into guest memory (ADR 0005): the driver only
        // reads the element after the used index published at `close` (a release store).
        unsafe { std::ptr::write_unaligned(self.used.add(off) as *mut u64, e) };
    }

    /// Asks for the cache lines of used elements `from..from + n` after the next one to be
    /// written, and with `index` the used index's line, for write (hints only). The driver's
    /// core read them last (an element a ring lap ago, the index at its last poll), so a store
    /// to one would wait for the line to come back; asked early, the transfer overlaps other
    /// work. The elements are best asked for a batch ahead (the driver does not read them
    /// until they are published); the index only at the start of the batch that publishes it
    /// (the driver polls it).
    pub(crate) fn prefetch_used(&self, from: u16, n: u16, index: bool) {
        if index {
            prefetch_write(self.used);
        }
        if n == 0 {
            return;
        }
        let at = |k: u16| {
            let pos = self.next_used.wrapping_add(from).wrapping_add(k);
            4 + 8 * usize::from(pos & self.mask)
        };
        let (first, last) = (at(0), at(n.min(self.size) - 1));
        if first <= last {
            prefetch_span(self.used.wrapping_add(first), last + 8 - first, true);
        } else {
            // Wrapped: up to the ring's end, then from its start.
            let end = 4 + 8 * usize::from(self.size);
            prefetch_span(self.used.wrapping_add(first), end - first, true);
            prefetch_span(self.used.wrapping_add(4), last + 8 - 4, true);
        }
    }

    /// Writes the deferred IN_ORDER element, if any, at the last position taken.
    fn flush_deferred(&mut self) {
        if let Some(head) = self.deferred.take() {
            self.write_used(self.next_used.wrapping_sub(1), head, 0);
        }
    }

    /// Returns chain `head` to the driver with `len` bytes written (published at `close`).
    pub(crate) fn put_used(&mut self, head: u16, len: u32) {
        if self.in_order && len == 0 {
            self.deferred = Some(head);
        } else {
            self.flush_deferred();
            self.write_used(self.next_used, head, len);
        }
        self.next_used = self.next_used.wrapping_add(1);
    }

    /// Asks the driver not to kick while the ring is being drained (without EVENT_IDX: the
    /// used ring's NO_NOTIFY flag; with it, not moving `avail_event` does the same).
    pub(crate) fn disable_kicks(&self) {
        if !self.event_idx {
            self.used_u16(0)
                .store(USED_F_NO_NOTIFY.to_le(), Ordering::Relaxed);
        }
    }

    /// Asks the driver for a kick at its next chain, before the worker sleeps. True if chains
    /// arrived meanwhile (drain again instead of sleeping).
    ///
    /// `avail_event` (the used ring's trailing field) is written even when EVENT_IDX was not
    /// negotiated with *us*: QEMU's cryptodev-vhost-user acks only
    /// `VHOST_USER_F_PROTOCOL_FEATURES` to the backend (it never forwards what the guest
    /// negotiated), while the Linux guest negotiates EVENT_IDX with QEMU's virtio-crypto device
    /// and then kicks only when the avail index crosses `avail_event`; without this the guest
    /// kicks once and then never again. The field exists in every split ring the Linux driver,
    /// QEMU and DPDK allocate, and a driver without EVENT_IDX ignores it.
    pub(crate) fn enable_kicks(&mut self) -> bool {
        if !self.event_idx {
            self.used_u16(0).store(0, Ordering::Relaxed);
        }
        self.used_u16(4 + 8 * usize::from(self.size))
            .store(self.next_avail.to_le(), Ordering::Relaxed);
        // Order the stores before re-reading the avail index (the driver orders its index
        // store before reading our flags / avail_event).
        fence(Ordering::SeqCst);
        self.pending() > 0
    }

    /// Publishes the used elements, writes the indices back into `q`, and tells whether the
    /// driver wants a notification for them.
    pub(crate) fn close(mut self, q: &mut Queue) -> bool {
        self.flush_deferred();
        q.set_next_avail(self.next_avail);
        q.set_next_used(self.next_used);
        if self.next_used == self.old_used {
            return false;
        }
        self.used_u16(2)
            .store(self.next_used.to_le(), Ordering::Release);
        // Order the used index store before reading the driver's suppression state.
        fence(Ordering::SeqCst);
        if self.event_idx {
            let used_event = u16::from_le(
                self.avail_u16(2 + u64::from(self.size))
                    .load(Ordering::Relaxed),
            );
            let new = self.next_used;
            new.wrapping_sub(used_event).wrapping_sub(1) < new.wrapping_sub(self.old_used)
        } else {
            u16::from_le(self.avail_u16(0).load(Ordering::Relaxed)) & AVAIL_F_NO_INTERRUPT == 0
        }
    }
}

/// Prefetches (for write with `write`) every cache line of the `len` (> 0, a few lines at most)
/// bytes at host address `p`. Only hints: the addresses need not be mapped.
#[inline(always)]
pub(crate) fn prefetch_span(p: *const u8, len: usize, write: bool) {
    let last = (p as usize).wrapping_add(len - 1) & !63;
    let mut line = p as usize & !63;
    loop {
        if write {
            prefetch_write(line as *const u8);
        } else {
            prefetch(line as *const u8);
        }
        if line >= last {
            break;
        }
        line += 64;
    }
}

/// Prefetches the cache lines of `len` (> 0) bytes at guest address `addr`, if they lie in one
/// region.
fn prefetch_lines<G: GuestMemoryBackend>(mem: &FastMem<'_, G>, addr: u64, len: u64) {
    if let Some(p) = mem.host(addr, len) {
        prefetch_span(p, len as usize, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn d(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags, next))
    }

    #[test]
    fn pops_walks_and_publishes_like_the_generic_queue() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        // Two chains: [0x8000+64 readable], [0x9000+32 readable -> 0xa000+100 writable].
        vq.build_multiple_desc_chains(&[
            d(0x8000, 64, 0, 0),
            d(0x9000, 32, F_NEXT, 2),
            d(0xa000, 100, F_WRITE, 0),
        ])
        .unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let fast = FastMem::new(&m);
        let mut r = SplitRing::open(&q, &fast).unwrap();
        assert_eq!(r.pending(), 2);
        let mut c = ChainBufs::new();
        let Some(Popped::One {
            head: 0,
            seg,
            writable: false,
        }) = r.pop_one(&mut c)
        else {
            panic!("a one-descriptor chain")
        };
        assert_eq!(seg.len(), 64);
        r.put_used(0, 0);
        let Some(Popped::Walked(1, Ok(()))) = r.pop_one(&mut c) else {
            panic!("a walked chain")
        };
        assert_eq!((c.readable_len(), c.writable_len()), (32, 100));
        r.put_used(c.head(), 7);
        assert!(r.pop_one(&mut c).is_none());
        // Without EVENT_IDX and no NO_INTERRUPT flag, the driver wants a notification.
        assert!(r.close(&mut q));
        assert_eq!((q.next_avail(), q.next_used()), (2, 2));
        let used_idx: u16 = m.read_obj(vq.used_addr().unchecked_add(2)).unwrap();
        assert_eq!(used_idx, 2);
        let id1: u32 = m.read_obj(vq.used_addr().unchecked_add(4 + 8)).unwrap();
        let len1: u32 = m.read_obj(vq.used_addr().unchecked_add(4 + 12)).unwrap();
        assert_eq!((id1, len1), (1, 7));
    }

    #[test]
    fn prefetch_hints_aim_anywhere_and_take_nothing() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        // Hostile descriptors for the hints: unmapped, at the end of memory, zero and huge
        // lengths, a buffer whose last lines lie past the memory's end.
        vq.build_multiple_desc_chains(&[
            d(0x8000, 76, 0, 0),
            d(u64::MAX - 8, 0xffff_ffff, F_WRITE, 0),
            d(0x10_0000 - 1, 200, 0, 0),
            d(0x9000, 0, F_WRITE, 0),
            d(0x20_0000, 64, 0, 0),
        ])
        .unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let fast = FastMem::new(&m);
        let mut r = SplitRing::open(&q, &fast).unwrap();
        assert_eq!(r.pending(), 5);
        for write in [false, true] {
            r.prefetch_ahead(0, 16, write, 12, 140);
            r.prefetch_ahead(2, u16::MAX, write, 0, 76);
            r.prefetch_ahead(0, 5, write, 200, 100); // an empty range
        }
        for (p, len) in [(std::ptr::null(), 1), (usize::MAX as *const u8, 130)] {
            prefetch_span(p, len, false);
            prefetch_span(p, len, true);
        }
        // Nothing was taken: the same chains pop, in order.
        let mut c = ChainBufs::new();
        let Some(Popped::One { head: 0, seg, .. }) = r.pop_one(&mut c) else {
            panic!("the first chain")
        };
        assert_eq!(seg.len(), 76);
        assert!(!r.close(&mut q));
        assert_eq!(q.next_avail(), 1);
    }

    /// An avail index seen by a batch before stands in for a fresh read only while it shows
    /// enough chains and is a possible index (ahead of the chains taken by at most the ring
    /// size); otherwise the driver's index is read. Used-ring prefetches are hints only.
    #[test]
    fn an_earlier_avail_index_stands_in_only_when_it_can() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let chains: Vec<_> = (0..4).map(|i| d(0x8000 + 0x100 * i, 64, 0, 0)).collect();
        vq.build_multiple_desc_chains(&chains).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let fast = FastMem::new(&m);
        let mut r = SplitRing::open(&q, &fast).unwrap();
        // Nothing seen yet: read (4 chains).
        assert_eq!(r.pending_since(0, 2), 4);
        assert_eq!(r.avail_seen(), 4);
        for (from, n) in [(0, 0), (0, 16), (3, 40), (15, 3), (u16::MAX, u16::MAX)] {
            r.prefetch_used(from, n, true);
        }
        let h = r.pop_head().unwrap();
        r.put_used(h, 0);
        r.close(&mut q);
        // The driver makes two more available; the index seen (4) still shows 3 >= 2 chains:
        // not read.
        m.write_obj(6u16, vq.avail_addr().unchecked_add(2)).unwrap();
        let mut r = SplitRing::open(&q, &fast).unwrap();
        assert_eq!(r.pending_since(4, 2), 3);
        // Wanting more than it shows: read.
        let mut r = SplitRing::open(&q, &fast).unwrap();
        assert_eq!(r.pending_since(4, 4), 5);
        assert_eq!(r.avail_seen(), 6);
        // A stale or foreign value (behind the chains taken, or more than a ring ahead): read.
        for seen in [0u16, 1, 1 + 17, 40_000] {
            let mut r = SplitRing::open(&q, &fast).unwrap();
            assert_eq!(r.pending_since(seen, 1), 5, "seen {seen}");
        }
        // Taken up to the index seen: the chains pop in order, then none.
        let mut r = SplitRing::open(&q, &fast).unwrap();
        assert_eq!(r.pending_since(4, 3), 3);
        assert_eq!(
            (r.pop_head(), r.pop_head(), r.pop_head()),
            (Some(1), Some(2), Some(3))
        );
        assert_eq!(r.pop_head(), None);
    }

    #[test]
    fn hostile_rings_are_refused_or_ignored() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        vq.build_desc_chain(&[d(0x8000, 64, 0, 0)]).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let fast = FastMem::new(&m);
        // An avail index 1000 ahead of a 16-entry ring: nothing is taken.
        m.write_obj(1000u16, vq.avail_addr().unchecked_add(2))
            .unwrap();
        let mut r = SplitRing::open(&q, &fast).unwrap();
        assert_eq!(r.pending(), 0);
        assert!(r.pop_one(&mut ChainBufs::new()).is_none());
        // A head index outside the table: the walk reports it.
        m.write_obj(1u16, vq.avail_addr().unchecked_add(2)).unwrap();
        m.write_obj(40u16, vq.avail_addr().unchecked_add(4))
            .unwrap();
        let mut r = SplitRing::open(&q, &fast).unwrap();
        assert_eq!(r.pending(), 1);
        assert!(matches!(
            r.pop_one(&mut ChainBufs::new()),
            Some(Popped::Walked(40, Err(_)))
        ));
        // A used ring outside guest memory: the ring is not opened.
        q.set_used_ring_address(Some(0x00ff_fff0), None);
        assert!(SplitRing::open(&q, &fast).is_none());
    }

    /// IN_ORDER on a TX ring: a batch of three chains publishes three used entries with one
    /// element written (the last head), and nothing else of the used ring changes.
    #[test]
    fn in_order_collapses_a_batch_into_one_used_element() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        vq.build_multiple_desc_chains(&[
            d(0x8000, 64, 0, 0),
            d(0x9000, 64, 0, 0),
            d(0xa000, 64, 0, 0),
        ])
        .unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let used = vq.used_addr();
        for i in 0..3u64 {
            m.write_obj(0xdead_beefu32, used.unchecked_add(4 + 8 * i))
                .unwrap();
        }
        let fast = FastMem::new(&m);
        let mut r = SplitRing::open(&q, &fast).unwrap().in_order(true);
        assert_eq!(r.pending(), 3);
        while let Some(h) = r.pop_head() {
            r.put_used(h, 0);
        }
        r.close(&mut q);
        let at = |i: u64, o: u64| {
            m.read_obj::<u32>(used.unchecked_add(4 + 8 * i + o))
                .unwrap()
        };
        assert_eq!(m.read_obj::<u16>(used.unchecked_add(2)).unwrap(), 3);
        assert_eq!((at(2, 0), at(2, 4)), (2, 0), "the last head, length 0");
        assert_eq!(
            (at(0, 0), at(1, 0)),
            (0xdead_beef, 0xdead_beef),
            "not written"
        );
        // Without IN_ORDER every element is written.
        let vq = MockSplitQueue::new(&m, 16);
        vq.build_multiple_desc_chains(&[d(0x8000, 64, 0, 0), d(0x9000, 64, 0, 0)])
            .unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let mut r = SplitRing::open(&q, &fast).unwrap();
        r.pending();
        while let Some(h) = r.pop_head() {
            r.put_used(h, 0);
        }
        r.close(&mut q);
        let used = vq.used_addr();
        assert_eq!(m.read_obj::<u32>(used.unchecked_add(4)).unwrap(), 0);
        assert_eq!(m.read_obj::<u32>(used.unchecked_add(12)).unwrap(), 1);
    }

    /// Kicks: NO_NOTIFY while draining, cleared and `avail_event` written when re-armed (also
    /// without EVENT_IDX, for QEMU's crypto frontend); chains that came meanwhile are reported.
    /// Notifications: EVENT_IDX decides by `used_event` over the batch.
    #[test]
    fn kicks_and_notifications() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        vq.build_multiple_desc_chains(&[d(0x8000, 64, 0, 0), d(0x9000, 64, 0, 0)])
            .unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let fast = FastMem::new(&m);
        let used = vq.used_addr();
        let flags = || m.read_obj::<u16>(used).unwrap();
        let avail_event = || m.read_obj::<u16>(used.unchecked_add(4 + 8 * 16)).unwrap();
        let mut r = SplitRing::open(&q, &fast).unwrap();
        r.disable_kicks();
        assert_eq!(flags(), 1, "NO_NOTIFY");
        r.pending();
        let h = r.pop_head().unwrap();
        r.put_used(h, 0);
        assert!(r.enable_kicks(), "one chain still pending");
        assert_eq!((flags(), avail_event()), (0, 1));
        r.close(&mut q);
        // EVENT_IDX: used_event = 5; publishing used 1..2 does not cross it, 2..6 does. (The
        // mock lays the used ring over the avail ring's used_event: move it.)
        q.set_event_idx(true);
        q.set_used_ring_address(Some(0x2_0000), None);
        m.write_obj(5u16, vq.avail_addr().unchecked_add(4 + 2 * 16))
            .unwrap();
        let mut r = SplitRing::open(&q, &fast).unwrap();
        r.pending();
        let h = r.pop_head().unwrap();
        r.put_used(h, 0);
        assert!(!r.close(&mut q));
        let mut r = SplitRing::open(&q, &fast).unwrap();
        for _ in 0..4 {
            r.put_used(0, 0);
        }
        assert!(r.close(&mut q), "used index 2 -> 6 crosses used_event 5");
    }
}
