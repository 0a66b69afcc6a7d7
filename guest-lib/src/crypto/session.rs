//! Sessions and their synchronous conveniences.

use std::sync::Arc;

use dpacc_spec::{CryptoError, Direction, SessionInfo};

use super::device::Inner;
use super::op::{Completion, Op};
use super::request::digest_len;
use crate::error::{Error, Result};
use crate::mem::DmaBuf;

/// A device session (keys live in the backend). Destroyed over the control queue by
/// [`close`](Self::close) or on drop. `Send + Sync`: build [`Op`]s for it from any thread.
pub struct Session {
    dev: Arc<Inner>,
    id: u64,
    service: u32,
    info: SessionInfo,
    open: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("info", &self.info)
            .finish()
    }
}

impl Session {
    pub(super) fn new(dev: Arc<Inner>, id: u64, service: u32, info: SessionInfo) -> Self {
        Self {
            dev,
            id,
            service,
            info,
            open: true,
        }
    }

    /// The device's session id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Algorithms, direction and digest length.
    pub fn info(&self) -> SessionInfo {
        self.info
    }

    /// Bytes of digest / MAC this session produces (0 for cipher and AEAD sessions).
    pub fn digest_len(&self) -> usize {
        digest_len(&self.info)
    }

    /// Destroys the session, reporting the device's answer.
    pub fn close(mut self) -> Result<()> {
        self.open = false;
        self.dev.destroy_session(self.service, self.id)
    }

    fn direction(&self) -> Option<Direction> {
        match self.info {
            SessionInfo::Cipher { dir, .. }
            | SessionInfo::Aead { dir, .. }
            | SessionInfo::Chain { dir, .. } => Some(dir),
            _ => None,
        }
    }

    fn alloc(&self, len: usize) -> Result<DmaBuf> {
        DmaBuf::alloc(&self.dev.shared, len)
    }

    fn alloc_from(&self, data: &[u8]) -> Result<DmaBuf> {
        let mut b = self.alloc(data.len())?;
        b.as_mut_slice().copy_from_slice(data);
        Ok(b)
    }

    fn opt_aad(&self, aad: &[u8]) -> Result<Option<DmaBuf>> {
        if aad.is_empty() {
            Ok(None)
        } else {
            self.alloc_from(aad).map(Some)
        }
    }

    /// Runs an operation synchronously on any free data queue of the device.
    pub fn run(&self, op: Op) -> Result<Completion> {
        self.dev.run_with(op)
    }

    fn run_ok(&self, op: Op) -> Result<Completion> {
        let c = self.run(op)?;
        c.result?;
        Ok(c)
    }

    fn cipher_or_aead(
        &self,
        want: Direction,
        iv: &[u8],
        aad: &[u8],
        input: &[u8],
    ) -> Result<Vec<u8>> {
        if self.direction() != Some(want) {
            return Err(Error::InvalidArgument(
                "session direction or kind does not match",
            ));
        }
        match self.info {
            SessionInfo::Cipher { .. } => {
                if !aad.is_empty() {
                    return Err(Error::InvalidArgument("cipher sessions take no AAD"));
                }
                let src = self.alloc_from(input)?;
                let dst = self.alloc(input.len())?;
                let c = self.run_ok(Op::cipher(self, iv, src, dst))?;
                Ok(out_bytes(c.bufs.dst, input.len()))
            }
            SessionInfo::Aead { dir, tag_len, .. } => {
                let out = match dir {
                    Direction::Encrypt => input.len() + tag_len,
                    Direction::Decrypt => input
                        .len()
                        .checked_sub(tag_len)
                        .ok_or(CryptoError::InvalidDataLength)?,
                };
                let src = self.alloc_from(input)?;
                let dst = self.alloc(out)?;
                let aad = self.opt_aad(aad)?;
                let c = self.run_ok(Op::aead(self, iv, aad, src, dst))?;
                Ok(out_bytes(c.bufs.dst, out))
            }
            _ => Err(Error::InvalidArgument("not a cipher or AEAD session")),
        }
    }

