//! The inline control protocol: frames with EtherType [`ETHERTYPE`] that a vNF exchanges with
//! its own flow-processor instance over its own port. See `spec/fastpath.md`.
//!
//! Payload (after the 14-byte Ethernet header), network byte order:
//! `version u8 (1) | type u8 | flags u16 (0) | txid u32 | length u32 | body[length]`.
//! Responses echo the request's txid; events (PACKET_IN, FLOW_EXPIRED) carry txid 0.
//! Matches and actions are TLVs: `kind u8 | len u8 | value[len]`. Decoding checks every
//! length and never panics; unknown TLV kinds are errors (never silently ignored).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::flow::{
    Action, Bucket, Expired, ExpiryReason, FlowSpec, FlowStats, FlowSummary, Match, Prefix,
};
use super::{PortId, Usage};

/// IEEE 802 local experimental EtherType 1, used for dpacc control frames.
pub const ETHERTYPE: u16 = 0x88B5;
/// Protocol version of single messages (every peer speaks it).
pub const VERSION: u8 = 1;
/// Version 2: adds [`BATCH`] frames (several messages in one frame), negotiated through
/// HELLO / HELLO_REPLY with [`FLAG_CAPS`]. A BATCH header carries version 2; every other
/// message keeps version 1 (a version-2 header on one is accepted too).
pub const VERSION_2: u8 = 2;
/// Header flag. On HELLO: the sender speaks version 2 and asks for the device's [`Caps`]
/// (a version-1 device ignores flags and answers a plain HELLO_REPLY). On HELLO_REPLY: the
/// [`Caps`] are appended to its body.
pub const FLAG_CAPS: u16 = 0x0001;
/// Message type of a batch (version 2 only): its body is whole messages back to back.
pub const BATCH: u8 = 16;
/// Most messages in one BATCH a device built on this crate accepts.
pub const MAX_BATCH: u16 = 256;
/// Most payload bytes (after the Ethernet header) of a reply BATCH a device sends: a reply
/// frame fits a 1514-byte Ethernet frame.
pub const MAX_REPLY_PAYLOAD: usize = 1500;
/// Bytes of the message header.
pub const HEADER_LEN: usize = 12;
/// The source MAC of frames the backend sends (locally administered).
pub const BACKEND_MAC: [u8; 6] = [0x02, 0xdc, 0xac, 0, 0, 1];

/// Error codes of [`Body::Error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    /// The message could not be decoded.
    Malformed = 1,
    /// Unsupported protocol version.
    BadVersion = 2,
    /// `--max-flows` reached.
    Quota = 3,
    /// Bad table number or goto.
    BadTable = 4,
    /// An action list that cannot run.
    BadActions = 5,
    /// A referenced group, SA or cookie does not exist.
    NotFound = 6,
    /// The crypto driver refused an SA.
    Crypto = 7,
    /// A message type the instance does not accept from a vNF.
    Unsupported = 8,
}

impl ErrorCode {
    fn from_u16(v: u16) -> Option<Self> {
        use ErrorCode::*;
        Some(match v {
            1 => Malformed,
            2 => BadVersion,
            3 => Quota,
            4 => BadTable,
            5 => BadActions,
            6 => NotFound,
            7 => Crypto,
            8 => Unsupported,
            _ => return None,
        })
    }
}

/// Direction of an SA in [`SaSpec`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaDirection {
    /// Encapsulate with these tunnel endpoints.
    Outbound {
        /// Outer source.
        src: Ipv4Addr,
        /// Outer destination.
        dst: Ipv4Addr,
    },
    /// Decapsulate.
    Inbound,
}

/// An ESP SA (AES-GCM, RFC 4106).
#[derive(Clone, PartialEq, Eq)]
pub struct SaSpec {
    /// SPI.
    pub spi: u32,
    /// AES key, 16 or 32 bytes.
    pub key: Vec<u8>,
    /// Salt.
    pub salt: [u8; 4],
    /// Direction.
    pub dir: SaDirection,
}

impl std::fmt::Debug for SaSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaSpec")
            .field("spi", &self.spi)
            .field("key", &"<redacted>")
            .field("dir", &self.dir)
            .finish()
    }
}

