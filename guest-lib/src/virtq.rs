//! The driver side of a split virtqueue (virtio 1.2 §2.7) over shared memory.
//!
//! [`SplitQueue`] owns the descriptor free list and the driver's shadow indices; the rings live
//! in the shared region, where the device reads the descriptor table and avail ring and writes
//! the used ring. Nothing the device writes is trusted: used ids and lengths are checked, and
//! the free list is rebuilt from driver-private shadow state, never from the shared table.
//!
//! Memory ordering: descriptors and avail entries are written, then a `Release` fence, then the
//! avail index; the used index is read, then an `Acquire` fence, then the used entries. Kick and
//! interrupt suppression read the other side's event index after a full (`SeqCst`) fence.

use std::sync::atomic::{fence, AtomicU16, Ordering};
use std::time::Duration;

use crate::error::{Error, Result};

/// Descriptor flag: the chain continues in `next`.
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the device writes this buffer.
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer is a table of descriptors.
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;
/// Avail ring flag: do not interrupt (ignored by the device once EVENT_IDX is negotiated).
pub const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Used ring flag: do not kick (ignored by the driver once EVENT_IDX is negotiated).
pub const VIRTQ_USED_F_NO_NOTIFY: u16 = 1;

/// Size of one descriptor.
pub const DESC_SIZE: usize = 16;

/// One descriptor as the caller describes it: a guest address, a length and flags
/// (`VIRTQ_DESC_F_WRITE`, `VIRTQ_DESC_F_INDIRECT`; `NEXT` is managed by the queue).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawDesc {
    /// Guest address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// Flags other than `NEXT`.
    pub flags: u16,
}

impl RawDesc {
    /// A device-readable buffer.
    pub fn readable(addr: u64, len: u32) -> Self {
        Self {
            addr,
            len,
            flags: 0,
        }
    }
    /// A device-writable buffer.
    pub fn writable(addr: u64, len: u32) -> Self {
        Self {
            addr,
            len,
            flags: VIRTQ_DESC_F_WRITE,
        }
    }
    /// Whether the device writes this buffer.
    pub fn is_writable(&self) -> bool {
        self.flags & VIRTQ_DESC_F_WRITE != 0
    }
}

/// A used-ring entry the device returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsedElem {
    /// Head descriptor of the chain.
    pub head: u16,
    /// Token given when the chain was added.
    pub token: u64,
    /// Bytes the device says it wrote (checked: at most `writable`).
    pub len: u32,
    /// Device-writable bytes of the chain, as it was added.
    pub writable: u32,
}

/// Where the three parts of a ring sit, as offsets from the ring's base.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingLayout {
    /// Descriptor table offset (16-byte aligned).
    pub desc: usize,
    /// Avail ring offset (2-byte aligned).
    pub avail: usize,
    /// Used ring offset (4-byte aligned).
    pub used: usize,
    /// Total bytes, rounded up to 4 KiB.
    pub total: usize,
}

impl RingLayout {
    /// The layout of a ring of `size` entries.
    pub fn new(size: u16) -> Self {
        let n = size as usize;
        let desc = 0;
        let avail = n * DESC_SIZE;
        // flags, idx, ring[n], used_event
        let used = (avail + 6 + 2 * n + 63) & !63;
        // flags, idx, ring[n] of (id, len), avail_event
        let total = (used + 6 + 8 * n + 4095) & !4095;
        Self {
            desc,
            avail,
            used,
            total,
        }
    }
}

/// The `vring_need_event` test of the virtio spec: whether moving an index from `old` to `new`
/// crosses `event`.
#[inline]
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// Driver side of one split virtqueue.
pub struct SplitQueue {
    size: u16,
    desc: *mut u8,
    avail: *mut u8,
    used: *mut u8,
    desc_gpa: u64,
    avail_gpa: u64,
    used_gpa: u64,
    event_idx: bool,
    interrupts: bool,
    /// Head of the free descriptor list (driver-private).
    free_head: u16,
    num_free: u16,
    /// Next avail index to publish (shadow of `avail.idx`).
    avail_idx: u16,
    /// Avail index at the last kick decision.
    kicked_idx: u16,
    /// Next used index to consume.
    last_used: u16,
    /// `last_used` when `used_event` was last written.
    event_at: u16,
    /// Per descriptor: next in the free list or in its chain (driver-private).
    next: Vec<u16>,
    /// Per head: descriptors in the chain (0 = not in flight).
    chain_len: Vec<u16>,
    /// Per head: total device-writable bytes.
    writable: Vec<u32>,
    /// Per head: the caller's token.
    token: Vec<u64>,
    in_flight: u16,
    /// The device broke the protocol on this queue: every later [`reap`](SplitQueue::reap)
    /// fails (sticky, so a device cannot take back what it wrote by rewriting the entry).
    broken: bool,
}

// SAFETY: the raw pointers point into a shared mapping that the creator promised outlives the
// queue; the queue is a single-owner object (`&mut self` for every access), so moving it to
// another thread is fine.
unsafe impl Send for SplitQueue {}

