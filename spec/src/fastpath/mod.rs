//! The inline / fast-path contract: per-vNF flow processors and the packets they work on.
//!
//! Each vNF port of a `dpacc-backend net` device owns one isolated [`FlowProcessor`] made by a
//! [`FastPathDriver`]. The backend hands it batches of Ethernet frames (virtio-net header
//! already stripped) received on the vNF port or on the uplinks that belong to it; for each the
//! processor returns a [`Verdict`]. Control frames (EtherType [`proto::ETHERTYPE`]) sent by the
//! vNF go to [`FlowProcessor::control`] instead; the backend never forwards them.
//!
//! Port numbering inside one instance: [`PortId::VNF`] (0) is the vNF's own port; uplinks are
//! numbered 1.. in the order given on the command line for that vNF port.

pub mod flow;
pub mod proto;

/// Identifies a port inside one flow-processor instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortId(pub u16);

impl PortId {
    /// The vNF's own port.
    pub const VNF: PortId = PortId(0);
}

/// Bytes reserved in front of every frame so encapsulation (ESP tunnel: outer IPv4/IPv6 +
/// ESP header + IV) can grow a packet at the front without moving it.
pub const HEADROOM: usize = 128;
/// Largest frame (without virtio-net header) a [`PacketBuf`] holds after headroom.
pub const MAX_FRAME: usize = 9216;

/// One packet being processed: a fixed buffer with headroom, reused across batches (the data
/// path allocates no packet buffers per packet).
#[derive(Clone)]
pub struct PacketBuf {
    buf: Box<[u8]>,
    head: usize,
    len: usize,
    /// The port the frame arrived on.
    pub in_port: PortId,
}

impl std::fmt::Debug for PacketBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacketBuf")
            .field("head", &self.head)
            .field("len", &self.len)
            .field("in_port", &self.in_port)
            .finish()
    }
}

impl Default for PacketBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl PacketBuf {
    /// An empty buffer of `HEADROOM + MAX_FRAME` bytes plus tail room for a trailer.
    pub fn new() -> Self {
        PacketBuf {
            buf: vec![0u8; HEADROOM + MAX_FRAME + 64].into_boxed_slice(),
            head: HEADROOM,
            len: 0,
            in_port: PortId::VNF,
        }
    }

    /// Resets to an empty frame at the default headroom.
    pub fn reset(&mut self, in_port: PortId) {
        self.head = HEADROOM;
        self.len = 0;
        self.in_port = in_port;
    }

    /// Copies `frame` in (at the default headroom). Fails if it exceeds [`MAX_FRAME`].
    pub fn load(&mut self, frame: &[u8], in_port: PortId) -> bool {
        if frame.len() > MAX_FRAME {
            return false;
        }
        self.reset(in_port);
        self.buf[HEADROOM..HEADROOM + frame.len()].copy_from_slice(frame);
        self.len = frame.len();
        true
    }

    /// The frame.
    pub fn frame(&self) -> &[u8] {
        &self.buf[self.head..self.head + self.len]
    }

    /// The frame, writable.
    pub fn frame_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.head..self.head + self.len]
    }

    /// Frame length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the frame is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Free bytes in front of the frame.
    pub fn headroom(&self) -> usize {
        self.head
    }

    /// Free bytes after the frame.
    pub fn tailroom(&self) -> usize {
        self.buf.len() - self.head - self.len
    }

    /// Grows the frame by `n` bytes at the front; returns the new frame. None if no room.
    pub fn push_front(&mut self, n: usize) -> Option<&mut [u8]> {
        if n > self.head {
            return None;
        }
        self.head -= n;
        self.len += n;
        Some(self.frame_mut())
    }

    /// Removes `n` bytes from the front. False if the frame is shorter.
    pub fn pull_front(&mut self, n: usize) -> bool {
        if n > self.len {
            return false;
        }
        self.head += n;
        self.len -= n;
        true
    }

    /// Sets the frame length (growing into tail room or shrinking). False if no room.
    pub fn set_len(&mut self, len: usize) -> bool {
        if self.head + len > self.buf.len() {
            return false;
        }
        self.len = len;
        true
    }

    /// Raw access for device code that reads a frame straight from guest memory: the whole
    /// area after the default headroom (`MAX_FRAME` + tail bytes). Call [`PacketBuf::set_len`]
    /// afterwards.
    pub fn load_area(&mut self, in_port: PortId) -> &mut [u8] {
        self.reset(in_port);
        &mut self.buf[HEADROOM..HEADROOM + MAX_FRAME]
    }
}

