//! The inline / fast-path contract: per-vNF flow processors and the packets they work on.
//!
//! Each vNF port of a `dpacc-backend net` device owns one isolated [`FlowProcessor`] made by a
//! [`FastPathDriver`], whose data path runs on one [`FlowLane`] per worker thread (virtio-net
//! queue pair). The backend hands a lane batches of Ethernet frames (virtio-net header
//! already stripped) received on the vNF port or on the uplinks that belong to it; for each the
//! processor returns a [`Verdict`]. Control frames (EtherType [`proto::ETHERTYPE`]) sent by the
//! vNF go to [`FlowProcessor::control`] instead; the backend never forwards them.
//!
//! Port numbering inside one instance: [`PortId::VNF`] (0) is the vNF's own port; uplinks are
//! numbered 1.. in the order given on the command line for that vNF port.

pub mod flow;
pub mod policy;
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

/// Bytes of a frame a device copies into a [`PacketBuf`] when it leaves the rest in the source
/// buffer ([`PacketBuf::set_partial`]): every header the processors parse or rewrite (VLAN tag,
/// IPv4 with options or IPv6, TCP/UDP ports and checksum) lies in the first 128 bytes.
pub const HEADER_BYTES: usize = 128;

/// One packet being processed: a fixed buffer with headroom, reused across batches (the data
/// path allocates no packet buffers per packet).
///
/// A device may load only the frame's first bytes ([`PacketBuf::set_partial`]; at least
/// [`HEADER_BYTES`]) and leave the rest in its source buffer (a guest's TX buffer), so that a
/// forwarded frame is copied once, from the source straight into the destination. Then
/// [`frame`](Self::frame) holds the resident bytes (all headers), [`len`](Self::len) is the
/// whole frame's length, and a processor that needs every byte (ESP) calls
/// [`make_whole`](Self::make_whole) first.
///
/// A processor may also leave a partial frame's payload untransformed and mark the packet
/// *pending* ([`PacketBuf::set_pending`]): the device then runs the rest of its work where
/// the frame lands, through [`FlowLane::finish`] (e.g. an AEAD in place in the destination
/// buffer, after the frame's one copy), and the bytes of [`tail`](Self::tail) follow the
/// rest.
#[derive(Clone)]
pub struct PacketBuf {
    buf: Box<[u8]>,
    head: usize,
    /// Resident bytes of the frame (after `head`).
    len: usize,
    /// The frame's bytes past the resident ones, still in the source buffer.
    rest: Option<Rest>,
    /// Bytes after the rest of a partial frame (a trailer added without loading the rest).
    tail: [u8; MAX_TAIL],
    tail_len: u8,
    /// The device must call [`FlowLane::finish`] for this packet.
    pending: bool,
    /// The port the frame arrived on.
    pub in_port: PortId,
}

/// Most bytes a processor may append after the rest of a partial frame
/// ([`PacketBuf::push_tail`]).
pub const MAX_TAIL: usize = 48;

/// The part of a partial frame still in its source buffer.
#[derive(Clone, Copy, Debug)]
struct Rest {
    src: *const u8,
    len: usize,
    /// Bytes before `src` in the same source buffer that the resident bytes were copied from
    /// (`set_partial`'s `resident`): readable likewise.
    before: usize,
}

// SAFETY: `Rest` only describes memory; whoever sets it (`set_partial`, unsafe) vouches for it
// while the buffer is in use by one thread at a time, which `&mut self` access guarantees.
unsafe impl Send for Rest {}
// SAFETY: as above; shared access never reads through the pointer.
unsafe impl Sync for Rest {}

