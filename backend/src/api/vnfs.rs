//! [`VnfRegistry`]: the vNF instances of a `dpacc-backend net` daemon by name, created and
//! deleted while it runs (from the command line at start-up, then through the API).

use std::collections::BTreeMap;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use dpacc_spec::fastpath::policy::Policy;
use dpacc_spec::fastpath::{FastPathDriver, Quotas};
use tracing::info;

use crate::net::running::RunningVnf;
use crate::net::{NetBackendConfig, NetServeError, UplinkError, UplinkSpec, VnfView};

use super::json::VnfInfo;

/// Most vNFs one daemon serves.
pub const MAX_VNFS: usize = 64;
/// Largest flow quota of a vNF (as `--max-flows`).
pub const MAX_FLOWS: u64 = 1 << 24;
/// Most uplinks of a vNF created through the API (each is a socket or TAP and threads).
pub const MAX_UPLINKS: usize = 32;

/// What every vNF of the daemon shares (the command line's options).
pub struct VnfTemplate {
    /// Quotas of every vNF (the flow quota is the default of `max_flows`).
    pub quotas: Quotas,
    /// How long a vNF's flows keep forwarding after it disconnects.
    pub keep_detached: Duration,
    /// Largest ring size.
    pub queue_size: u16,
    /// Base MAC: the last byte goes up by one per vNF created.
    pub mac: [u8; 6],
    /// Creates the flow processors.
    pub fastpath: Arc<dyn FastPathDriver>,
    /// Workers' busy-poll time.
    pub busy_poll: Duration,
    /// Queue pairs (and workers) per vNF.
    pub queue_pairs: u16,
}

/// Why a vNF could not be created, found or deleted.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A name outside `[A-Za-z0-9_.-]{1,64}` (or starting with a dot).
    #[error("bad vNF name '{0}': 1 to 64 characters of A-Z a-z 0-9 _ . - (not starting with .)")]
    BadName(String),
    /// No vNF of that name.
    #[error("no vNF named '{0}'")]
    NotFound(String),
    /// A vNF of that name exists.
    #[error("a vNF named '{0}' exists")]
    Exists(String),
    /// A socket or TAP another vNF (or another process, or the API) uses.
    #[error("{0} is in use")]
    InUse(String),
    /// A socket path that is not absolute.
    #[error("socket paths must be absolute: '{0}'")]
    Relative(String),
    /// An uplink's text.
    #[error(transparent)]
    Uplink(#[from] UplinkError),
    /// A flow quota out of range.
    #[error("max_flows {0} is out of range (1..={MAX_FLOWS})")]
    MaxFlows(u64),
    /// Too many vNFs.
    #[error("the daemon serves at most {MAX_VNFS} vNFs")]
    TooMany,
    /// Too many uplinks for one vNF.
    #[error("{0} uplinks: a vNF has at most {MAX_UPLINKS}")]
    TooManyUplinks(usize),
    /// Serving it failed (a socket that cannot be bound, a TAP that cannot be opened...).
    #[error("starting the vNF: {0}")]
    Start(#[from] NetServeError),
}

struct Entry {
    socket: PathBuf,
    uplinks: Vec<UplinkSpec>,
    max_flows: usize,
    running: RunningVnf,
}

impl Entry {
    fn used_sockets(&self) -> impl Iterator<Item = &Path> {
        used_sockets(&self.socket, &self.uplinks)
    }

    fn used_taps(&self) -> impl Iterator<Item = &str> {
        used_taps(&self.uplinks)
    }
}

/// The socket paths a vNF binds: its own and its `vhost:` uplinks'.
pub(crate) fn used_sockets<'a>(
    socket: &'a Path,
    uplinks: &'a [UplinkSpec],
) -> impl Iterator<Item = &'a Path> {
    std::iter::once(socket).chain(uplinks.iter().filter_map(|u| match u {
        UplinkSpec::Vhost(p) => Some(p.as_path()),
        UplinkSpec::Tap(_) => None,
    }))
}

/// The TAPs a vNF opens.
pub(crate) fn used_taps(uplinks: &[UplinkSpec]) -> impl Iterator<Item = &str> {
    uplinks.iter().filter_map(|u| match u {
        UplinkSpec::Tap(t) => Some(t.as_str()),
        UplinkSpec::Vhost(_) => None,
    })
}