    /// Encrypts with a cipher session (`aad` must be empty; output has the input's length) or an
    /// AEAD session (output: ciphertext ‖ tag).
    pub fn encrypt(&self, iv: &[u8], aad: &[u8], input: &[u8]) -> Result<Vec<u8>> {
        self.cipher_or_aead(Direction::Encrypt, iv, aad, input)
    }

    /// Decrypts with a cipher session or an AEAD session (input: ciphertext ‖ tag). A bad tag is
    /// `Error::Crypto(CryptoError::AuthFailed)`.
    pub fn decrypt(&self, iv: &[u8], aad: &[u8], input: &[u8]) -> Result<Vec<u8>> {
        self.cipher_or_aead(Direction::Decrypt, iv, aad, input)
    }

    /// Hash (hash session) or MAC (MAC session) of `input`.
    pub fn digest(&self, input: &[u8]) -> Result<Vec<u8>> {
        if !matches!(
            self.info,
            SessionInfo::Hash { .. } | SessionInfo::Mac { .. }
        ) {
            return Err(Error::InvalidArgument("not a hash or MAC session"));
        }
        let n = self.digest_len();
        let src = self.alloc_from(input)?;
        let dig = self.alloc(n)?;
        let c = self.run_ok(Op::digest(self, src, dig))?;
        Ok(out_bytes(c.bufs.digest, n))
    }

    /// Same as [`digest`](Self::digest), for MAC sessions.
    pub fn mac(&self, input: &[u8]) -> Result<Vec<u8>> {
        self.digest(input)
    }

    /// Chained session, any direction: returns (cipher output, digest over `aad` ‖ the
    /// authenticated data). For encrypt-then-MAC (`CipherThenHash`, encrypt) the digest is the
    /// MAC to send.
    pub fn chain(&self, iv: &[u8], aad: &[u8], input: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
        if !matches!(self.info, SessionInfo::Chain { .. }) {
            return Err(Error::InvalidArgument("not a chained session"));
        }
        let n = self.digest_len();
        let src = self.alloc_from(input)?;
        let dst = self.alloc(input.len())?;
        let dig = self.alloc(n)?;
        let aad = self.opt_aad(aad)?;
        let c = self.run_ok(Op::chain(self, iv, aad, src, dst, dig))?;
        Ok((
            out_bytes(c.bufs.dst, input.len()),
            out_bytes(c.bufs.digest, n),
        ))
    }

    /// Chained decrypt side (`HashThenCipher`, decrypt): computes the MAC over `aad` ‖
    /// `ciphertext`, compares it with `mac` in constant time and returns the plaintext only if
    /// they match; otherwise `Error::Crypto(CryptoError::AuthFailed)`.
    pub fn verify_then_decrypt(
        &self,
        iv: &[u8],
        aad: &[u8],
        ciphertext: &[u8],
        mac: &[u8],
    ) -> Result<Vec<u8>> {
        if !matches!(
            self.info,
            SessionInfo::Chain {
                dir: Direction::Decrypt,
                ..
            }
        ) {
            return Err(Error::InvalidArgument("not a decrypting chained session"));
        }
        let n = self.digest_len();
        if mac.len() != n {
            return Err(CryptoError::AuthFailed.into());
        }
        let src = self.alloc_from(ciphertext)?;
        let dst = self.alloc(ciphertext.len())?;
        let dig = self.alloc(n)?;
        let exp = self.alloc_from(mac)?;
        let aad = self.opt_aad(aad)?;
        let c = self.run_ok(Op::chain_verify(self, iv, aad, src, dst, dig, exp))?;
        Ok(out_bytes(c.bufs.dst, ciphertext.len()))
    }
}

fn out_bytes(b: Option<DmaBuf>, n: usize) -> Vec<u8> {
    b.map_or_else(Vec::new, |b| b.as_slice()[..n.min(b.len())].to_vec())
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.open {
            let _ = self.dev.destroy_session(self.service, self.id);
        }
    }
}
