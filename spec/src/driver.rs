//! The look-aside crypto driver contract.
//!
//! Shape (the same for a synchronous software driver and an asynchronous hardware one):
//! - [`CryptoDriver`]: capabilities, session creation, and one [`CryptoQueue`] per backend worker.
//! - A session is a driver object behind an `Arc` ([`SessionHandle`]); closing a session is
//!   dropping the last handle, and drivers zeroize key material in `Drop`. The backend keeps its
//!   own id → handle table, so the data path needs no driver-side lookup or lock.
//! - [`CryptoQueue::enqueue`] takes a batch of [`CryptoOp`]s whose buffers are scatter-gather
//!   [`Seg`] lists (guest memory, zero-copy); [`CryptoQueue::dequeue`] hands back
//!   [`Completion`]s. A synchronous driver completes inside `enqueue`; an asynchronous one later,
//!   and signals its [`CryptoQueue::notifier`] eventfd. Nothing here allocates per operation.

use std::any::Any;
use std::marker::PhantomData;
use std::os::fd::RawFd;
use std::sync::Arc;

use crate::algo::{
    AeadAlg, ChainAuth, ChainOrder, CipherAlg, Direction, HashAlg, MacAlg, SessionParams,
    MAX_AUTH_KEY_LEN, MAX_CIPHER_KEY_LEN,
};
use crate::error::CryptoError;
use crate::virtio_crypto::{self as vc, Config};

/// One contiguous piece of a buffer that an operation reads or writes.
///
/// A `Seg` is a pointer and a length. Building one from a slice is safe; building one from a raw
/// pointer (guest memory) is `unsafe`. Either way the memory must outlive the operation, which
/// the caller of the `unsafe` [`CryptoQueue::enqueue`] promises.
#[derive(Clone, Copy, Debug)]
pub struct Seg<'a> {
    ptr: *mut u8,
    len: usize,
    _life: PhantomData<&'a mut [u8]>,
}

// SAFETY: a `Seg` only describes memory; the promises about that memory (validity, no
// conflicting access) are made by whoever builds it and whoever enqueues it, from any thread.
unsafe impl Send for Seg<'_> {}
// SAFETY: as above; sharing a description across threads gives no access by itself.
unsafe impl Sync for Seg<'_> {}

impl<'a> Seg<'a> {
    /// A read-only segment over `buf`. Drivers never write through segments in the read-only
    /// fields of an operation (`src`, `aad`, and `digest` of an AEAD decrypt).
    pub fn from_ref(buf: &'a [u8]) -> Self {
        Self {
            ptr: buf.as_ptr() as *mut u8,
            len: buf.len(),
            _life: PhantomData,
        }
    }

    /// A writable segment over `buf`.
    pub fn from_mut(buf: &'a mut [u8]) -> Self {
        Self {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
            _life: PhantomData,
        }
    }

    /// A segment over raw memory, typically mapped guest memory.
    ///
    /// # Safety
    /// `ptr..ptr + len` must be mapped, readable (and writable if used as a destination), and
    /// stay so until the operation carrying this segment has completed.
    pub unsafe fn from_raw(ptr: *mut u8, len: usize) -> Self {
        Self {
            ptr,
            len,
            _life: PhantomData,
        }
    }

