//! [`NetDevice`]: the vhost-user side of a vNF port.

use dpacc_spec::fastpath::InstanceConfig;
use tracing::info;
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use virtio_queue::Queue;

use super::port::{PortState, PortStats, PortWorker, Rings, VIRTIO_NET_F_MRG_RXBUF};
use super::tap::Tap;
use super::NetBackendConfig;
use crate::vhost_user::{DeviceError, QueueStart, VhostUserDevice};

const VIRTIO_NET_F_MAC: u64 = 1 << 5;

/// A virtio-net device for one vNF port.
pub struct NetDevice {
    cfg_mac: [u8; 6],
    queue_size: u16,
    state: Option<PortState>,
    pending: [Option<QueueStart>; 2],
    worker: Option<PortWorker>,
}

impl NetDevice {
    /// Opens the TAP uplinks and creates the port's flow-processor instance.
    pub fn new(cfg: NetBackendConfig) -> Result<Self, String> {
        let uplinks = cfg
            .uplinks
            .iter()
            .map(|n| Tap::open(n).map_err(|e| format!("TAP {n}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let proc_ = cfg.fastpath.create_instance(&InstanceConfig {
            name: "vnf".into(),
            uplinks: uplinks.len() as u16,
            max_flows: cfg.max_flows,
        })?;
        info!(
            "vNF port: uplinks {:?}, max {} flows, fast path {}",
            cfg.uplinks,
            cfg.max_flows,
            cfg.fastpath.name()
        );
        Ok(Self {
            cfg_mac: cfg.mac,
            queue_size: cfg.queue_size,
            state: Some(PortState {
                proc_,
                uplinks,
                stats: PortStats::default(),
                vnf_mac: [0xff; 6],
            }),
            pending: [None, None],
            worker: None,
        })
    }

    fn stop_worker(&mut self) {
        if let Some(w) = self.worker.take() {
            if let Some((rings, st)) = w.stop() {
                self.pending = [Some(rings.rx), Some(rings.tx)];
                self.state = Some(st);
            }
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
        VIRTIO_NET_F_MRG_RXBUF | VIRTIO_NET_F_MAC
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::empty()
    }

    fn read_config(&self, offset: usize, buf: &mut [u8]) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = offset
                .checked_add(i)
                .and_then(|o| self.cfg_mac.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    fn start_queue(&mut self, q: QueueStart) -> Result<(), DeviceError> {
        let i = q.index;
        if i > 1 {
            return Err(DeviceError::NoSuchQueue(i));
        }
        self.stop_worker();
        self.pending[i] = Some(q);
        if self.pending.iter().all(Option::is_some) {
            let (Some(rx), Some(tx)) = (self.pending[0].take(), self.pending[1].take()) else {
                unreachable!("both checked");
            };
            let st = self
                .state
                .take()
                .ok_or(DeviceError::Start(i, "port state lost".into()))?;
            self.worker = Some(
                PortWorker::spawn(Rings { rx, tx }, st)
                    .map_err(|e| DeviceError::Start(i, e.to_string()))?,
            );
        }
        Ok(())
    }

    fn stop_queue(&mut self, index: usize) -> Option<Queue> {
        self.stop_worker();
        self.pending.get_mut(index)?.take().map(|q| q.queue)
    }

    fn reset(&mut self) {
        self.stop_worker();
        self.pending = [None, None];
    }
}