impl std::fmt::Debug for SplitQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SplitQueue")
            .field("size", &self.size)
            .field("num_free", &self.num_free)
            .field("in_flight", &self.in_flight)
            .field("avail_idx", &self.avail_idx)
            .field("last_used", &self.last_used)
            .field("broken", &self.broken)
            .finish()
    }
}

impl SplitQueue {
    /// Creates a queue of `size` entries (a power of two, 1..=32768) whose rings start at `base`
    /// (guest address `base_gpa`), laid out as [`RingLayout::new`] says.
    ///
    /// # Safety
    /// `base` must be 4 KiB-aligned, point to `RingLayout::new(size).total` zeroed bytes that stay
    /// mapped while the queue exists, and be used by nobody but this queue and its device.
    pub unsafe fn new(
        base: *mut u8,
        base_gpa: u64,
        size: u16,
        event_idx: bool,
        interrupts: bool,
    ) -> Result<Self> {
        if size == 0 || !size.is_power_of_two() || size > 32768 {
            return Err(Error::InvalidArgument("queue size must be a power of two"));
        }
        let l = RingLayout::new(size);
        let n = size as usize;
        let mut q = Self {
            size,
            desc: base,
            // SAFETY: the offsets are inside the `total` bytes the caller vouched for.
            avail: unsafe { base.add(l.avail) },
            // SAFETY: as above.
            used: unsafe { base.add(l.used) },
            desc_gpa: base_gpa + l.desc as u64,
            avail_gpa: base_gpa + l.avail as u64,
            used_gpa: base_gpa + l.used as u64,
            event_idx,
            interrupts,
            free_head: 0,
            num_free: size,
            avail_idx: 0,
            kicked_idx: 0,
            last_used: 0,
            event_at: 0,
            next: (1..=size).collect(),
            chain_len: vec![0; n],
            writable: vec![0; n],
            token: vec![0; n],
            in_flight: 0,
            broken: false,
        };
        q.set_interrupts(interrupts);
        Ok(q)
    }

    /// Number of entries.
    pub fn size(&self) -> u16 {
        self.size
    }
    /// Free descriptors.
    pub fn num_free(&self) -> u16 {
        self.num_free
    }
    /// Chains added and not yet reaped.
    pub fn in_flight(&self) -> u16 {
        self.in_flight
    }
    /// Whether EVENT_IDX is in use.
    pub fn event_idx(&self) -> bool {
        self.event_idx
    }
    /// Guest addresses of (descriptor table, avail ring, used ring).
    pub fn ring_gpas(&self) -> (u64, u64, u64) {
        (self.desc_gpa, self.avail_gpa, self.used_gpa)
    }
    /// Process addresses of (descriptor table, avail ring, used ring), as vhost-user's
    /// `SET_VRING_ADDR` wants them.
    pub fn ring_ptrs(&self) -> (*mut u8, *mut u8, *mut u8) {
        (self.desc, self.avail, self.used)
    }

    fn avail_idx_atomic(&self) -> &AtomicU16 {
        // SAFETY: `avail + 2` is 2-aligned and inside the ring; the device only reads it.
        unsafe { &*(self.avail.add(2) as *const AtomicU16) }
    }
    fn used_idx_atomic(&self) -> &AtomicU16 {
        // SAFETY: `used + 2` is 2-aligned and inside the ring; the device writes it atomically.
        unsafe { &*(self.used.add(2) as *const AtomicU16) }
    }
    fn used_event_atomic(&self) -> &AtomicU16 {
        // SAFETY: `used_event` sits right after the avail ring entries, 2-aligned, in range.
        unsafe { &*(self.avail.add(4 + 2 * self.size as usize) as *const AtomicU16) }
    }
    fn avail_event_atomic(&self) -> &AtomicU16 {
        // SAFETY: `avail_event` sits right after the used ring entries, 2-aligned, in range.
        unsafe { &*(self.used.add(4 + 8 * self.size as usize) as *const AtomicU16) }
    }
    fn avail_flags_atomic(&self) -> &AtomicU16 {
        // SAFETY: the avail flags are the first 2 bytes of the avail ring.
        unsafe { &*(self.avail as *const AtomicU16) }
    }
    fn used_flags_atomic(&self) -> &AtomicU16 {
        // SAFETY: the used flags are the first 2 bytes of the used ring.
        unsafe { &*(self.used as *const AtomicU16) }
    }

    fn write_desc(&mut self, table: *mut u8, i: usize, d: RawDesc, next: u16, more: bool) {
        let flags = (d.flags & !VIRTQ_DESC_F_NEXT) | if more { VIRTQ_DESC_F_NEXT } else { 0 };
        let words = [
            d.addr.to_le(),
            (u64::from(d.len) | u64::from(flags) << 32 | u64::from(next) << 48).to_le(),
        ];
        // SAFETY: callers pass a table with room for descriptor `i` (the ring's own table with
        // `i < size`, or an indirect table they vouched for), 16-byte aligned; the device does
        // not write it.
        unsafe { copy_changed(table.add(i * DESC_SIZE).cast(), &words, !self.interrupts) };
    }

