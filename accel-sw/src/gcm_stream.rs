//! AES-GCM over a gathered input, straight into one output: AWS-LC's incremental `EVP_CIPHER`
//! interface (aws-lc-sys), for the operations whose input is several pieces.
//!
//! The one-shot AEAD API (`aws-lc-rs`) takes one contiguous input. Fused ESP's is not: on
//! encap the plaintext is the packet buffer's inner headers (rewritten by NAT, perhaps), the
//! rest of the frame in the source guest's TX buffer and the ESP trailer; on decap the
//! ciphertext's first bytes are in the packet buffer and the rest in the source. Gathering them
//! into one buffer first is the copy fused ESP exists to avoid; `EVP_EncryptUpdate` /
//! `EVP_DecryptUpdate` take the pieces one after the other and write each where it lands
//! (AWS-LC keeps the partial block between calls), through the same `CRYPTO_gcm128_*`
//! assembly as the one-shot API.
//!
//! The context holds the expanded key and the GHASH key, set once per session; an operation
//! only resets the nonce. It is mutable per operation, so a session has one, claimed by an
//! atomic flag for the span of one operation: a second thread finding it taken (two lanes
//! using the same SA at the same instant) uses the one-shot path instead. A software queue
//! (look-aside) instead takes it for good ([`GcmStream::claim_owned`]): the first queue to run
//! the session's operation owns it from then on and claims it with a plain load, no locked
//! instruction per operation; other queues use the one-shot path. AWS-LC frees it with
//! `EVP_CIPHER_CTX_free`, which cleanses the key material (`aes_gcm_cleanup`, then
//! `OPENSSL_free`, which cleanses every allocation).
//!
//! Only raw pointers cross into AWS-LC: no Rust reference is formed over the pieces (guest
//! memory among them; docs/decisions/0005-guest-memory-access.md).

use std::ffi::c_int;
use std::ptr::{null, null_mut, NonNull};
use std::sync::atomic::{AtomicU64, Ordering};

use aws_lc_sys as sys;
use dpacc_spec::Seg;

/// Tag length.
const TAG: usize = 16;

/// One session's incremental AES-GCM context.
pub(crate) struct GcmStream {
    ctx: NonNull<sys::EVP_CIPHER_CTX>,
    encrypt: bool,
    /// [`FREE`], [`BUSY`] (claimed for one operation) or the id of the queue that owns it.
    state: AtomicU64,
}

/// The context is free.
const FREE: u64 = 0;
/// The context is claimed for one operation.
const BUSY: u64 = 1;
/// The next owner id ([`owner_id`]): ids are never reused, so a dropped queue's id stays dead.
static NEXT_OWNER: AtomicU64 = AtomicU64::new(2);

/// A fresh owner id for [`GcmStream::claim_owned`] (one per software queue).
pub(crate) fn owner_id() -> u64 {
    NEXT_OWNER.fetch_add(1, Ordering::Relaxed)
}

// SAFETY: the context is only used by the thread that set `BUSY` (`claim`) until it clears
// it, by the one thread its owner runs on (`claim_unshared`'s contract), or by the holder of
// the owner id it was given (`claim_owned`: ids are unique, their holder is one queue, used by
// one thread at a time), and freed by `drop` (`&mut self`: no claim alive).
unsafe impl Send for GcmStream {}
// SAFETY: as above: shared access goes through `claim`.
unsafe impl Sync for GcmStream {}

impl GcmStream {
    /// A context for AES-128/256-GCM (`key` 16 or 32 bytes), encrypting or decrypting. None
    /// if AWS-LC refuses (out of memory).
    pub(crate) fn new(key: &[u8], encrypt: bool) -> Option<Self> {
        // SAFETY: plain constructors; a null context is checked.
        let ctx = NonNull::new(unsafe { sys::EVP_CIPHER_CTX_new() })?;
        let s = Self {
            ctx,
            encrypt,
            state: AtomicU64::new(FREE),
        };
        // SAFETY: static cipher tables.
        let cipher = unsafe {
            match key.len() {
                16 => sys::EVP_aes_128_gcm(),
                32 => sys::EVP_aes_256_gcm(),
                _ => return None,
            }
        };
        let (c, k, nil) = (s.ctx.as_ptr(), key.as_ptr(), std::ptr::null());
        // SAFETY: `c` is ours; `key` is as long as the cipher's key (checked above); the
        // nonce is set per operation (the default 12-byte length).
        let ok = unsafe {
            if encrypt {
                sys::EVP_EncryptInit_ex(c, cipher, std::ptr::null_mut(), k, nil)
            } else {
                sys::EVP_DecryptInit_ex(c, cipher, std::ptr::null_mut(), k, nil)
            }
        };
        (ok == 1).then_some(s)
    }

