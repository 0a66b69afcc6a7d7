//! The vhost-user crypto session messages QEMU 10 sends to a `cryptodev-vhost-user` backend.
//!
//! QEMU keeps the virtio-crypto control queue itself and, when the guest creates a session,
//! sends `VHOST_USER_CREATE_CRYPTO_SESSION` (26) with a [`QemuCryptoSession`] payload; the
//! backend answers with the same payload, `session_id` filled in (or -1 on error).
//! `VHOST_USER_CLOSE_CRYPTO_SESSION` (27) carries the session id as a `u64`.
//!
//! Layout (QEMU 9+, `hw/virtio/vhost-user.c` `VhostUserCryptoSession`, with
//! `CryptoDevBackendSymSessionInfo` / `CryptoDevBackendAsymSessionInfo` from
//! `include/system/cryptodev.h`), native endian, 1072 bytes:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | `op_code` (virtio control opcode, e.g. 2 = CIPHER_CREATE_SESSION) |
//! | 8 | 48 | sym session info (see [`QemuSymSessionInfo`]) |
//! | 56 | 64 | cipher key |
//! | 120 | 512 | auth key |
//! | 8 | 1056 | (asym arm: 32-byte info + 1024-byte key; the larger arm sizes the union) |
//! | 1064 | 8 | `session_id` (i64) |

use vm_memory::ByteValued;

use crate::algo::{ChainAuth, ChainOrder, CipherAlg, Direction, HashAlg, MacAlg, SessionParams};
use crate::error::CryptoError;
use crate::virtio_crypto as vc;

/// vhost-user request: create a crypto session.
pub const VHOST_USER_CREATE_CRYPTO_SESSION: u32 = 26;
/// vhost-user request: close a crypto session.
pub const VHOST_USER_CLOSE_CRYPTO_SESSION: u32 = 27;
/// vhost-user protocol feature bit that enables requests 26/27.
pub const VHOST_USER_PROTOCOL_F_CRYPTO_SESSION: u32 = 7;

/// QEMU's cipher key area.
pub const QEMU_SYM_CIPHER_MAX_KEY_LEN: usize = 64;
/// QEMU's auth key area.
pub const QEMU_SYM_HMAC_MAX_KEY_LEN: usize = 512;
/// QEMU's asymmetric key area.
pub const QEMU_ASYM_MAX_KEY_LEN: usize = 1024;

/// `CryptoDevBackendSymSessionInfo` as QEMU lays it out on x86_64 (48 bytes; the two trailing
/// pointers are QEMU-internal and meaningless to us).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QemuSymSessionInfo {
    /// `cipher::*`.
    pub cipher_alg: u32,
    /// Cipher key length.
    pub key_len: u32,
    /// `hash::*` or `mac::*` (by `hash_mode`).
    pub hash_alg: u32,
    /// Digest length.
    pub hash_result_len: u32,
    /// Auth key length.
    pub auth_key_len: u32,
    /// AAD length.
    pub add_len: u32,
    /// `SYM_OP_*`.
    pub op_type: u8,
    /// `OP_ENCRYPT` / `OP_DECRYPT`.
    pub direction: u8,
    /// `HASH_MODE_*`.
    pub hash_mode: u8,
    /// `CHAIN_ORDER_*`.
    pub alg_chain_order: u8,
    /// Alignment padding before the pointers.
    pub _pad: u32,
    /// QEMU pointer (ignored).
    pub cipher_key_ptr: u64,
    /// QEMU pointer (ignored).
    pub auth_key_ptr: u64,
}

/// The whole CREATE_CRYPTO_SESSION payload.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct QemuCryptoSession {
    /// Virtio control opcode.
    pub op_code: u64,
    /// The sym/asym union; use the accessors.
    pub u: [u8; 1056],
    /// Filled by the backend: new id, or -1.
    pub session_id: i64,
}

impl Default for QemuCryptoSession {
    fn default() -> Self {
        Self {
            op_code: 0,
            u: [0; 1056],
            session_id: 0,
        }
    }
}

