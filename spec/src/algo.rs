//! Algorithms and session parameters in Rust terms, with their virtio numbers.
//!
//! Every way a session can be requested (the virtio-crypto control queue, QEMU's vhost-user
//! CREATE_CRYPTO_SESSION message, the guest library) ends up as one [`SessionParams`], which
//! is what a driver sees.

use crate::error::CryptoError;
use crate::virtio_crypto::{aead, cipher, hash, mac};

/// Symmetric cipher modes (the key length picks AES-128/192/256).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CipherAlg {
    /// AES-CBC, 16-byte IV, length a multiple of 16.
    AesCbc,
    /// AES-CTR, 16-byte initial counter block (big-endian 128-bit counter), any length.
    AesCtr,
}

/// Hash functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HashAlg {
    /// SHA-1 (20-byte digest).
    Sha1,
    /// SHA-256 (32-byte digest).
    Sha256,
    /// SHA-384 (48-byte digest).
    Sha384,
    /// SHA-512 (64-byte digest).
    Sha512,
}

/// MAC algorithms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MacAlg {
    /// HMAC with the given hash.
    Hmac(HashAlg),
}

/// AEAD algorithms (the key length picks AES-128/256 for GCM).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AeadAlg {
    /// AES-GCM with a 12-byte nonce and a 16-byte tag.
    AesGcm,
    /// ChaCha20-Poly1305 (RFC 8439): 32-byte key, 12-byte nonce, 16-byte tag.
    ChaCha20Poly1305,
}

/// Direction of a cipher or AEAD session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Plaintext in, ciphertext out.
    Encrypt,
    /// Ciphertext in, plaintext out.
    Decrypt,
}

/// Order of the two halves of a chained session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChainOrder {
    /// Hash/MAC the source, then cipher (decrypt side of encrypt-then-MAC).
    HashThenCipher,
    /// Cipher, then hash/MAC the result (encrypt side of encrypt-then-MAC).
    CipherThenHash,
}

/// The authentication half of a chained session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChainAuth {
    /// Plain hash.
    Hash(HashAlg),
    /// MAC with the session's auth key.
    Mac(MacAlg),
}

impl CipherAlg {
    /// From a virtio `cipher::*` number.
    pub fn from_virtio(v: u32) -> Option<Self> {
        match v {
            cipher::AES_CBC => Some(Self::AesCbc),
            cipher::AES_CTR => Some(Self::AesCtr),
            _ => None,
        }
    }
    /// The virtio `cipher::*` number.
    pub fn to_virtio(self) -> u32 {
        match self {
            Self::AesCbc => cipher::AES_CBC,
            Self::AesCtr => cipher::AES_CTR,
        }
    }
    /// IV length every operation must give.
    pub fn iv_len(self) -> usize {
        16
    }
    /// Whether `key_len` is valid for this mode.
    pub fn key_len_ok(self, key_len: usize) -> bool {
        matches!(key_len, 16 | 24 | 32)
    }
}

impl HashAlg {
    /// From a virtio `hash::*` number.
    pub fn from_virtio(v: u32) -> Option<Self> {
        match v {
            hash::SHA1 => Some(Self::Sha1),
            hash::SHA_256 => Some(Self::Sha256),
            hash::SHA_384 => Some(Self::Sha384),
            hash::SHA_512 => Some(Self::Sha512),
            _ => None,
        }
    }
    /// The virtio `hash::*` number.
    pub fn to_virtio(self) -> u32 {
        match self {
            Self::Sha1 => hash::SHA1,
            Self::Sha256 => hash::SHA_256,
            Self::Sha384 => hash::SHA_384,
            Self::Sha512 => hash::SHA_512,
        }
    }
    /// Full digest length in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            Self::Sha1 => 20,
            Self::Sha256 => 32,
            Self::Sha384 => 48,
            Self::Sha512 => 64,
        }
    }
    /// Internal block length in bytes (the HMAC key is hashed when longer).
    pub fn block_len(self) -> usize {
        match self {
            Self::Sha1 | Self::Sha256 => 64,
            Self::Sha384 | Self::Sha512 => 128,
        }
    }
}

