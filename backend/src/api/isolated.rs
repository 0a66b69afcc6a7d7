//! `dpacc-backend net --isolate`: one process per vNF (this binary, serving that one vNF),
//! restarted when it dies, under a [`Supervisor`] that serves the management API
//! (ADR 0011, ADR 0018).
//!
//! With `--api-socket`, each vNF process serves the API of its own one-vNF daemon on a
//! private socket (`PRIVATE/ID.sock`, in a directory of mode 0700 next to the API socket,
//! removed with the supervisor); the supervisor keeps the registry (names, sockets, TAPs,
//! the limits of [`super::vnfs`]), forwards a vNF's policy and statistics requests to its
//! process, and gathers the processes' metrics into one exposition ([`super::merge`]).
//!
//! Policy is never lost: the supervisor records the policy each vNF process last accepted
//! (`PRIVATE/ID.policy.json`, written before the operator's `PUT` is answered) and starts
//! every process with it (`--start-policy`): the process reads it before it serves its API
//! and sets it on the flow processor before any worker runs, so a restarted vNF forwards no
//! frame without it. A per-vNF lock orders the two: a policy request holds it while it is
//! forwarded and recorded, a restart waits for it.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tracing::{error, info, warn};
use vmm_sys_util::eventfd::EventFd;

use super::client;
use super::json::{VnfInfo, VnfRequest};
use super::routes::{registry_error, Reply};
use super::vnfs::{check_new, parse_uplinks, used_sockets, used_taps, RegistryError, Taken};
use crate::net::UplinkSpec;

/// A process that ran at least this long is restarted at once; one that died sooner waits
/// twice as long as the last time (up to [`MAX_BACKOFF`]).
const STABLE: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long processes get to exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long a new vNF's process gets to serve it.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a forwarded request may take (a stuck process answers 503 after it).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a vNF process may take to answer a listing or a scrape.
const PEEK_TIMEOUT: Duration = Duration::from_secs(2);

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

/// Why a vNF could not be created, deleted or reached.
#[derive(Debug, thiserror::Error)]
pub enum IsolatedError {
    /// As in the one-process daemon.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The command line of a vNF process cannot carry it.
    #[error("'{0}': a socket path or TAP name with ',' cannot be served by an isolated vNF")]
    Comma(String),
    /// Being created.
    #[error("vNF '{0}' is being created; try again")]
    Busy(String),
    /// Its process is down and waits to be restarted, or does not answer.
    #[error("vNF '{0}': {1}")]
    Unavailable(String, String),
    /// Its process refused to start (status and message as the one-process daemon's).
    #[error("{1}")]
    Start(u16, String),
    /// The process could not be started at all.
    #[error("starting a vNF process: {0}")]
    Spawn(std::io::Error),
    /// The private directory.
    #[error("{0}: {1}")]
    Dir(PathBuf, std::io::Error),
}

impl IsolatedError {
    /// Its HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            Self::Registry(e) => super::routes::status_of(e),
            Self::Comma(_) => 400,
            Self::Busy(_) => 409,
            Self::Unavailable(..) => 503,
            Self::Start(s, _) => *s,
            Self::Spawn(_) | Self::Dir(..) => 500,
        }
    }

    fn reply(&self) -> Reply {
        match self {
            Self::Registry(e) => registry_error_ref(e),
            e => Reply::error(e.status(), e),
        }
    }
}

fn registry_error_ref(e: &RegistryError) -> Reply {
    Reply::error(super::routes::status_of(e), e)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Created, not yet serving (a `PUT` waits for it).
    Starting,
    /// Its process runs.
    Running,
    /// Its process ended; restarted at `restart_at`.
    Restarting,
}

struct Proc {
    id: u64,
    socket: PathBuf,
    uplinks: Vec<UplinkSpec>,
    max_flows: u64,
    mac: [u8; 6],
    child: Option<Child>,
    state: State,
    started: Instant,
    backoff: Duration,
    restart_at: Option<Instant>,
    restarts: u64,
    /// Held while a policy change is forwarded and recorded; a restart waits for it.
    policy: Arc<Mutex<()>>,
    /// Why its first process could not be started (a `PUT` waiting for it reports it).
    spawn_failed: Option<String>,
}

