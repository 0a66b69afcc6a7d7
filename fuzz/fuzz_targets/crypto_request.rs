//! virtio-crypto request parsing: one data or control request (header, IV, lengths, keys...)
//! in a two-descriptor chain, or QEMU's CREATE_CRYPTO_SESSION payload. Session ids
//! `1 << 32 | 0..7` name live sessions of every kind (see `fuzzing::session_id`).
//!
//! Input: `kind u8 (0 data, 1 control, 2 QEMU session) | writable bytes u16 | request`.

#![no_main]

use dpacc_backend::fuzzing::{self, CryptoRequest};
use dpacc_fuzz::Reader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let kind = match r.u8() % 3 {
        0 => CryptoRequest::Data,
        1 => CryptoRequest::Control,
        _ => CryptoRequest::QemuSession,
    };
    let writable = u32::from(r.u16());
    fuzzing::crypto_request(kind, r.rest(), writable);
});
