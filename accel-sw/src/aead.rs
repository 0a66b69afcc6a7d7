//! AES-GCM over AWS-LC (`aws-lc-rs`), out of place; ChaCha20-Poly1305 over `ring`, in place.
//!
//! Chosen by measurement (docs/decisions/0013-aead-library.md; one core of this 2-core
//! AVX-512/VAES machine, release build, SCHED_FIFO, 32 buffers in turn, ops/s of one call):
//!
//! | | 64 B | 1 KiB | 16 KiB |
//! |---|---|---|---|
//! | AES-256-GCM seal, ring 0.17.14, copy src → dst then in place (before) | 11.3 M | 4.2 M | 0.31-0.34 M (5.1-5.6 GB/s) |
//! | AES-256-GCM seal, aws-lc-rs 1.19, src → dst out of place | 12.2 M | 6.0 M | 0.57-0.60 M (9.4-9.9 GB/s) |
//! | AES-256-GCM open, ring, copy then in place (before) | 11.3 M | 3.8 M | 0.38-0.39 M |
//! | AES-256-GCM open, aws-lc-rs, out of place | 14.9 M | 4.0-4.5 M | 0.56 M |
//! | ChaCha20-Poly1305 seal, ring, copy then in place | 3.6-4.5 M | 1.25 M | 1.25-1.48 GB/s |
//! | ChaCha20-Poly1305 seal, aws-lc-rs, out of place | 4.5-4.7 M | 1.2-1.3 M | 1.47-1.55 GB/s |
//!
//! AWS-LC's AES-GCM (its AVX-512/VAES code) is 1.4-1.8x ring's from 1 KiB up and no slower
//! below, and it works out of place: `src` is read and `dst` written in one pass, where ring
//! (in-place only) needs a copy of `src` into `dst` first. ChaCha20-Poly1305 measures the same
//! on both, so it stays on ring. The earlier choice of ring over RustCrypto (2.8-3.5x for GCM,
//! 2-10x for ChaCha20-Poly1305) still stands for ChaCha20-Poly1305.
//!
//! Key material: AWS-LC keeps the expanded key in an `EVP_AEAD_CTX` it allocates with
//! `OPENSSL_malloc`; `aws-lc-rs` frees it with `EVP_AEAD_CTX_free`, whose `OPENSSL_free`
//! cleanses the allocation before freeing it. ring does not zeroize its key schedule, so
//! [`RingKey`] keeps it in a `MaybeUninit` and zeroizes those bytes itself.
//!
//! Buffers: with one `src` and one `dst` segment that are disjoint, AES-GCM runs straight from
//! `src` into `dst`; with `src` and `dst` the same memory it runs in place. Otherwise (ring, a
//! partial overlap a guest may send, scattered data) the old ways remain: `dst` in place after
//! a copy (`memmove`) from `src`, or the queue's bounce buffer. The AAD and the tag are always
//! copied; the data is the one thing the libraries see in guest memory, as slices for the span
//! of one call (docs/decisions/0005-guest-memory-access.md says why that is acceptable).
//!
//! A gathered input (several `src` pieces) going into one disjoint `dst` segment runs through
//! AWS-LC's incremental interface (`gcm_stream.rs`), piece after piece straight into `dst`:
//! fused ESP's headers from the host and payload from the source guest, in one pass.
//!
//! Look-aside (a software queue's operations, [`AeadKey::run`]): the one-segment out-of-place
//! case runs through the same incremental context when the queue owns it (the first queue to
//! run one of the session's operations takes it for good; others use the one-shot call).
//! AWS-LC's one-shot seal and open clear a per-call GCM state and copy the GCM key (Htable)
//! into it on every call, a `rep stos` and a `rep movsq` that were ~6 % of the backend worker
//! at 64 B; the session's context keeps that state and only resets the nonce. In-process, one
//! core, same run (AES-256-GCM, 8-byte AAD, ns per call): 64 B seal 80-85 one-shot against
//! 73-75 through the owned context, open 82-86 against 73-79 (the context claimed by an atomic
//! exchange per call); 1400 B 187-191 against 189-198 (level); 16 KiB 920-1006 against
//! 872-912. Fused ESP's direct calls on a one-lane instance (`one_thread`) take the same
//! context for one segment too, with a load and a store for the operation (falling back to
//! the one-shot call when a queue owns it): in-process, 1386-byte open, one piece through the
//! context 210-249 ns against 222-280 ns one-shot (docs/performance.md, "ESP, pass t").

use std::mem::MaybeUninit;

use dpacc_spec::{sg_len, AeadAlg, CryptoError, Direction, Iv, Seg};
use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, CHACHA20_POLY1305};
use zeroize::Zeroize;

use crate::gcm_stream::{Claimed, GcmStream};
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