/// What the processor decided for one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send the (possibly rewritten) frame out of this port ([`PortId::VNF`]: to the vNF's RX
    /// queue as a plain frame).
    Output(PortId),
    /// Drop it.
    Drop,
    /// No flow matched: deliver to the vNF's RX queue as a PACKET_IN control frame carrying
    /// the in-port (the exception path). The backend builds that frame with
    /// [`proto::encode_packet_in`].
    Miss {
        /// Table in which the miss happened.
        table: u8,
    },
}

/// Something the backend must transmit on behalf of the processor (PACKET_OUT, events).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Emit {
    /// A frame to send out of `port` as is.
    Frame {
        /// Destination port.
        port: PortId,
        /// The whole Ethernet frame.
        frame: Vec<u8>,
    },
    /// A control payload (response body or event) for the vNF: the backend wraps it in an
    /// Ethernet frame with [`proto::ETHERTYPE`] and queues it on the vNF's RX queue.
    Control(Vec<u8>),
}

/// What one vNF may create in its instance. Every object a vNF can make has a quota, so the
/// memory of an instance is bounded ([`Usage::max_memory`]); a request over a quota is refused
/// with a quota error naming it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quotas {
    /// Flows in all tables (`--max-flows`).
    pub flows: usize,
    /// Select groups (`--max-groups`).
    pub groups: usize,
    /// Buckets in all groups together (`--max-buckets`).
    pub buckets: usize,
    /// ESP SAs, inbound and outbound together; each holds a crypto session (`--max-sas`).
    pub sas: usize,
    /// Actions in one action list (a flow's or a bucket's).
    pub actions: usize,
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            flows: 65536,
            groups: 1024,
            buckets: 16384,
            sas: 1024,
            actions: 16,
        }
    }
}

/// What an instance holds against its [`Quotas`], and its memory (reported by HELLO_REPLY, so
/// by `dpacc flow info`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Flows installed.
    pub flows: u32,
    /// Groups installed.
    pub groups: u32,
    /// Group quota.
    pub max_groups: u32,
    /// Buckets in all groups.
    pub buckets: u32,
    /// Bucket quota.
    pub max_buckets: u32,
    /// SAs installed.
    pub sas: u32,
    /// SA quota.
    pub max_sas: u32,
    /// Most actions in one list.
    pub max_actions: u16,
    /// Bytes the instance holds now (each object counted at its largest size).
    pub memory: u64,
    /// Bytes it can hold at most, with every quota full.
    pub max_memory: u64,
}

/// Limits and identity of one instance.
#[derive(Clone, Debug)]
pub struct InstanceConfig {
    /// Name for logs (the vNF port's socket, say).
    pub name: String,
    /// Number of uplinks (valid output ports are 0..=uplinks).
    pub uplinks: u16,
    /// What the vNF may create.
    pub quotas: Quotas,
}

/// A per-vNF flow-processor instance. Owned by one worker thread; never shared, so it needs
/// no locks. Times are monotonic nanoseconds supplied by the caller.
pub trait FlowProcessor: Send {
    /// Processes a batch in place: `verdicts[i]` receives the decision for `pkts[i]`.
    /// Must not allocate or lock per packet.
    fn process(&mut self, now_ns: u64, pkts: &mut [PacketBuf], verdicts: &mut [Verdict]);

    /// Handles one control request (the payload after the Ethernet header of a frame with
    /// [`proto::ETHERTYPE`] sent by the vNF). Responses, and frames to transmit (PACKET_OUT),
    /// are pushed to `out`. Malformed requests produce an error response, never a panic.
    fn control(&mut self, now_ns: u64, request: &[u8], out: &mut Vec<Emit>);

    /// Expires flows whose idle or hard timeout passed, pushing one event per expired flow
    /// (when the flow asked for it) to `out`. Called a few times per second.
    fn expire(&mut self, now_ns: u64, out: &mut Vec<Emit>);

    /// Installed flows (all tables).
    fn flow_count(&self) -> usize;

    /// What the instance holds against its quotas, and its memory.
    fn usage(&self) -> Usage;

    /// Removes every flow, group and SA (closing their crypto sessions) and frees their
    /// memory: the vNF left and did not come back in time. Counters of the instance stay.
    fn clear(&mut self);
}

/// Why a fast-path driver could not create an instance.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// The configuration is out of the driver's range (e.g. a flow quota it cannot hold).
    #[error("invalid instance configuration: {0}")]
    Config(String),
    /// The driver failed (out of resources, device error...).
    #[error(transparent)]
    Driver(Box<dyn std::error::Error + Send + Sync>),
}

/// A fast-path driver creates isolated flow processors.
pub trait FastPathDriver: Send + Sync {
    /// Short name.
    fn name(&self) -> &str;
    /// A new, empty instance for one vNF port.
    fn create_instance(
        &self,
        cfg: &InstanceConfig,
    ) -> Result<Box<dyn FlowProcessor>, InstanceError>;
}