#[derive(Default)]
struct Inner {
    vnfs: BTreeMap<String, Proc>,
    next_mac: u8,
    next_id: u64,
}

/// The vNF processes of a `--isolate` daemon, by name.
pub struct Supervisor {
    cfg: SupervisorConfig,
    inner: Mutex<Inner>,
    /// The thread that made the supervisor and runs [`Supervisor::run`]: every process is
    /// started there, as `PR_SET_PDEATHSIG` fires when the *thread* that forked the child
    /// ends and API requests run on short-lived threads. A `PUT` leaves its vNF to it.
    home: std::thread::ThreadId,
    /// Wakes [`Supervisor::run`] to start a vNF a `PUT` created.
    wake: EventFd,
}

/// Longest unix socket path (`sun_path` less its NUL).
const SOCKET_PATH_MAX: usize = 107;
/// Longest private socket name with its separator: `/` + a u64 id + `.sock`.
const PRIVATE_NAME_MAX: usize = 1 + 20 + 5;

/// A vNF process's private files.
struct Files {
    api: PathBuf,
    policy: PathBuf,
    error: PathBuf,
}

fn files(dir: &Path, id: u64) -> Files {
    Files {
        api: dir.join(format!("{id}.sock")),
        policy: dir.join(format!("{id}.policy.json")),
        error: dir.join(format!("{id}.error")),
    }
}

/// The `--port` value of a vNF: `name=NAME,socket=PATH,uplink=...`.
fn port_arg(name: &str, socket: &Path, uplinks: &[UplinkSpec]) -> OsString {
    let mut s = OsString::from(format!("name={name},socket="));
    s.push(socket.as_os_str());
    for u in uplinks {
        s.push(",uplink=");
        match u {
            UplinkSpec::Tap(t) => s.push(format!("tap:{t}")),
            UplinkSpec::Vhost(p) => {
                s.push("vhost:");
                s.push(p.as_os_str());
            }
        }
    }
    s
}

/// The command line of the process serving vNF `name`: the shared options, its one vNF,
/// its quota and MAC; with a private directory its API socket and error file, and the policy
/// to start with if one is recorded.
fn vnf_args(
    base: &[OsString],
    name: &str,
    p: &Proc,
    private: Option<&Path>,
    with_policy: bool,
) -> Vec<OsString> {
    let mut a = base.to_vec();
    a.push("--port".into());
    a.push(port_arg(name, &p.socket, &p.uplinks));
    a.push("--max-flows".into());
    a.push(p.max_flows.to_string().into());
    a.push("--mac".into());
    a.push(p.mac.map(|b| format!("{b:02x}")).join(":").into());
    if let Some(dir) = private {
        let f = files(dir, p.id);
        a.push("--api-socket".into());
        a.push(f.api.into());
        a.push("--error-file".into());
        a.push(f.error.into());
        if with_policy {
            a.push("--start-policy".into());
            a.push(f.policy.into());
        }
    }
    a
}

