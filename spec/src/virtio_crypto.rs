//! The virtio-crypto device (virtio 1.2, "Crypto Device", device ID 20): constants and
//! little-endian wire structs.
//!
//! The layouts are the ones used when `VIRTIO_CRYPTO_F_REVISION_1` is *not* negotiated, which is
//! what the Linux guest driver and QEMU speak: every control request is a fixed 72-byte header
//! and every data request a fixed 72-byte header, each followed by variable-length fields.
//! Each struct implements [`ByteValued`] so it can be read straight out of guest memory.

use vm_memory::endian::{Le32, Le64};
use vm_memory::ByteValued;

/// Virtio device ID of the crypto device.
pub const VIRTIO_ID_CRYPTO: u32 = 20;

/// Service: symmetric ciphers.
pub const SERVICE_CIPHER: u32 = 0;
/// Service: hashes.
pub const SERVICE_HASH: u32 = 1;
/// Service: message authentication codes.
pub const SERVICE_MAC: u32 = 2;
/// Service: authenticated encryption with associated data.
pub const SERVICE_AEAD: u32 = 3;

/// Builds an opcode from a service and an operation number.
pub const fn opcode(service: u32, op: u32) -> u32 {
    (service << 8) | op
}

/// Control opcode: create a cipher (or chained cipher+hash) session.
pub const CIPHER_CREATE_SESSION: u32 = opcode(SERVICE_CIPHER, 0x02);
/// Control opcode: destroy a cipher session.
pub const CIPHER_DESTROY_SESSION: u32 = opcode(SERVICE_CIPHER, 0x03);
/// Control opcode: create a hash session.
pub const HASH_CREATE_SESSION: u32 = opcode(SERVICE_HASH, 0x02);
/// Control opcode: destroy a hash session.
pub const HASH_DESTROY_SESSION: u32 = opcode(SERVICE_HASH, 0x03);
/// Control opcode: create a MAC session.
pub const MAC_CREATE_SESSION: u32 = opcode(SERVICE_MAC, 0x02);
/// Control opcode: destroy a MAC session.
pub const MAC_DESTROY_SESSION: u32 = opcode(SERVICE_MAC, 0x03);
/// Control opcode: create an AEAD session.
pub const AEAD_CREATE_SESSION: u32 = opcode(SERVICE_AEAD, 0x02);
/// Control opcode: destroy an AEAD session.
pub const AEAD_DESTROY_SESSION: u32 = opcode(SERVICE_AEAD, 0x03);

/// Data opcode: cipher (or chain) encrypt.
pub const CIPHER_ENCRYPT: u32 = opcode(SERVICE_CIPHER, 0x00);
/// Data opcode: cipher (or chain) decrypt.
pub const CIPHER_DECRYPT: u32 = opcode(SERVICE_CIPHER, 0x01);
/// Data opcode: hash.
pub const HASH: u32 = opcode(SERVICE_HASH, 0x00);
/// Data opcode: MAC.
pub const MAC: u32 = opcode(SERVICE_MAC, 0x00);
/// Data opcode: AEAD encrypt.
pub const AEAD_ENCRYPT: u32 = opcode(SERVICE_AEAD, 0x00);
/// Data opcode: AEAD decrypt.
pub const AEAD_DECRYPT: u32 = opcode(SERVICE_AEAD, 0x01);

/// Cipher algorithm numbers (bit positions in `cipher_algo_l/h`).
pub mod cipher {
    /// No cipher (hash-only half of a chain).
    pub const NO_CIPHER: u32 = 0;
    /// AES in ECB mode (not implemented by dpacc).
    pub const AES_ECB: u32 = 2;
    /// AES in CBC mode.
    pub const AES_CBC: u32 = 3;
    /// AES in CTR mode.
    pub const AES_CTR: u32 = 4;
    /// AES in XTS mode (not implemented by dpacc).
    pub const AES_XTS: u32 = 13;
}

/// Hash algorithm numbers (bit positions in `hash_algo`).
pub mod hash {
    /// No hash.
    pub const NO_HASH: u32 = 0;
    /// MD5 (not implemented by dpacc).
    pub const MD5: u32 = 1;
    /// SHA-1.
    pub const SHA1: u32 = 2;
    /// SHA-224 (not implemented by dpacc).
    pub const SHA_224: u32 = 3;
    /// SHA-256.
    pub const SHA_256: u32 = 4;
    /// SHA-384.
    pub const SHA_384: u32 = 5;
    /// SHA-512.
    pub const SHA_512: u32 = 6;
}

