//! Device-agnostic descriptor chain walking.
//!
//! [`ChainBufs::walk`] visits a [`DescriptorChain`] once (following an indirect table), checks
//! it (readable descriptors strictly before writable ones, zero-length descriptors skipped, every
//! descriptor inside one guest memory region, bounded length and count, no truncated chain) and
//! records the chain as two streams of guest-memory [`Seg`]s: the device-readable bytes and the
//! device-writable bytes. Devices then copy small fixed headers out of the readable stream
//! ([`ChainBufs::read`]) and carve sub-ranges of either stream into `Seg` lists without copying
//! ([`ChainBufs::carve_readable`], [`ChainBufs::carve_writable`]).
//!
//! The `Seg`s carry a `'static` lifetime because they point into guest memory whose lifetime
//! the type system cannot see: they are valid while the caller holds the guest memory snapshot
//! that `walk` was given, which workers hold for a whole batch.

use dpacc_spec::Seg;
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

/// Descriptor flag (`VRING_DESC_F_NEXT`, in the descriptor's 16-bit width): the chain
/// continues in `next`.
pub(crate) const F_NEXT: u16 = VRING_DESC_F_NEXT as u16;
/// Descriptor flag (`VRING_DESC_F_WRITE`): device-writable buffer.
pub(crate) const F_WRITE: u16 = VRING_DESC_F_WRITE as u16;
/// Descriptor flag (`VRING_DESC_F_INDIRECT`): the buffer is a descriptor table.
pub(crate) const F_INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;
/// Regions [`FastMem`] translates without the generic lookup (more fall back to it).
const FAST_REGIONS: usize = 8;

/// Most descriptors accepted in one chain (direct or indirect).
pub(crate) const MAX_CHAIN_DESCS: usize = 1024;

/// Why a chain was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ChainError {
    /// A device-readable descriptor follows a device-writable one.
    #[error("readable descriptor after a writable one")]
    ReadableAfterWritable,
    /// A descriptor of length 0.
    /// A descriptor is not inside one guest memory region.
    #[error("descriptor {addr:#x}+{len} outside guest memory")]
    OutOfRange {
        /// Guest address.
        addr: u64,
        /// Length.
        len: u32,
    },
    /// The chain is longer than 4 GiB in total.
    #[error("chain too long")]
    TooLong,
    /// More than [`MAX_CHAIN_DESCS`] descriptors.
    #[error("too many descriptors")]
    TooManyDescriptors,
    /// The chain ended early: a bad `next` index, a loop, a nested indirect table, an
    /// unreadable descriptor table, or a 4 GiB overflow detected by the iterator.
    #[error("broken chain")]
    Broken,
    /// An offset/length pair lies outside the stream it refers to.
    #[error("range outside the descriptor chain")]
    Range,
    /// The output list has no room for more segments.
    #[error("segment list full")]
    ListFull,
}

/// One walked chain: its readable and writable streams. Reused across chains.
#[derive(Debug)]
pub(crate) struct ChainBufs {
    head: u16,
    readable: Vec<Seg<'static>>,
    writable: Vec<Seg<'static>>,
    read_len: usize,
    write_len: usize,
}

impl Default for ChainBufs {
    fn default() -> Self {
        Self::new()
    }
}

impl ChainBufs {
    /// Buffers sized for [`MAX_CHAIN_DESCS`] descriptors (no allocation per chain).
    pub(crate) fn new() -> Self {
        Self {
            head: 0,
            readable: Vec::with_capacity(MAX_CHAIN_DESCS),
            writable: Vec::with_capacity(MAX_CHAIN_DESCS),
            read_len: 0,
            write_len: 0,
        }
    }

    #[cfg(test)]
    fn push(&mut self, seg: Seg<'static>, write: bool) -> Result<(), ChainError> {
        if write {
            self.writable.push(seg);
            self.write_len += seg.len();
        } else {
            if !self.writable.is_empty() {
                return Err(ChainError::ReadableAfterWritable);
            }
            self.readable.push(seg);
            self.read_len += seg.len();
        }
        Ok(())
    }

