//! Operations: what an [`Op`] is, the buffers it owns ([`OpBufs`]), its checks and encoding into
//! a data request, and its result ([`Completion`]).

use dpacc_spec::{CipherAlg, CryptoError, Direction, Iv, SessionInfo};

use super::request::{self, RequestWords};
use super::session::Session;
use crate::mem::DmaBuf;

/// What kind of request an [`Op`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum OpKind {
    Cipher,
    Chain,
    Hash,
    Aead,
}

/// The buffers of an operation, handed back in its [`Completion`].
#[derive(Debug, Default)]
pub struct OpBufs {
    /// Input (cipher/AEAD/hash source).
    pub src: Option<DmaBuf>,
    /// Output (`None` for hashes and in-place operations).
    pub dst: Option<DmaBuf>,
    /// Additional authenticated data.
    pub aad: Option<DmaBuf>,
    /// Digest / MAC output (hash, MAC and chain sessions).
    pub digest: Option<DmaBuf>,
    /// Expected MAC of a verifying chain operation.
    pub expected: Option<DmaBuf>,
}

/// One operation, owning its buffers until it completes. Build it with the constructors below
/// (which take the session for its id and kind); the queue checks lengths when it is pushed.
#[derive(Debug)]
pub struct Op {
    pub(super) kind: OpKind,
    info: SessionInfo,
    session_id: u64,
    /// The IV zero-padded to [`Iv::MAX`] bytes, as the two words `Queue::push` stores.
    pub(super) iv: [u64; 2],
    pub(super) iv_len: u8,
    iv_err: bool,
    pub(super) in_place: bool,
    pub(super) user_data: u64,
    pub(super) bufs: OpBufs,
}

impl Op {
    #[inline]
    fn new(s: &Session, kind: OpKind, iv: &[u8], bufs: OpBufs) -> Self {
        let (words, iv_err) = match iv_words(iv) {
            Some(w) => (w, false),
            None => ([0; 2], true),
        };
        Self {
            kind,
            info: s.info(),
            session_id: s.id(),
            iv: words,
            iv_len: if iv_err { 0 } else { iv.len() as u8 },
            iv_err,
            in_place: false,
            user_data: 0,
            bufs,
        }
    }

    /// Cipher (CBC/CTR) in the session's direction: `dst[..src.len()]` receives the result.
    #[inline]
    pub fn cipher(s: &Session, iv: &[u8], src: DmaBuf, dst: DmaBuf) -> Self {
        let bufs = OpBufs {
            src: Some(src),
            dst: Some(dst),
            ..OpBufs::default()
        };
        Self::new(s, OpKind::Cipher, iv, bufs)
    }

    /// Cipher in place: `buf` is both source and destination.
    pub fn cipher_in_place(s: &Session, iv: &[u8], buf: DmaBuf) -> Self {
        let mut op = Self::new(
            s,
            OpKind::Cipher,
            iv,
            OpBufs {
                src: Some(buf),
                ..OpBufs::default()
            },
        );
        op.in_place = true;
        op
    }

    /// AEAD in the session's direction. Encrypt: `dst` receives ciphertext ‖ tag
    /// (`src.len() + 16` bytes). Decrypt: `src` is ciphertext ‖ tag, `dst` receives the plaintext
    /// (`src.len() - 16` bytes), and a bad tag completes with [`CryptoError::AuthFailed`].
    #[inline]
    pub fn aead(s: &Session, iv: &[u8], aad: Option<DmaBuf>, src: DmaBuf, dst: DmaBuf) -> Self {
        let bufs = OpBufs {
            src: Some(src),
            dst: Some(dst),
            aad,
            ..OpBufs::default()
        };
        Self::new(s, OpKind::Aead, iv, bufs)
    }

    /// Hash or MAC of `src` into `digest` (at least the session's digest length).
    #[inline]
    pub fn digest(s: &Session, src: DmaBuf, digest: DmaBuf) -> Self {
        let bufs = OpBufs {
            src: Some(src),
            digest: Some(digest),
            ..OpBufs::default()
        };
        Self::new(s, OpKind::Hash, &[], bufs)
    }

