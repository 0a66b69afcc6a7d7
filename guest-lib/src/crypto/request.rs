//! Building the 72-byte data requests (spec/README.md §1.5) for a session's operations.

use dpacc_spec::virtio_crypto::{self as vc, *};
use dpacc_spec::{ChainAuth, Direction, SessionInfo};

/// The data opcode and algorithm number for operations in a session of this kind.
pub fn opcode_and_algo(info: &SessionInfo) -> (u32, u32) {
    match *info {
        SessionInfo::Cipher { alg, dir } => (cipher_opcode(dir), alg.to_virtio()),
        SessionInfo::Chain { cipher, dir, .. } => (cipher_opcode(dir), cipher.to_virtio()),
        SessionInfo::Hash { alg, .. } => (vc::HASH, alg.to_virtio()),
        SessionInfo::Mac { alg, .. } => (vc::MAC, alg.to_virtio()),
        SessionInfo::Aead { alg, dir, .. } => (
            match dir {
                Direction::Encrypt => vc::AEAD_ENCRYPT,
                Direction::Decrypt => vc::AEAD_DECRYPT,
            },
            alg.to_virtio(),
        ),
    }
}

fn cipher_opcode(dir: Direction) -> u32 {
    match dir {
        Direction::Encrypt => vc::CIPHER_ENCRYPT,
        Direction::Decrypt => vc::CIPHER_DECRYPT,
    }
}

fn header(info: &SessionInfo, session_id: u64) -> DataRequest {
    let (op, algo) = opcode_and_algo(info);
    let mut req = DataRequest::default();
    req.header.opcode = op.into();
    req.header.algo = algo.into();
    req.header.session_id = session_id.into();
    req
}

/// Cipher only: readable iv, src; writable dst (`len` bytes), status.
pub fn cipher(info: &SessionInfo, session_id: u64, iv_len: u32, len: u32) -> DataRequest {
    let mut req = header(info, session_id);
    let mut sym = SymDataReq::default();
    sym.set_para(&CipherDataPara {
        iv_len: iv_len.into(),
        src_data_len: len.into(),
        dst_data_len: len.into(),
        padding: 0.into(),
    });
    sym.op_type = SYM_OP_CIPHER.into();
    req.set_body(&sym);
    req
}

/// Chain: the cipher and the hash both cover the whole source; readable iv, src, aad;
/// writable dst (`len` bytes), hash_result, status.
pub fn chain(
    info: &SessionInfo,
    session_id: u64,
    iv_len: u32,
    len: u32,
    aad_len: u32,
    hash_len: u32,
) -> DataRequest {
    let mut req = header(info, session_id);
    let mut sym = SymDataReq::default();
    sym.set_para(&AlgChainDataPara {
        iv_len: iv_len.into(),
        src_data_len: len.into(),
        dst_data_len: len.into(),
        cipher_start_src_offset: 0.into(),
        len_to_cipher: len.into(),
        hash_start_src_offset: 0.into(),
        len_to_hash: len.into(),
        aad_len: aad_len.into(),
        hash_result_len: hash_len.into(),
        reserved: 0.into(),
    });
    sym.op_type = SYM_OP_ALGORITHM_CHAINING.into();
    req.set_body(&sym);
    req
}

/// Hash or MAC: readable src; writable hash_result, status.
pub fn hash(info: &SessionInfo, session_id: u64, src_len: u32, hash_len: u32) -> DataRequest {
    let mut req = header(info, session_id);
    req.set_body(&HashDataPara {
        src_data_len: src_len.into(),
        hash_result_len: hash_len.into(),
    });
    req
}

/// AEAD: readable iv, src, aad; writable dst, status.
pub fn aead(
    info: &SessionInfo,
    session_id: u64,
    iv_len: u32,
    aad_len: u32,
    src_len: u32,
    dst_len: u32,
) -> DataRequest {
    let mut req = header(info, session_id);
    req.set_body(&AeadDataPara {
        iv_len: iv_len.into(),
        aad_len: aad_len.into(),
        src_data_len: src_len.into(),
        dst_data_len: dst_len.into(),
    });
    req
}