    /// Walks the chain with head `head` of the descriptor table at guest address `table` with
    /// `size` entries, like [`walk`](Self::walk) does for a [`DescriptorChain`] and with the
    /// same checks (plus those of the `DescriptorChain` iterator: `next` inside the table, at
    /// most `size` descriptors, one level of indirection, indirect tables a multiple of 16
    /// bytes), but reading descriptors and translating addresses through `mem`'s cached regions
    /// instead of the generic guest memory accessors. Errors the iterator would have stopped on
    /// silently are [`ChainError::Broken`].
    pub(crate) fn walk_table<G: GuestMemoryBackend>(
        &mut self,
        head: u16,
        table: u64,
        size: u16,
        mem: &FastMem<'_, G>,
    ) -> Result<(), ChainError> {
        self.head = head;
        self.readable.clear();
        self.writable.clear();
        self.read_len = 0;
        self.write_len = 0;
        let (mut table, mut size, mut idx, mut ttl) = (table, size, head, size);
        // The table translated once (one bounds check for all its descriptors) when it lies in
        // one region; otherwise each descriptor is looked up on its own, as before.
        let mut host = mem.host(table, 16 * u64::from(size));
        let mut indirect = false;
        let mut total: u64 = 0;
        // The segments are written into the lists' spare room and the counts and byte sums
        // kept in locals, committed once at the end: pushing each through `Vec::push` and
        // `self.*_len` re-read and re-stored the lists' lengths and sums in memory for every
        // descriptor (the stores of one descriptor could alias the next one's loads).
        let (mut nr, mut nw) = (0usize, 0usize);
        let (mut rlen, mut wlen) = (0usize, 0usize);
        let rbuf = self.readable.spare_capacity_mut();
        let wbuf = self.writable.spare_capacity_mut();
        loop {
            if ttl == 0 || idx >= size {
                return Err(ChainError::Broken);
            }
            let (addr, len, flags, next) = match host {
                // SAFETY: `idx < size` and the table's `16 * size` bytes at `p` are mapped
                // (checked by `host`), kept so by the caller's memory snapshot.
                Some(p) => unsafe { desc_at(p, idx) },
                None => mem.read_desc(table, idx)?,
            };
            if flags & F_INDIRECT != 0 {
                if indirect || len % 16 != 0 || len / 16 > u32::from(u16::MAX) {
                    return Err(ChainError::Broken);
                }
                (table, size, idx, ttl) = (addr, (len / 16) as u16, 0, (len / 16) as u16);
                host = if len > 0 {
                    mem.host(table, u64::from(len))
                } else {
                    None
                };
                indirect = true;
                continue;
            }
            if nr + nw >= MAX_CHAIN_DESCS {
                return Err(ChainError::TooManyDescriptors);
            }
            let write = flags & F_WRITE != 0;
            if len == 0 {
                // As in `walk`: nothing to map, but the order still holds.
                if !write && nw != 0 {
                    return Err(ChainError::ReadableAfterWritable);
                }
            } else {
                total += u64::from(len);
                if total > u64::from(u32::MAX) {
                    return Err(ChainError::TooLong);
                }
                let seg = mem.seg(addr, len)?;
                if !write && nw != 0 {
                    return Err(ChainError::ReadableAfterWritable);
                }
                // Both lists hold `MAX_CHAIN_DESCS` (`new`), more than `nr + nw` (checked).
                let (slot, n, sum) = if write {
                    (wbuf.get_mut(nw), &mut nw, &mut wlen)
                } else {
                    (rbuf.get_mut(nr), &mut nr, &mut rlen)
                };
                slot.ok_or(ChainError::TooManyDescriptors)?.write(seg);
                *n += 1;
                *sum += seg.len();
            }
            if flags & F_NEXT == 0 {
                break;
            }
            idx = next;
            ttl -= 1;
        }
        // SAFETY: the first `nr` / `nw` spare slots were initialized above (a `Seg` is `Copy`:
        // nothing to drop), within the capacity `spare_capacity_mut` offered.
        unsafe {
            self.readable.set_len(nr);
            self.writable.set_len(nw);
        }
        self.read_len = rlen;
        self.write_len = wlen;
        Ok(())
    }

    /// Head index of the last walked chain (for `add_used`).
    pub(crate) fn head(&self) -> u16 {
        self.head
    }

