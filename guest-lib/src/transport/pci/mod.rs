//! Userspace virtio-pci (virtio 1.x "modern" transport) for a vNF inside a VM: the library
//! drives the VM's `virtio-crypto-pci` / `virtio-net-pci` function itself, poll mode first,
//! with no kernel driver in the path.
//!
//! The function must be bound to no driver or to `uio_pci_generic` (which also gives us its
//! interrupt, `/dev/uioN`); [`bind_uio`] does that (`dpacc pci bind`). Its capabilities are
//! found by walking the PCI capability list ([`caps`]), the BARs are mapped from sysfs
//! (`resourceN`), bus mastering is enabled, and DMA memory is 2 MiB hugepages with
//! guest-physical addresses from `/proc/self/pagemap` (no IOMMU: the model DPDK uses with
//! `uio_pci_generic`; needs root). The device is reset when it is opened and when the transport
//! is dropped, so a vNF that crashed leaves it usable by the next one, and one process at a
//! time owns it (an advisory lock on its sysfs config file).

pub mod caps;
mod dma;
mod mmio;
mod notify;
pub mod sysfs;

use std::fmt;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use self::mmio::{common, status, Bar, Mmio};
use self::notify::{PciNotifier, UioIrq};
use super::{QueueSetup, Transport, VIRTIO_F_VERSION_1};
use super::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use crate::error::{Error, Result};
use crate::mem::{SharedMemory, DMA_SEGMENT};
use crate::virtq::Notifier;

pub use sysfs::{bind_uio, hugepages, list_virtio, unbind_uio, VirtioFunction, UIO_DRIVER};

/// A PCI function address, `DDDD:BB:DD.F` (domain, bus, device, function).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddress {
    /// PCI domain (segment).
    pub domain: u16,
    /// Bus.
    pub bus: u8,
    /// Device (0..=31).
    pub device: u8,
    /// Function (0..=7).
    pub function: u8,
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

impl FromStr for PciAddress {
    type Err = PciError;

    /// `DDDD:BB:DD.F`, or `BB:DD.F` in domain 0.
    fn from_str(s: &str) -> Result<Self, PciError> {
        let bad = || PciError::BadAddress(s.to_string());
        let hex = |v: &str, max_len: usize| -> Result<u32, PciError> {
            if v.is_empty() || v.len() > max_len || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            u32::from_str_radix(v, 16).map_err(|_| bad())
        };
        let parts: Vec<&str> = s.split(':').collect();
        let (domain, bus, rest) = match parts.as_slice() {
            [d, b, r] => (hex(d, 4)?, hex(b, 2)?, *r),
            [b, r] => (0, hex(b, 2)?, *r),
            _ => return Err(bad()),
        };
        let (dev, func) = rest.split_once('.').ok_or_else(bad)?;
        let (device, function) = (hex(dev, 2)?, hex(func, 1)?);
        if device > 31 || function > 7 {
            return Err(bad());
        }
        Ok(Self {
            domain: domain as u16,
            bus: bus as u8,
            device: device as u8,
            function: function as u8,
        })
    }
}

