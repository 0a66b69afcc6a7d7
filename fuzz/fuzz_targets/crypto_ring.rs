//! Descriptor-chain walking of the virtio-crypto data and control queues over a guest memory
//! image the fuzzer writes: rings, descriptor tables (direct and indirect), requests, buffers.
//!
//! Input: `control u8 | log2 size u8 | desc u16 | avail u16 | used u16 | next_avail u16 |
//! event_idx u8`, then the image (guest-physical 0..64 KiB).

#![no_main]

use dpacc_backend::fuzzing::{self, RingParams, IMAGE};
use dpacc_fuzz::Reader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let control = r.u8() & 1 != 0;
    let size = 1u16 << (r.u8() % 9);
    let mut addr = || u64::from(r.u16()) % IMAGE as u64;
    let (desc, avail, used) = (addr(), addr(), addr());
    let next_avail = r.u16();
    let event_idx = r.u8() & 1 != 0;
    fuzzing::crypto_ring(
        r.rest(),
        RingParams {
            size,
            desc,
            avail,
            used,
            next_avail,
            event_idx,
        },
        control,
    );
});