    /// The first device-readable segment (a request header and what follows it in the same
    /// buffer), if any.
    #[inline]
    pub(crate) fn first_readable(&self) -> Option<Seg<'static>> {
        self.readable.first().copied()
    }

    /// The last device-writable segment (where a trailing status byte goes), if any.
    #[inline]
    pub(crate) fn last_writable(&self) -> Option<Seg<'static>> {
        self.writable.last().copied()
    }

    /// Device-readable bytes.
    pub(crate) fn readable_len(&self) -> usize {
        self.read_len
    }

    /// Device-writable bytes.
    pub(crate) fn writable_len(&self) -> usize {
        self.write_len
    }

    /// Copies `out.len()` bytes of the readable stream starting at `offset` into `out`.
    #[inline]
    pub(crate) fn read(&self, offset: usize, out: &mut [u8]) -> Result<(), ChainError> {
        // The common case: inside the first readable descriptor (a request header, its IV).
        if let Some(first) = self.readable.first() {
            if offset
                .checked_add(out.len())
                .is_some_and(|end| end <= first.len())
            {
                // SAFETY: `offset..offset + out.len()` lies inside the segment, which is guest
                // memory the caller keeps mapped (module docs); `out` is ours.
                unsafe { read_guest(first.ptr().add(offset), out) };
                return Ok(());
            }
        }
        let mut done = 0;
        walk_range(&self.readable, self.read_len, offset, out.len(), |s| {
            let dst = &mut out[done..done + s.len()];
            // SAFETY: `s` lies inside a guest memory mapping that the caller keeps alive
            // (see the module docs).
            unsafe { read_guest(s.ptr(), dst) };
            done += s.len();
            Ok(())
        })
    }

    /// Copies `data` into the writable stream at `offset`.
    pub(crate) fn write(&self, offset: usize, data: &[u8]) -> Result<(), ChainError> {
        let mut done = 0;
        walk_range(&self.writable, self.write_len, offset, data.len(), |s| {
            // SAFETY: as in `read`; the descriptor is device-writable.
            unsafe { write_guest(s.ptr(), &data[done..done + s.len()]) };
            done += s.len();
            Ok(())
        })
    }

    /// Calls `f(dst, done, n)` for each piece of the `len` writable bytes at `offset`: `n`
    /// bytes at host address `dst` (guest memory, device-writable), `done` bytes into the
    /// range. For writers whose source is not one host slice (a frame partly in another
    /// guest's buffer).
    pub(crate) fn fill(
        &self,
        offset: usize,
        len: usize,
        mut f: impl FnMut(*mut u8, usize, usize),
    ) -> Result<(), ChainError> {
        let mut done = 0;
        walk_range(&self.writable, self.write_len, offset, len, |s| {
            f(s.ptr(), done, s.len());
            done += s.len();
            Ok(())
        })
    }

    /// Appends the segments covering `len` readable bytes at `offset` to `out` (no copy).
    /// Fails without touching `out`'s capacity: it never grows `out`.
    #[inline]
    pub(crate) fn carve_readable(
        &self,
        offset: usize,
        len: usize,
        out: &mut Vec<Seg<'static>>,
    ) -> Result<(), ChainError> {
        carve(&self.readable, self.read_len, offset, len, out)
    }

    /// Appends the segments covering `len` writable bytes at `offset` to `out` (no copy).
    #[inline]
    pub(crate) fn carve_writable(
        &self,
        offset: usize,
        len: usize,
        out: &mut Vec<Seg<'static>>,
    ) -> Result<(), ChainError> {
        carve(&self.writable, self.write_len, offset, len, out)
    }
}

/// Hints the CPU to start loading the cache line at `p` (no effect where unsupported).
#[inline(always)]
pub(crate) fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint: it never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch(p.cast::<i8>(), std::arch::x86_64::_MM_HINT_T0)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Hints the CPU to start loading the cache line at `p` for writing: `prefetchw` where the CPU
/// has it (CPUID `PRFCHW`, checked once), a plain prefetch otherwise.
///
/// Not `_mm_prefetch::<_MM_HINT_ET0>`: without the `prfchw` target feature enabled at build
/// time (it is not, in a portable build) LLVM lowers it to `prefetcht0`, which brings a line
/// the driver's core holds modified in shared state only, so the store that follows still
/// waits for a second transfer (the ownership). `prefetchw` asks for ownership at once.
#[inline(always)]
pub(crate) fn prefetch_write(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    if has_prefetchw() {
        // SAFETY: a prefetch is only a hint: it never faults, whatever the address, and
        // writes nothing; the CPU has the instruction (checked by `has_prefetchw`).
        unsafe {
            std::arch::asm!(
                "prefetchw byte ptr [{0}]",
                in(reg) p,
                options(nostack, preserves_flags, readonly)
            )
        };
        return;
    }
    prefetch(p);
}

