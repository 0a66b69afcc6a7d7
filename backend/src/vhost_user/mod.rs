//! A small vhost-user protocol server (backend side), device-agnostic.
//!
//! Built on the public pieces of rust-vmm (`vhost`'s message types, `vm-memory`,
//! `virtio-queue`, `vmm-sys-util`) because `vhost`'s own backend dispatcher cannot carry
//! CREATE/CLOSE_CRYPTO_SESSION; see `docs/decisions/0001-vhost-user-server.md`.

pub mod conn;
pub mod device;
pub mod memory;
pub mod server;

pub use device::{DeviceError, DeviceReply, GuestMem, QueueStart, VhostUserDevice};
pub use server::{serve, ServeError};