impl std::fmt::Debug for QemuCryptoSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("QemuCryptoSession")
            .field("op_code", &self.op_code)
            .field("sym", &self.sym_info())
            .field("session_id", &self.session_id)
            .finish()
    }
}

// SAFETY: both types are `repr(C)`, contain only integers and byte arrays, have explicit
// padding fields (sizes asserted below), and every bit pattern is valid.
unsafe impl ByteValued for QemuSymSessionInfo {}
// SAFETY: as above.
unsafe impl ByteValued for QemuCryptoSession {}

const _: () = {
    assert!(core::mem::size_of::<QemuSymSessionInfo>() == 48);
    assert!(core::mem::size_of::<QemuCryptoSession>() == 1072);
    assert!(core::mem::offset_of!(QemuCryptoSession, session_id) == 1064);
};

const SYM_KEY_OFF: usize = 48;
const SYM_AUTH_KEY_OFF: usize = SYM_KEY_OFF + QEMU_SYM_CIPHER_MAX_KEY_LEN;

impl QemuCryptoSession {
    /// The symmetric session info.
    pub fn sym_info(&self) -> QemuSymSessionInfo {
        let mut i = QemuSymSessionInfo::default();
        i.as_mut_slice().copy_from_slice(&self.u[..48]);
        i
    }

    /// Sets the symmetric session info (for test frontends).
    pub fn set_sym_info(&mut self, i: &QemuSymSessionInfo) {
        self.u[..48].copy_from_slice(i.as_slice());
    }

    /// The whole cipher key area.
    pub fn key_area_mut(&mut self) -> &mut [u8] {
        &mut self.u[SYM_KEY_OFF..SYM_AUTH_KEY_OFF]
    }

    /// The whole auth key area.
    pub fn auth_key_area_mut(&mut self) -> &mut [u8] {
        &mut self.u[SYM_AUTH_KEY_OFF..SYM_AUTH_KEY_OFF + QEMU_SYM_HMAC_MAX_KEY_LEN]
    }

    /// Decodes the request into session parameters borrowing the keys from this payload.
    /// Only symmetric sessions (cipher, chain) exist in QEMU's vhost-user crypto path.
    pub fn session_params(&self) -> Result<SessionParams<'_>, CryptoError> {
        if self.op_code != u64::from(vc::CIPHER_CREATE_SESSION) {
            return Err(CryptoError::Unsupported);
        }
        let i = self.sym_info();
        let key_len = i.key_len as usize;
        if key_len > QEMU_SYM_CIPHER_MAX_KEY_LEN {
            return Err(CryptoError::InvalidKeyLength);
        }
        let key = &self.u[SYM_KEY_OFF..SYM_KEY_OFF + key_len];
        let cipher = CipherAlg::from_virtio(i.cipher_alg).ok_or(CryptoError::Unsupported)?;
        let dir = direction(u32::from(i.direction))?;
        match u32::from(i.op_type) {
            vc::SYM_OP_CIPHER => Ok(SessionParams::Cipher {
                alg: cipher,
                key,
                dir,
            }),
            vc::SYM_OP_ALGORITHM_CHAINING => {
                let auth_len = i.auth_key_len as usize;
                if auth_len > QEMU_SYM_HMAC_MAX_KEY_LEN {
                    return Err(CryptoError::InvalidKeyLength);
                }
                let (auth, auth_key) = chain_auth(
                    u32::from(i.hash_mode),
                    i.hash_alg,
                    &self.u[SYM_AUTH_KEY_OFF..SYM_AUTH_KEY_OFF + auth_len],
                )?;
                Ok(SessionParams::Chain {
                    order: chain_order(u32::from(i.alg_chain_order))?,
                    cipher,
                    cipher_key: key,
                    dir,
                    auth,
                    auth_key,
                    digest_len: i.hash_result_len as usize,
                })
            }
            _ => Err(CryptoError::Unsupported),
        }
    }
}