/// Whether the CPU has `prefetchw` (CPUID leaf 0x8000_0001, ECX bit 8), asked once.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn has_prefetchw() -> bool {
    use std::sync::atomic::{AtomicU8, Ordering};
    /// 0: not asked yet, 1: no, 2: yes.
    static PRFCHW: AtomicU8 = AtomicU8::new(0);
    #[cold]
    #[inline(never)]
    fn ask() -> bool {
        use std::arch::x86_64::__cpuid;
        let has =
            __cpuid(0x8000_0000).eax >= 0x8000_0001 && __cpuid(0x8000_0001).ecx & (1 << 8) != 0;
        PRFCHW.store(if has { 2 } else { 1 }, Ordering::Relaxed);
        has
    }
    match PRFCHW.load(Ordering::Relaxed) {
        2 => true,
        1 => false,
        _ => ask(),
    }
}

/// Copies `out.len()` bytes from guest memory at `src` into `out`: a raw-pointer memcpy (wide
/// loads), read once; the bytes are then used from `out` only, never re-read from the guest
/// (docs/decisions/0005-guest-memory-access.md). No reference to guest memory is formed.
///
/// # Safety
/// `src..src + out.len()` must be mapped and readable, and not overlap `out`.
#[inline]
pub(crate) unsafe fn read_guest(src: *const u8, out: &mut [u8]) {
    // SAFETY: the caller vouches for the source range; `out` is ours and disjoint from it.
    unsafe { std::ptr::copy_nonoverlapping(src, out.as_mut_ptr(), out.len()) };
}

/// Copies `data` into guest memory at `dst`: a raw-pointer memcpy (wide stores: a 64-byte
/// frame is a few stores, not a store per word, which matters when the destination lines miss
/// and the store buffer fills).
///
/// # Safety
/// `dst..dst + data.len()` must be mapped and writable, and not overlap `data`.
#[inline]
pub(crate) unsafe fn write_guest(dst: *mut u8, data: &[u8]) {
    // SAFETY: the caller vouches for the destination range; `data` is ours and disjoint.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
}

/// Guest address translation for one batch: the regions of a guest memory snapshot, cached as
/// (start, length, host address) so that descriptors and buffers are looked up with a compare
/// or two instead of the generic `GuestMemory` paths. Borrows the snapshot, so the cached host
/// addresses cannot outlive the mappings; addresses outside the cached regions go through the
/// snapshot's own lookup.
pub(crate) struct FastMem<'a, G: GuestMemoryBackend> {
    mem: &'a G,
    regions: [(u64, u64, *mut u8); FAST_REGIONS],
    n: usize,
}

impl<'a, G: GuestMemoryBackend> FastMem<'a, G> {
    /// Caches the regions of `mem` (the first [`FAST_REGIONS`] that have a host mapping).
    pub(crate) fn new(mem: &'a G) -> Self {
        let mut regions = [(0u64, 0u64, std::ptr::null_mut()); FAST_REGIONS];
        let mut n = 0;
        for r in mem.iter() {
            if n == FAST_REGIONS {
                break;
            }
            let len = r.len();
            let Ok(ulen) = usize::try_from(len) else {
                continue;
            };
            if let Ok(s) = r.get_slice(MemoryRegionAddress(0), ulen) {
                regions[n] = (r.start_addr().0, len, s.ptr_guard_mut().as_ptr());
                n += 1;
            }
        }
        Self { mem, regions, n }
    }

    /// Host address of `len` (> 0) bytes at `addr`, all inside one region.
    #[inline]
    pub(crate) fn host(&self, addr: u64, len: u64) -> Option<*mut u8> {
        for &(start, rlen, ptr) in &self.regions[..self.n] {
            let off = addr.wrapping_sub(start);
            if addr >= start && off < rlen && len <= rlen - off {
                // SAFETY: `off < rlen`, so the result is inside the region's mapping.
                return Some(unsafe { ptr.add(off as usize) });
            }
        }
        None
    }

    /// The segment of `len` (> 0) bytes at `addr`, inside one region.
    #[inline]
    pub(crate) fn seg(&self, addr: u64, len: u32) -> Result<Seg<'static>, ChainError> {
        match self.host(addr, u64::from(len)) {
            // SAFETY: `p..p+len` is inside one mapped region of the snapshot, which stays
            // mapped while the caller holds it (module docs).
            Some(p) => Ok(unsafe { Seg::from_raw(p, len as usize) }),
            None => seg_at(self.mem, GuestAddress(addr), len),
        }
    }

    /// Descriptor `idx` of the table at `table`: (addr, len, flags, next).
    #[inline]
    pub(crate) fn read_desc(
        &self,
        table: u64,
        idx: u16,
    ) -> Result<(u64, u32, u16, u16), ChainError> {
        let at = table
            .checked_add(u64::from(idx) * 16)
            .ok_or(ChainError::Broken)?;
        let mut b = [0u8; 16];
        match self.host(at, 16) {
            // SAFETY: the 16 bytes are inside a mapped region (see `seg`).
            Some(p) => unsafe { read_guest(p, &mut b) },
            None => {
                let s = self
                    .mem
                    .get_slice(GuestAddress(at), 16)
                    .map_err(|_| ChainError::Broken)?;
                if s.len() != 16 {
                    return Err(ChainError::Broken);
                }
                // SAFETY: `get_slice` checked the 16 bytes are mapped.
                unsafe { read_guest(s.ptr_guard().as_ptr(), &mut b) };
            }
        }
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let addr = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
        let len = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        Ok((addr, len, u16_at(12), u16_at(14)))
    }
}