/// MAC algorithm numbers (bit positions in `mac_algo_l/h`).
pub mod mac {
    /// No MAC.
    pub const NO_MAC: u32 = 0;
    /// HMAC-MD5 (not implemented by dpacc).
    pub const HMAC_MD5: u32 = 1;
    /// HMAC-SHA-1.
    pub const HMAC_SHA1: u32 = 2;
    /// HMAC-SHA-224 (not implemented by dpacc).
    pub const HMAC_SHA_224: u32 = 3;
    /// HMAC-SHA-256.
    pub const HMAC_SHA_256: u32 = 4;
    /// HMAC-SHA-384.
    pub const HMAC_SHA_384: u32 = 5;
    /// HMAC-SHA-512.
    pub const HMAC_SHA_512: u32 = 6;
    /// AES-CMAC (not implemented by dpacc).
    pub const CMAC_AES: u32 = 26;
}

/// AEAD algorithm numbers (bit positions in `aead_algo`).
pub mod aead {
    /// No AEAD.
    pub const NO_AEAD: u32 = 0;
    /// AES-GCM.
    pub const GCM: u32 = 1;
    /// AES-CCM (not implemented by dpacc).
    pub const CCM: u32 = 2;
    /// ChaCha20-Poly1305.
    pub const CHACHA20_POLY1305: u32 = 3;
}

/// Session direction: encrypt.
pub const OP_ENCRYPT: u32 = 1;
/// Session direction: decrypt.
pub const OP_DECRYPT: u32 = 2;

/// Symmetric op type: none.
pub const SYM_OP_NONE: u32 = 0;
/// Symmetric op type: cipher only.
pub const SYM_OP_CIPHER: u32 = 1;
/// Symmetric op type: cipher chained with a hash or MAC.
pub const SYM_OP_ALGORITHM_CHAINING: u32 = 2;

/// Chain order: hash (MAC) first, then cipher.
pub const CHAIN_ORDER_HASH_THEN_CIPHER: u32 = 1;
/// Chain order: cipher first, then hash (MAC).
pub const CHAIN_ORDER_CIPHER_THEN_HASH: u32 = 2;

/// Chain hash mode: plain hash.
pub const HASH_MODE_PLAIN: u32 = 1;
/// Chain hash mode: authenticated hash (MAC).
pub const HASH_MODE_AUTH: u32 = 2;
/// Chain hash mode: nested hash (not implemented by dpacc).
pub const HASH_MODE_NESTED: u32 = 3;

/// Status byte values written by the device.
pub mod status {
    /// Success.
    pub const OK: u8 = 0;
    /// Any failure not covered below.
    pub const ERR: u8 = 1;
    /// Verification failed (AEAD tag mismatch). dpacc uses it for nothing else.
    pub const BADMSG: u8 = 2;
    /// Algorithm or operation not supported.
    pub const NOTSUPP: u8 = 3;
    /// Invalid session id.
    pub const INVSESS: u8 = 4;
    /// No free session slot.
    pub const NOSPC: u8 = 5;
}

/// Device status bit in the config space: the accelerator is ready.
pub const S_HW_READY: u32 = 1;

/// Size of the fixed part of every control request (header + 56-byte union).
pub const CTRL_REQ_SIZE: usize = 72;
/// Size of the fixed part of every data request (header + 48-byte union).
pub const DATA_REQ_SIZE: usize = 72;

macro_rules! byte_valued {
    ($($t:ty),* $(,)?) => {$(
        // SAFETY: the type is `repr(C)`, made only of little-endian integers and byte arrays,
        // has no implicit padding (checked by the size asserts below) and every bit pattern is
        // a valid value.
        unsafe impl ByteValued for $t {}
    )*};
}

/// Device configuration space (`struct virtio_crypto_config`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// `S_HW_READY` when the device can take requests.
    pub status: Le32,
    /// Number of data queues.
    pub max_dataqueues: Le32,
    /// Bit mask of `SERVICE_*`.
    pub crypto_services: Le32,
    /// Cipher algorithms 0..31.
    pub cipher_algo_l: Le32,
    /// Cipher algorithms 32..63.
    pub cipher_algo_h: Le32,
    /// Hash algorithms.
    pub hash_algo: Le32,
    /// MAC algorithms 0..31.
    pub mac_algo_l: Le32,
    /// MAC algorithms 32..63.
    pub mac_algo_h: Le32,
    /// AEAD algorithms.
    pub aead_algo: Le32,
    /// Longest cipher key in bytes.
    pub max_cipher_key_len: Le32,
    /// Longest authentication key in bytes.
    pub max_auth_key_len: Le32,
    /// Asymmetric algorithms (reserved before virtio 1.2); dpacc sets 0.
    pub akcipher_algo: Le32,
    /// Largest request content in bytes.
    pub max_size: Le64,
}

