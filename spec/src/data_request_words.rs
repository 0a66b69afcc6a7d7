//! A virtio-crypto data request ([`DataRequest`], [`DATA_REQ_SIZE`] bytes) as the eight-byte
//! words its bytes form in memory, built from values in registers.
//!
//! The same bytes as a [`DataRequest`] filled field by field (the tests below check every
//! kind), for a sender that stores a request into a ring slot on every operation: a request
//! assembled on the stack with 4-byte field stores and copied out with wider loads waits for
//! the stores to reach the cache (no store forwarding), and that wait was a tenth of a
//! look-aside client's time per 64-byte operation.

#[cfg(doc)]
use crate::virtio_crypto::DataRequest;
use crate::virtio_crypto::{DATA_REQ_SIZE, SYM_OP_ALGORITHM_CHAINING, SYM_OP_CIPHER};

/// Eight-byte words in a data request.
pub const DATA_REQ_WORDS: usize = DATA_REQ_SIZE / 8;

/// A data request as the native-order words of its little-endian bytes, ready to store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataRequestWords(pub [u64; DATA_REQ_WORDS]);

/// Two little-endian `u32`s as the native word of their 8 bytes.
#[inline(always)]
fn pair(lo: u32, hi: u32) -> u64 {
    (u64::from(lo) | u64::from(hi) << 32).to_le()
}

// Word indexes: op_header {opcode, algo | session_id | flag, padding} is words 0-2; the
// 48-byte body is words 3-8 (a sym_data_req's op_type is body offset 40: word 8, low half).
const BODY: usize = 3;
const SYM_OP_TYPE: usize = BODY + 5;

impl DataRequestWords {
    /// The header alone (`opcode`, `algo`, `session_id`; flag and padding zero), body zero.
    #[inline(always)]
    pub fn header(opcode: u32, algo: u32, session_id: u64) -> Self {
        let mut w = [0u64; DATA_REQ_WORDS];
        w[0] = pair(opcode, algo);
        w[1] = session_id.to_le();
        Self(w)
    }

    /// A cipher request: `sym_data_req` with `cipher_data_para {iv_len, src = dst = len}`.
    #[inline(always)]
    pub fn cipher(opcode: u32, algo: u32, session_id: u64, iv_len: u32, len: u32) -> Self {
        let mut r = Self::header(opcode, algo, session_id);
        r.0[BODY] = pair(iv_len, len);
        r.0[BODY + 1] = pair(len, 0);
        r.0[SYM_OP_TYPE] = pair(SYM_OP_CIPHER, 0);
        r
    }

    /// An algorithm-chaining request: the cipher and the hash both cover the whole source
    /// (`len` bytes, from offset 0).
    #[inline(always)]
    pub fn chain(
        opcode: u32,
        algo: u32,
        session_id: u64,
        iv_len: u32,
        len: u32,
        aad_len: u32,
        hash_len: u32,
    ) -> Self {
        let mut r = Self::header(opcode, algo, session_id);
        r.0[BODY] = pair(iv_len, len);
        r.0[BODY + 1] = pair(len, 0);
        r.0[BODY + 2] = pair(len, 0);
        r.0[BODY + 3] = pair(len, aad_len);
        r.0[BODY + 4] = pair(hash_len, 0);
        r.0[SYM_OP_TYPE] = pair(SYM_OP_ALGORITHM_CHAINING, 0);
        r
    }

    /// A hash or MAC request: `hash_data_para {src_len, hash_len}`.
    #[inline(always)]
    pub fn hash(opcode: u32, algo: u32, session_id: u64, src_len: u32, hash_len: u32) -> Self {
        let mut r = Self::header(opcode, algo, session_id);
        r.0[BODY] = pair(src_len, hash_len);
        r
    }

    /// An AEAD request: `aead_data_para {iv_len, aad_len, src_len, dst_len}`.
    #[inline(always)]
    pub fn aead(
        opcode: u32,
        algo: u32,
        session_id: u64,
        iv_len: u32,
        aad_len: u32,
        src_len: u32,
        dst_len: u32,
    ) -> Self {
        let mut r = Self::header(opcode, algo, session_id);
        r.0[BODY] = pair(iv_len, aad_len);
        r.0[BODY + 1] = pair(src_len, dst_len);
        r
    }

    /// The request's bytes.
    pub fn to_bytes(&self) -> [u8; DATA_REQ_SIZE] {
        let mut b = [0u8; DATA_REQ_SIZE];
        for (out, w) in b.chunks_exact_mut(8).zip(self.0) {
            out.copy_from_slice(&w.to_ne_bytes());
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio_crypto::*;
    use vm_memory::ByteValued;

    fn header(opcode: u32, algo: u32, session_id: u64) -> DataRequest {
        let mut req = DataRequest::default();
        req.header.opcode = opcode.into();
        req.header.algo = algo.into();
        req.header.session_id = session_id.into();
        req
    }

    fn sym<T: ByteValued>(para: &T, op_type: u32) -> SymDataReq {
        let mut s = SymDataReq::default();
        s.set_para(para);
        s.op_type = op_type.into();
        s
    }

    /// Every kind's words are the bytes of the structs filled field by field, with values
    /// that differ in every byte (a field at the wrong offset or width shows).
    #[test]
    fn words_are_the_request_bytes_for_every_kind() {
        let (op, algo, id) = (0x0a0b_0c0d, 0x1a1b_1c1d, 0x1122_3344_5566_7788);
        let (a, b, c, d) = (0x0102_0304, 0x1112_1314, 0x2122_2324, 0x3132_3334);

        let mut req = header(op, algo, id);
        req.set_body(&sym(
            &CipherDataPara {
                iv_len: a.into(),
                src_data_len: b.into(),
                dst_data_len: b.into(),
                padding: 0.into(),
            },
            SYM_OP_CIPHER,
        ));
        let w = DataRequestWords::cipher(op, algo, id, a, b);
        assert_eq!(&w.to_bytes()[..], req.as_slice());

        let mut req = header(op, algo, id);
        req.set_body(&sym(
            &AlgChainDataPara {
                iv_len: a.into(),
                src_data_len: b.into(),
                dst_data_len: b.into(),
                cipher_start_src_offset: 0.into(),
                len_to_cipher: b.into(),
                hash_start_src_offset: 0.into(),
                len_to_hash: b.into(),
                aad_len: c.into(),
                hash_result_len: d.into(),
                reserved: 0.into(),
            },
            SYM_OP_ALGORITHM_CHAINING,
        ));
        let w = DataRequestWords::chain(op, algo, id, a, b, c, d);
        assert_eq!(&w.to_bytes()[..], req.as_slice());

        let mut req = header(op, algo, id);
        req.set_body(&HashDataPara {
            src_data_len: a.into(),
            hash_result_len: b.into(),
        });
        let w = DataRequestWords::hash(op, algo, id, a, b);
        assert_eq!(&w.to_bytes()[..], req.as_slice());

        let mut req = header(op, algo, id);
        req.set_body(&AeadDataPara {
            iv_len: a.into(),
            aad_len: b.into(),
            src_data_len: c.into(),
            dst_data_len: d.into(),
        });
        let w = DataRequestWords::aead(op, algo, id, a, b, c, d);
        assert_eq!(&w.to_bytes()[..], req.as_slice());
    }
}
