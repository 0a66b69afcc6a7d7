//! # dpacc-backend: a vhost-user daemon serving virtio-crypto and virtio-net devices
//!
//! The library behind the `dpacc-backend` binary (whose command line lives in `src/cli.rs`),
//! public so that end-to-end tests and benches can run a backend in-process:
//!
//! - [`crypto`]: the virtio-crypto device (sessions, control queue, data queues) and its
//!   [`crypto::serve`] entry point.
//! - [`net`]: the inline fast path: per vNF, a virtio-net device whose frames pass through the
//!   vNF's own flow-processor instance to its uplinks (TAP interfaces or further vhost-user
//!   virtio-net devices), and its [`net::serve`] entry point.
//! - [`vhost_user`]: a small, device-agnostic vhost-user protocol server (framing, the
//!   per-connection state machine, guest memory mapping, the trait devices implement).
//!
//! Internally, `virtq` walks and checks descriptor chains and carves them into
//! scatter-gather lists without copying, and `split_ring` is the ring layer: the batched
//! split-ring view that every ring of every device uses (crypto data and control queues,
//! virtio-net RX and TX); see `docs/decisions/0004-ring-layer.md`. How guest memory is
//! accessed: `docs/decisions/0005-guest-memory-access.md`.
//!
//! Why our own vhost-user server: `docs/decisions/0001-vhost-user-server.md`.

#![deny(missing_docs)]

pub mod api;
pub mod crypto;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod guest_log;
pub mod metrics;
pub mod net;
mod ready;
mod split_ring;
pub mod vhost_user;
mod virtq;

pub use crypto::{serve, CryptoBackendConfig};