impl std::fmt::Debug for PacketBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacketBuf")
            .field("head", &self.head)
            .field("len", &self.len)
            .field("rest", &self.rest.map(|r| r.len))
            .field("tail", &self.tail_len)
            .field("pending", &self.pending)
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
            rest: None,
            tail: [0; MAX_TAIL],
            tail_len: 0,
            pending: false,
            in_port: PortId::VNF,
        }
    }

    /// Resets to an empty frame at the default headroom.
    pub fn reset(&mut self, in_port: PortId) {
        self.head = HEADROOM;
        self.len = 0;
        self.rest = None;
        self.tail_len = 0;
        self.pending = false;
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

    /// The frame (its resident bytes, which hold every header, if it is partial).
    pub fn frame(&self) -> &[u8] {
        &self.buf[self.head..self.head + self.len]
    }

    /// The frame, writable (its resident bytes, if it is partial).
    pub fn frame_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.head..self.head + self.len]
    }

    /// Frame length (the whole frame's, also when it is partial).
    pub fn len(&self) -> usize {
        self.len + self.rest.map_or(0, |r| r.len) + usize::from(self.tail_len)
    }

    /// Bytes that follow the rest of a partial frame (empty for a whole frame).
    pub fn tail(&self) -> &[u8] {
        &self.tail[..usize::from(self.tail_len)]
    }

    /// Appends `bytes` to the frame without loading the rest of a partial one. False
    /// (nothing changed) if there is no room.
    pub fn push_tail(&mut self, bytes: &[u8]) -> bool {
        if self.rest.is_none() {
            let at = self.head + self.len;
            let Some(dst) = self.buf.get_mut(at..at + bytes.len()) else {
                return false;
            };
            dst.copy_from_slice(bytes);
            self.len += bytes.len();
            return true;
        }
        let t = usize::from(self.tail_len);
        if t + bytes.len() > MAX_TAIL || self.len() + bytes.len() > MAX_FRAME {
            return false;
        }
        self.tail[t..t + bytes.len()].copy_from_slice(bytes);
        self.tail_len += bytes.len() as u8;
        true
    }

    /// Shortens the frame to `len` bytes without loading the rest of a partial one (the rest
    /// is cut; the resident bytes are kept whole). False (nothing changed) if `len` is longer
    /// than the frame or shorter than its resident bytes, or the frame has a tail.
    pub fn truncate(&mut self, len: usize) -> bool {
        if len > self.len() || self.tail_len != 0 {
            return false;
        }
        match &mut self.rest {
            None => self.len = len,
            Some(r) => {
                let Some(keep) = len.checked_sub(self.len) else {
                    return false;
                };
                r.len = keep;
            }
        }
        true
    }

    /// Copies `out.len()` bytes of the frame at `offset` into `out` (resident bytes, the rest
    /// in its source buffer, the tail). False if the range is outside the frame.
    pub fn read_at(&self, offset: usize, out: &mut [u8]) -> bool {
        let Some(end) = offset.checked_add(out.len()) else {
            return false;
        };
        if end > self.len() {
            return false;
        }
        let (res, rest) = (self.len, self.rest.map_or(0, |r| r.len));
        for (i, b) in out.iter_mut().enumerate() {
            let at = offset + i;
            *b = if at < res {
                self.buf[self.head + at]
            } else if at < res + rest {
                let r = self.rest.expect("inside the rest");
                // SAFETY: `at - res < r.len`: inside the rest, readable while the frame is
                // partial (`set_partial`'s contract); one byte copied, no reference formed.
                unsafe { std::ptr::read(r.src.add(at - res)) }
            } else {
                self.tail[at - res - rest]
            };
        }
        true
    }

    /// Marks the packet as pending: the device must run [`FlowLane::finish`] (or
    /// [`FlowLane::finish_here`]) for it before the frame is delivered anywhere.
    pub fn set_pending(&mut self) {
        self.pending = true;
    }

    /// Whether the packet is pending (see [`set_pending`](Self::set_pending)).
    pub fn is_pending(&self) -> bool {
        self.pending
    }

    /// Clears the pending mark (the processor finished the packet).
    pub fn clear_pending(&mut self) {
        self.pending = false;
    }

    /// True when the frame is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether every byte of the frame is in the buffer.
    pub fn is_whole(&self) -> bool {
        self.rest.is_none()
    }

    /// Loads a partial frame's remaining bytes from its source buffer (no-op when whole), so
    /// that [`frame`](Self::frame) is the whole frame. The source may be guest memory that a
    /// guest writes meanwhile: the bytes are copied as they are, and the headers already in
    /// the buffer stay as they are.
    pub fn make_whole(&mut self) {
        let Some(r) = self.rest.take() else {
            return;
        };
        let at = self.head + self.len;
        // `set_partial` and `push_tail` checked that the whole frame fits the buffer.
        let dst = &mut self.buf[at..at + r.len];
        // SAFETY: `set_partial`'s caller vouched that `r.src..r.src + r.len` stays readable
        // while the frame is partial; `dst` is our own buffer, disjoint from it. A raw copy, no
        // reference to the source is formed.
        unsafe { std::ptr::copy_nonoverlapping(r.src, dst.as_mut_ptr(), r.len) };
        self.len += r.len;
        let t = usize::from(std::mem::take(&mut self.tail_len));
        let at = self.head + self.len;
        self.buf[at..at + t].copy_from_slice(&self.tail[..t]);
        self.len += t;
    }

    /// Copies the whole frame (resident bytes, the rest of a partial frame, the tail) to
    /// `dst`, a contiguous buffer at least [`len`](Self::len) bytes long.
    ///
    /// # Safety
    /// `dst..dst + self.len()` must be valid for writes; it may be guest memory (raw copies,
    /// no reference formed) but must not overlap this buffer.
    pub unsafe fn write_to(&self, dst: *mut u8) {
        let head = self.frame();
        // SAFETY: the caller's range, `head.len() <= self.len()`.
        unsafe { std::ptr::copy_nonoverlapping(head.as_ptr(), dst, head.len()) };
        let mut at = head.len();
        if let Some(r) = self.rest {
            // SAFETY: the rest is readable (`set_partial`'s contract) and may be memory of the
            // same guest as `dst` (a hostile driver may overlap its buffers): a memmove.
            unsafe { std::ptr::copy(r.src, dst.add(at), r.len) };
            at += r.len;
        }
        let t = self.tail();
        // SAFETY: `at + t.len() == self.len()`: inside the caller's range.
        unsafe { std::ptr::copy_nonoverlapping(t.as_ptr(), dst.add(at), t.len()) };
    }

    /// Copies the first `n` bytes of a partial frame's rest from its source into the buffer
    /// after the resident bytes, which grow by `n` (the frame's bytes stay the same; the
    /// rest starts `n` bytes later). False (nothing changed) if the frame is whole, has a
    /// tail, or its rest is shorter than `n`. ESP encap uses it to start the rest on a cipher
    /// block boundary.
    pub fn load_rest_front(&mut self, n: usize) -> bool {
        let at = self.head + self.len;
        let Some(r) = self.rest.as_mut() else {
            return false;
        };
        if n > r.len || self.tail_len != 0 {
            return false;
        }
        // `set_partial`/`push_front` keep the whole frame inside the buffer.
        let Some(dst) = self.buf.get_mut(at..at + n) else {
            return false;
        };
        // SAFETY: `r.src..r.src + n` lies inside the rest, readable while the frame is
        // partial (`set_partial`'s contract); `dst` is our own buffer. A raw copy.
        unsafe { std::ptr::copy_nonoverlapping(r.src, dst.as_mut_ptr(), n) };
        r.src = r.src.wrapping_add(n);
        r.len -= n;
        r.before += n;
        self.len += n;
        true
    }

    /// Moves the last `n` bytes of a partial frame's rest to the front of its tail, copied
    /// from the source (the frame's bytes stay the same). False (nothing changed) if the
    /// frame is whole, its rest is shorter than `n`, or the tail would exceed [`MAX_TAIL`].
    /// ESP encap uses it to end the rest on a cipher block boundary.
    pub fn rest_end_to_tail(&mut self, n: usize) -> bool {
        let t = usize::from(self.tail_len);
        let Some(r) = self.rest.as_mut() else {
            return false;
        };
        if n > r.len || t + n > MAX_TAIL {
            return false;
        }
        self.tail.copy_within(0..t, n);
        // SAFETY: the rest's last `n` bytes, readable while the frame is partial
        // (`set_partial`'s contract); the tail is our own array. A raw copy.
        unsafe { std::ptr::copy_nonoverlapping(r.src.add(r.len - n), self.tail.as_mut_ptr(), n) };
        r.len -= n;
        self.tail_len += n as u8;
        true
    }

    /// Where a partial frame's remaining bytes are, and how many (None when whole). For the
    /// device that forwards the frame: it copies them straight into the destination.
    pub fn rest(&self) -> Option<(*const u8, usize)> {
        self.rest.map(|r| (r.src, r.len))
    }

    /// Where resident bytes `offset..` of a partial frame were copied from: they are the
    /// `frame().len() - offset` bytes right before the rest in the source buffer
    /// ([`set_partial`](Self::set_partial)'s contract), so that `offset..len()` of the frame
    /// (without the tail) can be read there in one piece. None if the frame is whole, has
    /// a tail, or `offset` lies outside the resident bytes or before the first loaded one
    /// (bytes pushed in front). The pointer is valid for `len() - offset` bytes while the
    /// frame stays partial; the resident copies may since have been rewritten (only the caller
    /// knows whether it changed them) and the source may have changed since (a guest's).
    pub fn resident_source(&self, offset: usize) -> Option<*const u8> {
        let r = self.rest?;
        let back = self.len.checked_sub(offset)?;
        if back > r.before || self.tail_len != 0 {
            return None;
        }
        Some(r.src.wrapping_sub(back))
    }

    /// Marks the buffer (loaded through [`load_area`](Self::load_area) with `resident`
    /// bytes) as holding the first `resident` bytes of a frame whose next `rest_len` bytes
    /// are at `rest`. False (nothing changed) if `resident` is below [`HEADER_BYTES`] or the
    /// whole frame would not fit [`MAX_FRAME`].
    ///
    /// # Safety
    /// `rest - resident..rest + rest_len` must stay mapped and readable until the frame is
    /// made whole, reset, reloaded or dropped, and the `resident` bytes loaded must be a copy
    /// of `rest - resident..rest` (the frame is contiguous in its source buffer:
    /// [`resident_source`](Self::resident_source) reads them there).
    pub unsafe fn set_partial(
        &mut self,
        resident: usize,
        rest: *const u8,
        rest_len: usize,
    ) -> bool {
        if resident < HEADER_BYTES || resident.saturating_add(rest_len) > MAX_FRAME {
            return false;
        }
        self.head = HEADROOM;
        self.len = resident;
        self.rest = Some(Rest {
            src: rest,
            len: rest_len,
            before: resident,
        });
        true
    }

    /// Loads `frame` from host memory the way a device loads an uplink frame for one-copy
    /// forwarding: whole if it is at most [`HEADER_BYTES`] long, else only its first
    /// [`HEADER_BYTES`] copied in and the rest left in `frame` ([`set_partial`](Self::set_partial)).
    /// False (nothing loaded) if it exceeds [`MAX_FRAME`].
    ///
    /// # Safety
    /// `frame` must stay readable and unchanged until the packet is made whole, reset,
    /// reloaded or dropped.
    pub unsafe fn load_partial(&mut self, frame: &[u8], in_port: PortId) -> bool {
        if frame.len() <= HEADER_BYTES {
            return self.load(frame, in_port);
        }
        if frame.len() > MAX_FRAME {
            return false;
        }
        self.load_area(in_port)[..HEADER_BYTES].copy_from_slice(&frame[..HEADER_BYTES]);
        // SAFETY: the rest of `frame` stays readable as long as the caller promised.
        unsafe {
            self.set_partial(
                HEADER_BYTES,
                frame.as_ptr().add(HEADER_BYTES),
                frame.len() - HEADER_BYTES,
            )
        }
    }

    /// Free bytes in front of the frame.
    pub fn headroom(&self) -> usize {
        self.head
    }

    /// Free bytes after the frame (after the whole frame, if it is partial).
    pub fn tailroom(&self) -> usize {
        self.buf.len() - self.head - self.len()
    }

    /// Grows the frame by `n` bytes at the front; returns the new frame (its resident bytes,
    /// if it is partial: a partial frame stays partial). None if no room.
    pub fn push_front(&mut self, n: usize) -> Option<&mut [u8]> {
        if n > self.head {
            return None;
        }
        self.head -= n;
        self.len += n;
        Some(self.frame_mut())
    }

    /// Removes `n` bytes from the front. False if the frame is shorter (than its resident
    /// bytes, if it is partial: a partial frame stays partial).
    pub fn pull_front(&mut self, n: usize) -> bool {
        if n > self.len {
            return false;
        }
        self.head += n;
        self.len -= n;
        true
    }

    /// Sets the frame length (growing into tail room or shrinking). False if no room. A
    /// partial frame is made whole first.
    pub fn set_len(&mut self, len: usize) -> bool {
        self.make_whole();
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
    /// Data-path lanes: worker threads that process packets of this instance at the same
    /// time, one per virtio-net queue pair (`--queue-pairs`); at least 1.
    pub lanes: usize,
}