    /// Takes the context for one operation without the atomic exchange of
    /// [`claim`](Self::claim) (a locked instruction, which waits for every earlier store).
    /// None if a queue owns it ([`claim_owned`](Self::claim_owned)).
    ///
    /// # Safety
    /// No other thread uses this context meanwhile (its owner runs one operation at a time).
    pub(crate) unsafe fn claim_unshared(&self) -> Option<Claimed<'_>> {
        if self.state.load(Ordering::Relaxed) > BUSY {
            return None;
        }
        self.state.store(BUSY, Ordering::Relaxed);
        Some(Claimed {
            stream: self,
            release: true,
        })
    }

    /// Takes the context for one operation; None if another thread has it (or a queue owns
    /// it).
    pub(crate) fn claim(&self) -> Option<Claimed<'_>> {
        self.state
            .compare_exchange(FREE, BUSY, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| Claimed {
                stream: self,
                release: true,
            })
    }

    /// Takes the context for the holder of `owner` (an [`owner_id`], one software queue, used
    /// by one thread at a time): the first call takes it for good with one atomic exchange,
    /// later calls see their own id with a plain load (no locked instruction, which would wait
    /// for the previous operation's stores to guest memory). None if it is busy or owned by
    /// another id: the caller uses the one-shot path.
    pub(crate) fn claim_owned(&self, owner: u64) -> Option<Claimed<'_>> {
        debug_assert!(owner > BUSY);
        // Only the holder of `owner` ever stores it, so seeing it is seeing our own store.
        let mine = self.state.load(Ordering::Relaxed) == owner
            || self
                .state
                .compare_exchange(FREE, owner, Ordering::Acquire, Ordering::Relaxed)
                .is_ok();
        mine.then_some(Claimed {
            stream: self,
            release: false,
        })
    }
}

impl Drop for GcmStream {
    fn drop(&mut self) {
        // SAFETY: ours, no claim alive (`&mut self`); AWS-LC cleanses the key material.
        unsafe { sys::EVP_CIPHER_CTX_free(self.ctx.as_ptr()) };
    }
}

/// The context, taken by one thread for one operation.
pub(crate) struct Claimed<'a> {
    stream: &'a GcmStream,
    /// Whether the context is freed after the operation (not when a queue owns it).
    release: bool,
}

impl Drop for Claimed<'_> {
    fn drop(&mut self) {
        if self.release {
            self.stream.state.store(FREE, Ordering::Release);
        }
    }
}

