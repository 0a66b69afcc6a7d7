//! # dpacc-sw: the software crypto driver
//!
//! [`SwDriver`] implements the [`dpacc_spec::CryptoDriver`] contract on the CPU, so every
//! dpacc deployment has a driver even without an accelerator (and a fallback next to one).
//!
//! - AES-128/192/256 CBC and CTR: RustCrypto `aes` block cipher, modes in `cipher.rs`.
//! - AES-GCM: AWS-LC (`aws-lc-rs`), out of place; ChaCha20-Poly1305: `ring` (chosen by
//!   measurement, see `aead.rs` and docs/decisions/0013-aead-library.md).
//! - SHA-1/256/384/512 and HMAC: RustCrypto `sha1`/`sha2`/`hmac` (see `digest.rs`).
//! - Chained cipher + hash/MAC (IPsec ESP): `chain.rs`.
//!
//! Sessions ([`SwSession`]) hold expanded keys only and zeroize them on drop. Queues
//! ([`SwQueue`]) complete operations inside `enqueue`, without allocating or locking: the
//! completion ring and bounce buffers are allocated when the queue opens.

#![deny(missing_docs)]

mod aead;
mod chain;
mod cipher;
mod digest;
mod driver;
pub mod flow;
mod gcm_stream;
mod queue;
mod session;
mod sg;

pub use driver::SwDriver;
pub use queue::{SwQueue, AAD_BOUNCE_LEN, DATA_BOUNCE_LEN};
pub use session::SwSession;
