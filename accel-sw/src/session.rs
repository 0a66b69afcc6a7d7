//! Software sessions: expanded key material for one [`SessionParams`].

use std::any::Any;

use dpacc_spec::{ChainAuth, CryptoError, DriverSession, MacAlg, SessionInfo, SessionParams};

use crate::aead::AeadKey;
use crate::chain::ChainKey;
use crate::cipher::CipherKey;
use crate::digest::AuthKey;

/// What a session holds, by kind.
pub(crate) enum Kind {
    Cipher(CipherKey),
    Auth { key: AuthKey, digest_len: usize },
    Aead(AeadKey),
    Chain(ChainKey),
}

/// A session of the software driver.
///
/// Holds only expanded key material (AES key schedules, HMAC inner/outer states, the ring AEAD
/// key), never the raw key, and all of it is zeroized when the last
/// [`SessionHandle`](dpacc_spec::SessionHandle) drops: the `aes`, `sha1`/`sha2`/`hmac` types
/// through their `zeroize` features, the ring key by this crate itself.
pub struct SwSession {
    info: SessionInfo,
    pub(crate) kind: Kind,
}

impl SwSession {
    /// Validates `params` and expands its keys.
    pub fn new(params: &SessionParams<'_>) -> Result<Self, CryptoError> {
        let p = params.validated()?;
        let kind = match p {
            SessionParams::Cipher { alg, key, dir } => Kind::Cipher(CipherKey::new(alg, dir, key)?),
            SessionParams::Hash { alg, digest_len } => Kind::Auth {
                key: AuthKey::Hash(alg),
                digest_len,
            },
            SessionParams::Mac {
                alg: MacAlg::Hmac(h),
                key,
                digest_len,
            } => Kind::Auth {
                key: AuthKey::hmac(h, key)?,
                digest_len,
            },
            SessionParams::Aead { alg, key, dir, .. } => Kind::Aead(AeadKey::new(alg, dir, key)?),
            SessionParams::Chain {
                order,
                cipher,
                cipher_key,
                dir,
                auth,
                auth_key,
                digest_len,
            } => {
                let auth = match auth {
                    ChainAuth::Hash(h) if auth_key.is_empty() => AuthKey::Hash(h),
                    // A plain hash takes no key.
                    ChainAuth::Hash(_) => return Err(CryptoError::InvalidKeyLength),
                    ChainAuth::Mac(MacAlg::Hmac(h)) => AuthKey::hmac(h, auth_key)?,
                };
                Kind::Chain(ChainKey {
                    order,
                    cipher: CipherKey::new(cipher, dir, cipher_key)?,
                    auth,
                    digest_len,
                })
            }
        };
        Ok(Self {
            info: p.info(),
            kind,
        })
    }
}

impl DriverSession for SwSession {
    fn info(&self) -> SessionInfo {
        self.info
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
