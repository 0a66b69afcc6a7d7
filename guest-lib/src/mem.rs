//! The one shared-memory region the device sees, and [`DmaBuf`]s carved out of it.
//!
//! Inside the region live the split rings, per-request header slots and an arena of data
//! buffers. Two kinds:
//!
//! - virtio-user: a memfd (sealed against shrinking and growing) mapped `MAP_SHARED` in this
//!   process and passed to the backend with `VHOST_USER_SET_MEM_TABLE`; every address a
//!   descriptor carries is `gpa_base + offset`.
//! - virtio-pci inside a VM: 2 MiB hugepages whose guest-physical addresses come from
//!   `/proc/self/pagemap` ([`transport::pci`](crate::transport::pci)); the region is a series of
//!   *DMA segments* (2 MiB each) and the address of byte `offset` is its page's physical
//!   address plus the offset inside the page. Pages are mapped in physical order, so runs of
//!   physically contiguous pages are contiguous here too; nothing the device reads or writes
//!   in one piece (a ring, a request slot, a [`DmaBuf`]) crosses a break between two runs.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// Alignment of every arena allocation (a cache line).
pub const DMA_ALIGN: usize = 64;

/// A 2 MiB hugepage.
pub const HUGEPAGE: usize = 2 << 20;

/// Size of a DMA segment of hugepage memory: one hugepage, the most memory a device sees
/// contiguous.
pub const DMA_SEGMENT: usize = HUGEPAGE;

/// A small page.
const SMALL_PAGE: usize = 4096;

/// Which pages back the memory of a virtio-user connection (the region this process shares
/// with the backend; inside a VM, DMA memory is always on 2 MiB hugepages).
///
/// On 4 KiB pages a 16 KiB operation touches five pages of its source and of its destination,
/// each a TLB entry; a 2 MiB page covers sixty such operations' buffers. The default is 4 KiB
/// pages: on the development VM hugepages measured level with them against main
/// (docs/performance.md, "Issue 15, ninth pass (b)"), and they are a host resource an operator
/// may have reserved for something else.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Hugepages {
    /// 2 MiB hugepages when the kernel has hugetlbfs and enough are free, 4 KiB pages (and a
    /// `tracing` note saying why) otherwise.
    Auto,
    /// 2 MiB hugepages, or an error saying how to reserve them.
    On,
    /// 4 KiB pages.
    #[default]
    Off,
}

/// Where to put `len` bytes at or after `off`, aligned to `align` (a power of two): with
/// `segment` (hugepage memory), a piece no longer than a segment is moved to the next segment
/// rather than straddle two, so the device sees it contiguous whatever the pages' addresses.
pub(crate) fn place(off: usize, len: usize, align: usize, segment: Option<usize>) -> usize {
    let off = off.next_multiple_of(align);
    match segment {
        Some(s) if len > 0 && len <= s && off / s != (off + len - 1) / s => off.next_multiple_of(s),
        _ => off,
    }
}

/// Starts loading the cache line of `p` (a hint: no effect on what the program computes).
#[inline(always)]
pub(crate) fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults and has no architectural effect, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Why [`hugetlb_memfd`] gave no memory.
#[derive(Debug)]
pub(crate) enum HugetlbError {
    /// Too few free 2 MiB pages (the system's counts; 0 where unknown).
    Short {
        /// Pages needed.
        need: usize,
        /// Pages reserved in the system.
        total: usize,
        /// Pages free.
        free: usize,
    },
    /// A system call failed: which, and why.
    Os(&'static str, std::io::Error),
}

impl From<HugetlbError> for Error {
    fn from(e: HugetlbError) -> Self {
        match e {
            HugetlbError::Short { need, total, free } => Error::NoHugepages { need, total, free },
            HugetlbError::Os(what, e) => Error::Io(what, e),
        }
    }
}

/// A memfd of `len` bytes (a multiple of [`HUGEPAGE`]) on 2 MiB hugepages, every page taken
/// now: a hugetlb page that cannot be had when first touched is a SIGBUS (here, or in a
/// backend that maps the region with `MAP_NORESERVE`), not an error. Sealing is allowed; the
/// caller decides. The library's one way to hugepage memory: the virtio-user region
/// ([`SharedMemory::with_pages`]) and the PCI transport's DMA memory both come from here.
pub(crate) fn hugetlb_memfd(
    name: &std::ffi::CStr,
    len: usize,
) -> std::result::Result<File, HugetlbError> {
    let need = len / HUGEPAGE;
    let short = || {
        let (total, free) = crate::transport::pci::sysfs::hugepages().unwrap_or((0, 0));
        HugetlbError::Short { need, total, free }
    };
    // A cheap early answer; fallocate below is the real check (it also sees a container's
    // hugetlb limit, which these counters do not).
    if let Some((total, free)) = crate::transport::pci::sysfs::hugepages() {
        if free < need {
            return Err(HugetlbError::Short { need, total, free });
        }
    }
    let flags =
        libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING | libc::MFD_HUGETLB | libc::MFD_HUGE_2MB;
    // SAFETY: the name is a valid NUL-terminated string; the call has no other inputs.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    if fd < 0 {
        return Err(HugetlbError::Os(
            "memfd_create(MFD_HUGETLB) (a kernel with hugetlbfs is needed)",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(len as u64)
        .map_err(|e| HugetlbError::Os("ftruncate of the hugepage memfd", e))?;
    // SAFETY: fallocate on the memfd we own, within its size.
    if unsafe { libc::fallocate(fd, 0, 0, len as libc::off_t) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::ENOSPC | libc::ENOMEM) => short(),
            _ => HugetlbError::Os("fallocate of 2 MiB hugepages", e),
        });
    }
    Ok(file)
}

