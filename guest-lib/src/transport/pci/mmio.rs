//! A BAR mapped from sysfs (`resourceN`) and bounds-checked volatile register access to the
//! structures inside it.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use super::caps::Region;
use super::PciError;

/// One BAR mapped into this process (uncached: sysfs `resourceN` mappings are).
#[derive(Debug)]
pub(crate) struct Bar {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is process-wide and lives as long as `self`; registers are accessed with
// volatile reads and writes only, whose ordering the device model defines.
unsafe impl Send for Bar {}
// SAFETY: as above.
unsafe impl Sync for Bar {}

impl Bar {
    /// Maps `resourceN` of the device at `dir`.
    pub(crate) fn map(dir: &Path, index: u8) -> Result<Self, PciError> {
        let path = dir.join(format!("resource{index}"));
        let io = |source| PciError::Io {
            path: path.clone(),
            source,
        };
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_SYNC)
            .open(&path)
            .map_err(io)?;
        let len = f.metadata().map_err(io)?.len() as usize;
        if len == 0 {
            return Err(PciError::Capabilities(
                "a virtio structure is in an empty BAR",
            ));
        }
        // SAFETY: mapping a sysfs resource file of `len` bytes shared; the result is checked.
        // The kernel refuses mappings of I/O-port BARs, which is reported as an error.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io(std::io::Error::last_os_error()));
        }
        Ok(Self {
            ptr: ptr.cast(),
            len,
        })
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`; every user holds an `Arc<Bar>`, so none is left.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// A structure (common config, ISR, device config, notify area) inside a mapped BAR.
#[derive(Clone, Debug)]
pub(crate) struct Mmio {
    bar: Arc<Bar>,
    off: usize,
    len: usize,
}

impl Mmio {
    /// The structure `r` says is in `bar`, checked to lie inside it and to be at least
    /// `min_len` bytes long.
    pub(crate) fn new(bar: Arc<Bar>, r: &Region, min_len: usize) -> Result<Self, PciError> {
        let (off, len) = (r.offset as usize, r.length as usize);
        if len < min_len || off.checked_add(len).is_none_or(|end| end > bar.len) {
            return Err(PciError::Capabilities(
                "a virtio structure is too short or outside its BAR",
            ));
        }
        Ok(Self { bar, off, len })
    }

    /// Length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Address of register `at` of width `w`, or `None` outside the structure or misaligned.
    fn reg(&self, at: usize, w: usize) -> Option<*mut u8> {
        if at % w != 0 || at.checked_add(w)? > self.len {
            return None;
        }
        // SAFETY: `off + at + w <= off + len <= bar.len` (checked here and in `new`).
        Some(unsafe { self.bar.ptr.add(self.off + at) })
    }

    /// The bar and the byte offset of register `at` (for notifiers that keep the address).
    pub(crate) fn reg_ptr(&self, at: usize, w: usize) -> Option<(Arc<Bar>, *mut u8)> {
        Some((self.bar.clone(), self.reg(at, w)?))
    }
}

macro_rules! accessors {
    ($($read:ident, $write:ident, $t:ty;)*) => {$(
        impl Mmio {
            /// Volatile little-endian read; all ones outside the structure (like a missing
            /// device).
            pub(crate) fn $read(&self, at: usize) -> $t {
                match self.reg(at, std::mem::size_of::<$t>()) {
                    // SAFETY: in bounds and naturally aligned (checked by `reg`); MMIO of a
                    // live mapping.
                    Some(p) => <$t>::from_le(unsafe { std::ptr::read_volatile(p as *const $t) }),
                    None => <$t>::MAX,
                }
            }

            /// Volatile little-endian write; ignored outside the structure.
            pub(crate) fn $write(&self, at: usize, v: $t) {
                if let Some(p) = self.reg(at, std::mem::size_of::<$t>()) {
                    // SAFETY: in bounds and naturally aligned (checked by `reg`); MMIO of a
                    // live mapping.
                    unsafe { std::ptr::write_volatile(p as *mut $t, v.to_le()) }
                }
            }
        }
    )*};
}

accessors! {
    r8, w8, u8;
    r16, w16, u16;
    r32, w32, u32;
}

/// Offsets in `struct virtio_pci_common_cfg` (virtio 1.2 §4.1.4.3).
pub(crate) mod common {
    pub(crate) const DEVICE_FEATURE_SELECT: usize = 0x00;
    pub(crate) const DEVICE_FEATURE: usize = 0x04;
    pub(crate) const DRIVER_FEATURE_SELECT: usize = 0x08;
    pub(crate) const DRIVER_FEATURE: usize = 0x0c;
    pub(crate) const MSIX_CONFIG: usize = 0x10;
    pub(crate) const NUM_QUEUES: usize = 0x12;
    pub(crate) const DEVICE_STATUS: usize = 0x14;
    pub(crate) const CONFIG_GENERATION: usize = 0x15;
    pub(crate) const QUEUE_SELECT: usize = 0x16;
    pub(crate) const QUEUE_SIZE: usize = 0x18;
    pub(crate) const QUEUE_MSIX_VECTOR: usize = 0x1a;
    pub(crate) const QUEUE_ENABLE: usize = 0x1c;
    pub(crate) const QUEUE_NOTIFY_OFF: usize = 0x1e;
    pub(crate) const QUEUE_DESC: usize = 0x20;
    pub(crate) const QUEUE_DRIVER: usize = 0x28;
    pub(crate) const QUEUE_DEVICE: usize = 0x30;
    /// Bytes of the structure the driver uses.
    pub(crate) const LEN: usize = 0x38;
    /// `VIRTIO_MSI_NO_VECTOR`.
    pub(crate) const NO_VECTOR: u16 = 0xffff;
}

/// Device status bits (virtio 1.2 §2.1).
pub(crate) mod status {
    pub(crate) const ACKNOWLEDGE: u8 = 1;
    pub(crate) const DRIVER: u8 = 2;
    pub(crate) const DRIVER_OK: u8 = 4;
    pub(crate) const FEATURES_OK: u8 = 8;
    pub(crate) const NEEDS_RESET: u8 = 64;
    pub(crate) const FAILED: u8 = 128;
}