/// Header of every control request (`struct virtio_crypto_ctrl_header`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtrlHeader {
    /// One of the `*_CREATE_SESSION` / `*_DESTROY_SESSION` opcodes.
    pub opcode: Le32,
    /// Service-specific algorithm.
    pub algo: Le32,
    /// Reserved flags.
    pub flag: Le32,
    /// Data queue the session is meant for (informational).
    pub queue_id: Le32,
}

/// Cipher session parameters (`struct virtio_crypto_cipher_session_para`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CipherSessionPara {
    /// `cipher::*`.
    pub algo: Le32,
    /// Key length in bytes; the key follows the 72-byte request.
    pub keylen: Le32,
    /// `OP_ENCRYPT` or `OP_DECRYPT`.
    pub op: Le32,
    /// Reserved.
    pub padding: Le32,
}

/// Hash session parameters (`struct virtio_crypto_hash_session_para`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HashSessionPara {
    /// `hash::*`.
    pub algo: Le32,
    /// Digest length in bytes.
    pub hash_result_len: Le32,
    /// Reserved.
    pub padding: [u8; 8],
}

/// MAC session parameters (`struct virtio_crypto_mac_session_para`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MacSessionPara {
    /// `mac::*`.
    pub algo: Le32,
    /// Digest length in bytes.
    pub hash_result_len: Le32,
    /// Authentication key length; the key follows the request.
    pub auth_key_len: Le32,
    /// Reserved.
    pub padding: Le32,
}

/// AEAD session parameters (`struct virtio_crypto_aead_session_para`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AeadSessionPara {
    /// `aead::*`.
    pub algo: Le32,
    /// Key length in bytes; the key follows the request.
    pub key_len: Le32,
    /// Tag length in bytes.
    pub hash_result_len: Le32,
    /// AAD length in bytes (informational; each operation gives its own).
    pub aad_len: Le32,
    /// `OP_ENCRYPT` or `OP_DECRYPT`.
    pub op: Le32,
    /// Reserved.
    pub padding: Le32,
}

/// Chained cipher + hash/MAC session parameters (`struct virtio_crypto_alg_chain_session_para`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AlgChainSessionPara {
    /// `CHAIN_ORDER_*`.
    pub alg_chain_order: Le32,
    /// `HASH_MODE_*`.
    pub hash_mode: Le32,
    /// The cipher half.
    pub cipher: CipherSessionPara,
    /// The hash half: a [`HashSessionPara`] or a [`MacSessionPara`] depending on `hash_mode`.
    pub hash: [u8; 16],
    /// AAD length (informational).
    pub aad_len: Le32,
    /// Reserved.
    pub padding: Le32,
}

/// The 56-byte body of a symmetric (cipher or chain) create-session request.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SymCreateSessionReq {
    /// [`CipherSessionPara`] or [`AlgChainSessionPara`] depending on `op_type`.
    pub u: [u8; 48],
    /// `SYM_OP_*`.
    pub op_type: Le32,
    /// Reserved.
    pub padding: Le32,
}

impl Default for SymCreateSessionReq {
    fn default() -> Self {
        Self {
            u: [0; 48],
            op_type: Le32::default(),
            padding: Le32::default(),
        }
    }
}

/// Body of a destroy-session request.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DestroySessionReq {
    /// The session to destroy.
    pub session_id: Le64,
    /// Reserved.
    pub padding: [u8; 48],
}

impl Default for DestroySessionReq {
    fn default() -> Self {
        Self {
            session_id: Le64::default(),
            padding: [0; 48],
        }
    }
}

/// The fixed 72-byte control request (`struct virtio_crypto_op_ctrl_req`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtrlRequest {
    /// Common header.
    pub header: CtrlHeader,
    /// Opcode-specific body; read it with [`CtrlRequest::body`].
    pub u: [u8; 56],
}

impl Default for CtrlRequest {
    fn default() -> Self {
        Self {
            header: CtrlHeader::default(),
            u: [0; 56],
        }
    }
}

impl CtrlRequest {
    /// Reads the body as `T` (any of the `*Para`/`*Req` structs, all at most 56 bytes).
    pub fn body<T: ByteValued + Default>(&self) -> T {
        read_prefix(&self.u)
    }

    /// Writes `body` at the start of the opcode-specific union.
    pub fn set_body<T: ByteValued>(&mut self, body: &T) {
        write_prefix(&mut self.u, body)
    }
}