/// The library behind a key. One per session, never in an array: the size difference of the
/// variants costs nothing, and boxing the larger would add a pointer chase per operation.
#[allow(clippy::large_enum_variant)]
enum Engine {
    /// AES-GCM on AWS-LC: in place or out of place.
    AwsLc(aws_lc_rs::aead::LessSafeKey),
    /// ChaCha20-Poly1305 on ring: in place only.
    Ring(RingKey),
}

impl Engine {
    fn seal_in_place(&self, nonce: [u8; NONCE_LEN], aad: &[u8], buf: &mut [u8]) -> Option<Tag16> {
        match self {
            Engine::AwsLc(k) => {
                let n = aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce);
                let t = k
                    .seal_in_place_separate_tag(n, aws_lc_rs::aead::Aad::from(aad), buf)
                    .ok()?;
                Tag16::from_slice(t.as_ref())
            }
            Engine::Ring(k) => {
                let n = Nonce::assume_unique_for_key(nonce);
                let t = k
                    .get()
                    .seal_in_place_separate_tag(n, Aad::from(aad), buf)
                    .ok()?;
                Tag16::from_slice(t.as_ref())
            }
        }
    }

    fn open_in_place(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        tag: [u8; TAG_LEN],
        buf: &mut [u8],
    ) -> bool {
        match self {
            Engine::AwsLc(k) => {
                let n = aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce);
                k.open_in_place_separate_tag(n, aws_lc_rs::aead::Aad::from(aad), &tag, buf)
                    .is_ok()
            }
            Engine::Ring(k) => {
                let n = Nonce::assume_unique_for_key(nonce);
                k.get()
                    .open_in_place_separate_tag(n, Aad::from(aad), Tag::from(tag), buf, 0..)
                    .is_ok()
            }
        }
    }
}

/// A 16-byte tag on the stack.
struct Tag16([u8; TAG_LEN]);

impl Tag16 {
    fn from_slice(t: &[u8]) -> Option<Self> {
        Some(Self(t.try_into().ok()?))
    }
}

/// An AEAD session's key and direction.
pub(crate) struct AeadKey {
    dir: Direction,
    engine: Engine,
    /// AES-GCM over gathered pieces (None for ChaCha20-Poly1305, or if AWS-LC refused).
    stream: Option<GcmStream>,
}

/// How an operation may take the key's incremental context ([`GcmStream`]).
#[derive(Clone, Copy)]
enum Claim {
    /// By an atomic exchange for the operation (gathered input only).
    Shared,
    /// Without one: the caller runs this key's operations on one thread at a time; also
    /// for one-segment input (no per-call copy of the GCM key), taken for the operation.
    OneThread,
    /// As the software queue holding this owner id ([`crate::gcm_stream::owner_id`]): the
    /// context is the queue's for good once taken, and serves one-segment input too (no
    /// per-call copy of the GCM key, unlike AWS-LC's one-shot seal and open).
    Owner(u64),
}

impl Claim {
    fn from_one_thread(one_thread: bool) -> Self {
        match one_thread {
            true => Claim::OneThread,
            false => Claim::Shared,
        }
    }
}

/// What of the queue an AEAD operation may use.
pub(crate) struct AeadScratch<'a> {
    /// Bounce buffer for scattered data.
    pub data: &'a mut [u8],
    /// Bounce buffer for scattered AAD.
    pub aad: &'a mut [u8],
    /// The queue's [`owner_id`](crate::gcm_stream::owner_id) for the sessions' incremental
    /// contexts.
    pub owner: u64,
}

/// Where the data of one operation is transformed.
#[allow(clippy::enum_variant_names)] // `Place::OutOfPlace` says what it means
enum Place<'a> {
    /// From one `src` segment into one disjoint `dst` segment (AWS-LC only).
    Apart { src: Seg<'a>, dst: Seg<'a> },
    /// In the one `dst` segment (after a copy from `src` unless they are the same memory).
    Dst(Seg<'a>),
    /// From the pieces of `src` one after the other into one disjoint `dst` segment
    /// (AWS-LC's incremental interface, claimed for this operation); also one `src` segment
    /// when a software queue owns the context.
    Gather {
        src: &'a [Seg<'a>],
        dst: Seg<'a>,
        stream: Claimed<'a>,
    },
    /// In the bounce buffer (scattered data).
    Bounce,
}

impl AeadKey {
    /// Expands `key` for `alg`.
    pub(crate) fn new(alg: AeadAlg, dir: Direction, key: &[u8]) -> Result<Self, CryptoError> {
        use aws_lc_rs::aead as lc;
        let engine = match (alg, key.len()) {
            (AeadAlg::AesGcm, 16 | 32) => {
                let algo = if key.len() == 16 {
                    &lc::AES_128_GCM
                } else {
                    &lc::AES_256_GCM
                };
                let unbound =
                    lc::UnboundKey::new(algo, key).map_err(|_| CryptoError::InvalidKeyLength)?;
                Engine::AwsLc(lc::LessSafeKey::new(unbound))
            }
            (AeadAlg::ChaCha20Poly1305, 32) => {
                let unbound = UnboundKey::new(&CHACHA20_POLY1305, key)
                    .map_err(|_| CryptoError::InvalidKeyLength)?;
                Engine::Ring(RingKey {
                    key: MaybeUninit::new(LessSafeKey::new(unbound)),
                })
            }
            _ => return Err(CryptoError::InvalidKeyLength),
        };
        let stream = match engine {
            Engine::AwsLc(_) => GcmStream::new(key, dir == Direction::Encrypt),
            Engine::Ring(_) => None,
        };
        Ok(Self {
            dir,
            engine,
            stream,
        })
    }

