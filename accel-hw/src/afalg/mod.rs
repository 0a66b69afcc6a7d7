//! The AF_ALG driver: the Linux kernel crypto API (whatever engine the kernel drives: QAT,
//! CCP, CAAM, virtio-crypto, or its own software), with asynchronous submission through Linux
//! AIO. Algorithms are discovered by binding a transform socket for each candidate; the
//! kernel drivers that answer are read from `/proc/crypto`.

pub mod proc_crypto;
mod queue;
mod sys;

use std::any::Any;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use dpacc_spec::{
    AeadAlg, Capabilities, CipherAlg, CryptoDriver, CryptoError, CryptoQueue, Direction,
    DriverSession, HashAlg, MacAlg, SessionHandle, SessionInfo, SessionParams,
};

pub use queue::AfAlgQueue;

/// Largest operation the driver accepts (op sockets get a send buffer this large).
pub const MAX_OP: usize = 256 << 10;

/// Why the AF_ALG driver cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AfAlgError {
    /// The kernel has no AF_ALG sockets (or no skcipher interface).
    #[error(
        "AF_ALG not available: {0} (needs CONFIG_CRYPTO_USER_API_SKCIPHER, module algif_skcipher)"
    )]
    Unavailable(std::io::Error),
}

fn cipher_name(a: CipherAlg) -> &'static str {
    match a {
        CipherAlg::AesCbc => "cbc(aes)",
        CipherAlg::AesCtr => "ctr(aes)",
    }
}

fn aead_name(a: AeadAlg) -> &'static str {
    match a {
        AeadAlg::AesGcm => "gcm(aes)",
        AeadAlg::ChaCha20Poly1305 => "rfc7539(chacha20,poly1305)",
    }
}

fn hash_name(h: HashAlg) -> &'static str {
    match h {
        HashAlg::Sha1 => "sha1",
        HashAlg::Sha256 => "sha256",
        HashAlg::Sha384 => "sha384",
        HashAlg::Sha512 => "sha512",
    }
}

fn mac_name(m: MacAlg) -> &'static str {
    match m {
        MacAlg::Hmac(HashAlg::Sha1) => "hmac(sha1)",
        MacAlg::Hmac(HashAlg::Sha256) => "hmac(sha256)",
        MacAlg::Hmac(HashAlg::Sha384) => "hmac(sha384)",
        MacAlg::Hmac(HashAlg::Sha512) => "hmac(sha512)",
    }
}

const HASHES: [HashAlg; 4] = [
    HashAlg::Sha1,
    HashAlg::Sha256,
    HashAlg::Sha384,
    HashAlg::Sha512,
];

/// The kernel crypto API as a dpacc driver.
#[derive(Debug)]
pub struct AfAlgDriver {
    caps: Capabilities,
    drivers: Vec<(String, String)>,
}

impl AfAlgDriver {
    /// Probes the kernel. Fails cleanly on a kernel without AF_ALG.
    pub fn open() -> Result<Self, AfAlgError> {
        sys::bind_tfm("skcipher", "cbc(aes)").map_err(AfAlgError::Unavailable)?;
        let mut caps = Capabilities {
            max_cipher_key_len: 32,
            max_auth_key_len: dpacc_spec::algo::MAX_AUTH_KEY_LEN as u32,
            max_size: MAX_OP as u64,
            ..Capabilities::default()
        };
        let mut names = Vec::new();
        let ok = |kind, name: &'static str, names: &mut Vec<&'static str>| {
            let yes = sys::bind_tfm(kind, name).is_ok();
            if yes {
                names.push(name);
            }
            yes
        };
        for a in [CipherAlg::AesCbc, CipherAlg::AesCtr] {
            if ok("skcipher", cipher_name(a), &mut names) {
                caps.add_cipher(a);
            }
        }
        for a in [AeadAlg::AesGcm, AeadAlg::ChaCha20Poly1305] {
            if ok("aead", aead_name(a), &mut names) {
                caps.add_aead(a);
            }
        }
        for h in HASHES {
            if ok("hash", hash_name(h), &mut names) {
                caps.add_hash(h);
            }
            if ok("hash", mac_name(MacAlg::Hmac(h)), &mut names) {
                caps.add_mac(MacAlg::Hmac(h));
            }
        }
        let entries = std::fs::read_to_string("/proc/crypto")
            .map(|t| proc_crypto::parse(&t))
            .unwrap_or_default();
        let drivers = names
            .iter()
            .map(|n| {
                let d = proc_crypto::best(&entries, n).map_or("?", |e| e.driver.as_str());
                (n.to_string(), d.to_string())
            })
            .collect::<Vec<_>>();
        tracing::info!(?drivers, "AF_ALG driver: kernel implementations");
        Ok(Self { caps, drivers })
    }

