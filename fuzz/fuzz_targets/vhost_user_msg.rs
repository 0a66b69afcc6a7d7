//! The vhost-user message decoder: framing of a frontend's byte stream (header, payload size,
//! flags) and the SET_MEM_TABLE payload against real memfds (an accepted table must be
//! readable everywhere: a region past the end of its file would fault here).
//!
//! Input: `mode u8`; even: the rest is the stream; odd: `files u8 (0..9)`, per file
//! `size in pages u8 | sealed u8`, then the SET_MEM_TABLE payload.

#![no_main]

use dpacc_backend::fuzzing;
use dpacc_fuzz::Reader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    if r.u8() % 2 == 0 {
        fuzzing::decode_messages(r.rest());
        return;
    }
    let n = r.u8() % 10;
    let files: Vec<(usize, bool)> = (0..n)
        .map(|_| (usize::from(r.u8()) * 4096, r.u8() & 1 != 0))
        .collect();
    fuzzing::memory_table(r.rest(), &files);
});
