//! AES-GCM and ChaCha20-Poly1305 over `ring`.
//!
//! Chosen by measurement (seal in place, 8-byte AAD, this 2-core AVX-512/VAES machine, release
//! build, ring 0.17.14 vs aes-gcm 0.11.1 / chacha20poly1305 0.11.0):
//!
//! | | 64 B | 1 KiB | 16 KiB |
//! |---|---|---|---|
//! | AES-256-GCM ring | 0.78 GB/s | 5.05 GB/s | 8.62 GB/s |
//! | AES-256-GCM RustCrypto | 0.28 GB/s | 1.70 GB/s | 2.44 GB/s |
//! | ChaCha20-Poly1305 ring | 0.38 GB/s | 1.79 GB/s | 2.64 GB/s |
//! | ChaCha20-Poly1305 RustCrypto | 0.04 GB/s | 0.46 GB/s | 1.29 GB/s |
//!
//! ring is 2.8–3.5× faster for GCM and 2–10× for ChaCha20-Poly1305. ring does not zeroize its
//! key schedule, so [`RingKey`] keeps it in a `MaybeUninit` and zeroizes those bytes itself.
//!
//! ring needs contiguous buffers: a single-segment `dst` is sealed/opened in place (after a copy
//! from `src` when out of place); scattered data goes through the queue's bounce buffer. The
//! AAD and the tag are always copied; the data is the one thing ring sees in guest memory
//! (docs/decisions/0005-guest-memory-access.md says why that is acceptable).

use std::mem::MaybeUninit;

use dpacc_spec::{sg_len, AeadAlg, CryptoError, Direction, Iv, Seg};
use ring::aead::{
    Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_128_GCM, AES_256_GCM, CHACHA20_POLY1305,
};
use zeroize::Zeroize;

use crate::sg;

/// Tag length of both AEADs.
pub(crate) const TAG_LEN: usize = 16;
/// Nonce length of both AEADs.
const NONCE_LEN: usize = 12;

/// A ring AEAD key whose memory is zeroized on drop.
struct RingKey {
    // Invariant: initialized from construction until `drop`.
    key: MaybeUninit<LessSafeKey>,
}

impl RingKey {
    fn get(&self) -> &LessSafeKey {
        // SAFETY: initialized in `AeadKey::new` and only de-initialized in `drop`.
        unsafe { self.key.assume_init_ref() }
    }
}

impl Drop for RingKey {
    fn drop(&mut self) {
        // SAFETY: initialized (invariant) and never used again after this.
        unsafe { self.key.assume_init_drop() };
        // `MaybeUninit` has no validity invariant, so overwriting its bytes is sound.
        self.key.zeroize();
    }
}

/// An AEAD session's key and direction.
pub(crate) struct AeadKey {
    dir: Direction,
    key: RingKey,
}

/// Buffers of the queue an AEAD operation may use.
pub(crate) struct AeadScratch<'a> {
    /// Bounce buffer for scattered data.
    pub data: &'a mut [u8],
    /// Bounce buffer for scattered AAD.
    pub aad: &'a mut [u8],
}

impl AeadKey {
    /// Expands `key` for `alg`.
    pub(crate) fn new(alg: AeadAlg, dir: Direction, key: &[u8]) -> Result<Self, CryptoError> {
        let algo = match (alg, key.len()) {
            (AeadAlg::AesGcm, 16) => &AES_128_GCM,
            (AeadAlg::AesGcm, 32) => &AES_256_GCM,
            (AeadAlg::ChaCha20Poly1305, 32) => &CHACHA20_POLY1305,
            _ => return Err(CryptoError::InvalidKeyLength),
        };
        let unbound = UnboundKey::new(algo, key).map_err(|_| CryptoError::InvalidKeyLength)?;
        Ok(Self {
            dir,
            key: RingKey {
                key: MaybeUninit::new(LessSafeKey::new(unbound)),
            },
        })
    }