    /// Adds a chain (readable descriptors should come before writable ones; the queue does not
    /// enforce it, so malformed chains can be sent on purpose). Returns the head. The chain is
    /// visible to the device after [`publish`](Self::publish).
    pub fn add(&mut self, descs: &[RawDesc], token: u64) -> Result<u16> {
        if descs.is_empty() || descs.len() > self.size as usize {
            return Err(Error::InvalidArgument("chain length"));
        }
        if descs.len() > self.num_free as usize {
            return Err(Error::QueueFull);
        }
        let head = self.free_head;
        let mut i = head;
        let mut writable = 0u32;
        for (k, d) in descs.iter().enumerate() {
            let more = k + 1 < descs.len();
            let next = self.next[i as usize];
            self.write_desc(self.desc, i as usize, *d, next, more);
            if d.is_writable() {
                writable = writable.saturating_add(d.len);
            }
            if more {
                i = next;
            }
        }
        self.free_head = self.next[i as usize];
        self.num_free -= descs.len() as u16;
        self.finish_add(head, descs.len() as u16, writable, token);
        Ok(head)
    }

    /// Adds a chain through an indirect table: one ring descriptor pointing at `table`, which
    /// receives `descs`. Returns the head.
    ///
    /// # Safety
    /// `table` must point to `descs.len() * 16` writable bytes of the shared region at guest
    /// address `table_gpa`, 16-byte aligned, not used by anything else until the chain is reaped.
    pub unsafe fn add_indirect(
        &mut self,
        table: *mut u8,
        table_gpa: u64,
        descs: &[RawDesc],
        token: u64,
    ) -> Result<u16> {
        if descs.is_empty() || descs.len() > u16::MAX as usize / DESC_SIZE {
            return Err(Error::InvalidArgument("chain length"));
        }
        if self.num_free == 0 {
            return Err(Error::QueueFull);
        }
        let mut writable = 0u32;
        for (k, d) in descs.iter().enumerate() {
            let more = k + 1 < descs.len();
            self.write_desc(table, k, *d, if more { (k + 1) as u16 } else { 0 }, more);
            if d.is_writable() {
                writable = writable.saturating_add(d.len);
            }
        }
        let head = self.free_head;
        let ind = RawDesc {
            addr: table_gpa,
            len: (descs.len() * DESC_SIZE) as u32,
            flags: VIRTQ_DESC_F_INDIRECT,
        };
        self.write_desc(self.desc, head as usize, ind, 0, false);
        self.free_head = self.next[head as usize];
        self.num_free -= 1;
        self.finish_add(head, 1, writable, token);
        Ok(head)
    }

    fn finish_add(&mut self, head: u16, n: u16, writable: u32, token: u64) {
        let h = head as usize;
        self.chain_len[h] = n;
        self.writable[h] = writable;
        self.token[h] = token;
        self.in_flight += 1;
        let slot = (self.avail_idx & (self.size - 1)) as usize;
        // SAFETY: the avail ring entry `slot < size` is inside the ring; the device only reads
        // it, and only after the index store in `publish`.
        // Polled, an entry unchanged since the ring last wrapped is not stored (`copy_changed`).
        unsafe {
            let e = self.avail.add(4 + 2 * slot) as *mut u16;
            if self.interrupts || std::ptr::read_volatile(e) != head.to_le() {
                std::ptr::write_volatile(e, head.to_le());
            }
        }
        self.avail_idx = self.avail_idx.wrapping_add(1);
    }

    /// Makes every added chain visible to the device. Returns whether the device wants a kick
    /// (EVENT_IDX `avail_event`, or the used ring's `NO_NOTIFY` flag without EVENT_IDX).
    pub fn publish(&mut self) -> bool {
        let old = self.kicked_idx;
        let new = self.avail_idx;
        if old == new {
            return false;
        }
        fence(Ordering::Release);
        self.avail_idx_atomic()
            .store(new.to_le(), Ordering::Release);
        // The device may be checking `used_event`/our index while we check `avail_event`.
        fence(Ordering::SeqCst);
        self.kicked_idx = new;
        if self.event_idx {
            let ev = u16::from_le(self.avail_event_atomic().load(Ordering::Acquire));
            need_event(ev, new, old)
        } else {
            u16::from_le(self.used_flags_atomic().load(Ordering::Acquire)) & VIRTQ_USED_F_NO_NOTIFY
                == 0
        }
    }

    /// Whether the used ring has entries not yet reaped.
    pub fn has_used(&self) -> bool {
        u16::from_le(self.used_idx_atomic().load(Ordering::Acquire)) != self.last_used
    }

