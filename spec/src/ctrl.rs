//! Decoding and encoding virtio-crypto control requests (create / destroy session).
//!
//! On the control queue a create-session request is the 72-byte [`CtrlRequest`] followed by
//! the key material (device-readable) and a 16-byte [`SessionInput`](crate::virtio_crypto::SessionInput)
//! (device-writable). Key material order: cipher key, then auth key (chain); the auth key
//! alone (MAC); the key (AEAD); nothing (hash). A destroy request is the 72-byte request
//! followed by a 1-byte status (device-writable).

use crate::algo::{
    AeadAlg, ChainAuth, ChainOrder, CipherAlg, Direction, HashAlg, MacAlg, SessionParams,
};
use crate::error::CryptoError;
use crate::vhost_user_crypto::{chain_auth, chain_order, direction};
use crate::virtio_crypto::{self as vc, *};

/// What a control request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtrlOp<'k> {
    /// Create a session with these (unvalidated) parameters.
    Create(SessionParams<'k>),
    /// Destroy a session.
    Destroy(u64),
}

/// How many key bytes follow a create request (so a device knows how much to read before the
/// writable part). Errors for unknown opcodes.
pub fn key_bytes_after(req: &CtrlRequest) -> Result<usize, CryptoError> {
    let op = req.header.opcode.to_native();
    Ok(match op {
        CIPHER_CREATE_SESSION => {
            let sym: SymCreateSessionReq = req.body();
            match sym.op_type.to_native() {
                SYM_OP_CIPHER => sym.para::<CipherSessionPara>().keylen.to_native() as usize,
                SYM_OP_ALGORITHM_CHAINING => {
                    let c: AlgChainSessionPara = sym.para();
                    let auth = if c.hash_mode.to_native() == HASH_MODE_AUTH {
                        mac_para(&c).auth_key_len.to_native() as usize
                    } else {
                        0
                    };
                    (c.cipher.keylen.to_native() as usize).saturating_add(auth)
                }
                _ => return Err(CryptoError::Unsupported),
            }
        }
        HASH_CREATE_SESSION => 0,
        MAC_CREATE_SESSION => req.body::<MacSessionPara>().auth_key_len.to_native() as usize,
        AEAD_CREATE_SESSION => req.body::<AeadSessionPara>().key_len.to_native() as usize,
        CIPHER_DESTROY_SESSION
        | HASH_DESTROY_SESSION
        | MAC_DESTROY_SESSION
        | AEAD_DESTROY_SESSION => 0,
        _ => return Err(CryptoError::Unsupported),
    })
}

fn mac_para(c: &AlgChainSessionPara) -> MacSessionPara {
    let mut m = MacSessionPara::default();
    vm_memory::ByteValued::as_mut_slice(&mut m).copy_from_slice(&c.hash);
    m
}

fn hash_para(c: &AlgChainSessionPara) -> HashSessionPara {
    let mut m = HashSessionPara::default();
    vm_memory::ByteValued::as_mut_slice(&mut m).copy_from_slice(&c.hash);
    m
}

/// Decodes a control request. `keys` is the device-readable data after the 72-byte request;
/// it must hold at least [`key_bytes_after`] bytes. Lengths are not validated against the
/// algorithms here; drivers do that with [`SessionParams::validated`].
pub fn decode<'k>(req: &CtrlRequest, keys: &'k [u8]) -> Result<CtrlOp<'k>, CryptoError> {
    let need = key_bytes_after(req)?;
    if keys.len() < need {
        return Err(CryptoError::BadRequest);
    }
    let op = req.header.opcode.to_native();
    let p = match op {
        CIPHER_DESTROY_SESSION
        | HASH_DESTROY_SESSION
        | MAC_DESTROY_SESSION
        | AEAD_DESTROY_SESSION => {
            let d: DestroySessionReq = req.body();
            return Ok(CtrlOp::Destroy(d.session_id.to_native()));
        }
        CIPHER_CREATE_SESSION => {
            let sym: SymCreateSessionReq = req.body();
            match sym.op_type.to_native() {
                SYM_OP_CIPHER => {
                    let c: CipherSessionPara = sym.para();
                    SessionParams::Cipher {
                        alg: CipherAlg::from_virtio(c.algo.to_native())
                            .ok_or(CryptoError::Unsupported)?,
                        key: &keys[..need],
                        dir: direction(c.op.to_native())?,
                    }
                }
                _ => {
                    let c: AlgChainSessionPara = sym.para();
                    let klen = c.cipher.keylen.to_native() as usize;
                    let mode = c.hash_mode.to_native();
                    let (algo, digest_len) = if mode == HASH_MODE_AUTH {
                        let m = mac_para(&c);
                        (m.algo.to_native(), m.hash_result_len.to_native())
                    } else {
                        let h = hash_para(&c);
                        (h.algo.to_native(), h.hash_result_len.to_native())
                    };
                    let (auth, auth_key) = chain_auth(mode, algo, &keys[klen..need])?;
                    SessionParams::Chain {
                        order: chain_order(c.alg_chain_order.to_native())?,
                        cipher: CipherAlg::from_virtio(c.cipher.algo.to_native())
                            .ok_or(CryptoError::Unsupported)?,
                        cipher_key: &keys[..klen],
                        dir: direction(c.cipher.op.to_native())?,
                        auth,
                        auth_key,
                        digest_len: digest_len as usize,
                    }
                }
            }
        }
        HASH_CREATE_SESSION => {
            let h: HashSessionPara = req.body();
            SessionParams::Hash {
                alg: HashAlg::from_virtio(h.algo.to_native()).ok_or(CryptoError::Unsupported)?,
                digest_len: h.hash_result_len.to_native() as usize,
            }
        }
        MAC_CREATE_SESSION => {
            let m: MacSessionPara = req.body();
            SessionParams::Mac {
                alg: MacAlg::from_virtio(m.algo.to_native()).ok_or(CryptoError::Unsupported)?,
                key: &keys[..need],
                digest_len: m.hash_result_len.to_native() as usize,
            }
        }
        AEAD_CREATE_SESSION => {
            let a: AeadSessionPara = req.body();
            SessionParams::Aead {
                alg: AeadAlg::from_virtio(a.algo.to_native()).ok_or(CryptoError::Unsupported)?,
                key: &keys[..need],
                tag_len: a.hash_result_len.to_native() as usize,
                dir: direction(a.op.to_native())?,
            }
        }
        _ => return Err(CryptoError::Unsupported),
    };
    Ok(CtrlOp::Create(p))
}