/// Descriptor `idx` of a descriptor table at host address `table`: (addr, len, flags, next),
/// read once (two 8-byte loads; the driver may be writing it, the values are checked by the
/// caller like any other).
///
/// # Safety
/// `table + 16 * idx .. + 16` must be mapped and readable.
#[inline(always)]
unsafe fn desc_at(table: *const u8, idx: u16) -> (u64, u32, u16, u16) {
    // SAFETY: the caller vouches for the 16 bytes.
    let (a, b) = unsafe {
        let p = table.add(16 * usize::from(idx)).cast::<u64>();
        (
            std::ptr::read_unaligned(p),
            std::ptr::read_unaligned(p.add(1)),
        )
    };
    let b = u64::from_le(b);
    (
        u64::from_le(a),
        b as u32,
        (b >> 32) as u16,
        (b >> 48) as u16,
    )
}

fn seg_at<G: GuestMemoryBackend>(
    mem: &G,
    addr: GuestAddress,
    len: u32,
) -> Result<Seg<'static>, ChainError> {
    let bad = ChainError::OutOfRange { addr: addr.0, len };
    let slice = mem.get_slice(addr, len as usize).map_err(|_| bad)?;
    if slice.len() != len as usize {
        return Err(bad);
    }
    let ptr = slice.ptr_guard_mut().as_ptr();
    // SAFETY: `ptr..ptr+len` is inside one mapped guest memory region (get_slice checked it);
    // it stays mapped while the caller holds the memory snapshot (module docs).
    Ok(unsafe { Seg::from_raw(ptr, len as usize) })
}

