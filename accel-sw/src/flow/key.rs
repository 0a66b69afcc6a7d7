//! Packet parsing into a flow key, and wildcard matches over keys.

use std::net::IpAddr;

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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
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

/// Offsets found while parsing (for rewrites).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    /// Start of the L3 header.
    pub l3: usize,
    /// Start of the L4 header (0 if none).
    pub l4: usize,
}

/// Parses an Ethernet frame. Short or malformed headers yield a key with only what was
/// readable (never a panic).
pub fn parse(frame: &[u8], in_port: u16) -> (FlowKey, Layout) {
    let mut k = FlowKey {
        in_port,
        vlan: NO_VLAN,
        ..FlowKey::default()
    };
    let mut lay = Layout::default();
    if frame.len() < 14 {
        return (k, lay);
    }
    let mut et = u16::from_be_bytes([frame[12], frame[13]]);
    let mut off = 14;
    if et == ETH_VLAN && frame.len() >= 18 {
        k.vlan = u16::from_be_bytes([frame[14], frame[15]]) & 0x0fff;
        et = u16::from_be_bytes([frame[16], frame[17]]);
        off = 18;
    }
    k.eth_type = et;
    lay.l3 = off;
    let ip = &frame[off..];
    let (proto, l4) = match et {
        ETH_IPV4 if ip.len() >= 20 && ip[0] >> 4 == 4 => {
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            if ihl < 20 || ip.len() < ihl {
                return (k, lay);
            }
            k.ip_ver = 4;
            k.src[..4].copy_from_slice(&ip[12..16]);
            k.dst[..4].copy_from_slice(&ip[16..20]);
            // Later fragments carry no L4 header.
            let frag_off = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff;
            if frag_off != 0 {
                k.proto = ip[9];
                return (k, lay);
            }
            (ip[9], off + ihl)
        }
        ETH_IPV6 if ip.len() >= 40 && ip[0] >> 4 == 6 => {
            k.ip_ver = 6;
            k.src.copy_from_slice(&ip[8..24]);
            k.dst.copy_from_slice(&ip[24..40]);
            (ip[6], off + 40)
        }
        _ => return (k, lay),
    };
    k.proto = proto;
    let l4h = &frame[l4..];
    match proto {
        IPPROTO_TCP | IPPROTO_UDP if l4h.len() >= 8 => {
            k.sport = u16::from_be_bytes([l4h[0], l4h[1]]);
            k.dport = u16::from_be_bytes([l4h[2], l4h[3]]);
            lay.l4 = l4;
        }
        IPPROTO_ESP if l4h.len() >= 8 => {
            k.spi = u32::from_be_bytes([l4h[0], l4h[1], l4h[2], l4h[3]]);
            lay.l4 = l4;
        }
        _ => {}
    }
    (k, lay)
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
    fn matches(&self, ver: u8, key: &[u8; 16]) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn udp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 8 + 4];
        f[12..14].copy_from_slice(&ETH_IPV4.to_be_bytes());
        f[14] = 0x45;
        f[16..18].copy_from_slice(&(20u16 + 12).to_be_bytes());
        f[22] = 64;
        f[23] = IPPROTO_UDP;
        f[26..30].copy_from_slice(&src);
        f[30..34].copy_from_slice(&dst);
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[36..38].copy_from_slice(&dport.to_be_bytes());
        f
    }

    #[test]
    fn parses_and_matches_prefixes_ports_and_truncation() {
        let f = udp4([10, 0, 0, 1], [192, 168, 7, 9], 1234, 53);
        let (k, lay) = parse(&f, 3);
        assert_eq!(
            (k.in_port, k.ip_ver, k.proto, k.sport, k.dport),
            (3, 4, 17, 1234, 53)
        );
        assert_eq!((lay.l3, lay.l4), (14, 34));
        let m = Match {
            dst: Some(Prefix {
                addr: "192.168.0.0".parse().unwrap(),
                len: 16,
            }),
            proto: Some(IPPROTO_UDP),
            dport: Some(53),
            ..Match::default()
        };
        assert!(m.matches(&k));
        let narrow = Match {
            dst: Some(Prefix {
                addr: "192.168.6.0".parse().unwrap(),
                len: 23,
            }),
            ..Match::default()
        };
        assert!(narrow.matches(&k), "192.168.7.9 is in 192.168.6.0/23");
        let v6 = Match {
            dst: Some(Prefix {
                addr: "::".parse().unwrap(),
                len: 0,
            }),
            ..Match::default()
        };
        assert!(!v6.matches(&k), "an IPv6 prefix never matches IPv4");
        for cut in 0..f.len() {
            let _ = parse(&f[..cut], 0); // never panics
        }
    }
}