/// The words of a data request, built in registers ([`DataRequestWords`]: the same bytes as
/// the [`DataRequest`] the functions above build, without a store-forwarding stall), from
/// the [`opcode_and_algo`] of the session.
pub(crate) use dpacc_spec::data_request_words::{
    DataRequestWords as RequestWords, DATA_REQ_WORDS as REQ_WORDS,
};

/// Digest length a hash, MAC or chain session produces (0 for others).
pub fn digest_len(info: &SessionInfo) -> usize {
    match *info {
        SessionInfo::Hash { digest_len, .. }
        | SessionInfo::Mac { digest_len, .. }
        | SessionInfo::Chain { digest_len, .. } => digest_len,
        _ => 0,
    }
}

/// Whether a chain session authenticates with a key (MAC) rather than a plain hash.
pub fn chain_is_mac(info: &SessionInfo) -> bool {
    matches!(
        info,
        SessionInfo::Chain {
            auth: ChainAuth::Mac(_),
            ..
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use dpacc_spec::ctrl::{encode_create, encode_destroy};
    use dpacc_spec::{AeadAlg, CipherAlg, HashAlg, MacAlg, SessionParams};
    use vm_memory::ByteValued;

    fn le(v: u32) -> [u8; 4] {
        v.to_le_bytes()
    }

    #[test]
    fn aes_cbc_data_request_bytes() {
        let info = SessionInfo::Cipher {
            alg: CipherAlg::AesCbc,
            dir: Direction::Encrypt,
        };
        let req = cipher(&info, 0x0102_0304_0506_0708, 16, 64);
        let b = req.as_slice();
        assert_eq!(b.len(), 72);
        // op_header: opcode CIPHER_ENCRYPT = 0x000, algo AES_CBC = 3, session id, flag, pad.
        assert_eq!(&b[0..4], &le(0));
        assert_eq!(&b[4..8], &le(3));
        assert_eq!(&b[8..16], &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(&b[16..24], &[0; 8]);
        // sym_data_req: cipher_para {iv_len, src_len, dst_len, pad}, zero fill, op_type at 64.
        assert_eq!(&b[24..28], &le(16));
        assert_eq!(&b[28..32], &le(64));
        assert_eq!(&b[32..36], &le(64));
        assert!(b[36..64].iter().all(|&x| x == 0));
        assert_eq!(&b[64..68], &le(SYM_OP_CIPHER));
        assert_eq!(&b[68..72], &[0; 4]);

        let dec = SessionInfo::Cipher {
            alg: CipherAlg::AesCtr,
            dir: Direction::Decrypt,
        };
        let b2 = cipher(&dec, 1, 16, 5);
        assert_eq!(&b2.as_slice()[0..8], &[1, 0, 0, 0, 4, 0, 0, 0]);
    }

    #[test]
    fn chain_hash_and_aead_request_bytes() {
        let info = SessionInfo::Chain {
            order: dpacc_spec::ChainOrder::CipherThenHash,
            cipher: CipherAlg::AesCbc,
            dir: Direction::Encrypt,
            auth: ChainAuth::Mac(MacAlg::Hmac(HashAlg::Sha256)),
            digest_len: 32,
        };
        let b = chain(&info, 9, 16, 48, 8, 32);
        let b = b.as_slice();
        let words: Vec<u32> = b[24..64]
            .chunks(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(words, vec![16, 48, 48, 0, 48, 0, 48, 8, 32, 0]);
        assert_eq!(&b[64..68], &le(SYM_OP_ALGORITHM_CHAINING));

        let h = SessionInfo::Mac {
            alg: MacAlg::Hmac(HashAlg::Sha1),
            digest_len: 12,
        };
        let b = hash(&h, 2, 100, 12);
        let b = b.as_slice();
        assert_eq!(&b[0..8], &[0x00, 0x02, 0, 0, 2, 0, 0, 0]); // MAC = 0x200, HMAC_SHA1 = 2
        assert_eq!(&b[24..32], &[100, 0, 0, 0, 12, 0, 0, 0]);
        assert!(b[32..].iter().all(|&x| x == 0));

        let a = SessionInfo::Aead {
            alg: AeadAlg::AesGcm,
            dir: Direction::Decrypt,
            tag_len: 16,
        };
        let b = aead(&a, 3, 12, 20, 116, 100);
        let b = b.as_slice();
        assert_eq!(&b[0..8], &[0x01, 0x03, 0, 0, 1, 0, 0, 0]); // AEAD_DECRYPT = 0x301, GCM = 1
        let words: Vec<u32> = b[24..40]
            .chunks(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(words, vec![12, 20, 116, 100]);
    }

    /// The words `Queue::push` stores are the bytes of the spec structs, for every kind.
    #[test]
    fn request_words_are_the_request_bytes() {
        let infos = [
            SessionInfo::Cipher {
                alg: CipherAlg::AesCtr,
                dir: Direction::Decrypt,
            },
            SessionInfo::Chain {
                order: dpacc_spec::ChainOrder::HashThenCipher,
                cipher: CipherAlg::AesCbc,
                dir: Direction::Decrypt,
                auth: ChainAuth::Mac(MacAlg::Hmac(HashAlg::Sha384)),
                digest_len: 24,
            },
            SessionInfo::Hash {
                alg: HashAlg::Sha512,
                digest_len: 64,
            },
            SessionInfo::Aead {
                alg: AeadAlg::AesGcm,
                dir: Direction::Encrypt,
                tag_len: 16,
            },
        ];
        let id = 0x1122_3344_5566_7788;
        let (a, b, c, d) = (0x0102_0304, 0x1112_1314, 0x2122_2324, 0x3132_3334);
        let [o0, o1, o2, o3] = infos.each_ref().map(opcode_and_algo);
        let cases = [
            (
                cipher(&infos[0], id, a, b),
                RequestWords::cipher(o0.0, o0.1, id, a, b),
            ),
            (
                chain(&infos[1], id, a, b, c, d),
                RequestWords::chain(o1.0, o1.1, id, a, b, c, d),
            ),
            (
                hash(&infos[2], id, a, b),
                RequestWords::hash(o2.0, o2.1, id, a, b),
            ),
            (
                aead(&infos[3], id, a, b, c, d),
                RequestWords::aead(o3.0, o3.1, id, a, b, c, d),
            ),
        ];
        for (req, w) in cases {
            assert_eq!(&w.to_bytes()[..], req.as_slice());
        }
    }

    #[test]
    fn ctrl_request_bytes_for_aes_cbc_and_destroy() {
        let key = [0xaa; 16];
        let mut keys = Vec::new();
        let req = encode_create(
            &SessionParams::Cipher {
                alg: CipherAlg::AesCbc,
                key: &key,
                dir: Direction::Decrypt,
            },
            &mut keys,
        );
        let b = req.as_slice();
        assert_eq!(b.len(), 72);
        assert_eq!(&b[0..4], &le(CIPHER_CREATE_SESSION));
        // cipher_session_para {algo, keylen, op} at 16; op_type at 16 + 48.
        assert_eq!(&b[16..28], &[3, 0, 0, 0, 16, 0, 0, 0, 2, 0, 0, 0]);
        assert_eq!(&b[64..68], &le(SYM_OP_CIPHER));
        assert_eq!(keys, key);
        let d = encode_destroy(SERVICE_MAC, 0x55);
        let b = d.as_slice();
        assert_eq!(&b[0..4], &le(MAC_DESTROY_SESSION));
        assert_eq!(&b[16..24], &0x55u64.to_le_bytes());
    }
}
