//! The frontend's memory table: mapping each region's fd and translating frontend virtual
//! addresses (as used by SET_VRING_ADDR) to guest-physical addresses.

use std::fs::File;
use std::os::fd::OwnedFd;

use vhost::vhost_user::message::{VhostUserMemory, VhostUserMemoryRegion};
use vm_memory::{ByteValued, FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};

/// Why a memory table was rejected.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MemoryError {
    /// The payload does not hold the declared regions, or the count is 0 / too large.
    #[error("malformed memory table")]
    Malformed,
    /// The number of fds differs from the number of regions.
    #[error("{regions} regions but {fds} fds")]
    FdCount {
        /// Regions declared.
        regions: usize,
        /// Fds attached.
        fds: usize,
    },
    /// A region has zero size or its addresses overflow.
    #[error("invalid region")]
    InvalidRegion,
    /// mmap failed.
    #[error("mmap: {0}")]
    Mmap(#[from] vm_memory::mmap::MmapRegionError),
    /// Regions overlap.
    #[error("regions overlap: {0}")]
    Overlap(#[from] vm_memory::GuestRegionCollectionError),
}

/// One region's frontend-virtual to guest-physical mapping.
#[derive(Clone, Copy, Debug)]
struct VaRange {
    user_addr: u64,
    size: u64,
    gpa: u64,
}

/// Translates frontend virtual addresses to guest-physical addresses.
#[derive(Clone, Debug, Default)]
pub(crate) struct AddrMap {
    ranges: Vec<VaRange>,
}

impl AddrMap {
    /// The guest-physical address of frontend virtual address `va`, if it lies in a region.
    pub(crate) fn va_to_gpa(&self, va: u64) -> Option<u64> {
        self.ranges
            .iter()
            .find(|r| va >= r.user_addr && va - r.user_addr < r.size)
            .map(|r| r.gpa + (va - r.user_addr))
    }
}

/// Parses a SET_MEM_TABLE payload and maps every region (MAP_SHARED at `mmap_offset`).
pub(crate) fn map_table(
    payload: &[u8],
    fds: Vec<OwnedFd>,
) -> Result<(GuestMemoryMmap, AddrMap), MemoryError> {
    let hdr_len = std::mem::size_of::<VhostUserMemory>();
    let reg_len = std::mem::size_of::<VhostUserMemoryRegion>();
    let hdr = payload
        .get(..hdr_len)
        .and_then(VhostUserMemory::from_slice)
        .copied()
        .ok_or(MemoryError::Malformed)?;
    let n = hdr.num_regions as usize;
    if n == 0 || n > super::channel::MAX_FDS || payload.len() != hdr_len + n * reg_len {
        return Err(MemoryError::Malformed);
    }
    if fds.len() != n {
        return Err(MemoryError::FdCount {
            regions: n,
            fds: fds.len(),
        });
    }
    let mut regions = Vec::with_capacity(n);
    let mut map = AddrMap::default();
    for (i, fd) in fds.into_iter().enumerate() {
        let off = hdr_len + i * reg_len;
        let r = payload
            .get(off..off + reg_len)
            .and_then(VhostUserMemoryRegion::from_slice)
            .copied()
            .ok_or(MemoryError::Malformed)?;
        let (gpa, size, ua, mo) = (r.guest_phys_addr, r.memory_size, r.user_addr, r.mmap_offset);
        if size == 0
            || gpa.checked_add(size).is_none()
            || ua.checked_add(size).is_none()
            || mo.checked_add(size).is_none()
            || usize::try_from(size).is_err()
        {
            return Err(MemoryError::InvalidRegion);
        }
        let mapping = vm_memory::mmap::MmapRegionBuilder::new(size as usize)
            .with_file_offset(FileOffset::new(File::from(fd), mo))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_SHARED | libc::MAP_NORESERVE)
            .build()?;
        let region =
            GuestRegionMmap::new(mapping, GuestAddress(gpa)).ok_or(MemoryError::InvalidRegion)?;
        regions.push(region);
        map.ranges.push(VaRange {
            user_addr: ua,
            size,
            gpa,
        });
    }
    regions.sort_by_key(vm_memory::GuestMemoryRegion::start_addr);
    let mem = GuestMemoryMmap::from_regions(regions)?;
    Ok((mem, map))
}
