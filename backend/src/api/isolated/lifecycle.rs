//! A vNF created (checked, its first process started and waited for) and deleted.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::info;

use super::errors::IsolatedError;
use super::files::files;
use super::peek::PEEK_TIMEOUT;
use super::process::{stop_child, Proc, State, FIRST_BACKOFF};
use super::supervisor::Supervisor;
use crate::api::client;
use crate::api::json::VnfInfo;
use crate::api::vnfs::{check_new, parse_uplinks, used_sockets, used_taps, RegistryError, Taken};
use crate::net::UplinkSpec;

/// How long a new vNF's process gets to serve it.
const START_TIMEOUT: Duration = Duration::from_secs(20);

impl Supervisor {
    /// Creates vNF `name` (uplinks as text) and waits until its process serves it.
    pub fn create(
        &self,
        name: &str,
        socket: &str,
        uplinks: &[String],
        max_flows: Option<u64>,
    ) -> Result<VnfInfo, IsolatedError> {
        let uplinks = parse_uplinks(uplinks)?;
        self.create_parsed(name, Path::new(socket), uplinks, max_flows)
    }

    /// [`create`](Self::create) with parsed uplinks. With the API it returns once the
    /// process serves the vNF (or fails as the one-process daemon would, leaving nothing
    /// behind); without, once the process is started.
    pub fn create_parsed(
        &self,
        name: &str,
        socket: &Path,
        uplinks: Vec<UplinkSpec>,
        max_flows: Option<u64>,
    ) -> Result<VnfInfo, IsolatedError> {
        {
            let mut inner = self.lock();
            let taken = Taken {
                names: inner.vnfs.keys().map(String::as_str).collect(),
                sockets: self
                    .cfg
                    .reserved
                    .iter()
                    .map(PathBuf::as_path)
                    .chain(
                        inner
                            .vnfs
                            .values()
                            .flat_map(|p| used_sockets(&p.socket, &p.uplinks)),
                    )
                    .collect(),
                taps: inner
                    .vnfs
                    .values()
                    .flat_map(|p| used_taps(&p.uplinks))
                    .collect(),
                reserved_dir: self.cfg.private.as_deref(),
            };
            let max_flows = check_new(
                name,
                socket,
                &uplinks,
                max_flows,
                self.cfg.default_max_flows,
                &taken,
            )?;
            let texts = used_sockets(socket, &uplinks)
                .map(|s| s.display().to_string())
                .chain(used_taps(&uplinks).map(str::to_string));
            for t in texts {
                if t.contains(',') {
                    return Err(IsolatedError::Comma(t));
                }
            }
            let mut mac = self.cfg.mac;
            mac[5] = mac[5].wrapping_add(inner.next_mac);
            let mut p = Proc {
                id: inner.next_id,
                socket: socket.to_path_buf(),
                uplinks,
                max_flows,
                mac,
                child: None,
                state: State::Starting,
                started: Instant::now(),
                backoff: FIRST_BACKOFF,
                restart_at: None,
                restarts: 0,
                policy: Arc::new(Mutex::new(())),
                spawn_failed: None,
            };
            if std::thread::current().id() == self.home {
                let c = self.spawn(name, &p, false).map_err(IsolatedError::Spawn)?;
                info!("vNF {name}: process {} started", c.id());
                p.child = Some(c);
            } else {
                // Started by the home thread (see `home`).
                p.restart_at = Some(Instant::now());
                let _ = self.wake.write(1);
            }
            if self.cfg.private.is_none() {
                p.state = State::Running;
            }
            inner.next_id += 1;
            inner.next_mac = inner.next_mac.wrapping_add(1);
            inner.vnfs.insert(name.to_string(), p);
        }
        match &self.cfg.private {
            Some(dir) => self.wait_started(name, dir),
            None => self.info(name),
        }
    }

    /// Waits until the process of new vNF `name` serves it; if it ends or does not get
    /// there in time, forgets the vNF and says why.
    fn wait_started(&self, name: &str, dir: &Path) -> Result<VnfInfo, IsolatedError> {
        let t = Instant::now();
        let failed = |mut p: Proc, why: Option<String>| {
            if let Some(c) = p.child.as_mut() {
                stop_child(c);
            }
            let f = files(dir, p.id);
            let (status, msg) = match why {
                Some(w) => (500, w),
                None => match std::fs::read_to_string(&f.error) {
                    Ok(s) => match s.split_once('\n') {
                        Some((st, msg)) => (st.parse().unwrap_or(500), msg.trim().to_string()),
                        None => (500, s),
                    },
                    Err(_) => (500, "its process ended at start-up (see the log)".into()),
                },
            };
            for f in [f.api, f.policy, f.error] {
                let _ = std::fs::remove_file(f);
            }
            IsolatedError::Start(status, msg)
        };
        loop {
            let (api, pid) = {
                let mut inner = self.lock();
                let Some(p) = inner.vnfs.get_mut(name) else {
                    // Taken by `stop_all`.
                    return Err(IsolatedError::Unavailable(
                        name.to_string(),
                        "the daemon is stopping".into(),
                    ));
                };
                let ended = p
                    .child
                    .as_mut()
                    .is_some_and(|c| !matches!(c.try_wait(), Ok(None)));
                let why = if let Some(e) = &p.spawn_failed {
                    Some(format!("starting its process: {e}"))
                } else if t.elapsed() > START_TIMEOUT {
                    Some(format!(
                        "its process did not serve it within {} s",
                        START_TIMEOUT.as_secs()
                    ))
                } else {
                    None
                };
                let here = (files(dir, p.id).api, p.child.as_ref().map(Child::id));
                if ended || why.is_some() {
                    if let Some(p) = inner.vnfs.remove(name) {
                        drop(inner);
                        return Err(failed(p, why));
                    }
                }
                here
            };
            if let Ok(r) = client::request(&api, "GET", &format!("/vnfs/{name}"), b"", PEEK_TIMEOUT)
            {
                if r.status == 200 {
                    let mut inner = self.lock();
                    if let Some(p) = inner.vnfs.get_mut(name) {
                        p.state = State::Running;
                        p.started = Instant::now();
                    }
                    drop(inner);
                    info!(
                        "vNF {name} created, served by process {}",
                        pid.map_or_else(|| "?".into(), |p| p.to_string())
                    );
                    return self.info(name);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops vNF `name`'s process (it is not restarted) and forgets the vNF.
    pub fn delete(&self, name: &str) -> Result<(), IsolatedError> {
        let mut p = {
            let mut inner = self.lock();
            if inner
                .vnfs
                .get(name)
                .is_some_and(|p| p.state == State::Starting)
            {
                return Err(IsolatedError::Busy(name.to_string()));
            }
            inner
                .vnfs
                .remove(name)
                .ok_or_else(|| RegistryError::NotFound(name.to_string()))?
        };
        if let Some(c) = p.child.as_mut() {
            stop_child(c);
        }
        // A policy request in flight finishes (its process is gone: 503) before the files go.
        let lock = p.policy.clone();
        let _g = lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(dir) = &self.cfg.private {
            let f = files(dir, p.id);
            for f in [f.api, f.policy, f.error] {
                let _ = std::fs::remove_file(f);
            }
        }
        info!("vNF {name} deleted (its process stopped)");
        Ok(())
    }
}