    /// Chained cipher + hash/MAC (both over all of `src`, the MAC also over `aad` first):
    /// `dst` receives the cipher output and `digest` the MAC.
    pub fn chain(
        s: &Session,
        iv: &[u8],
        aad: Option<DmaBuf>,
        src: DmaBuf,
        dst: DmaBuf,
        digest: DmaBuf,
    ) -> Self {
        let bufs = OpBufs {
            src: Some(src),
            dst: Some(dst),
            aad,
            digest: Some(digest),
            expected: None,
        };
        Self::new(s, OpKind::Chain, iv, bufs)
    }

    /// Like [`chain`](Self::chain), and then compares `digest` with `expected` in constant time:
    /// a mismatch completes with [`CryptoError::AuthFailed`] (the decrypt side of
    /// encrypt-then-MAC; the caller must not use `dst` unless the result is `Ok`).
    pub fn chain_verify(
        s: &Session,
        iv: &[u8],
        aad: Option<DmaBuf>,
        src: DmaBuf,
        dst: DmaBuf,
        digest: DmaBuf,
        expected: DmaBuf,
    ) -> Self {
        let mut op = Self::chain(s, iv, aad, src, dst, digest);
        op.bufs.expected = Some(expected);
        op
    }

    /// Sets the value handed back in the completion.
    #[inline]
    pub fn with_user_data(mut self, user_data: u64) -> Self {
        self.user_data = user_data;
        self
    }

    /// Gives the buffers back (e.g. after a [`Rejected`](crate::Rejected) push).
    pub fn into_bufs(self) -> OpBufs {
        self.bufs
    }

    /// A placeholder (what a rejection hands back once the real operation is in flight).
    pub(super) fn empty() -> Self {
        Self {
            kind: OpKind::Hash,
            info: SessionInfo::Hash {
                alg: dpacc_spec::HashAlg::Sha256,
                digest_len: 0,
            },
            session_id: 0,
            iv: [0; 2],
            iv_len: 0,
            iv_err: false,
            in_place: false,
            user_data: 0,
            bufs: OpBufs::default(),
        }
    }

    /// Checks lengths against the session; returns (request, result bytes the device writes
    /// before the status).
    #[inline]
    pub(super) fn encode(&self) -> Result<(RequestWords, usize), CryptoError> {
        let b = &self.bufs;
        let len = |o: &Option<DmaBuf>| o.as_ref().map_or(0, |x| x.len());
        let src = len(&b.src);
        let dst = if self.in_place { src } else { len(&b.dst) };
        let aad = len(&b.aad);
        let iv = usize::from(self.iv_len);
        let u = |v: usize| u32::try_from(v).map_err(|_| CryptoError::InvalidDataLength);
        if self.iv_err {
            return Err(CryptoError::InvalidIvLength);
        }
        let info = &self.info;
        let (op, algo) = request::opcode_and_algo(info);
        let id = self.session_id;
        match (self.kind, *info) {
            (OpKind::Cipher, SessionInfo::Cipher { alg, .. }) => {
                if iv != alg.iv_len() {
                    return Err(CryptoError::InvalidIvLength);
                }
                if alg == CipherAlg::AesCbc && src % 16 != 0 {
                    return Err(CryptoError::InvalidDataLength);
                }
                if dst < src {
                    return Err(CryptoError::BufferTooSmall);
                }
                Ok((RequestWords::cipher(op, algo, id, u(iv)?, u(src)?), src))
            }
            (OpKind::Chain, SessionInfo::Chain { cipher, .. }) => {
                let dl = request::digest_len(info);
                if iv != cipher.iv_len() {
                    return Err(CryptoError::InvalidIvLength);
                }
                if cipher == CipherAlg::AesCbc && src % 16 != 0 {
                    return Err(CryptoError::InvalidDataLength);
                }
                if dst < src || len(&b.digest) < dl {
                    return Err(CryptoError::BufferTooSmall);
                }
                if b.expected.as_ref().is_some_and(|e| e.len() != dl) {
                    return Err(CryptoError::InvalidDigestLength);
                }
                let req = RequestWords::chain(op, algo, id, u(iv)?, u(src)?, u(aad)?, u(dl)?);
                Ok((req, src + dl))
            }
            (OpKind::Hash, SessionInfo::Hash { .. } | SessionInfo::Mac { .. }) => {
                let dl = request::digest_len(info);
                if len(&b.digest) < dl {
                    return Err(CryptoError::BufferTooSmall);
                }
                Ok((RequestWords::hash(op, algo, id, u(src)?, u(dl)?), dl))
            }
            (OpKind::Aead, SessionInfo::Aead { alg, dir, tag_len }) => {
                if iv != alg.iv_len() {
                    return Err(CryptoError::InvalidIvLength);
                }
                let out = match dir {
                    Direction::Encrypt => src + tag_len,
                    Direction::Decrypt => src
                        .checked_sub(tag_len)
                        .ok_or(CryptoError::InvalidDataLength)?,
                };
                if dst < out {
                    return Err(CryptoError::BufferTooSmall);
                }
                let req = RequestWords::aead(op, algo, id, u(iv)?, u(aad)?, u(src)?, u(out)?);
                Ok((req, out))
            }
            _ => Err(CryptoError::BadRequest),
        }
    }
}

