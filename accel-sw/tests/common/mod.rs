//! Helpers shared by the integration tests.
#![allow(dead_code)]

use dpacc_spec::{
    run_sync, ChainRanges, CryptoDriver, CryptoError, CryptoOp, Iv, Seg, SessionHandle,
    SessionParams,
};
use dpacc_sw::SwDriver;

pub fn h(s: &str) -> Vec<u8> {
    hex::decode(s.replace([' ', '\n'], "")).unwrap()
}

pub fn session(p: SessionParams<'_>) -> SessionHandle {
    SwDriver::new().create_session(&p).expect("session")
}

/// Splits `buf` into writable segments at the given cut points (clamped, any order).
pub fn split_mut<'a>(buf: &'a mut [u8], cuts: &[usize]) -> Vec<Seg<'a>> {
    let mut cuts: Vec<usize> = cuts.iter().map(|&c| c.min(buf.len())).collect();
    cuts.sort_unstable();
    let mut out = Vec::new();
    let mut rest = buf;
    let mut at = 0;
    for c in cuts {
        let (a, b) = rest.split_at_mut(c - at);
        out.push(Seg::from_mut(a));
        rest = b;
        at = c;
    }
    out.push(Seg::from_mut(rest));
    out
}

/// Read-only version of [`split_mut`].
pub fn split<'a>(buf: &'a [u8], cuts: &[usize]) -> Vec<Seg<'a>> {
    let mut cuts: Vec<usize> = cuts.iter().map(|&c| c.min(buf.len())).collect();
    cuts.sort_unstable();
    let mut out = Vec::new();
    let mut at = 0;
    for c in cuts {
        out.push(Seg::from_ref(&buf[at..c]));
        at = c;
    }
    out.push(Seg::from_ref(&buf[at..]));
    out
}

/// One operation on a fresh queue.
#[allow(clippy::too_many_arguments)]
pub fn run(
    s: &SessionHandle,
    iv: &[u8],
    src: &[Seg<'_>],
    dst: &[Seg<'_>],
    aad: &[Seg<'_>],
    digest: &[Seg<'_>],
    chain: ChainRanges,
) -> Result<(), CryptoError> {
    let mut q = SwDriver::new().open_queue(4).unwrap();
    let op = CryptoOp {
        session: s,
        iv: Iv::new(iv)?,
        src,
        dst,
        aad,
        digest,
        chain,
        user_data: 7,
    };
    run_sync(q.as_mut(), &op)
}

/// Cipher/AEAD out of place, contiguous: returns (output, tag or digest).
pub fn oneshot(
    s: &SessionHandle,
    iv: &[u8],
    input: &[u8],
    aad: &[u8],
    tag_in: &[u8],
    digest_len: usize,
) -> Result<(Vec<u8>, Vec<u8>), CryptoError> {
    let mut out = vec![0u8; input.len()];
    let mut dig = tag_in.to_vec();
    dig.resize(digest_len.max(tag_in.len()), 0);
    let src = [Seg::from_ref(input)];
    let dst = [Seg::from_mut(&mut out)];
    let aad_s = [Seg::from_ref(aad)];
    let dig_s = [Seg::from_mut(&mut dig)];
    run(s, iv, &src, &dst, &aad_s, &dig_s, ChainRanges::default())?;
    Ok((out, dig))
}

/// Hash/MAC of `data`.
pub fn digest(s: &SessionHandle, data: &[u8], len: usize) -> Result<Vec<u8>, CryptoError> {
    let mut dig = vec![0u8; len];
    let src = [Seg::from_ref(data)];
    let dig_s = [Seg::from_mut(&mut dig)];
    run(s, &[], &src, &[], &[], &dig_s, ChainRanges::default())?;
    Ok(dig)
}
