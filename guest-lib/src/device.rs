//! The crypto device: connection, queues, operations and completions.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dpacc_spec::error::status_to_result;
use dpacc_spec::virtio_crypto::{Config, S_HW_READY};
use dpacc_spec::{virtio_crypto as vc, Capabilities};
use dpacc_spec::{CipherAlg, CryptoError, Direction, Iv, SessionInfo, SessionParams};
use vm_memory::ByteValued;

use crate::error::{Error, Result};
use crate::mem::{Arena, DmaBuf, Shared};
use crate::request;
use crate::session::Session;
use crate::transport::virtio_user::VirtioUser;
use crate::transport::VIRTIO_RING_F_INDIRECT_DESC;
use crate::transport::{QueueSetup, Transport, VIRTIO_RING_F_EVENT_IDX};
use crate::virtq::{CompletionMode, Notifier, RawDesc, RingLayout, SplitQueue, UsedElem};

/// Per-request memory: indirect table (8 descriptors), request header, IV, status byte.
const SLOT_SIZE: usize = 256;
const SLOT_TABLE: usize = 0;
const SLOT_REQ: usize = 128;
const SLOT_IV: usize = 200;
const SLOT_STATUS: usize = 216;
/// Control scratch: request, keys, session input / status.
const CTRL_SCRATCH: usize = 4096;
const CTRL_KEYS: usize = 128;
const CTRL_INPUT: usize = 2048;
/// Tokens of chains posted through the raw API (the crypto path ignores their completions).
const RAW_TOKEN: u64 = 1 << 63;
/// Status byte value before the device writes one.
const STATUS_UNSET: u8 = 0xff;

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
        }
    }
}

/// One data queue's driver state.
pub(crate) struct QueueState {
    index: u16,
    vq: SplitQueue,
    notifier: Box<dyn Notifier>,
    /// Offset of this queue's request slots in the region.
    slots_off: usize,
    slots: Vec<Option<Op>>,
    free_slots: Vec<u16>,
    broken: bool,
}

struct CtrlState {
    vq: SplitQueue,
    notifier: Box<dyn Notifier>,
    scratch_off: usize,
    keys: Vec<u8>,
}

pub(crate) struct Inner {
    shared: Arc<Shared>,
    ctrl: Mutex<CtrlState>,
    pool: Mutex<Vec<Option<QueueState>>>,
    caps: Capabilities,
    config: Config,
    opts: Options,
    indirect: bool,
    // Last: the connection closes after everything above is gone.
    _transport: Mutex<Box<dyn Transport>>,
}