impl MacAlg {
    /// From a virtio `mac::*` number.
    pub fn from_virtio(v: u32) -> Option<Self> {
        match v {
            mac::HMAC_SHA1 => Some(Self::Hmac(HashAlg::Sha1)),
            mac::HMAC_SHA_256 => Some(Self::Hmac(HashAlg::Sha256)),
            mac::HMAC_SHA_384 => Some(Self::Hmac(HashAlg::Sha384)),
            mac::HMAC_SHA_512 => Some(Self::Hmac(HashAlg::Sha512)),
            _ => None,
        }
    }
    /// The virtio `mac::*` number.
    pub fn to_virtio(self) -> u32 {
        match self {
            Self::Hmac(HashAlg::Sha1) => mac::HMAC_SHA1,
            Self::Hmac(HashAlg::Sha256) => mac::HMAC_SHA_256,
            Self::Hmac(HashAlg::Sha384) => mac::HMAC_SHA_384,
            Self::Hmac(HashAlg::Sha512) => mac::HMAC_SHA_512,
        }
    }
    /// Full MAC length in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            Self::Hmac(h) => h.digest_len(),
        }
    }
}

impl AeadAlg {
    /// From a virtio `aead::*` number.
    pub fn from_virtio(v: u32) -> Option<Self> {
        match v {
            aead::GCM => Some(Self::AesGcm),
            aead::CHACHA20_POLY1305 => Some(Self::ChaCha20Poly1305),
            _ => None,
        }
    }
    /// The virtio `aead::*` number.
    pub fn to_virtio(self) -> u32 {
        match self {
            Self::AesGcm => aead::GCM,
            Self::ChaCha20Poly1305 => aead::CHACHA20_POLY1305,
        }
    }
    /// Nonce length every operation must give.
    pub fn iv_len(self) -> usize {
        12
    }
    /// Full tag length.
    pub fn tag_len(self) -> usize {
        16
    }
    /// Whether `key_len` is valid for this algorithm.
    pub fn key_len_ok(self, key_len: usize) -> bool {
        match self {
            Self::AesGcm => matches!(key_len, 16 | 32),
            Self::ChaCha20Poly1305 => key_len == 32,
        }
    }
}

/// Longest cipher or AEAD key dpacc accepts (also QEMU's vhost-user limit).
pub const MAX_CIPHER_KEY_LEN: usize = 64;
/// Longest authentication (HMAC) key dpacc accepts (also QEMU's vhost-user limit).
pub const MAX_AUTH_KEY_LEN: usize = 512;

/// Everything a driver needs to create a session. Keys are borrowed: the caller zeroizes its
/// copy, the driver zeroizes its own when the session closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionParams<'a> {
    /// Cipher only.
    Cipher {
        /// Mode.
        alg: CipherAlg,
        /// Key (16, 24 or 32 bytes).
        key: &'a [u8],
        /// Direction.
        dir: Direction,
    },
    /// Hash only.
    Hash {
        /// Function.
        alg: HashAlg,
        /// Digest bytes to return (1..=full length; 0 means full).
        digest_len: usize,
    },
    /// MAC only (generation; the guest compares for verification).
    Mac {
        /// Algorithm.
        alg: MacAlg,
        /// Key (any length up to [`MAX_AUTH_KEY_LEN`]).
        key: &'a [u8],
        /// MAC bytes to return (1..=full length; 0 means full).
        digest_len: usize,
    },
    /// AEAD.
    Aead {
        /// Algorithm.
        alg: AeadAlg,
        /// Key.
        key: &'a [u8],
        /// Tag length (4..=16; 0 means 16).
        tag_len: usize,
        /// Direction.
        dir: Direction,
    },
    /// Cipher chained with a hash or MAC.
    Chain {
        /// Which half runs first.
        order: ChainOrder,
        /// Cipher mode.
        cipher: CipherAlg,
        /// Cipher key.
        cipher_key: &'a [u8],
        /// Cipher direction.
        dir: Direction,
        /// The hash or MAC half.
        auth: ChainAuth,
        /// MAC key (empty for a plain hash).
        auth_key: &'a [u8],
        /// Digest bytes to return (0 means full).
        digest_len: usize,
    },
}