/// Sends SIGTERM, waits up to [`STOP_GRACE`], then kills.
fn stop_child(c: &mut Child) {
    // SAFETY: signalling a child we started and have not reaped (its pid is still ours).
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    let t = Instant::now();
    while matches!(c.try_wait(), Ok(None)) && t.elapsed() < STOP_GRACE {
        std::thread::sleep(Duration::from_millis(20));
    }
    if matches!(c.try_wait(), Ok(None)) {
        warn!("process {} did not stop; killing it", c.id());
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Writes `data` to `path` (mode 0600) through a temporary file and a rename: a reader sees
/// the old contents or the new, never a part.
fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

impl Supervisor {
    /// A supervisor with no vNF (the private directory created if there is one).
    pub fn new(cfg: SupervisorConfig) -> Result<Self, IsolatedError> {
        if let Some(dir) = &cfg.private {
            let err = |e| IsolatedError::Dir(dir.clone(), e);
            // The longest private socket path (`DIR/ID.sock`, a u64 id) must fit a unix
            // socket address: refused here, not at the first vNF's start.
            if dir.as_os_str().len() + PRIVATE_NAME_MAX > SOCKET_PATH_MAX {
                return Err(err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "too long for the vNF processes' API sockets in it: the API socket's \
                         path may have at most {} bytes",
                        SOCKET_PATH_MAX - PRIVATE_NAME_MAX - 2
                    ),
                )));
            }
            match std::fs::symlink_metadata(dir) {
                Ok(m) if m.is_dir() => std::fs::remove_dir_all(dir).map_err(err)?,
                Ok(_) => {
                    return Err(err(std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "exists and is not a directory",
                    )))
                }
                Err(_) => {}
            }
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .map_err(err)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
        }
        Ok(Self {
            cfg,
            inner: Mutex::new(Inner::default()),
            home: std::thread::current().id(),
            wake: EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK)
                .map_err(IsolatedError::Spawn)?,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn spawn(&self, name: &str, p: &Proc, with_policy: bool) -> std::io::Result<Child> {
        let mut c = Command::new(&self.cfg.exe);
        c.args(vnf_args(
            &self.cfg.base_args,
            name,
            p,
            self.cfg.private.as_deref(),
            with_policy,
        ));
        // SAFETY: getpid cannot fail.
        let parent = unsafe { libc::getpid() };
        // SAFETY: prctl and getppid are async-signal-safe and touch nothing of the parent's;
        // the child then stops with its supervisor even if the supervisor is killed outright
        // (and does not start if it already was, between the fork and the prctl).
        unsafe {
            c.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                if libc::getppid() != parent {
                    return Err(std::io::Error::other("the supervisor is gone"));
                }
                Ok(())
            })
        };
        c.spawn()
    }

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

    /// Reaps ended processes and restarts those whose back-off is over.
    pub fn tick(&self) {
        let mut inner = self.lock();
        let now = Instant::now();
        let names: Vec<String> = inner.vnfs.keys().cloned().collect();
        for name in names {
            let Some(p) = inner.vnfs.get_mut(&name) else {
                continue;
            };
            if p.state == State::Starting {
                // A `PUT`'s vNF: its first process (the `PUT` watches it).
                if p.child.is_none() && p.spawn_failed.is_none() && p.restart_at.is_some() {
                    p.restart_at = None;
                    match self.spawn(&name, p, false) {
                        Ok(c) => {
                            info!("vNF {name}: process {} started", c.id());
                            p.child = Some(c);
                        }
                        Err(e) => p.spawn_failed = Some(e.to_string()),
                    }
                }
                continue;
            }
            if let Some(c) = p.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    let pid = c.id();
                    p.child = None;
                    p.backoff = if p.started.elapsed() >= STABLE {
                        FIRST_BACKOFF
                    } else {
                        (p.backoff * 2).min(MAX_BACKOFF)
                    };
                    error!(
                        "vNF {name}: process {pid} ended ({status}); restarting in {} ms \
                         (the other vNFs are not affected)",
                        p.backoff.as_millis()
                    );
                    p.state = State::Restarting;
                    p.restart_at = Some(now + p.backoff);
                }
            }
            if p.child.is_some() || p.restart_at.is_some_and(|t| now < t) {
                continue;
            }
            // A policy request in flight is answered (and recorded) first.
            let lock = p.policy.clone();
            let Ok(_g) = lock.try_lock() else {
                continue;
            };
            let with_policy = self
                .cfg
                .private
                .as_deref()
                .is_some_and(|d| files(d, p.id).policy.exists());
            match self.spawn(&name, p, with_policy) {
                Ok(c) => {
                    info!(
                        "vNF {name}: process {} started{}",
                        c.id(),
                        if with_policy {
                            " with its operator policy"
                        } else {
                            ""
                        }
                    );
                    p.child = Some(c);
                    p.started = Instant::now();
                    p.restart_at = None;
                    p.restarts += 1;
                    p.state = State::Running;
                }
                Err(e) => {
                    p.backoff = (p.backoff * 2).min(MAX_BACKOFF);
                    error!("vNF {name}: starting its process: {e}; trying again later");
                    p.restart_at = Some(now + p.backoff);
                }
            }
        }
    }

    /// Watches the processes until `shutdown` fires.
    pub fn run(&self, shutdown: &EventFd) {
        loop {
            self.tick();
            match wait_readable([shutdown, &self.wake], 100) {
                [true, _] => return,
                [false, true] => {
                    let _ = self.wake.read();
                }
                _ => {}
            }
        }
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
    fn snapshot(&self, name: &str) -> Result<(VnfInfo, Option<PathBuf>), IsolatedError> {
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
        let api = match (&self.cfg.private, p.state) {
            (Some(d), State::Running) if p.child.is_some() => Some(files(d, p.id).api),
            _ => None,
        };
        Ok((info, api))
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

    /// Forwards a request for vNF `name` to its process.
    fn forward(&self, name: &str, method: &str, path: &str, body: &[u8]) -> Reply {
        let api = match self.snapshot(name) {
            Ok((_, Some(api))) => api,
            Ok((info, None)) => {
                return Reply::error(
                    503,
                    format!(
                        "vNF '{name}' is {}: its process does not serve it now; try again",
                        info.state
                    ),
                )
            }
            Err(e) => return e.reply(),
        };
        match client::request(&api, method, path, body, FORWARD_TIMEOUT) {
            // Its process does not have the vNF (yet): it is starting.
            Ok(r) if r.status == 404 => Reply::error(
                503,
                format!("vNF '{name}': its process is starting; try again"),
            ),
            Ok(r) => Reply::forwarded(r.status, String::from_utf8_lossy(&r.body).into_owned()),
            Err(e) => Reply::error(
                503,
                format!("vNF '{name}': its process does not answer ({e}); try again"),
            ),
        }
    }

    /// A policy request: forwarded; a `PUT` the process accepted is recorded (what it
    /// answered, the policy as set) before it is acknowledged, a `DELETE` forgotten.
    fn policy(&self, name: &str, method: &str, body: &[u8]) -> Reply {
        let (lock, file) = {
            let inner = self.lock();
            let Some(p) = inner.vnfs.get(name) else {
                return registry_error(RegistryError::NotFound(name.to_string()));
            };
            (
                p.policy.clone(),
                self.cfg.private.as_deref().map(|d| files(d, p.id).policy),
            )
        };
        let Some(file) = file else {
            return Reply::error(503, "no API");
        };
        let _g = lock.lock().unwrap_or_else(|e| e.into_inner());
        let r = self.forward(name, method, &format!("/vnfs/{name}/policy"), body);
        let recorded = match (method, r.status) {
            ("PUT", 200) => write_atomic(&file, r.body.as_bytes()),
            ("DELETE", 204) => match std::fs::remove_file(&file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
            _ => Ok(()),
        };
        match recorded {
            Ok(()) => r,
            Err(e) => {
                error!(
                    "vNF {name}: recording its policy in {}: {e}",
                    file.display()
                );
                Reply::error(
                    500,
                    format!(
                        "the vNF's process took the change but it could not be recorded for \
                         its restarts ({e}); put the policy again"
                    ),
                )
            }
        }
    }

    /// `GET /metrics`: the supervisor's series, then every answering process's.
    pub fn metrics(&self) -> String {
        struct Row {
            name: String,
            pid: Option<u32>,
            restarts: u64,
            api: Option<PathBuf>,
        }
        let rows: Vec<Row> = {
            let inner = self.lock();
            inner
                .vnfs
                .iter()
                .map(|(n, p)| Row {
                    name: n.clone(),
                    pid: p.child.as_ref().map(Child::id),
                    restarts: p.restarts,
                    api: match (&self.cfg.private, p.state) {
                        (Some(d), State::Running) if p.child.is_some() => Some(files(d, p.id).api),
                        _ => None,
                    },
                })
                .collect()
        };
        let texts = peek_all(&rows, |r| {
            r.api.as_ref().and_then(|api| {
                client::request(api, "GET", "/metrics", b"", PEEK_TIMEOUT)
                    .ok()
                    .filter(|x| x.status == 200)
                    .and_then(|x| String::from_utf8(x.body).ok())
            })
        });
        let served: Vec<bool> = texts.iter().map(Option::is_some).collect();
        let parts: Vec<String> = texts.into_iter().flatten().collect();
        let mut reg = Registry::default();
        type L = Vec<(&'static str, String)>;
        let count = Family::<L, Gauge>::default();
        reg.register(
            "dpacc_vnfs",
            "vNF instances served by this daemon",
            count.clone(),
        );
        let up = Family::<L, Gauge>::default();
        reg.register(
            "dpacc_vnf_up",
            "1 while a vNF is served, 0 once it failed (with --isolate also 0 while its \
             process is down or does not answer)",
            up.clone(),
        );
        let pup = Family::<L, Gauge>::default();
        reg.register(
            "dpacc_vnf_process_up",
            "1 while the process of an isolated vNF runs, 0 while it waits to be restarted",
            pup.clone(),
        );
        let restarts = Family::<L, Counter>::default();
        reg.register(
            "dpacc_vnf_process_restarts",
            "Times the process of an isolated vNF was restarted after it ended",
            restarts.clone(),
        );
        count.get_or_create(&vec![]).set(rows.len() as i64);
        for (r, served) in rows.iter().zip(&served) {
            let l = vec![("vnf", r.name.clone())];
            if !served {
                up.get_or_create(&l).set(0);
            }
            pup.get_or_create(&l).set(i64::from(r.pid.is_some()));
            restarts.get_or_create(&l).inc_by(r.restarts);
        }
        let mut own = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_text::encode(&mut own, &reg);
        let mut all: Vec<&str> = vec![&own];
        all.extend(parts.iter().map(String::as_str));
        super::merge::merge(&all)
    }
}

/// Most vNF processes asked at once by a listing or a scrape.
const PEEKS_AT_ONCE: usize = 8;

/// `f` of every item, [`PEEKS_AT_ONCE`] at a time on threads of their own, in order: a
/// listing or a scrape waits for the slowest process of each group (at most its timeout),
/// not for the sum of all of them.
fn peek_all<I: Sync, T: Send>(items: &[I], f: impl Fn(&I) -> T + Sync) -> Vec<T> {
    let mut out = Vec::with_capacity(items.len());
    for group in items.chunks(PEEKS_AT_ONCE) {
        std::thread::scope(|s| {
            let f = &f;
            let handles: Vec<_> = group
                .iter()
                .map(|i| {
                    std::thread::Builder::new()
                        .name("api-peek".into())
                        .spawn_scoped(s, move || f(i))
                        .map_err(|_| i)
                })
                .collect();
            for h in handles {
                match h {
                    // A panic is a bug: the request's catch_unwind answers 500.
                    Ok(h) => match h.join() {
                        Ok(v) => out.push(v),
                        Err(p) => std::panic::resume_unwind(p),
                    },
                    // No thread to spare: ask it from here.
                    Err(i) => out.push(f(i)),
                }
            }
        });
    }
    out
}

/// Which of `fds` are readable after waiting at most `ms` for one.
fn wait_readable(fds: [&EventFd; 2], ms: i32) -> [bool; 2] {
    use std::os::fd::AsRawFd;
    let mut p = fds.map(|fd| libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    });
    // SAFETY: two live pollfds, the count passed.
    if unsafe { libc::poll(p.as_mut_ptr(), 2, ms) } <= 0 {
        return [false; 2];
    }
    p.map(|p| p.revents & libc::POLLIN != 0)
}

/// The routes of a `--isolate` daemon: the same resources, bodies and errors as the
/// one-process daemon's (spec/api.md).
pub fn routes(sup: &Supervisor, method: &str, segs: &[&str], body: &[u8]) -> Reply {
    match segs {
        ["vnfs"] => match method {
            "GET" => Reply::json(200, &sup.list()),
            _ => Reply::method_not_allowed(method, "GET"),
        },
        ["vnfs", name] => match method {
            "GET" => match sup.info(name) {
                Ok(i) => Reply::json(200, &i),
                Err(e) => e.reply(),
            },
            "PUT" => {
                let r: VnfRequest = match super::routes::parse(body) {
                    Ok(r) => r,
                    Err(reply) => return reply,
                };
                match sup.create(name, &r.socket, &r.uplinks, r.max_flows) {
                    Ok(i) => Reply::json(201, &i),
                    Err(e) => e.reply(),
                }
            }
            "DELETE" => match sup.delete(name) {
                Ok(()) => Reply::empty(204),
                Err(e) => e.reply(),
            },
            _ => Reply::method_not_allowed(method, "GET, PUT, DELETE"),
        },
        ["vnfs", name, "policy"] => {
            if let Err(e) = sup.snapshot(name) {
                return e.reply();
            }
            match method {
                "GET" => sup.forward(name, "GET", &format!("/vnfs/{name}/policy"), b""),
                "PUT" | "DELETE" => sup.policy(name, method, body),
                _ => Reply::method_not_allowed(method, "GET, PUT, DELETE"),
            }
        }
        ["vnfs", name, "stats"] => match method {
            "GET" => sup.forward(name, "GET", &format!("/vnfs/{name}/stats"), b""),
            _ => Reply::method_not_allowed(method, "GET"),
        },
        ["metrics"] => match method {
            "GET" => Reply {
                status: 200,
                content_type: crate::metrics::CONTENT_TYPE,
                body: sup.metrics(),
                allow: None,
            },
            _ => Reply::method_not_allowed(method, "GET"),
        },
        _ => Reply::error(404, "no such resource (see spec/api.md)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc_(id: u64, uplinks: Vec<UplinkSpec>) -> Proc {
        Proc {
            id,
            socket: "/run/dpacc/blue.sock".into(),
            uplinks,
            max_flows: 16,
            mac: [0x52, 0x54, 0, 0xdc, 0xac, 0x03],
            child: None,
            state: State::Running,
            started: Instant::now(),
            backoff: FIRST_BACKOFF,
            restart_at: None,
            restarts: 0,
            policy: Arc::default(),
            spawn_failed: None,
        }
    }

    #[test]
    fn a_vnf_process_gets_its_vnf_quota_mac_api_and_policy() {
        let base: Vec<OsString> = ["net", "--queue-pairs", "2"].map(OsString::from).to_vec();
        let p = proc_(
            7,
            vec![
                UplinkSpec::Tap("b0".into()),
                UplinkSpec::Vhost("/run/dpacc/b-up.sock".into()),
            ],
        );
        let a = vnf_args(&base, "blue", &p, None, false);
        assert_eq!(
            a,
            [
                "net",
                "--queue-pairs",
                "2",
                "--port",
                "name=blue,socket=/run/dpacc/blue.sock,uplink=tap:b0,uplink=vhost:/run/dpacc/b-up.sock",
                "--max-flows",
                "16",
                "--mac",
                "52:54:00:dc:ac:03"
            ]
            .map(OsString::from)
        );
        let dir = Path::new("/run/dpacc/api.sock.d");
        let a = vnf_args(&base, "blue", &p, Some(dir), true);
        assert_eq!(
            a[9..],
            [
                "--api-socket",
                "/run/dpacc/api.sock.d/7.sock",
                "--error-file",
                "/run/dpacc/api.sock.d/7.error",
                "--start-policy",
                "/run/dpacc/api.sock.d/7.policy.json"
            ]
            .map(OsString::from)
        );
        // No policy recorded: none given.
        assert_eq!(vnf_args(&base, "blue", &p, Some(dir), false).len(), 13);
    }

    #[test]
    fn an_api_socket_path_too_long_for_the_private_sockets_is_refused_at_start() {
        let cfg = |dir: PathBuf| SupervisorConfig {
            exe: "/nonexistent/dpacc-backend".into(),
            base_args: vec!["net".into()],
            default_max_flows: 64,
            mac: [2, 0, 0, 0, 0, 1],
            queue_pairs: 1,
            private: Some(dir),
            reserved: vec![],
        };
        let base = std::env::temp_dir().join(format!("dpacc-iso-long-{}", std::process::id()));
        let long = PathBuf::from(format!(
            "{}{}.d",
            base.display(),
            "x".repeat(SOCKET_PATH_MAX - PRIVATE_NAME_MAX - base.as_os_str().len() - 1)
        ));
        let e = Supervisor::new(cfg(long.clone())).err().expect("refused");
        assert!(e.to_string().contains("at most 79 bytes"), "{e}");
        assert!(!long.exists(), "nothing created");
        // One byte shorter: the longest private socket path fits.
        let fits = PathBuf::from(format!(
            "{}{}.d",
            base.display(),
            "x".repeat(SOCKET_PATH_MAX - PRIVATE_NAME_MAX - base.as_os_str().len() - 2)
        ));
        assert_eq!(fits.as_os_str().len() + PRIVATE_NAME_MAX, SOCKET_PATH_MAX);
        let sup = Supervisor::new(cfg(fits.clone())).expect("fits");
        drop(sup);
        let _ = std::fs::remove_dir_all(&fits);
    }

    #[test]
    fn requests_are_checked_before_any_process_starts() {
        let dir = std::env::temp_dir().join(format!("dpacc-iso-unit-{}.d", std::process::id()));
        let sup = Supervisor::new(SupervisorConfig {
            // Never started: every request below is refused first.
            exe: "/nonexistent/dpacc-backend".into(),
            base_args: vec!["net".into()],
            default_max_flows: 64,
            mac: [2, 0, 0, 0, 0, 1],
            queue_pairs: 1,
            private: Some(dir.clone()),
            reserved: vec!["/tmp/api.sock".into()],
        })
        .unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let call = |m: &str, p: &str, b: &str| {
            let segs: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
            routes(&sup, m, &segs, b.as_bytes())
        };
        let inside = format!(r#"{{"socket": "{}/x.sock"}}"#, dir.display());
        for (m, p, b, status) in [
            ("PUT", "/vnfs/a", "{", 400),
            ("PUT", "/vnfs/.a", r#"{"socket": "/tmp/a.sock"}"#, 400),
            ("PUT", "/vnfs/a", r#"{"socket": "rel.sock"}"#, 400),
            ("PUT", "/vnfs/a", r#"{"socket": "/tmp/a,b.sock"}"#, 400),
            ("PUT", "/vnfs/a", r#"{"socket": "/tmp/api.sock"}"#, 409),
            ("PUT", "/vnfs/a", &inside, 409),
            (
                "PUT",
                "/vnfs/a",
                r#"{"socket": "/tmp/a.sock", "max_flows": 0}"#,
                422,
            ),
            (
                "PUT",
                "/vnfs/a",
                r#"{"socket": "/tmp/a.sock", "uplinks": ["tap:x", "tap:x"]}"#,
                409,
            ),
            ("GET", "/vnfs/a", "", 404),
            ("DELETE", "/vnfs/a", "", 404),
            ("GET", "/vnfs/a/policy", "", 404),
            ("PUT", "/vnfs/a/policy", "{}", 404),
            ("GET", "/vnfs/a/stats", "", 404),
            ("POST", "/vnfs", "", 405),
            ("HEAD", "/vnfs/a/stats", "", 405),
            ("GET", "/nothing", "", 404),
        ] {
            let r = call(m, p, b);
            assert_eq!(r.status, status, "{m} {p} {b}: {}", r.body);
            assert_eq!(r.allow.is_some(), status == 405);
        }
        // A binary that cannot start: 500, nothing left behind.
        let r = call("PUT", "/vnfs/a", r#"{"socket": "/tmp/a.sock"}"#);
        assert_eq!(r.status, 500, "{}", r.body);
        assert_eq!(call("GET", "/vnfs", "").body.trim(), "[]");
        let m = call("GET", "/metrics", "");
        assert!(m.body.contains("dpacc_vnfs 0"), "{}", m.body);
        sup.stop_all();
        assert!(!dir.exists());
    }
}