/// Calls `f` with the sub-segments covering `len` bytes at `offset` of a stream.
#[inline]
fn walk_range(
    segs: &[Seg<'static>],
    total: usize,
    offset: usize,
    len: usize,
    mut f: impl FnMut(Seg<'static>) -> Result<(), ChainError>,
) -> Result<(), ChainError> {
    let end = offset.checked_add(len).ok_or(ChainError::Range)?;
    if end > total {
        return Err(ChainError::Range);
    }
    if len == 0 {
        return Ok(());
    }
    let mut pos = 0usize;
    for s in segs {
        let (s_start, s_end) = (pos, pos + s.len());
        pos = s_end;
        if s_end <= offset {
            continue;
        }
        if s_start >= end {
            break;
        }
        let a = offset.max(s_start) - s_start;
        let b = end.min(s_end) - s_start;
        // SAFETY: `a..b` is within the segment, which is valid memory (see seg_at).
        let sub = unsafe { Seg::from_raw(s.ptr().add(a), b - a) };
        f(sub)?;
    }
    Ok(())
}

/// Appends the sub-segments covering `len` bytes at `offset` of a stream to `out`: the same
/// pieces as [`walk_range`] would visit, in a loop of its own that is inlined into the parse
/// (a request carves three or four ranges, each usually inside one segment: through
/// `walk_range` and its closure each was a call, ~5 % of a worker at 64 B).
#[inline(always)]
fn carve(
    segs: &[Seg<'static>],
    total: usize,
    offset: usize,
    len: usize,
    out: &mut Vec<Seg<'static>>,
) -> Result<(), ChainError> {
    let end = offset.checked_add(len).ok_or(ChainError::Range)?;
    if end > total {
        return Err(ChainError::Range);
    }
    if len == 0 {
        return Ok(());
    }
    let start = out.len();
    let mut pos = 0usize;
    for s in segs {
        let (s_start, s_end) = (pos, pos + s.len());
        pos = s_end;
        if s_end <= offset {
            continue;
        }
        if out.len() == out.capacity() {
            out.truncate(start);
            return Err(ChainError::ListFull);
        }
        let a = offset.max(s_start) - s_start;
        let b = end.min(s_end) - s_start;
        // SAFETY: `a..b` is within the segment, which is valid memory (see seg_at).
        out.push(unsafe { Seg::from_raw(s.ptr().add(a), b - a) });
        if s_end >= end {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ops::Deref;
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::DescriptorChain;
    use vm_memory::GuestMemory;

    impl ChainBufs {
        /// Walks `chain` over `mem`, replacing the previous contents. On error the buffers hold
        /// what was collected so far (callers should not use them) and `head()` is still valid.
        /// The reference walk over virtio-queue's own chain iterator, which the tests hold
        /// [`walk_table`](Self::walk_table) (what the ring layer uses) against.
        fn walk<M, G>(&mut self, chain: DescriptorChain<M>, mem: &G) -> Result<(), ChainError>
        where
            M: Deref,
            M::Target: GuestMemory,
            G: GuestMemoryBackend,
        {
            self.head = chain.head_index();
            self.readable.clear();
            self.writable.clear();
            self.read_len = 0;
            self.write_len = 0;
            let mut total: u64 = 0;
            let mut last: Option<Descriptor> = None;
            for d in chain {
                if self.readable.len() + self.writable.len() >= MAX_CHAIN_DESCS {
                    return Err(ChainError::TooManyDescriptors);
                }
                let len = d.len();
                if len == 0 {
                    // An empty buffer carries no bytes (e.g. empty AAD or an empty message to
                    // hash): nothing to map, but the readable-before-writable order still holds.
                    if !d.is_write_only() && !self.writable.is_empty() {
                        return Err(ChainError::ReadableAfterWritable);
                    }
                    last = Some(d);
                    continue;
                }
                total += u64::from(len);
                if total > u64::from(u32::MAX) {
                    return Err(ChainError::TooLong);
                }
                let seg = seg_at(mem, d.addr(), len)?;
                self.push(seg, d.is_write_only())?;
                last = Some(d);
            }
            match last {
                // The iterator stops silently on errors; a last descriptor that still says "next"
                // means the chain was cut short.
                Some(d) if d.has_next() => Err(ChainError::Broken),
                None => Err(ChainError::Broken),
                _ => Ok(()),
            }
        }
    }

    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, Bytes, GuestMemoryMmap};

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap()
    }

    fn d(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags, 0))
    }

    #[test]
    fn guest_copies_at_every_alignment_and_length() {
        let src: Vec<u8> = (0..200u8).collect();
        let mut area = vec![0u8; 256];
        for off in 0..17 {
            for len in [0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 150] {
                let mut out = vec![0xeeu8; len];
                // SAFETY: `src[off..off + len]` is inside `src`.
                unsafe { read_guest(src.as_ptr().add(off), &mut out) };
                assert_eq!(out, &src[off..off + len], "read off {off} len {len}");
                area.fill(0);
                // SAFETY: `area[off..off + len]` is inside `area`.
                unsafe { write_guest(area.as_mut_ptr().add(off), &src[..len]) };
                assert_eq!(
                    &area[off..off + len],
                    &src[..len],
                    "write off {off} len {len}"
                );
                assert!(area[..off]
                    .iter()
                    .chain(&area[off + len..])
                    .all(|&b| b == 0));
            }
        }
    }

    #[test]
    fn readable_then_writable_streams() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        m.write_slice(&[1, 2, 3, 4], GuestAddress(0x10_0000))
            .unwrap();
        m.write_slice(&[5, 6, 7], GuestAddress(0x10_1000)).unwrap();
        let chain = vq
            .build_desc_chain(&[
                d(0x10_0000, 4, 0),
                d(0x10_1000, 3, 0),
                d(0x10_2000, 8, F_WRITE),
                d(0x10_3000, 1, F_WRITE),
            ])
            .unwrap();
        let mut b = ChainBufs::new();
        b.walk(chain, &m).unwrap();
        assert_eq!((b.readable_len(), b.writable_len()), (7, 9));
        let mut out = [0u8; 4];
        b.read(2, &mut out).unwrap();
        assert_eq!(out, [3, 4, 5, 6]);
        let mut segs = Vec::with_capacity(8);
        b.carve_readable(3, 3, &mut segs).unwrap();
        assert_eq!(segs.iter().map(|s| s.len()).collect::<Vec<_>>(), vec![1, 2]);
        b.write(7, &[9, 9]).unwrap();
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x10_2007)).unwrap(), 9);
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x10_3000)).unwrap(), 9);
        assert_eq!(b.read(5, &mut out), Err(ChainError::Range));
        assert_eq!(b.carve_writable(8, 2, &mut segs), Err(ChainError::Range));
        assert_eq!(
            b.carve_writable(usize::MAX, 2, &mut segs),
            Err(ChainError::Range)
        );
    }

    #[test]
    fn indirect_chain_is_followed() {
        // The mock places indirect tables at 0x3000_0000.
        let m = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x20_0000),
            (GuestAddress(0x3000_0000), 0x1_0000),
        ])
        .unwrap();
        let mut vq = MockSplitQueue::new(&m, 16);
        vq.add_indirect_chain(3).unwrap();
        // Fill the indirect table's descriptors with sane buffers: read, read, write.
        let q: virtio_queue::Queue = vq.create_queue().unwrap();
        let mut q = q;
        let chain = virtio_queue::QueueT::pop_descriptor_chain(&mut q, &m).unwrap();
        let head = vq.desc_table().load(chain.head_index()).unwrap();
        let head = Descriptor::from(head);
        assert!(head.refers_to_indirect_table());
        let table = head.addr();
        for (i, (addr, len, flags)) in [
            (0x10_0000u64, 16u32, F_NEXT),
            (0x10_1000, 16, F_NEXT),
            (0x10_2000, 4, F_WRITE),
        ]
        .into_iter()
        .enumerate()
        {
            let desc = Descriptor::new(addr, len, flags, i as u16 + 1);
            m.write_obj(desc, table.unchecked_add(16 * i as u64))
                .unwrap();
        }
        let mut b = ChainBufs::new();
        b.walk(chain, &m).unwrap();
        assert_eq!((b.readable_len(), b.writable_len()), (32, 4));
        let _ = F_INDIRECT;
    }

    #[test]
    fn readable_after_writable_is_rejected() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let chain = vq
            .build_desc_chain(&[d(0x10_0000, 4, F_WRITE), d(0x10_1000, 4, 0)])
            .unwrap();
        let mut b = ChainBufs::new();
        assert_eq!(b.walk(chain, &m), Err(ChainError::ReadableAfterWritable));
    }

    #[test]
    fn out_of_range_is_rejected_and_zero_length_skipped() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let mut b = ChainBufs::new();
        let chain = vq
            .build_desc_chain(&[d(0x1f_fff0, 0x20, 0), d(0x10_0000, 1, F_WRITE)])
            .unwrap();
        assert!(matches!(
            b.walk(chain, &m),
            Err(ChainError::OutOfRange { .. })
        ));
        let chain = vq
            .build_desc_chain(&[d(0x9000_0000, 4, 0), d(0x10_0000, 1, F_WRITE)])
            .unwrap();
        assert!(matches!(
            b.walk(chain, &m),
            Err(ChainError::OutOfRange { .. })
        ));
        let chain = vq
            .build_desc_chain(&[
                d(0x10_0000, 4, 0),
                d(0x9000_0000, 0, 0),
                d(0x10_0000, 1, F_WRITE),
            ])
            .unwrap();
        assert_eq!(b.walk(chain, &m), Ok(()));
        assert_eq!((b.readable_len(), b.writable_len()), (4, 1));
    }

    #[test]
    fn overflowing_total_length_is_rejected() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let mut b = ChainBufs::new();
        // Two ~3 GiB descriptors: the iterator (or our check) stops it; either way an error,
        // never a wrapped length.
        let chain = vq
            .build_desc_chain(&[d(0x10_0000, 0xC000_0000, 0), d(0x10_0000, 0xC000_0000, 0)])
            .unwrap();
        assert!(b.walk(chain, &m).is_err());
    }

    #[test]
    fn bad_next_index_is_broken() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        // A single descriptor that claims a next one beyond the table.
        vq.add_desc_chains(
            &[RawDescriptor::from(Descriptor::new(
                0x10_0000, 4, F_NEXT, 200,
            ))],
            0,
        )
        .unwrap();
        let mut q: virtio_queue::Queue = vq.create_queue().unwrap();
        let chain = virtio_queue::QueueT::pop_descriptor_chain(&mut q, &m).unwrap();
        let mut b = ChainBufs::new();
        assert_eq!(b.walk(chain, &m), Err(ChainError::Broken));
    }

    /// `walk_table` (the data path's walker) agrees with `walk` (over virtio-queue's
    /// `DescriptorChain` iterator) on good and bad chains, direct and indirect.
    #[test]
    fn walk_table_agrees_with_walk() {
        let m = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x20_0000),
            (GuestAddress(0x3000_0000), 0x1_0000),
        ])
        .unwrap();
        let fast = FastMem::new(&m);
        let vq = MockSplitQueue::new(&m, 16);
        let table = vq.desc_table_addr().0;
        let check = |descs: &[RawDescriptor]| {
            let chain = vq.build_desc_chain(descs).unwrap();
            let head = chain.head_index();
            let (mut a, mut b) = (ChainBufs::new(), ChainBufs::new());
            let ra = a.walk(chain, &m);
            let rb = b.walk_table(head, table, 16, &fast);
            assert_eq!(ra, rb, "{descs:?}");
            if ra.is_ok() {
                assert_eq!(
                    (a.readable_len(), a.writable_len(), a.head()),
                    (b.readable_len(), b.writable_len(), b.head())
                );
                let (mut x, mut y) = ([0u8; 7], [0u8; 7]);
                if a.readable_len() >= 7 {
                    a.read(0, &mut x).unwrap();
                    b.read(0, &mut y).unwrap();
                    assert_eq!(x, y);
                }
            }
        };
        m.write_slice(
            &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
            GuestAddress(0x10_0000),
        )
        .unwrap();
        check(&[d(0x10_0000, 11, 0), d(0x10_2000, 8, F_WRITE)]);
        check(&[
            d(0x10_0000, 4, 0),
            d(0x10_0004, 7, 0),
            d(0x10_3000, 1, F_WRITE),
        ]);
        check(&[d(0x10_0000, 4, F_WRITE), d(0x10_1000, 4, 0)]);
        check(&[d(0x1f_fff0, 0x20, 0), d(0x10_0000, 1, F_WRITE)]);
        check(&[d(0x9000_0000, 4, 0), d(0x10_0000, 1, F_WRITE)]);
        check(&[
            d(0x10_0000, 4, 0),
            d(0x9000_0000, 0, 0),
            d(0x10_0000, 1, F_WRITE),
        ]);
        check(&[d(0x10_0000, 0xC000_0000, 0), d(0x10_0000, 0xC000_0000, 0)]);
        // Indirect tables: a good one, one of a bad length, an empty one, a nested one.
        let t = 0x3000_0000u64;
        for (i, (addr, len, flags)) in [
            (0x10_0000u64, 8u32, F_NEXT),
            (0x10_0008, 3, F_NEXT),
            (0x10_2000, 4, F_WRITE),
        ]
        .into_iter()
        .enumerate()
        {
            m.write_obj(
                Descriptor::new(addr, len, flags, i as u16 + 1),
                GuestAddress(t + 16 * i as u64),
            )
            .unwrap();
        }
        m.write_obj(
            Descriptor::new(t, 16, F_INDIRECT, 0),
            GuestAddress(t + 0x100),
        )
        .unwrap();
        check(&[d(t, 48, F_INDIRECT)]);
        check(&[d(t, 40, F_INDIRECT)]);
        check(&[d(t, 0, F_INDIRECT)]);
        check(&[d(t, 32, F_INDIRECT)]);
        check(&[d(t + 0x100, 16, F_INDIRECT)]);
        check(&[d(0x10_0000, 4, 0), d(t, 48, F_INDIRECT)]);
        check(&[d(0x9000_0000, 48, F_INDIRECT)]);
    }

    #[test]
    fn walk_table_rejects_bad_next_and_loops() {
        let m = mem();
        let fast = FastMem::new(&m);
        let vq = MockSplitQueue::new(&m, 16);
        let table = vq.desc_table_addr().0;
        let mut b = ChainBufs::new();
        // Next index beyond the table.
        vq.desc_table()
            .store(
                0,
                RawDescriptor::from(Descriptor::new(0x10_0000, 4, F_NEXT, 200)),
            )
            .unwrap();
        assert_eq!(b.walk_table(0, table, 16, &fast), Err(ChainError::Broken));
        // A loop 1 -> 2 -> 1.
        vq.desc_table()
            .store(
                1,
                RawDescriptor::from(Descriptor::new(0x10_0000, 4, F_NEXT, 2)),
            )
            .unwrap();
        vq.desc_table()
            .store(
                2,
                RawDescriptor::from(Descriptor::new(0x10_0000, 4, F_NEXT, 1)),
            )
            .unwrap();
        assert_eq!(b.walk_table(1, table, 16, &fast), Err(ChainError::Broken));
        // Head outside the table.
        assert_eq!(b.walk_table(16, table, 16, &fast), Err(ChainError::Broken));
        assert_eq!(b.head(), 16);
    }
}
