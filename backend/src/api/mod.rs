//! The management API: HTTP/1.1 with JSON bodies on a host-only unix socket
//! (`--api-socket PATH`, mode 0600), served by the `tiny_http` crate on threads of its own
//! (an `api` thread taking requests, each handled on a short-lived thread, at most 8 at once;
//! no data-path worker ever waits for them). Resources and errors: spec/api.md and
//! spec/openapi.yaml; routing in [`routes`], bodies in [`json`], the vNFs in [`vnfs`].

pub mod client;
pub mod isolated;
pub mod json;
pub mod merge;
pub mod routes;
pub mod vnfs;

use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tracing::{debug, info, warn};

pub use routes::{handle, Reply, Target};

/// Largest request body (bigger ones get 413).
pub const MAX_BODY: usize = 1 << 20;

/// Why the API socket could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Another process listens on the path.
    #[error("API socket {0}: a live socket is there (another daemon?); refusing to replace it")]
    Live(PathBuf),
    /// The path holds something else than a socket.
    #[error("API socket {0}: the path exists and is not a socket")]
    NotSocket(PathBuf),
    /// Binding failed.
    #[error("API socket {path}: {msg}")]
    Bind {
        /// The path.
        path: PathBuf,
        /// Why.
        msg: String,
    },
    /// The thread could not start.
    #[error("starting the API thread: {0}")]
    Thread(std::io::Error),
}

/// The API server: its socket and thread; stopped (and the socket removed) on drop.
pub struct ApiServer {
    server: Arc<tiny_http::Server>,
    stop: Arc<AtomicBool>,
    /// Requests being handled.
    active: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
    path: PathBuf,
}

fn bind(path: &Path) -> Result<tiny_http::Server, ApiError> {
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if !m.file_type().is_socket() {
            return Err(ApiError::NotSocket(path.to_path_buf()));
        }
        if vnfs::live_socket(path) {
            return Err(ApiError::Live(path.to_path_buf()));
        }
        let _ = std::fs::remove_file(path);
    }
    // Bound and listening under a temporary name, then renamed into place: a client that
    // connects as soon as the path exists is never refused (as for vhost-user sockets).
    crate::vhost_user::bind_listening(path, |at| {
        // Created 0600: only the owner (root, or the service user) may connect. umask covers
        // the moment between bind and chmod.
        // SAFETY: umask only changes this process's file-creation mask; it cannot fail.
        let old = unsafe { libc::umask(0o177) };
        let r = tiny_http::Server::http_unix(at);
        // SAFETY: as above, restoring the previous mask.
        unsafe { libc::umask(old) };
        let server = r.map_err(io::Error::other)?;
        std::fs::set_permissions(at, std::fs::Permissions::from_mode(0o600))?;
        Ok(server)
    })
    .map_err(|e| ApiError::Bind {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })
}

fn read_body(req: &mut tiny_http::Request) -> Result<Vec<u8>, Reply> {
    let too_big = || Reply::error(413, format!("request body over {MAX_BODY} bytes"));
    if req.body_length().is_some_and(|n| n > MAX_BODY) {
        return Err(too_big());
    }
    let mut body = Vec::new();
    match req
        .as_reader()
        .take(MAX_BODY as u64 + 1)
        .read_to_end(&mut body)
    {
        Ok(_) if body.len() > MAX_BODY => Err(too_big()),
        Ok(_) => Ok(body),
        Err(e) => Err(Reply::error(400, format!("reading the body: {e}"))),
    }
}

fn respond(req: tiny_http::Request, r: Reply) {
    let mut resp = tiny_http::Response::from_string(r.body).with_status_code(r.status);
    let headers = [("Content-Type", r.content_type)]
        .into_iter()
        .chain(r.allow.map(|a| ("Allow", a)));
    for (k, v) in headers {
        if let Ok(h) = tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()) {
            resp.add_header(h);
        }
    }
    if let Err(e) = req.respond(resp) {
        debug!("API: responding: {e}");
    }
}

/// Most requests handled at once (more get 503).
const MAX_ACTIVE: usize = 8;

fn serve_one(target: &Target, mut req: tiny_http::Request) {
    let reply = match read_body(&mut req) {
        // A bug must not take the API down: a panic becomes a 500.
        Ok(body) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            handle(target, req.method().as_str(), req.url(), &body)
        }))
        .unwrap_or_else(|_| Reply::error(500, "internal error (see the log)")),
        Err(r) => r,
    };
    debug!("API: {} {} -> {}", req.method(), req.url(), reply.status);
    if reply.status >= 400 {
        info!("API: {} {} -> {}", req.method(), req.url(), reply.status);
    }
    respond(req, reply);
}

impl ApiServer {
    /// Serves `target` on a new unix socket at `path` (a stale socket file is replaced; a
    /// live one, or another kind of file, is refused).
    pub fn start(path: &Path, target: Target) -> Result<Self, ApiError> {
        let server = Arc::new(bind(path)?);
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, stop2) = (server.clone(), stop.clone());
        let active = Arc::new(AtomicUsize::new(0));
        let active2 = active.clone();
        let target = Arc::new(target);
        let thread = std::thread::Builder::new()
            .name("api".into())
            .spawn(move || {
                let active = active2;
                while !stop2.load(Ordering::Acquire) {
                    let req = match s2.recv_timeout(Duration::from_millis(500)) {
                        Ok(Some(r)) => r,
                        Ok(None) => continue,
                        Err(e) => {
                            warn!("API: {e}");
                            continue;
                        }
                    };
                    // Each request on a thread of its own (a client that stalls in its body
                    // holds only that one), at most MAX_ACTIVE at once.
                    if active.fetch_add(1, Ordering::AcqRel) >= MAX_ACTIVE {
                        active.fetch_sub(1, Ordering::AcqRel);
                        respond(req, Reply::error(503, "too many requests in progress"));
                        continue;
                    }
                    let (target, done) = (target.clone(), active.clone());
                    let spawned = std::thread::Builder::new()
                        .name("api-request".into())
                        .spawn(move || {
                            serve_one(&target, req);
                            done.fetch_sub(1, Ordering::AcqRel);
                        });
                    if let Err(e) = spawned {
                        active.fetch_sub(1, Ordering::AcqRel);
                        warn!("API: starting a request thread: {e}");
                    }
                }
            })
            .map_err(ApiError::Thread)?;
        info!("management API on {}", path.display());
        Ok(Self {
            server,
            stop,
            active,
            thread: Some(thread),
            path: path.to_path_buf(),
        })
    }

    /// Stops serving and removes the socket.
    pub fn stop(mut self) {
        self.shut();
    }

    fn shut(&mut self) {
        if let Some(t) = self.thread.take() {
            self.stop.store(true, Ordering::Release);
            self.server.unblock();
            let _ = t.join();
            // Let requests in progress finish (a vNF being created is then in the registry
            // and stopped with the others).
            let t = std::time::Instant::now();
            while self.active.load(Ordering::Acquire) > 0 && t.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.shut();
    }
}