fn dir_code(d: Direction) -> u32 {
    match d {
        Direction::Encrypt => vc::OP_ENCRYPT,
        Direction::Decrypt => vc::OP_DECRYPT,
    }
}

/// Encodes a create-session request for `p`; the key material to append is written into
/// `keys_out` (cleared first). Used by drivers of the device (the guest library).
pub fn encode_create(p: &SessionParams<'_>, keys_out: &mut Vec<u8>) -> CtrlRequest {
    keys_out.clear();
    let mut req = CtrlRequest::default();
    match *p {
        SessionParams::Cipher { alg, key, dir } => {
            req.header.opcode = CIPHER_CREATE_SESSION.into();
            req.header.algo = alg.to_virtio().into();
            let mut sym = SymCreateSessionReq::default();
            sym.set_para(&CipherSessionPara {
                algo: alg.to_virtio().into(),
                keylen: (key.len() as u32).into(),
                op: dir_code(dir).into(),
                padding: 0.into(),
            });
            sym.op_type = SYM_OP_CIPHER.into();
            req.set_body(&sym);
            keys_out.extend_from_slice(key);
        }
        SessionParams::Chain {
            order,
            cipher,
            cipher_key,
            dir,
            auth,
            auth_key,
            digest_len,
        } => {
            req.header.opcode = CIPHER_CREATE_SESSION.into();
            req.header.algo = cipher.to_virtio().into();
            let (mode, hash) = match auth {
                ChainAuth::Hash(h) => {
                    let hp = HashSessionPara {
                        algo: h.to_virtio().into(),
                        hash_result_len: (digest_len as u32).into(),
                        padding: [0; 8],
                    };
                    (HASH_MODE_PLAIN, to16(vm_memory::ByteValued::as_slice(&hp)))
                }
                ChainAuth::Mac(m) => {
                    let mp = MacSessionPara {
                        algo: m.to_virtio().into(),
                        hash_result_len: (digest_len as u32).into(),
                        auth_key_len: (auth_key.len() as u32).into(),
                        padding: 0.into(),
                    };
                    (HASH_MODE_AUTH, to16(vm_memory::ByteValued::as_slice(&mp)))
                }
            };
            let c = AlgChainSessionPara {
                alg_chain_order: match order {
                    ChainOrder::HashThenCipher => CHAIN_ORDER_HASH_THEN_CIPHER,
                    ChainOrder::CipherThenHash => CHAIN_ORDER_CIPHER_THEN_HASH,
                }
                .into(),
                hash_mode: mode.into(),
                cipher: CipherSessionPara {
                    algo: cipher.to_virtio().into(),
                    keylen: (cipher_key.len() as u32).into(),
                    op: dir_code(dir).into(),
                    padding: 0.into(),
                },
                hash,
                aad_len: 0.into(),
                padding: 0.into(),
            };
            let mut sym = SymCreateSessionReq::default();
            sym.set_para(&c);
            sym.op_type = SYM_OP_ALGORITHM_CHAINING.into();
            req.set_body(&sym);
            keys_out.extend_from_slice(cipher_key);
            if matches!(auth, ChainAuth::Mac(_)) {
                keys_out.extend_from_slice(auth_key);
            }
        }
        SessionParams::Hash { alg, digest_len } => {
            req.header.opcode = HASH_CREATE_SESSION.into();
            req.header.algo = alg.to_virtio().into();
            req.set_body(&HashSessionPara {
                algo: alg.to_virtio().into(),
                hash_result_len: (digest_len as u32).into(),
                padding: [0; 8],
            });
        }
        SessionParams::Mac {
            alg,
            key,
            digest_len,
        } => {
            req.header.opcode = MAC_CREATE_SESSION.into();
            req.header.algo = alg.to_virtio().into();
            req.set_body(&MacSessionPara {
                algo: alg.to_virtio().into(),
                hash_result_len: (digest_len as u32).into(),
                auth_key_len: (key.len() as u32).into(),
                padding: 0.into(),
            });
            keys_out.extend_from_slice(key);
        }
        SessionParams::Aead {
            alg,
            key,
            tag_len,
            dir,
        } => {
            req.header.opcode = AEAD_CREATE_SESSION.into();
            req.header.algo = alg.to_virtio().into();
            req.set_body(&AeadSessionPara {
                algo: alg.to_virtio().into(),
                key_len: (key.len() as u32).into(),
                hash_result_len: (tag_len as u32).into(),
                aad_len: 0.into(),
                op: dir_code(dir).into(),
                padding: 0.into(),
            });
            keys_out.extend_from_slice(key);
        }
    }
    req
}

