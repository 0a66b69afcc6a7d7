//! The inline (fast-path) side of the library: sending and receiving Ethernet frames on a vNF
//! port, and programming the port's flow processor over the control protocol
//! (`dpacc_spec::fastpath::proto`).
//!
//! Frame transports implement [`FrameIo`]: [`VirtioNetPort`] (virtio-user straight to
//! `dpacc-backend net` from a container, or the VM's virtio-net PCI function driven from
//! userspace), or an AF_PACKET socket on the stock virtio-net interface inside a VM.

use std::time::Duration;

use crate::Result;

pub mod af_packet;
pub mod flow_table;
#[cfg(test)]
pub(crate) mod frame_peer;
pub mod port;

pub use af_packet::AfPacket;
pub use flow_table::{Completion, Event, FlowTable, InstanceInfo, Reply, Request};
pub use port::{NetOptions, VirtioNetPort};

/// Sends and receives whole Ethernet frames (no virtio-net header) on one vNF port.
pub trait FrameIo: Send {
    /// Sends one frame.
    fn send(&mut self, frame: &[u8]) -> Result<()>;
    /// Sends several frames, in order (a transport with rings does so with one kick).
    fn send_all(&mut self, frames: &[&[u8]]) -> Result<()> {
        frames.iter().try_for_each(|f| self.send(f))
    }
    /// Receives one frame into `buf`, waiting at most `timeout` (`None`: forever). Returns the
    /// frame length, or `None` on timeout. Frames longer than `buf` are truncated.
    fn recv(&mut self, buf: &mut [u8], timeout: Option<Duration>) -> Result<Option<usize>>;
}