    /// Takes one entry off the used ring, checking it: the id must be the head of a chain in
    /// flight, the length at most the chain's writable bytes, and the used index may neither
    /// run ahead of what is in flight nor go back. A violation is an [`Error::Protocol`], and
    /// the queue stays broken: every later call fails the same way ([`is_broken`](Self::is_broken)).
    pub fn reap(&mut self) -> Result<Option<UsedElem>> {
        if self.broken {
            return Err(Error::Protocol(
                "queue broken by an earlier device protocol violation",
            ));
        }
        let used_idx = u16::from_le(self.used_idx_atomic().load(Ordering::Acquire));
        if used_idx == self.last_used {
            return Ok(None);
        }
        // A used index that went back looks, modulo 2^16, like one far ahead.
        if used_idx.wrapping_sub(self.last_used) > self.in_flight {
            return self.violation("used index ran ahead of the chains in flight (or went back)");
        }
        fence(Ordering::Acquire);
        let slot = (self.last_used & (self.size - 1)) as usize;
        // SAFETY: used ring entry `slot < size` is inside the ring, 4-aligned; the device
        // finished writing it before publishing `used_idx` (Acquire above).
        let (id, len) = unsafe {
            let p = self.used.add(4 + 8 * slot);
            (
                u32::from_le(std::ptr::read_volatile(p as *const u32)),
                u32::from_le(std::ptr::read_volatile(p.add(4) as *const u32)),
            )
        };
        if id >= self.size as u32 || self.chain_len[id as usize] == 0 {
            return self.violation("used id is not a chain in flight");
        }
        let head = id as u16;
        let h = head as usize;
        let writable = self.writable[h];
        if len > writable {
            return self.violation("used length exceeds the chain's writable bytes");
        }
        // Return the chain to the free list, walking the private `next` links.
        let n = self.chain_len[h];
        let mut tail = head;
        for _ in 1..n {
            tail = self.next[tail as usize];
        }
        self.next[tail as usize] = self.free_head;
        self.free_head = head;
        self.num_free += n;
        self.chain_len[h] = 0;
        self.in_flight -= 1;
        self.last_used = self.last_used.wrapping_add(1);
        // `used_event` is not moved per entry: with interrupts it is set only before sleeping
        // (`prepare_wait_for`), so a device finishing work while the driver is awake (reaping,
        // refilling) raises no interrupt nobody waits for (a stale `used_event` behind the
        // used index suppresses them); polled, it is kept far ahead, refreshed now and then.
        if !self.interrupts && self.last_used.wrapping_sub(self.event_at) >= 0x4000 {
            self.refresh_used_event();
        }
        Ok(Some(UsedElem {
            head,
            token: self.token[h],
            len,
            writable,
        }))
    }

    /// Marks the queue broken and reports `what` (the cold path of [`reap`](Self::reap)).
    #[cold]
    fn violation<T>(&mut self, what: &'static str) -> Result<T> {
        self.broken = true;
        Err(Error::Protocol(what))
    }

    /// Marks the queue broken: a driver above found the device breaking the protocol in what
    /// it wrote (e.g. a net header's buffer count). Every later [`reap`](Self::reap) fails.
    pub fn mark_broken(&mut self) {
        self.broken = true;
    }

    /// Whether the device broke the protocol on this queue (see [`reap`](Self::reap)).
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    fn refresh_used_event(&mut self) {
        self.event_at = self.last_used;
        if !self.event_idx {
            return;
        }
        let ev = if self.interrupts {
            // Interrupt on the very next used entry.
            self.last_used
        } else {
            // As far away as the index space allows: effectively never.
            self.last_used.wrapping_add(0x8000)
        };
        self.used_event_atomic()
            .store(ev.to_le(), Ordering::Release);
    }

    /// Whether completions are waited for by sleeping (interrupts) rather than polling.
    pub fn interrupts(&self) -> bool {
        self.interrupts
    }

    /// Turns used-buffer notifications on or off (poll mode turns them off).
    pub fn set_interrupts(&mut self, on: bool) {
        self.interrupts = on;
        let flags = if on { 0 } else { VIRTQ_AVAIL_F_NO_INTERRUPT };
        self.avail_flags_atomic()
            .store(flags.to_le(), Ordering::Release);
        self.refresh_used_event();
    }

    /// Before sleeping for an interrupt: re-arms notifications and returns `true` if the used
    /// ring is still empty (so sleeping cannot miss an entry).
    pub fn prepare_wait(&mut self) -> bool {
        self.prepare_wait_for(1)
    }

    /// Used entries published by the device and not yet reaped (unchecked: [`reap`](Self::reap)
    /// validates them).
    pub fn used_pending(&self) -> u16 {
        u16::from_le(self.used_idx_atomic().load(Ordering::Acquire)).wrapping_sub(self.last_used)
    }

    /// Calls `f` with the token of each of the next `n` used entries (at most those in flight),
    /// unchecked and without reaping them: a hint, e.g. to start loading what completing them
    /// will read. Ids out of range are skipped; [`reap`](Self::reap) checks every entry.
    #[inline]
    pub fn peek_used_tokens(&self, n: u16, mut f: impl FnMut(u64)) {
        let n = n.min(self.in_flight);
        fence(Ordering::Acquire);
        for k in 0..n {
            let slot = (self.last_used.wrapping_add(k) & (self.size - 1)) as usize;
            // SAFETY: used ring entry `slot < size` is inside the ring, 4-aligned; volatile, as
            // the device may be writing it (a stale value only makes a useless hint).
            let id = unsafe { std::ptr::read_volatile(self.used.add(4 + 8 * slot) as *const u32) };
            if let Some(&t) = self.token.get(u32::from_le(id) as usize) {
                f(t);
            }
        }
    }

