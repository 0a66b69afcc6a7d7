//! Chained cipher + hash/MAC operations (IPsec ESP with CBC/CTR and HMAC).

use dpacc_spec::{sg_len, ChainOrder, ChainRanges, CryptoError, Iv, Seg};

use crate::cipher::CipherKey;
use crate::digest::AuthKey;

/// A chain session's halves.
pub(crate) struct ChainKey {
    pub(crate) order: ChainOrder,
    pub(crate) cipher: CipherKey,
    pub(crate) auth: AuthKey,
    pub(crate) digest_len: usize,
}

/// `offset..offset + len` as usize, if it ends within `total`.
fn range(offset: u32, len: u32, total: usize) -> Result<(usize, usize), CryptoError> {
    let (o, l) = (offset as usize, len as usize);
    match o.checked_add(l) {
        Some(end) if end <= total => Ok((o, l)),
        _ => Err(CryptoError::InvalidDataLength),
    }
}

impl ChainKey {
    /// Runs one chained operation: `CipherThenHash` ciphers `src` into `dst` then hashes `aad`
    /// and the auth range of `dst`; `HashThenCipher` hashes `aad` and the auth range of `src`
    /// first. Bytes outside the cipher range are copied unchanged. The digest goes to `digest`.
    ///
    /// # Safety
    /// `src`, `aad` valid for reads; `dst`, `digest` valid for writes; `src`/`dst` the same
    /// memory or disjoint; nothing overlaps `scratch`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn run(
        &self,
        iv: &Iv,
        ranges: &ChainRanges,
        src: &[Seg<'_>],
        dst: &[Seg<'_>],
        aad: &[Seg<'_>],
        digest: &[Seg<'_>],
        scratch: &mut [u8],
    ) -> Result<(), CryptoError> {
        let total = sg_len(src);
        let (c_off, c_len) = range(ranges.cipher_offset, ranges.cipher_len, total)?;
        let (a_off, a_len) = range(ranges.auth_offset, ranges.auth_len, total)?;
        let state = self.cipher.check(iv, c_len)?;
        if sg_len(dst) < total || sg_len(digest) < self.digest_len {
            return Err(CryptoError::BufferTooSmall);
        }
        let cipher = |scratch: &mut [u8]| {
            let c_end = c_off + c_len;
            // SAFETY: readable `src`, writable `dst`, same memory or disjoint, not overlapping
            // `scratch` (caller); all ranges are within `total` (checked above).
            unsafe {
                crate::sg::copy(src, dst, 0, c_off);
                crate::sg::copy(src, dst, c_end, total - c_end);
                self.cipher.run(state, src, dst, c_off, c_len, scratch);
            }
        };
        match self.order {
            ChainOrder::CipherThenHash => {
                cipher(scratch);
                // SAFETY: `dst` was just written and is readable now; `digest` writable.
                unsafe {
                    self.auth
                        .run(aad, dst, a_off, a_len, digest, self.digest_len)
                };
            }
            ChainOrder::HashThenCipher => {
                // SAFETY: readable `aad`/`src`, writable `digest` (caller).
                unsafe {
                    self.auth
                        .run(aad, src, a_off, a_len, digest, self.digest_len)
                };
                cipher(scratch);
            }
        }
        Ok(())
    }
}