impl SessionParams<'_> {
    /// Checks lengths and fills defaults (0 → full digest/tag). Drivers call this first so every
    /// driver rejects the same bad input with the same error.
    pub fn validated(self) -> Result<Self, CryptoError> {
        match self {
            Self::Cipher { alg, key, .. } => {
                if !alg.key_len_ok(key.len()) {
                    return Err(CryptoError::InvalidKeyLength);
                }
                Ok(self)
            }
            Self::Hash { alg, digest_len } => Ok(Self::Hash {
                alg,
                digest_len: digest_len_checked(digest_len, alg.digest_len())?,
            }),
            Self::Mac {
                alg,
                key,
                digest_len,
            } => {
                if key.len() > MAX_AUTH_KEY_LEN {
                    return Err(CryptoError::InvalidKeyLength);
                }
                Ok(Self::Mac {
                    alg,
                    key,
                    digest_len: digest_len_checked(digest_len, alg.digest_len())?,
                })
            }
            Self::Aead {
                alg,
                key,
                tag_len,
                dir,
            } => {
                if !alg.key_len_ok(key.len()) {
                    return Err(CryptoError::InvalidKeyLength);
                }
                let tag_len = match tag_len {
                    0 => alg.tag_len(),
                    // Only full-length tags: ring and the RustCrypto AEADs verify 16-byte tags.
                    t if t == alg.tag_len() => t,
                    _ => return Err(CryptoError::InvalidDigestLength),
                };
                Ok(Self::Aead {
                    alg,
                    key,
                    tag_len,
                    dir,
                })
            }
            Self::Chain {
                order,
                cipher,
                cipher_key,
                dir,
                auth,
                auth_key,
                digest_len,
            } => {
                if !cipher.key_len_ok(cipher_key.len()) || auth_key.len() > MAX_AUTH_KEY_LEN {
                    return Err(CryptoError::InvalidKeyLength);
                }
                let full = match auth {
                    ChainAuth::Hash(h) => h.digest_len(),
                    ChainAuth::Mac(m) => m.digest_len(),
                };
                Ok(Self::Chain {
                    order,
                    cipher,
                    cipher_key,
                    dir,
                    auth,
                    auth_key,
                    digest_len: digest_len_checked(digest_len, full)?,
                })
            }
        }
    }

    /// The service (`SERVICE_*`) this session belongs to.
    pub fn service(&self) -> u32 {
        use crate::virtio_crypto::*;
        match self {
            Self::Cipher { .. } | Self::Chain { .. } => SERVICE_CIPHER,
            Self::Hash { .. } => SERVICE_HASH,
            Self::Mac { .. } => SERVICE_MAC,
            Self::Aead { .. } => SERVICE_AEAD,
        }
    }
}

fn digest_len_checked(asked: usize, full: usize) -> Result<usize, CryptoError> {
    match asked {
        0 => Ok(full),
        n if n <= full => Ok(n),
        _ => Err(CryptoError::InvalidDigestLength),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtio_numbers_round_trip() {
        for a in [CipherAlg::AesCbc, CipherAlg::AesCtr] {
            assert_eq!(CipherAlg::from_virtio(a.to_virtio()), Some(a));
        }
        for h in [
            HashAlg::Sha1,
            HashAlg::Sha256,
            HashAlg::Sha384,
            HashAlg::Sha512,
        ] {
            assert_eq!(HashAlg::from_virtio(h.to_virtio()), Some(h));
            let m = MacAlg::Hmac(h);
            assert_eq!(MacAlg::from_virtio(m.to_virtio()), Some(m));
        }
        for a in [AeadAlg::AesGcm, AeadAlg::ChaCha20Poly1305] {
            assert_eq!(AeadAlg::from_virtio(a.to_virtio()), Some(a));
        }
        assert_eq!(CipherAlg::from_virtio(cipher::AES_XTS), None);
    }

    #[test]
    fn validation_rejects_bad_lengths_and_fills_defaults() {
        let key = [0u8; 20];
        let p = SessionParams::Cipher {
            alg: CipherAlg::AesCbc,
            key: &key,
            dir: Direction::Encrypt,
        };
        assert_eq!(p.validated(), Err(CryptoError::InvalidKeyLength));
        let p = SessionParams::Hash {
            alg: HashAlg::Sha256,
            digest_len: 0,
        };
        assert_eq!(
            p.validated(),
            Ok(SessionParams::Hash {
                alg: HashAlg::Sha256,
                digest_len: 32
            })
        );
        let p = SessionParams::Hash {
            alg: HashAlg::Sha1,
            digest_len: 21,
        };
        assert_eq!(p.validated(), Err(CryptoError::InvalidDigestLength));
        let k = [0u8; 16];
        let p = SessionParams::Aead {
            alg: AeadAlg::ChaCha20Poly1305,
            key: &k,
            tag_len: 16,
            dir: Direction::Decrypt,
        };
        assert_eq!(p.validated(), Err(CryptoError::InvalidKeyLength));
    }
}