    /// Like [`prepare_wait`](Self::prepare_wait), but asks (with EVENT_IDX) for the interrupt
    /// only once `min` (≥ 1) entries are pending, and returns `true` while fewer are.
    pub fn prepare_wait_for(&mut self, min: u16) -> bool {
        let min = min.max(1);
        if self.event_idx && self.interrupts {
            let ev = self.last_used.wrapping_add(min - 1);
            self.used_event_atomic()
                .store(ev.to_le(), Ordering::Release);
        } else {
            self.refresh_used_event();
        }
        fence(Ordering::SeqCst);
        self.used_pending() < min
    }
}

/// Stores `words` at `dst`; with `skip`, only the words that do not already hold their value.
/// A descriptor or request header the device has read sits in its cache as well as ours:
/// rewriting it with the same bytes takes the line away from the device (which then misses on
/// it at its next read), so a slot reused with the same layout costs no cross-core traffic for
/// that line. Only worth it while the driver's own copy is warm (a polling driver): after a
/// sleep the compare is a load miss, which stalls where a blind store would not (measured:
/// docs/performance.md, look-aside crypto).
///
/// # Safety
/// `dst` must be valid for reads and writes of `words.len()` 8-byte-aligned words of shared
/// memory that only the driver writes (a misbehaving device writing it anyway only makes us
/// store a word again).
pub(crate) unsafe fn copy_changed(dst: *mut u64, words: &[u64], skip: bool) {
    for (k, &w) in words.iter().enumerate() {
        // SAFETY: inside the range the caller vouched for; volatile, as the device may read
        // (or, misbehaving, write) it concurrently.
        unsafe {
            let p = dst.add(k);
            if !skip || std::ptr::read_volatile(p) != w {
                std::ptr::write_volatile(p, w);
            }
        }
    }
}

/// How a queue learns about completions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CompletionMode {
    /// Sleep on the call eventfd (the device interrupts, throttled by EVENT_IDX).
    #[default]
    Interrupt,
    /// Busy-poll the used ring; the device is asked not to interrupt.
    Poll,
}

/// Kick and call for one queue.
pub trait Notifier: Send {
    /// Tells the device new chains are available.
    fn kick(&self) -> Result<()>;
    /// Waits for a used-buffer notification; `Ok(false)` on timeout.
    fn wait(&self, timeout: Option<Duration>) -> Result<bool>;
}

/// A [`Notifier`] over a kick and a call eventfd (vhost-user).
#[derive(Debug)]
pub struct EventFdNotifier {
    /// The device waits on this one.
    pub kick: vmm_sys_util::eventfd::EventFd,
    /// The device signals this one.
    pub call: vmm_sys_util::eventfd::EventFd,
}

impl Notifier for EventFdNotifier {
    fn kick(&self) -> Result<()> {
        self.kick.write(1).map_err(|e| Error::Io("kick", e))
    }

