//! # dpacc-guest: offload crypto from a vNF to a virtio-crypto device
//!
//! The library drives a standard virtio-crypto device (virtio device ID 20) served by a
//! vhost-user backend: this process is the vhost-user frontend, with its own shared memory
//! holding the split rings and the data buffers ([`DmaBuf`]), so requests are zero-copy.
//!
//! - [`CryptoDevice::connect`]: connect, negotiate, read [`capabilities`](CryptoDevice::capabilities).
//! - [`CryptoDevice::create_session`] → [`Session`] (destroyed on drop), with synchronous
//!   conveniences: [`Session::encrypt`], [`Session::decrypt`], [`Session::digest`],
//!   [`Session::chain`], [`Session::verify_then_decrypt`].
//! - The asynchronous batch API: take a [`Queue`] per thread ([`CryptoDevice::queue`]), build
//!   [`Op`]s over [`DmaBuf`]s, [`Queue::push`] many, [`Queue::flush`] once (one kick at most),
//!   then [`Queue::poll`] / [`Queue::wait`] for [`Completion`]s, whose `result` tells an
//!   authentication failure ([`CryptoError::AuthFailed`]) from a bad request.
//! - [`RawQueue`]: descriptor-level access for tests that send malformed chains.
//! - [`transport::Transport`]: virtio-user now, a userspace virtio-pci transport later.
//!
//! ```no_run
//! use dpacc_guest::{CryptoDevice, Op, Options};
//! use dpacc_spec::{AeadAlg, Direction, SessionParams};
//!
//! # fn main() -> Result<(), dpacc_guest::Error> {
//! let dev = CryptoDevice::connect("/run/dpacc/crypto.sock", Options::default())?;
//! let key = [0x11u8; 32];
//! let enc = dev.create_session(&SessionParams::Aead {
//!     alg: AeadAlg::AesGcm,
//!     key: &key,
//!     tag_len: 0,
//!     dir: Direction::Encrypt,
//! })?;
//! // Synchronous, copying convenience: ciphertext ‖ tag.
//! let ct = enc.encrypt(&[0u8; 12], b"header", b"payload")?;
//! assert_eq!(ct.len(), 7 + 16);
//!
//! // Asynchronous, zero-copy batch on data queue 0.
//! let mut q = dev.queue(0)?;
//! for i in 0..32u64 {
//!     let src = dev.alloc_from(&[i as u8; 1024])?;
//!     let dst = dev.alloc(1024 + 16)?;
//!     let op = Op::aead(&enc, &[i as u8; 12], None, src, dst).with_user_data(i);
//!     q.push(op).map_err(|r| r.error)?;
//! }
//! q.flush()?;
//! let mut done = Vec::with_capacity(32);
//! while q.in_flight() > 0 {
//!     q.wait(&mut done)?;
//! }
//! for c in &done {
//!     c.result?; // CryptoError::AuthFailed only for failed verification
//!     let _ciphertext_and_tag = c.bufs.dst.as_ref().unwrap().as_slice();
//! }
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]

mod device;
pub mod error;
pub mod mem;
pub mod net;
pub mod request;
mod session;
pub mod transport;
pub mod virtq;

pub use device::{ct_eq, Completion, CryptoDevice, Op, OpBufs, Options, Queue, RawQueue, Rejected};
pub use dpacc_spec::{Capabilities, CryptoError};
pub use error::{Error, Result};
pub use mem::DmaBuf;
pub use session::Session;
pub use virtq::{CompletionMode, RawDesc, UsedElem};