/// Why a PCI device could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PciError {
    /// The address does not parse.
    #[error("bad PCI address '{0}': expected DDDD:BB:DD.F, e.g. 0000:00:04.0")]
    BadAddress(String),
    /// No such function in sysfs.
    #[error("no PCI device {0} (see /sys/bus/pci/devices, or `dpacc pci list`)")]
    NotFound(PciAddress),
    /// The function is not the virtio device asked for.
    #[error("{addr} is not a virtio {want} device (PCI ID {vendor:04x}:{device:04x})")]
    WrongDevice {
        /// The function.
        addr: PciAddress,
        /// What was asked for.
        want: &'static str,
        /// Its vendor ID.
        vendor: u16,
        /// Its device ID.
        device: u16,
    },
    /// A kernel driver owns the function.
    #[error(
        "{addr} is bound to the kernel driver {driver}: hand it to {UIO_DRIVER} first \
         (`dpacc pci bind {addr}`, or by hand: modprobe uio_pci_generic; \
         echo uio_pci_generic > /sys/bus/pci/devices/{addr}/driver_override; \
         echo {addr} > /sys/bus/pci/drivers/{driver}/unbind; \
         echo {addr} > /sys/bus/pci/drivers_probe)"
    )]
    BoundToDriver {
        /// The function.
        addr: PciAddress,
        /// The driver's name.
        driver: String,
    },
    /// Another process holds the function.
    #[error("{0} is in use by another process")]
    InUse(PciAddress),
    /// `uio_pci_generic` is not loaded.
    #[error("the uio_pci_generic driver is not loaded: modprobe uio_pci_generic")]
    NoUioDriver,
    /// Binding did not take.
    #[error("{addr} did not bind to uio_pci_generic (driver now: {driver})")]
    BindFailed {
        /// The function.
        addr: PciAddress,
        /// Its driver afterwards.
        driver: String,
    },
    /// The function's virtio capabilities are missing or inconsistent.
    #[error("virtio PCI capabilities: {0}")]
    Capabilities(&'static str),
    /// The device refused or broke the initialisation sequence.
    #[error("{addr}: {what}")]
    Device {
        /// The function.
        addr: PciAddress,
        /// What went wrong.
        what: &'static str,
    },
    /// Too few free hugepages for the DMA memory.
    #[error(
        "not enough free 2 MiB hugepages for the DMA memory: {need} needed, {free} free of \
         {total}; reserve more (echo {} > /proc/sys/vm/nr_hugepages, or boot with hugepages=N)",
        total + need.saturating_sub(*free)
    )]
    NoHugepages {
        /// Pages needed.
        need: usize,
        /// Pages reserved in the system.
        total: usize,
        /// Pages free.
        free: usize,
    },
    /// The kernel hides physical addresses from this process.
    #[error("cannot read physical addresses from /proc/self/pagemap: run as root (CAP_SYS_ADMIN)")]
    NoPhysAddr,
    /// A sysfs or device file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A system call failed.
    #[error("{0}: {1}")]
    Os(&'static str, #[source] std::io::Error),
}

/// The virtio-pci transport: one function of the VM, owned by this process.
pub struct VirtioPci {
    addr: PciAddress,
    common: Mmio,
    notify: Mmio,
    notify_mult: u32,
    device_cfg: Option<Mmio>,
    irq: Option<Arc<UioIrq>>,
    features: u64,
    num_queues: u16,
    mem: Option<Arc<SharedMemory>>,
    /// The config space file, locked (one owner at a time).
    _config: File,
}

impl fmt::Debug for VirtioPci {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VirtioPci")
            .field("addr", &self.addr)
            .field("features", &format_args!("{:#x}", self.features))
            .field("num_queues", &self.num_queues)
            .field("interrupts", &self.irq.is_some())
            .finish()
    }
}

fn device_name(id: u16) -> &'static str {
    match id {
        caps::VIRTIO_ID_NET => "net",
        caps::VIRTIO_ID_CRYPTO => "crypto",
        _ => "device",
    }
}

impl VirtioPci {
    /// Opens virtio function `addr`, which must be a device of type `virtio_id`
    /// (`caps::VIRTIO_ID_*`): checks its binding, locks it, enables bus mastering, maps its
    /// structures, resets it and negotiates VERSION_1 plus `device_features`, EVENT_IDX and
    /// INDIRECT_DESC (when asked for and offered).
    pub fn open(
        addr: PciAddress,
        virtio_id: u16,
        device_features: u64,
        want_event_idx: bool,
        want_indirect: bool,
    ) -> Result<Self> {
        let dir = sysfs::existing_device_dir(&addr)?;
        let driver = sysfs::driver(&addr);
        let (config, cfg_path) = sysfs::open_config(&addr)?;
        let cfg = sysfs::read_config(&config, &cfg_path)?;
        if caps::virtio_device_id(&cfg) != Some(virtio_id) {
            let (vendor, device, _) = caps::ids(&cfg).unwrap_or_default();
            return Err(PciError::WrongDevice {
                addr,
                want: device_name(virtio_id),
                vendor,
                device,
            }
            .into());
        }
        match driver {
            Some(d) if d != sysfs::UIO_DRIVER => {
                return Err(PciError::BoundToDriver { addr, driver: d }.into())
            }
            _ => {}
        }
        // SAFETY: flock on a descriptor we own; no memory is involved.
        if unsafe { libc::flock(config.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(PciError::InUse(addr).into());
        }
        let vc = caps::parse(&cfg)?;
        sysfs::set_command_bits(
            &config,
            &cfg_path,
            caps::PCI_COMMAND_MEMORY | caps::PCI_COMMAND_MASTER,
        )?;
        let mut bars: [Option<Arc<Bar>>; 6] = Default::default();
        let mut map = |r: &caps::Region, min: usize| -> Result<Mmio, PciError> {
            let slot = &mut bars[usize::from(r.bar)];
            let bar = match slot {
                Some(b) => b.clone(),
                None => slot.insert(Arc::new(Bar::map(&dir, r.bar)?)).clone(),
            };
            Mmio::new(bar, r, min)
        };
        let common = map(&vc.common, common::LEN)?;
        let notify = map(&vc.notify, 2)?;
        let isr = map(&vc.isr, 1)?;
        let device_cfg = vc.device.as_ref().map(|r| map(r, 0)).transpose()?;
        let irq = match (sysfs::driver(&addr), sysfs::uio_node(&addr)) {
            (Some(d), Some(node)) if d == sysfs::UIO_DRIVER => {
                let cfg_file = config
                    .try_clone()
                    .map_err(|e| PciError::Os("dup of the config space file", e))?;
                Some(Arc::new(UioIrq::open(&node, isr, cfg_file)?))
            }
            _ => None,
        };
        let mut me = Self {
            addr,
            common,
            notify,
            notify_mult: vc.notify_off_multiplier,
            device_cfg,
            irq,
            features: 0,
            num_queues: 0,
            mem: None,
            _config: config,
        };
        me.reset()?;
        me.set_status(status::ACKNOWLEDGE | status::DRIVER);
        let offered = me.device_features();
        if offered & VIRTIO_F_VERSION_1 == 0 {
            return Err(Error::Unsupported("VIRTIO_F_VERSION_1 (a modern device)"));
        }
        let mut want = VIRTIO_F_VERSION_1 | device_features;
        if want_event_idx {
            want |= VIRTIO_RING_F_EVENT_IDX;
        }
        if want_indirect {
            want |= VIRTIO_RING_F_INDIRECT_DESC;
        }
        me.features = offered & want;
        me.write_driver_features(me.features);
        me.set_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK);
        if me.status() & status::FEATURES_OK == 0 {
            return Err(me.failed("the device refused the negotiated features"));
        }
        me.common.w16(common::MSIX_CONFIG, common::NO_VECTOR);
        me.num_queues = me.common.r16(common::NUM_QUEUES);
        Ok(me)
    }

