//! DMA memory without an IOMMU, the way DPDK does it with `uio_pci_generic`: 2 MiB hugepages
//! (never moved or swapped while mapped), their guest-physical addresses read from
//! `/proc/self/pagemap`, remapped in physical order so that runs of contiguous pages are
//! contiguous for both the CPU and the device.
//!
//! With a vIOMMU and VFIO, `VFIO_IOMMU_MAP_DMA` would replace the pagemap lookup: the same
//! region, with addresses the driver chooses (see [`SharedMemory::from_pages`]).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use super::sysfs::hugepages;
use super::PciError;
use crate::mem::{hugetlb_memfd, HugetlbError, SharedMemory, DMA_SEGMENT};

const PAGEMAP_PRESENT: u64 = 1 << 63;
const PAGEMAP_PFN_MASK: u64 = (1 << 55) - 1;

fn os(what: &'static str) -> PciError {
    PciError::Os(what, std::io::Error::last_os_error())
}

/// Not enough hugepages for `need`: the error saying what to reserve.
fn no_hugepages(need: usize) -> PciError {
    let (total, free) = hugepages().unwrap_or((0, 0));
    PciError::NoHugepages { need, total, free }
}

impl From<HugetlbError> for PciError {
    fn from(e: HugetlbError) -> Self {
        match e {
            HugetlbError::Short { need, total, free } => {
                PciError::NoHugepages { need, total, free }
            }
            HugetlbError::Os(what, e) => PciError::Os(what, e),
        }
    }
}

/// The physical address of the page mapped at `va` (faulted in), from `/proc/self/pagemap`.
fn phys_addr(pagemap: &File, va: usize) -> Result<u64, PciError> {
    let mut e = [0u8; 8];
    pagemap
        .read_exact_at(&mut e, (va / 4096 * 8) as u64)
        .map_err(|source| PciError::Io {
            path: "/proc/self/pagemap".into(),
            source,
        })?;
    let e = u64::from_le_bytes(e);
    if e & PAGEMAP_PRESENT == 0 {
        return Err(PciError::Capabilities(
            "a hugepage is not present after faulting it in",
        ));
    }
    let pfn = e & PAGEMAP_PFN_MASK;
    if pfn == 0 {
        // The kernel hides frame numbers from processes without CAP_SYS_ADMIN.
        return Err(PciError::NoPhysAddr);
    }
    Ok(pfn * 4096)
}

/// `size` bytes (rounded up to 2 MiB) of hugepage memory with each page's physical address.
pub(crate) fn hugepage_memory(size: usize) -> Result<SharedMemory, PciError> {
    let n = size.div_ceil(DMA_SEGMENT).max(1);
    let len = n * DMA_SEGMENT;
    // Every page taken by the memfd's fallocate (too few free is `NoHugepages`, not a SIGBUS).
    let file = hugetlb_memfd(c"dpacc-dma", len)?;
    // First mapping: fault every page in, so that each has a frame to look up below.
    // SAFETY: mapping a fresh memfd of `len` bytes; checked below.
    let first = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_POPULATE,
            file.as_raw_fd(),
            0,
        )
    };
    if first == libc::MAP_FAILED {
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::ENOMEM) => no_hugepages(n),
            _ => PciError::Os("mmap of hugepages", e),
        });
    }
    let first = first.cast::<u8>();
    let result = (|| {
        let pagemap = File::open("/proc/self/pagemap").map_err(|source| PciError::Io {
            path: "/proc/self/pagemap".into(),
            source,
        })?;
        let mut pages = Vec::with_capacity(n);
        for i in 0..n {
            // SAFETY: page `i` is inside the `len`-byte mapping; writing one byte faults it
            // in (MAP_POPULATE should have) so that it has a frame.
            let va = unsafe {
                let p = first.add(i * DMA_SEGMENT);
                std::ptr::write_volatile(p, 0);
                p as usize
            };
            pages.push((phys_addr(&pagemap, va)?, i));
        }
        pages.sort_unstable();
        remap_sorted(&file, len, &pages)
    })();
    // SAFETY: the first mapping is not used past this point (the pages stay in the file).
    unsafe { libc::munmap(first.cast(), len) };
    let (ptr, phys) = result?;
    // SAFETY: `ptr` maps the `n` pages of `file` in the order of `phys`, which holds their
    // physical addresses; the mapping is handed over to the region.
    Ok(unsafe { SharedMemory::from_pages(file, ptr, phys.into_boxed_slice()) })
}

