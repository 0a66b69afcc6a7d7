//! Data queue processing: parse requests out of descriptor chains, run them through the
//! driver queue in batches (zero copy), write status bytes, complete the chains.
//!
//! Request layouts (virtio 1.2, without `VIRTIO_CRYPTO_F_REVISION_1`); the status byte is the
//! last byte of the writable stream:
//!
//! | opcode | readable | writable |
//! |---|---|---|
//! | cipher | req, iv, src | dst, status |
//! | chain | req, iv, src, aad | dst, hash_result, status |
//! | hash / MAC | req, src | hash_result, status |
//! | AEAD | req, iv, src, aad | dst, status |
//!
//! AEAD encrypt writes ciphertext then tag into dst (`dst_len >= src_len + tag_len`); AEAD
//! decrypt reads ciphertext then tag from src (`src_len >= tag_len`) and writes plaintext.

use std::os::fd::RawFd;
use std::sync::Arc;

use dpacc_spec::virtio_crypto::{self as vc, status, DataRequest, DATA_REQ_SIZE};
use dpacc_spec::{
    ChainRanges, Completion, CryptoError, CryptoOp, CryptoQueue, Direction, Iv, Seg, SessionHandle,
    SessionInfo,
};
use tracing::{debug, warn};
use virtio_queue::{Queue, QueueT};
use vm_memory::{ByteValued, GuestMemoryMmap};

use super::control::Control;
use super::sessions::{OpenSession, SessionTable, Table};
use super::worker::{Notify, Processor};
use crate::split_ring::SplitRing;
use crate::virtq::{read_guest, ChainBufs, FastMem, MAX_CHAIN_DESCS};
use dpacc_spec::in_band;

/// Most chains taken from the ring per batch.
pub(crate) const BATCH: usize = 64;
/// How many chains ahead of its parse a request header (and IV) is prefetched: the lines were
/// written on the driver's core, and one chain (~150 ns at 64 B) did not hide the transfer.
const HEADER_AHEAD: u16 = 2;
/// A batch also ends once its chains carry this many bytes (readable plus writable): large
/// requests are completed (and the frontend signalled) in smaller groups, so the frontend can
/// reap and refill while the rest of the ring is processed instead of waiting for a whole ring.
/// 1 MiB is 32 requests of 16 KiB (a `dpacc bench` batch): at 256 KiB a batch held 8 of them,
/// and its close (the store drain at the first locked instruction, the fence) was paid every
/// 8 operations; 1 MiB measured 1.03-1.06x the device rate at 16 KiB, 512 KiB level with it
/// (docs/performance.md, "Issue 15, twelfth pass").
pub(crate) const BATCH_BYTES: usize = 1 << 20;
/// Segment pool per worker: room for one worst-case chain plus a batch of ordinary ones.
const POOL_SEGS: usize = 2 * MAX_CHAIN_DESCS + BATCH * 8;
/// Segments one chain can need beyond its descriptor count (one split per carve).
const CARVE_SLACK: usize = 8;

type Range = (usize, usize);

/// A completion slot no operation of ours can match (`user_data` out of every batch's range).
const NO_COMPLETION: Completion = Completion {
    user_data: u64::MAX,
    result: Ok(()),
};

/// One parsed request of the current batch.
#[derive(Default)]
struct Pending {
    head: u16,
    /// Where the status byte goes (None: no writable byte at all).
    status_at: Option<Seg<'static>>,
    used_len: u32,
    /// `status::OK` while the operation is to be run; otherwise the final status.
    status: u8,
    /// Bytes of the chain's buffers (readable and writable).
    bytes: usize,
    /// Index of the operation's session in the batch's [`BatchSessions`] (also when the
    /// request failed after its session was found: it counts as that session's error).
    session: Option<u8>,
    iv: IvWords,
    src: Range,
    dst: Range,
    aad: Range,
    digest: Range,
    chain: ChainRanges,
}

impl Pending {
    /// Back to the state of a request not yet parsed, field by field: assigning a whole
    /// `Pending::default()` built it on the stack and copied it with loads wider than the stores
    /// that wrote it, which cannot be forwarded and stalled every request (perf, 64 B).
    #[inline(always)]
    fn reset(&mut self, head: u16) {
        self.head = head;
        self.status_at = None;
        self.used_len = 0;
        self.status = status::OK;
        self.bytes = 0;
        self.session = None;
        self.iv = IvWords::default();
        self.src = (0, 0);
        self.dst = (0, 0);
        self.aad = (0, 0);
        self.digest = (0, 0);
        self.chain = ChainRanges::default();
    }
}

/// The sessions the operations of one batch use, each handle cloned once per batch (not once
/// per operation: a reference count's atomic add and sub per 64-byte request cost more than
/// the rest of its parsing), with its key-free summary and what the batch did with it (added
/// to the session's counters once, when the batch ends).
#[derive(Default)]
struct BatchSessions {
    list: Vec<BatchSession>,
}

struct BatchSession {
    id: u64,
    session: Arc<OpenSession>,
    info: SessionInfo,
    ok: u64,
    errors: u64,
    bytes: u64,
}

impl BatchSessions {
    fn with_capacity(n: usize) -> Self {
        Self {
            list: Vec::with_capacity(n),
        }
    }

    /// The index of session `id` (open in `table`, which is always asked: a session closed
    /// in-band earlier in the batch is gone) and its summary, adding it on first use.
    /// The session's index in the batch and its info, by reference: a copy of the enum went
    /// through the stack in 8- and 4-byte stores and was read back at other offsets and widths,
    /// which the store buffer cannot forward (~2 % of the worker at 64 B).
    fn get(&mut self, table: &Table, id: u64) -> Option<(u8, &SessionInfo)> {
        let open = table.get(id)?;
        if let Some(i) = self.list.iter().rposition(|e| e.id == id) {
            return Some((i as u8, &self.list[i].info));
        }
        // At most one entry per operation of the batch (BATCH <= 255); never grows.
        if self.list.len() == self.list.capacity() || self.list.len() > usize::from(u8::MAX) {
            return None;
        }
        let info = open.handle.info();
        self.list.push(BatchSession {
            id,
            session: open.clone(),
            info,
            ok: 0,
            errors: 0,
            bytes: 0,
        });
        let i = self.list.len() - 1;
        Some((i as u8, &self.list[i].info))
    }