    /// Runs one AEAD operation (see the `CryptoOp` table).
    ///
    /// # Safety
    /// `src`, `aad` and (on decrypt) `digest` valid for reads; `dst` and (on encrypt) `digest`
    /// valid for writes; `src`/`dst` the same memory or disjoint; nothing overlaps `scratch`.
    pub(crate) unsafe fn run(
        &self,
        iv: &Iv,
        src: &[Seg<'_>],
        dst: &[Seg<'_>],
        aad: &[Seg<'_>],
        digest: &[Seg<'_>],
        scratch: AeadScratch<'_>,
    ) -> Result<(), CryptoError> {
        if iv.as_slice().len() != NONCE_LEN {
            return Err(CryptoError::InvalidIvLength);
        }
        let nonce = || {
            Nonce::try_assume_unique_for_key(iv.as_slice())
                .map_err(|_| CryptoError::InvalidIvLength)
        };
        let len = sg_len(src);
        if sg_len(dst) < len || sg_len(digest) < TAG_LEN {
            return Err(CryptoError::BufferTooSmall);
        }
        // The AAD is copied (it is small: 8 bytes for ESP), so no reference to it is formed
        // over memory a guest may write (docs/decisions/0005-guest-memory-access.md).
        let aad_bytes = scratch
            .aad
            .get_mut(..sg_len(aad))
            .ok_or(CryptoError::InvalidDataLength)?;
        // SAFETY: readable `aad`, disjoint from our scratch.
        unsafe { sg::gather(aad, 0, aad_bytes) };
        let aad_bytes: &[u8] = aad_bytes;
        let aad = Aad::from(aad_bytes);
        let key = self.key.get();

        // Where the transformation happens: `dst` itself when it is one segment, else the bounce
        // buffer.
        let direct = match sg::single(dst) {
            Some(d) if d.len() >= len => Some(d),
            _ => None,
        };
        let scattered = direct.is_none();
        let buf: &mut [u8] = match direct {
            Some(d) => {
                // SAFETY: `dst` is writable and nothing else references it during the call
                // (caller); `src` is readable and either the same memory (no copy) or disjoint,
                // and `copy` tolerates overlap anyway.
                unsafe {
                    sg::copy(src, dst, 0, len);
                    std::slice::from_raw_parts_mut(d.ptr(), len)
                }
            }
            None => {
                let b = scratch
                    .data
                    .get_mut(..len)
                    .ok_or(CryptoError::InvalidDataLength)?;
                // SAFETY: readable `src`, disjoint from our scratch.
                unsafe { sg::gather(src, 0, b) };
                b
            }
        };

        match self.dir {
            Direction::Encrypt => {
                let tag = key
                    .seal_in_place_separate_tag(nonce()?, aad, buf)
                    .map_err(|_| CryptoError::Internal("AEAD seal failed"))?;
                if scattered {
                    // SAFETY: writable `dst`, disjoint from our scratch.
                    unsafe { sg::scatter(dst, 0, buf) };
                }
                // SAFETY: `digest` is writable on encrypt and `tag` is a local.
                unsafe { sg::scatter(digest, 0, tag.as_ref()) };
                Ok(())
            }
            Direction::Decrypt => {
                let mut t = [0u8; TAG_LEN];
                // SAFETY: `digest` is readable, `t` a local.
                unsafe { sg::gather(digest, 0, &mut t) };
                let tag = Tag::from(t);
                match key.open_in_place_separate_tag(nonce()?, aad, tag, buf, 0..) {
                    Ok(_) => {
                        if scattered {
                            // SAFETY: writable `dst`, disjoint from our scratch.
                            unsafe { sg::scatter(dst, 0, buf) };
                        }
                        Ok(())
                    }
                    Err(_) => {
                        // Release nothing: wipe what ring left in the buffer (dst itself when
                        // direct; the bounce buffer otherwise, dst untouched).
                        buf.zeroize();
                        Err(CryptoError::AuthFailed)
                    }
                }
            }
        }
    }
}