impl Drop for SaSpec {
    fn drop(&mut self) {
        // Erase the key material (volatile writes so the compiler keeps them).
        for b in self.key.iter_mut().chain(self.salt.iter_mut()) {
            // SAFETY: `b` is a valid, exclusive reference to a byte.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

/// A message body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// vNF → instance: who are you.
    Hello,
    /// Reply to HELLO.
    HelloReply {
        /// Tables per instance.
        tables: u8,
        /// Flow quota.
        max_flows: u32,
        /// What the instance holds against its quotas, and its memory (absent from replies of
        /// backends that predate it).
        usage: Option<Usage>,
    },
    /// Success (reply to add/delete requests).
    Ok,
    /// Failure, with a reason for people.
    Error {
        /// Machine-readable code.
        code: ErrorCode,
        /// Human-readable text.
        msg: String,
    },
    /// Install or replace a flow.
    FlowAdd(FlowSpec),
    /// Remove every flow with this cookie.
    FlowDelete {
        /// Cookie.
        cookie: u64,
    },
    /// Ask for the counters of the flows with this cookie.
    FlowStatsRequest {
        /// Cookie.
        cookie: u64,
    },
    /// Counters (summed over the flows with the cookie).
    FlowStatsReply {
        /// Cookie.
        cookie: u64,
        /// Counters.
        stats: FlowStats,
    },
    /// Install or replace a select group.
    GroupAdd {
        /// Group id.
        id: u32,
        /// Buckets.
        buckets: Vec<Bucket>,
    },
    /// Install an ESP SA.
    SaAdd(SaSpec),
    /// Send a frame: out of `port`, or (with `through_tables`) through the tables as if it
    /// arrived on `port`.
    PacketOut {
        /// Port.
        port: PortId,
        /// Run the tables instead of outputting directly.
        through_tables: bool,
        /// The Ethernet frame.
        frame: Vec<u8>,
    },
    /// Event: a packet missed the tables.
    PacketIn {
        /// Where it arrived.
        in_port: PortId,
        /// Table of the miss.
        table: u8,
        /// The frame.
        frame: Vec<u8>,
    },
    /// Event: a flow expired.
    FlowExpired(Expired),
    /// List the installed flows, from index `start` (in table, then priority order).
    FlowListRequest {
        /// First index.
        start: u32,
    },
    /// A page of the flow list (at most [`LIST_PAGE`] entries).
    FlowListReply {
        /// Flows installed in all.
        total: u32,
        /// Index of the first entry.
        start: u32,
        /// The entries.
        entries: Vec<FlowSummary>,
    },
}

/// Most entries in one FLOW_LIST_REPLY (keeps replies under a 1500-byte MTU).
pub const LIST_PAGE: usize = 40;

/// A message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Transaction id.
    pub txid: u32,
    /// Body.
    pub body: Body,
}

/// Why a payload could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// Shorter than its lengths say.
    #[error("truncated at byte {0}")]
    Truncated(usize),
    /// Another protocol version.
    #[error("unsupported version {0}")]
    Version(u8),
    /// Unknown message type.
    #[error("unknown message type {0}")]
    Type(u8),
    /// A field with an impossible value.
    #[error("bad field: {0}")]
    Field(&'static str),
    /// A BATCH where one message was expected (a batch inside a batch).
    #[error("a BATCH cannot be nested in a batch")]
    NestedBatch,
}

impl ProtoError {
    /// The error code to answer with.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtoError::Version(_) => ErrorCode::BadVersion,
            ProtoError::Type(_) => ErrorCode::Unsupported,
            _ => ErrorCode::Malformed,
        }
    }
}

mod ty {
    pub const HELLO: u8 = 1;
    pub const HELLO_REPLY: u8 = 2;
    pub const OK: u8 = 3;
    pub const ERROR: u8 = 4;
    pub const FLOW_ADD: u8 = 5;
    pub const FLOW_DELETE: u8 = 6;
    pub const FLOW_STATS: u8 = 7;
    pub const FLOW_STATS_REPLY: u8 = 8;
    pub const GROUP_ADD: u8 = 9;
    pub const SA_ADD: u8 = 10;
    pub const PACKET_OUT: u8 = 11;
    pub const PACKET_IN: u8 = 12;
    pub const FLOW_EXPIRED: u8 = 13;
    pub const FLOW_LIST: u8 = 14;
    pub const FLOW_LIST_REPLY: u8 = 15;
}

// ---------------------------------------------------------------- encoding

fn tlv(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    out.push(kind);
    out.push(value.len() as u8);
    out.extend_from_slice(value);
}

fn prefix_tlv(out: &mut Vec<u8>, v4: u8, v6: u8, p: &Prefix) {
    let mut v = [0u8; 17];
    match p.addr {
        IpAddr::V4(a) => {
            v[..4].copy_from_slice(&a.octets());
            v[4] = p.len;
            tlv(out, v4, &v[..5]);
        }
        IpAddr::V6(a) => {
            v[..16].copy_from_slice(&a.octets());
            v[16] = p.len;
            tlv(out, v6, &v);
        }
    }
}

fn encode_match(out: &mut Vec<u8>, m: &Match) -> u8 {
    let mut n = 0u8;
    let mut put = |out: &mut Vec<u8>, k: u8, v: &[u8]| {
        tlv(out, k, v);
        n += 1;
    };
    if let Some(v) = m.in_port {
        put(out, 1, &v.to_be_bytes());
    }
    if let Some(v) = m.eth_type {
        put(out, 2, &v.to_be_bytes());
    }
    if let Some(v) = m.vlan {
        put(out, 3, &v.to_be_bytes());
    }
    if let Some(p) = &m.src {
        prefix_tlv(out, 4, 6, p);
        n += 1;
    }
    if let Some(p) = &m.dst {
        prefix_tlv(out, 5, 7, p);
        n += 1;
    }
    let mut put2 = |out: &mut Vec<u8>, k: u8, v: &[u8]| {
        tlv(out, k, v);
        n += 1;
    };
    if let Some(v) = m.proto {
        put2(out, 8, &[v]);
    }
    if let Some(v) = m.sport {
        put2(out, 9, &v.to_be_bytes());
    }
    if let Some(v) = m.dport {
        put2(out, 10, &v.to_be_bytes());
    }
    if let Some(v) = m.spi {
        put2(out, 11, &v.to_be_bytes());
    }
    n
}

fn encode_actions(out: &mut Vec<u8>, actions: &[Action]) {
    out.push(actions.len() as u8);
    for a in actions {
        match *a {
            Action::Output(p) => tlv(out, 1, &p.0.to_be_bytes()),
            Action::Drop => tlv(out, 2, &[]),
            Action::SetEthSrc(m) => tlv(out, 3, &m),
            Action::SetEthDst(m) => tlv(out, 4, &m),
            Action::SetIpv4Src(a) => tlv(out, 5, &a.octets()),
            Action::SetIpv4Dst(a) => tlv(out, 6, &a.octets()),
            Action::SetL4Src(p) => tlv(out, 7, &p.to_be_bytes()),
            Action::SetL4Dst(p) => tlv(out, 8, &p.to_be_bytes()),
            Action::EspEncap(s) => tlv(out, 9, &s.to_be_bytes()),
            Action::EspDecap => tlv(out, 10, &[]),
            Action::Group(g) => tlv(out, 11, &g.to_be_bytes()),
            Action::Goto(t) => tlv(out, 12, &[t]),
        }
    }
}

