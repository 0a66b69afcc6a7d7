//! The device handle: how to connect ([`Options`]), bringing the device up (negotiation, the
//! shared region's layout, the queues, where session requests go) and what [`CryptoDevice`]
//! offers once it is up.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use dpacc_spec::virtio_crypto::{Config, S_HW_READY};
use dpacc_spec::{Capabilities, CryptoError, SessionParams};
use vm_memory::ByteValued;

use super::control::{self, CtrlState};
use super::layout::{CTRL_SCRATCH, SLOT_SIZE};
use super::op::{Completion, Op};
use super::queue::{Queue, QueueState};
use super::session::Session;
use crate::error::{Error, Result};
use crate::mem::{place, Arena, DmaBuf, Hugepages, Shared};
use crate::transport::pci::caps::VIRTIO_ID_CRYPTO;
use crate::transport::virtio_user::VirtioUser;
use crate::transport::{setup_split_queue, Endpoint, Transport, VIRTIO_RING_F_INDIRECT_DESC};
use crate::virtq::{CompletionMode, RingLayout};

/// Where session create and destroy requests go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SessionControl {
    /// The device's control queue, except when the device is a VMM's model (virtio-pci under
    /// QEMU): then in-band on a data queue if the backend offers dpacc's extension
    /// (`dpacc_spec::in_band`: every algorithm the backend has), and the VMM's control queue
    /// otherwise (under QEMU: AES-CBC and cipher + MAC chains only).
    #[default]
    Auto,
    /// Always the device's control queue.
    ControlQueue,
    /// Always in-band on a data queue; opening fails if the backend lacks the extension.
    InBand,
}

/// How to connect.
#[derive(Clone, Debug)]
pub struct Options {
    /// Data queues to use (`None`: all the device offers).
    pub queues: Option<u16>,
    /// Entries per data queue (a power of two).
    pub queue_size: u16,
    /// How completions are noticed.
    pub completion: CompletionMode,
    /// Bytes of shared memory for [`DmaBuf`]s.
    pub arena_size: usize,
    /// How long to wait for a completion before giving up.
    pub timeout: Duration,
    /// Negotiate `VIRTIO_RING_F_EVENT_IDX` when offered.
    pub event_idx: bool,
    /// Use indirect descriptors when offered (one ring slot per request).
    pub indirect: bool,
    /// Where session requests go.
    pub session_control: SessionControl,
    /// With interrupts: how long a wait for completions looks at the used ring before it arms
    /// the device's interrupt and sleeps on it; when the device's recent pace says the wait
    /// will be longer, it first sleeps on a timer for most of that time. Completions found
    /// this way cost the device no interrupt (waking a sleeping thread costs the device's
    /// worker far more than the look costs this thread: docs/performance.md, ADR 0017).
    /// Zero: sleep on the interrupt at once.
    pub wait_poll: Duration,
    /// Which pages the shared memory uses over virtio-user (default: 4 KiB pages; `Auto`: 2 MiB
    /// hugepages when free). Ignored inside a VM (always hugepages).
    pub hugepages: Hugepages,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            queues: None,
            queue_size: 256,
            completion: CompletionMode::Interrupt,
            arena_size: 32 << 20,
            timeout: Duration::from_secs(10),
            event_idx: true,
            indirect: true,
            session_control: SessionControl::Auto,
            wait_poll: Duration::from_micros(50),
            hugepages: Hugepages::Off,
        }
    }
}

/// What every handle of one device shares.
pub(super) struct Inner {
    pub(super) shared: Arc<Shared>,
    pub(super) ctrl: Mutex<CtrlState>,
    /// The data queues not taken by a [`Queue`] handle, by index.
    pool: Mutex<Vec<Option<QueueState>>>,
    caps: Capabilities,
    config: Config,
    pub(super) opts: Options,
    pub(super) indirect: bool,
    /// Session requests go in-band on a data queue (`dpacc_spec::in_band`).
    pub(super) in_band: bool,
    /// The backend's process id, when the transport can tell.
    backend_pid: Option<u32>,
    // Last: the connection closes after everything above is gone.
    _transport: Mutex<Box<dyn Transport>>,
}

/// A connected virtio-crypto device. Cheap to clone (an `Arc`); `Send + Sync`.
#[derive(Clone)]
pub struct CryptoDevice {
    pub(super) inner: Arc<Inner>,
}