impl Claimed<'_> {
    /// Resets the nonce, feeds the AAD, then transforms each piece of `src` into `dst`, one
    /// after the other. False if AWS-LC refused (a length over `c_int`).
    ///
    /// # Safety
    /// Every piece of `src` readable; `dst` writable for their total length; no piece
    /// overlapping `dst` unless it is the same memory (in place).
    unsafe fn run(&mut self, nonce: &[u8; 12], aad: &[u8], src: &[Seg<'_>], dst: *mut u8) -> bool {
        let c = self.stream.ctx.as_ptr();
        let mut out: c_int = 0;
        let Ok(aad_len) = c_int::try_from(aad.len()) else {
            return false;
        };
        // SAFETY: our claimed context; the nonce is 12 bytes (the context's IV length).
        let ok = unsafe {
            if self.stream.encrypt {
                sys::EVP_EncryptInit_ex(c, null(), null_mut(), null(), nonce.as_ptr())
            } else {
                sys::EVP_DecryptInit_ex(c, null(), null_mut(), null(), nonce.as_ptr())
            }
        };
        if ok != 1 {
            return false;
        }
        let update = |o: *mut u8, i: *const u8, n: c_int, out: &mut c_int| {
            // SAFETY: the caller's pieces (or the AAD, with a null output); `o` has room for
            // `n` bytes (GCM writes exactly what it reads).
            unsafe {
                if self.stream.encrypt {
                    sys::EVP_EncryptUpdate(c, o, out, i, n)
                } else {
                    sys::EVP_DecryptUpdate(c, o, out, i, n)
                }
            }
        };
        if aad_len > 0 && update(std::ptr::null_mut(), aad.as_ptr(), aad_len, &mut out) != 1 {
            return false;
        }
        let mut at = 0usize;
        for s in src.iter().filter(|s| !s.is_empty()) {
            let Ok(n) = c_int::try_from(s.len()) else {
                return false;
            };
            // `at` stays within the caller's `dst` (the sum of the pieces' lengths).
            if update(dst.wrapping_add(at), s.ptr(), n, &mut out) != 1 || out != n {
                return false;
            }
            at += s.len();
        }
        true
    }

    /// Encrypts the pieces of `src` into `dst` (their total length) and writes the tag's 16
    /// bytes straight to `tag_out` (no copy through the stack). False if AWS-LC refused.
    ///
    /// # Safety
    /// As for `run`; `tag_out..tag_out + 16` writable (raw memory, possibly a guest's).
    pub(crate) unsafe fn seal_to(
        &mut self,
        nonce: &[u8; 12],
        aad: &[u8],
        src: &[Seg<'_>],
        dst: *mut u8,
        tag_out: *mut u8,
    ) -> bool {
        if !self.stream.encrypt {
            return false;
        }
        // SAFETY: forwarded.
        if !unsafe { self.run(nonce, aad, src, dst) } {
            return false;
        }
        let c = self.stream.ctx.as_ptr();
        let mut out: c_int = 0;
        // SAFETY: our context; GCM's final writes no bytes (a null output is not read);
        // the tag goes to the caller's 16 writable bytes.
        unsafe {
            sys::EVP_EncryptFinal_ex(c, tag_out, &mut out) == 1
                && sys::EVP_CIPHER_CTX_ctrl(
                    c,
                    sys::EVP_CTRL_GCM_GET_TAG,
                    TAG as c_int,
                    tag_out.cast(),
                ) == 1
        }
    }

    /// Encrypts the pieces of `src` into `dst` (their total length); returns the tag.
    ///
    /// # Safety
    /// As for `run`: pieces readable, `dst` writable for their total, no partial overlap.
    pub(crate) unsafe fn seal(
        &mut self,
        nonce: &[u8; 12],
        aad: &[u8],
        src: &[Seg<'_>],
        dst: *mut u8,
    ) -> Option<[u8; TAG]> {
        let mut tag = [0u8; TAG];
        // SAFETY: forwarded; the tag goes to our 16-byte local.
        unsafe { self.seal_to(nonce, aad, src, dst, tag.as_mut_ptr()) }.then_some(tag)
    }

    /// Decrypts the pieces of `src` into `dst` (their total length) and checks `tag`: true if
    /// it verified. On false `dst` holds unverified plaintext: the caller wipes it.
    ///
    /// # Safety
    /// As for [`seal`](Self::seal).
    pub(crate) unsafe fn open(
        &mut self,
        nonce: &[u8; 12],
        aad: &[u8],
        tag: &[u8; TAG],
        src: &[Seg<'_>],
        dst: *mut u8,
    ) -> bool {
        if self.stream.encrypt {
            return false;
        }
        // SAFETY: forwarded.
        if !unsafe { self.run(nonce, aad, src, dst) } {
            return false;
        }
        let c = self.stream.ctx.as_ptr();
        let mut out: c_int = 0;
        let mut end = 0u8;
        // SAFETY: our context; the tag is 16 bytes, only read (copied) by AWS-LC despite the
        // mutable pointer its signature takes; GCM's final writes no bytes.
        unsafe {
            sys::EVP_CIPHER_CTX_ctrl(
                c,
                sys::EVP_CTRL_GCM_SET_TAG,
                TAG as c_int,
                tag.as_ptr().cast_mut().cast(),
            ) == 1
                && sys::EVP_DecryptFinal_ex(c, &mut end, &mut out) == 1
        }
    }
}
