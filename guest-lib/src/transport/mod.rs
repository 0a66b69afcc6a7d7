//! How the library reaches a virtio device (the crypto device or a fast-path net port).
//!
//! A [`Transport`] negotiates features, reads the config space, provides the shared memory the
//! device can address, and wires up queues (addresses, kick and call). The device drivers above
//! only ever see [`SplitQueue`]s and [`Notifier`]s, set up through the transport. Two:
//!
//! - [`virtio_user::VirtioUser`]: this process is the vhost-user frontend of the backend's
//!   socket (containers, tests);
//! - [`pci::VirtioPci`]: a vNF inside a VM drives the VM's virtio PCI function itself
//!   (`uio_pci_generic`, hugepage DMA memory).
//!
//! [`Endpoint`] names either (`vhost-user:/run/dpacc/crypto.sock`, `pci:0000:00:04.0`), so a
//! vNF's code is the same in a container and in a VM.

pub mod pci;
pub mod virtio_user;

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::mem::{Hugepages, SharedMemory};
use crate::virtq::{Notifier, RingLayout, SplitQueue};

/// virtio feature bit: modern device (virtio 1.x).
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// virtio feature bit: indirect descriptors.
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
/// virtio feature bit: `used_event` / `avail_event` notification suppression.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

/// Where one queue's rings are, for the device.
#[derive(Clone, Copy, Debug)]
pub struct QueueSetup {
    /// Queue index (crypto: data queues first, control queue last; net: RX, TX).
    pub index: u16,
    /// Number of entries.
    pub size: u16,
    /// Descriptor table: guest address and address in this process.
    pub desc: (u64, u64),
    /// Avail ring: guest address and address in this process.
    pub avail: (u64, u64),
    /// Used ring: guest address and address in this process.
    pub used: (u64, u64),
}

/// A way to reach a virtio device.
pub trait Transport: Send {
    /// virtio feature bits that were negotiated.
    fn features(&self) -> u64;
    /// Total queues the device has (crypto: data queues plus the control queue).
    fn num_queues(&self) -> u16;
    /// Reads `buf.len()` bytes of the device config space from offset 0.
    fn read_config(&mut self, buf: &mut [u8]) -> Result<()>;
    /// Which pages [`setup_memory`](Self::setup_memory) should use. Only virtio-user chooses
    /// (default [`Hugepages::Off`]); inside a VM the DMA memory is always 2 MiB hugepages, and
    /// the fake device's is 4 KiB pages.
    fn set_hugepages(&mut self, _pages: Hugepages) {}
    /// Creates the shared memory the device can address (once, before any queue is set up).
    fn setup_memory(&mut self, size: usize) -> Result<Arc<SharedMemory>>;
    /// Tells the device where a queue's rings are and returns its notifier.
    fn setup_queue(&mut self, q: &QueueSetup) -> Result<Box<dyn Notifier>>;
    /// Starts the queues set up so far.
    fn activate(&mut self) -> Result<()>;
    /// `Some(n)`: the memory from [`setup_memory`](Self::setup_memory) is contiguous for the
    /// device only within aligned `n`-byte segments (hugepages), so nothing the device
    /// accesses in one piece may straddle two (see [`crate::mem`]).
    fn dma_segment(&self) -> Option<usize> {
        None
    }
    /// Largest size of queue `index` (0: the queue does not exist).
    fn max_queue_size(&mut self, _index: u16) -> u16 {
        32768
    }
    /// Whether the device is a VMM's model in front of the backend (QEMU's virtio PCI device):
    /// its config space and control queue are then the VMM's own, and only the data queues
    /// reach the backend.
    fn vmm_mediated(&self) -> bool {
        false
    }
    /// The process id of the device's backend, when the transport can tell (virtio-user: the
    /// peer of the vhost-user socket, from `SO_PEERCRED`). For diagnostics and benchmarks (how
    /// busy the backend's workers are), never for a decision.
    fn backend_pid(&self) -> Option<u32> {
        None
    }
}

