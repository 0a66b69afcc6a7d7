//! [`NetDevice`]: the vhost-user side of one virtio-net device (a vNF's own port 0 or a
//! vhost-user uplink). It negotiates, collects the rings, and hands each queue pair (rings
//! 2k = RX, 2k + 1 = TX) to the vNF's worker `k` through that pair's [`RingSlot`]. With more
//! than one pair it offers VIRTIO_NET_F_MQ; the frontend enables pairs with
//! SET_VRING_ENABLE (QEMU keeps the control queue and does this when the guest asks for a
//! number of pairs), and a pair's rings go to its worker only while both are started.

use std::sync::Arc;

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use virtio_bindings::virtio_config::VIRTIO_F_IN_ORDER;
use virtio_bindings::virtio_net::{VIRTIO_NET_F_MAC, VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF};
use virtio_queue::Queue;

use super::slot::{RingPair, RingSlot};
use crate::vhost_user::{DeviceError, QueueStart, VhostUserDevice};

/// A virtio-net device whose queue pairs the vNF's workers process.
pub(crate) struct NetDevice {
    mac: [u8; 6],
    queue_size: u16,
    /// One per queue pair.
    slots: Vec<Arc<RingSlot>>,
    /// Started rings not (yet) handed over, by ring index.
    pending: Vec<Option<QueueStart>>,
}

impl NetDevice {
    /// A device with `mac` in its config space, one queue pair per slot in `slots` (pair `k`
    /// feeds `slots[k]`).
    pub(crate) fn new(mac: [u8; 6], queue_size: u16, slots: Vec<Arc<RingSlot>>) -> Self {
        let n = 2 * slots.len();
        Self {
            mac,
            queue_size,
            slots,
            pending: (0..n).map(|_| None).collect(),
        }
    }

    /// Gets pair `k`'s rings back from its worker, if it has them.
    fn reclaim(&mut self, k: usize) {
        if let Some(r) = self.slots[k].take_back() {
            self.pending[2 * k] = Some(r.rx);
            self.pending[2 * k + 1] = Some(r.tx);
        }
    }

    /// The config space: `struct virtio_net_config` up to `max_virtqueue_pairs`.
    fn config(&self) -> [u8; 10] {
        let mut c = [0u8; 10];
        c[..6].copy_from_slice(&self.mac);
        // status (6..8) stays 0: VIRTIO_NET_F_STATUS is not offered.
        c[8..10].copy_from_slice(&(self.slots.len() as u16).to_le_bytes());
        c
    }
}

impl VhostUserDevice for NetDevice {
    fn num_queues(&self) -> usize {
        2 * self.slots.len()
    }

    fn max_queue_size(&self) -> u16 {
        self.queue_size
    }

    fn features(&self) -> u64 {
        // IN_ORDER: the worker uses every ring's buffers in the order they were made available
        // (NetRings never reorders), which lets drivers take their fast in-order paths.
        let mq = if self.slots.len() > 1 {
            1 << VIRTIO_NET_F_MQ
        } else {
            0
        };
        (1 << VIRTIO_NET_F_MRG_RXBUF) | (1 << VIRTIO_NET_F_MAC) | (1 << VIRTIO_F_IN_ORDER) | mq
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::empty()
    }

    fn read_config(&self, offset: usize, buf: &mut [u8]) {
        let c = self.config();
        for (i, b) in buf.iter_mut().enumerate() {
            *b = offset
                .checked_add(i)
                .and_then(|o| c.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    fn start_queue(&mut self, q: QueueStart) -> Result<(), DeviceError> {
        let i = q.index;
        if i >= self.pending.len() {
            return Err(DeviceError::NoSuchQueue(i));
        }
        let k = i / 2;
        self.reclaim(k);
        self.pending[i] = Some(q);
        if self.pending[2 * k].is_some() && self.pending[2 * k + 1].is_some() {
            let (Some(rx), Some(tx)) = (self.pending[2 * k].take(), self.pending[2 * k + 1].take())
            else {
                unreachable!("both checked");
            };
            self.slots[k].offer(RingPair { rx, tx });
        }
        Ok(())
    }

    fn stop_queue(&mut self, index: usize) -> Option<Queue> {
        if index >= self.pending.len() {
            return None;
        }
        self.reclaim(index / 2);
        self.pending[index].take().map(|q| q.queue)
    }

    fn reset(&mut self) {
        for k in 0..self.slots.len() {
            self.reclaim(k);
        }
        for p in &mut self.pending {
            *p = None;
        }
    }
}
