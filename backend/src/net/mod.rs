//! The inline fast path's device: per vNF, a virtio-net device (vhost-user) whose frames go
//! through the vNF's own flow-processor instance to its uplinks (TAP interfaces or further
//! vhost-user virtio-net devices, e.g. another VM or a packet generator) and back.
//!
//! Rings: 0 = RX (device → driver), 1 = TX (driver → device). Features: VERSION_1, MRG_RXBUF,
//! MAC, EVENT_IDX (no checksum or segmentation offloads: drivers compute checksums). Control
//! frames (EtherType 0x88B5) the vNF sends on its own port go to its instance and are never
//! forwarded. All ports of one vNF instance are processed by one worker thread
//! ([`vnf_worker`]); each virtio-net device hands its rings to it through a [`slot`].

pub(crate) mod device;
pub(crate) mod rings;
pub(crate) mod slot;
mod tap;
pub(crate) mod vnf_worker;

use std::io;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;

use dpacc_spec::fastpath::{FastPathDriver, InstanceConfig, InstanceError, Quotas};
use tracing::info;
use vmm_sys_util::eventfd::EventFd;

use crate::vhost_user::{run_together, BindError, Job, ServeError, ThreadPanicked};

use device::NetDevice;
use slot::RingSlot;
use tap::Tap;
use vnf_worker::{Port, VnfInstance, VnfStats, VnfWorker};

/// One uplink of a vNF instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UplinkSpec {
    /// A TAP interface (kernel side).
    Tap(String),
    /// A vhost-user virtio-net device served on this socket path.
    Vhost(PathBuf),
}

impl std::fmt::Display for UplinkSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tap(n) => write!(f, "tap:{n}"),
            Self::Vhost(p) => write!(f, "vhost:{}", p.display()),
        }
    }
}

/// Configuration of one vNF instance.
pub struct NetBackendConfig {
    /// Uplinks, ports 1.. in order.
    pub uplinks: Vec<UplinkSpec>,
    /// What the vNF may create in its instance (flows, groups, buckets, SAs, actions per list).
    pub quotas: Quotas,
    /// How long the vNF's flows, groups and SAs keep forwarding after it disconnects: if it
    /// has not come back by then, they are removed and their memory freed.
    pub keep_detached: std::time::Duration,
    /// Largest ring size.
    pub queue_size: u16,
    /// The MAC address in the vNF's virtio-net config space (uplink `k` gets it with the fifth
    /// byte increased by `k`).
    pub mac: [u8; 6],
    /// Creates the flow-processor instance.
    pub fastpath: Arc<dyn FastPathDriver>,
    /// How long the worker busy-polls its rings after they run dry before it sleeps.
    pub busy_poll: std::time::Duration,
}

/// Why [`serve`] failed.
#[derive(Debug, thiserror::Error)]
pub enum NetServeError {
    /// An eventfd could not be created.
    #[error("eventfd: {0}")]
    EventFd(io::Error),
    /// A TAP uplink could not be opened.
    #[error("TAP {name}: {source}")]
    Tap {
        /// The interface name.
        name: String,
        /// Why.
        source: io::Error,
    },
    /// A vhost-user uplink's socket could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The fast-path driver refused to create the flow-processor instance.
    #[error("creating the flow-processor instance: {0}")]
    Instance(#[from] InstanceError),
    /// The worker thread could not be started.
    #[error("starting the vNF worker: {0}")]
    Worker(io::Error),
    /// A vhost-user server failed.
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// A vhost-user server thread panicked.
    #[error(transparent)]
    Panicked(#[from] ThreadPanicked),
}

/// Serves one vNF instance: its virtio-net device on `listener` (and its vhost-user uplinks on
/// their own sockets, which are bound here and removed on return) until `shutdown` fires.
pub fn serve(
    listener: &UnixListener,
    cfg: NetBackendConfig,
    shutdown: &EventFd,
) -> Result<(), NetServeError> {
    let new_slot = |name: String| {
        RingSlot::new(name)
            .map(Arc::new)
            .map_err(NetServeError::EventFd)
    };
    let vnf_slot = new_slot("vnf".into())?;
    let mut ports = vec![Port::Vhost {
        slot: vnf_slot.clone(),
        rings: None,
    }];
    let mut uplink_devs = Vec::new();
    let mut cleanup = SocketCleanup(Vec::new());
    for (k, u) in cfg.uplinks.iter().enumerate() {
        match u {
            UplinkSpec::Tap(n) => {
                ports.push(Port::Tap(Tap::open(n).map_err(|source| {
                    NetServeError::Tap {
                        name: n.clone(),
                        source,
                    }
                })?));
            }
            UplinkSpec::Vhost(path) => {
                let l = crate::vhost_user::bind(path)?;
                cleanup.0.push(path.clone());
                let slot = new_slot(format!("uplink {}", k + 1))?;
                let mut mac = cfg.mac;
                mac[4] = mac[4].wrapping_add(k as u8 + 1);
                ports.push(Port::Vhost {
                    slot: slot.clone(),
                    rings: None,
                });
                uplink_devs.push((l, NetDevice::new(mac, cfg.queue_size, slot)));
            }
        }
    }
    let proc_ = cfg.fastpath.create_instance(&InstanceConfig {
        name: "vnf".into(),
        uplinks: cfg.uplinks.len() as u16,
        quotas: cfg.quotas,
    })?;
    let q = cfg.quotas;
    info!(
        "vNF port: uplinks [{}], at most {} flows, {} groups ({} buckets), {} SAs, {} actions \
         per list ({} KiB), kept {} s after the vNF leaves; fast path {}",
        cfg.uplinks
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        q.flows,
        q.groups,
        q.buckets,
        q.sas,
        q.actions,
        proc_.usage().max_memory >> 10,
        cfg.keep_detached.as_secs(),
        cfg.fastpath.name()
    );
    let worker = VnfWorker::spawn(
        VnfInstance {
            proc_,
            ports,
            stats: VnfStats::default(),
            vnf_mac: [0xff; 6],
        },
        cfg.busy_poll,
        cfg.keep_detached,
    )
    .map_err(NetServeError::Worker)?;
    let mut vnf_dev = NetDevice::new(cfg.mac, cfg.queue_size, vnf_slot);
    let mut jobs: Vec<Job<'_, NetServeError>> = vec![Box::new(|| {
        crate::vhost_user::serve(listener, &mut vnf_dev, shutdown).map_err(Into::into)
    })];
    for (l, dev) in &mut uplink_devs {
        jobs.push(Box::new(move || {
            crate::vhost_user::serve(l, dev, shutdown).map_err(Into::into)
        }));
    }
    let r = run_together(jobs, shutdown);
    worker.stop();
    r
}

/// Removes the socket files it names when dropped.
struct SocketCleanup(Vec<PathBuf>);

impl Drop for SocketCleanup {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}