    /// Where to run an operation of `len` bytes from `src` to `dst` (lengths checked).
    /// `claim`: how the incremental context may be taken. With `OneThread` or `Owner` no atomic
    /// exchange is made per operation (a locked instruction, which waits for the store buffer:
    /// the previous operation's output stores, to guest buffers whose lines must be fetched
    /// first).
    fn place<'a>(
        &'a self,
        src: &'a [Seg<'a>],
        dst: &[Seg<'a>],
        len: usize,
        claim: Claim,
    ) -> Place<'a> {
        let Some(d) = sg::single(dst).filter(|d| d.len() >= len && len > 0) else {
            return Place::Bounce;
        };
        // SAFETY: the first `len` bytes of a segment at least that long.
        let d = unsafe { Seg::from_raw(d.ptr(), len) };
        match (&self.engine, sg::single(src)) {
            (Engine::AwsLc(_), Some(s)) if s.ptr() != d.ptr() && disjoint(&s, &d) => {
                // A queue's own context: AWS-LC's one-shot call would copy the GCM key and
                // clear its per-call state first (a `rep movs` and a `rep stos`, ~6 % of a
                // 64 B look-aside operation's backend time).
                // A one-thread caller (fused ESP on a one-lane instance) takes it with a load
                // and a store for the operation.
                let owned = match (claim, &self.stream) {
                    (Claim::Owner(id), Some(st)) if len <= MAX_STREAM_LEN => st.claim_owned(id),
                    // SAFETY: the caller's promise: no other thread uses this key meanwhile.
                    (Claim::OneThread, Some(st)) if len <= MAX_STREAM_LEN => unsafe {
                        st.claim_unshared()
                    },
                    _ => None,
                };
                match owned {
                    Some(stream) => Place::Gather {
                        src,
                        dst: d,
                        stream,
                    },
                    None => Place::Apart { src: s, dst: d },
                }
            }
            (Engine::AwsLc(_), None) if src.len() <= MAX_GATHER => {
                // Each piece apart from `dst`; the stream free (else another thread is in the
                // middle of an operation of this session: the old ways).
                let apart = src.iter().all(|s| s.is_empty() || disjoint(s, &d));
                let claim = |s: &'a GcmStream| match claim {
                    // SAFETY: the caller's promise: no other thread uses this key meanwhile.
                    Claim::OneThread => unsafe { s.claim_unshared() },
                    Claim::Shared => s.claim(),
                    Claim::Owner(id) => s.claim_owned(id),
                };
                match self.stream.as_ref().filter(|_| apart).and_then(claim) {
                    Some(stream) => Place::Gather {
                        src,
                        dst: d,
                        stream,
                    },
                    None => Place::Dst(d),
                }
            }
            _ => Place::Dst(d),
        }
    }

    /// Runs one AEAD operation (see the `CryptoOp` table) for the software queue of
    /// `scratch`.
    ///
    /// # Safety
    /// `src`, `aad` and (on decrypt) `digest` valid for reads; `dst` and (on encrypt) `digest`
    /// valid for writes; `src`/`dst` the same memory or disjoint (a partial overlap gives a
    /// wrong result, nothing worse); nothing overlaps `scratch`.
    pub(crate) unsafe fn run(
        &self,
        iv: &Iv,
        src: &[Seg<'_>],
        dst: &[Seg<'_>],
        aad: &[Seg<'_>],
        digest: &[Seg<'_>],
        scratch: AeadScratch<'_>,
    ) -> Result<(), CryptoError> {
        let claim = Claim::Owner(scratch.owner);
        let nonce: [u8; NONCE_LEN] = iv
            .as_slice()
            .try_into()
            .map_err(|_| CryptoError::InvalidIvLength)?;
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
        let aad: &[u8] = aad_bytes;

        match self.dir {
            Direction::Encrypt => {
                // SAFETY: forwarded from our caller.
                let tag =
                    unsafe { self.seal_inline(nonce, aad, src, dst, len, scratch.data, claim)? };
                // SAFETY: `digest` is writable on encrypt and `tag` is a local.
                unsafe { sg::scatter(digest, 0, &tag.0) };
                Ok(())
            }
            Direction::Decrypt => {
                let mut tag = [0u8; TAG_LEN];
                // SAFETY: `digest` is readable, `tag` a local.
                unsafe { sg::gather(digest, 0, &mut tag) };
                // SAFETY: forwarded from our caller.
                unsafe { self.open_inline(nonce, aad, tag, src, dst, len, scratch.data, claim) }
            }
        }
    }

    /// The length of a direct operation ([`seal_direct`](Self::seal_direct),
    /// [`open_direct`](Self::open_direct)): the pieces of `src` together, which `dst` must
    /// match exactly, on a key of direction `dir`.
    #[inline]
    fn direct_len(
        &self,
        dir: Direction,
        src: &[Seg<'_>],
        dst: Seg<'_>,
    ) -> Result<usize, CryptoError> {
        let len = sg_len(src);
        if self.dir != dir {
            return Err(CryptoError::InvalidSession);
        }
        if dst.len() != len {
            return Err(CryptoError::BufferTooSmall);
        }
        Ok(len)
    }

    /// Encrypts the pieces of `src` into `dst` (exactly their total length) and writes the
    /// tag's 16 bytes at `tag_out`: the in-crate caller's way in (fused ESP), without a
    /// queue, an `Iv`, an AAD copy or a bounce buffer. The nonce and the AAD are read where
    /// the caller keeps them and the gathered path writes the tag straight to `tag_out`: a
    /// copy through the stack here would be reloaded with other widths than it was stored
    /// with, and such a load waits until the store buffer (the previous frame's output, to
    /// RX-buffer lines that must be fetched first) has drained. Errors as [`run`](Self::run);
    /// `dst` not exactly as long as `src` gives `BufferTooSmall`.
    ///
    /// # Safety
    /// The pieces of `src` readable, `dst` and `tag_out..tag_out + 16` writable (raw memory;
    /// possibly guest memory), `tag_out` apart from `dst`; each piece the same memory as
    /// `dst` or disjoint from it (a partial overlap gives a wrong result, nothing worse);
    /// `aad` is host memory; with `one_thread`, no other thread runs an operation of this key
    /// meanwhile.
    pub(crate) unsafe fn seal_direct(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        src: &[Seg<'_>],
        dst: Seg<'_>,
        tag_out: *mut u8,
        one_thread: bool,
    ) -> Result<(), CryptoError> {
        let len = self.direct_len(Direction::Encrypt, src, dst)?;
        let dsts = [dst];
        if let Place::Gather {
            src,
            dst,
            mut stream,
        } = self.place(src, &dsts, len, Claim::from_one_thread(one_thread))
        {
            // SAFETY: the caller's pieces and outputs; each piece apart from `dst` (`place`).
            let ok = unsafe { stream.seal_to(nonce, aad, src, dst.ptr(), tag_out) };
            return ok
                .then_some(())
                .ok_or(CryptoError::Internal("AEAD seal failed"));
        }
        // One `dst` segment never takes the bounce buffer (`place`): none is given.
        // SAFETY: forwarded from our caller.
        let tag = unsafe {
            self.seal(
                *nonce,
                aad,
                src,
                &dsts,
                len,
                &mut [],
                Claim::from_one_thread(one_thread),
            )?
        };
        // SAFETY: the caller's 16 writable bytes, apart from our local.
        unsafe { std::ptr::copy_nonoverlapping(tag.0.as_ptr(), tag_out, TAG_LEN) };
        Ok(())
    }

    /// Decrypts the pieces of `src` into `dst` (exactly their total length) if `tag`
    /// verifies; otherwise `AuthFailed` and no plaintext left in `dst`. As
    /// [`seal_direct`](Self::seal_direct) otherwise (`tag` read where the caller keeps it).
    ///
    /// # Safety
    /// As [`seal_direct`](Self::seal_direct), without `tag_out`.
    pub(crate) unsafe fn open_direct(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        tag: &[u8; TAG_LEN],
        src: &[Seg<'_>],
        dst: Seg<'_>,
        one_thread: bool,
    ) -> Result<(), CryptoError> {
        let len = self.direct_len(Direction::Decrypt, src, dst)?;
        let dsts = [dst];
        if let Place::Gather {
            src,
            dst,
            mut stream,
        } = self.place(src, &dsts, len, Claim::from_one_thread(one_thread))
        {
            // SAFETY: as in `seal_direct`.
            if unsafe { stream.open(nonce, aad, tag, src, dst.ptr()) } {
                return Ok(());
            }
            // AWS-LC leaves the unverified plaintext in `dst`: wipe it (raw writes).
            // SAFETY: `dst` is writable for its `len` bytes.
            unsafe { std::ptr::write_bytes(dst.ptr(), 0, dst.len()) };
            return Err(CryptoError::AuthFailed);
        }
        // SAFETY: forwarded from our caller.
        unsafe {
            self.open(
                *nonce,
                aad,
                *tag,
                src,
                &dsts,
                len,
                &mut [],
                Claim::from_one_thread(one_thread),
            )
        }
    }

    /// Encrypts `len` bytes of `src` into `dst`; returns the tag. Out of line (as before
    /// `seal_inline`), for the direct calls (ESP); [`run`](Self::run) has
    /// [`seal_inline`](Self::seal_inline) inlined.
    ///
    /// # Safety
    /// As [`run`](Self::run); `claim` as for [`place`](Self::place).
    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    unsafe fn seal(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        src: &[Seg<'_>],
        dst: &[Seg<'_>],
        len: usize,
        bounce: &mut [u8],
        claim: Claim,
    ) -> Result<Tag16, CryptoError> {
        // SAFETY: forwarded from our caller.
        unsafe { self.seal_inline(nonce, aad, src, dst, len, bounce, claim) }
    }

    /// [`seal`](Self::seal), always inlined: called out of line from `run`, its 16-byte
    /// `Claim` went on the stack in two narrower stores and was read back as one 16-byte load
    /// at its entry, and its `Result<Tag16, _>` came back through memory and was reloaded
    /// likewise: loads the store buffer cannot forward, which wait until it drains (~39 % of
    /// `seal` and ~45 % of `run`, ~4 % of the look-aside worker at 64 B; docs/performance.md,
    /// "tenth pass").
    ///
    /// # Safety
    /// As [`seal`](Self::seal).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn seal_inline(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        src: &[Seg<'_>],
        dst: &[Seg<'_>],
        len: usize,
        bounce: &mut [u8],
        claim: Claim,
    ) -> Result<Tag16, CryptoError> {
        let failed = CryptoError::Internal("AEAD seal failed");
        match (self.place(src, dst, len, claim), &self.engine) {
            (Place::Apart { src, dst }, Engine::AwsLc(k)) => {
                let mut tag = [0u8; TAG_LEN];
                // SAFETY: `src` is readable and `dst` writable for `len` bytes, they do not
                // overlap (`place`), and nothing else references them during this one call.
                let (s, d) = unsafe { (src.as_slice(), dst.as_mut_slice()) };
                k.seal_out_of_place_scatter(
                    aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce),
                    aws_lc_rs::aead::Aad::from(aad),
                    s,
                    d,
                    &[],
                    &mut tag,
                )
                .map_err(|_| failed)?;
                Ok(Tag16(tag))
            }
            (
                Place::Gather {
                    src,
                    dst,
                    mut stream,
                },
                _,
            ) => {
                // SAFETY: the pieces are readable and `dst` writable for `len` bytes (their
                // total, `run`), each piece disjoint from `dst` (`place`); raw pointers only.
                let tag = unsafe { stream.seal(&nonce, aad, src, dst.ptr()) }.ok_or(failed)?;
                Ok(Tag16(tag))
            }
            (Place::Dst(d), _) | (Place::Apart { dst: d, .. }, _) => {
                // SAFETY: `dst` is writable and nothing else references it during the call
                // (caller); `src` is readable and either the same memory (no copy) or not,
                // and `copy` tolerates overlap anyway.
                let buf = unsafe {
                    sg::copy(src, dst, 0, len);
                    d.as_mut_slice()
                };
                self.engine.seal_in_place(nonce, aad, buf).ok_or(failed)
            }
            (Place::Bounce, _) => {
                let b = bounce
                    .get_mut(..len)
                    .ok_or(CryptoError::InvalidDataLength)?;
                // SAFETY: readable `src`, disjoint from our scratch.
                unsafe { sg::gather(src, 0, b) };
                let tag = self.engine.seal_in_place(nonce, aad, b).ok_or(failed)?;
                // SAFETY: writable `dst`, disjoint from our scratch.
                unsafe { sg::scatter(dst, 0, b) };
                Ok(tag)
            }
        }
    }

    /// Decrypts `len` bytes of `src` into `dst` if `tag` verifies; otherwise leaves no
    /// plaintext behind (what a library wrote into `dst` is wiped). Out of line, for the
    /// direct calls; [`run`](Self::run) has [`open_inline`](Self::open_inline) inlined.
    ///
    /// # Safety
    /// As [`run`](Self::run); `claim` as for [`place`](Self::place).
    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    unsafe fn open(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        tag: [u8; TAG_LEN],
        src: &[Seg<'_>],
        dst: &[Seg<'_>],
        len: usize,
        bounce: &mut [u8],
        claim: Claim,
    ) -> Result<(), CryptoError> {
        // SAFETY: forwarded from our caller.
        unsafe { self.open_inline(nonce, aad, tag, src, dst, len, bounce, claim) }
    }

    /// [`open`](Self::open), always inlined (as [`seal_inline`](Self::seal_inline)).
    ///
    /// # Safety
    /// As [`open`](Self::open).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn open_inline(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        tag: [u8; TAG_LEN],
        src: &[Seg<'_>],
        dst: &[Seg<'_>],
        len: usize,
        bounce: &mut [u8],
        claim: Claim,
    ) -> Result<(), CryptoError> {
        match (self.place(src, dst, len, claim), &self.engine) {
            (Place::Apart { src, dst }, Engine::AwsLc(k)) => {
                // SAFETY: as in `seal`.
                let (s, d) = unsafe { (src.as_slice(), dst.as_mut_slice()) };
                let ok = k
                    .open_separate_gather(
                        aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce),
                        aws_lc_rs::aead::Aad::from(aad),
                        s,
                        &tag,
                        d,
                    )
                    .is_ok();
                if ok {
                    return Ok(());
                }
                // AWS-LC leaves the unverified plaintext in `dst`.
                d.zeroize();
                Err(CryptoError::AuthFailed)
            }
            (
                Place::Gather {
                    src,
                    dst,
                    mut stream,
                },
                _,
            ) => {
                // SAFETY: as in `seal`.
                if unsafe { stream.open(&nonce, aad, &tag, src, dst.ptr()) } {
                    return Ok(());
                }
                // AWS-LC leaves the unverified plaintext in `dst`: wipe it (raw writes).
                // SAFETY: `dst` is writable for its `len` bytes.
                unsafe { std::ptr::write_bytes(dst.ptr(), 0, dst.len()) };
                Err(CryptoError::AuthFailed)
            }
            (Place::Dst(d), _) | (Place::Apart { dst: d, .. }, _) => {
                // SAFETY: as in `seal`.
                let buf = unsafe {
                    sg::copy(src, dst, 0, len);
                    d.as_mut_slice()
                };
                if self.engine.open_in_place(nonce, aad, tag, buf) {
                    return Ok(());
                }
                buf.zeroize();
                Err(CryptoError::AuthFailed)
            }
            (Place::Bounce, _) => {
                let b = bounce
                    .get_mut(..len)
                    .ok_or(CryptoError::InvalidDataLength)?;
                // SAFETY: readable `src`, disjoint from our scratch.
                unsafe { sg::gather(src, 0, b) };
                if self.engine.open_in_place(nonce, aad, tag, b) {
                    // SAFETY: writable `dst`, disjoint from our scratch.
                    unsafe { sg::scatter(dst, 0, b) };
                    return Ok(());
                }
                // Release nothing: `dst` is untouched; wipe the bounce buffer.
                b.zeroize();
                Err(CryptoError::AuthFailed)
            }
        }
    }
}

/// Most pieces of a gathered input taken straight into `dst` (more: the old ways).
const MAX_GATHER: usize = 8;

/// Longest one-segment input given to the incremental context (its lengths are `c_int`; the
/// one-shot call takes longer ones).
const MAX_STREAM_LEN: usize = i32::MAX as usize;

/// Whether two segments share no byte.
fn disjoint(a: &Seg<'_>, b: &Seg<'_>) -> bool {
    let (a0, b0) = (a.ptr() as usize, b.ptr() as usize);
    a0.saturating_add(a.len()) <= b0 || b0.saturating_add(b.len()) <= a0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// McGrew-Viega test case 16 (AES-256-GCM, 60-byte plaintext, 20-byte AAD).
    const KEY: &str = "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308";
    const IV: &str = "cafebabefacedbaddecaf888";
    const PT: &str = "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72\
                      1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39";
    const AAD: &str = "feedfacedeadbeeffeedfacedeadbeefabaddad2";
    const CT: &str = "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa\
                      8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662";
    const TAG: &str = "76fc6ece0f4e1768cddf8853bb2d551b";

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s.split_whitespace().collect::<String>()).unwrap()
    }

    /// One operation through `run` as the queue holding `owner`: (output, tag) or the error.
    fn op(
        k: &AeadKey,
        owner: u64,
        iv: &[u8],
        aad: &[u8],
        src: &[u8],
        tag: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>), CryptoError> {
        let (mut data, mut aadb) = (vec![0u8; 256], vec![0u8; 64]);
        let mut out = vec![0u8; src.len()];
        let mut t = tag.to_vec();
        t.resize(TAG_LEN, 0);
        let iv = Iv::new(iv).unwrap();
        let r = {
            let (s, d) = ([Seg::from_ref(src)], [Seg::from_mut(&mut out)]);
            let (a, g) = ([Seg::from_ref(aad)], [Seg::from_mut(&mut t)]);
            let scratch = AeadScratch {
                data: &mut data,
                aad: &mut aadb,
                owner,
            };
            // SAFETY: local buffers, `src`/`dst` disjoint.
            unsafe { k.run(&iv, &s, &d, &a, &g, scratch) }
        };
        r.map(|()| (out, t))
    }

    fn keys() -> (AeadKey, AeadKey) {
        let key = h(KEY);
        (
            AeadKey::new(AeadAlg::AesGcm, Direction::Encrypt, &key).unwrap(),
            AeadKey::new(AeadAlg::AesGcm, Direction::Decrypt, &key).unwrap(),
        )
    }

    /// The known answer through a queue's own context, through another queue's (which falls
    /// back to the one-shot call), and a forged tag on both: an error and no plaintext.
    #[test]
    fn owned_context_and_fallback_give_the_known_answer() {
        let (enc, dec) = keys();
        let (q1, q2) = (crate::gcm_stream::owner_id(), crate::gcm_stream::owner_id());
        for owner in [q1, q2, q1] {
            let (ct, tag) = op(&enc, owner, &h(IV), &h(AAD), &h(PT), &[]).unwrap();
            assert_eq!((ct, tag), (h(CT), h(TAG)));
            let (pt, _) = op(&dec, owner, &h(IV), &h(AAD), &h(CT), &h(TAG)).unwrap();
            assert_eq!(pt, h(PT));
            let mut bad = h(TAG);
            bad[15] ^= 0x80;
            assert_eq!(
                op(&dec, owner, &h(IV), &h(AAD), &h(CT), &bad),
                Err(CryptoError::AuthFailed)
            );
        }
        // q1 ran first: it owns both contexts; q2 and the shared claims fall back.
        for k in [&enc, &dec] {
            let st = k.stream.as_ref().unwrap();
            assert!(st.claim_owned(q1).is_some());
            assert!(st.claim_owned(q2).is_none());
            assert!(st.claim().is_none());
            // SAFETY: no other thread uses the key in this test.
            assert!(unsafe { st.claim_unshared() }.is_none());
        }
    }

    /// The tag lands where `digest` says, whichever way the data runs (the queue's own
    /// context, another queue's fallback to the one-shot call, in place, scattered through
    /// the bounce buffer): one 16-byte segment, one longer segment (its first 16 bytes; the
    /// rest untouched), or 16 bytes scattered over two segments. McGrew-Viega test case 16.
    #[test]
    fn the_tag_goes_to_every_digest_layout() {
        let (enc, _) = keys();
        let (pt, ct, aad, iv, want) = (h(PT), h(CT), h(AAD), h(IV), h(TAG));
        let iv = Iv::new(&iv).unwrap();
        let (q1, q2) = (crate::gcm_stream::owner_id(), crate::gcm_stream::owner_id());
        // How the data runs: (owner, in place, scattered destination).
        for (owner, in_place, scattered) in [
            (q1, false, false),
            (q2, false, false),
            (q1, true, false),
            (q1, false, true),
        ] {
            // How the digest is laid out: a buffer of 16 or 20 bytes, cut at 0 (one segment)
            // or 7 (two).
            for (dlen, cut) in [(16usize, 0usize), (20, 0), (16, 7)] {
                let mut out = if in_place {
                    pt.clone()
                } else {
                    vec![0u8; pt.len()]
                };
                let mut dig = vec![0xeeu8; dlen];
                let (mut data, mut aadb) = (vec![0u8; 256], vec![0u8; 64]);
                let r = {
                    let (o1, o2) = out.split_at_mut(if scattered { 13 } else { 0 });
                    let d: Vec<Seg<'_>> = [o1, o2]
                        .into_iter()
                        .filter(|x| !x.is_empty())
                        .map(Seg::from_mut)
                        .collect();
                    let s = if in_place {
                        d.clone()
                    } else {
                        vec![Seg::from_ref(&pt)]
                    };
                    let (g1, g2) = dig.split_at_mut(cut);
                    let g: Vec<Seg<'_>> = [g1, g2]
                        .into_iter()
                        .filter(|x| !x.is_empty())
                        .map(Seg::from_mut)
                        .collect();
                    let a = [Seg::from_ref(&aad)];
                    let scratch = AeadScratch {
                        data: &mut data,
                        aad: &mut aadb,
                        owner,
                    };
                    // SAFETY: local buffers; `src` and `dst` the same memory or disjoint.
                    unsafe { enc.run(&iv, &s, &d, &a, &g, scratch) }
                };
                let case =
                    format!("in place {in_place}, scattered {scattered}, digest {dlen}/{cut}");
                assert_eq!(r, Ok(()), "{case}");
                assert_eq!(out, ct, "{case}");
                assert_eq!(&dig[..16], &want[..], "{case}");
                assert!(dig[16..].iter().all(|&b| b == 0xee), "{case}");
            }
        }
        // q1 ran first: it owns the context, q2 fell back (the one-shot path).
        let st = enc.stream.as_ref().unwrap();
        assert!(st.claim_owned(q1).is_some() && st.claim_owned(q2).is_none());
    }

    /// A forged tag through the owned context leaves no plaintext in `dst`.
    #[test]
    fn owned_open_wipes_dst_on_a_forged_tag() {
        let (_, dec) = keys();
        let owner = crate::gcm_stream::owner_id();
        let (ct, iv, aad) = (h(CT), h(IV), h(AAD));
        let mut tag = h(TAG);
        tag[0] ^= 1;
        let mut out = vec![0xaau8; ct.len()];
        let r = {
            let (s, d) = ([Seg::from_ref(&ct)], [Seg::from_mut(&mut out)]);
            let (a, g) = ([Seg::from_ref(&aad)], [Seg::from_ref(&tag)]);
            let (mut data, mut aadb) = (vec![0u8; 64], vec![0u8; 64]);
            let scratch = AeadScratch {
                data: &mut data,
                aad: &mut aadb,
                owner,
            };
            // SAFETY: local buffers, `src`/`dst` disjoint; `digest` only read on decrypt.
            unsafe { dec.run(&Iv::new(&iv).unwrap(), &s, &d, &a, &g, scratch) }
        };
        assert_eq!(r, Err(CryptoError::AuthFailed));
        assert!(out.iter().all(|&b| b == 0));
        assert!(dec.stream.as_ref().unwrap().claim_owned(owner).is_some());
    }

    /// Two queues on two threads run one session at once: one owns the context, the other
    /// uses the one-shot call; every result is the one-shot call's.
    #[test]
    fn two_queues_on_one_session() {
        let (enc, dec) = keys();
        let (enc, dec) = (&enc, &dec);
        std::thread::scope(|sc| {
            for t in 0..2u8 {
                sc.spawn(move || {
                    let owner = crate::gcm_stream::owner_id();
                    let Engine::AwsLc(k) = &enc.engine else {
                        unreachable!()
                    };
                    for i in 0..2000u32 {
                        let mut iv = [t; 12];
                        iv[..4].copy_from_slice(&i.to_le_bytes());
                        let pt: Vec<u8> = (0..(i % 97) as usize + 1).map(|j| j as u8 ^ t).collect();
                        let aad = [t, 1, 2, 3, 4, 5, 6, 7];
                        let (ct, tag) = op(enc, owner, &iv, &aad, &pt, &[]).unwrap();
                        let mut want = pt.clone();
                        let wtag = k
                            .seal_in_place_separate_tag(
                                aws_lc_rs::aead::Nonce::assume_unique_for_key(iv),
                                aws_lc_rs::aead::Aad::from(&aad[..]),
                                &mut want,
                            )
                            .unwrap();
                        assert_eq!((&ct, &tag[..]), (&want, wtag.as_ref()));
                        let (back, _) = op(dec, owner, &iv, &aad, &ct, &tag).unwrap();
                        assert_eq!(back, pt);
                    }
                });
            }
        });
    }

    /// One-segment direct calls of a one-thread caller (fused ESP on a one-lane instance) run
    /// through the key's context and give the known answer; a forged tag gives `AuthFailed`
    /// with `dst` wiped; once a queue owns the context they fall back to the one-shot call
    /// with the same answers.
    #[test]
    fn one_thread_direct_calls_through_the_context_and_falling_back() {
        let (enc, dec) = keys();
        let (pt, ct, aad) = (h(PT), h(CT), h(AAD));
        let nonce: [u8; 12] = h(IV).try_into().unwrap();
        let tag: [u8; 16] = h(TAG).try_into().unwrap();
        for owned_elsewhere in [false, true] {
            if owned_elsewhere {
                let q = crate::gcm_stream::owner_id();
                for k in [&enc, &dec] {
                    assert!(k.stream.as_ref().unwrap().claim_owned(q).is_some());
                }
            }
            let mut out = vec![0u8; pt.len()];
            let mut t = [0u8; 16];
            // SAFETY: local buffers, disjoint; this thread alone uses the keys.
            unsafe {
                enc.seal_direct(
                    &nonce,
                    &aad,
                    &[Seg::from_ref(&pt)],
                    Seg::from_mut(&mut out),
                    t.as_mut_ptr(),
                    true,
                )
            }
            .unwrap();
            assert_eq!((out, t), (ct.clone(), tag));
            let mut back = vec![0u8; ct.len()];
            // SAFETY: as above.
            unsafe {
                dec.open_direct(
                    &nonce,
                    &aad,
                    &tag,
                    &[Seg::from_ref(&ct)],
                    Seg::from_mut(&mut back),
                    true,
                )
            }
            .unwrap();
            assert_eq!(back, pt);
            let mut bad = tag;
            bad[3] ^= 4;
            let mut back = vec![0xaau8; ct.len()];
            // SAFETY: as above.
            let r = unsafe {
                dec.open_direct(
                    &nonce,
                    &aad,
                    &bad,
                    &[Seg::from_ref(&ct)],
                    Seg::from_mut(&mut back),
                    true,
                )
            };
            assert_eq!(r, Err(CryptoError::AuthFailed));
            assert!(
                back.iter().all(|&b| b == 0),
                "owned elsewhere: {owned_elsewhere}"
            );
            // The context is free again after each one-thread call (unless a queue owns it).
            let st = dec.stream.as_ref().unwrap();
            assert_eq!(st.claim().is_some(), !owned_elsewhere);
        }
    }
}