impl std::fmt::Debug for CryptoDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CryptoDevice")
            .field("queues", &self.num_queues())
            .field("caps", &self.inner.caps)
            .finish()
    }
}

/// Locks `m`; a panic in another holder does not make the device unusable.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl CryptoDevice {
    /// Opens the device at `endpoint`: `pci:DDDD:BB:DD.F` (a `virtio-crypto-pci` function of
    /// this VM, see [`transport::pci`](crate::transport::pci)) or `vhost-user:PATH` (the
    /// backend's socket). The same vNF code then runs in a VM and in a container.
    pub fn open(endpoint: &str, opts: Options) -> Result<Self> {
        let ep: Endpoint = endpoint.parse()?;
        let t = ep.open(VIRTIO_ID_CRYPTO, 0, opts.event_idx, opts.indirect)?;
        Self::with_transport(t, opts)
    }

    /// Connects to a vhost-user backend's socket (virtio-user transport).
    pub fn connect(path: impl AsRef<Path>, opts: Options) -> Result<Self> {
        let t = VirtioUser::connect(path.as_ref(), opts.event_idx, opts.indirect)?;
        Self::with_transport(Box::new(t), opts)
    }

    /// Brings the device up over any [`Transport`].
    pub fn with_transport(mut t: Box<dyn Transport>, opts: Options) -> Result<Self> {
        let mut cfg = Config::default();
        t.read_config(cfg.as_mut_slice())?;
        if cfg.status.to_native() & S_HW_READY == 0 {
            return Err(Error::Unsupported(
                "a ready device (config status S_HW_READY)",
            ));
        }
        let max = cfg.max_dataqueues.to_native();
        if max == 0 || max as u64 + 1 > t.num_queues() as u64 {
            return Err(Error::Protocol(
                "max_dataqueues does not match the device's queue count",
            ));
        }
        let n = opts.queues.unwrap_or(max as u16);
        if n == 0 || n as u32 > max {
            return Err(Error::InvalidArgument(
                "more data queues than the device has",
            ));
        }
        let qsize = opts.queue_size;
        if qsize == 0 || !qsize.is_power_of_two() || qsize > 32768 {
            return Err(Error::InvalidArgument("queue size must be a power of two"));
        }
        // As large as asked, as far as the device goes (QEMU's virtqueues have 1024 entries).
        let fit = |want: u16, max: u16| -> Result<u16> {
            match want.min(max) {
                0 => Err(Error::Unsupported("a queue the device does not have")),
                m => Ok(1 << m.ilog2()),
            }
        };
        let mut qsize_ok = qsize;
        for i in 0..n {
            qsize_ok = fit(qsize_ok, t.max_queue_size(i))?;
        }
        let qsize = qsize_ok;
        let ctrl_size = fit(qsize.min(64), t.max_queue_size(max as u16))?;
        let indirect = opts.indirect && t.features() & VIRTIO_RING_F_INDIRECT_DESC != 0;

        // Region layout: data rings, control ring, control scratch, request slots, arena. Rings
        // and the scratch are 4 KiB multiples placed within one DMA segment each (hugepage
        // memory); request slots never straddle one (SLOT_SIZE divides a segment).
        let seg = t.dma_segment();
        let dring = RingLayout::new(qsize).total;
        let cring = RingLayout::new(ctrl_size).total;
        let mut at = 0;
        let mut take = |len: usize| {
            let off = place(at, len, 4096, seg);
            at = off + len;
            off
        };
        let ring_offs: Vec<usize> = (0..n).map(|_| take(dring)).collect();
        let ctrl_ring_off = take(cring);
        let scratch_off = take(CTRL_SCRATCH);
        let slots_len = SLOT_SIZE * qsize as usize;
        let slot_offs: Vec<usize> = (0..n).map(|_| take(slots_len)).collect();
        let arena_off = at.next_multiple_of(4096);
        let total = arena_off
            .checked_add(opts.arena_size)
            .ok_or(Error::InvalidArgument("arena size"))?;
        t.set_hugepages(opts.hugepages);
        let mem = t.setup_memory(total)?;
        let interrupts = opts.completion == CompletionMode::Interrupt;

        let mut pool = Vec::with_capacity(n as usize);
        for i in 0..n {
            let off = ring_offs[i as usize];
            // SAFETY: data ring `i` has its own part of the fresh, zeroed region (layout above);
            // `mem` outlives the queue (kept in `Inner::shared`, dropped after the queues).
            let (vq, notifier) =
                unsafe { setup_split_queue(&mut *t, &mem, off, i, qsize, interrupts)? };
            pool.push(Some(QueueState::new(
                i,
                vq,
                notifier,
                slot_offs[i as usize],
            )));
        }
        // The control queue always sleeps on its call eventfd.
        // SAFETY: as above, the control ring's own part of the region.
        let (cvq, cn) = unsafe {
            setup_split_queue(&mut *t, &mem, ctrl_ring_off, max as u16, ctrl_size, true)?
        };
        t.activate()?;

        // Behind a VMM's model, ask the backend itself (dpacc's in-band GET_CONFIG) what it
        // has, and find out which data queues reach it at all: QEMU 10 hands only data queue 0
        // of a cryptodev-vhost-user device to the backend and answers requests on the others
        // itself (NOTSUPP for anything it does not know).
        let vmm = t.vmm_mediated();
        let (mode, timeout) = (opts.completion, opts.timeout);
        let mut real = None;
        if vmm || opts.session_control == SessionControl::InBand {
            let st = pool[0].as_mut().ok_or(Error::NoQueue)?;
            real = control::get_config_in_band(&mem, scratch_off, st, mode, timeout)?;
        }
        if vmm {
            let mut reach = 1;
            if real.is_some() {
                while reach < pool.len() {
                    let st = pool[reach].as_mut().ok_or(Error::NoQueue)?;
                    match control::get_config_in_band(&mem, scratch_off, st, mode, timeout)? {
                        Some(_) => reach += 1,
                        None => break,
                    }
                }
            }
            if opts.queues.is_some_and(|q| usize::from(q) > reach) {
                return Err(Error::Unsupported(
                    "that many data queues reaching the backend (QEMU hands only data queue 0 of \
                     a cryptodev-vhost-user device to it)",
                ));
            }
            pool.truncate(reach);
        }
        let in_band = match (opts.session_control, &real) {
            (SessionControl::ControlQueue, _) => false,
            (SessionControl::InBand, None) => {
                return Err(Error::Unsupported(
                    "dpacc's in-band session control (the backend does not offer it)",
                ))
            }
            (SessionControl::InBand, Some(_)) => true,
            (SessionControl::Auto, r) => vmm && r.is_some(),
        };
        if let Some(real) = real {
            // The backend's algorithms (a VMM's control queue forwards what it forwards
            // without checking them against its own config space); this function's queue
            // count.
            let queues = cfg.max_dataqueues;
            cfg = real;
            cfg.max_dataqueues = queues;
        }
        if in_band {
            // A new owner starts from a clean session table (a previous owner may have
            // crashed with sessions open).
            let st = pool[0].as_mut().ok_or(Error::NoQueue)?;
            control::close_all_in_band(&mem, scratch_off, st, mode, timeout)?;
        }

        let shared = Arc::new(Shared {
            arena: Arena::new(arena_off, mem.len() - arena_off, &mem.breaks()),
            mem,
        });
        Ok(Self {
            inner: Arc::new(Inner {
                shared,
                ctrl: Mutex::new(CtrlState::new(cvq, cn, scratch_off)),
                pool: Mutex::new(pool),
                caps: Capabilities::from_config(&cfg),
                config: cfg,
                opts,
                indirect,
                in_band,
                backend_pid: t.backend_pid(),
                _transport: Mutex::new(t),
            }),
        })
    }

    /// What the device advertises.
    pub fn capabilities(&self) -> Capabilities {
        self.inner.caps
    }

    /// The raw config space.
    pub fn config(&self) -> Config {
        self.inner.config
    }

    /// The process id of the backend serving this device, when the transport can tell
    /// (virtio-user: the peer of the vhost-user socket; `None` inside a VM). For diagnostics
    /// and benchmarks, e.g. reading how busy its worker threads are.
    pub fn backend_pid(&self) -> Option<u32> {
        self.inner.backend_pid
    }

    /// Data queues in use.
    pub fn num_queues(&self) -> u16 {
        lock(&self.inner.pool).len() as u16
    }

    /// Whether requests go through indirect descriptor tables.
    pub fn uses_indirect(&self) -> bool {
        self.inner.indirect
    }

    /// Size of the pages the shared memory is on in this process: 2 MiB (hugepages) or 4 KiB
    /// ([`Options::hugepages`]).
    pub fn page_size(&self) -> usize {
        self.inner.shared.mem.page_size()
    }

    /// Whether session requests go in-band on a data queue (`dpacc_spec::in_band`) rather
    /// than on the control queue.
    pub fn uses_in_band_sessions(&self) -> bool {
        self.inner.in_band
    }

    /// Allocates a zeroed buffer of `len` bytes in the shared region.
    pub fn alloc(&self, len: usize) -> Result<DmaBuf> {
        DmaBuf::alloc(&self.inner.shared, len)
    }

    /// Allocates a buffer holding a copy of `data`.
    pub fn alloc_from(&self, data: &[u8]) -> Result<DmaBuf> {
        let mut b = self.alloc(data.len())?;
        b.as_mut_slice().copy_from_slice(data);
        Ok(b)
    }

    /// Creates a session (over the control queue, or in-band on a free data queue: see
    /// [`SessionControl`]; in-band, at least one data queue must not be held by a [`Queue`]
    /// handle, or use [`Queue::create_session`]). Parameters are validated first (bad key or
    /// digest lengths are [`CryptoError`]s without a device round trip).
    pub fn create_session(&self, params: &SessionParams<'_>) -> Result<Session> {
        self.inner.open_session(params, None)
    }

    /// Takes data queue `index` for the caller's exclusive use (one per thread, no locks on the
    /// data path). It returns to the device when the handle drops.
    pub fn queue(&self, index: u16) -> Result<Queue> {
        let mut pool = lock(&self.inner.pool);
        let slot = pool
            .get_mut(index as usize)
            .ok_or(Error::InvalidArgument("queue index"))?;
        let st = slot.take().ok_or(Error::NoQueue)?;
        Ok(Queue::new(self.inner.clone(), st))
    }

    /// Takes any free data queue.
    pub fn any_queue(&self) -> Result<Queue> {
        let st = self.inner.take_any()?;
        Ok(Queue::new(self.inner.clone(), st))
    }

    /// Runs one operation synchronously on any free data queue.
    pub fn run(&self, op: Op) -> Result<Completion> {
        self.inner.run_with(op)
    }
}

