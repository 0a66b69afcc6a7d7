//! The frontend's memory table: mapping each region's fd and translating frontend virtual
//! addresses (as used by SET_VRING_ADDR) to guest-physical addresses.
//!
//! Every region must lie inside its file: the fd must be a regular file (memfd, tmpfs,
//! hugetlbfs) whose size covers `mmap_offset + memory_size`. A file that shrinks later is the
//! business of [`super::fault`]; whether it can (`F_SEAL_SHRINK` on a memfd) is recorded.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};

use vhost::vhost_user::message::{VhostUserMemory, VhostUserMemoryRegion};
use vm_memory::{ByteValued, FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use super::fault::HostRange;

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
    /// A region's fd is not a regular file (its size cannot be known).
    #[error("region {0}: the fd is not a regular file")]
    NotAFile(usize),
    /// A region reaches past the end of its file.
    #[error(
        "region {region}: offset {offset:#x} + size {size:#x} is past the end of its file \
         ({file_size:#x} bytes)"
    )]
    BeyondFile {
        /// Region index in the table.
        region: usize,
        /// `mmap_offset`.
        offset: u64,
        /// `memory_size`.
        size: u64,
        /// The file's size.
        file_size: u64,
    },
    /// fstat/fstatfs on a region's fd failed.
    #[error("region {0}: {1}")]
    Stat(usize, std::io::Error),
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

/// A mapped memory table.
pub(crate) struct MappedTable {
    /// The regions, by guest-physical address.
    pub(crate) mem: GuestMemoryMmap,
    /// Frontend virtual → guest-physical.
    pub(crate) addr_map: AddrMap,
    /// Where each region is mapped in this process, and its page size.
    pub(crate) ranges: Vec<HostRange>,
    /// Regions whose file cannot shrink (a memfd sealed with `F_SEAL_SHRINK`).
    pub(crate) sealed: usize,
}

/// What a region's fd is.
struct FileInfo {
    size: u64,
    page: usize,
    sealed: bool,
}

fn file_info(i: usize, fd: &OwnedFd) -> Result<FileInfo, MemoryError> {
    let raw = fd.as_raw_fd();
    // SAFETY: fstat/fstatfs/fcntl on a descriptor we own, into zero-initialised structs.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(raw, &mut st) != 0 {
            return Err(MemoryError::Stat(i, std::io::Error::last_os_error()));
        }
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(MemoryError::NotAFile(i));
        }
        let mut fs: libc::statfs = std::mem::zeroed();
        if libc::fstatfs(raw, &mut fs) != 0 {
            return Err(MemoryError::Stat(i, std::io::Error::last_os_error()));
        }
        let page = if fs.f_type == libc::HUGETLBFS_MAGIC {
            usize::try_from(fs.f_bsize).unwrap_or(4096)
        } else {
            4096
        };
        let seals = libc::fcntl(raw, libc::F_GET_SEALS);
        Ok(FileInfo {
            size: u64::try_from(st.st_size).unwrap_or(0),
            page: if page.is_power_of_two() { page } else { 4096 },
            sealed: seals >= 0 && seals & libc::F_SEAL_SHRINK != 0,
        })
    }
}

/// Parses a SET_MEM_TABLE payload, checks every region against its file and maps it
/// (MAP_SHARED at `mmap_offset`).
pub(crate) fn map_table(payload: &[u8], fds: Vec<OwnedFd>) -> Result<MappedTable, MemoryError> {
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
    let mut ranges = Vec::with_capacity(n);
    let mut sealed = 0;
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
        let info = file_info(i, &fd)?;
        if mo + size > info.size {
            return Err(MemoryError::BeyondFile {
                region: i,
                offset: mo,
                size,
                file_size: info.size,
            });
        }
        sealed += usize::from(info.sealed);
        let mapping = vm_memory::mmap::MmapRegionBuilder::new(size as usize)
            .with_file_offset(FileOffset::new(File::from(fd), mo))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_SHARED | libc::MAP_NORESERVE)
            .build()?;
        ranges.push(HostRange {
            start: mapping.as_ptr() as usize,
            len: mapping.size(),
            page: info.page,
        });
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
    Ok(MappedTable {
        mem,
        addr_map: map,
        ranges,
        sealed,
    })
}
