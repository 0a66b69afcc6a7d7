//! # dpacc-spec: the contract between the dpacc crates
//!
//! - [`virtio_crypto`]: the virtio-crypto device's constants and wire structs.
//! - [`ctrl`]: decoding/encoding control-queue session requests.
//! - [`in_band`]: dpacc's control requests on a data queue (for VMMs that keep the control
//!   queue, such as QEMU).
//! - [`vhost_user_crypto`]: QEMU's vhost-user CREATE/CLOSE_CRYPTO_SESSION payloads.
//! - [`algo`]: algorithms and [`SessionParams`](algo::SessionParams) in Rust terms.
//! - [`driver`]: the look-aside crypto driver traits.
//! - [`fastpath`]: the inline (flow processor) driver sketch.
//! - [`error`]: [`CryptoError`](error::CryptoError) and its virtio status mapping.
//!
//! The written spec is `spec/README.md`. This crate depends on no other dpacc crate.

#![deny(missing_docs)]

pub mod algo;
pub mod ctrl;
pub mod data_request_words;
pub mod driver;
pub mod error;
pub mod fastpath;
pub mod in_band;
pub mod vhost_user_crypto;
pub mod virtio_crypto;

pub use algo::{
    AeadAlg, ChainAuth, ChainOrder, CipherAlg, Direction, HashAlg, MacAlg, SessionParams,
};
pub use driver::{
    run_sync, sg_len, Capabilities, ChainRanges, Completion, CryptoDriver, CryptoOp, CryptoQueue,
    DriverSession, Iv, Seg, SessionHandle, SessionInfo,
};
pub use error::CryptoError;