    /// The function's address.
    pub fn address(&self) -> PciAddress {
        self.addr
    }

    /// Whether used-buffer interrupts reach this process (bound to `uio_pci_generic`);
    /// otherwise waiting for completions polls.
    pub fn has_interrupts(&self) -> bool {
        self.irq.is_some()
    }

    fn status(&self) -> u8 {
        self.common.r8(common::DEVICE_STATUS)
    }

    fn set_status(&self, s: u8) {
        self.common.w8(common::DEVICE_STATUS, s);
    }

    /// Marks the device FAILED and returns the error to report.
    fn failed(&self, what: &'static str) -> Error {
        self.set_status(self.status() | status::FAILED);
        PciError::Device {
            addr: self.addr,
            what,
        }
        .into()
    }

    /// Resets the device and waits (at most a second) until it reads back 0: from then on it
    /// touches no ring and no buffer of ours.
    fn reset(&self) -> Result<()> {
        self.set_status(0);
        let t = Instant::now();
        while self.status() != 0 {
            if t.elapsed() > Duration::from_secs(1) {
                return Err(PciError::Device {
                    addr: self.addr,
                    what: "the device did not complete its reset",
                }
                .into());
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        Ok(())
    }

    fn device_features(&self) -> u64 {
        self.common.w32(common::DEVICE_FEATURE_SELECT, 0);
        let lo = self.common.r32(common::DEVICE_FEATURE);
        self.common.w32(common::DEVICE_FEATURE_SELECT, 1);
        let hi = self.common.r32(common::DEVICE_FEATURE);
        (u64::from(hi) << 32) | u64::from(lo)
    }

    fn write_driver_features(&self, f: u64) {
        self.common.w32(common::DRIVER_FEATURE_SELECT, 0);
        self.common.w32(common::DRIVER_FEATURE, f as u32);
        self.common.w32(common::DRIVER_FEATURE_SELECT, 1);
        self.common.w32(common::DRIVER_FEATURE, (f >> 32) as u32);
    }

    fn write64(&self, at: usize, v: u64) {
        // Two 32-bit halves, low first: what every device model accepts.
        self.common.w32(at, v as u32);
        self.common.w32(at + 4, (v >> 32) as u32);
    }
}

impl Drop for VirtioPci {
    fn drop(&mut self) {
        // Stop the device before the DMA memory (dropped after this) can be reused.
        let _ = self.reset();
    }
}

impl Transport for VirtioPci {
    fn features(&self) -> u64 {
        self.features
    }

    fn num_queues(&self) -> u16 {
        self.num_queues
    }

    fn read_config(&mut self, buf: &mut [u8]) -> Result<()> {
        let dev = self
            .device_cfg
            .as_ref()
            .ok_or(Error::Unsupported("a device configuration structure"))?;
        if buf.len() > dev.len() {
            return Err(Error::Protocol(
                "device configuration shorter than its layout",
            ));
        }
        // Byte reads, retried until the configuration generation is stable.
        for _ in 0..100 {
            let gen = self.common.r8(common::CONFIG_GENERATION);
            for (i, b) in buf.iter_mut().enumerate() {
                *b = dev.r8(i);
            }
            if self.common.r8(common::CONFIG_GENERATION) == gen {
                return Ok(());
            }
        }
        Err(Error::Protocol("device configuration keeps changing"))
    }

    fn setup_memory(&mut self, size: usize) -> Result<Arc<SharedMemory>> {
        if self.mem.is_some() {
            return Err(Error::InvalidArgument("memory already set up"));
        }
        let mem = Arc::new(dma::hugepage_memory(size)?);
        self.mem = Some(mem.clone());
        Ok(mem)
    }

    fn setup_queue(&mut self, q: &QueueSetup) -> Result<Box<dyn Notifier>> {
        if q.index >= self.num_queues {
            return Err(Error::InvalidArgument("queue index"));
        }
        let c = &self.common;
        c.w16(common::QUEUE_SELECT, q.index);
        let max = c.r16(common::QUEUE_SIZE);
        if max == 0 {
            return Err(Error::Unsupported("a queue the device does not have"));
        }
        if q.size > max {
            return Err(Error::InvalidArgument(
                "queue size above the device's maximum",
            ));
        }
        c.w16(common::QUEUE_SIZE, q.size);
        c.w16(common::QUEUE_MSIX_VECTOR, common::NO_VECTOR);
        // The device sees guest-physical addresses.
        self.write64(common::QUEUE_DESC, q.desc.0);
        self.write64(common::QUEUE_DRIVER, q.avail.0);
        self.write64(common::QUEUE_DEVICE, q.used.0);
        let off = usize::from(c.r16(common::QUEUE_NOTIFY_OFF));
        let at = off
            .checked_mul(self.notify_mult as usize)
            .ok_or(PciError::Capabilities(
                "queue notification offset overflows",
            ))?;
        let n = PciNotifier::new(&self.notify, at, q.index, self.irq.clone())?;
        c.w16(common::QUEUE_ENABLE, 1);
        Ok(Box::new(n))
    }

    fn activate(&mut self) -> Result<()> {
        let s = self.status();
        self.set_status(s | status::DRIVER_OK);
        if self.status() & (status::NEEDS_RESET | status::FAILED) != 0 {
            return Err(self.failed("the device failed when the driver was ready"));
        }
        Ok(())
    }

    fn dma_segment(&self) -> Option<usize> {
        Some(DMA_SEGMENT)
    }

    fn max_queue_size(&mut self, index: u16) -> u16 {
        self.common.w16(common::QUEUE_SELECT, index);
        self.common.r16(common::QUEUE_SIZE)
    }

    fn vmm_mediated(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_print() {
        let a: PciAddress = "0000:00:04.0".parse().unwrap();
        assert_eq!((a.domain, a.bus, a.device, a.function), (0, 0, 4, 0));
        assert_eq!(a.to_string(), "0000:00:04.0");
        assert_eq!(
            "0a:1f.7".parse::<PciAddress>().unwrap().to_string(),
            "0000:0a:1f.7"
        );
        for bad in [
            "",
            "00:04",
            "0000:00:20.0",
            "0000:00:04.8",
            "../../x",
            "0000:00:04.0/..",
            "00000:00:04.0",
            "0000:00:04.0:1",
        ] {
            assert!(bad.parse::<PciAddress>().is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_say_what_to_do() {
        let addr: PciAddress = "0000:00:04.0".parse().unwrap();
        let e = PciError::BoundToDriver {
            addr,
            driver: "virtio-pci".into(),
        }
        .to_string();
        assert!(
            e.contains("virtio-pci") && e.contains("dpacc pci bind 0000:00:04.0"),
            "{e}"
        );
        assert!(e.contains("/sys/bus/pci/drivers/virtio-pci/unbind"), "{e}");
        let e = PciError::NoHugepages {
            need: 5,
            total: 2,
            free: 1,
        }
        .to_string();
        assert!(
            e.contains("5 needed, 1 free of 2") && e.contains("echo 6 >"),
            "{e}"
        );
    }
}