    /// Start address.
    pub fn ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the segment is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes, read-only.
    ///
    /// # Safety
    /// No `&mut` to any of these bytes may be live while the returned slice is. Over guest
    /// memory, only for the span of one primitive call on opaque data (see
    /// [`CryptoQueue::enqueue`]).
    pub unsafe fn as_slice(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: validity for `len` bytes was promised at construction; exclusivity by the
        // caller of this function.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// The bytes, writable.
    ///
    /// # Safety
    /// The segment must be writable (a destination), and no other reference to any of these
    /// bytes may be live while the returned slice is. Over guest memory, only for the span of
    /// one primitive call on opaque data (see [`CryptoQueue::enqueue`]).
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn as_mut_slice(&self) -> &mut [u8] {
        if self.len == 0 {
            return &mut [];
        }
        // SAFETY: validity and writability for `len` bytes were promised at construction;
        // exclusivity by the caller of this function.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

/// Total length of a scatter-gather list.
pub fn sg_len(sg: &[Seg<'_>]) -> usize {
    sg.iter().map(|s| s.len).sum()
}

/// An IV, nonce or initial counter block, carried inline (at most 16 bytes; the bytes past
/// the length are zero).
///
/// Aligned to 8 bytes, so that moving one (into a [`CryptoOp`], out of it) is two 8-byte words
/// and a byte at fixed, aligned offsets: unaligned (17 bytes at offset 0), LLVM copied it in
/// overlapping 4-, 8- and 1-byte pieces, and a load overlapping two of the stores just made
/// cannot be forwarded from them; it waits until the store buffer drains (~13 % of the
/// look-aside backend's per-request parse and submit at 64 B; docs/performance.md, "tenth pass").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C, align(8))]
pub struct Iv {
    bytes: [u8; 16],
    len: u8,
}

impl Iv {
    /// Longest IV an operation can carry.
    pub const MAX: usize = 16;

    /// Copies `iv`; fails with [`CryptoError::InvalidIvLength`] when longer than 16 bytes.
    pub fn new(iv: &[u8]) -> Result<Self, CryptoError> {
        if iv.len() > Self::MAX {
            return Err(CryptoError::InvalidIvLength);
        }
        let mut bytes = [0u8; 16];
        bytes[..iv.len()].copy_from_slice(iv);
        Ok(Self {
            bytes,
            len: iv.len() as u8,
        })
    }

    /// The IV of `len` bytes whose bytes, in order, are those of the two little-endian words
    /// `words` (bytes past `len` are ignored); fails with [`CryptoError::InvalidIvLength`]
    /// when `len` is over 16. Built from whole words: no byte-wise copy through memory.
    #[inline]
    pub fn from_words(words: [u64; 2], len: usize) -> Result<Self, CryptoError> {
        if len > Self::MAX {
            return Err(CryptoError::InvalidIvLength);
        }
        // Bytes past `len` cleared (as `new` leaves them): keep the low `n` bytes of a word.
        let keep = |w: u64, n: usize| match n {
            0 => 0,
            1..=7 => w & ((1u64 << (8 * n)) - 1),
            _ => w,
        };
        let lo = keep(words[0], len).to_le_bytes();
        let hi = keep(words[1], len.saturating_sub(8)).to_le_bytes();
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&lo);
        bytes[8..].copy_from_slice(&hi);
        Ok(Self {
            bytes,
            len: len as u8,
        })
    }

    /// The IV bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

/// Byte ranges of a chained (cipher + hash/MAC) operation, relative to the start of the source
/// (and, identically laid out, of the destination). Bytes of the source outside the cipher
/// range are copied to the destination unchanged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChainRanges {
    /// First byte the cipher covers.
    pub cipher_offset: u32,
    /// Bytes the cipher covers.
    pub cipher_len: u32,
    /// First byte the hash/MAC covers.
    pub auth_offset: u32,
    /// Bytes the hash/MAC covers.
    pub auth_len: u32,
}

/// One operation in a session. What is read and written depends on the session:
///
/// | session | reads | writes |
/// |---|---|---|
/// | cipher | `iv`, `src` | `dst` (same length as `src`) |
/// | hash / MAC | `src` | `digest` (the session's digest length) |
/// | AEAD encrypt | `iv`, `aad`, `src` | `dst` (ciphertext, `src` length), `digest` (tag) |
/// | AEAD decrypt | `iv`, `aad`, `src` (ciphertext), `digest` (tag) | `dst` (plaintext) only if the tag verifies |
/// | chain | `iv`, `src` (+`aad` hashed before the data when given) | `dst`, `digest` |
///
/// `src` and `dst` either describe exactly the same memory (in place) or do not overlap.
#[derive(Clone, Copy)]
pub struct CryptoOp<'a> {
    /// The session (its direction and algorithms).
    pub session: &'a SessionHandle,
    /// IV / nonce / counter.
    pub iv: Iv,
    /// Input data.
    pub src: &'a [Seg<'a>],
    /// Output data.
    pub dst: &'a [Seg<'a>],
    /// Additional authenticated data (AEAD and chains).
    pub aad: &'a [Seg<'a>],
    /// Digest / tag (see the table above for its direction).
    pub digest: &'a [Seg<'a>],
    /// Ranges of a chained operation (ignored by other sessions).
    pub chain: ChainRanges,
    /// Opaque value handed back in the [`Completion`].
    pub user_data: u64,
}

impl std::fmt::Debug for CryptoOp<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CryptoOp")
            .field("session", &self.session.info())
            .field("src_len", &sg_len(self.src))
            .field("dst_len", &sg_len(self.dst))
            .field("aad_len", &sg_len(self.aad))
            .field("digest_len", &sg_len(self.digest))
            .field("chain", &self.chain)
            .field("user_data", &self.user_data)
            .finish()
    }
}

/// The result of one operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The `user_data` of the operation.
    pub user_data: u64,
    /// Success, or why it failed.
    pub result: Result<(), CryptoError>,
}