/// A connected virtio-crypto device. Cheap to clone (an `Arc`); `Send + Sync`.
#[derive(Clone)]
pub struct CryptoDevice {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CryptoDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CryptoDevice")
            .field("queues", &self.num_queues())
            .field("caps", &self.inner.caps)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl CryptoDevice {
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
        let ctrl_size = qsize.min(64);
        let event_idx = t.features() & VIRTIO_RING_F_EVENT_IDX != 0;
        let indirect = opts.indirect && t.features() & VIRTIO_RING_F_INDIRECT_DESC != 0;

        // Region layout: data rings, control ring, control scratch, request slots, arena.
        let dring = RingLayout::new(qsize).total;
        let cring = RingLayout::new(ctrl_size).total;
        let ctrl_ring_off = dring * n as usize;
        let scratch_off = ctrl_ring_off + cring;
        let slots_off = scratch_off + CTRL_SCRATCH;
        let slots_len = SLOT_SIZE * qsize as usize;
        let arena_off = slots_off + slots_len * n as usize;
        let total = arena_off
            .checked_add(opts.arena_size)
            .ok_or(Error::InvalidArgument("arena size"))?;
        let mem = t.setup_memory(total)?;
        let interrupts = opts.completion == CompletionMode::Interrupt;

        let setup = |t: &mut Box<dyn Transport>,
                     off: usize,
                     index: u16,
                     size: u16,
                     irq: bool|
         -> Result<(SplitQueue, Box<dyn Notifier>)> {
            let ptr = mem
                .ptr_at(off, RingLayout::new(size).total)
                .ok_or(Error::InvalidArgument("memory too small"))?;
            // SAFETY: `off` is 4 KiB-aligned (every part before it is a 4 KiB multiple), the
            // ring bytes are in the fresh zeroed mapping and used by this queue only.
            let vq = unsafe { SplitQueue::new(ptr, mem.gpa(off), size, event_idx, irq)? };
            let (d, a, u) = vq.ring_gpas();
            let (dp, ap, up) = vq.ring_ptrs();
            let notifier = t.setup_queue(&QueueSetup {
                index,
                size,
                desc: (d, dp as u64),
                avail: (a, ap as u64),
                used: (u, up as u64),
            })?;
            Ok((vq, notifier))
        };

        let mut pool = Vec::with_capacity(n as usize);
        for i in 0..n {
            let (vq, notifier) = setup(&mut t, dring * i as usize, i, qsize, interrupts)?;
            pool.push(Some(QueueState {
                index: i,
                vq,
                notifier,
                slots_off: slots_off + slots_len * i as usize,
                slots: (0..qsize).map(|_| None).collect(),
                free_slots: (0..qsize).rev().collect(),
                broken: false,
            }));
        }
        // The control queue always sleeps on its call eventfd.
        let (cvq, cn) = setup(&mut t, ctrl_ring_off, max as u16, ctrl_size, true)?;
        t.activate()?;

        let shared = Arc::new(Shared {
            arena: Arena::new(arena_off, mem.len() - arena_off),
            mem,
        });
        Ok(Self {
            inner: Arc::new(Inner {
                shared,
                ctrl: Mutex::new(CtrlState {
                    vq: cvq,
                    notifier: cn,
                    scratch_off,
                    keys: Vec::with_capacity(1024),
                }),
                pool: Mutex::new(pool),
                caps: Capabilities::from_config(&cfg),
                config: cfg,
                opts,
                indirect,
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

    /// Data queues in use.
    pub fn num_queues(&self) -> u16 {
        lock(&self.inner.pool).len() as u16
    }

    /// Whether requests go through indirect descriptor tables.
    pub fn uses_indirect(&self) -> bool {
        self.inner.indirect
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

    /// Creates a session over the control queue. Parameters are validated first (bad key or
    /// digest lengths are [`CryptoError`]s without a device round trip).
    pub fn create_session(&self, params: &SessionParams<'_>) -> Result<Session> {
        let p = params.validated()?;
        if !self.inner.caps.supports(&p) {
            return Err(CryptoError::Unsupported.into());
        }
        let id = self.inner.create_session(&p)?;
        Ok(Session::new(self.inner.clone(), id, p.service(), p.info()))
    }

    /// Takes data queue `index` for the caller's exclusive use (one per thread, no locks on the
    /// data path). It returns to the device when the handle drops.
    pub fn queue(&self, index: u16) -> Result<Queue> {
        let mut pool = lock(&self.inner.pool);
        let slot = pool
            .get_mut(index as usize)
            .ok_or(Error::InvalidArgument("queue index"))?;
        let st = slot.take().ok_or(Error::NoQueue)?;
        Ok(Queue {
            dev: self.inner.clone(),
            st: Some(st),
        })
    }

    /// Takes any free data queue.
    pub fn any_queue(&self) -> Result<Queue> {
        let st = self.inner.take_any()?;
        Ok(Queue {
            dev: self.inner.clone(),
            st: Some(st),
        })
    }

    /// Runs one operation synchronously on any free data queue.
    pub fn run(&self, op: Op) -> Result<Completion> {
        self.inner.run_with(op)
    }

    /// Raw access to the control queue (testing / expert API), see [`RawQueue`].
    pub fn with_raw_ctrl<R>(&self, f: impl FnOnce(&mut RawQueue<'_>) -> R) -> R {
        let mut c = lock(&self.inner.ctrl);
        let c = &mut *c;
        let mut raw = RawQueue {
            vq: &mut c.vq,
            notifier: &*c.notifier,
            timeout: self.inner.opts.timeout,
            mode: CompletionMode::Interrupt,
        };
        f(&mut raw)
    }
}

impl Inner {
    fn take_any(&self) -> Result<QueueState> {
        let mut pool = lock(&self.pool);
        pool.iter_mut()
            .find_map(|s| s.take_if(|q| !q.broken))
            .ok_or(Error::NoQueue)
    }

    fn put_back(&self, st: QueueState) {
        let mut pool = lock(&self.pool);
        let i = st.index as usize;
        if let Some(s) = pool.get_mut(i) {
            *s = Some(st);
        }
    }

    pub(crate) fn run_with(self: &Arc<Self>, op: Op) -> Result<Completion> {
        let mut q = Queue {
            dev: self.clone(),
            st: Some(self.take_any()?),
        };
        q.run(op)
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    fn create_session(&self, p: &SessionParams<'_>) -> Result<u64> {
        let mut guard = lock(&self.ctrl);
        let c = &mut *guard;
        let req = dpacc_spec::ctrl::encode_create(p, &mut c.keys);
        let mem = &self.shared.mem;
        let off = c.scratch_off;
        if c.keys.len() > CTRL_INPUT - CTRL_KEYS {
            c.keys.fill(0);
            return Err(CryptoError::InvalidKeyLength.into());
        }
        let klen = c.keys.len();
        // SAFETY: the scratch area is private to the control queue (we hold its lock) and no
        // request is in flight on it; offsets are inside the 4 KiB scratch.
        unsafe {
            let base = mem.as_ptr().add(off);
            std::ptr::copy_nonoverlapping(req.as_slice().as_ptr(), base, 72);
            std::ptr::copy_nonoverlapping(c.keys.as_ptr(), base.add(CTRL_KEYS), klen);
            std::ptr::write_bytes(base.add(CTRL_INPUT), 0, 16);
            // status field of SessionInput pre-set to "unset".
            *base.add(CTRL_INPUT + 8) = STATUS_UNSET;
        }
        c.keys.fill(0);
        let mut descs = [RawDesc::default(); 3];
        let mut k = 0;
        descs[k] = RawDesc::readable(mem.gpa(off), 72);
        k += 1;
        if klen > 0 {
            descs[k] = RawDesc::readable(mem.gpa(off + CTRL_KEYS), klen as u32);
            k += 1;
        }
        descs[k] = RawDesc::writable(mem.gpa(off + CTRL_INPUT), 16);
        k += 1;
        let res = self.ctrl_roundtrip(c, &descs[..k]);
        // SAFETY: as above; the request completed (or the queue is dead), wipe the key copy.
        unsafe { std::ptr::write_bytes(mem.as_ptr().add(off + CTRL_KEYS), 0, klen) };
        let used = res?;
        if used.len < 12 {
            return Err(Error::Protocol(
                "create session: device wrote no session input",
            ));
        }
        let mut input = vc::SessionInput::default();
        // SAFETY: the device finished writing the 16 bytes (used entry reaped).
        unsafe {
            std::ptr::copy_nonoverlapping(
                mem.as_ptr().add(off + CTRL_INPUT),
                input.as_mut_slice().as_mut_ptr(),
                16,
            )
        };
        let st = input.status.to_native();
        status_to_result(u8::try_from(st).unwrap_or(vc::status::ERR))?;
        Ok(input.session_id.to_native())
    }

    pub(crate) fn destroy_session(&self, service: u32, id: u64) -> Result<()> {
        let mut guard = lock(&self.ctrl);
        let c = &mut *guard;
        let req = dpacc_spec::ctrl::encode_destroy(service, id);
        let mem = &self.shared.mem;
        let off = c.scratch_off;
        // SAFETY: scratch is private to the control queue (lock held), nothing in flight.
        unsafe {
            let base = mem.as_ptr().add(off);
            std::ptr::copy_nonoverlapping(req.as_slice().as_ptr(), base, 72);
            *base.add(CTRL_INPUT) = STATUS_UNSET;
        }
        let descs = [
            RawDesc::readable(mem.gpa(off), 72),
            RawDesc::writable(mem.gpa(off + CTRL_INPUT), 1),
        ];
        let used = self.ctrl_roundtrip(c, &descs)?;
        if used.len < 1 {
            return Err(Error::Protocol("destroy session: device wrote no status"));
        }
        // SAFETY: the device finished writing the status byte.
        let st = unsafe { *mem.as_ptr().add(off + CTRL_INPUT) };
        Ok(status_to_result(st)?)
    }

    fn ctrl_roundtrip(&self, c: &mut CtrlState, descs: &[RawDesc]) -> Result<UsedElem> {
        let head = c.vq.add(descs, 0)?;
        if c.vq.publish() {
            c.notifier.kick()?;
        }
        loop {
            wait_used(
                &mut c.vq,
                &*c.notifier,
                CompletionMode::Interrupt,
                self.opts.timeout,
            )?;
            if let Some(u) = c.vq.reap()? {
                if u.head == head {
                    return Ok(u);
                }
                // A raw chain someone left behind: drop it.
            }
        }
    }
}

/// Blocks until the used ring has an entry (spinning or sleeping), or times out.
fn wait_used(
    vq: &mut SplitQueue,
    n: &dyn Notifier,
    mode: CompletionMode,
    timeout: Duration,
) -> Result<()> {
    wait_used_n(vq, n, mode, timeout, 1)
}

/// Blocks until the used ring has `min` (≥ 1) unreaped entries, or times out.
fn wait_used_n(
    vq: &mut SplitQueue,
    n: &dyn Notifier,
    mode: CompletionMode,
    timeout: Duration,
    min: u16,
) -> Result<()> {
    let min = min.max(1);
    if vq.used_pending() >= min {
        return Ok(());
    }
    let deadline = Instant::now() + timeout;
    match mode {
        CompletionMode::Poll => {
            let mut spins = 0u32;
            while vq.used_pending() < min {
                spins = spins.wrapping_add(1);
                if spins % 64 == 0 {
                    if Instant::now() >= deadline {
                        return Err(Error::Timeout);
                    }
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
            }
            Ok(())
        }
        CompletionMode::Interrupt => loop {
            if !vq.prepare_wait_for(min) {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Timeout);
            }
            n.wait(Some(deadline - now))?;
        },
    }
}

/// What kind of request an [`Op`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OpKind {
    Cipher,
    Chain,
    Hash,
    Aead,
}

/// The buffers of an operation, handed back in its [`Completion`].
#[derive(Debug, Default)]
pub struct OpBufs {
    /// Input (cipher/AEAD/hash source).
    pub src: Option<DmaBuf>,
    /// Output (`None` for hashes and in-place operations).
    pub dst: Option<DmaBuf>,
    /// Additional authenticated data.
    pub aad: Option<DmaBuf>,
    /// Digest / MAC output (hash, MAC and chain sessions).
    pub digest: Option<DmaBuf>,
    /// Expected MAC of a verifying chain operation.
    pub expected: Option<DmaBuf>,
}

/// One operation, owning its buffers until it completes. Build it with the constructors below
/// (which take the session for its id and kind); the queue checks lengths when it is pushed.
#[derive(Debug)]
pub struct Op {
    kind: OpKind,
    info: SessionInfo,
    session_id: u64,
    iv: Iv,
    iv_err: bool,
    in_place: bool,
    user_data: u64,
    bufs: OpBufs,
}

impl Op {
    fn new(s: &Session, kind: OpKind, iv: &[u8], bufs: OpBufs) -> Self {
        let (iv, iv_err) = match Iv::new(iv) {
            Ok(v) => (v, false),
            Err(_) => (Iv::default(), true),
        };
        Self {
            kind,
            info: s.info(),
            session_id: s.id(),
            iv,
            iv_err,
            in_place: false,
            user_data: 0,
            bufs,
        }
    }

    /// Cipher (CBC/CTR) in the session's direction: `dst[..src.len()]` receives the result.
    pub fn cipher(s: &Session, iv: &[u8], src: DmaBuf, dst: DmaBuf) -> Self {
        let bufs = OpBufs {
            src: Some(src),
            dst: Some(dst),
            ..OpBufs::default()
        };
        Self::new(s, OpKind::Cipher, iv, bufs)
    }

    /// Cipher in place: `buf` is both source and destination.
    pub fn cipher_in_place(s: &Session, iv: &[u8], buf: DmaBuf) -> Self {
        let mut op = Self::new(
            s,
            OpKind::Cipher,
            iv,
            OpBufs {
                src: Some(buf),
                ..OpBufs::default()
            },
        );
        op.in_place = true;
        op
    }

    /// AEAD in the session's direction. Encrypt: `dst` receives ciphertext ‖ tag
    /// (`src.len() + 16` bytes). Decrypt: `src` is ciphertext ‖ tag, `dst` receives the plaintext
    /// (`src.len() - 16` bytes), and a bad tag completes with [`CryptoError::AuthFailed`].
    pub fn aead(s: &Session, iv: &[u8], aad: Option<DmaBuf>, src: DmaBuf, dst: DmaBuf) -> Self {
        let bufs = OpBufs {
            src: Some(src),
            dst: Some(dst),
            aad,
            ..OpBufs::default()
        };
        Self::new(s, OpKind::Aead, iv, bufs)
    }

    /// Hash or MAC of `src` into `digest` (at least the session's digest length).
    pub fn digest(s: &Session, src: DmaBuf, digest: DmaBuf) -> Self {
        let bufs = OpBufs {
            src: Some(src),
            digest: Some(digest),
            ..OpBufs::default()
        };
        Self::new(s, OpKind::Hash, &[], bufs)
    }

    /// Chained cipher + hash/MAC (both over all of `src`, the MAC also over `aad` first):
    /// `dst` receives the cipher output and `digest` the MAC.
    pub fn chain(
        s: &Session,
        iv: &[u8],
        aad: Option<DmaBuf>,
        src: DmaBuf,
        dst: DmaBuf,
        digest: DmaBuf,
    ) -> Self {
        let bufs = OpBufs {
            src: Some(src),
            dst: Some(dst),
            aad,
            digest: Some(digest),
            expected: None,
        };
        Self::new(s, OpKind::Chain, iv, bufs)
    }

    /// Like [`chain`](Self::chain), and then compares `digest` with `expected` in constant time:
    /// a mismatch completes with [`CryptoError::AuthFailed`] (the decrypt side of
    /// encrypt-then-MAC; the caller must not use `dst` unless the result is `Ok`).
    pub fn chain_verify(
        s: &Session,
        iv: &[u8],
        aad: Option<DmaBuf>,
        src: DmaBuf,
        dst: DmaBuf,
        digest: DmaBuf,
        expected: DmaBuf,
    ) -> Self {
        let mut op = Self::chain(s, iv, aad, src, dst, digest);
        op.bufs.expected = Some(expected);
        op
    }

    /// Sets the value handed back in the completion.
    pub fn with_user_data(mut self, user_data: u64) -> Self {
        self.user_data = user_data;
        self
    }

    /// Gives the buffers back (e.g. after a [`Rejected`] push).
    pub fn into_bufs(self) -> OpBufs {
        self.bufs
    }

    /// Checks lengths against the session; returns (request, result bytes the device writes
    /// before the status).
    fn encode(&self) -> Result<(vc::DataRequest, usize), CryptoError> {
        let b = &self.bufs;
        let len = |o: &Option<DmaBuf>| o.as_ref().map_or(0, |x| x.len());
        let src = len(&b.src);
        let dst = if self.in_place { src } else { len(&b.dst) };
        let aad = len(&b.aad);
        let iv = self.iv.as_slice().len();
        let u = |v: usize| u32::try_from(v).map_err(|_| CryptoError::InvalidDataLength);
        if self.iv_err {
            return Err(CryptoError::InvalidIvLength);
        }
        let info = &self.info;
        match (self.kind, *info) {
            (OpKind::Cipher, SessionInfo::Cipher { alg, .. }) => {
                if iv != alg.iv_len() {
                    return Err(CryptoError::InvalidIvLength);
                }
                if alg == CipherAlg::AesCbc && src % 16 != 0 {
                    return Err(CryptoError::InvalidDataLength);
                }
                if dst < src {
                    return Err(CryptoError::BufferTooSmall);
                }
                Ok((request::cipher(info, self.session_id, u(iv)?, u(src)?), src))
            }
            (OpKind::Chain, SessionInfo::Chain { cipher, .. }) => {
                let dl = request::digest_len(info);
                if iv != cipher.iv_len() {
                    return Err(CryptoError::InvalidIvLength);
                }
                if cipher == CipherAlg::AesCbc && src % 16 != 0 {
                    return Err(CryptoError::InvalidDataLength);
                }
                if dst < src || len(&b.digest) < dl {
                    return Err(CryptoError::BufferTooSmall);
                }
                if b.expected.as_ref().is_some_and(|e| e.len() != dl) {
                    return Err(CryptoError::InvalidDigestLength);
                }
                let req = request::chain(info, self.session_id, u(iv)?, u(src)?, u(aad)?, u(dl)?);
                Ok((req, src + dl))
            }
            (OpKind::Hash, SessionInfo::Hash { .. } | SessionInfo::Mac { .. }) => {
                let dl = request::digest_len(info);
                if len(&b.digest) < dl {
                    return Err(CryptoError::BufferTooSmall);
                }
                Ok((request::hash(info, self.session_id, u(src)?, u(dl)?), dl))
            }
            (OpKind::Aead, SessionInfo::Aead { alg, dir, tag_len }) => {
                if iv != alg.iv_len() {
                    return Err(CryptoError::InvalidIvLength);
                }
                let out = match dir {
                    Direction::Encrypt => src + tag_len,
                    Direction::Decrypt => src
                        .checked_sub(tag_len)
                        .ok_or(CryptoError::InvalidDataLength)?,
                };
                if dst < out {
                    return Err(CryptoError::BufferTooSmall);
                }
                let req = request::aead(info, self.session_id, u(iv)?, u(aad)?, u(src)?, u(out)?);
                Ok((req, out))
            }
            _ => Err(CryptoError::BadRequest),
        }
    }
}

/// The result of one operation.
#[derive(Debug)]
pub struct Completion {
    /// The operation's user data.
    pub user_data: u64,
    /// `Ok`, or why it failed. [`CryptoError::AuthFailed`] only for a failed verification
    /// (AEAD tag, or a chain's MAC compared by the library); malformed requests are other errors.
    pub result: Result<(), CryptoError>,
    /// Bytes the device reported writing (result bytes plus the status byte).
    pub written: u32,
    /// The buffers, back in the caller's hands.
    pub bufs: OpBufs,
}

/// A push the queue refused before the device saw it; the operation (and its buffers) comes
/// back.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct Rejected {
    /// Why.
    pub error: Error,
    /// The operation, untouched.
    pub op: Op,
}

/// Exclusive handle to one data queue: the asynchronous batch API and the raw API.
///
/// `push` operations (no device notification), `flush` once per batch (one kick at most, and
/// none if EVENT_IDX says the device is still busy), then `poll` or `wait` for
/// [`Completion`]s. Nothing on this path allocates. Give each thread its own `Queue`.
pub struct Queue {
    dev: Arc<Inner>,
    st: Option<QueueState>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("index", &self.st.as_ref().map(|s| s.index))
            .finish()
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        if let Some(st) = self.st.take() {
            self.dev.put_back(st);
        }
    }
}

impl Queue {
    fn st(&mut self) -> &mut QueueState {
        // Invariant: `st` is `Some` from construction until `drop`.
        self.st.as_mut().expect("queue state present until drop")
    }

    /// The data queue index.
    pub fn index(&self) -> u16 {
        self.st.as_ref().map_or(u16::MAX, |s| s.index)
    }

    /// Operations pushed and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.st
            .as_ref()
            .map_or(0, |s| s.slots.len() - s.free_slots.len())
    }

    /// How many more operations can be pushed right now.
    pub fn free_slots(&self) -> usize {
        let Some(s) = self.st.as_ref() else { return 0 };
        let descs = if self.dev.indirect {
            s.vq.num_free() as usize
        } else {
            s.vq.num_free() as usize / 7
        };
        s.free_slots.len().min(descs)
    }

    /// Adds an operation without notifying the device. Lengths are checked here; a bad
    /// operation, a full queue or a buffer from another device is [`Rejected`] with the
    /// operation handed back.
    // The op travels back by value in the error so a rejection costs no allocation.
    #[allow(clippy::result_large_err)]
    pub fn push(&mut self, op: Op) -> std::result::Result<(), Rejected> {
        let indirect = self.dev.indirect;
        let shared = self.dev.shared.clone();
        let st = self.st();
        if st.broken {
            return Err(Rejected {
                error: Error::Protocol("queue broken by an earlier device protocol violation"),
                op,
            });
        }
        let (req, out_len) = match op.encode() {
            Ok(v) => v,
            Err(e) => {
                return Err(Rejected {
                    error: e.into(),
                    op,
                })
            }
        };
        let foreign = [&op.bufs.src, &op.bufs.dst, &op.bufs.aad, &op.bufs.digest]
            .iter()
            .any(|b| {
                b.as_ref()
                    .is_some_and(|b| !Arc::ptr_eq(b.shared(), &shared))
            });
        if foreign {
            return Err(Rejected {
                error: Error::InvalidArgument("DmaBuf from another device"),
                op,
            });
        }
        let Some(&slot) = st.free_slots.last() else {
            return Err(Rejected {
                error: Error::QueueFull,
                op,
            });
        };
        let mem = &shared.mem;
        let soff = st.slots_off + slot as usize * SLOT_SIZE;
        let iv = op.iv.as_slice();
        // SAFETY: the slot is free (not referenced by any chain in flight) and private to this
        // queue; all offsets are inside its SLOT_SIZE bytes.
        unsafe {
            let base = mem.as_ptr().add(soff);
            std::ptr::copy_nonoverlapping(req.as_slice().as_ptr(), base.add(SLOT_REQ), 72);
            std::ptr::copy_nonoverlapping(iv.as_ptr(), base.add(SLOT_IV), iv.len());
            *base.add(SLOT_STATUS) = STATUS_UNSET;
        }
        let b = &op.bufs;
        let g = |o: &Option<DmaBuf>| o.as_ref().map_or((0, 0), |x| (x.gpa(), x.len() as u32));
        let mut d = [RawDesc::default(); 8];
        let mut k = 0;
        let mut add = |desc: RawDesc| {
            if desc.len > 0 {
                d[k] = desc;
                k += 1;
            }
        };
        add(RawDesc::readable(mem.gpa(soff + SLOT_REQ), 72));
        add(RawDesc::readable(mem.gpa(soff + SLOT_IV), iv.len() as u32));
        let (src_gpa, src_len) = g(&b.src);
        add(RawDesc::readable(src_gpa, src_len));
        let (aad_gpa, aad_len) = g(&b.aad);
        add(RawDesc::readable(aad_gpa, aad_len));
        match op.kind {
            OpKind::Hash => {
                add(RawDesc::writable(g(&b.digest).0, out_len as u32));
            }
            OpKind::Chain => {
                add(RawDesc::writable(g(&b.dst).0, src_len));
                add(RawDesc::writable(
                    g(&b.digest).0,
                    (out_len - src_len as usize) as u32,
                ));
            }
            OpKind::Cipher | OpKind::Aead => {
                let dst = if op.in_place { src_gpa } else { g(&b.dst).0 };
                add(RawDesc::writable(dst, out_len as u32));
            }
        }
        add(RawDesc::writable(mem.gpa(soff + SLOT_STATUS), 1));
        let chain = &d[..k];
        let res = if indirect {
            // SAFETY: the slot's table area (128 bytes, 16-aligned) is free and private.
            unsafe {
                st.vq.add_indirect(
                    mem.as_ptr().add(soff + SLOT_TABLE),
                    mem.gpa(soff + SLOT_TABLE),
                    chain,
                    slot as u64,
                )
            }
        } else {
            st.vq.add(chain, slot as u64)
        };
        match res {
            Ok(_) => {
                st.free_slots.pop();
                st.slots[slot as usize] = Some(op);
                Ok(())
            }
            Err(error) => Err(Rejected { error, op }),
        }
    }

    /// Publishes everything pushed since the last flush and kicks the device if it asked.
    pub fn flush(&mut self) -> Result<()> {
        let st = self.st();
        if st.vq.publish() {
            st.notifier.kick()?;
        }
        Ok(())
    }

    /// `push` then `flush`.
    #[allow(clippy::result_large_err)]
    pub fn submit(&mut self, op: Op) -> std::result::Result<(), Rejected> {
        self.push(op)?;
        self.flush().map_err(|error| Rejected {
            error,
            op: Op::empty(),
        })
    }

    /// Moves finished operations into `out` (appending; reuse the `Vec` to avoid allocation)
    /// without blocking. Returns how many. An error means the device broke the protocol.
    pub fn poll(&mut self, out: &mut Vec<Completion>) -> Result<usize> {
        let mem = self.dev.shared.clone();
        let st = self.st();
        let mut n = 0;
        loop {
            let used = match st.vq.reap() {
                Ok(Some(u)) => u,
                Ok(None) => return Ok(n),
                Err(e) => {
                    st.broken = true;
                    return Err(e);
                }
            };
            if used.token & RAW_TOKEN != 0 {
                continue;
            }
            let slot = used.token as usize;
            let Some(op) = st.slots.get_mut(slot).and_then(Option::take) else {
                st.broken = true;
                return Err(Error::Protocol("completion for an empty slot"));
            };
            st.free_slots.push(slot as u16);
            let soff = st.slots_off + slot * SLOT_SIZE;
            // SAFETY: the chain was reaped: the device is done with the slot's status byte.
            let status = unsafe { *mem.mem.as_ptr().add(soff + SLOT_STATUS) };
            let result = if used.len == 0 {
                Err(CryptoError::Internal("device wrote no status"))
            } else {
                status_to_result(status).and_then(|()| verify(&op))
            };
            out.push(Completion {
                user_data: op.user_data,
                result,
                written: used.len,
                bufs: op.bufs,
            });
            n += 1;
        }
    }

    /// Blocks until at least one operation completes (or the timeout passes), then polls.
    pub fn wait(&mut self, out: &mut Vec<Completion>) -> Result<usize> {
        self.wait_for(out, 1)
    }

    /// Blocks until at least `min` operations (at most all those in flight, at least one) have
    /// completed, or the timeout passes, then polls. With interrupts and EVENT_IDX the device
    /// is asked to interrupt only then, so a pipelining caller (e.g. waiting for a batch while
    /// the next one is queued) is woken once per batch rather than once per completion.
    pub fn wait_for(&mut self, out: &mut Vec<Completion>, min: usize) -> Result<usize> {
        let in_flight = self.in_flight();
        if in_flight == 0 {
            return Ok(0);
        }
        // `in_flight` is at most the ring size (≤ 32768), so this fits.
        let min = u16::try_from(min.clamp(1, in_flight)).unwrap_or(u16::MAX);
        let timeout = self.dev.opts.timeout;
        let mode = self.dev.opts.completion;
        let st = self.st();
        wait_used_n(&mut st.vq, &*st.notifier, mode, timeout, min)?;
        self.poll(out)
    }

    /// Runs one operation to completion (the synchronous path). Other operations in flight on
    /// this queue stay in flight, but their completions seen meanwhile are dropped, so use it on
    /// an otherwise idle queue.
    pub fn run(&mut self, op: Op) -> Result<Completion> {
        let ud = op.user_data;
        let tagged = op.with_user_data(u64::MAX);
        self.submit(tagged).map_err(|r| r.error)?;
        let mut out = Vec::with_capacity(4);
        loop {
            out.clear();
            self.wait(&mut out)?;
            if let Some(i) = out.iter().position(|c| c.user_data == u64::MAX) {
                let mut c = out.swap_remove(i);
                c.user_data = ud;
                return Ok(c);
            }
            if self.in_flight() == 0 {
                return Err(Error::Protocol("operation vanished"));
            }
        }
    }

    /// Raw access to this queue (testing / expert API). Fails while crypto operations are in
    /// flight on it.
    pub fn raw(&mut self) -> Result<RawQueue<'_>> {
        if self.in_flight() != 0 {
            return Err(Error::InvalidArgument(
                "raw access with operations in flight",
            ));
        }
        let timeout = self.dev.opts.timeout;
        let mode = self.dev.opts.completion;
        let st = self.st();
        Ok(RawQueue {
            vq: &mut st.vq,
            notifier: &*st.notifier,
            timeout,
            mode,
        })
    }
}

impl Op {
    fn empty() -> Self {
        Self {
            kind: OpKind::Hash,
            info: SessionInfo::Hash {
                alg: dpacc_spec::HashAlg::Sha256,
                digest_len: 0,
            },
            session_id: 0,
            iv: Iv::default(),
            iv_err: false,
            in_place: false,
            user_data: 0,
            bufs: OpBufs::default(),
        }
    }
}

/// After an OK status: the constant-time MAC check of a verifying chain.
fn verify(op: &Op) -> Result<(), CryptoError> {
    if let (Some(exp), Some(dig)) = (&op.bufs.expected, &op.bufs.digest) {
        let n = exp.len();
        if !ct_eq(&dig.as_slice()[..n.min(dig.len())], exp.as_slice()) {
            return Err(CryptoError::AuthFailed);
        }
    }
    Ok(())
}

/// Constant-time equality (time depends on the lengths only).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut acc = 0u8;
    for (x, y) in a.iter().zip(b) {
        acc |= x ^ y;
    }
    std::hint::black_box(acc) == 0
}

/// Raw descriptor-level access to a queue (**testing / expert API**): post any chain (bogus
/// addresses, lengths, orders, flags) and see what the device returns. The used-ring checks
/// still apply, so a misbehaving device is reported, not trusted.
pub struct RawQueue<'a> {
    vq: &'a mut SplitQueue,
    notifier: &'a dyn Notifier,
    timeout: Duration,
    mode: CompletionMode,
}

impl RawQueue<'_> {
    /// Adds `descs` as one chain (`NEXT` links are set by the queue), publishes it and kicks.
    /// Returns the head descriptor index.
    ///
    /// # Safety
    /// Writable descriptors make the device write wherever they point: they must point outside
    /// the shared region, or only at memory nobody reads or writes until the chain is used
    /// (e.g. [`DmaBuf`]s you own and leave alone meanwhile, and never at the rings).
    pub unsafe fn post(&mut self, descs: &[RawDesc]) -> Result<u16> {
        let head = self.vq.add(descs, RAW_TOKEN)?;
        if self.vq.publish() {
            self.notifier.kick()?;
        }
        Ok(head)
    }

    /// Kicks the device unconditionally.
    pub fn kick(&mut self) -> Result<()> {
        self.notifier.kick()
    }

    /// Takes one used entry if there is one.
    pub fn try_reap(&mut self) -> Result<Option<UsedElem>> {
        self.vq.reap()
    }

    /// Waits for the next used entry (within the device's timeout).
    pub fn wait(&mut self) -> Result<UsedElem> {
        loop {
            wait_used(self.vq, self.notifier, self.mode, self.timeout)?;
            if let Some(u) = self.vq.reap()? {
                return Ok(u);
            }
        }
    }

    /// Chains posted and not yet used.
    pub fn in_flight(&self) -> u16 {
        self.vq.in_flight()
    }

    /// Free descriptors.
    pub fn num_free(&self) -> u16 {
        self.vq.num_free()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_compare() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
        assert!(ct_eq(b"", b""));
    }

    #[test]
    fn shared_memory_type_is_send_sync() {
        fn ok<T: Send + Sync>() {}
        ok::<crate::mem::SharedMemory>();
        ok::<CryptoDevice>();
        ok::<Session>();
        fn send<T: Send>() {}
        send::<Queue>();
        send::<DmaBuf>();
    }
}
