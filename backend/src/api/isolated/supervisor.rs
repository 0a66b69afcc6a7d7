//! The [`Supervisor`]: its configuration, its vNFs by name, what it knows of each, and its
//! end (every process stopped).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Child;
use std::sync::{Mutex, MutexGuard};

use tracing::info;
use vmm_sys_util::eventfd::EventFd;

use super::errors::IsolatedError;
use super::files::create_private_dir;
use super::peek::{peek_all, PEEK_TIMEOUT};
use super::process::{stop_child, Proc, State};
use crate::api::client;
use crate::api::json::VnfInfo;
use crate::api::vnfs::RegistryError;

/// What the supervisor starts its vNF processes with.
pub struct SupervisorConfig {
    /// This binary.
    pub exe: PathBuf,
    /// `net` and the options every vNF process shares (the command line without the vNFs,
    /// the MAC, the flow quota, the API socket and `--isolate`).
    pub base_args: Vec<OsString>,
    /// `--max-flows`: a vNF's flow quota when its request gives none.
    pub default_max_flows: u64,
    /// `--mac`: the last byte goes up by one per vNF created.
    pub mac: [u8; 6],
    /// `--queue-pairs` (for the listing).
    pub queue_pairs: u16,
    /// With the API: the directory of the processes' API sockets and policies (created
    /// 0700; a stale one is replaced).
    pub private: Option<PathBuf>,
    /// Paths no vNF may bind (the API socket).
    pub reserved: Vec<PathBuf>,
}

#[derive(Default)]
pub(super) struct Inner {
    pub(super) vnfs: BTreeMap<String, Proc>,
    pub(super) next_mac: u8,
    pub(super) next_id: u64,
}

/// The vNF processes of a `--isolate` daemon, by name.
pub struct Supervisor {
    pub(super) cfg: SupervisorConfig,
    inner: Mutex<Inner>,
    /// The thread that made the supervisor and runs [`Supervisor::run`]: every process is
    /// started there, as `PR_SET_PDEATHSIG` fires when the *thread* that forked the child
    /// ends and API requests run on short-lived threads. A `PUT` leaves its vNF to it.
    pub(super) home: std::thread::ThreadId,
    /// Wakes [`Supervisor::run`] to start a vNF a `PUT` created.
    pub(super) wake: EventFd,
}

impl Supervisor {
    /// A supervisor with no vNF (the private directory created if there is one).
    pub fn new(cfg: SupervisorConfig) -> Result<Self, IsolatedError> {
        if let Some(dir) = &cfg.private {
            create_private_dir(dir)?;
        }
        Ok(Self {
            cfg,
            inner: Mutex::new(Inner::default()),
            home: std::thread::current().id(),
            wake: EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK)
                .map_err(IsolatedError::Spawn)?,
        })
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops every process and removes the private directory.
    pub fn stop_all(&self) {
        let all = std::mem::take(&mut self.lock().vnfs);
        info!("stopping {} vNF port process(es)", all.len());
        let mut children: Vec<Child> = all.into_values().filter_map(|p| p.child).collect();
        for c in &children {
            // SAFETY: signalling children we started and have not reaped.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
        for c in &mut children {
            stop_child(c);
        }
        if let Some(d) = &self.cfg.private {
            let _ = std::fs::remove_dir_all(d);
        }
    }

    /// What the supervisor knows of vNF `name`, and the private API socket of its process
    /// if that runs (and serves it).
    pub(super) fn snapshot(&self, name: &str) -> Result<(VnfInfo, Option<PathBuf>), IsolatedError> {
        let inner = self.lock();
        let p = inner
            .vnfs
            .get(name)
            .ok_or_else(|| RegistryError::NotFound(name.to_string()))?;
        let info = VnfInfo {
            name: name.to_string(),
            socket: p.socket.display().to_string(),
            uplinks: p.uplinks.iter().map(ToString::to_string).collect(),
            max_flows: p.max_flows,
            queue_pairs: self.cfg.queue_pairs,
            flows: 0,
            state: match p.state {
                State::Starting => "starting",
                State::Running => "running",
                State::Restarting => "restarting",
            }
            .into(),
            error: None,
            pid: p.child.as_ref().map(Child::id),
            restarts: Some(p.restarts),
        };
        Ok((info, p.serving_api(self.cfg.private.as_deref())))
    }

    /// vNF `name` as `GET /vnfs/{name}` describes it: the supervisor's record, the flow count
    /// and state its process reports (`starting` while it does not answer).
    pub fn info(&self, name: &str) -> Result<VnfInfo, IsolatedError> {
        let (mut info, api) = self.snapshot(name)?;
        if let Some(api) = api {
            let r = client::request(&api, "GET", &format!("/vnfs/{name}"), b"", PEEK_TIMEOUT);
            match r
                .ok()
                .filter(|r| r.status == 200)
                .and_then(|r| serde_json::from_slice::<VnfInfo>(&r.body).ok())
            {
                Some(child) => {
                    info.flows = child.flows;
                    info.state = child.state;
                    info.error = child.error;
                }
                None => info.state = "starting".into(),
            }
        }
        Ok(info)
    }

    /// Every vNF, by name.
    pub fn list(&self) -> Vec<VnfInfo> {
        let names: Vec<String> = self.lock().vnfs.keys().cloned().collect();
        peek_all(&names, |n| self.info(n).ok())
            .into_iter()
            .flatten()
            .collect()
    }
}
