//! [`NetDevice`]: the vhost-user side of one virtio-net device (a vNF's own port 0 or a
//! vhost-user uplink). It negotiates, collects the two rings, and hands them to the vNF's
//! worker through a [`RingSlot`].

use std::sync::Arc;

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use virtio_bindings::virtio_config::VIRTIO_F_IN_ORDER;
use virtio_bindings::virtio_net::{VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF};
use virtio_queue::Queue;

use super::slot::{RingPair, RingSlot};
use crate::vhost_user::{DeviceError, QueueStart, VhostUserDevice};

/// A virtio-net device whose rings a vNF worker processes.
pub(crate) struct NetDevice {
    mac: [u8; 6],
    queue_size: u16,
    slot: Arc<RingSlot>,
    pending: [Option<QueueStart>; 2],
}

impl NetDevice {
    /// A device with `mac` in its config space, feeding `slot`.
    pub(crate) fn new(mac: [u8; 6], queue_size: u16, slot: Arc<RingSlot>) -> Self {
        Self {
            mac,
            queue_size,
            slot,
            pending: [None, None],
        }
    }

    /// Gets the rings back from the worker, if it has them.
    fn reclaim(&mut self) {
        if let Some(r) = self.slot.take_back() {
            self.pending = [Some(r.rx), Some(r.tx)];
        }
    }
}

impl VhostUserDevice for NetDevice {
    fn num_queues(&self) -> usize {
        2
    }

    fn max_queue_size(&self) -> u16 {
        self.queue_size
    }

    fn features(&self) -> u64 {
        // IN_ORDER: the worker uses every ring's buffers in the order they were made available
        // (NetRings never reorders), which lets drivers take their fast in-order paths.
        (1 << VIRTIO_NET_F_MRG_RXBUF) | (1 << VIRTIO_NET_F_MAC) | (1 << VIRTIO_F_IN_ORDER)
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::empty()
    }

    fn read_config(&self, offset: usize, buf: &mut [u8]) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = offset
                .checked_add(i)
                .and_then(|o| self.mac.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    fn start_queue(&mut self, q: QueueStart) -> Result<(), DeviceError> {
        let i = q.index;
        if i > 1 {
            return Err(DeviceError::NoSuchQueue(i));
        }
        self.reclaim();
        self.pending[i] = Some(q);
        if let [Some(_), Some(_)] = &self.pending {
            let [Some(rx), Some(tx)] = std::mem::take(&mut self.pending) else {
                unreachable!("both checked");
            };
            self.slot.offer(RingPair { rx, tx });
        }
        Ok(())
    }

    fn stop_queue(&mut self, index: usize) -> Option<Queue> {
        self.reclaim();
        self.pending.get_mut(index)?.take().map(|q| q.queue)
    }

    fn reset(&mut self) {
        self.reclaim();
        self.pending = [None, None];
    }
}