/// What the vNFs of a daemon already use: a new one must not take any of it.
pub(crate) struct Taken<'a> {
    /// Names of the vNFs (being created included).
    pub names: Vec<&'a str>,
    /// Socket paths bound (or reserved: the API's own).
    pub sockets: Vec<&'a Path>,
    /// TAPs opened.
    pub taps: Vec<&'a str>,
    /// A directory no vNF socket may be in (`--isolate`'s private directory).
    pub reserved_dir: Option<&'a Path>,
}

/// The uplinks of a request, parsed (at most [`MAX_UPLINKS`]).
pub(crate) fn parse_uplinks(uplinks: &[String]) -> Result<Vec<UplinkSpec>, RegistryError> {
    if uplinks.len() > MAX_UPLINKS {
        return Err(RegistryError::TooManyUplinks(uplinks.len()));
    }
    Ok(uplinks
        .iter()
        .map(|u| u.parse::<UplinkSpec>())
        .collect::<Result<Vec<_>, _>>()?)
}

/// Checks a new vNF against the limits and against what the others use: its name, its flow
/// quota (returned, `default_flows` if not given), the vNF count, its sockets (absolute,
/// unused, not live) and TAPs (unused).
pub(crate) fn check_new(
    name: &str,
    socket: &Path,
    uplinks: &[UplinkSpec],
    max_flows: Option<u64>,
    default_flows: u64,
    taken: &Taken<'_>,
) -> Result<u64, RegistryError> {
    if !valid_name(name) {
        return Err(RegistryError::BadName(name.to_string()));
    }
    if uplinks.len() > MAX_UPLINKS {
        return Err(RegistryError::TooManyUplinks(uplinks.len()));
    }
    let max_flows = max_flows.unwrap_or(default_flows);
    if !(1..=MAX_FLOWS).contains(&max_flows) {
        return Err(RegistryError::MaxFlows(max_flows));
    }
    if taken.names.contains(&name) {
        return Err(RegistryError::Exists(name.to_string()));
    }
    if taken.names.len() >= MAX_VNFS {
        return Err(RegistryError::TooMany);
    }
    let socks: Vec<&Path> = used_sockets(socket, uplinks).collect();
    let taps: Vec<&str> = used_taps(uplinks).collect();
    for (i, s) in socks.iter().enumerate() {
        if !s.is_absolute() {
            return Err(RegistryError::Relative(s.display().to_string()));
        }
        let in_reserved_dir = taken.reserved_dir.is_some_and(|d| s.starts_with(d));
        if taken.sockets.contains(s) || socks[..i].contains(s) || in_reserved_dir || live_socket(s)
        {
            return Err(RegistryError::InUse(format!("socket {}", s.display())));
        }
    }
    for (i, t) in taps.iter().enumerate() {
        if taken.taps.contains(t) || taps[..i].contains(t) {
            return Err(RegistryError::InUse(format!("TAP {t}")));
        }
    }
    Ok(max_flows)
}

#[derive(Default)]
struct Inner {
    vnfs: BTreeMap<String, Entry>,
    /// Index of the next vNF (its MAC's last byte offset).
    next: u8,
    /// Paths nobody may take (the API's own socket).
    reserved: Vec<PathBuf>,
}

/// The daemon's vNFs by name.
pub struct VnfRegistry {
    template: VnfTemplate,
    inner: Mutex<Inner>,
}

/// One vNF as the operator's readers see it (taken under the lock, read outside it).
#[derive(Clone)]
pub struct VnfEntry {
    /// Its description.
    pub info: VnfInfo,
    /// Its counters and policy.
    pub view: VnfView,
}

pub(crate) fn valid_name(n: &str) -> bool {
    (1..=64).contains(&n.len())
        && !n.starts_with('.')
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// Whether something listens on the unix socket at `p` (a stale socket file does not).
pub fn live_socket(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket())
        && std::os::unix::net::UnixStream::connect(p).is_ok()
}