    fn handle(&self, i: u8) -> Option<&SessionHandle> {
        self.list.get(usize::from(i)).map(|e| &e.session.handle)
    }

    /// Counts a completed request (`ok` or not, `bytes` of buffers) against session `i`.
    fn count(&mut self, i: u8, ok: bool, bytes: usize) {
        if let Some(e) = self.list.get_mut(usize::from(i)) {
            e.ok += u64::from(ok);
            e.errors += u64::from(!ok);
            e.bytes += bytes as u64;
        }
    }

    /// Adds what the batch did to each session's counters (once per session) and lets go of
    /// the handles.
    fn finish(&mut self) {
        for e in self.list.drain(..) {
            e.session.counters.add(e.ok, e.errors, e.bytes);
        }
    }
}

/// A data queue's processing state. All buffers are sized once, at start.
pub(crate) struct DataPath {
    driver: Box<dyn CryptoQueue>,
    sessions: Arc<SessionTable>,
    batch_sessions: BatchSessions,
    chain: ChainBufs,
    pending: Vec<Pending>,
    pool: Vec<Seg<'static>>,
    ops: Vec<CryptoOp<'static>>,
    completions: Vec<Completion>,
    results: Vec<u8>,
    /// In-band control requests (`dpacc_spec::in_band`), when enabled.
    control: Option<Control>,
    /// Per pending request: its operation was taken by the driver and has not completed.
    in_flight: Vec<bool>,
    /// Where this queue counts its requests for the operator.
    counters: Option<(Arc<super::counters::CryptoCounters>, usize)>,
}

impl DataPath {
    /// A data path submitting to `driver`, resolving sessions in `sessions`.
    pub(crate) fn new(driver: Box<dyn CryptoQueue>, sessions: Arc<SessionTable>) -> Self {
        Self {
            driver,
            sessions,
            batch_sessions: BatchSessions::with_capacity(BATCH),
            chain: ChainBufs::new(),
            pending: (0..BATCH).map(|_| Pending::default()).collect(),
            pool: Vec::with_capacity(POOL_SEGS),
            ops: Vec::with_capacity(BATCH),
            completions: vec![NO_COMPLETION; BATCH],
            results: vec![status::OK; BATCH],
            control: None,
            in_flight: vec![false; BATCH],
            counters: None,
        }
    }

    /// Counts requests in `counters`, as data queue `index`.
    pub(crate) fn with_counters(
        mut self,
        counters: Arc<super::counters::CryptoCounters>,
        index: usize,
    ) -> Self {
        self.counters = Some((counters, index));
        self
    }

    /// Also serves in-band control requests (`dpacc_spec::in_band`) through `control`.
    pub(crate) fn with_in_band_control(mut self, control: Control) -> Self {
        self.control = Some(control);
        self
    }

    /// Takes up to [`BATCH`] chains, runs them, completes them. Returns chains completed.
    pub(crate) fn run_batch(
        &mut self,
        q: &mut Queue,
        mem: &FastMem<'_, GuestMemoryMmap>,
        notify: &Notify,
    ) -> usize {
        self.pool.clear();
        let Some(mut ring) = SplitRing::open(q, mem) else {
            return 0;
        };
        let avail = ring.pending().min(BATCH as u16);
        // The descriptors and request headers of a batch were written on the driver's core:
        // start loading all of them before the first walk (head descriptors, then the indirect
        // tables), and each request header [`HEADER_AHEAD`] chains ahead of its parse.
        ring.prefetch(avail);
        ring.prefetch_tables(avail);
        // The used elements and index this batch writes at its end, for write: the driver's
        // core polls them, and every locked instruction after the writes (the session counters,
        // the close's fence) waited for their lines.
        ring.prefetch_used(0, avail, true);
        for k in 0..HEADER_AHEAD {
            ring.prefetch_first_buffer(k);
        }
        let mut n = 0;
        let mut bytes = 0usize;
        {
            let mut table = self.sessions.read();
            while n < BATCH
                && bytes < BATCH_BYTES
                && self.pool.capacity() - self.pool.len() >= MAX_CHAIN_DESCS + CARVE_SLACK
            {
                let Some(head) = ring.pop_head() else {
                    break;
                };
                ring.prefetch_first_buffer(HEADER_AHEAD - 1);
                let p = &mut self.pending[n];
                p.reset(head);
                match ring.walk(head, &mut self.chain) {
                    Ok(()) => {
                        p.bytes = self.chain.readable_len() + self.chain.writable_len();
                        bytes += p.bytes;
                        // The request header, read once (a data request and a control request
                        // have the same size and the opcode in the same place).
                        let mut req = DataRequest::default();
                        let has_req = read_request(&self.chain, &mut req);
                        let opcode = req.header.opcode.to_native();
                        match self.control.as_mut() {
                            Some(ctrl) if has_req && in_band::is_control(opcode) => {
                                // An in-band control request runs now, without the table's read
                                // lock (creating a session takes the write lock); it completes
                                // with this batch, in ring order, without a status write below.
                                drop(table);
                                p.head = self.chain.head();
                                p.used_len = ctrl.handle(&self.chain);
                                table = self.sessions.read();
                            }
                            _ => parse(
                                &self.chain,
                                has_req.then_some(&req),
                                &mut self.pool,
                                &table,
                                &mut self.batch_sessions,
                                p,
                            ),
                        }
                    }
                    Err(e) => {
                        debug!("chain {head}: {e}; completed without status");
                        p.head = head;
                    }
                }
                n += 1;
            }
        }
        if n == 0 {
            ring.close(q);
            return 0;
        }
        self.submit(n);
        // Requests with a status byte count as operations (OK) or errors, for the queue and for
        // the session they named (when it was found).
        let (mut ok, mut errors) = (0u64, 0u64);
        for p in &self.pending[..n] {
            if p.status_at.is_none() {
                continue;
            }
            let good = p.status == status::OK;
            ok += u64::from(good);
            errors += u64::from(!good);
            if let Some(i) = p.session {
                self.batch_sessions.count(i, good, p.bytes);
            }
        }
        if let Some(c) = self.counters.as_ref().and_then(|(c, i)| c.queues.get(*i)) {
            c.count(ok, errors, bytes as u64);
        }
        for p in &mut self.pending[..n] {
            if let Some(s) = p.status_at {
                // SAFETY: `s` is the one-byte, device-writable status location inside guest
                // memory that `mem` (held by the caller) keeps mapped.
                unsafe { std::ptr::write_volatile(s.ptr(), p.status) };
            }
            ring.put_used(p.head, p.used_len);
        }
        self.batch_sessions.finish();
        notify.signal(ring.close(q));
        n
    }