impl Message {
    /// Appends the payload (header and body) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[VERSION, 0, 0, 0]);
        out.extend_from_slice(&self.txid.to_be_bytes());
        out.extend_from_slice(&[0; 4]);
        let body = out.len();
        let t = match &self.body {
            Body::Hello => ty::HELLO,
            Body::HelloReply {
                tables,
                max_flows,
                usage,
            } => {
                out.push(*tables);
                out.extend_from_slice(&max_flows.to_be_bytes());
                if let Some(u) = usage {
                    for v in [
                        u.flows,
                        u.groups,
                        u.max_groups,
                        u.buckets,
                        u.max_buckets,
                        u.sas,
                        u.max_sas,
                    ] {
                        out.extend_from_slice(&v.to_be_bytes());
                    }
                    out.extend_from_slice(&u.max_actions.to_be_bytes());
                    out.extend_from_slice(&u.memory.to_be_bytes());
                    out.extend_from_slice(&u.max_memory.to_be_bytes());
                }
                ty::HELLO_REPLY
            }
            Body::Ok => ty::OK,
            Body::Error { code, msg } => {
                out.extend_from_slice(&(*code as u16).to_be_bytes());
                let m = &msg.as_bytes()[..msg.len().min(1024)];
                out.extend_from_slice(&(m.len() as u16).to_be_bytes());
                out.extend_from_slice(m);
                ty::ERROR
            }
            Body::FlowAdd(f) => {
                out.push(f.table);
                out.extend_from_slice(&f.priority.to_be_bytes());
                out.extend_from_slice(&f.cookie.to_be_bytes());
                out.extend_from_slice(&f.idle_timeout_ns.to_be_bytes());
                out.extend_from_slice(&f.hard_timeout_ns.to_be_bytes());
                out.push(u8::from(f.notify_expiry));
                let at = out.len();
                out.push(0);
                let n = encode_match(out, &f.m);
                out[at] = n;
                encode_actions(out, &f.actions);
                ty::FLOW_ADD
            }
            Body::FlowDelete { cookie } => {
                out.extend_from_slice(&cookie.to_be_bytes());
                ty::FLOW_DELETE
            }
            Body::FlowStatsRequest { cookie } => {
                out.extend_from_slice(&cookie.to_be_bytes());
                ty::FLOW_STATS
            }
            Body::FlowStatsReply { cookie, stats } => {
                out.extend_from_slice(&cookie.to_be_bytes());
                out.extend_from_slice(&stats.packets.to_be_bytes());
                out.extend_from_slice(&stats.bytes.to_be_bytes());
                ty::FLOW_STATS_REPLY
            }
            Body::GroupAdd { id, buckets } => {
                out.extend_from_slice(&id.to_be_bytes());
                out.push(buckets.len() as u8);
                for b in buckets {
                    out.extend_from_slice(&b.weight.to_be_bytes());
                    encode_actions(out, &b.actions);
                }
                ty::GROUP_ADD
            }
            Body::SaAdd(s) => {
                out.extend_from_slice(&s.spi.to_be_bytes());
                match s.dir {
                    SaDirection::Outbound { src, dst } => {
                        out.push(1);
                        out.extend_from_slice(&src.octets());
                        out.extend_from_slice(&dst.octets());
                    }
                    SaDirection::Inbound => {
                        out.push(2);
                        out.extend_from_slice(&[0; 8]);
                    }
                }
                out.extend_from_slice(&s.salt);
                out.push(s.key.len() as u8);
                out.extend_from_slice(&s.key);
                ty::SA_ADD
            }
            Body::PacketOut {
                port,
                through_tables,
                frame,
            } => {
                out.extend_from_slice(&port.0.to_be_bytes());
                out.push(u8::from(*through_tables));
                out.extend_from_slice(frame);
                ty::PACKET_OUT
            }
            Body::PacketIn {
                in_port,
                table,
                frame,
            } => {
                out.extend_from_slice(&in_port.0.to_be_bytes());
                out.push(*table);
                out.extend_from_slice(frame);
                ty::PACKET_IN
            }
            Body::FlowExpired(e) => {
                out.extend_from_slice(&e.cookie.to_be_bytes());
                out.push(match e.reason {
                    ExpiryReason::Idle => 1,
                    ExpiryReason::Hard => 2,
                });
                out.extend_from_slice(&e.stats.packets.to_be_bytes());
                out.extend_from_slice(&e.stats.bytes.to_be_bytes());
                ty::FLOW_EXPIRED
            }
            Body::FlowListRequest { start } => {
                out.extend_from_slice(&start.to_be_bytes());
                ty::FLOW_LIST
            }
            Body::FlowListReply {
                total,
                start,
                entries,
            } => {
                out.extend_from_slice(&total.to_be_bytes());
                out.extend_from_slice(&start.to_be_bytes());
                let n = entries.len().min(LIST_PAGE);
                out.push(n as u8);
                for e in &entries[..n] {
                    out.extend_from_slice(&e.cookie.to_be_bytes());
                    out.push(e.table);
                    out.extend_from_slice(&e.priority.to_be_bytes());
                    out.extend_from_slice(&e.stats.packets.to_be_bytes());
                    out.extend_from_slice(&e.stats.bytes.to_be_bytes());
                }
                ty::FLOW_LIST_REPLY
            }
        };
        out[start + 1] = t;
        let len = (out.len() - body) as u32;
        out[start + 8..start + 12].copy_from_slice(&len.to_be_bytes());
    }

    /// Decodes one payload (after the Ethernet header; trailing Ethernet padding allowed).
    pub fn decode(buf: &[u8]) -> Result<Self, ProtoError> {
        let mut r = Reader { buf, at: 0 };
        let ver = r.u8()?;
        if ver != VERSION && ver != VERSION_2 {
            return Err(ProtoError::Version(ver));
        }
        let t = r.u8()?;
        if t == BATCH {
            return Err(ProtoError::NestedBatch);
        }
        let flags = r.u16()?;
        let txid = r.u32()?;
        let len = r.u32()? as usize;
        let body = r.take(len)?;
        let mut r = Reader { buf: body, at: 0 };
        let b = match t {
            ty::HELLO => Body::Hello,
            ty::HELLO_REPLY => {
                let tables = r.u8()?;
                let max_flows = r.u32()?;
                if flags & FLAG_CAPS != 0 {
                    Caps::read(&mut r)?; // read with [`Caps::of_hello_reply`]
                }
                Body::HelloReply {
                    tables,
                    max_flows,
                    usage: if r.rest_is_empty() {
                        None
                    } else {
                        Some(Usage {
                            flows: r.u32()?,
                            groups: r.u32()?,
                            max_groups: r.u32()?,
                            buckets: r.u32()?,
                            max_buckets: r.u32()?,
                            sas: r.u32()?,
                            max_sas: r.u32()?,
                            max_actions: r.u16()?,
                            memory: r.u64()?,
                            max_memory: r.u64()?,
                        })
                    },
                }
            }
            ty::OK => Body::Ok,
            ty::ERROR => {
                let code = ErrorCode::from_u16(r.u16()?).ok_or(ProtoError::Field("error code"))?;
                let n = usize::from(r.u16()?);
                let msg = String::from_utf8_lossy(r.take(n)?).into_owned();
                Body::Error { code, msg }
            }
            ty::FLOW_ADD => {
                let table = r.u8()?;
                let priority = r.u16()?;
                let cookie = r.u64()?;
                let idle_timeout_ns = r.u64()?;
                let hard_timeout_ns = r.u64()?;
                let notify_expiry = r.bool()?;
                let m = r.matches()?;
                let actions = r.actions()?;
                Body::FlowAdd(FlowSpec {
                    table,
                    priority,
                    cookie,
                    m,
                    actions,
                    idle_timeout_ns,
                    hard_timeout_ns,
                    notify_expiry,
                })
            }
            ty::FLOW_DELETE => Body::FlowDelete { cookie: r.u64()? },
            ty::FLOW_STATS => Body::FlowStatsRequest { cookie: r.u64()? },
            ty::FLOW_STATS_REPLY => Body::FlowStatsReply {
                cookie: r.u64()?,
                stats: FlowStats {
                    packets: r.u64()?,
                    bytes: r.u64()?,
                },
            },
            ty::GROUP_ADD => {
                let id = r.u32()?;
                let n = r.u8()?;
                let mut buckets = Vec::with_capacity(usize::from(n));
                for _ in 0..n {
                    let weight = r.u32()?;
                    buckets.push(Bucket {
                        weight,
                        actions: r.actions()?,
                    });
                }
                Body::GroupAdd { id, buckets }
            }
            ty::SA_ADD => {
                let spi = r.u32()?;
                let d = r.u8()?;
                let src = Ipv4Addr::from(r.u32()?);
                let dst = Ipv4Addr::from(r.u32()?);
                let dir = match d {
                    1 => SaDirection::Outbound { src, dst },
                    2 => SaDirection::Inbound,
                    _ => return Err(ProtoError::Field("SA direction")),
                };
                let salt: [u8; 4] = r.take(4)?.try_into().expect("4 bytes");
                let n = usize::from(r.u8()?);
                if n != 16 && n != 32 {
                    return Err(ProtoError::Field("SA key length (16 or 32)"));
                }
                let key = r.take(n)?.to_vec();
                Body::SaAdd(SaSpec {
                    spi,
                    key,
                    salt,
                    dir,
                })
            }
            ty::PACKET_OUT => Body::PacketOut {
                port: PortId(r.u16()?),
                through_tables: r.bool()?,
                frame: r.rest().to_vec(),
            },
            ty::PACKET_IN => Body::PacketIn {
                in_port: PortId(r.u16()?),
                table: r.u8()?,
                frame: r.rest().to_vec(),
            },
            ty::FLOW_EXPIRED => {
                let cookie = r.u64()?;
                let reason = match r.u8()? {
                    1 => ExpiryReason::Idle,
                    2 => ExpiryReason::Hard,
                    _ => return Err(ProtoError::Field("expiry reason")),
                };
                Body::FlowExpired(Expired {
                    cookie,
                    reason,
                    stats: FlowStats {
                        packets: r.u64()?,
                        bytes: r.u64()?,
                    },
                })
            }
            ty::FLOW_LIST => Body::FlowListRequest { start: r.u32()? },
            ty::FLOW_LIST_REPLY => {
                let total = r.u32()?;
                let start = r.u32()?;
                let n = usize::from(r.u8()?);
                if n > LIST_PAGE {
                    return Err(ProtoError::Field("list page too long"));
                }
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    entries.push(FlowSummary {
                        cookie: r.u64()?,
                        table: r.u8()?,
                        priority: r.u16()?,
                        stats: FlowStats {
                            packets: r.u64()?,
                            bytes: r.u64()?,
                        },
                    });
                }
                Body::FlowListReply {
                    total,
                    start,
                    entries,
                }
            }
            other => return Err(ProtoError::Type(other)),
        };
        if !r.rest().is_empty() {
            return Err(ProtoError::Field("trailing bytes in body"));
        }
        Ok(Message { txid, body: b })
    }
}

