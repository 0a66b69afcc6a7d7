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

use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::Path;

/// Binds a vhost-user socket at `path`, replacing a stale socket file (never another kind of
/// file).
pub fn bind(path: &Path) -> Result<UnixListener, String> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            let _ = std::fs::remove_file(path);
        }
    }
    let l = UnixListener::bind(path).map_err(|e| format!("binding {}: {e}", path.display()))?;
    tracing::info!("listening on {}", path.display());
    Ok(l)
}
