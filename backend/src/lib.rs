//! # dpacc-backend: a vhost-user daemon serving virtio-crypto and virtio-net devices
//!
//! - [`vhost_user`]: a small, device-agnostic vhost-user protocol server (framing, the
//!   per-connection state machine, guest memory mapping, the [`vhost_user::VhostUserDevice`]
//!   trait devices implement).
//! - [`virtq`]: descriptor chain walking and zero-copy carving into scatter-gather lists,
//!   shared by every device.
//! - [`net`]: the inline fast path's virtio-net port (flow processor between the vNF and TAP
//!   uplinks), and [`net::serve`].
//! - [`crypto`]: the virtio-crypto device: sessions, control queue, data queues, and the
//!   [`crypto::serve`] entry point.
//! - [`cli`]: the command line of the `dpacc-backend` binary.
//!
//! Why our own vhost-user server: `docs/decisions/0001-vhost-user-server.md`.

#![deny(missing_docs)]

pub mod cli;
pub mod crypto;
pub mod net;
pub mod split_ring;
pub mod vhost_user;
pub mod virtq;

pub use crypto::{serve, CryptoBackendConfig};