/// Maps the file's pages `pages[k].1` at `k * 2 MiB` of a fresh 2 MiB-aligned area; returns
/// the area and the physical address of each of its pages.
fn remap_sorted(
    file: &File,
    len: usize,
    pages: &[(u64, usize)],
) -> Result<(*mut u8, Vec<u64>), PciError> {
    // Reserve an aligned area: one segment more, trimmed afterwards.
    // SAFETY: an anonymous, inaccessible reservation; checked below.
    let res = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len + DMA_SEGMENT,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if res == libc::MAP_FAILED {
        return Err(os("mmap (address space reservation)"));
    }
    let res = res.cast::<u8>();
    let head = (res as usize).next_multiple_of(DMA_SEGMENT) - res as usize;
    // SAFETY: `head < DMA_SEGMENT`, so the aligned base and `len` bytes after it lie inside
    // the reservation.
    let base = unsafe { res.add(head) };
    // SAFETY: giving back the unaligned head and the tail of our own reservation.
    unsafe {
        if head > 0 {
            libc::munmap(res.cast(), head);
        }
        libc::munmap(base.add(len).cast(), DMA_SEGMENT - head);
    }
    for (k, &(_, i)) in pages.iter().enumerate() {
        // SAFETY: replacing page `k` of our own reservation (MAP_FIXED inside it) with file
        // page `i`; checked below.
        let p = unsafe {
            libc::mmap(
                base.add(k * DMA_SEGMENT).cast(),
                DMA_SEGMENT,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_FIXED,
                file.as_raw_fd(),
                (i * DMA_SEGMENT) as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            let e = os("mmap of a hugepage");
            // SAFETY: the whole area is ours.
            unsafe { libc::munmap(base.cast(), len) };
            return Err(e);
        }
    }
    Ok((base, pages.iter().map(|&(pa, _)| pa).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Far more pages than the system has: the error that says how many to reserve (from the
    /// memfd's up-front reservation, shared with the virtio-user region), not a SIGBUS later.
    #[test]
    fn too_few_hugepages_is_a_clear_error() {
        let total = hugepages().map_or(0, |h| h.0);
        match hugepage_memory((total + 1024) * DMA_SEGMENT) {
            Err(e @ PciError::NoHugepages { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("/proc/sys/vm/nr_hugepages"), "{msg}");
            }
            // A kernel without hugetlbfs says so instead.
            Err(e) => assert!(e.to_string().contains("hugetlbfs"), "{e}"),
            Ok(_) => panic!("more hugepages than free were granted"),
        }
    }

    /// On a host with free hugepages and root: the region's addresses are the pages' physical
    /// addresses, in ascending order, and the memory is usable.
    #[test]
    fn hugepage_memory_has_sorted_physical_addresses() {
        match hugepages() {
            Some((_, free)) if free >= 3 => {}
            _ => {
                eprintln!("SKIPPED: fewer than 3 free 2 MiB hugepages");
                return;
            }
        }
        let m = match hugepage_memory(3 * DMA_SEGMENT - 100) {
            Ok(m) => m,
            Err(PciError::NoPhysAddr | PciError::NoHugepages { .. }) => {
                eprintln!("SKIPPED: no physical addresses or hugepages here");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        assert_eq!(m.len(), 3 * DMA_SEGMENT);
        assert!(m.is_segmented());
        let pa: Vec<u64> = (0..3).map(|i| m.gpa(i * DMA_SEGMENT)).collect();
        assert!(pa.windows(2).all(|w| w[0] < w[1]), "{pa:x?}");
        assert!(pa.iter().all(|p| p % DMA_SEGMENT as u64 == 0));
        assert_eq!(m.gpa(DMA_SEGMENT + 5), pa[1] + 5);
        // Every break is where the physical run ends.
        for b in m.breaks() {
            let i = b / DMA_SEGMENT;
            assert_ne!(pa[i - 1] + DMA_SEGMENT as u64, pa[i]);
        }
        // The memory reads back what is written, across the remapped pages.
        let p = m.ptr_at(0, m.len()).unwrap();
        // SAFETY: the whole region is ours.
        unsafe {
            std::ptr::write_bytes(p, 0xa5, m.len());
            assert_eq!(*p.add(m.len() - 1), 0xa5);
        }
    }
}