/// Where a device is: `pci:DDDD:BB:DD.F` (inside a VM) or `vhost-user:PATH` (the backend's
/// socket, from a container or the host).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A virtio PCI function of this VM.
    Pci(pci::PciAddress),
    /// A vhost-user socket.
    VhostUser(PathBuf),
}

impl FromStr for Endpoint {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        if let Some(a) = s.strip_prefix("pci:") {
            Ok(Self::Pci(a.parse()?))
        } else if let Some(p) = s.strip_prefix("vhost-user:") {
            if p.is_empty() {
                return Err(Error::InvalidEndpoint(s.to_string()));
            }
            Ok(Self::VhostUser(PathBuf::from(p)))
        } else {
            Err(Error::InvalidEndpoint(s.to_string()))
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Pci(a) => write!(f, "pci:{a}"),
            Self::VhostUser(p) => write!(f, "vhost-user:{}", p.display()),
        }
    }
}

impl Endpoint {
    /// Opens the transport to a device of virtio type `virtio_id` (`pci::caps::VIRTIO_ID_*`),
    /// asking for `device_features` and, when offered and wanted, EVENT_IDX and INDIRECT_DESC.
    pub fn open(
        &self,
        virtio_id: u16,
        device_features: u64,
        want_event_idx: bool,
        want_indirect: bool,
    ) -> Result<Box<dyn Transport>> {
        Ok(match self {
            Self::Pci(a) => Box::new(pci::VirtioPci::open(
                *a,
                virtio_id,
                device_features,
                want_event_idx,
                want_indirect,
            )?),
            Self::VhostUser(p) => Box::new(virtio_user::VirtioUser::connect_with(
                p,
                device_features,
                want_event_idx,
                want_indirect,
            )?),
        })
    }
}

/// Lays out a split queue of `size` entries at byte `off` of `mem` (as [`RingLayout`] says),
/// tells the device where it is through `t` and returns it with its notifier. EVENT_IDX is used
/// when `t` negotiated it; `interrupts` says whether the queue asks the device for used-buffer
/// notifications.
///
/// # Safety
/// The `RingLayout::new(size).total` bytes at `off` must be zeroed and used by nobody but this
/// queue and its device while the queue exists, and `mem` must outlive the queue (keep an
/// `Arc` beside it).
pub(crate) unsafe fn setup_split_queue(
    t: &mut dyn Transport,
    mem: &SharedMemory,
    off: usize,
    index: u16,
    size: u16,
    interrupts: bool,
) -> Result<(SplitQueue, Box<dyn Notifier>)> {
    if off % 4096 != 0 {
        return Err(Error::InvalidArgument("ring offset must be 4 KiB-aligned"));
    }
    let total = RingLayout::new(size).total;
    if crate::mem::place(off, total, 4096, t.dma_segment()) != off {
        return Err(Error::InvalidArgument("ring straddles two DMA segments"));
    }
    let ptr = mem
        .ptr_at(off, total)
        .ok_or(Error::InvalidArgument("memory too small"))?;
    let event_idx = t.features() & VIRTIO_RING_F_EVENT_IDX != 0;
    // SAFETY: `ptr` is 4 KiB-aligned (the mapping is page-aligned and so is `off`) and has the
    // ring's bytes inside the mapping (checked above); zeroed, private to this queue and mapped
    // long enough is what our caller promised.
    let vq = unsafe { SplitQueue::new(ptr, mem.gpa(off), size, event_idx, interrupts)? };
    let (d, a, u) = vq.ring_gpas();
    let (dp, ap, up) = vq.ring_ptrs();
    let notifier = t.setup_queue(&QueueSetup {
        index,
        size,
        desc: (d, dp as u64),
        avail: (a, ap as u64),
        used: (u, up as u64),
    })?;
    Ok((vq, notifier))
}