/// A memfd-backed, shared, zero-initialised memory region.
#[derive(Debug)]
pub struct SharedMemory {
    file: File,
    ptr: *mut u8,
    size: usize,
    gpa_base: u64,
    /// Size of the pages backing the mapping (4 KiB or 2 MiB).
    page: usize,
    /// Hugepage memory: the device address of each [`DMA_SEGMENT`], in order.
    pages: Option<Box<[u64]>>,
}

// SAFETY: the mapping is process-wide and lives as long as `self`; every access through the raw
// pointer is done by code that documents its own synchronisation (rings use atomics and fences,
// buffers are owned by exactly one `DmaBuf` or one in-flight request).
unsafe impl Send for SharedMemory {}
// SAFETY: as above; `&SharedMemory` only hands out addresses and bounds checks.
unsafe impl Sync for SharedMemory {}

impl SharedMemory {
    /// Creates a region of `size` bytes (rounded up to 4 KiB) on 4 KiB pages whose first byte
    /// has guest address `gpa_base`.
    pub fn new(size: usize, gpa_base: u64) -> Result<Self> {
        Self::with_pages(size, gpa_base, Hugepages::Off)
    }

    /// Creates a region of `size` bytes whose first byte has guest address `gpa_base`, on the
    /// pages `pages` asks for: 2 MiB hugepages (`size` rounded up to 2 MiB) or 4 KiB pages
    /// (rounded up to 4 KiB). With [`Hugepages::Auto`], a kernel without hugetlbfs or too few
    /// free hugepages give 4 KiB pages and a `tracing` note; with [`Hugepages::On`], an error
    /// saying how to reserve them ([`Error::NoHugepages`]).
    pub fn with_pages(size: usize, gpa_base: u64, pages: Hugepages) -> Result<Self> {
        if size == 0 {
            return Err(Error::InvalidArgument("memory size"));
        }
        if pages != Hugepages::Off {
            match Self::create(size, gpa_base, HUGEPAGE) {
                Ok(m) => return Ok(m),
                Err(e) if pages == Hugepages::On => return Err(e),
                Err(e) => tracing::info!(
                    "shared memory on 4 KiB pages ({} bytes): 2 MiB hugepages unavailable: {e}",
                    size
                ),
            }
        }
        Self::create(size, gpa_base, SMALL_PAGE)
    }