// ---------------------------------------------------------------- decoding

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or(ProtoError::Truncated(self.at))?;
        let s = &self.buf[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn rest_is_empty(&self) -> bool {
        self.at >= self.buf.len()
    }
    fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.at..];
        self.at = self.buf.len();
        s
    }
    fn u8(&mut self) -> Result<u8, ProtoError> {
        Ok(self.take(1)?[0])
    }
    fn bool(&mut self) -> Result<bool, ProtoError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(ProtoError::Field("boolean")),
        }
    }
    fn u16(&mut self) -> Result<u16, ProtoError> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn u32(&mut self) -> Result<u32, ProtoError> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, ProtoError> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn tlv(&mut self) -> Result<(u8, &'a [u8]), ProtoError> {
        let k = self.u8()?;
        let n = usize::from(self.u8()?);
        Ok((k, self.take(n)?))
    }

    fn matches(&mut self) -> Result<Match, ProtoError> {
        let n = self.u8()?;
        let mut m = Match::default();
        for _ in 0..n {
            let (k, v) = self.tlv()?;
            let be16 = || -> Result<u16, ProtoError> {
                Ok(u16::from_be_bytes(
                    v.try_into()
                        .map_err(|_| ProtoError::Field("match length"))?,
                ))
            };
            let prefix = |max: u8| -> Result<Prefix, ProtoError> {
                let (addr, len) = match (max, v.len()) {
                    (32, 5) => (IpAddr::V4(Ipv4Addr::new(v[0], v[1], v[2], v[3])), v[4]),
                    (128, 17) => {
                        let a: [u8; 16] = v[..16].try_into().expect("16");
                        (IpAddr::V6(Ipv6Addr::from(a)), v[16])
                    }
                    _ => return Err(ProtoError::Field("prefix length")),
                };
                if len > max {
                    return Err(ProtoError::Field("prefix longer than the address"));
                }
                Ok(Prefix { addr, len })
            };
            match k {
                1 => m.in_port = Some(be16()?),
                2 => m.eth_type = Some(be16()?),
                3 => m.vlan = Some(be16()?),
                4 => m.src = Some(prefix(32)?),
                5 => m.dst = Some(prefix(32)?),
                6 => m.src = Some(prefix(128)?),
                7 => m.dst = Some(prefix(128)?),
                8 => {
                    m.proto = Some(
                        *v.first()
                            .filter(|_| v.len() == 1)
                            .ok_or(ProtoError::Field("match length"))?,
                    )
                }
                9 => m.sport = Some(be16()?),
                10 => m.dport = Some(be16()?),
                11 => {
                    let a: [u8; 4] = v
                        .try_into()
                        .map_err(|_| ProtoError::Field("match length"))?;
                    m.spi = Some(u32::from_be_bytes(a));
                }
                _ => return Err(ProtoError::Field("unknown match field")),
            }
        }
        Ok(m)
    }

    fn actions(&mut self) -> Result<Vec<Action>, ProtoError> {
        let n = self.u8()?;
        let mut out = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            let (k, v) = self.tlv()?;
            let bad = || ProtoError::Field("action length");
            let arr = |n: usize| if v.len() == n { Ok(v) } else { Err(bad()) };
            let a = match k {
                1 => Action::Output(PortId(u16::from_be_bytes(arr(2)?.try_into().expect("2")))),
                2 => {
                    arr(0)?;
                    Action::Drop
                }
                3 => Action::SetEthSrc(arr(6)?.try_into().expect("6")),
                4 => Action::SetEthDst(arr(6)?.try_into().expect("6")),
                5 => Action::SetIpv4Src(Ipv4Addr::from(<[u8; 4]>::try_from(arr(4)?).expect("4"))),
                6 => Action::SetIpv4Dst(Ipv4Addr::from(<[u8; 4]>::try_from(arr(4)?).expect("4"))),
                7 => Action::SetL4Src(u16::from_be_bytes(arr(2)?.try_into().expect("2"))),
                8 => Action::SetL4Dst(u16::from_be_bytes(arr(2)?.try_into().expect("2"))),
                9 => Action::EspEncap(u32::from_be_bytes(arr(4)?.try_into().expect("4"))),
                10 => {
                    arr(0)?;
                    Action::EspDecap
                }
                11 => Action::Group(u32::from_be_bytes(arr(4)?.try_into().expect("4"))),
                12 => Action::Goto(arr(1)?[0]),
                _ => return Err(ProtoError::Field("unknown action")),
            };
            out.push(a);
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------- version 2

/// What a version-2 device offers, in its HELLO_REPLY body right after max_flows (flag
/// [`FLAG_CAPS`]; the usage, if any, follows) as
/// `caps length u8 | version u8 | max_batch u16 | max_frame u16`. Later versions may append
/// fields (a longer caps length); readers skip what they do not know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    /// Highest version the device speaks (2: [`BATCH`]).
    pub version: u8,
    /// Most messages per BATCH it accepts.
    pub max_batch: u16,
    /// Longest control frame it accepts from the vNF (Ethernet header included).
    pub max_frame: u16,
}