/// A per-vNF flow-processor instance: its flows, groups, SAs and counters, shared by the
/// instance's lanes ([`FlowLane`], one per worker thread) and changed by control requests
/// (which may arrive on any worker). Times are monotonic nanoseconds supplied by the caller,
/// on one clock for all lanes.
///
/// Drivers keep the data path free of locks and of shared writes per packet: each lane has
/// its own caches and counters (summed when read); shared per-SA state (sequence numbers,
/// anti-replay windows) stays correct across lanes; idle timeouts see every lane's traffic.
pub trait FlowProcessor: Send + Sync {
    /// Lane `index` (`0..lanes`), once: None if out of range or already taken (a dropped
    /// lane may be taken again).
    fn lane(&self, index: usize) -> Option<Box<dyn FlowLane>>;

    /// Handles one control request (the payload after the Ethernet header of a frame with
    /// [`proto::ETHERTYPE`] sent by the vNF). Responses, and frames to transmit (PACKET_OUT),
    /// are pushed to `out`. Malformed requests produce an error response, never a panic.
    /// Never call it from inside [`FlowLane::process`].
    fn control(&self, now_ns: u64, request: &[u8], out: &mut Vec<Emit>);

    /// Expires flows whose idle or hard timeout passed (idle: on no lane), pushing one event
    /// per expired flow (when the flow asked for it) to `out`. Called a few times per second.
    fn expire(&self, now_ns: u64, out: &mut Vec<Emit>);

