//! Flow tables in Rust terms: the parsed packet key, wildcard matches, actions and flows that
//! a vNF installs in its flow-processor instance. The control protocol
//! ([`super::proto`]) carries these; drivers implement them.

use std::net::{IpAddr, Ipv4Addr};

use super::PortId;

/// EtherType IPv4.
pub const ETH_IPV4: u16 = 0x0800;
/// EtherType IPv6.
pub const ETH_IPV6: u16 = 0x86dd;
/// EtherType 802.1Q.
pub const ETH_VLAN: u16 = 0x8100;
/// IP protocol TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol UDP.
pub const IPPROTO_UDP: u8 = 17;
/// IP protocol ESP.
pub const IPPROTO_ESP: u8 = 50;
/// "No VLAN tag" in [`FlowKey::vlan`].
pub const NO_VLAN: u16 = 0xffff;

/// Everything a match can look at, extracted once per packet (exact-match cache key).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowKey {
    /// Port the packet came in on.
    pub in_port: u16,
    /// EtherType after any VLAN tag.
    pub eth_type: u16,
    /// VLAN id, or [`NO_VLAN`].
    pub vlan: u16,
    /// IP version (4, 6) or 0.
    pub ip_ver: u8,
    /// IP protocol (0 if not IP).
    pub proto: u8,
    /// Source address (IPv4 in the first 4 bytes).
    pub src: [u8; 16],
    /// Destination address.
    pub dst: [u8; 16],
    /// L4 source port (TCP/UDP).
    pub sport: u16,
    /// L4 destination port.
    pub dport: u16,
    /// ESP SPI.
    pub spi: u32,
}

impl std::hash::Hash for FlowKey {
    /// Every field, packed into six words (one hasher call each instead of one per field).
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        let w = |b: &[u8]| u64::from_ne_bytes(b.try_into().expect("8 bytes"));
        h.write_u64(
            u64::from(self.in_port)
                | u64::from(self.eth_type) << 16
                | u64::from(self.vlan) << 32
                | u64::from(self.ip_ver) << 48
                | u64::from(self.proto) << 56,
        );
        h.write_u64(w(&self.src[..8]));
        h.write_u64(w(&self.src[8..]));
        h.write_u64(w(&self.dst[..8]));
        h.write_u64(w(&self.dst[8..]));
        h.write_u64(
            u64::from(self.sport) | u64::from(self.dport) << 16 | u64::from(self.spi) << 32,
        );
    }
}

/// An address with a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Prefix {
    /// Address.
    pub addr: IpAddr,
    /// Prefix length in bits.
    pub len: u8,
}

impl Prefix {
    /// Whether the address `key` of IP version `ver` is inside the prefix.
    pub fn matches(&self, ver: u8, key: &[u8; 16]) -> bool {
        let (bytes, max): ([u8; 16], u8) = match self.addr {
            IpAddr::V4(a) => {
                if ver != 4 {
                    return false;
                }
                let mut b = [0u8; 16];
                b[..4].copy_from_slice(&a.octets());
                (b, 32)
            }
            IpAddr::V6(a) => {
                if ver != 6 {
                    return false;
                }
                (a.octets(), 128)
            }
        };
        let len = self.len.min(max) as usize;
        let (full, rest) = (len / 8, len % 8);
        if bytes[..full] != key[..full] {
            return false;
        }
        rest == 0 || {
            let m = 0xffu8 << (8 - rest);
            bytes[full] & m == key[full] & m
        }
    }
}

/// A wildcard match: every `Some` field must equal the packet's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Match {
    /// In-port.
    pub in_port: Option<u16>,
    /// EtherType.
    pub eth_type: Option<u16>,
    /// VLAN id.
    pub vlan: Option<u16>,
    /// IP source prefix.
    pub src: Option<Prefix>,
    /// IP destination prefix.
    pub dst: Option<Prefix>,
    /// IP protocol.
    pub proto: Option<u8>,
    /// L4 source port.
    pub sport: Option<u16>,
    /// L4 destination port.
    pub dport: Option<u16>,
    /// ESP SPI.
    pub spi: Option<u32>,
}