    /// A sealed memfd of `size` bytes rounded up to `page` (4 KiB, or 2 MiB for hugetlbfs),
    /// mapped here.
    fn create(size: usize, gpa_base: u64, page: usize) -> Result<Self> {
        let huge = page == HUGEPAGE;
        let size = size
            .checked_next_multiple_of(page)
            .filter(|&s| s <= isize::MAX as usize)
            .ok_or(Error::InvalidArgument("memory size"))?;
        let file = if huge {
            hugetlb_memfd(c"dpacc-guest", size)?
        } else {
            // SAFETY: the name is a valid NUL-terminated string; the call has no other inputs.
            let fd = unsafe {
                libc::memfd_create(
                    c"dpacc-guest".as_ptr(),
                    libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
                )
            };
            if fd < 0 {
                return Err(Error::Io("memfd_create", std::io::Error::last_os_error()));
            }
            // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
            let file = unsafe { File::from_raw_fd(fd) };
            file.set_len(size as u64)
                .map_err(|e| Error::Io("ftruncate", e))?;
            file
        };
        let fd = file.as_raw_fd();
        // The size is final: sealed, as QEMU's memory-backend-memfd does, so the backend knows
        // the memory cannot shrink under it (hugetlbfs memfds take seals too, since Linux 4.16).
        // SAFETY: fcntl on the memfd we own.
        if unsafe {
            libc::fcntl(
                fd,
                libc::F_ADD_SEALS,
                libc::F_SEAL_SHRINK | libc::F_SEAL_GROW,
            )
        } != 0
        {
            return Err(Error::Io("F_ADD_SEALS", std::io::Error::last_os_error()));
        }
        // SAFETY: mapping a fresh memfd of `size` bytes at an address the kernel picks (2 MiB
        // aligned for hugetlbfs); the result is checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | if huge { libc::MAP_POPULATE } else { 0 },
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Error::Io("mmap", std::io::Error::last_os_error()));
        }
        Ok(Self {
            file,
            ptr: ptr.cast(),
            size,
            gpa_base,
            page,
            pages: None,
        })
    }

    /// A region of [`DMA_SEGMENT`]-sized pages whose device addresses are `pages`, mapped at
    /// `ptr` (`pages.len() * DMA_SEGMENT` bytes) from `file`.
    ///
    /// # Safety
    /// `ptr` must be a mapping of that size owned by the new value (it is unmapped on drop),
    /// and page `i` of it must be the memory the device reaches at `pages[i]`.
    pub(crate) unsafe fn from_pages(file: File, ptr: *mut u8, pages: Box<[u64]>) -> Self {
        Self {
            file,
            ptr,
            size: pages.len() * DMA_SEGMENT,
            gpa_base: pages.first().copied().unwrap_or(0),
            page: HUGEPAGE,
            pages: Some(pages),
        }
    }

    /// Start of the mapping in this process.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.size
    }

    /// Size of the pages backing the region in this process: 4 KiB, or 2 MiB (hugetlbfs).
    pub fn page_size(&self) -> usize {
        self.page
    }

    /// Whether the region is empty (never: creation rejects 0).
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// Guest address of the first byte.
    pub fn gpa_base(&self) -> u64 {
        self.gpa_base
    }

    /// The memfd (for `SET_MEM_TABLE`; byte `offset` of a linear region is at file offset
    /// `offset`).
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Guest address of byte `offset` (the device's view; for hugepage memory the guest-physical
    /// address).
    #[inline]
    pub fn gpa(&self, offset: usize) -> u64 {
        match &self.pages {
            None => self.gpa_base + offset as u64,
            Some(p) => {
                let page = p.get(offset / DMA_SEGMENT).copied().unwrap_or(0);
                page + (offset % DMA_SEGMENT) as u64
            }
        }
    }

    /// Whether the region is made of [`DMA_SEGMENT`]s that may not be contiguous for the
    /// device (hugepage memory).
    pub fn is_segmented(&self) -> bool {
        self.pages.is_some()
    }

    /// Offsets where the device's view of the region jumps (a page that does not follow its
    /// predecessor physically). Nothing the device accesses in one piece may cross one.
    pub fn breaks(&self) -> Vec<usize> {
        let Some(p) = &self.pages else {
            return Vec::new();
        };
        (1..p.len())
            .filter(|&i| p[i - 1].checked_add(DMA_SEGMENT as u64) != Some(p[i]))
            .map(|i| i * DMA_SEGMENT)
            .collect()
    }

    /// Pointer to byte `offset`; `None` when `offset..offset + len` leaves the region.
    pub fn ptr_at(&self, offset: usize, len: usize) -> Option<*mut u8> {
        let end = offset.checked_add(len)?;
        if end > self.size {
            return None;
        }
        // SAFETY: `offset <= size`, so the result stays inside (or one past) the mapping.
        Some(unsafe { self.ptr.add(offset) })
    }
}