    /// Installed flows (all tables).
    fn flow_count(&self) -> usize;

    /// What the instance holds against its quotas, and its memory.
    fn usage(&self) -> Usage;

    /// Removes every flow, group and SA (closing their crypto sessions) and frees their
    /// memory: the vNF left and did not come back in time, or a worker of the instance
    /// panicked. Waits until no lane is inside a batch; lanes see the empty instance from
    /// their next batch. Counters of the instance stay.
    fn clear(&self);

    /// Replaces the operator's policy of the instance (None: none) at once: every frame is
    /// judged by the old rule set or by the new one, never by a mix; the new rules' counters
    /// start at zero. Only the host operator calls this (never the vNF's control protocol).
    fn set_policy(&self, policy: Option<policy::Policy>) -> Result<(), policy::PolicyError> {
        match policy {
            None => Ok(()),
            Some(_) => Err(policy::PolicyError::Unsupported),
        }
    }

    /// The policy in force and its counters (None: no policy).
    fn policy(&self) -> Option<(policy::Policy, policy::PolicyCounters)> {
        None
    }

    /// Instance counters, summed over the lanes.
    fn counters(&self) -> ProcessorCounters {
        ProcessorCounters::default()
    }

    /// Up to `max` flows from index `start` (tables in order, then priority order), with
    /// their counters: for the host operator's statistics.
    fn flows(&self, start: usize, max: usize) -> Vec<flow::FlowSummary> {
        let _ = (start, max);
        Vec::new()
    }
}

