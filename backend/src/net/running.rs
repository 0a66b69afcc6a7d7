//! [`RunningVnf`]: one vNF instance served on threads of its own, started and stopped while
//! the daemon runs (the management API's create and delete; the command line's vNFs too),
//! without touching the others.

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use tracing::{error, info};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use dpacc_spec::fastpath::policy::Policy;

use super::{serve_with_policy, NetBackendConfig, NetServeError, VnfView};

/// A vNF instance being served: its socket, its view, how to stop it.
pub struct RunningVnf {
    socket: PathBuf,
    view: VnfView,
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
    failed: Arc<Mutex<Option<String>>>,
}

impl RunningVnf {
    /// Binds `socket` (a stale socket file is replaced), opens the uplinks, creates the
    /// instance and its workers, and serves it on a thread of its own. Fails (leaving
    /// nothing behind) if any of that fails.
    pub fn start(name: &str, socket: &Path, cfg: NetBackendConfig) -> Result<Self, NetServeError> {
        Self::start_with_policy(name, socket, cfg, None)
    }

    /// [`start`](Self::start) with the operator `policy` in force before any frame flows.
    pub fn start_with_policy(
        name: &str,
        socket: &Path,
        cfg: NetBackendConfig,
        policy: Option<Policy>,
    ) -> Result<Self, NetServeError> {
        let listener = crate::vhost_user::bind(socket)?;
        let stop = EventFd::new(EFD_NONBLOCK).map_err(NetServeError::EventFd)?;
        let stop2 = stop.try_clone().map_err(NetServeError::EventFd)?;
        let (tx, rx) = mpsc::channel::<Result<VnfView, NetServeError>>();
        let failed = Arc::new(Mutex::new(None));
        let failed2 = failed.clone();
        let vnf_name = name.to_string();
        let thread = std::thread::Builder::new()
            .name(format!("vnf-{name}"))
            .spawn(move || {
                let started = tx.clone();
                let r = serve_with_policy(&listener, cfg, policy, &stop2, move |v| {
                    let _ = started.send(Ok(v));
                });
                if let Err(e) = r {
                    error!("vNF {vnf_name}: {e}");
                    *failed2.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                    // Only heard if the vNF had not started yet.
                    let _ = tx.send(Err(e));
                }
            })
            .map_err(NetServeError::Worker)?;
        match rx.recv() {
            Ok(Ok(view)) => Ok(Self {
                socket: socket.to_path_buf(),
                view,
                stop,
                thread: Some(thread),
                failed,
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                let _ = std::fs::remove_file(socket);
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                let _ = std::fs::remove_file(socket);
                Err(crate::vhost_user::ThreadPanicked.into())
            }
        }
    }

    /// The operator's view of the instance.
    pub fn view(&self) -> &VnfView {
        &self.view
    }

    /// Why the vNF stopped serving, if it failed after it started.
    pub fn failure(&self) -> Option<String> {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Stops it: the frontends' connections are closed, the workers stopped, the instance
    /// (flows, SAs) freed once the last view goes, the socket files removed.
    pub fn stop(mut self) {
        self.shut();
    }

    fn shut(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = self.stop.write(1);
            let _ = t.join();
            let _ = std::fs::remove_file(&self.socket);
            info!("vNF on {} stopped", self.socket.display());
        }
    }
}

impl Drop for RunningVnf {
    fn drop(&mut self) {
        self.shut();
    }
}
