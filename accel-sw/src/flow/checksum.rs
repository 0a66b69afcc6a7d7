//! Internet checksums: full (RFC 1071) and incremental updates (RFC 1624).

/// One's-complement sum of `data` (big-endian 16-bit words, odd byte padded) added to `acc`.
pub fn sum(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [b] = chunks.remainder() {
        acc += u32::from(*b) << 8;
    }
    acc
}

/// Folds a sum into the 16-bit checksum value (complemented).
pub fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// RFC 1624 eqn. 3: the checksum `hc` after a 16-bit field changed from `old` to `new`.
pub fn update16(hc: u16, old: u16, new: u16) -> u16 {
    let acc = u32::from(!hc) + u32::from(!old) + u32::from(new);
    fold(acc)
}

/// As [`update16`] for a 32-bit field (an IPv4 address).
pub fn update32(hc: u16, old: [u8; 4], new: [u8; 4]) -> u16 {
    let hc = update16(
        hc,
        u16::from_be_bytes([old[0], old[1]]),
        u16::from_be_bytes([new[0], new[1]]),
    );
    update16(
        hc,
        u16::from_be_bytes([old[2], old[3]]),
        u16::from_be_bytes([new[2], new[3]]),
    )
}

/// The IPv4 header checksum of `hdr` (its checksum field is treated as zero).
pub fn ipv4_header(hdr: &[u8]) -> u16 {
    let mut acc = sum(&hdr[..10], 0);
    acc = sum(&hdr[12..], acc);
    fold(acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example_and_incremental_agree_with_full() {
        // RFC 1071 section 3 example words: 0001 f203 f4f5 f6f7 -> sum ddf2, checksum 220d.
        assert_eq!(
            fold(sum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7], 0)),
            0x220d
        );
        let mut h = [
            0x45, 0, 0, 0x54, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 192, 168, 1, 7,
        ];
        let c = ipv4_header(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(fold(sum(&h, 0)), 0, "a correct header sums to zero");
        let new = [172, 16, 9, 200];
        let inc = update32(c, [192, 168, 1, 7], new);
        h[16..20].copy_from_slice(&new);
        assert_eq!(inc, ipv4_header(&h));
    }
}