/// Instance-wide counters of a [`FlowProcessor`] (summed over its lanes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessorCounters {
    /// Frames that missed every table (sent to the vNF as PACKET_IN, or dropped when they
    /// came from the vNF).
    pub misses: u64,
    /// Frames dropped (drop actions, lists without output, ESP failures, bad rewrites, and
    /// the operator policy's denies).
    pub drops: u64,
    /// Of `drops`, those the operator's policy dropped (deny or over a rate limit).
    pub policy_drops: u64,
    /// Exact-match cache hits.
    pub cache_hits: u64,
}

/// One lane of a [`FlowProcessor`]: the data path on one worker thread.
pub trait FlowLane: Send {
    /// Processes a batch in place: `verdicts[i]` receives the decision for `pkts[i]`.
    /// Must not allocate or lock per packet. A packet may be partial (see [`PacketBuf`]):
    /// its headers are in [`PacketBuf::frame`]; call [`PacketBuf::make_whole`] before using
    /// bytes past them. After [`enable_finish`](Self::enable_finish), an output packet may
    /// be pending ([`PacketBuf::is_pending`]); the device then calls
    /// [`finish`](Self::finish) or [`finish_here`](Self::finish_here) for it, and
    /// [`end_batch`](Self::end_batch) once every frame of the batch is out or dropped.
    fn process(&mut self, now_ns: u64, pkts: &mut [PacketBuf], verdicts: &mut [Verdict]);