impl Drop for SharedMemory {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`size` describe the mapping created in `new`; nothing uses it after drop
        // (every user holds an `Arc` to the owner).
        unsafe {
            libc::munmap(self.ptr.cast(), self.size);
        }
    }
}

/// First-fit allocator over a byte range of the region. Not on the data path: allocate
/// [`DmaBuf`]s up front and reuse them.
#[derive(Debug)]
pub(crate) struct Arena {
    /// Sorted, coalesced free blocks (offset, len).
    free: Mutex<Vec<(usize, usize)>>,
    /// Offsets no block spans (the region's [`SharedMemory::breaks`]).
    breaks: Vec<usize>,
}

impl Arena {
    /// An arena over `offset..offset + len`, whose blocks never span one of `breaks`.
    pub(crate) fn new(offset: usize, len: usize, breaks: &[usize]) -> Self {
        let end = offset + len;
        let inner: Vec<usize> = breaks
            .iter()
            .copied()
            .filter(|&b| b > offset && b < end)
            .collect();
        let mut free = Vec::with_capacity(inner.len() + 1);
        let mut start = offset;
        for &b in &inner {
            free.push((start, b - start));
            start = b;
        }
        if end > start {
            free.push((start, end - start));
        }
        Self {
            free: Mutex::new(free),
            breaks: inner,
        }
    }

    fn joins(&self, left_end: usize, right_start: usize) -> bool {
        left_end == right_start && self.breaks.binary_search(&left_end).is_err()
    }

    pub(crate) fn alloc(&self, len: usize) -> Option<usize> {
        let want = len.max(1).checked_add(DMA_ALIGN - 1)? & !(DMA_ALIGN - 1);
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let i = free.iter().position(|&(_, l)| l >= want)?;
        let (off, l) = free[i];
        if l == want {
            free.remove(i);
        } else {
            free[i] = (off + want, l - want);
        }
        Some(off)
    }

    pub(crate) fn free(&self, off: usize, len: usize) {
        let len = (len.max(1) + DMA_ALIGN - 1) & !(DMA_ALIGN - 1);
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let i = free.partition_point(|&(o, _)| o < off);
        free.insert(i, (off, len));
        // Coalesce with the right neighbour, then the left one (never across a break).
        if i + 1 < free.len() && self.joins(free[i].0 + free[i].1, free[i + 1].0) {
            free[i].1 += free[i + 1].1;
            free.remove(i + 1);
        }
        if i > 0 && self.joins(free[i - 1].0 + free[i - 1].1, free[i].0) {
            free[i - 1].1 += free[i].1;
            free.remove(i);
        }
    }

    #[cfg(test)]
    pub(crate) fn free_bytes(&self) -> usize {
        self.free.lock().unwrap().iter().map(|b| b.1).sum()
    }
}

/// The shared region plus its buffer arena.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) mem: Arc<SharedMemory>,
    pub(crate) arena: Arena,
}

/// A buffer in the shared region: what the device reads from and writes to, without copies.
///
/// A `DmaBuf` has a fixed capacity and an adjustable length (initially the capacity); requests
/// use [`len`](Self::len) bytes. While a request that owns the buffer is in flight the caller
/// cannot reach it (the queue holds it), which is what makes [`as_slice`](Self::as_slice)
/// sound against a well-behaved device.
///
/// 24 bytes (capacity and length as `u32`: a descriptor's length is a `u32`, so no request could
/// use a longer buffer), so an [`OpBufs`](crate::OpBufs) of five is moved with a few vector
/// stores rather than a `memcpy` call, whose wide stores the next field load cannot forward from.
#[derive(Debug)]
pub struct DmaBuf {
    shared: Arc<Shared>,
    off: usize,
    cap: u32,
    len: u32,
}

impl DmaBuf {
    pub(crate) fn alloc(shared: &Arc<Shared>, len: usize) -> Result<Self> {
        let cap = u32::try_from(len).map_err(|_| Error::OutOfMemory(len))?;
        let off = shared.arena.alloc(len).ok_or(Error::OutOfMemory(len))?;
        // SAFETY: the block was free, so no other `DmaBuf` aliases it; zeroing keeps stale
        // plaintext of a previous owner from leaking into this one.
        unsafe { std::ptr::write_bytes(shared.mem.as_ptr().add(off), 0, len) };
        Ok(Self {
            shared: shared.clone(),
            off,
            cap,
            len: cap,
        })
    }

