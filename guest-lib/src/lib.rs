//! # dpacc-guest: what a vNF links to use its host's accelerators
//!
//! Two devices served by `dpacc-backend`, driven from this process:
//!
//! - **Look-aside crypto**: a standard virtio-crypto device (virtio device ID 20).
//! - **The inline fast path** ([`net`]): a virtio-net port whose frames pass through the vNF's
//!   own flow processor; [`net::FlowTable`] programs it over the port ([`net::VirtioNetPort`]
//!   over virtio-user or the VM's virtio-net PCI function, or [`net::AfPacket`] on the kernel's
//!   interface inside a VM), one request at a time or many in flight (`submit_*` and
//!   `poll_completions`, batched into shared frames with a version-2 device).
//!
//! Devices are reached through a [`transport::Transport`], named by an endpoint string, so a
//! vNF's code is the same in a container and in a VM:
//!
//! - `vhost-user:PATH` ([`transport::virtio_user`]): this process is the vhost-user frontend of
//!   the backend's socket (containers, tests), with its own shared memory holding the split
//!   rings and the data buffers ([`DmaBuf`]), so requests are zero-copy;
//! - `pci:DDDD:BB:DD.F` ([`transport::pci`]): inside a VM, this process drives the VM's
//!   virtio PCI function itself (bound to `uio_pci_generic`, DMA memory in 2 MiB hugepages with
//!   guest-physical addresses; root). Behind QEMU, crypto sessions are created in-band on a
//!   data queue ([`SessionControl`]), so every algorithm the backend has is usable.
//!
//! The crypto API:
//!
//! - [`CryptoDevice::open`] (`"pci:..."` or `"vhost-user:..."`) or [`CryptoDevice::connect`]
//!   (a socket path): negotiate, read [`capabilities`](CryptoDevice::capabilities).
//! - [`CryptoDevice::create_session`] → [`Session`] (destroyed on drop), with synchronous
//!   conveniences: [`Session::encrypt`], [`Session::decrypt`], [`Session::digest`],
//!   [`Session::chain`], [`Session::verify_then_decrypt`].
//! - The asynchronous batch API: take a [`Queue`] per thread ([`CryptoDevice::queue`]), build
//!   [`Op`]s over [`DmaBuf`]s, [`Queue::push`] many, [`Queue::flush`] once (one kick at most),
//!   then [`Queue::poll`] / [`Queue::wait`] for [`Completion`]s, whose `result` tells an
//!   authentication failure ([`CryptoError::AuthFailed`]) from a bad request.
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
//!
//! The same vNF inside a VM, on the VM's `virtio-crypto-pci` and `virtio-net-pci` functions
//! (bound to `uio_pci_generic`, e.g. with `dpacc pci bind`; hugepages reserved; as root):
//!
//! ```no_run
//! use dpacc_guest::net::{FlowTable, NetOptions, VirtioNetPort};
//! use dpacc_guest::{CryptoDevice, Options};
//! use dpacc_spec::{AeadAlg, Direction, SessionParams};
//!
//! # fn main() -> Result<(), dpacc_guest::Error> {
//! // "pci:0000:00:04.0" in a VM, "vhost-user:/run/dpacc/crypto.sock" in a container.
//! let dev = CryptoDevice::open("pci:0000:00:04.0", Options::default())?;
//! let key = [0x11u8; 32];
//! let enc = dev.create_session(&SessionParams::Aead { alg: AeadAlg::AesGcm, key: &key, tag_len: 0, dir: Direction::Encrypt })?;
//! let sealed = enc.encrypt(&[0u8; 12], b"header", b"payload")?; // or the batch API: dev.queue(0)?
//! let port = VirtioNetPort::open("pci:0000:00:05.0", NetOptions::default())?;
//! let mac = port.mac();
//! let mut flows = FlowTable::new(port, mac); // exception packets in, flows out: flows.add_flow(..)
//! # let _ = (sealed, flows.hello()?);
//! # Ok(())
//! # }
//! ```
//!
//! ## Features
//!
//! - `cli` (default): the `dpacc` command-line tool and what only it needs (clap, hex, the
//!   in-process software driver for `dpacc bench`). A vNF turns it off
//!   (`default-features = false`) and links the library alone.
//! - `testing`: `RawQueue` (`Queue::raw`, `CryptoDevice::with_raw_ctrl`), descriptor-level
//!   access for tests that send malformed chains, and `fake_device`, a scripted device
//!   over the library's own rings for tests (and fuzz targets) of a misbehaving device.

#![deny(missing_docs)]

mod crypto;
pub mod error;
#[cfg(any(test, feature = "testing"))]
pub mod fake_device;
#[cfg(test)]
mod hostile_device;
pub mod mem;
pub mod net;
pub mod transport;
pub mod virtq;

pub use crypto::request;
#[cfg(feature = "testing")]
pub use crypto::RawQueue;
pub use crypto::{
    ct_eq, Completion, CryptoDevice, Op, OpBufs, Options, Queue, Rejected, Session, SessionControl,
};
pub use dpacc_spec::{Capabilities, CryptoError};
pub use error::{Error, Result};
pub use mem::{DmaBuf, Hugepages};
pub use virtq::{CompletionMode, RawDesc, UsedElem};
