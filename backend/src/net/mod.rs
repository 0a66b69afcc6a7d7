//! The inline fast path's device: per vNF, a virtio-net device (vhost-user) whose frames go
//! through the vNF's own flow-processor instance to its uplinks (TAP interfaces or further
//! vhost-user virtio-net devices, e.g. another VM or a packet generator) and back.
//!
//! Rings: 2k = RX (device → driver), 2k + 1 = TX (driver → device) of queue pair k. Features:
//! VERSION_1, MRG_RXBUF, MAC, EVENT_IDX, IN_ORDER, and MQ with more than one pair (no checksum
//! or segmentation offloads: drivers compute checksums). Control frames (EtherType 0x88B5) the
//! vNF sends on its own port go to its instance and are never forwarded. Each vNF instance
//! has one worker thread per queue pair ([`vnf_worker`]): worker k serves pair k of every
//! virtio port of the vNF and queue k of its TAP uplinks, with lane k of the flow processor;
//! each virtio-net device hands pair k's rings to worker k through a [`slot`].

mod control;
pub mod counters;
pub(crate) mod device;
pub(crate) mod rings;
pub mod running;
pub(crate) mod slot;
mod tap;
mod uplink;
pub(crate) mod vnf_worker;

use std::io;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;

use dpacc_spec::fastpath::{FastPathDriver, InstanceConfig, InstanceError, Quotas};
use std::sync::atomic::AtomicU64;
use tracing::info;
use vmm_sys_util::eventfd::EventFd;

use crate::vhost_user::{run_together, BindError, Job, ServeError, ThreadPanicked};

use device::NetDevice;
use slot::RingSlot;
use tap::Tap;
pub use uplink::UplinkError;
use vnf_worker::{Port, SharedPort, VnfInstance, VnfShared, VnfStats, VnfWorker};

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
    /// How long a worker busy-polls its rings after they run dry before it sleeps.
    pub busy_poll: std::time::Duration,
    /// Queue pairs of every virtio-net device of the vNF (its own and its vhost-user
    /// uplinks), queues of every TAP uplink, and worker threads (one per pair): 1 to
    /// [`MAX_QUEUE_PAIRS`].
    pub queue_pairs: u16,
}

/// Most queue pairs (and workers) of a vNF instance.
pub const MAX_QUEUE_PAIRS: u16 = 16;

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
    /// The fast-path driver gave no lane for a worker.
    #[error("the fast-path driver has no lane {0} for this instance")]
    NoLane(usize),
    /// A queue-pair count out of range.
    #[error("queue pairs must be 1..={MAX_QUEUE_PAIRS}, not {0}")]
    QueuePairs(u16),
    /// A vhost-user server failed.
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// A vhost-user server thread panicked.
    #[error(transparent)]
    Panicked(#[from] ThreadPanicked),
    /// The start-up operator policy was refused by the flow processor.
    #[error("setting the operator policy: {0}")]
    Policy(dpacc_spec::fastpath::policy::PolicyError),
}

/// Serves one vNF instance: its virtio-net device on `listener` (and its vhost-user uplinks on
/// their own sockets, which are bound here and removed on return) until `shutdown` fires.
pub fn serve(
    listener: &UnixListener,
    cfg: NetBackendConfig,
    shutdown: &EventFd,
) -> Result<(), NetServeError> {
    serve_observed(listener, cfg, shutdown, |_| {})
}

/// [`serve`], handing `started` a [`VnfView`] of the instance once its uplinks, flow processor
/// and workers are up (before any frontend is served): what the host operator reads and sets.
pub fn serve_observed(
    listener: &UnixListener,
    cfg: NetBackendConfig,
    shutdown: &EventFd,
    started: impl FnOnce(VnfView),
) -> Result<(), NetServeError> {
    serve_with_policy(listener, cfg, None, shutdown, started)
}

