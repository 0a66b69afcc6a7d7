//! The inline fast path's device: a virtio-net port (vhost-user) for one vNF, whose frames go
//! through the vNF's own flow-processor instance to its TAP uplinks and back.
//!
//! Rings: 0 = RX (device → vNF), 1 = TX (vNF → device). Features: VERSION_1, MRG_RXBUF, MAC,
//! EVENT_IDX (no checksum or segmentation offloads: the guest computes checksums). Control
//! frames (EtherType 0x88B5) the vNF sends go to its instance and are never forwarded.

mod device;
pub mod port;
pub mod tap;

use std::os::unix::net::UnixListener;
use std::sync::Arc;

use dpacc_spec::fastpath::FastPathDriver;
use vmm_sys_util::eventfd::EventFd;

pub use device::NetDevice;

/// Configuration of one vNF port.
pub struct NetBackendConfig {
    /// TAP interface names, uplink ports 1.. in order.
    pub uplinks: Vec<String>,
    /// Flow quota of the port's instance.
    pub max_flows: usize,
    /// Largest ring size.
    pub queue_size: u16,
    /// The MAC address in the device's config space.
    pub mac: [u8; 6],
    /// Creates the flow-processor instance.
    pub fastpath: Arc<dyn FastPathDriver>,
}

/// Serves one vNF port on `listener` until `shutdown` fires.
pub fn serve(
    listener: &UnixListener,
    cfg: NetBackendConfig,
    shutdown: &EventFd,
) -> Result<(), String> {
    let mut dev = NetDevice::new(cfg)?;
    crate::vhost_user::serve(listener, &mut dev, shutdown).map_err(|e| e.to_string())
}