    /// Runs the pending requests whose status is still OK through the driver.
    fn submit(&mut self, n: usize) {
        let Self {
            driver,
            batch_sessions,
            pending,
            pool,
            ops,
            completions,
            results,
            in_flight,
            ..
        } = self;
        let mut ops_vec = recycle(std::mem::take(ops));
        results[..n].fill(status::ERR);
        for (i, p) in pending[..n].iter().enumerate() {
            if p.status != status::OK || p.status_at.is_none() {
                continue;
            }
            let Some(session) = p.session.and_then(|i| batch_sessions.handle(i)) else {
                continue;
            };
            let Some(iv) = p.iv.get() else {
                continue;
            };
            let sl = |r: Range| &pool[r.0..r.1];
            ops_vec.push(CryptoOp {
                session,
                iv,
                src: sl(p.src),
                dst: sl(p.dst),
                aad: sl(p.aad),
                digest: sl(p.digest),
                chain: p.chain,
                user_data: i as u64,
            });
        }
        let total = ops_vec.len();
        // Nothing the driver returns is trusted: counts are clamped to what was offered, and a
        // batch ends only when every operation taken has completed exactly once (by its own
        // user_data), so no segment goes back to the guest (or out of the memory snapshot)
        // while the driver may still write through it.
        in_flight[..n].fill(false);
        let (mut next, mut outstanding) = (0usize, 0usize);
        while next < total || outstanding > 0 {
            let mut taken = 0;
            if next < total {
                // SAFETY: every segment points into guest memory kept mapped by the caller's
                // memory snapshot, and into descriptors the guest handed to the device until we
                // put them on the used ring, which happens only after every operation taken has
                // completed (this loop). Per docs/decisions/0005-guest-memory-access.md the
                // guest may still write to them meanwhile; drivers take no decision from them.
                taken = unsafe { driver.enqueue(&ops_vec[next..]) }.min(total - next);
                for op in &ops_vec[next..next + taken] {
                    in_flight[op.user_data as usize] = true;
                }
                next += taken;
                outstanding += taken;
            }
            let got = driver.dequeue(completions).min(completions.len());
            for c in &completions[..got] {
                let i = usize::try_from(c.user_data).unwrap_or(usize::MAX);
                match in_flight.get_mut(i) {
                    Some(f) if i < n && *f => {
                        *f = false;
                        outstanding -= 1;
                        results[i] = match c.result {
                            Ok(()) => status::OK,
                            Err(e) => e.status(),
                        };
                    }
                    _ if c.user_data == NO_COMPLETION.user_data => {}
                    _ => warn!(
                        "driver returned an unknown or repeated completion {}",
                        c.user_data
                    ),
                }
            }
            // What a driver claims beyond what it wrote must never look like a completion.
            completions[..got].fill(NO_COMPLETION);
            if got == 0 && (taken == 0 || next == total) {
                wait_for_driver(driver.notifier());
            }
        }
        *ops = recycle(ops_vec);
        for (p, r) in pending[..n].iter_mut().zip(results.iter()) {
            if p.status == status::OK {
                p.status = *r;
            }
        }
    }
}

impl Processor for DataPath {
    fn process(
        &mut self,
        q: &mut Queue,
        mem: &FastMem<'_, GuestMemoryMmap>,
        notify: &Notify,
    ) -> usize {
        let mut total = 0;
        loop {
            // A batch may end early on its byte budget: go on until the ring is empty, or a
            // ring's worth is done (a ring that never runs dry is the worker's to pace).
            let n = self.run_batch(q, mem, notify);
            total += n;
            if n == 0 || total >= usize::from(q.size()) {
                return total;
            }
        }
    }
}

/// Waits briefly for an asynchronous driver's completions. The notifier is an eventfd the driver
/// owns and lends as a raw descriptor (`CryptoQueue::notifier`), so it is polled and read
/// directly rather than through `vmm-sys-util`'s `EventFd`, which would take ownership.
fn wait_for_driver(notifier: Option<RawFd>) {
    match notifier {
        Some(fd) => {
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one live pollfd; a short timeout bounds the wait.
            unsafe { libc::poll(&mut pfd, 1, 10) };
            if pfd.revents != 0 {
                let mut v = [0u8; 8];
                // SAFETY: reading the 8-byte eventfd counter into a live buffer.
                unsafe { libc::read(fd, v.as_mut_ptr().cast(), 8) };
            }
        }
        None => std::thread::yield_now(),
    }
}