const CAPS_LEN: u8 = 5;
const HELLO_REPLY_LEN: usize = 5;

impl Caps {
    fn write(&self, out: &mut Vec<u8>) {
        out.push(CAPS_LEN);
        out.push(self.version);
        out.extend_from_slice(&self.max_batch.to_be_bytes());
        out.extend_from_slice(&self.max_frame.to_be_bytes());
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, ProtoError> {
        let n = r.u8()?;
        if n < CAPS_LEN {
            return Err(ProtoError::Field("capabilities too short"));
        }
        let mut c = Reader {
            buf: r.take(usize::from(n))?,
            at: 0,
        };
        Ok(Caps {
            version: c.u8()?,
            max_batch: c.u16()?,
            max_frame: c.u16()?,
        })
    }

    /// The capabilities appended to a HELLO_REPLY payload; None for a version-1 device's
    /// reply (or anything else).
    pub fn of_hello_reply(payload: &[u8]) -> Option<Self> {
        let h = Header::parse(payload).ok()?;
        if h.ty != ty::HELLO_REPLY || h.flags & FLAG_CAPS == 0 {
            return None;
        }
        let body = payload.get(HEADER_LEN..HEADER_LEN.checked_add(h.len)?)?;
        let mut r = Reader {
            buf: body,
            at: HELLO_REPLY_LEN,
        };
        Caps::read(&mut r).ok()
    }

    /// Puts the capabilities into the HELLO_REPLY `payload` (a device answering a HELLO with
    /// [`FLAG_CAPS`]), right after max_flows: sets the flag and fixes the length. False (nothing changed) if
    /// `payload` is not a plain HELLO_REPLY.
    pub fn append_to_hello_reply(&self, payload: &mut Vec<u8>) -> bool {
        match Header::parse(payload) {
            Ok(h)
                if h.ty == ty::HELLO_REPLY
                    && h.flags & FLAG_CAPS == 0
                    && h.len >= HELLO_REPLY_LEN
                    && payload.len() == HEADER_LEN + h.len => {}
            _ => return false,
        }
        // Right after max_flows, before the usage (a version-2 reader skips them there).
        let mut caps = Vec::with_capacity(1 + usize::from(CAPS_LEN));
        self.write(&mut caps);
        let at = HEADER_LEN + HELLO_REPLY_LEN;
        payload.splice(at..at, caps);
        let flags = FLAG_CAPS.to_be_bytes();
        payload[2..4].copy_from_slice(&flags);
        let len = (payload.len() - HEADER_LEN) as u32;
        payload[8..12].copy_from_slice(&len.to_be_bytes());
        true
    }
}

/// The 12-byte header of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Version (1, or 2 on a [`BATCH`]).
    pub version: u8,
    /// Message type.
    pub ty: u8,
    /// Flags ([`FLAG_CAPS`]).
    pub flags: u16,
    /// Transaction id.
    pub txid: u32,
    /// Body length.
    pub len: usize,
}