impl Default for Completion {
    fn default() -> Self {
        Self {
            user_data: 0,
            result: Ok(()),
        }
    }
}

/// A key-free summary of a session, which the backend uses to parse and check requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SessionInfo {
    /// Cipher only.
    Cipher {
        /// Mode.
        alg: CipherAlg,
        /// Direction.
        dir: Direction,
    },
    /// Hash only.
    Hash {
        /// Function.
        alg: HashAlg,
        /// Digest length produced.
        digest_len: usize,
    },
    /// MAC only.
    Mac {
        /// Algorithm.
        alg: MacAlg,
        /// MAC length produced.
        digest_len: usize,
    },
    /// AEAD.
    Aead {
        /// Algorithm.
        alg: AeadAlg,
        /// Direction.
        dir: Direction,
        /// Tag length.
        tag_len: usize,
    },
    /// Cipher chained with hash/MAC.
    Chain {
        /// Order of the halves.
        order: ChainOrder,
        /// Cipher mode.
        cipher: CipherAlg,
        /// Cipher direction.
        dir: Direction,
        /// Hash or MAC.
        auth: ChainAuth,
        /// Digest length produced.
        digest_len: usize,
    },
}

impl SessionParams<'_> {
    /// The key-free summary of these (validated) parameters.
    pub fn info(&self) -> SessionInfo {
        match *self {
            SessionParams::Cipher { alg, dir, .. } => SessionInfo::Cipher { alg, dir },
            SessionParams::Hash { alg, digest_len } => SessionInfo::Hash { alg, digest_len },
            SessionParams::Mac {
                alg, digest_len, ..
            } => SessionInfo::Mac { alg, digest_len },
            SessionParams::Aead {
                alg, tag_len, dir, ..
            } => SessionInfo::Aead { alg, dir, tag_len },
            SessionParams::Chain {
                order,
                cipher,
                dir,
                auth,
                digest_len,
                ..
            } => SessionInfo::Chain {
                order,
                cipher,
                dir,
                auth,
                digest_len,
            },
        }
    }
}

/// A session as a driver holds it. Drivers zeroize key material when it is dropped.
pub trait DriverSession: Send + Sync + 'static {
    /// The key-free summary.
    fn info(&self) -> SessionInfo;
    /// For the owning driver to recover its concrete type.
    fn as_any(&self) -> &dyn Any;
}

/// A shared handle to a driver session; the session closes when the last handle drops.
pub type SessionHandle = Arc<dyn DriverSession>;

/// What a driver (or a combination of drivers) can do, as virtio-crypto bit masks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Bit per `SERVICE_*`.
    pub services: u32,
    /// Bit per `cipher::*`.
    pub cipher: u64,
    /// Bit per `hash::*`.
    pub hash: u32,
    /// Bit per `mac::*`.
    pub mac: u64,
    /// Bit per `aead::*`.
    pub aead: u32,
    /// Longest cipher key.
    pub max_cipher_key_len: u32,
    /// Longest auth key.
    pub max_auth_key_len: u32,
    /// Largest request content.
    pub max_size: u64,
}

impl Capabilities {
    /// Everything dpacc's software driver implements.
    pub fn software() -> Self {
        let mut c = Self {
            max_cipher_key_len: MAX_CIPHER_KEY_LEN as u32,
            max_auth_key_len: MAX_AUTH_KEY_LEN as u32,
            max_size: 1 << 20,
            ..Self::default()
        };
        for a in [CipherAlg::AesCbc, CipherAlg::AesCtr] {
            c.add_cipher(a);
        }
        for h in [
            HashAlg::Sha1,
            HashAlg::Sha256,
            HashAlg::Sha384,
            HashAlg::Sha512,
        ] {
            c.add_hash(h);
            c.add_mac(MacAlg::Hmac(h));
        }
        for a in [AeadAlg::AesGcm, AeadAlg::ChaCha20Poly1305] {
            c.add_aead(a);
        }
        c
    }

    /// Marks a cipher as supported.
    pub fn add_cipher(&mut self, a: CipherAlg) {
        self.services |= 1 << vc::SERVICE_CIPHER;
        self.cipher |= 1 << a.to_virtio();
    }
    /// Marks a hash as supported.
    pub fn add_hash(&mut self, h: HashAlg) {
        self.services |= 1 << vc::SERVICE_HASH;
        self.hash |= 1 << h.to_virtio();
    }
    /// Marks a MAC as supported.
    pub fn add_mac(&mut self, m: MacAlg) {
        self.services |= 1 << vc::SERVICE_MAC;
        self.mac |= 1 << m.to_virtio();
    }
    /// Marks an AEAD as supported.
    pub fn add_aead(&mut self, a: AeadAlg) {
        self.services |= 1 << vc::SERVICE_AEAD;
        self.aead |= 1 << a.to_virtio();
    }

