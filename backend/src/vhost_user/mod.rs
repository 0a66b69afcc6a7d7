//! A small vhost-user protocol server (backend side), device-agnostic.
//!
//! Built on the public pieces of rust-vmm (`vhost`'s message types, `vm-memory`,
//! `virtio-queue`, `vmm-sys-util`) because `vhost`'s own backend dispatcher cannot carry
//! CREATE/CLOSE_CRYPTO_SESSION; see `docs/decisions/0001-vhost-user-server.md`.

mod channel;
mod device;
mod memory;
mod server;

pub(crate) use device::{DeviceError, DeviceReply, GuestMem, QueueStart, VhostUserDevice};
pub(crate) use server::serve;
pub use server::ServeError;

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

/// A server loop (or any job) run by [`run_together`].
pub type Job<'a> = Box<dyn FnOnce() -> Result<(), String> + Send + 'a>;

/// Runs `jobs` on threads of their own until all return. The first to fail fires `shutdown`,
/// which stops the others (server loops watch it); returns the first error.
pub fn run_together(
    jobs: Vec<Job<'_>>,
    shutdown: &vmm_sys_util::eventfd::EventFd,
) -> Result<(), String> {
    std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .into_iter()
            .map(|job| {
                s.spawn(move || {
                    let r = job();
                    if r.is_err() {
                        let _ = shutdown.write(1);
                    }
                    r
                })
            })
            .collect();
        let mut first = Ok(());
        for h in handles {
            let r = h
                .join()
                .unwrap_or_else(|_| Err("a server thread panicked".into()));
            if first.is_ok() {
                first = r;
            }
        }
        first
    })
}