impl Inner {
    /// Validates `params`, creates the session (in-band on `held` if given and sessions go
    /// in-band) and wraps it.
    pub(super) fn open_session(
        self: &Arc<Self>,
        params: &SessionParams<'_>,
        held: Option<&mut QueueState>,
    ) -> Result<Session> {
        let p = params.validated()?;
        if !self.caps.supports(&p) {
            return Err(CryptoError::Unsupported.into());
        }
        let id = self.create_session(&p, held)?;
        Ok(Session::new(self.clone(), id, p.service(), p.info()))
    }

    /// Takes a free data queue with nothing in flight (for an in-band control request), the
    /// highest-numbered first (vNFs tend to take queues from 0 up).
    pub(super) fn take_idle(&self) -> Result<QueueState> {
        let mut pool = lock(&self.pool);
        pool.iter_mut()
            .rev()
            .find_map(|s| s.take_if(|q| !q.broken && q.idle()))
            .ok_or(Error::NoQueue)
    }

    fn take_any(&self) -> Result<QueueState> {
        let mut pool = lock(&self.pool);
        pool.iter_mut()
            .find_map(|s| s.take_if(|q| !q.broken))
            .ok_or(Error::NoQueue)
    }

    /// Returns a queue taken by a [`Queue`] handle.
    pub(super) fn put_back(&self, st: QueueState) {
        let mut pool = lock(&self.pool);
        let i = st.index as usize;
        if let Some(s) = pool.get_mut(i) {
            *s = Some(st);
        }
    }

    /// Runs one operation synchronously on any free data queue.
    pub(super) fn run_with(self: &Arc<Self>, op: Op) -> Result<Completion> {
        let mut q = Queue::new(self.clone(), self.take_any()?);
        q.run(op)
    }
}