    /// Whether a cipher is supported.
    pub fn has_cipher(&self, a: CipherAlg) -> bool {
        self.cipher & (1 << a.to_virtio()) != 0
    }
    /// Whether a hash is supported.
    pub fn has_hash(&self, h: HashAlg) -> bool {
        self.hash & (1 << h.to_virtio()) != 0
    }
    /// Whether a MAC is supported.
    pub fn has_mac(&self, m: MacAlg) -> bool {
        self.mac & (1 << m.to_virtio()) != 0
    }
    /// Whether an AEAD is supported.
    pub fn has_aead(&self, a: AeadAlg) -> bool {
        self.aead & (1 << a.to_virtio()) != 0
    }

    /// Whether a session with these parameters can be created.
    pub fn supports(&self, p: &SessionParams<'_>) -> bool {
        match *p {
            SessionParams::Cipher { alg, .. } => self.has_cipher(alg),
            SessionParams::Hash { alg, .. } => self.has_hash(alg),
            SessionParams::Mac { alg, .. } => self.has_mac(alg),
            SessionParams::Aead { alg, .. } => self.has_aead(alg),
            SessionParams::Chain { cipher, auth, .. } => {
                self.has_cipher(cipher)
                    && match auth {
                        ChainAuth::Hash(h) => self.has_hash(h),
                        ChainAuth::Mac(m) => self.has_mac(m),
                    }
            }
        }
    }

    /// What either of two drivers can do (a driver plus its software fallback).
    pub fn union(&self, o: &Self) -> Self {
        Self {
            services: self.services | o.services,
            cipher: self.cipher | o.cipher,
            hash: self.hash | o.hash,
            mac: self.mac | o.mac,
            aead: self.aead | o.aead,
            max_cipher_key_len: self.max_cipher_key_len.max(o.max_cipher_key_len),
            max_auth_key_len: self.max_auth_key_len.max(o.max_auth_key_len),
            max_size: self.max_size.max(o.max_size),
        }
    }

    /// The virtio-crypto config space advertising these capabilities.
    pub fn to_config(&self, max_dataqueues: u32) -> Config {
        Config {
            status: vc::S_HW_READY.into(),
            max_dataqueues: max_dataqueues.into(),
            crypto_services: self.services.into(),
            cipher_algo_l: (self.cipher as u32).into(),
            cipher_algo_h: ((self.cipher >> 32) as u32).into(),
            hash_algo: self.hash.into(),
            mac_algo_l: (self.mac as u32).into(),
            mac_algo_h: ((self.mac >> 32) as u32).into(),
            aead_algo: self.aead.into(),
            max_cipher_key_len: self.max_cipher_key_len.into(),
            max_auth_key_len: self.max_auth_key_len.into(),
            akcipher_algo: 0.into(),
            max_size: self.max_size.into(),
        }
    }

    /// The capabilities a config space advertises (for drivers of the device).
    pub fn from_config(c: &Config) -> Self {
        Self {
            services: c.crypto_services.to_native(),
            cipher: u64::from(c.cipher_algo_l.to_native())
                | (u64::from(c.cipher_algo_h.to_native()) << 32),
            hash: c.hash_algo.to_native(),
            mac: u64::from(c.mac_algo_l.to_native()) | (u64::from(c.mac_algo_h.to_native()) << 32),
            aead: c.aead_algo.to_native(),
            max_cipher_key_len: c.max_cipher_key_len.to_native(),
            max_auth_key_len: c.max_auth_key_len.to_native(),
            max_size: c.max_size.to_native(),
        }
    }
}