    /// (algorithm, kernel driver) pairs found at open, e.g. `("cbc(aes)", "cbc(aes-aesni)")`.
    pub fn kernel_drivers(&self) -> &[(String, String)] {
        &self.drivers
    }
}

/// What a session does with a request.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    Cipher { alg: CipherAlg, dir: Direction },
    Aead { dir: Direction, tag: usize },
    Digest { len: usize, full: usize },
}

/// A transform socket with its key set. The kernel erases its copy of the key when the
/// socket closes (the crypto API frees keys with `kfree_sensitive`); dpacc keeps none.
pub struct AfAlgSession {
    pub(crate) tfm: OwnedFd,
    pub(crate) kind: Kind,
    info: SessionInfo,
}

impl DriverSession for AfAlgSession {
    fn info(&self) -> SessionInfo {
        self.info
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

fn os(e: std::io::Error) -> CryptoError {
    match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::EAFNOSUPPORT) => CryptoError::Unsupported,
        Some(libc::EINVAL) => CryptoError::InvalidKeyLength,
        _ => CryptoError::Internal("AF_ALG setup failed"),
    }
}

impl CryptoDriver for AfAlgDriver {
    fn name(&self) -> &str {
        "afalg"
    }

    fn capabilities(&self) -> Capabilities {
        self.caps
    }

    fn create_session(&self, params: &SessionParams<'_>) -> Result<SessionHandle, CryptoError> {
        let p = params.validated()?;
        if !self.caps.supports(&p) {
            return Err(CryptoError::Unsupported);
        }
        let (tfm, kind) = match p {
            SessionParams::Cipher { alg, key, dir } => {
                let t = sys::bind_tfm("skcipher", cipher_name(alg)).map_err(os)?;
                sys::set_key(&t, key).map_err(os)?;
                (t, Kind::Cipher { alg, dir })
            }
            SessionParams::Aead {
                alg,
                key,
                tag_len,
                dir,
            } => {
                let t = sys::bind_tfm("aead", aead_name(alg)).map_err(os)?;
                sys::set_key(&t, key).map_err(os)?;
                sys::set_authsize(&t, tag_len).map_err(|_| CryptoError::InvalidDigestLength)?;
                (t, Kind::Aead { dir, tag: tag_len })
            }
            SessionParams::Hash { alg, digest_len } => {
                let t = sys::bind_tfm("hash", hash_name(alg)).map_err(os)?;
                (
                    t,
                    Kind::Digest {
                        len: digest_len,
                        full: alg.digest_len(),
                    },
                )
            }
            SessionParams::Mac {
                alg,
                key,
                digest_len,
            } => {
                let t = sys::bind_tfm("hash", mac_name(alg)).map_err(os)?;
                sys::set_key(&t, key).map_err(os)?;
                let MacAlg::Hmac(h) = alg;
                (
                    t,
                    Kind::Digest {
                        len: digest_len,
                        full: h.digest_len(),
                    },
                )
            }
            // Chains run on the software fallback.
            SessionParams::Chain { .. } => return Err(CryptoError::Unsupported),
        };
        Ok(Arc::new(AfAlgSession {
            tfm,
            kind,
            info: p.info(),
        }))
    }

    fn open_queue(&self, depth: usize) -> Result<Box<dyn CryptoQueue>, CryptoError> {
        Ok(Box::new(AfAlgQueue::new(depth)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_fails_cleanly_or_finds_aes() {
        // This host's kernel has no AF_ALG (the QEMU guest test covers the real thing); a
        // kernel with it must at least offer cbc(aes), which open() probes first.
        match AfAlgDriver::open() {
            Err(e) => assert!(e.to_string().starts_with("AF_ALG not available"), "{e}"),
            Ok(d) => assert!(d.capabilities().has_cipher(CipherAlg::AesCbc)),
        }
    }
}