impl Header {
    /// Reads the header at the start of `payload` (nothing else is checked).
    pub fn parse(payload: &[u8]) -> Result<Self, ProtoError> {
        let mut r = Reader {
            buf: payload,
            at: 0,
        };
        Ok(Header {
            version: r.u8()?,
            ty: r.u8()?,
            flags: r.u16()?,
            txid: r.u32()?,
            len: r.u32()? as usize,
        })
    }

    /// True for a HELLO that asks for [`Caps`] (a version-2 peer's).
    pub fn asks_caps(&self) -> bool {
        self.ty == ty::HELLO && self.flags & FLAG_CAPS != 0
    }
}

/// Appends a HELLO with [`FLAG_CAPS`] (a version-2 peer's first request) to `out`.
pub fn encode_hello_v2(txid: u32, out: &mut Vec<u8>) {
    let start = out.len();
    Message {
        txid,
        body: Body::Hello,
    }
    .encode(out);
    out[start + 2..start + 4].copy_from_slice(&FLAG_CAPS.to_be_bytes());
}

/// Starts a BATCH with `txid` at the end of `out`: append whole messages
/// ([`Message::encode`]), then close it with [`end_batch`]. Returns where it starts.
pub fn begin_batch(out: &mut Vec<u8>, txid: u32) -> usize {
    let start = out.len();
    out.extend_from_slice(&[VERSION_2, BATCH, 0, 0]);
    out.extend_from_slice(&txid.to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    start
}

/// Closes the BATCH begun at `start` (writes its body length).
pub fn end_batch(out: &mut [u8], start: usize) {
    let len = (out.len() - start - HEADER_LEN) as u32;
    out[start + 8..start + 12].copy_from_slice(&len.to_be_bytes());
}

/// A control payload as it arrived: one message, or a batch of them.
#[derive(Debug)]
pub enum Framed<'a> {
    /// One message (decode it with [`Message::decode`]).
    One(&'a [u8]),
    /// A BATCH.
    Batch {
        /// The batch's own transaction id (errors about the batch as a whole carry it).
        txid: u32,
        /// Its messages, in order.
        messages: BatchMessages<'a>,
    },
}

/// Tells a BATCH from a single message, reading only the header (Ethernet padding after the
/// payload is ignored in both cases).
pub fn framed(payload: &[u8]) -> Result<Framed<'_>, ProtoError> {
    let h = Header::parse(payload)?;
    if h.ty != BATCH {
        return Ok(Framed::One(payload));
    }
    if h.version != VERSION_2 {
        return Err(ProtoError::Version(h.version));
    }
    let end = HEADER_LEN
        .checked_add(h.len)
        .filter(|&e| e <= payload.len())
        .ok_or(ProtoError::Truncated(payload.len()))?;
    Ok(Framed::Batch {
        txid: h.txid,
        messages: BatchMessages {
            buf: &payload[HEADER_LEN..end],
            at: 0,
            done: false,
        },
    })
}

/// The messages of a BATCH body, in order: each item is one whole message (header and body,
/// exactly), or the error that ends the walk (a message running past the batch's end; its
/// byte offset inside the body). Never allocates.
#[derive(Debug)]
pub struct BatchMessages<'a> {
    buf: &'a [u8],
    at: usize,
    done: bool,
}

impl<'a> Iterator for BatchMessages<'a> {
    type Item = Result<&'a [u8], ProtoError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.at == self.buf.len() {
            return None;
        }
        let rest = &self.buf[self.at..];
        let end = Header::parse(rest)
            .ok()
            .and_then(|h| HEADER_LEN.checked_add(h.len))
            .filter(|&e| e <= rest.len());
        let Some(end) = end else {
            self.done = true;
            return Some(Err(ProtoError::Truncated(self.at)));
        };
        self.at += end;
        Some(Ok(&rest[..end]))
    }
}

// ---------------------------------------------------------------- frames