/// Device-writable result of a create-session request (`struct virtio_crypto_session_input`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionInput {
    /// The new session's id (valid when `status` is OK).
    pub session_id: Le64,
    /// A `status::*` value.
    pub status: Le32,
    /// Reserved.
    pub padding: Le32,
}

/// Header of every data request (`struct virtio_crypto_op_header`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpHeader {
    /// One of the data opcodes (`CIPHER_ENCRYPT`, `HASH`, ...).
    pub opcode: Le32,
    /// Service-specific algorithm (informational; the session decides).
    pub algo: Le32,
    /// Session the operation runs in.
    pub session_id: Le64,
    /// Reserved flags.
    pub flag: Le32,
    /// Reserved.
    pub padding: Le32,
}

/// Cipher data parameters (`struct virtio_crypto_cipher_para`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CipherDataPara {
    /// IV / counter length.
    pub iv_len: Le32,
    /// Source length.
    pub src_data_len: Le32,
    /// Destination length.
    pub dst_data_len: Le32,
    /// Reserved.
    pub padding: Le32,
}

/// Chained cipher + hash data parameters (`struct virtio_crypto_alg_chain_data_para`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AlgChainDataPara {
    /// IV length.
    pub iv_len: Le32,
    /// Source length.
    pub src_data_len: Le32,
    /// Destination length.
    pub dst_data_len: Le32,
    /// Where the cipher starts in the source.
    pub cipher_start_src_offset: Le32,
    /// How many bytes the cipher covers.
    pub len_to_cipher: Le32,
    /// Where the hash starts in the source.
    pub hash_start_src_offset: Le32,
    /// How many bytes the hash covers.
    pub len_to_hash: Le32,
    /// AAD length.
    pub aad_len: Le32,
    /// Digest length.
    pub hash_result_len: Le32,
    /// Reserved.
    pub reserved: Le32,
}

/// Symmetric data request body (`struct virtio_crypto_sym_data_req`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SymDataReq {
    /// [`CipherDataPara`] or [`AlgChainDataPara`] depending on `op_type`.
    pub u: [u8; 40],
    /// `SYM_OP_*`.
    pub op_type: Le32,
    /// Reserved.
    pub padding: Le32,
}

impl Default for SymDataReq {
    fn default() -> Self {
        Self {
            u: [0; 40],
            op_type: Le32::default(),
            padding: Le32::default(),
        }
    }
}

/// Hash / MAC data parameters (`struct virtio_crypto_hash_para`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HashDataPara {
    /// Source length.
    pub src_data_len: Le32,
    /// Digest length.
    pub hash_result_len: Le32,
}

/// AEAD data parameters (`struct virtio_crypto_aead_para`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AeadDataPara {
    /// IV / nonce length.
    pub iv_len: Le32,
    /// AAD length.
    pub aad_len: Le32,
    /// Source length (decrypt: ciphertext plus tag).
    pub src_data_len: Le32,
    /// Destination length (encrypt: at least ciphertext plus tag).
    pub dst_data_len: Le32,
}

/// The fixed 72-byte data request (`struct virtio_crypto_op_data_req`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataRequest {
    /// Common header.
    pub header: OpHeader,
    /// Opcode-specific body; read it with [`DataRequest::body`].
    pub u: [u8; 48],
}

impl Default for DataRequest {
    fn default() -> Self {
        Self {
            header: OpHeader::default(),
            u: [0; 48],
        }
    }
}

impl DataRequest {
    /// Reads the body as `T` (any of the `*DataPara`/`*DataReq` structs, all at most 48 bytes).
    pub fn body<T: ByteValued + Default>(&self) -> T {
        read_prefix(&self.u)
    }

    /// Writes `body` at the start of the opcode-specific union.
    pub fn set_body<T: ByteValued>(&mut self, body: &T) {
        write_prefix(&mut self.u, body)
    }
}

impl SymCreateSessionReq {
    /// Reads the union as `T` ([`CipherSessionPara`] or [`AlgChainSessionPara`]).
    pub fn para<T: ByteValued + Default>(&self) -> T {
        read_prefix(&self.u)
    }
    /// Writes `para` at the start of the union.
    pub fn set_para<T: ByteValued>(&mut self, para: &T) {
        write_prefix(&mut self.u, para)
    }
}

impl SymDataReq {
    /// Reads the union as `T` ([`CipherDataPara`] or [`AlgChainDataPara`]).
    pub fn para<T: ByteValued + Default>(&self) -> T {
        read_prefix(&self.u)
    }
    /// Writes `para` at the start of the union.
    pub fn set_para<T: ByteValued>(&mut self, para: &T) {
        write_prefix(&mut self.u, para)
    }
}

