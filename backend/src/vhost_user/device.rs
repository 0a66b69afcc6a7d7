//! The interface between the generic vhost-user server and one device model.

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use virtio_queue::Queue;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// Guest memory as workers see it: swapped atomically on SET_MEM_TABLE, read without locks.
pub(crate) type GuestMem = GuestMemoryAtomic<GuestMemoryMmap>;

/// Everything a device needs to run one ring.
#[derive(Debug)]
pub(crate) struct QueueStart {
    /// Ring index.
    pub(crate) index: usize,
    /// The configured ring (size, addresses, next avail/used, EVENT_IDX set).
    pub(crate) queue: Queue,
    /// Frontend → backend notifications.
    pub(crate) kick: EventFd,
    /// Backend → frontend notifications (None: the frontend polls).
    pub(crate) call: Option<EventFd>,
    /// Guest memory.
    pub(crate) mem: GuestMem,
    /// The virtio features the frontend acknowledged.
    pub(crate) features: u64,
}

/// The answer of a device to a device-specific vhost-user request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum DeviceReply {
    /// The device does not know this request.
    Unknown,
    /// Handled; the request has no reply of its own (reply-ack applies).
    Ack(bool),
    /// Handled; send `reply` (already filled) as the reply payload.
    Reply,
}

/// Why a device refused an operation.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DeviceError {
    /// The ring index is not one of the device's.
    #[error("no queue {0}")]
    NoSuchQueue(usize),
    /// Starting the queue's worker (or the driver queue behind it) failed.
    #[error("starting queue {0}: {1}")]
    Start(usize, #[source] Box<dyn std::error::Error + Send + Sync>),
    /// The request is not supported by this device.
    #[error("not supported")]
    NotSupported,
}

/// A device model served over vhost-user.
pub(crate) trait VhostUserDevice: Send {
    /// Number of virtqueues (GET_QUEUE_NUM).
    fn num_queues(&self) -> usize;
    /// Largest ring size accepted.
    fn max_queue_size(&self) -> u16;
    /// Device-specific virtio feature bits (the server adds the transport ones).
    fn features(&self) -> u64;
    /// Protocol features on top of the server's MQ | REPLY_ACK | CONFIG.
    fn protocol_features(&self) -> VhostUserProtocolFeatures;
    /// Fills `buf` with config space bytes at `offset` (zeroes past the end).
    fn read_config(&self, offset: usize, buf: &mut [u8]);
    /// Writes config space; most devices refuse.
    fn write_config(&mut self, _offset: usize, _data: &[u8]) -> Result<(), DeviceError> {
        Err(DeviceError::NotSupported)
    }
    /// Starts processing ring `q.index`.
    fn start_queue(&mut self, q: QueueStart) -> Result<(), DeviceError>;
    /// Stops ring `index` (waits for in-flight work) and returns its queue, if it was running.
    fn stop_queue(&mut self, index: usize) -> Option<Queue>;
    /// Handles a request the generic server does not know. `reply` is cleared beforehand.
    fn handle_request(
        &mut self,
        _request: u32,
        _payload: &[u8],
        _reply: &mut Vec<u8>,
    ) -> DeviceReply {
        DeviceReply::Unknown
    }
    /// A frontend connected (before its first message).
    fn connected(&mut self) {}
    /// Drops all per-frontend state (rings are already stopped): called on disconnect.
    fn reset(&mut self);
}
