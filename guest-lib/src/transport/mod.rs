//! How the library reaches a virtio-crypto device.
//!
//! A [`Transport`] negotiates features, reads the config space, provides the shared memory the
//! device can address, and wires up queues (addresses, kick and call). The crypto layer above
//! only ever sees [`SplitQueue`](crate::virtq::SplitQueue)s and [`Notifier`]s.
//! [`virtio_user::VirtioUser`] is the vhost-user transport; a userspace virtio-pci transport (a
//! vNF in a VM, device behind VFIO) would implement the same trait.

pub mod virtio_user;

use std::sync::Arc;

use crate::error::Result;
use crate::mem::SharedMemory;
use crate::virtq::Notifier;

/// virtio feature bit: modern device (virtio 1.x).
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// virtio feature bit: indirect descriptors.
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
/// virtio feature bit: `used_event` / `avail_event` notification suppression.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

/// Where one queue's rings are, for the device.
#[derive(Clone, Copy, Debug)]
pub struct QueueSetup {
    /// Queue index (data queues first, control queue last).
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
    /// Total queues the device has (data queues plus the control queue).
    fn num_queues(&self) -> u16;
    /// Reads `buf.len()` bytes of the device config space from offset 0.
    fn read_config(&mut self, buf: &mut [u8]) -> Result<()>;
    /// Creates the shared memory the device can address (once, before any queue is set up).
    fn setup_memory(&mut self, size: usize) -> Result<Arc<SharedMemory>>;
    /// Tells the device where a queue's rings are and returns its notifier.
    fn setup_queue(&mut self, q: &QueueSetup) -> Result<Box<dyn Notifier>>;
    /// Starts the queues set up so far.
    fn activate(&mut self) -> Result<()>;
}