/// Encodes a destroy-session request for a session of `service` (`SERVICE_*`).
pub fn encode_destroy(service: u32, session_id: u64) -> CtrlRequest {
    let mut req = CtrlRequest::default();
    req.header.opcode = vc::opcode(service, 0x03).into();
    req.set_body(&DestroySessionReq {
        session_id: session_id.into(),
        padding: [0; 48],
    });
    req
}

fn to16(b: &[u8]) -> [u8; 16] {
    let mut o = [0u8; 16];
    o.copy_from_slice(&b[..16]);
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(p: SessionParams<'_>) {
        let mut keys = Vec::new();
        let req = encode_create(&p, &mut keys);
        assert_eq!(key_bytes_after(&req).unwrap(), keys.len());
        assert_eq!(decode(&req, &keys).unwrap(), CtrlOp::Create(p));
        // Truncated key material is a bad request, not a panic.
        if !keys.is_empty() {
            assert_eq!(
                decode(&req, &keys[..keys.len() - 1]),
                Err(CryptoError::BadRequest)
            );
        }
    }

    #[test]
    fn every_session_kind_round_trips() {
        let k16 = [1u8; 16];
        let k32 = [2u8; 32];
        let hk = [3u8; 20];
        round_trip(SessionParams::Cipher {
            alg: CipherAlg::AesCtr,
            key: &k16,
            dir: Direction::Decrypt,
        });
        round_trip(SessionParams::Hash {
            alg: HashAlg::Sha384,
            digest_len: 48,
        });
        round_trip(SessionParams::Mac {
            alg: MacAlg::Hmac(HashAlg::Sha1),
            key: &hk,
            digest_len: 12,
        });
        round_trip(SessionParams::Aead {
            alg: AeadAlg::ChaCha20Poly1305,
            key: &k32,
            tag_len: 16,
            dir: Direction::Encrypt,
        });
        round_trip(SessionParams::Chain {
            order: ChainOrder::CipherThenHash,
            cipher: CipherAlg::AesCbc,
            cipher_key: &k16,
            dir: Direction::Encrypt,
            auth: ChainAuth::Mac(MacAlg::Hmac(HashAlg::Sha256)),
            auth_key: &k32,
            digest_len: 16,
        });
        round_trip(SessionParams::Chain {
            order: ChainOrder::HashThenCipher,
            cipher: CipherAlg::AesCbc,
            cipher_key: &k32,
            dir: Direction::Decrypt,
            auth: ChainAuth::Hash(HashAlg::Sha1),
            auth_key: &[],
            digest_len: 20,
        });
    }

    #[test]
    fn destroy_and_unknown_opcodes() {
        let req = encode_destroy(vc::SERVICE_AEAD, 77);
        assert_eq!(decode(&req, &[]).unwrap(), CtrlOp::Destroy(77));
        let mut bad = CtrlRequest::default();
        bad.header.opcode = 0x999.into();
        assert_eq!(decode(&bad, &[]), Err(CryptoError::Unsupported));
        // A huge declared key length is a bad request when the bytes are not there.
        let mut req = CtrlRequest::default();
        req.header.opcode = AEAD_CREATE_SESSION.into();
        req.set_body(&AeadSessionPara {
            algo: aead::GCM.into(),
            key_len: u32::MAX.into(),
            ..Default::default()
        });
        assert_eq!(decode(&req, &[0; 64]), Err(CryptoError::BadRequest));
    }
}