    /// Guest address of the first byte (what descriptors carry).
    #[inline]
    pub fn gpa(&self) -> u64 {
        self.shared.mem.gpa(self.off)
    }

    /// Bytes a request will use.
    #[inline]
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether [`len`](Self::len) is 0.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Allocated size.
    pub fn capacity(&self) -> usize {
        self.cap as usize
    }

    /// Sets the length a request will use; fails beyond the capacity.
    pub fn set_len(&mut self, len: usize) -> Result<()> {
        if len > self.cap as usize {
            return Err(Error::InvalidArgument("DmaBuf length above capacity"));
        }
        // At most `cap`, itself a `u32`.
        self.len = len as u32;
        Ok(())
    }

    /// Copies `data` in and sets the length to `data.len()`.
    pub fn fill(&mut self, data: &[u8]) -> Result<()> {
        self.set_len(data.len())?;
        self.as_mut_slice().copy_from_slice(data);
        Ok(())
    }

    /// The first [`len`](Self::len) bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `off..off + cap` is inside the mapping (the arena hands out in-range blocks)
        // and owned by this buffer alone; the device only writes it while a request owns the
        // buffer, and then no reference to `self` is reachable.
        unsafe {
            std::slice::from_raw_parts(self.shared.mem.as_ptr().add(self.off), self.len as usize)
        }
    }

    /// The first [`len`](Self::len) bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` makes this the only reference.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.shared.mem.as_ptr().add(self.off),
                self.len as usize,
            )
        }
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

// A `DmaBuf` and its `Option` in 24 bytes (see the type's documentation).
const _: () = assert!(std::mem::size_of::<Option<DmaBuf>>() == 24);

impl Drop for DmaBuf {
    fn drop(&mut self) {
        self.shared.arena.free(self.off, self.cap as usize);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arena_allocates_aligned_and_coalesces() {
        let a = Arena::new(4096, 4096, &[]);
        let x = a.alloc(10).unwrap();
        let y = a.alloc(100).unwrap();
        let z = a.alloc(64).unwrap();
        assert_eq!((x, y, z), (4096, 4096 + 64, 4096 + 64 + 128));
        assert!(a.alloc(8192).is_none());
        a.free(y, 100);
        a.free(x, 10);
        a.free(z, 64);
        assert_eq!(a.free_bytes(), 4096);
        assert_eq!(a.alloc(4096), Some(4096));
    }

    #[test]
    fn arena_blocks_never_span_a_break() {
        let a = Arena::new(0, 3000, &[1024, 2048, 9999]);
        // 1000 bytes fit before the first break; 1100 do not fit anywhere.
        assert_eq!(a.alloc(1000), Some(0));
        assert_eq!(a.alloc(1100), None);
        assert_eq!(a.alloc(1024), Some(1024));
        a.free(0, 1000);
        a.free(1024, 1024);
        // Freed blocks do not coalesce across the breaks.
        assert_eq!(a.alloc(2048), None);
        assert_eq!(a.alloc(1024), Some(0));
        assert_eq!(a.alloc(1024), Some(1024));
        assert_eq!(a.alloc(1024), None);
        assert_eq!(a.alloc(896), Some(2048));
    }

    #[test]
    fn placement_keeps_pieces_inside_a_segment() {
        let seg = Some(DMA_SEGMENT);
        assert_eq!(place(0, 4096, 4096, seg), 0);
        assert_eq!(
            place(DMA_SEGMENT - 4096, 4096, 4096, seg),
            DMA_SEGMENT - 4096
        );
        assert_eq!(place(DMA_SEGMENT - 4096, 8192, 4096, seg), DMA_SEGMENT);
        assert_eq!(place(100, 64, 4096, None), 4096);
        // Longer than a segment: only aligned.
        assert_eq!(place(8192, 3 * DMA_SEGMENT, 4096, seg), 8192);
    }

    /// Free 2 MiB hugepages (0 when the kernel has none).
    fn free_hugepages() -> usize {
        crate::transport::pci::sysfs::hugepages().map_or(0, |h| h.1)
    }

    fn seals(m: &SharedMemory) -> libc::c_int {
        // SAFETY: fcntl on the region's own fd.
        unsafe { libc::fcntl(m.fd(), libc::F_GET_SEALS) }
    }

    #[test]
    fn small_pages_round_to_4k_and_are_sealed() {
        let m = SharedMemory::with_pages(5000, 0x4000, Hugepages::Off).unwrap();
        assert_eq!((m.len(), m.page_size()), (8192, 4096));
        assert_eq!(
            seals(&m) & (libc::F_SEAL_SHRINK | libc::F_SEAL_GROW),
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW
        );
        assert_eq!(SharedMemory::new(1, 0).unwrap().len(), 4096);
        assert!(SharedMemory::with_pages(0, 0, Hugepages::Auto).is_err());
        assert!(SharedMemory::with_pages(usize::MAX - 10, 0, Hugepages::Off).is_err());
    }

    #[test]
    fn hugepages_round_to_2m_are_sealed_and_zeroed() {
        if free_hugepages() < 4 {
            eprintln!("SKIPPED: fewer than 4 free 2 MiB hugepages");
            return;
        }
        // Other tests may take the pages between the check and the allocation: `On` may then
        // fail, but only with the error that says so.
        let m = match SharedMemory::with_pages(HUGEPAGE + 1, 0x1_0000_0000, Hugepages::On) {
            Ok(m) => m,
            Err(Error::NoHugepages { need: 2, .. }) => return,
            Err(e) => panic!("{e}"),
        };
        assert_eq!((m.len(), m.page_size()), (2 * HUGEPAGE, HUGEPAGE));
        assert_eq!(m.as_ptr() as usize % HUGEPAGE, 0);
        assert_eq!(m.gpa(HUGEPAGE + 5), 0x1_0000_0000 + HUGEPAGE as u64 + 5);
        assert!(!m.is_segmented());
        // hugetlbfs memfds take the seals: the backend may rely on the size being final.
        assert_eq!(
            seals(&m) & (libc::F_SEAL_SHRINK | libc::F_SEAL_GROW),
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW
        );
        let f = &m.file;
        assert!(f.set_len(HUGEPAGE as u64).is_err());
        assert!(f.set_len(4 * HUGEPAGE as u64).is_err());
        // SAFETY: reading and writing inside the mapping, which nothing else uses.
        unsafe {
            let all = std::slice::from_raw_parts_mut(m.as_ptr(), m.len());
            assert!(all.iter().all(|&b| b == 0));
            all[m.len() - 1] = 7;
        }
        // The backend's view: the same fd mapped again (with the size and offset the
        // frontend sends: 0 and the region's size, both 2 MiB multiples) sees the same bytes.
        // SAFETY: a fresh shared mapping of the region's fd, unmapped below.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                m.len(),
                libc::PROT_READ,
                libc::MAP_SHARED | libc::MAP_NORESERVE,
                m.fd(),
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            assert_eq!(*p.cast::<u8>().add(m.len() - 1), 7);
            libc::munmap(p, m.len());
        }
    }