impl Match {
    /// Whether the packet with key `k` matches.
    pub fn matches(&self, k: &FlowKey) -> bool {
        fn eq<T: PartialEq>(m: Option<T>, v: T) -> bool {
            m.is_none_or(|m| m == v)
        }
        eq(self.in_port, k.in_port)
            && eq(self.eth_type, k.eth_type)
            && eq(self.vlan, k.vlan)
            && eq(self.proto, k.proto)
            && eq(self.sport, k.sport)
            && eq(self.dport, k.dport)
            && eq(self.spi, k.spi)
            && self.src.is_none_or(|p| p.matches(k.ip_ver, &k.src))
            && self.dst.is_none_or(|p| p.matches(k.ip_ver, &k.dst))
    }
}

/// A predefined action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Send out of a port.
    Output(PortId),
    /// Drop.
    Drop,
    /// Rewrite the Ethernet source.
    SetEthSrc([u8; 6]),
    /// Rewrite the Ethernet destination.
    SetEthDst([u8; 6]),
    /// Rewrite the IPv4 source (NAT), fixing IP and TCP/UDP checksums incrementally.
    SetIpv4Src(Ipv4Addr),
    /// Rewrite the IPv4 destination (NAT).
    SetIpv4Dst(Ipv4Addr),
    /// Rewrite the TCP/UDP source port.
    SetL4Src(u16),
    /// Rewrite the TCP/UDP destination port.
    SetL4Dst(u16),
    /// ESP tunnel encapsulation with the outbound SA of this SPI.
    EspEncap(u32),
    /// ESP decapsulation with the inbound SA named by the packet's SPI.
    EspDecap,
    /// Weighted select over the buckets of a group (by 5-tuple hash).
    Group(u32),
    /// Continue in a later table.
    Goto(u8),
}

impl Action {
    /// Whether the action rewrites the packet (so a later table sees different fields).
    pub fn changes_key(&self) -> bool {
        !matches!(
            self,
            Action::Output(_) | Action::Drop | Action::Group(_) | Action::Goto(_)
        )
    }
}

/// A flow to install.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowSpec {
    /// Table (0..TABLES).
    pub table: u8,
    /// Higher wins.
    pub priority: u16,
    /// The vNF's identifier for the flow (delete, stats, events).
    pub cookie: u64,
    /// What it matches.
    pub m: Match,
    /// What it does, in order (a `Goto` must come last).
    pub actions: Vec<Action>,
    /// Expire after this long without packets (ns; 0 = never).
    pub idle_timeout_ns: u64,
    /// Expire this long after installation (ns; 0 = never).
    pub hard_timeout_ns: u64,
    /// Report the expiry to the vNF.
    pub notify_expiry: bool,
}

/// A weighted bucket of a select group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bucket {
    /// Relative weight (> 0).
    pub weight: u32,
    /// Actions (rewrites and one output).
    pub actions: Vec<Action>,
}

/// Counters of one flow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    /// Packets matched.
    pub packets: u64,
    /// Bytes matched (frame lengths on arrival).
    pub bytes: u64,
}

/// Why a flow ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpiryReason {
    /// No packet for the idle timeout.
    Idle,
    /// The hard timeout passed.
    Hard,
}

/// A flow-expired event for the vNF.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expired {
    /// The flow's cookie.
    pub cookie: u64,
    /// Why.
    pub reason: ExpiryReason,
    /// Final counters.
    pub stats: FlowStats,
}

/// One line of a flow listing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowSummary {
    /// Cookie.
    pub cookie: u64,
    /// Table.
    pub table: u8,
    /// Priority.
    pub priority: u16,
    /// Counters.
    pub stats: FlowStats,
}