/// An IV of at most [`Iv::MAX`] bytes as the two native words of its zero-padded bytes (what a
/// request slot holds after the request); `None` when longer. The usual lengths are read with
/// fixed-size loads into registers.
#[inline]
fn iv_words(iv: &[u8]) -> Option<[u64; 2]> {
    let w8 = |b: &[u8]| u64::from_ne_bytes(b.try_into().unwrap_or_default());
    let w4 = |b: &[u8]| u32::from_le_bytes(b.try_into().unwrap_or_default());
    match iv.len() {
        0 => Some([0; 2]),
        12 => Some([w8(&iv[..8]), u64::from(w4(&iv[8..12])).to_le()]),
        16 => Some([w8(&iv[..8]), w8(&iv[8..16])]),
        n if n <= Iv::MAX => {
            let mut b = [0u8; Iv::MAX];
            b[..n].copy_from_slice(iv);
            Some([w8(&b[..8]), w8(&b[8..])])
        }
        _ => None,
    }
}

impl OpBufs {
    /// After an OK status: the constant-time MAC check of a verifying chain.
    pub(super) fn verify(&self) -> Result<(), CryptoError> {
        if let (Some(exp), Some(dig)) = (&self.expected, &self.digest) {
            let n = exp.len();
            if !ct_eq(&dig.as_slice()[..n.min(dig.len())], exp.as_slice()) {
                return Err(CryptoError::AuthFailed);
            }
        }
        Ok(())
    }
}

// Five buffers in 120 bytes: moved with vector stores, not a `memcpy` call (see `DmaBuf`).
const _: () = assert!(std::mem::size_of::<OpBufs>() == 120);

/// The result of one operation.
#[derive(Debug)]
pub struct Completion {
    /// The operation's user data.
    pub user_data: u64,
    /// `Ok`, or why it failed. [`CryptoError::AuthFailed`] only for a failed verification
    /// (AEAD tag, or a chain's MAC compared by the library); malformed requests are other errors.
    pub result: Result<(), CryptoError>,
    /// Bytes the device reported writing (result bytes plus the status byte).
    pub written: u32,
    /// The buffers, back in the caller's hands.
    pub bufs: OpBufs,
}

/// Constant-time equality (time depends on the lengths only).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut acc = 0u8;
    for (x, y) in a.iter().zip(b) {
        acc |= x ^ y;
    }
    std::hint::black_box(acc) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iv_words_are_the_padded_bytes() {
        let all: Vec<u8> = (1..=17).collect();
        for n in 0..=Iv::MAX {
            let mut b = [0u8; Iv::MAX];
            b[..n].copy_from_slice(&all[..n]);
            let w = iv_words(&all[..n]).unwrap();
            let got: Vec<u8> = w.iter().flat_map(|x| x.to_ne_bytes()).collect();
            assert_eq!(got, b, "length {n}");
        }
        assert_eq!(iv_words(&all), None);
    }
}