/// Wraps a message in an Ethernet frame `dst | src | ETHERTYPE | payload`.
pub fn encode_frame(dst: [u8; 6], src: [u8; 6], msg: &Message, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&dst);
    out.extend_from_slice(&src);
    out.extend_from_slice(&ETHERTYPE.to_be_bytes());
    msg.encode(out);
}

/// If `frame` is a control frame, its (destination MAC, source MAC, payload).
pub fn parse_frame(frame: &[u8]) -> Option<([u8; 6], [u8; 6], &[u8])> {
    if frame.len() < 14 || u16::from_be_bytes([frame[12], frame[13]]) != ETHERTYPE {
        return None;
    }
    Some((
        frame[0..6].try_into().expect("6"),
        frame[6..12].try_into().expect("6"),
        &frame[14..],
    ))
}

/// Appends a PACKET_OUT payload (header and body) for `frame` to `out`, without building a
/// [`Message`] (no copy of the frame besides the one into `out`).
pub fn encode_packet_out(
    txid: u32,
    port: PortId,
    through_tables: bool,
    frame: &[u8],
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(&[VERSION, ty::PACKET_OUT, 0, 0]);
    out.extend_from_slice(&txid.to_be_bytes());
    out.extend_from_slice(&((frame.len() + 3) as u32).to_be_bytes());
    out.extend_from_slice(&port.0.to_be_bytes());
    out.push(u8::from(through_tables));
    out.extend_from_slice(frame);
}

