//! A small vhost-user protocol server (backend side), device-agnostic.
//!
//! Built on the public pieces of rust-vmm (`vhost`'s message types, `vm-memory`,
//! `virtio-queue`, `vmm-sys-util`) because `vhost`'s own backend dispatcher cannot carry
//! CREATE/CLOSE_CRYPTO_SESSION; see `docs/decisions/0001-vhost-user-server.md`.

pub(crate) mod channel;
mod device;
pub(crate) mod fault;
pub(crate) mod memory;
pub(crate) mod server;
pub(crate) mod tables;

pub(crate) use device::{DeviceError, DeviceReply, GuestMem, QueueStart, VhostUserDevice};
pub(crate) use server::serve;
pub use server::ServeError;

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use vmm_sys_util::eventfd::EventFd;

/// Why a vhost-user socket could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("binding {}: {source}", path.display())]
pub struct BindError {
    /// The socket path.
    pub path: PathBuf,
    /// What `bind` said.
    pub source: io::Error,
}

/// Binds a vhost-user socket at `path`, replacing a stale socket file (never another kind of
/// file).
pub fn bind(path: &Path) -> Result<UnixListener, BindError> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            let _ = std::fs::remove_file(path);
        }
    }
    let l = UnixListener::bind(path).map_err(|source| BindError {
        path: path.to_path_buf(),
        source,
    })?;
    tracing::info!("listening on {}", path.display());
    Ok(l)
}

/// A server loop (or any job) run by [`run_together`], failing with `E`.
pub type Job<'a, E> = Box<dyn FnOnce() -> Result<(), E> + Send + 'a>;

/// A job of [`run_together`] panicked.
#[derive(Debug, thiserror::Error)]
#[error("a server thread panicked")]
pub struct ThreadPanicked;

/// Runs `jobs` on threads of their own until all return. The first to fail fires `shutdown`,
/// which stops the others (server loops watch it); returns the first error.
pub fn run_together<E: Send + From<ThreadPanicked>>(
    jobs: Vec<Job<'_, E>>,
    shutdown: &EventFd,
) -> Result<(), E> {
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
            let r = h.join().unwrap_or_else(|_| Err(ThreadPanicked.into()));
            if first.is_ok() {
                first = r;
            }
        }
        first
    })
}