/// A look-aside crypto driver.
pub trait CryptoDriver: Send + Sync {
    /// Short name (`sw`, `afalg`, a plug-in's name).
    fn name(&self) -> &str;
    /// What this driver can do.
    fn capabilities(&self) -> Capabilities;
    /// Creates a session. Drivers call [`SessionParams::validated`] first.
    fn create_session(&self, params: &SessionParams<'_>) -> Result<SessionHandle, CryptoError>;
    /// Opens a queue for one worker thread. `depth` bounds the operations in flight.
    fn open_queue(&self, depth: usize) -> Result<Box<dyn CryptoQueue>, CryptoError>;
}

/// A per-worker submission/completion queue. Not shared between threads, so it needs no lock.
pub trait CryptoQueue: Send {
    /// Takes operations from the front of `ops` until the queue is full; returns how many it
    /// took. Every taken operation produces exactly one [`Completion`]. The `ops` slice itself
    /// (and the segment lists it points to) may be reused as soon as this returns.
    ///
    /// Segments may lie in guest memory that a misbehaving guest writes while the operation
    /// runs (docs/decisions/0005-guest-memory-access.md). A driver treats segment contents as
    /// opaque bytes in and out: it takes no decision (a length, an index, an address, a branch
    /// that matters to anyone but that guest) from them, copies small parameters it needs
    /// twice (tag, AAD) before use, and forms Rust slices over them only for the span of one
    /// call into a primitive that reads and writes them as data.
    ///
    /// # Safety
    /// The memory behind every [`Seg`] of every taken operation must stay mapped (and the
    /// caller must not access it) until that operation's completion has been dequeued.
    unsafe fn enqueue(&mut self, ops: &[CryptoOp<'_>]) -> usize;

    /// Moves finished completions into `out`; returns how many. Callers clamp the count to
    /// `out.len()` and match completions by `user_data`: neither is trusted blindly.
    fn dequeue(&mut self, out: &mut [Completion]) -> usize;

    /// Operations taken but not yet dequeued.
    fn in_flight(&self) -> usize;

    /// An eventfd that becomes readable when completions are ready, for asynchronous drivers.
    /// Synchronous drivers (completions ready when `enqueue` returns) return `None`.
    fn notifier(&self) -> Option<RawFd> {
        None
    }
}

/// Runs one operation to completion on an idle queue: the safe, synchronous way to use any
/// driver (tests, the in-process bench, the CLI's local mode).
///
/// Fails with [`CryptoError::Busy`] when the queue has operations in flight or refuses the op.
pub fn run_sync(queue: &mut dyn CryptoQueue, op: &CryptoOp<'_>) -> Result<(), CryptoError> {
    if queue.in_flight() != 0 {
        return Err(CryptoError::Busy);
    }
    // SAFETY: every segment borrows memory for 'a, which outlives this call, and this call only
    // returns once the operation's completion has been dequeued (the queue was idle, so the one
    // completion we wait for is ours).
    let taken = unsafe { queue.enqueue(std::slice::from_ref(op)) };
    if taken == 0 {
        return Err(CryptoError::Busy);
    }
    let mut done = [Completion {
        user_data: !op.user_data,
        result: Err(CryptoError::Internal("no completion")),
    }];
    loop {
        // A count alone is not believed: the one completion must be ours.
        if queue.dequeue(&mut done) > 0 {
            return match done[0].user_data == op.user_data {
                true => done[0].result,
                false => Err(CryptoError::Internal(
                    "the driver returned a foreign completion",
                )),
            };
        }
        std::thread::yield_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iv_from_words_equals_iv_new_at_every_length() {
        let bytes: Vec<u8> = (1..=16).collect();
        let w = |r: &[u8]| u64::from_le_bytes(r.try_into().unwrap());
        let words = [w(&bytes[..8]), w(&bytes[8..])];
        for len in 0..=16 {
            let a = Iv::from_words(words, len).unwrap();
            assert_eq!(a, Iv::new(&bytes[..len]).unwrap(), "len {len}");
            assert_eq!(a.as_slice(), &bytes[..len]);
        }
        assert_eq!(Iv::from_words(words, 17), Err(CryptoError::InvalidIvLength));
    }

    #[test]
    fn software_capabilities_round_trip_through_config() {
        let c = Capabilities::software();
        assert!(c.has_cipher(CipherAlg::AesCtr));
        assert!(c.has_mac(MacAlg::Hmac(HashAlg::Sha384)));
        let cfg = c.to_config(4);
        assert_eq!(cfg.max_dataqueues.to_native(), 4);
        assert_eq!(cfg.cipher_algo_l.to_native(), (1 << 3) | (1 << 4));
        assert_eq!(Capabilities::from_config(&cfg), c);
    }

    #[test]
    fn union_adds_what_either_side_has() {
        let mut a = Capabilities::default();
        a.add_cipher(CipherAlg::AesCbc);
        let mut b = Capabilities::default();
        b.add_aead(AeadAlg::AesGcm);
        let u = a.union(&b);
        assert!(u.has_cipher(CipherAlg::AesCbc) && u.has_aead(AeadAlg::AesGcm));
        assert!(!u.has_aead(AeadAlg::ChaCha20Poly1305));
    }

    #[test]
    fn iv_longer_than_16_is_rejected() {
        assert_eq!(Iv::new(&[0; 17]), Err(CryptoError::InvalidIvLength));
        assert_eq!(Iv::new(&[7; 12]).unwrap().as_slice(), &[7; 12]);
    }
}