/// Reuses an (empty) op vector's allocation under another lifetime.
fn recycle<'a, 'b>(v: Vec<CryptoOp<'a>>) -> Vec<CryptoOp<'b>> {
    let mut v = std::mem::ManuallyDrop::new(v);
    v.clear();
    let (ptr, cap) = (v.as_mut_ptr(), v.capacity());
    // SAFETY: the vector is empty, so no value of the old lifetime survives; `CryptoOp<'a>` and
    // `CryptoOp<'b>` differ only in a lifetime and have the same layout; the allocation is
    // handed over exactly once (the original is never dropped).
    unsafe { Vec::from_raw_parts(ptr.cast::<CryptoOp<'b>>(), 0, cap) }
}

fn le(v: vm_memory::endian::Le32) -> usize {
    v.to_native() as usize
}

fn sum(parts: &[usize]) -> Result<usize, CryptoError> {
    parts
        .iter()
        .try_fold(0usize, |a, &b| a.checked_add(b))
        .ok_or(CryptoError::BadRequest)
}

/// Parses the walked chain into `p`: the status location, and either a runnable operation
/// (`p.status == OK`) or the error status to report.
fn parse(
    c: &ChainBufs,
    req: Option<&DataRequest>,
    pool: &mut Vec<Seg<'static>>,
    table: &Table,
    sessions: &mut BatchSessions,
    p: &mut Pending,
) {
    p.head = c.head();
    let wl = c.writable_len();
    if wl == 0 {
        debug!("chain {}: no writable byte for the status", c.head());
        return;
    }
    let mark = pool.len();
    // The status byte is the last byte of the last writable segment (segments are never
    // empty: the walk skips zero-length descriptors).
    let Some(last) = c.last_writable().filter(|s| !s.is_empty()) else {
        return;
    };
    // SAFETY: `len - 1` is inside the segment, which is mapped guest memory (module docs).
    p.status_at = Some(unsafe { Seg::from_raw(last.ptr().add(last.len() - 1), 1) });
    p.used_len = wl as u32;
    let parsed = match req {
        Some(req) => parse_op(c, req, pool, table, sessions, p),
        None => Err(CryptoError::BadRequest),
    };
    p.status = match parsed {
        Ok(()) => status::OK,
        Err(e) => {
            pool.truncate(mark);
            e.status()
        }
    };
}

#[inline(always)]
fn carve_r(
    c: &ChainBufs,
    pool: &mut Vec<Seg<'static>>,
    off: usize,
    len: usize,
) -> Result<Range, CryptoError> {
    let s = pool.len();
    c.carve_readable(off, len, pool)
        .map_err(|_| CryptoError::BadRequest)?;
    Ok((s, pool.len()))
}

#[inline(always)]
fn carve_w(
    c: &ChainBufs,
    pool: &mut Vec<Seg<'static>>,
    off: usize,
    len: usize,
) -> Result<Range, CryptoError> {
    let s = pool.len();
    c.carve_writable(off, len, pool)
        .map_err(|_| CryptoError::BadRequest)?;
    Ok((s, pool.len()))
}

/// Copies the request header out of the chain's readable stream (once: it is then used from
/// the copy only); false if the stream is shorter. The usual request has it at the start of
/// its first buffer, copied with a fixed length (a few vector moves, no call).
#[inline(always)]
fn read_request(c: &ChainBufs, req: &mut DataRequest) -> bool {
    if c.readable_len() < DATA_REQ_SIZE {
        return false;
    }
    match c.first_readable() {
        Some(first) if first.len() >= DATA_REQ_SIZE => {
            let out: &mut [u8; DATA_REQ_SIZE] = req
                .as_mut_slice()
                .try_into()
                .expect("DataRequest is DATA_REQ_SIZE bytes");
            // SAFETY: the first segment's `DATA_REQ_SIZE` bytes are mapped guest memory (module
            // docs of `virtq`); `out` is ours.
            unsafe { read_guest(first.ptr(), out) };
            true
        }
        _ => c.read(0, req.as_mut_slice()).is_ok(),
    }
}

/// A request's IV as the parse reads it: two little-endian words (its bytes in order, zero-padded)
/// and a length. The `Iv` the driver takes is built from them only when the operation is
/// submitted, after the whole batch is parsed: built during the parse, its 17 unaligned bytes
/// went through the stack in 8- and 4-byte stores and were read back at other offsets and
/// widths right away, which the store buffer cannot forward (~7 % of the parse at 64 B).
#[derive(Clone, Copy, Default)]
struct IvWords {
    words: [u64; 2],
    len: u8,
}

impl IvWords {
    /// The driver's `Iv` (None if longer than an `Iv` holds, which `read_iv` never makes).
    /// Built from the words as words: through a byte array and `Iv::new`, LLVM copied the IV
    /// in overlapping 4-byte pieces and read them back at once, two store-forwarding waits per
    /// request (~13 % of `process` at 64 B; docs/performance.md, "tenth pass").
    #[inline(always)]
    fn get(&self) -> Option<Iv> {
        Iv::from_words(self.words, usize::from(self.len)).ok()
    }
}

#[inline(always)]
fn read_iv(c: &ChainBufs, off: usize, len: usize, want: usize) -> Result<IvWords, CryptoError> {
    if len != want || len > Iv::MAX {
        return Err(CryptoError::InvalidIvLength);
    }
    // The usual IV (12 or 16 bytes) follows the header in the first buffer: read with
    // fixed-size loads straight into the words (no copy through the stack).
    let first = c.first_readable().filter(|f| off + len <= f.len());
    let words = match (first, len) {
        (Some(f), 12) => {
            // SAFETY: `off..off + 12` lies inside the first segment, mapped guest memory
            // (module docs of `virtq`); unaligned loads, read once.
            unsafe {
                let p = f.ptr().add(off);
                [
                    u64::from_le(std::ptr::read_unaligned(p.cast::<u64>())),
                    u64::from(u32::from_le(std::ptr::read_unaligned(
                        p.add(8).cast::<u32>(),
                    ))),
                ]
            }
        }
        (Some(f), 16) => {
            // SAFETY: as above, 16 bytes.
            unsafe {
                let p = f.ptr().add(off).cast::<u64>();
                [
                    u64::from_le(std::ptr::read_unaligned(p)),
                    u64::from_le(std::ptr::read_unaligned(p.add(1))),
                ]
            }
        }
        _ => {
            let mut b = [0u8; Iv::MAX];
            c.read(off, &mut b[..len])
                .map_err(|_| CryptoError::BadRequest)?;
            let (lo, hi) = b.split_at(8);
            [
                u64::from_le_bytes(lo.try_into().map_err(|_| CryptoError::BadRequest)?),
                u64::from_le_bytes(hi.try_into().map_err(|_| CryptoError::BadRequest)?),
            ]
        }
    };
    Ok(IvWords {
        words,
        len: len as u8,
    })
}

fn parse_op(
    c: &ChainBufs,
    req: &DataRequest,
    pool: &mut Vec<Seg<'static>>,
    table: &Table,
    sessions: &mut BatchSessions,
    p: &mut Pending,
) -> Result<(), CryptoError> {
    let rl = c.readable_len();
    // Writable bytes before the status byte.
    let wl = c.writable_len() - 1;
    if rl < DATA_REQ_SIZE {
        return Err(CryptoError::BadRequest);
    }
    let opcode = req.header.opcode.to_native();
    let want_dir = match opcode {
        vc::CIPHER_ENCRYPT | vc::AEAD_ENCRYPT => Some(Direction::Encrypt),
        vc::CIPHER_DECRYPT | vc::AEAD_DECRYPT => Some(Direction::Decrypt),
        vc::HASH | vc::MAC => None,
        _ => return Err(CryptoError::Unsupported),
    };
    let (session, info) = sessions
        .get(table, req.header.session_id.to_native())
        .ok_or(CryptoError::InvalidSession)?;
    p.session = Some(session);
    let off = DATA_REQ_SIZE;
    let dir_ok = |d: Direction| Some(d) == want_dir;
    match opcode {
        vc::CIPHER_ENCRYPT | vc::CIPHER_DECRYPT => {
            let sym: vc::SymDataReq = req.body();
            match sym.op_type.to_native() {
                vc::SYM_OP_CIPHER => {
                    let SessionInfo::Cipher { alg, dir } = *info else {
                        return Err(CryptoError::BadRequest);
                    };
                    if !dir_ok(dir) {
                        return Err(CryptoError::BadRequest);
                    }
                    let para: vc::CipherDataPara = sym.para();
                    let (iv_len, src_len, dst_len) = (
                        le(para.iv_len),
                        le(para.src_data_len),
                        le(para.dst_data_len),
                    );
                    if sum(&[off, iv_len, src_len])? > rl || dst_len > wl || dst_len < src_len {
                        return Err(CryptoError::BadRequest);
                    }
                    p.iv = read_iv(c, off, iv_len, alg.iv_len())?;
                    p.src = carve_r(c, pool, off + iv_len, src_len)?;
                    p.dst = carve_w(c, pool, 0, src_len)?;
                }
                vc::SYM_OP_ALGORITHM_CHAINING => {
                    let SessionInfo::Chain {
                        cipher,
                        dir,
                        digest_len,
                        ..
                    } = *info
                    else {
                        return Err(CryptoError::BadRequest);
                    };
                    if !dir_ok(dir) {
                        return Err(CryptoError::BadRequest);
                    }
                    let para: vc::AlgChainDataPara = sym.para();
                    let iv_len = le(para.iv_len);
                    let src_len = le(para.src_data_len);
                    let dst_len = le(para.dst_data_len);
                    let aad_len = le(para.aad_len);
                    let hash_len = le(para.hash_result_len);
                    let ranges = ChainRanges {
                        cipher_offset: para.cipher_start_src_offset.to_native(),
                        cipher_len: para.len_to_cipher.to_native(),
                        auth_offset: para.hash_start_src_offset.to_native(),
                        auth_len: para.len_to_hash.to_native(),
                    };
                    let within = |o: u32, l: u32| {
                        (o as usize)
                            .checked_add(l as usize)
                            .is_some_and(|e| e <= src_len)
                    };
                    if sum(&[off, iv_len, src_len, aad_len])? > rl
                        || sum(&[dst_len, hash_len])? > wl
                        || dst_len < src_len
                        || hash_len != digest_len
                        || !within(ranges.cipher_offset, ranges.cipher_len)
                        || !within(ranges.auth_offset, ranges.auth_len)
                    {
                        return Err(CryptoError::BadRequest);
                    }
                    p.iv = read_iv(c, off, iv_len, cipher.iv_len())?;
                    p.src = carve_r(c, pool, off + iv_len, src_len)?;
                    p.aad = carve_r(c, pool, off + iv_len + src_len, aad_len)?;
                    p.dst = carve_w(c, pool, 0, src_len)?;
                    p.digest = carve_w(c, pool, dst_len, hash_len)?;
                    p.chain = ranges;
                }
                _ => return Err(CryptoError::Unsupported),
            }
        }
        vc::HASH | vc::MAC => {
            let digest_len = match (opcode, info) {
                (vc::HASH, SessionInfo::Hash { digest_len, .. }) => *digest_len,
                (vc::MAC, SessionInfo::Mac { digest_len, .. }) => *digest_len,
                _ => return Err(CryptoError::BadRequest),
            };
            let para: vc::HashDataPara = req.body();
            let (src_len, hash_len) = (le(para.src_data_len), le(para.hash_result_len));
            if sum(&[off, src_len])? > rl || hash_len > wl || hash_len != digest_len {
                return Err(CryptoError::BadRequest);
            }
            p.src = carve_r(c, pool, off, src_len)?;
            p.digest = carve_w(c, pool, 0, hash_len)?;
        }
        _ => {
            // AEAD_ENCRYPT / AEAD_DECRYPT.
            let SessionInfo::Aead { alg, dir, tag_len } = *info else {
                return Err(CryptoError::BadRequest);
            };
            if !dir_ok(dir) {
                return Err(CryptoError::BadRequest);
            }
            let para: vc::AeadDataPara = req.body();
            let iv_len = le(para.iv_len);
            let aad_len = le(para.aad_len);
            let src_len = le(para.src_data_len);
            let dst_len = le(para.dst_data_len);
            if sum(&[off, iv_len, src_len, aad_len])? > rl || dst_len > wl {
                return Err(CryptoError::BadRequest);
            }
            p.iv = read_iv(c, off, iv_len, alg.iv_len())?;
            let data = off + iv_len;
            if dir == Direction::Encrypt {
                if dst_len < sum(&[src_len, tag_len])? {
                    return Err(CryptoError::BadRequest);
                }
                p.src = carve_r(c, pool, data, src_len)?;
                p.dst = carve_w(c, pool, 0, src_len)?;
                p.digest = carve_w(c, pool, src_len, tag_len)?;
            } else {
                let ct = src_len
                    .checked_sub(tag_len)
                    .ok_or(CryptoError::BadRequest)?;
                if dst_len < ct {
                    return Err(CryptoError::BadRequest);
                }
                p.src = carve_r(c, pool, data, ct)?;
                p.digest = carve_r(c, pool, data + ct, tag_len)?;
                p.dst = carve_w(c, pool, 0, ct)?;
            }
            p.aad = carve_r(c, pool, data + src_len, aad_len)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::test_driver::{LyingQueue, XorDriver};
    use dpacc_spec::{CipherAlg, CryptoDriver, HashAlg, SessionParams};
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    use crate::virtq::{F_NEXT, F_WRITE};
    const IN: u64 = 0x10_0000;
    const OUT: u64 = 0x18_0000;

    struct Rig {
        mem: GuestMemoryMmap,
        sessions: Arc<SessionTable>,
    }

    impl Rig {
        fn new() -> Self {
            Self {
                mem: GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap(),
                sessions: Arc::new(SessionTable::new(8)),
            }
        }

        fn session(&self, p: SessionParams<'_>) -> u64 {
            self.sessions.create(&XorDriver, &p).unwrap()
        }

        /// Posts one chain: readable `input` (split into `splits`), `out_len` writable bytes
        /// (split in two when possible), runs one batch, returns (used len, writable bytes).
        fn run(&self, input: &[u8], out_len: u32) -> (u32, Vec<u8>) {
            self.run_with(input, out_len, XorDriver.open_queue(64).unwrap())
        }

        /// As `run`, on driver queue `dq`.
        fn run_with(&self, input: &[u8], out_len: u32, dq: Box<dyn CryptoQueue>) -> (u32, Vec<u8>) {
            self.run_layout(input, out_len, DATA_REQ_SIZE, false, dq)
        }

        /// As `run_with`, with the first readable descriptor `first` bytes long (the rest of
        /// the input in a second one) and, with `one_out`, all writable bytes (destination and
        /// status) in one descriptor.
        fn run_layout(
            &self,
            input: &[u8],
            out_len: u32,
            first: usize,
            one_out: bool,
            dq: Box<dyn CryptoQueue>,
        ) -> (u32, Vec<u8>) {
            self.mem.write_slice(input, GuestAddress(IN)).unwrap();
            self.mem
                .write_slice(&vec![0xee; out_len as usize], GuestAddress(OUT))
                .unwrap();
            let mut descs = Vec::new();
            // Readable: the first `first` bytes, then the rest.
            let first = input.len().min(first) as u32;
            descs.push((IN, first, 0));
            if input.len() as u32 > first {
                descs.push((IN + u64::from(first), input.len() as u32 - first, 0));
            }
            if out_len > 1 && !one_out {
                descs.push((OUT, out_len - 1, F_WRITE));
                descs.push((OUT + u64::from(out_len - 1), 1, F_WRITE));
            } else if out_len > 0 {
                descs.push((OUT, out_len, F_WRITE));
            }
            let raw: Vec<RawDescriptor> = descs
                .iter()
                .enumerate()
                .map(|(i, &(a, l, f))| {
                    let last = i + 1 == descs.len();
                    let flags = if last { f } else { f | F_NEXT };
                    RawDescriptor::from(Descriptor::new(a, l, flags, i as u16 + 1))
                })
                .collect();
            let vq = MockSplitQueue::new(&self.mem, 16);
            vq.add_desc_chains(&raw, 0).unwrap();
            let mut q: Queue = vq.create_queue().unwrap();
            let mut dp = DataPath::new(dq, self.sessions.clone());
            let fast = FastMem::new(&self.mem);
            let n = dp.run_batch(&mut q, &fast, &Notify::new(None));
            assert_eq!(n, 1);
            let used = vq.used().ring().ref_at(0).unwrap().load();
            let mut out = vec![0u8; out_len as usize];
            self.mem.read_slice(&mut out, GuestAddress(OUT)).unwrap();
            (used.len(), out)
        }
    }

    fn cipher_req(opcode: u32, sid: u64, iv_len: u32, src_len: u32, dst_len: u32) -> Vec<u8> {
        let mut req = DataRequest::default();
        req.header.opcode = opcode.into();
        req.header.session_id = sid.into();
        let mut sym = vc::SymDataReq::default();
        sym.set_para(&vc::CipherDataPara {
            iv_len: iv_len.into(),
            src_data_len: src_len.into(),
            dst_data_len: dst_len.into(),
            padding: 0.into(),
        });
        sym.op_type = vc::SYM_OP_CIPHER.into();
        req.set_body(&sym);
        req.as_slice().to_vec()
    }

    fn cbc(rig: &Rig, dir: Direction) -> u64 {
        rig.session(SessionParams::Cipher {
            alg: CipherAlg::AesCbc,
            key: &[0x0f; 16],
            dir,
        })
    }

    #[test]
    fn cipher_request_runs_zero_copy() {
        let rig = Rig::new();
        let sid = cbc(&rig, Direction::Encrypt);
        let mut input = cipher_req(vc::CIPHER_ENCRYPT, sid, 16, 32, 32);
        input.extend_from_slice(&[0x30; 16]); // iv
        input.extend((0..32u8).collect::<Vec<_>>());
        let (used, out) = rig.run(&input, 33);
        assert_eq!(used, 33);
        assert_eq!(out[32], status::OK);
        let want: Vec<u8> = (0..32u8).map(|b| b ^ 0x0f ^ 0x30).collect();
        assert_eq!(&out[..32], &want[..]);
    }

    /// A batch ends once its chains carry `BATCH_BYTES` (readable plus writable): large
    /// requests complete in groups, and the next batch takes the rest, in ring order.
    #[test]
    fn a_batch_ends_on_its_byte_budget() {
        let rig = Rig::new();
        let sid = cbc(&rig, Direction::Encrypt);
        let len = 128u32 << 10;
        let mut input = cipher_req(vc::CIPHER_ENCRYPT, sid, 16, len, len);
        input.extend_from_slice(&[0x30; 16]);
        input.resize(input.len() + len as usize, 0x5a);
        rig.mem.write_slice(&input, GuestAddress(IN)).unwrap();
        // Every chain reads the same request and writes the same destination and status byte.
        let chain = [
            (IN, input.len() as u32, F_NEXT),
            (OUT, len, F_WRITE | F_NEXT),
            (OUT + u64::from(len), 1, F_WRITE),
        ];
        let per_chain = input.len() + len as usize + 1;
        let first = BATCH_BYTES.div_ceil(per_chain);
        let posted = first + 2;
        let raw: Vec<RawDescriptor> = (0..posted)
            .flat_map(|c| {
                chain.iter().enumerate().map(move |(k, &(a, l, f))| {
                    let next = (c * chain.len() + k + 1) as u16;
                    RawDescriptor::from(Descriptor::new(a, l, f, next))
                })
            })
            .collect();
        let vq = MockSplitQueue::new(&rig.mem, 32);
        vq.add_desc_chains(&raw, 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let mut dp = DataPath::new(XorDriver.open_queue(64).unwrap(), rig.sessions.clone());
        let fast = FastMem::new(&rig.mem);
        assert_eq!(dp.run_batch(&mut q, &fast, &Notify::new(None)), first);
        assert_eq!(vq.used().idx().load(), first as u16);
        assert_eq!(
            dp.run_batch(&mut q, &fast, &Notify::new(None)),
            posted - first
        );
        assert_eq!(vq.used().idx().load(), posted as u16);
        for c in 0..posted {
            let used = vq.used().ring().ref_at(c).unwrap().load();
            assert_eq!(used.id(), (c * chain.len()) as u32);
            assert_eq!(used.len(), len + 1);
        }
        let mut st = [0u8];
        rig.mem
            .read_slice(&mut st, GuestAddress(OUT + u64::from(len)))
            .unwrap();
        assert_eq!(st[0], status::OK);
    }

    /// A driver whose counts lie (it claims to take more than offered and to return more
    /// completions than it wrote, repeats one and invents another): the batch still ends only
    /// when the operation really completed, with its result, and nothing panics.
    #[test]
    fn driver_counts_are_not_trusted() {
        let rig = Rig::new();
        let sid = cbc(&rig, Direction::Encrypt);
        let mut input = cipher_req(vc::CIPHER_ENCRYPT, sid, 16, 32, 32);
        input.extend_from_slice(&[0x30; 16]);
        input.extend((0..32u8).collect::<Vec<_>>());
        let honest = rig.run(&input, 33);
        let lying = rig.run_with(&input, 33, Box::new(LyingQueue::new()));
        assert_eq!(lying, honest);
        assert_eq!(lying.1[32], status::OK);
    }

    #[test]
    fn lying_lengths_are_err() {
        let rig = Rig::new();
        let sid = cbc(&rig, Direction::Encrypt);
        // src_len larger than the readable bytes.
        let mut input = cipher_req(vc::CIPHER_ENCRYPT, sid, 16, 1000, 1000);
        input.extend_from_slice(&[0; 48]);
        let (used, out) = rig.run(&input, 33);
        assert_eq!((used, out[32]), (33, status::ERR));
        assert_eq!(out[0], 0xee, "nothing written but the status");
        // dst_len larger than the writable bytes.
        let mut input = cipher_req(vc::CIPHER_ENCRYPT, sid, 16, 16, 64);
        input.extend_from_slice(&[0; 32]);
        assert_eq!(rig.run(&input, 17).1[16], status::ERR);
        // Wrong IV length for AES-CBC.
        let mut input = cipher_req(vc::CIPHER_ENCRYPT, sid, 8, 16, 16);
        input.extend_from_slice(&[0; 24]);
        assert_eq!(rig.run(&input, 17).1[16], status::ERR);
        // Header shorter than 72 bytes.
        assert_eq!(rig.run(&[0u8; 40], 1).1[0], status::ERR);
        // Overflowing sums.
        let mut input = cipher_req(vc::CIPHER_ENCRYPT, sid, u32::MAX, u32::MAX, 16);
        input.extend_from_slice(&[0; 32]);
        assert_eq!(rig.run(&input, 17).1[16], status::ERR);
    }

    #[test]
    fn missing_status_byte_completes_with_zero_length() {
        let rig = Rig::new();
        let sid = cbc(&rig, Direction::Encrypt);
        let mut input = cipher_req(vc::CIPHER_ENCRYPT, sid, 16, 16, 16);
        input.extend_from_slice(&[0; 32]);
        let (used, _) = rig.run(&input, 0);
        assert_eq!(used, 0);
    }

    #[test]
    fn session_and_opcode_checks() {
        let rig = Rig::new();
        let enc = cbc(&rig, Direction::Encrypt);
        let mut body = [0u8; 48];
        body[..16].fill(1);
        // Unknown session.
        let mut input = cipher_req(vc::CIPHER_ENCRYPT, enc + 1, 16, 16, 16);
        input.extend_from_slice(&body[..32]);
        assert_eq!(rig.run(&input, 17).1[16], status::INVSESS);
        // Decrypt opcode on an encrypt session.
        let mut input = cipher_req(vc::CIPHER_DECRYPT, enc, 16, 16, 16);
        input.extend_from_slice(&body[..32]);
        assert_eq!(rig.run(&input, 17).1[16], status::ERR);
        // Hash opcode on a cipher session.
        let mut input = cipher_req(vc::HASH, enc, 16, 16, 16);
        input.extend_from_slice(&body[..32]);
        assert_eq!(rig.run(&input, 17).1[16], status::ERR);
        // Unknown opcode.
        let mut input = cipher_req(0x0777, enc, 16, 16, 16);
        input.extend_from_slice(&body[..32]);
        assert_eq!(rig.run(&input, 17).1[16], status::NOTSUPP);
        // A closed session is invalid.
        rig.sessions.close(enc).unwrap();
        let mut input = cipher_req(vc::CIPHER_ENCRYPT, enc, 16, 16, 16);
        input.extend_from_slice(&body[..32]);
        assert_eq!(rig.run(&input, 17).1[16], status::INVSESS);
    }

    /// Requests count against the session they name (operations, errors, their buffers'
    /// bytes), also when they fail after the session was found; a request naming no open
    /// session counts against none; a closed session leaves the list.
    #[test]
    fn requests_count_against_their_session() {
        let rig = Rig::new();
        let sid = cbc(&rig, Direction::Encrypt);
        let idle = cbc(&rig, Direction::Encrypt);
        let mut good = cipher_req(vc::CIPHER_ENCRYPT, sid, 16, 32, 32);
        good.extend_from_slice(&[0x30; 16]);
        good.extend((0..32u8).collect::<Vec<_>>());
        assert_eq!(rig.run(&good, 33).1[32], status::OK);
        assert_eq!(rig.run(&good, 33).1[32], status::OK);
        // Wrong IV length: an error of this session.
        let mut bad = cipher_req(vc::CIPHER_ENCRYPT, sid, 8, 16, 16);
        bad.extend_from_slice(&[0; 24]);
        assert_eq!(rig.run(&bad, 17).1[16], status::ERR);
        // Unknown session: nobody's.
        let mut unknown = cipher_req(vc::CIPHER_ENCRYPT, sid + 2, 16, 16, 16);
        unknown.extend_from_slice(&[0; 32]);
        assert_eq!(rig.run(&unknown, 17).1[16], status::INVSESS);
        let list = rig.sessions.list(10);
        assert_eq!(list.total, 2);
        let of = |id: u64| {
            list.sessions
                .iter()
                .find(|s| s.labels.id == id)
                .unwrap()
                .clone()
        };
        let s = of(sid);
        assert_eq!(
            s.count,
            crate::crypto::counters::OpCount {
                operations: 2,
                errors: 1,
                bytes: 2 * (good.len() as u64 + 33) + bad.len() as u64 + 17,
            }
        );
        assert_eq!(
            (s.labels.alg.as_str(), s.labels.op),
            ("aes-128-cbc", "encrypt")
        );
        assert!(!s.labels.fallback);
        assert_eq!(of(idle).count, Default::default());
        rig.sessions.close(sid).unwrap();
        let list = rig.sessions.list(10);
        assert_eq!(list.total, 1);
        assert_eq!(list.sessions.len(), 1);
        assert_eq!(list.sessions[0].labels.id, idle);
    }

    #[test]
    fn hash_request_writes_the_digest() {
        let rig = Rig::new();
        let sid = rig.session(SessionParams::Hash {
            alg: HashAlg::Sha256,
            digest_len: 0,
        });
        let mut req = DataRequest::default();
        req.header.opcode = vc::HASH.into();
        req.header.session_id = sid.into();
        req.set_body(&vc::HashDataPara {
            src_data_len: 5.into(),
            hash_result_len: 32.into(),
        });
        let mut input = req.as_slice().to_vec();
        input.extend_from_slice(b"hello");
        let (used, out) = rig.run(&input, 33);
        assert_eq!((used, out[32]), (33, status::OK));
        assert_eq!(&out[..32], &[0xd1; 32]);
        // A digest length other than the session's is an error.
        req.set_body(&vc::HashDataPara {
            src_data_len: 5.into(),
            hash_result_len: 20.into(),
        });
        let mut input = req.as_slice().to_vec();
        input.extend_from_slice(b"hello");
        assert_eq!(rig.run(&input, 33).1[32], status::ERR);
    }

    #[test]
    fn aead_layouts() {
        let rig = Rig::new();
        let enc = rig.session(SessionParams::Aead {
            alg: dpacc_spec::AeadAlg::AesGcm,
            key: &[0x0f; 16],
            tag_len: 16,
            dir: Direction::Encrypt,
        });
        let dec = rig.session(SessionParams::Aead {
            alg: dpacc_spec::AeadAlg::AesGcm,
            key: &[0x0f; 16],
            tag_len: 16,
            dir: Direction::Decrypt,
        });
        let req = |op: u32, sid: u64, src: u32, dst: u32| {
            let mut r = DataRequest::default();
            r.header.opcode = op.into();
            r.header.session_id = sid.into();
            r.set_body(&vc::AeadDataPara {
                iv_len: 12.into(),
                aad_len: 4.into(),
                src_data_len: src.into(),
                dst_data_len: dst.into(),
            });
            r.as_slice().to_vec()
        };
        // Encrypt: 8 bytes → 8 ciphertext + 16 tag.
        let mut input = req(vc::AEAD_ENCRYPT, enc, 8, 24);
        input.extend_from_slice(&[0; 12]);
        input.extend_from_slice(&[1; 8]);
        input.extend_from_slice(b"aad!");
        let (used, out) = rig.run(&input, 25);
        assert_eq!((used, out[24]), (25, status::OK));
        assert_eq!(&out[..8], &[1 ^ 0x0f; 8]);
        assert_eq!(&out[8..24], &[0xd1; 16]);
        // Encrypt with no room for the tag.
        let mut input = req(vc::AEAD_ENCRYPT, enc, 8, 8);
        input.extend_from_slice(&[0; 24]);
        assert_eq!(rig.run(&input, 9).1[8], status::ERR);
        // Decrypt: 8 ciphertext + 16 tag → 8 plaintext.
        let mut input = req(vc::AEAD_DECRYPT, dec, 24, 8);
        input.extend_from_slice(&[0; 12]);
        input.extend_from_slice(&[2; 24]);
        input.extend_from_slice(b"aad!");
        let (used, out) = rig.run(&input, 9);
        assert_eq!((used, out[8]), (9, status::OK));
        assert_eq!(&out[..8], &[2 ^ 0x0f; 8]);
        // Decrypt with src shorter than the tag.
        let mut input = req(vc::AEAD_DECRYPT, dec, 8, 8);
        input.extend_from_slice(&[0; 24]);
        assert_eq!(rig.run(&input, 9).1[8], status::ERR);
        // The header, the 12-byte IV and part of the source in one buffer, the destination and
        // the status in one buffer (the layout `dpacc_guest` sends): the same answer.
        let mut input = req(vc::AEAD_ENCRYPT, enc, 8, 24);
        input.extend_from_slice(&[0; 12]);
        input.extend_from_slice(&[1; 8]);
        input.extend_from_slice(b"aad!");
        let want = rig.run(&input, 25);
        for first in [DATA_REQ_SIZE + 12, DATA_REQ_SIZE + 15, DATA_REQ_SIZE + 5] {
            for one_out in [false, true] {
                let dq = XorDriver.open_queue(64).unwrap();
                let got = rig.run_layout(&input, 25, first, one_out, dq);
                assert_eq!(
                    got, want,
                    "first buffer {first} B, one writable buffer {one_out}"
                );
            }
        }
    }

    /// The header and the IV are read where they are: in the first buffer (the fixed-length
    /// copies), across two buffers, or after a first buffer of the header alone; the status
    /// byte is the last writable byte whether or not it has a buffer of its own.
    #[test]
    fn header_iv_and_status_in_any_buffer_layout() {
        let rig = Rig::new();
        let sid = cbc(&rig, Direction::Encrypt);
        let mut input = cipher_req(vc::CIPHER_ENCRYPT, sid, 16, 32, 32);
        input.extend_from_slice(&[0x30; 16]); // iv
        input.extend((0..32u8).collect::<Vec<_>>());
        let want: Vec<u8> = (0..32u8).map(|b| b ^ 0x0f ^ 0x30).collect();
        for first in [
            DATA_REQ_SIZE,
            DATA_REQ_SIZE + 3,
            DATA_REQ_SIZE + 16,
            DATA_REQ_SIZE + 20,
            input.len(),
        ] {
            for one_out in [false, true] {
                let dq = XorDriver.open_queue(64).unwrap();
                let (used, out) = rig.run_layout(&input, 33, first, one_out, dq);
                let at = format!("first buffer {first} B, one writable buffer {one_out}");
                assert_eq!((used, out[32]), (33, status::OK), "{at}");
                assert_eq!(&out[..32], &want[..], "{at}");
            }
        }
        // A header split across two buffers is still read.
        let dq = XorDriver.open_queue(64).unwrap();
        let (used, out) = rig.run_layout(&input, 33, 40, true, dq);
        assert_eq!((used, out[32], &out[..32]), (33, status::OK, &want[..]));
    }
}