/// [`serve_observed`] with the operator `policy` in force from the instance's first frame:
/// set on the flow processor before any worker starts (`--isolate` restarts a vNF's process
/// with the policy the operator last set, ADR 0018).
pub fn serve_with_policy(
    listener: &UnixListener,
    cfg: NetBackendConfig,
    policy: Option<dpacc_spec::fastpath::policy::Policy>,
    shutdown: &EventFd,
    started: impl FnOnce(VnfView),
) -> Result<(), NetServeError> {
    let n = cfg.queue_pairs;
    if n == 0 || n > MAX_QUEUE_PAIRS {
        return Err(NetServeError::QueuePairs(n));
    }
    let n = usize::from(n);
    let new_slots = |name: String| -> Result<Vec<Arc<RingSlot>>, NetServeError> {
        (0..n)
            .map(|k| {
                RingSlot::new(format!("{name} pair {k}"))
                    .map(Arc::new)
                    .map_err(NetServeError::EventFd)
            })
            .collect()
    };
    // Per port, the slots of its pairs (virtio) or the queues of each worker (TAP).
    enum Setup {
        Vhost(Vec<Arc<RingSlot>>),
        Tap(Vec<Tap>),
    }
    let vnf_slots = new_slots("vnf".into())?;
    let mut setup = vec![Setup::Vhost(vnf_slots.clone())];
    let mut uplink_devs = Vec::new();
    let mut cleanup = SocketCleanup(Vec::new());
    for (k, u) in cfg.uplinks.iter().enumerate() {
        match u {
            UplinkSpec::Tap(name) => {
                let queues = (0..n)
                    .map(|_| Tap::open(name, n > 1))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|source| NetServeError::Tap {
                        name: name.clone(),
                        source,
                    })?;
                setup.push(Setup::Tap(queues));
            }
            UplinkSpec::Vhost(path) => {
                let l = crate::vhost_user::bind(path)?;
                cleanup.0.push(path.clone());
                let slots = new_slots(format!("uplink {}", k + 1))?;
                let mut mac = cfg.mac;
                mac[4] = mac[4].wrapping_add(k as u8 + 1);
                setup.push(Setup::Vhost(slots.clone()));
                uplink_devs.push((l, NetDevice::new(mac, cfg.queue_size, slots)));
            }
        }
    }
    let proc_ = cfg.fastpath.create_instance(&InstanceConfig {
        name: "vnf".into(),
        uplinks: cfg.uplinks.len() as u16,
        quotas: cfg.quotas,
        lanes: n,
    })?;
    if let Some(p) = policy {
        proc_.set_policy(Some(p)).map_err(NetServeError::Policy)?;
    }
    let q = cfg.quotas;
    info!(
        "vNF port: uplinks [{}], at most {} flows, {} groups ({} buckets), {} SAs, {} actions \
         per list ({} KiB), kept {} s after the vNF leaves; {n} queue pair(s) and worker(s), \
         fast path {}",
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
    let shared = Arc::new(VnfShared {
        proc_: proc_.clone(),
        ports: setup
            .iter()
            .map(|s| match s {
                Setup::Vhost(_) => SharedPort::vhost(n),
                Setup::Tap(_) => SharedPort::Tap,
            })
            .collect(),
        epoch: std::time::Instant::now(),
        vnf_mac: AtomicU64::new(0xffff_ffff_ffff),
        counters: (0..n)
            .map(|_| counters::WorkerCounters::new(setup.len()))
            .collect(),
    });
    // Worker k's view of the ports: pair k's slot, TAP queue k.
    let mut views: Vec<Vec<Port>> = (0..n).map(|_| Vec::new()).collect();
    for s in setup {
        match s {
            Setup::Vhost(slots) => {
                for (v, slot) in views.iter_mut().zip(slots) {
                    v.push(Port::Vhost(slot));
                }
            }
            Setup::Tap(queues) => {
                for (v, q) in views.iter_mut().zip(queues) {
                    v.push(Port::Tap(q));
                }
            }
        }
    }
    let mut workers = Vec::new();
    for (k, ports) in views.into_iter().enumerate() {
        let lane = proc_.lane(k).ok_or(NetServeError::NoLane(k))?;
        workers.push(
            VnfWorker::spawn(
                VnfInstance {
                    shared: shared.clone(),
                    lane,
                    index: k,
                    ports,
                    stats: VnfStats {
                        ports: vec![counters::PortCount::default(); shared.ports.len()],
                        ..VnfStats::default()
                    },
                },
                cfg.busy_poll,
                cfg.keep_detached,
            )
            .map_err(NetServeError::Worker)?,
        );
    }
    started(VnfView {
        proc_: proc_.clone(),
        shared: shared.clone(),
    });
    let mut vnf_dev = NetDevice::new(cfg.mac, cfg.queue_size, vnf_slots);
    let mut jobs: Vec<Job<'_, NetServeError>> = vec![Box::new(|| {
        crate::vhost_user::serve(listener, &mut vnf_dev, shutdown).map_err(Into::into)
    })];
    for (l, dev) in &mut uplink_devs {
        jobs.push(Box::new(move || {
            crate::vhost_user::serve(l, dev, shutdown).map_err(Into::into)
        }));
    }
    let r = run_together(jobs, shutdown);
    for w in workers {
        w.stop();
    }
    r
}

/// The host operator's handle on a running vNF instance: its flow processor (policy, flows,
/// instance counters) and what its workers counted.
#[derive(Clone)]
pub struct VnfView {
    proc_: Arc<dyn dpacc_spec::fastpath::FlowProcessor>,
    shared: Arc<VnfShared>,
}

impl VnfView {
    /// The vNF's flow processor.
    pub fn processor(&self) -> &Arc<dyn dpacc_spec::fastpath::FlowProcessor> {
        &self.proc_
    }

    /// What each worker (queue pair) last published, by worker index.
    pub fn workers(&self) -> Vec<counters::WorkerSnapshot> {
        self.shared.counters.iter().map(|c| c.snapshot()).collect()
    }
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