/// Reads a `T` from the start of `buf`; `T` must fit (checked at compile time by callers' size
/// asserts; a too-large `T` yields zeroes past the end rather than reading out of bounds).
fn read_prefix<T: ByteValued + Default>(buf: &[u8]) -> T {
    let mut v = T::default();
    let dst = v.as_mut_slice();
    let n = dst.len().min(buf.len());
    dst[..n].copy_from_slice(&buf[..n]);
    v
}

fn write_prefix<T: ByteValued>(buf: &mut [u8], v: &T) {
    let src = v.as_slice();
    let n = src.len().min(buf.len());
    buf[..n].copy_from_slice(&src[..n]);
}

byte_valued!(
    Config,
    CtrlHeader,
    CipherSessionPara,
    HashSessionPara,
    MacSessionPara,
    AeadSessionPara,
    AlgChainSessionPara,
    SymCreateSessionReq,
    DestroySessionReq,
    CtrlRequest,
    SessionInput,
    OpHeader,
    CipherDataPara,
    AlgChainDataPara,
    SymDataReq,
    HashDataPara,
    AeadDataPara,
    DataRequest,
);

const _: () = {
    use core::mem::size_of;
    assert!(size_of::<Config>() == 56);
    assert!(size_of::<CtrlHeader>() == 16);
    assert!(size_of::<CipherSessionPara>() == 16);
    assert!(size_of::<HashSessionPara>() == 16);
    assert!(size_of::<MacSessionPara>() == 16);
    assert!(size_of::<AeadSessionPara>() == 24);
    assert!(size_of::<AlgChainSessionPara>() == 48);
    assert!(size_of::<SymCreateSessionReq>() == 56);
    assert!(size_of::<DestroySessionReq>() == 56);
    assert!(size_of::<CtrlRequest>() == CTRL_REQ_SIZE);
    assert!(size_of::<SessionInput>() == 16);
    assert!(size_of::<OpHeader>() == 24);
    assert!(size_of::<CipherDataPara>() == 16);
    assert!(size_of::<AlgChainDataPara>() == 40);
    assert!(size_of::<SymDataReq>() == 48);
    assert!(size_of::<HashDataPara>() == 8);
    assert!(size_of::<AeadDataPara>() == 16);
    assert!(size_of::<DataRequest>() == DATA_REQ_SIZE);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opcodes_match_the_spec() {
        assert_eq!(CIPHER_CREATE_SESSION, 0x002);
        assert_eq!(HASH_CREATE_SESSION, 0x102);
        assert_eq!(MAC_DESTROY_SESSION, 0x203);
        assert_eq!(AEAD_DECRYPT, 0x301);
    }

    #[test]
    fn ctrl_request_is_little_endian_on_the_wire() {
        let mut req = CtrlRequest::default();
        req.header.opcode = CIPHER_CREATE_SESSION.into();
        let mut sym = SymCreateSessionReq::default();
        sym.set_para(&CipherSessionPara {
            algo: cipher::AES_CBC.into(),
            keylen: 16.into(),
            op: OP_ENCRYPT.into(),
            padding: 0.into(),
        });
        sym.op_type = SYM_OP_CIPHER.into();
        req.set_body(&sym);
        let bytes = req.as_slice();
        assert_eq!(&bytes[0..4], &[2, 0, 0, 0]);
        // cipher algo at 16, keylen at 20, op at 24; op_type at 16 + 48 = 64.
        assert_eq!(&bytes[16..28], &[3, 0, 0, 0, 16, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(&bytes[64..68], &[1, 0, 0, 0]);
        let back = CtrlRequest::from_slice(bytes).unwrap();
        let sym2: SymCreateSessionReq = back.body();
        let p: CipherSessionPara = sym2.para();
        assert_eq!(p.keylen.to_native(), 16);
    }

    #[test]
    fn data_request_field_offsets() {
        let mut req = DataRequest::default();
        req.header.session_id = 0x1122_3344_5566_7788u64.into();
        let mut sym = SymDataReq::default();
        sym.set_para(&CipherDataPara {
            iv_len: 16.into(),
            src_data_len: 32.into(),
            dst_data_len: 32.into(),
            padding: 0.into(),
        });
        sym.op_type = SYM_OP_CIPHER.into();
        req.set_body(&sym);
        let b = req.as_slice();
        assert_eq!(&b[8..16], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(&b[24..28], &16u32.to_le_bytes());
        assert_eq!(&b[64..68], &SYM_OP_CIPHER.to_le_bytes());
    }
}