/// The PACKET_IN frame for a missed packet, to the vNF at `vnf_mac`, written into `out` from
/// byte `at` on (what was there after it is dropped).
pub fn encode_packet_in(
    vnf_mac: [u8; 6],
    in_port: PortId,
    table: u8,
    frame: &[u8],
    out: &mut Vec<u8>,
    at: usize,
) {
    out.truncate(at);
    out.extend_from_slice(&vnf_mac);
    out.extend_from_slice(&BACKEND_MAC);
    out.extend_from_slice(&ETHERTYPE.to_be_bytes());
    out.extend_from_slice(&[VERSION, ty::PACKET_IN, 0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&((frame.len() + 3) as u32).to_be_bytes());
    out.extend_from_slice(&in_port.0.to_be_bytes());
    out.push(table);
    out.extend_from_slice(frame);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Message> {
        let m = Match {
            in_port: Some(1),
            eth_type: Some(0x0800),
            vlan: Some(7),
            src: Some(Prefix {
                addr: "10.0.0.0".parse().unwrap(),
                len: 8,
            }),
            dst: Some(Prefix {
                addr: "2001:db8::".parse().unwrap(),
                len: 32,
            }),
            proto: Some(6),
            sport: Some(1),
            dport: Some(80),
            spi: Some(0x1234),
        };
        let actions = vec![
            Action::SetEthSrc([1, 2, 3, 4, 5, 6]),
            Action::SetEthDst([6, 5, 4, 3, 2, 1]),
            Action::SetIpv4Src(Ipv4Addr::new(1, 2, 3, 4)),
            Action::SetIpv4Dst(Ipv4Addr::new(4, 3, 2, 1)),
            Action::SetL4Src(10),
            Action::SetL4Dst(20),
            Action::EspEncap(9),
            Action::EspDecap,
            Action::Group(3),
            Action::Drop,
            Action::Output(PortId(2)),
            Action::Goto(4),
        ];
        let bodies = vec![
            Body::Hello,
            Body::HelloReply {
                tables: 8,
                max_flows: 1000,
                usage: None,
            },
            Body::HelloReply {
                tables: 8,
                max_flows: 1000,
                usage: Some(Usage {
                    flows: 1,
                    groups: 2,
                    max_groups: 3,
                    buckets: 4,
                    max_buckets: 5,
                    sas: 6,
                    max_sas: 7,
                    max_actions: 8,
                    memory: 9 << 40,
                    max_memory: u64::MAX,
                }),
            },
            Body::Ok,
            Body::Error {
                code: ErrorCode::Quota,
                msg: "flow quota exceeded (2 flows)".into(),
            },
            Body::FlowAdd(FlowSpec {
                table: 1,
                priority: 300,
                cookie: u64::MAX,
                m,
                actions: actions.clone(),
                idle_timeout_ns: 5,
                hard_timeout_ns: 6,
                notify_expiry: true,
            }),
            Body::FlowDelete { cookie: 3 },
            Body::FlowStatsRequest { cookie: 4 },
            Body::FlowStatsReply {
                cookie: 4,
                stats: FlowStats {
                    packets: 9,
                    bytes: 900,
                },
            },
            Body::GroupAdd {
                id: 2,
                buckets: vec![
                    Bucket {
                        weight: 1,
                        actions: vec![Action::Output(PortId(1))],
                    },
                    Bucket {
                        weight: 3,
                        actions: actions[..2].to_vec(),
                    },
                ],
            },
            Body::SaAdd(SaSpec {
                spi: 77,
                key: vec![1; 16],
                salt: [1, 2, 3, 4],
                dir: SaDirection::Outbound {
                    src: Ipv4Addr::new(192, 0, 2, 1),
                    dst: Ipv4Addr::new(192, 0, 2, 2),
                },
            }),
            Body::SaAdd(SaSpec {
                spi: 78,
                key: vec![2; 32],
                salt: [0; 4],
                dir: SaDirection::Inbound,
            }),
            Body::PacketOut {
                port: PortId(1),
                through_tables: true,
                frame: vec![0xab; 60],
            },
            Body::PacketIn {
                in_port: PortId(2),
                table: 0,
                frame: vec![0xcd; 64],
            },
            Body::FlowExpired(Expired {
                cookie: 5,
                reason: ExpiryReason::Idle,
                stats: FlowStats {
                    packets: 1,
                    bytes: 2,
                },
            }),
        ];
        bodies
            .into_iter()
            .enumerate()
            .map(|(i, body)| Message {
                txid: i as u32 + 100,
                body,
            })
            .collect()
    }

    #[test]
    fn every_message_round_trips_and_survives_ethernet_padding() {
        for m in samples() {
            let mut out = Vec::new();
            encode_frame([2; 6], BACKEND_MAC, &m, &mut out);
            let (dst, src, payload) = parse_frame(&out).unwrap();
            assert_eq!((dst, src), ([2; 6], BACKEND_MAC));
            assert_eq!(Message::decode(payload).unwrap(), m);
            let mut padded = payload.to_vec();
            padded.extend_from_slice(&[0; 30]);
            assert_eq!(Message::decode(&padded).unwrap(), m, "{m:?}");
        }
    }

    #[test]
    fn truncation_and_corruption_are_errors_never_panics() {
        for m in samples() {
            let mut p = Vec::new();
            m.encode(&mut p);
            for cut in 0..p.len() {
                assert!(Message::decode(&p[..cut]).is_err(), "{m:?} cut at {cut}");
            }
            for i in 0..p.len() {
                for x in [0x01u8, 0x80, 0xff] {
                    let mut q = p.clone();
                    q[i] ^= x;
                    let _ = Message::decode(&q); // may decode to something else; must not panic
                }
            }
        }
        assert_eq!(
            Message::decode(&[3, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(ProtoError::Version(3))
        );
        // Version 2 is accepted on a single message; a BATCH is not one.
        assert_eq!(
            Message::decode(&[2, 1, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0]),
            Ok(Message {
                txid: 9,
                body: Body::Hello
            })
        );
        assert_eq!(
            Message::decode(&[2, BATCH, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0]),
            Err(ProtoError::NestedBatch)
        );
        assert_eq!(
            Message::decode(&[1, 99, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(ProtoError::Type(99))
        );
        assert!(parse_frame(&[0; 13]).is_none());
    }

    /// A BATCH of every sample message splits back into them, padding after it ignored;
    /// every cut of it ends the walk with an error at the cut message, never a panic.
    #[test]
    fn batches_split_into_their_messages() {
        let msgs = samples();
        let mut p = Vec::new();
        let s = begin_batch(&mut p, 42);
        for m in &msgs {
            m.encode(&mut p);
        }
        end_batch(&mut p, s);
        let whole = p.len();
        p.extend_from_slice(&[0; 20]);
        let Framed::Batch { txid, messages } = framed(&p).unwrap() else {
            panic!("not a batch")
        };
        assert_eq!(txid, 42);
        let got: Vec<Message> = messages
            .map(|m| Message::decode(m.unwrap()).unwrap())
            .collect();
        assert_eq!(got, msgs);
        for cut in 0..whole {
            let mut q = p[..whole].to_vec();
            // Claim only `cut` body bytes: the walk stops at the message cut short.
            let body = cut.saturating_sub(HEADER_LEN) as u32;
            q[8..12].copy_from_slice(&body.to_be_bytes());
            match framed(&q) {
                Ok(Framed::Batch { messages, .. }) => {
                    let items: Vec<_> = messages.collect();
                    let ok = items.iter().take_while(|i| i.is_ok()).count();
                    assert!(ok <= msgs.len());
                    assert!(items.len() - ok <= 1, "one error ends the walk");
                }
                other => panic!("{other:?}"),
            }
            assert!(framed(&p[..cut]).is_err() || cut >= whole);
        }
        // A BATCH needs version 2.
        let mut v1 = p.clone();
        v1[0] = VERSION;
        assert_eq!(framed(&v1).unwrap_err(), ProtoError::Version(1));
        // A single message is one.
        let mut one = Vec::new();
        msgs[0].encode(&mut one);
        assert!(matches!(framed(&one), Ok(Framed::One(x)) if x == &one[..]));
    }

    /// HELLO with CAPS; the capabilities appended to HELLO_REPLY, read back, skipped by the
    /// decoder; nothing appended to anything else.
    #[test]
    fn capabilities_ride_on_hello() {
        let mut h = Vec::new();
        encode_hello_v2(5, &mut h);
        assert!(Header::parse(&h).unwrap().asks_caps());
        assert_eq!(Message::decode(&h).unwrap().body, Body::Hello);
        let caps = Caps {
            version: 2,
            max_batch: 256,
            max_frame: 9216,
        };
        let mut r = Vec::new();
        Message {
            txid: 5,
            body: Body::HelloReply {
                tables: 8,
                max_flows: 7,
                usage: None,
            },
        }
        .encode(&mut r);
        assert_eq!(Caps::of_hello_reply(&r), None);
        assert!(caps.append_to_hello_reply(&mut r));
        assert!(!caps.append_to_hello_reply(&mut r), "twice");
        assert_eq!(Caps::of_hello_reply(&r), Some(caps));
        assert_eq!(
            Message::decode(&r).unwrap().body,
            Body::HelloReply {
                tables: 8,
                max_flows: 7,
                usage: None
            }
        );
        // A later version's longer capabilities: the known fields still read.
        let mut longer = r.clone();
        longer[HEADER_LEN + 5] = 9;
        longer.extend_from_slice(&[1, 2, 3, 4]);
        let n = (longer.len() - HEADER_LEN) as u32;
        longer[8..12].copy_from_slice(&n.to_be_bytes());
        assert_eq!(Caps::of_hello_reply(&longer), Some(caps));
        let mut ok = Vec::new();
        Message {
            txid: 1,
            body: Body::Ok,
        }
        .encode(&mut ok);
        assert!(!caps.append_to_hello_reply(&mut ok));
        for cut in 0..r.len() {
            assert!(Message::decode(&r[..cut]).is_err());
            let _ = Caps::of_hello_reply(&r[..cut]);
        }
    }
}