impl VnfRegistry {
    /// An empty registry.
    pub fn new(template: VnfTemplate) -> Self {
        Self {
            template,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `p` (e.g. the API socket) from being used as a vNF's socket.
    pub fn reserve(&self, p: &Path) {
        self.lock().reserved.push(p.to_path_buf());
    }

    /// Creates and starts vNF `name` (uplinks as text, `tap:NAME` or `vhost:SOCKET`).
    pub fn create(
        &self,
        name: &str,
        socket: &str,
        uplinks: &[String],
        max_flows: Option<u64>,
    ) -> Result<(), RegistryError> {
        let uplinks = parse_uplinks(uplinks)?;
        self.create_parsed(name, Path::new(socket), uplinks, max_flows, None)
    }

    /// [`create`](Self::create) with parsed uplinks, and an operator `policy` in force from
    /// its first frame.
    pub fn create_parsed(
        &self,
        name: &str,
        socket: &Path,
        uplinks: Vec<UplinkSpec>,
        max_flows: Option<u64>,
        policy: Option<Policy>,
    ) -> Result<(), RegistryError> {
        let mut inner = self.lock();
        let taken = Taken {
            names: inner.vnfs.keys().map(String::as_str).collect(),
            sockets: inner
                .reserved
                .iter()
                .map(PathBuf::as_path)
                .chain(inner.vnfs.values().flat_map(|e| e.used_sockets()))
                .collect(),
            taps: inner.vnfs.values().flat_map(|e| e.used_taps()).collect(),
            reserved_dir: None,
        };
        let max_flows = check_new(
            name,
            socket,
            &uplinks,
            max_flows,
            self.template.quotas.flows as u64,
            &taken,
        )?;
        let mut mac = self.template.mac;
        mac[5] = mac[5].wrapping_add(inner.next);
        let cfg = NetBackendConfig {
            uplinks: uplinks.clone(),
            quotas: Quotas {
                flows: max_flows as usize,
                ..self.template.quotas
            },
            keep_detached: self.template.keep_detached,
            queue_size: self.template.queue_size,
            mac,
            fastpath: self.template.fastpath.clone(),
            busy_poll: self.template.busy_poll,
            queue_pairs: self.template.queue_pairs,
        };
        let running = RunningVnf::start_with_policy(name, socket, cfg, policy)?;
        inner.next = inner.next.wrapping_add(1);
        info!("vNF {name} created on {}", socket.display());
        inner.vnfs.insert(
            name.to_string(),
            Entry {
                socket: socket.to_path_buf(),
                uplinks,
                max_flows: max_flows as usize,
                running,
            },
        );
        Ok(())
    }

    /// Stops and forgets vNF `name`.
    pub fn delete(&self, name: &str) -> Result<(), RegistryError> {
        let e = self
            .lock()
            .vnfs
            .remove(name)
            .ok_or_else(|| RegistryError::NotFound(name.to_string()))?;
        // Outside the lock: the others stay readable while its threads stop.
        e.running.stop();
        info!("vNF {name} deleted");
        Ok(())
    }

    /// Stops every vNF (shutdown).
    pub fn stop_all(&self) {
        let all = std::mem::take(&mut self.lock().vnfs);
        for (_, e) in all {
            e.running.stop();
        }
    }

    fn info(&self, name: &str, e: &Entry) -> VnfInfo {
        let failure = e.running.failure();
        VnfInfo {
            name: name.to_string(),
            socket: e.socket.display().to_string(),
            uplinks: e.uplinks.iter().map(ToString::to_string).collect(),
            max_flows: e.max_flows as u64,
            queue_pairs: self.template.queue_pairs,
            flows: 0,
            state: if failure.is_some() {
                "failed"
            } else {
                "running"
            }
            .into(),
            error: failure,
            pid: None,
            restarts: None,
        }
    }

    /// Every vNF (by name).
    pub fn list(&self) -> Vec<VnfEntry> {
        let inner = self.lock();
        inner
            .vnfs
            .iter()
            .map(|(n, e)| VnfEntry {
                info: self.info(n, e),
                view: e.running.view().clone(),
            })
            .collect()
    }

    /// vNF `name`.
    pub fn get(&self, name: &str) -> Result<VnfEntry, RegistryError> {
        let inner = self.lock();
        let e = inner
            .vnfs
            .get(name)
            .ok_or_else(|| RegistryError::NotFound(name.to_string()))?;
        Ok(VnfEntry {
            info: self.info(name, e),
            view: e.running.view().clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for ok in ["blue", "a", "fw-1.eu_west", &"x".repeat(64)] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", ".hidden", "a/b", "a b", "é", &"x".repeat(65), "a%2fb"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
