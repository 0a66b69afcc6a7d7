//! Packet parsing into a flow key (the key and match types are in `dpacc_spec::fastpath::flow`).

pub use dpacc_spec::fastpath::flow::{
    FlowKey, Match, Prefix, ETH_IPV4, ETH_IPV6, ETH_VLAN, IPPROTO_ESP, IPPROTO_TCP, IPPROTO_UDP,
    NO_VLAN,
};

/// Offsets found while parsing (for rewrites).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    /// Start of the L3 header.
    pub l3: usize,
    /// Start of the L4 header (0 if none).
    pub l4: usize,
}

/// Parses an Ethernet frame. Short or malformed headers yield a key with only what was
/// readable (never a panic). Inlined into the batch loop: see `one` in the flow module.
#[inline(always)]
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
            k.src = v4_field(&ip[12..16]);
            k.dst = v4_field(&ip[16..20]);
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

/// An IPv4 address (4 bytes of `b`) as a key's 16-byte address field, the address first,
/// zeros after: built as one 128-bit value, so that the field is one register (or one
/// 16-byte store) when the batch loop compares it with the previous packet's key. Written as
/// the address's 4-byte store beside the zeroed field's other stores, it was read back by the
/// compare's 16-byte load, which cannot be forwarded from several smaller stores: it waited
/// until the store buffer had drained (6 % of the worker at 64 B, issue 12 pass o).
#[inline(always)]
fn v4_field(b: &[u8]) -> [u8; 16] {
    let a = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    #[cfg(target_arch = "x86_64")]
    {
        // A vector (`movd`), not a 128-bit integer: the compiler keeps an integer in two
        // 64-bit registers and stores it as two halves, which the 16-byte load cannot be
        // forwarded from either.
        use std::arch::x86_64::_mm_cvtsi32_si128;
        // SAFETY: SSE2 is part of the x86_64 baseline; `__m128i` and `[u8; 16]` have the same
        // size and every bit pattern is valid for both (lane 0 first: the address's bytes in
        // order, then zeros).
        unsafe { std::mem::transmute(_mm_cvtsi32_si128(a.to_le() as i32)) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    u128::from(a).to_le_bytes()
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
        // IPv4 addresses first in the 16-byte fields, zeros after (built as one vector).
        let mut want = [0u8; 16];
        want[..4].copy_from_slice(&[10, 0, 0, 1]);
        assert_eq!(k.src, want);
        want[..4].copy_from_slice(&[192, 168, 7, 9]);
        assert_eq!(k.dst, want);
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