    fn wait(&self, timeout: Option<Duration>) -> Result<bool> {
        use std::os::fd::AsRawFd;
        let mut pfd = libc::pollfd {
            fd: self.call.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
        loop {
            // SAFETY: one valid pollfd, count 1.
            let r = unsafe { libc::poll(&mut pfd, 1, ms) };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(Error::Io("poll call eventfd", e));
            }
            if r == 0 {
                return Ok(false);
            }
            // Reset the counter; EAGAIN (someone else drained it) is fine.
            let _ = self.call.read();
            return Ok(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::SharedMemory;

    type Chain = (u16, Vec<(u64, u32, u16)>);

    /// A device that lives in the same memory: reads the avail ring, writes the used ring.
    struct MockDevice {
        base: *mut u8,
        size: u16,
        l: RingLayout,
        last_avail: u16,
        used_idx: u16,
    }

    impl MockDevice {
        fn new(base: *mut u8, size: u16) -> Self {
            Self {
                base,
                size,
                l: RingLayout::new(size),
                last_avail: 0,
                used_idx: 0,
            }
        }
        fn r16(&self, off: usize) -> u16 {
            // SAFETY: test-only; `off` is inside the ring area the mock was built over.
            unsafe { std::ptr::read_volatile(self.base.add(off) as *const u16) }
        }
        fn w16(&self, off: usize, v: u16) {
            // SAFETY: test-only; `off` is inside the ring area the mock was built over.
            unsafe { std::ptr::write_volatile(self.base.add(off) as *mut u16, v) }
        }
        fn w32(&self, off: usize, v: u32) {
            // SAFETY: test-only; `off` is inside the ring area the mock was built over.
            unsafe { std::ptr::write_volatile(self.base.add(off) as *mut u32, v) }
        }
        /// Pops the next available head and walks its chain; returns (head, descs).
        fn pop(&mut self) -> Option<Chain> {
            let idx = self.r16(self.l.avail + 2);
            if idx == self.last_avail {
                return None;
            }
            let slot = (self.last_avail % self.size) as usize;
            let head = self.r16(self.l.avail + 4 + 2 * slot);
            self.last_avail = self.last_avail.wrapping_add(1);
            let mut out = vec![];
            let mut i = head;
            loop {
                let p = self.l.desc + 16 * i as usize;
                // SAFETY: test-only; `i` came from our own driver, so the descriptor is in
                // the table.
                let addr = unsafe { std::ptr::read_volatile(self.base.add(p) as *const u64) };
                // SAFETY: as above.
                let len = unsafe { std::ptr::read_volatile(self.base.add(p + 8) as *const u32) };
                let flags = self.r16(p + 12);
                let next = self.r16(p + 14);
                out.push((addr, len, flags));
                if flags & VIRTQ_DESC_F_NEXT == 0 {
                    break;
                }
                i = next;
            }
            Some((head, out))
        }
        fn push_used(&mut self, id: u32, len: u32) {
            let slot = (self.used_idx % self.size) as usize;
            self.w32(self.l.used + 4 + 8 * slot, id);
            self.w32(self.l.used + 8 + 8 * slot, len);
            self.used_idx = self.used_idx.wrapping_add(1);
            self.w16(self.l.used + 2, self.used_idx);
        }
        fn set_avail_event(&self, v: u16) {
            self.w16(self.l.used + 4 + 8 * self.size as usize, v);
        }
        fn used_event(&self) -> u16 {
            self.r16(self.l.avail + 4 + 2 * self.size as usize)
        }
    }

    fn setup(size: u16, event_idx: bool) -> (SharedMemory, SplitQueue, MockDevice) {
        let mem = SharedMemory::new(RingLayout::new(size).total, 0x1000_0000).unwrap();
        // SAFETY: the fresh mapping holds exactly one ring of `size` and outlives the queue.
        let q = unsafe { SplitQueue::new(mem.as_ptr(), mem.gpa_base(), size, event_idx, true) }
            .unwrap();
        let dev = MockDevice::new(mem.as_ptr(), size);
        (mem, q, dev)
    }

    #[test]
    fn layout_is_aligned() {
        let l = RingLayout::new(256);
        assert_eq!(l.avail, 4096);
        assert_eq!(l.used % 64, 0);
        assert!(l.used >= l.avail + 6 + 512);
        assert_eq!(l.total % 4096, 0);
        assert!(l.total >= l.used + 6 + 8 * 256);
    }

    #[test]
    fn chains_are_walked_and_descriptors_recycled() {
        let (_m, mut q, mut dev) = setup(8, false);
        let chain = [
            RawDesc::readable(0x100, 72),
            RawDesc::readable(0x200, 16),
            RawDesc::writable(0x300, 33),
        ];
        for round in 0..20u64 {
            let h1 = q.add(&chain, round * 2).unwrap();
            let h2 = q.add(&chain[..2], round * 2 + 1).unwrap();
            assert_eq!(q.num_free(), 3);
            assert!(matches!(q.add(&[chain[0]; 4], 9), Err(Error::QueueFull)));
            assert!(q.publish());
            let (a, d) = dev.pop().unwrap();
            assert_eq!(a, h1);
            assert_eq!(
                d,
                vec![
                    (0x100, 72, 1),
                    (0x200, 16, 1),
                    (0x300, 33, VIRTQ_DESC_F_WRITE)
                ]
            );
            let (b, d) = dev.pop().unwrap();
            assert_eq!((b, d.len()), (h2, 2));
            // Complete out of order.
            dev.push_used(b as u32, 0);
            dev.push_used(a as u32, 33);
            let u = q.reap().unwrap().unwrap();
            assert_eq!((u.head, u.token, u.len), (h2, round * 2 + 1, 0));
            let u = q.reap().unwrap().unwrap();
            assert_eq!((u.head, u.token, u.len), (h1, round * 2, 33));
            assert_eq!(q.reap().unwrap(), None);
            assert_eq!(q.num_free(), 8);
            assert_eq!(q.in_flight(), 0);
        }
    }

    #[test]
    fn indices_wrap_around_u16() {
        let (_m, mut q, mut dev) = setup(4, true);
        let chain = [RawDesc::readable(0x10, 1), RawDesc::writable(0x20, 1)];
        for i in 0..70_000u64 {
            q.add(&chain, i).unwrap();
            q.publish();
            let (h, _) = dev.pop().unwrap();
            dev.set_avail_event(dev.last_avail);
            dev.push_used(h as u32, 1);
            let u = q.reap().unwrap().unwrap();
            assert_eq!(u.token, i);
        }
        assert_eq!(q.num_free(), 4);
        // Before sleeping, the driver asks for an interrupt at the next entry.
        assert!(q.prepare_wait());
        assert_eq!(
            q.used_event_atomic().load(Ordering::Relaxed),
            70_000u32 as u16
        );
    }

    /// With interrupts and EVENT_IDX, reaping leaves `used_event` where the last wait put it:
    /// entries completed while the driver is awake raise no interrupt; the next wait asks for
    /// one again.
    #[test]
    fn interrupts_only_asked_for_before_sleeping() {
        let (_m, mut q, mut dev) = setup(8, true);
        let chain = [RawDesc::readable(0x10, 1), RawDesc::writable(0x20, 1)];
        for i in 0..4u64 {
            q.add(&chain, i).unwrap();
        }
        q.publish();
        assert!(q.prepare_wait_for(2));
        let asked = q.used_event_atomic().load(Ordering::Relaxed);
        assert_eq!(asked, 1, "interrupt once two entries are used");
        for _ in 0..4 {
            let (h, _) = dev.pop().unwrap();
            dev.push_used(h as u32, 1);
        }
        for _ in 0..4 {
            q.reap().unwrap().unwrap();
        }
        // Awake: the device, which has now used entries 0..4, sees no new request.
        let ev = q.used_event_atomic().load(Ordering::Relaxed);
        assert_eq!(ev, asked);
        assert!(
            !need_event(ev, 6, 4),
            "two more completions would not interrupt"
        );
        assert!(q.prepare_wait());
        assert_eq!(q.used_event_atomic().load(Ordering::Relaxed), 4);
    }

    #[test]
    fn event_idx_suppresses_kicks() {
        let (_m, mut q, mut dev) = setup(16, true);
        let c = [RawDesc::writable(0x10, 1)];
        // avail_event = 0: the device wants to hear about the first entry.
        q.add(&c, 0).unwrap();
        assert!(q.publish());
        // The device is busy and has not moved avail_event: no kick for more entries.
        q.add(&c, 1).unwrap();
        q.add(&c, 2).unwrap();
        assert!(!q.publish());
        // Nothing new: no kick.
        assert!(!q.publish());
        // The device drained to 3 and asks to be told about index 3.
        while dev.pop().is_some() {}
        dev.set_avail_event(3);
        q.add(&c, 3).unwrap();
        assert!(q.publish());
        // avail_event far ahead: a batch that does not cross it is not kicked.
        dev.set_avail_event(10);
        q.add(&c, 4).unwrap();
        q.add(&c, 5).unwrap();
        assert!(!q.publish());
    }

    #[test]
    fn no_notify_flag_without_event_idx() {
        let (_m, mut q, _dev) = setup(8, false);
        let c = [RawDesc::writable(0x10, 1)];
        q.add(&c, 0).unwrap();
        assert!(q.publish());
        q.used_flags_atomic()
            .store(VIRTQ_USED_F_NO_NOTIFY, Ordering::Relaxed);
        q.add(&c, 1).unwrap();
        assert!(!q.publish());
    }

    #[test]
    fn interrupt_suppression_in_poll_mode() {
        let (_m, mut q, mut dev) = setup(8, true);
        assert_eq!(dev.used_event(), 0);
        q.set_interrupts(false);
        let c = [RawDesc::writable(0x10, 1)];
        q.add(&c, 0).unwrap();
        q.publish();
        let (h, _) = dev.pop().unwrap();
        dev.push_used(h as u32, 1);
        // The device would check need_event(used_event, 1, 0): false in poll mode.
        assert!(!need_event(dev.used_event(), 1, 0));
        q.reap().unwrap().unwrap();
        q.set_interrupts(true);
        assert_eq!(dev.used_event(), 1);
        assert!(q.prepare_wait());
    }

    #[test]
    fn bogus_used_entries_are_rejected() {
        let (_m, mut q, mut dev) = setup(8, false);
        let c = [RawDesc::readable(0x10, 4), RawDesc::writable(0x20, 8)];
        let h = q.add(&c, 7).unwrap();
        q.publish();
        dev.pop().unwrap();
        // Id out of range.
        dev.push_used(99, 1);
        assert!(matches!(q.reap(), Err(Error::Protocol(_))));
        // Id in range but not a head in flight.
        let (_m, mut q, mut dev) = setup(8, false);
        let h2 = q.add(&c, 7).unwrap();
        q.publish();
        dev.push_used(h2 as u32 + 1, 1);
        assert!(matches!(q.reap(), Err(Error::Protocol(_))));
        // Length beyond the writable bytes.
        let (_m, mut q, mut dev) = setup(8, false);
        let h3 = q.add(&c, 7).unwrap();
        q.publish();
        dev.push_used(h3 as u32, 9);
        assert!(matches!(q.reap(), Err(Error::Protocol(_))));
        // Used index running ahead of the chains in flight.
        let (_m, mut q, dev) = setup(8, false);
        q.add(&c, 7).unwrap();
        q.publish();
        dev.w16(dev.l.used + 2, 5);
        assert!(matches!(q.reap(), Err(Error::Protocol(_))));
        // The same id twice: the second is not in flight any more.
        let (_m, mut q, mut dev) = setup(8, false);
        let h4 = q.add(&c, 1).unwrap();
        q.add(&c, 2).unwrap();
        q.publish();
        dev.push_used(h4 as u32, 8);
        dev.push_used(h4 as u32, 8);
        assert!(q.reap().unwrap().is_some());
        assert!(matches!(q.reap(), Err(Error::Protocol(_))));
        let _ = h;
    }

    #[test]
    fn indirect_chains_take_one_ring_descriptor() {
        let size = 4;
        let l = RingLayout::new(size);
        let mem = SharedMemory::new(l.total + 4096, 0x4000).unwrap();
        // SAFETY: the mapping holds the ring plus a 4 KiB table area and outlives the queue.
        let mut q = unsafe { SplitQueue::new(mem.as_ptr(), 0x4000, size, false, true) }.unwrap();
        let mut dev = MockDevice::new(mem.as_ptr(), size);
        // SAFETY: `l.total` is inside the mapping (4 KiB more were allocated).
        let table = unsafe { mem.as_ptr().add(l.total) };
        let tgpa = 0x4000 + l.total as u64;
        let descs = [
            RawDesc::readable(1, 72),
            RawDesc::readable(2, 16),
            RawDesc::writable(3, 10),
            RawDesc::writable(4, 1),
        ];
        // SAFETY: the table area is private to this test and 16-byte aligned.
        let h = unsafe { q.add_indirect(table, tgpa, &descs, 5) }.unwrap();
        assert_eq!(q.num_free(), 3);
        q.publish();
        let (head, d) = dev.pop().unwrap();
        assert_eq!(head, h);
        assert_eq!(d, vec![(tgpa, 64, VIRTQ_DESC_F_INDIRECT)]);
        // The table holds the chain with NEXT links.
        // SAFETY: 64 bytes of the table area, written by `add_indirect` above.
        let t = unsafe { std::slice::from_raw_parts(table, 64) };
        assert_eq!(&t[8..16], &[72, 0, 0, 0, 1, 0, 1, 0]);
        assert_eq!(&t[56..64], &[1, 0, 0, 0, 2, 0, 0, 0]);
        dev.push_used(h as u32, 11);
        assert_eq!(q.reap().unwrap().unwrap().len, 11);
        assert_eq!(q.num_free(), 4);
    }

    /// Polled, a slot reused with the same chain keeps its table; whatever differs (a changed
    /// chain, or bytes someone else wrote over the table) is stored, so the device always reads
    /// exactly the chain that was added. With interrupts every word is stored.
    #[test]
    fn polled_indirect_tables_are_rewritten_only_where_they_differ() {
        for interrupts in [false, true] {
            let size = 4;
            let l = RingLayout::new(size);
            let mem = SharedMemory::new(l.total + 4096, 0x4000).unwrap();
            // SAFETY: the mapping holds the ring plus a 4 KiB table area and outlives the queue.
            let mut q =
                unsafe { SplitQueue::new(mem.as_ptr(), 0x4000, size, false, interrupts) }.unwrap();
            let mut dev = MockDevice::new(mem.as_ptr(), size);
            // SAFETY: `l.total` is inside the mapping (4 KiB more were allocated).
            let table = unsafe { mem.as_ptr().add(l.total) };
            let tgpa = 0x4000 + l.total as u64;
            let table_bytes = || {
                // SAFETY: 48 bytes of the table area, private to this test.
                unsafe { std::slice::from_raw_parts(table, 48) }.to_vec()
            };
            let a = [
                RawDesc::readable(0x1000, 84),
                RawDesc::readable(0x2000, 64),
                RawDesc::writable(0x3000, 81),
            ];
            let mut b = a;
            b[1].len = 65;
            let mut want = Vec::new();
            for (round, chain) in [a, a, b, a].iter().enumerate() {
                if round == 1 {
                    // Someone scribbled over the table between two uses.
                    // SAFETY: inside the private table area.
                    unsafe { std::ptr::write_bytes(table.add(20), 0xee, 7) };
                }
                // SAFETY: the table area is private to this test and 16-byte aligned.
                let h = unsafe { q.add_indirect(table, tgpa, chain, 1) }.unwrap();
                q.publish();
                let (head, d) = dev.pop().unwrap();
                assert_eq!((head, d), (h, vec![(tgpa, 48, VIRTQ_DESC_F_INDIRECT)]));
                let mut t = Vec::new();
                for (k, x) in chain.iter().enumerate() {
                    let more = k + 1 < chain.len();
                    t.extend_from_slice(&x.addr.to_le_bytes());
                    t.extend_from_slice(&x.len.to_le_bytes());
                    t.extend_from_slice(&(x.flags | u16::from(more)).to_le_bytes());
                    t.extend_from_slice(&(if more { k as u16 + 1 } else { 0 }).to_le_bytes());
                }
                assert_eq!(table_bytes(), t, "round {round}, interrupts {interrupts}");
                want = t;
                dev.push_used(h as u32, 1);
                q.reap().unwrap().unwrap();
            }
            assert_eq!(want.len(), 48);
        }
    }

    #[test]
    fn copy_changed_stores_what_differs() {
        let mut buf = [1u64, 2, 3, 4];
        for skip in [false, true] {
            // SAFETY: four aligned words of a local array.
            unsafe { copy_changed(buf.as_mut_ptr(), &[1, 9, 3, 8], skip) };
            assert_eq!(buf, [1, 9, 3, 8]);
            buf = [1, 2, 3, 4];
        }
    }
}