/// Decodes a virtio `OP_ENCRYPT`/`OP_DECRYPT`.
pub(crate) fn direction(v: u32) -> Result<Direction, CryptoError> {
    match v {
        vc::OP_ENCRYPT => Ok(Direction::Encrypt),
        vc::OP_DECRYPT => Ok(Direction::Decrypt),
        _ => Err(CryptoError::BadRequest),
    }
}

/// Decodes a virtio `CHAIN_ORDER_*`.
pub(crate) fn chain_order(v: u32) -> Result<ChainOrder, CryptoError> {
    match v {
        vc::CHAIN_ORDER_HASH_THEN_CIPHER => Ok(ChainOrder::HashThenCipher),
        vc::CHAIN_ORDER_CIPHER_THEN_HASH => Ok(ChainOrder::CipherThenHash),
        _ => Err(CryptoError::BadRequest),
    }
}

/// Decodes the hash half of a chain: plain hash (no key) or MAC (with key).
pub(crate) fn chain_auth(
    hash_mode: u32,
    algo: u32,
    key: &[u8],
) -> Result<(ChainAuth, &[u8]), CryptoError> {
    match hash_mode {
        vc::HASH_MODE_PLAIN => Ok((
            ChainAuth::Hash(HashAlg::from_virtio(algo).ok_or(CryptoError::Unsupported)?),
            &[],
        )),
        vc::HASH_MODE_AUTH => Ok((
            ChainAuth::Mac(MacAlg::from_virtio(algo).ok_or(CryptoError::Unsupported)?),
            key,
        )),
        _ => Err(CryptoError::Unsupported),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_offsets_match_qemu() {
        let mut s = QemuCryptoSession {
            op_code: 2,
            ..Default::default()
        };
        s.set_sym_info(&QemuSymSessionInfo {
            cipher_alg: vc::cipher::AES_CBC,
            key_len: 16,
            op_type: vc::SYM_OP_CIPHER as u8,
            direction: vc::OP_DECRYPT as u8,
            ..Default::default()
        });
        s.key_area_mut()[..16].copy_from_slice(&[0xab; 16]);
        s.session_id = -1;
        let b = s.as_slice();
        assert_eq!(b.len(), 1072);
        assert_eq!(&b[0..8], &2u64.to_le_bytes());
        assert_eq!(&b[8..12], &3u32.to_le_bytes()); // cipher_alg
        assert_eq!(&b[12..16], &16u32.to_le_bytes()); // key_len
        assert_eq!(b[32], 1); // op_type
        assert_eq!(b[33], 2); // direction
        assert_eq!(&b[56..72], &[0xab; 16]); // key
        assert_eq!(&b[1064..1072], &(-1i64).to_le_bytes());
        match s.session_params().unwrap() {
            SessionParams::Cipher { alg, key, dir } => {
                assert_eq!(alg, CipherAlg::AesCbc);
                assert_eq!(key, &[0xab; 16]);
                assert_eq!(dir, Direction::Decrypt);
            }
            p => panic!("unexpected {p:?}"),
        }
    }

    #[test]
    fn hostile_lengths_are_errors_not_panics() {
        let mut s = QemuCryptoSession {
            op_code: 2,
            ..Default::default()
        };
        s.set_sym_info(&QemuSymSessionInfo {
            cipher_alg: vc::cipher::AES_CBC,
            key_len: 9999,
            op_type: vc::SYM_OP_CIPHER as u8,
            direction: 1,
            ..Default::default()
        });
        assert_eq!(s.session_params(), Err(CryptoError::InvalidKeyLength));
        let mut i = s.sym_info();
        i.key_len = 16;
        i.op_type = vc::SYM_OP_ALGORITHM_CHAINING as u8;
        i.hash_mode = vc::HASH_MODE_AUTH as u8;
        i.hash_alg = vc::mac::HMAC_SHA_256;
        i.alg_chain_order = vc::CHAIN_ORDER_CIPHER_THEN_HASH as u8;
        i.auth_key_len = 100_000;
        s.set_sym_info(&i);
        assert_eq!(s.session_params(), Err(CryptoError::InvalidKeyLength));
        s.op_code = 0x302;
        assert_eq!(s.session_params(), Err(CryptoError::Unsupported));
    }
}
