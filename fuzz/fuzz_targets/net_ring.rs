//! Descriptor-chain walking of a vNF port's virtio-net rings over a guest memory image the
//! fuzzer writes: frames taken from the TX ring (headers, lengths, chains) and put back on the
//! RX ring (mergeable buffers, legacy headers), through the ring layer (`SplitRing`); as the
//! vNF's own frames (loaded whole) or as an uplink's (left partly in the TX buffers and copied
//! from there straight into the RX buffers).
//!
//! Input: `log2 size u8 | features u8 (bit 0 VERSION_1, 1 MRG_RXBUF, 2 EVENT_IDX; bit 3: as an
//! uplink, partial frames) | RX
//! next_avail u16 | TX next_avail u16 | extra frame (chunk)`, then the image: the RX ring's
//! descriptors at 0 (avail 0x1000, used 0x2000), the TX ring's at 0x4000 (0x5000, 0x6000).

#![no_main]

use dpacc_backend::fuzzing::{self, RingParams};
use dpacc_fuzz::Reader;
use libfuzzer_sys::fuzz_target;

const VERSION_1: u64 = 1 << 32;
const MRG_RXBUF: u64 = 1 << 15;
const EVENT_IDX: u64 = 1 << 29;

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let size = 1u16 << (r.u8() % 9);
    let f = r.u8();
    let features = (if f & 1 != 0 { VERSION_1 } else { 0 })
        | (if f & 2 != 0 { MRG_RXBUF } else { 0 })
        | (if f & 4 != 0 { EVENT_IDX } else { 0 });
    let ring = |base: u64, next_avail| RingParams {
        size,
        desc: base,
        avail: base + 0x1000,
        used: base + 0x2000,
        next_avail,
        event_idx: features & EVENT_IDX != 0,
    };
    let (rx, tx) = (ring(0, r.u16()), ring(0x4000, r.u16()));
    let extra = r.chunk();
    fuzzing::net_rings(r.rest(), rx, tx, features, f & 8 != 0, extra);
});
