//! The guest library's error type.

use dpacc_spec::CryptoError;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong talking to the device.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The device (or the library's own checks) rejected an operation: bad key or IV length,
    /// authentication failure ([`CryptoError::AuthFailed`]), unknown session, ...
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The vhost-user connection failed or the backend refused a setup message.
    #[error("transport: {0}")]
    Transport(#[from] vhost::Error),
    /// The backend's socket could not be connected to.
    #[error("transport: connect {}: {source}", path.display())]
    Connect {
        /// The socket.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: vhost::Error,
    },
    /// A virtio PCI function could not be used (inside a VM).
    #[error(transparent)]
    Pci(#[from] crate::transport::pci::PciError),
    /// A device endpoint that is neither `pci:DDDD:BB:DD.F` nor `vhost-user:PATH`.
    #[error("bad device '{0}': expected pci:DDDD:BB:DD.F (inside a VM) or vhost-user:PATH")]
    InvalidEndpoint(String),
    /// The device broke the virtio protocol (bogus used id or length, missing status, ...).
    /// The queue that reported it should be considered unusable.
    #[error("device protocol violation: {0}")]
    Protocol(&'static str),
    /// The device does not offer something the library needs.
    #[error("device lacks {0}")]
    Unsupported(&'static str),
    /// A caller's argument is out of range (queue index, buffer outside the shared region...).
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// No completion arrived within the configured timeout.
    #[error("timed out waiting for the device")]
    Timeout,
    /// The queue has no free descriptors (or no free request slots) for this submission.
    #[error("queue full")]
    QueueFull,
    /// Hugepages were asked for ([`Hugepages::On`](crate::mem::Hugepages)) and too few are
    /// free (or the kernel refused them).
    #[error(
        "not enough free 2 MiB hugepages for the shared memory: {need} needed, {free} free of \
         {total}; reserve more (echo {} > /proc/sys/vm/nr_hugepages), or let the library fall \
         back to 4 KiB pages (`Hugepages::Auto`, `dpacc bench --hugepages auto`)",
        total + need.saturating_sub(*free)
    )]
    NoHugepages {
        /// Pages needed.
        need: usize,
        /// Pages reserved in the system (0 if unknown).
        total: usize,
        /// Pages free (0 if unknown).
        free: usize,
    },
    /// The shared-memory arena has no free block of the requested size.
    #[error("shared memory exhausted ({0} bytes requested)")]
    OutOfMemory(usize),
    /// Every data queue is held by a [`Queue`](crate::Queue) handle.
    #[error("all data queues are in use")]
    NoQueue,
    /// A control request got no reply in time (lost, or the device is gone).
    #[error("no reply to {request} (txid {txid}) within {after:?}")]
    NoReply {
        /// The request's message type (FLOW_ADD, ...).
        request: &'static str,
        /// Its transaction id.
        txid: u32,
        /// How long it waited.
        after: std::time::Duration,
    },
    /// The flow processor refused a control request.
    #[error("flow processor refused the request: {msg} ({code:?})")]
    FlowRejected {
        /// The protocol's error code.
        code: dpacc_spec::fastpath::proto::ErrorCode,
        /// Its explanation.
        msg: String,
    },
    /// An OS call failed.
    #[error("{0}: {1}")]
    Io(&'static str, #[source] std::io::Error),
}

impl Error {
    /// The crypto error inside, if this is one (handy for `matches!` in tests).
    pub fn crypto(&self) -> Option<CryptoError> {
        match self {
            Error::Crypto(e) => Some(*e),
            _ => None,
        }
    }
}