    /// The device will finish pending packets: the lane may defer work on a frame's payload
    /// to where the frame lands (its one copy). True if the lane does so.
    fn enable_finish(&mut self) -> bool {
        false
    }

    /// Finishes pending packet `index` of the batch where its frame now lies: `frame` covers
    /// its bytes, in order (guest memory the device wrote, raw pointers). Returns the
    /// frame's final length (at most its length), or None: drop it (the lane wiped what it
    /// must not release).
    fn finish(&mut self, index: usize, frame: &[crate::Seg<'_>]) -> Option<usize> {
        let _ = (index, frame);
        None
    }

    /// Finishes pending packet `pkt` (index `index` of the batch) as its frame's one copy:
    /// `frame` (raw pointers to writable guest memory, in order, at least `pkt.len()` bytes)
    /// is where it lands and holds nothing of it yet; the lane writes the frame there, e.g.
    /// running its AEAD from the source buffer straight into `frame`. Returns the frame's
    /// final length, or None: drop it (the lane left nothing there it must not release).
    /// The default writes the frame there and calls [`finish`](Self::finish).
    fn finish_into(
        &mut self,
        index: usize,
        pkt: &PacketBuf,
        frame: &[crate::Seg<'_>],
    ) -> Option<usize> {
        if let [f] = frame {
            if f.len() < pkt.len() {
                return None;
            }
            // SAFETY: `frame` is writable guest memory of at least `pkt.len()` bytes (the
            // caller's promise), not our packet buffer.
            unsafe { pkt.write_to(f.ptr()) };
            return self.finish(index, frame);
        }
        // Several pieces: through a small host buffer, piece by piece.
        let mut at = 0;
        let mut chunk = [0u8; 256];
        for f in frame {
            let mut done = 0;
            while done < f.len() && at < pkt.len() {
                let n = (f.len() - done).min(pkt.len() - at).min(chunk.len());
                if !pkt.read_at(at, &mut chunk[..n]) {
                    return None;
                }
                // SAFETY: `done + n <= f.len()`: inside the writable piece; `chunk` is ours.
                unsafe { std::ptr::copy_nonoverlapping(chunk.as_ptr(), f.ptr().add(done), n) };
                done += n;
                at += n;
            }
        }
        (at == pkt.len()).then(|| self.finish(index, frame))?
    }

    /// Finishes pending packet `index` in its own buffer (made whole): for destinations that
    /// take host bytes (a TAP). False: drop it.
    fn finish_here(&mut self, index: usize, pkt: &mut PacketBuf) -> bool {
        let _ = (index, pkt);
        false
    }

    /// Ends the batch `process` began: every pending packet is finished or dropped.
    fn end_batch(&mut self) {}
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
    /// A new, empty instance for one vNF port, with `cfg.lanes` lanes.
    fn create_instance(
        &self,
        cfg: &InstanceConfig,
    ) -> Result<std::sync::Arc<dyn FlowProcessor>, InstanceError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Seg;

    /// Moving bytes between the rest and the resident bytes or the tail keeps the frame's
    /// bytes; `resident_source` finds the resident bytes' origin before the rest.
    #[test]
    fn rest_bytes_moved_keep_the_frame() {
        let src: Vec<u8> = (0..400u32).map(|i| (i * 13 + 1) as u8).collect();
        let mut p = PacketBuf::new();
        // SAFETY: `src` outlives `p`'s use.
        assert!(unsafe { p.load_partial(&src, PortId(1)) });
        assert_eq!(p.resident_source(20), Some(src[20..].as_ptr()));
        assert_eq!(p.resident_source(129), None);
        assert!(p.load_rest_front(14));
        assert!(p.rest_end_to_tail(10));
        assert!(p.push_tail(&[1, 2]));
        assert!(!p.rest_end_to_tail(MAX_TAIL));
        assert_eq!(
            (p.frame().len(), p.rest().unwrap().1, p.tail().len()),
            (142, 248, 12)
        );
        let mut out = vec![0u8; p.len()];
        // SAFETY: `out` is as long as the frame and our own.
        unsafe { p.write_to(out.as_mut_ptr()) };
        assert_eq!(&out[..400], &src[..]);
        assert_eq!(&out[400..], &[1, 2]);
        assert_eq!(p.resident_source(0), None, "a tail");
        let mut p = PacketBuf::new();
        // SAFETY: as above.
        assert!(unsafe { p.load_partial(&src, PortId(1)) });
        assert!(p.load_rest_front(5));
        assert!(p.pull_front(3));
        assert_eq!(p.resident_source(2), Some(src[5..].as_ptr()));
        assert!(p.push_front(4).is_some());
        assert_eq!(p.resident_source(0), None, "bytes pushed in front");
        assert!(!p.load_rest_front(400));
    }

    /// A lane that only knows `finish` (in place, where the frame lies).
    struct InPlace;

    impl FlowLane for InPlace {
        fn process(&mut self, _: u64, _: &mut [PacketBuf], _: &mut [Verdict]) {}

        fn finish(&mut self, _: usize, frame: &[Seg<'_>]) -> Option<usize> {
            Some(frame.iter().map(|s| s.len()).sum())
        }
    }

    /// The default `finish_into` writes a partial frame (resident bytes, rest, tail) into one
    /// buffer or into pieces, then calls `finish`.
    #[test]
    fn the_default_finish_into_writes_the_frame_then_finishes_it() {
        let src: Vec<u8> = (0..600u32).map(|i| (i * 13) as u8).collect();
        let mut p = PacketBuf::new();
        // SAFETY: `src` outlives `p`'s use.
        assert!(unsafe { p.load_partial(&src, PortId(1)) });
        assert!(p.rest().is_some(), "600 bytes load partially");
        assert!(p.push_tail(&[7, 7, 7]));
        let mut want = src.clone();
        want.extend([7, 7, 7]);
        for cuts in [&[][..], &[1, 300, 301][..]] {
            let mut dst = vec![0u8; want.len()];
            let base = dst.as_mut_ptr();
            let mut segs = Vec::new();
            let mut at = 0;
            for &c in cuts.iter().chain([want.len()].iter()) {
                // SAFETY: pieces of `dst`, alive for the call.
                segs.push(unsafe { Seg::from_raw(base.add(at), c - at) });
                at = c;
            }
            assert_eq!(InPlace.finish_into(0, &p, &segs), Some(want.len()));
            assert_eq!(dst, want, "cuts {cuts:?}");
        }
    }
}