    #[test]
    fn too_few_hugepages_fall_back_or_fail_clearly() {
        // Far more pages than the system has (tests running beside this one take and free
        // some): `Auto` gives 4 KiB pages (the memfd is sparse, nothing of it is touched),
        // `On` the error saying how many to reserve.
        let total = crate::transport::pci::sysfs::hugepages().map_or(0, |h| h.0);
        let size = (total + 1024) * HUGEPAGE;
        let m = SharedMemory::with_pages(size, 0, Hugepages::Auto).unwrap();
        assert_eq!((m.len(), m.page_size()), (size, 4096));
        match SharedMemory::with_pages(size, 0, Hugepages::On) {
            Err(e @ Error::NoHugepages { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("/proc/sys/vm/nr_hugepages"), "{msg}");
            }
            Err(e) => {
                // A kernel without hugetlbfs says so instead.
                assert!(e.to_string().contains("hugetlbfs"), "{e}");
            }
            Ok(_) => panic!("more hugepages than free were granted"),
        }
    }

    #[test]
    fn dma_buf_round_trip() {
        let shared = Arc::new(Shared {
            mem: Arc::new(SharedMemory::new(8192, 0x1_0000_0000).unwrap()),
            arena: Arena::new(4096, 4096, &[]),
        });
        let mut b = DmaBuf::alloc(&shared, 100).unwrap();
        assert_eq!(b.gpa(), 0x1_0000_1000);
        b.fill(b"hello").unwrap();
        assert_eq!(b.as_slice(), b"hello");
        assert!(b.set_len(101).is_err());
        drop(b);
        assert_eq!(shared.arena.free_bytes(), 4096);
    }
}
