//! [`VnfWorker`]: a thread that runs one lane of a vNF instance: queue pair `k` of every
//! virtio port of the vNF (port 0, the vNF's own virtio-net device; vhost-user uplinks) and
//! queue `k` of every TAP uplink, through the instance's lane `k` of the flow processor.
//! A vNF with `--queue-pairs N` has N workers; with one, it is the whole instance.
//!
//! Each worker takes frames only from its own pairs' TX rings (no lock is shared there). Its
//! frames leave through the destination port's pair `k` if the frontend enabled it, else
//! through another enabled pair of that port; so a pair's RX ring is shared by the workers,
//! each taking its lock for the span of one batch (uncontended when every port has all its
//! pairs). Control frames go to the instance from whichever worker received them; worker 0
//! expires flows. Pairs arrive and leave through their [`RingSlot`]s, whichever frontends
//! come and go; frames for a port with no enabled pair are dropped and counted.
//!
//! While the vNF itself (port 0) is away (no pair attached), its flows keep forwarding between
//! the uplinks (a vNF restart costs no traffic); if it stays away longer than its keep time,
//! worker 0 removes its flows, groups and SAs and their memory is freed.
//!
//! A panic in a worker (a bug) resets the vNF's instance, which all its workers share, and
//! that worker goes on; see [`VnfLoop::run`].

use std::io;
use std::os::fd::AsRawFd;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dpacc_spec::fastpath::proto::{self, ETHERTYPE};
use dpacc_spec::fastpath::{Emit, FlowLane, FlowProcessor, PacketBuf, PortId, Verdict, MAX_FRAME};
use tracing::{debug, error, info, warn};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::control::Control;
use super::counters::{PortCount, WorkerCounters};
use super::rings::{NetRings, OutFrame};
use super::slot::RingSlot;
use super::tap::Tap;
use crate::guest_log::guest_info;
use crate::virtq::ChainBufs;

const BATCH: usize = 32;
const EXPIRE_EVERY: Duration = Duration::from_millis(100);
/// Rounds of a pass before the worker looks at its control events again.
const MAX_ROUNDS: usize = 64;
/// Panics (bugs) a worker survives, each resetting its vNF's instance, before it gives up.
const MAX_PANICS: u32 = 3;

/// Counters of one vNF's worker, published for the operator ([`super::counters`]) and logged
/// when it stops.
#[derive(Clone, Debug, Default)]
pub(crate) struct VnfStats {
    /// Frames the vNF transmitted (data and control).
    pub(crate) from_vnf: u64,
    /// Control frames handled.
    pub(crate) control: u64,
    /// Frames put on the vNF's RX ring.
    pub(crate) to_vnf: u64,
    /// Frames for a virtio port dropped because its RX ring had no room or no frontend.
    pub(crate) rx_no_buffer: u64,
    /// Frames received from uplinks.
    pub(crate) from_uplinks: u64,
    /// Frames sent to uplinks.
    pub(crate) to_uplinks: u64,
    /// Malformed TX chains or oversized frames.
    pub(crate) bad_tx: u64,
    /// Non-empty batches taken from virtio TX rings (frames / batches = mean batch size).
    pub(crate) batches: u64,
    /// Per port, by [`PortId`].
    pub(crate) ports: Vec<PortCount>,
}

impl VnfStats {
    /// Counts `sent` of `wanted` frames put on virtio port `port`'s RX ring (the rest had no
    /// room or no frontend).
    fn count_out(&mut self, port: PortId, wanted: usize, sent: usize, bytes: u64) {
        if let Some(p) = self.ports.get_mut(usize::from(port.0)) {
            p.sent(wanted, sent, bytes);
        }
        if port == PortId::VNF {
            self.to_vnf += sent as u64;
        } else {
            self.to_uplinks += sent as u64;
        }
        self.rx_no_buffer += (wanted - sent) as u64;
    }
}

/// One queue pair of a virtio port: its rings while the frontend has them started. Only the
/// pair's own worker takes frames from its TX ring and attaches or detaches it; any worker
/// may put frames into its RX ring, holding the lock for one batch.
pub(crate) type PairCell = Mutex<Option<NetRings>>;

fn lock(c: &PairCell) -> MutexGuard<'_, Option<NetRings>> {
    // A poisoned lock only means a worker panicked holding it; the rings are consistent
    // between batches (indices are written back at every close).
    c.lock().unwrap_or_else(|e| e.into_inner())
}

/// A port of a vNF instance as every worker sees it, by [`PortId`].
pub(crate) enum SharedPort {
    /// A virtio-net device served over vhost-user (the vNF's own, or an uplink).
    Vhost {
        /// Its queue pairs.
        pairs: Box<[PairCell]>,
        /// Bit `k`: pair `k` is attached.
        attached: AtomicU64,
    },
    /// A TAP uplink (each worker has its own queue).
    Tap,
}

impl SharedPort {
    /// A virtio port with `n` queue pairs, none attached.
    pub(crate) fn vhost(n: usize) -> Self {
        Self::Vhost {
            pairs: (0..n).map(|_| Mutex::new(None)).collect(),
            attached: AtomicU64::new(0),
        }
    }
}

/// What the workers of a vNF instance share.
pub(crate) struct VnfShared {
    /// The vNF's flow processor.
    pub(crate) proc_: Arc<dyn FlowProcessor>,
    /// Ports by [`PortId`]: 0 is the vNF's (always `Vhost`), uplinks follow.
    pub(crate) ports: Vec<SharedPort>,
    /// The clock of every lane (flow timeouts compare times from all of them).
    pub(crate) epoch: Instant,
    /// The vNF's MAC (learned from its control frames) for replies and events: 48 bits.
    pub(crate) vnf_mac: AtomicU64,
    /// What each worker counted, by worker index, for the operator.
    pub(crate) counters: Box<[WorkerCounters]>,
}

impl VnfShared {
    fn vnf_mac(&self) -> [u8; 6] {
        let b = self.vnf_mac.load(Ordering::Relaxed).to_le_bytes();
        [b[0], b[1], b[2], b[3], b[4], b[5]]
    }

    fn set_vnf_mac(&self, m: [u8; 6]) {
        let mut b = [0u8; 8];
        b[..6].copy_from_slice(&m);
        self.vnf_mac.store(u64::from_le_bytes(b), Ordering::Relaxed);
    }
}

/// Port `i` as one worker holds it.
pub(crate) enum Port {
    /// A virtio-net port: where this worker's pair of it arrives.
    Vhost(Arc<RingSlot>),
    /// A TAP uplink: this worker's queue of it.
    Tap(Tap),
}

/// What one worker runs: lane `index` of a vNF instance.
pub(crate) struct VnfInstance {
    /// What every worker of the vNF shares.
    pub(crate) shared: Arc<VnfShared>,
    /// This worker's lane of the flow processor.
    pub(crate) lane: Box<dyn FlowLane>,
    /// The lane (and queue pair) index.
    pub(crate) index: usize,
    /// This worker's view of the ports, by [`PortId`].
    pub(crate) ports: Vec<Port>,
    /// Counters.
    pub(crate) stats: VnfStats,
}

/// A running worker thread.
pub(crate) struct VnfWorker {
    exit: EventFd,
    thread: Option<JoinHandle<VnfInstance>>,
}

impl VnfWorker {
    /// Starts the worker thread; it busy-polls for `spin` after its rings run dry before it
    /// sleeps, and (worker 0) clears the instance once the vNF has been away for
    /// `keep_detached`.
    pub(crate) fn spawn(
        vnf: VnfInstance,
        spin: Duration,
        keep_detached: Duration,
    ) -> io::Result<Self> {
        let exit = EventFd::new(EFD_NONBLOCK)?;
        let exit2 = exit.try_clone()?;
        let thread = std::thread::Builder::new()
            .name(format!("vnf-worker-{}", vnf.index))
            .spawn(move || VnfLoop::new(vnf, spin, keep_detached).run(&exit2))?;
        Ok(Self {
            exit,
            thread: Some(thread),
        })
    }

    /// Stops it (its rings go back to their slots) and returns its part of the instance.
    pub(crate) fn stop(mut self) -> Option<VnfInstance> {
        let _ = self.exit.write(1);
        self.thread.take().and_then(|t| t.join().ok())
    }
}

impl Drop for VnfWorker {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = self.exit.write(1);
            let _ = t.join();
        }
    }
}

/// What a polled descriptor stands for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FdRole {
    Exit,
    /// A kick of port `n`'s TX ring (the driver sent frames): drained, then every port is
    /// serviced.
    TxKick(usize),
    /// A kick of port `n`'s RX ring (the driver added buffers): drained likewise.
    RxKick(usize),
    /// A slot's wake-up for port `n`.
    Slot(usize),
    /// A TAP (serviced every pass anyway).
    Tap,
}

/// What the worker thread runs: its part of the instance and its per-batch buffers.
struct VnfLoop {
    vnf: VnfInstance,
    spin: Duration,
    keep_detached: Duration,
    /// Since when the vNF (port 0) has been away (worker 0 keeps it); None while it is
    /// attached or once its state was cleared.
    away_since: Option<Instant>,
    /// The vNF was attached at the last look.
    was_attached: bool,
    pkts: Vec<PacketBuf>,
    verdicts: Vec<Verdict>,
    chain: ChainBufs,
    emits: Vec<Emit>,
    frame: Vec<u8>,
    /// (port, pair) RX rings this worker put frames into since the last flush.
    touched: Vec<(usize, usize)>,
    /// Control frames (batches, capabilities).
    control: Control,
    /// Frames built in `frame` (PACKET_INs, replies) by (port, start, end).
    spans: Vec<(PortId, usize, usize)>,
}

impl VnfLoop {
    fn new(mut vnf: VnfInstance, spin: Duration, keep_detached: Duration) -> Self {
        // ESP frames are then sealed or opened where they land (their one copy).
        vnf.lane.enable_finish();
        Self {
            vnf,
            spin,
            keep_detached,
            away_since: Some(Instant::now()),
            was_attached: false,
            pkts: (0..BATCH).map(|_| PacketBuf::new()).collect(),
            verdicts: vec![Verdict::Drop; BATCH],
            chain: ChainBufs::new(),
            emits: Vec::new(),
            frame: Vec::with_capacity(MAX_FRAME + 64),
            touched: Vec::new(),
            control: Control::default(),
            spans: Vec::new(),
        }
    }

    fn now(&self) -> u64 {
        self.vnf.shared.epoch.elapsed().as_nanos() as u64
    }

    /// This worker's pair of virtio port `i`.
    fn own(&self, i: usize) -> Option<&PairCell> {
        match self.vnf.shared.ports.get(i) {
            Some(SharedPort::Vhost { pairs, .. }) => pairs.get(self.vnf.index),
            _ => None,
        }
    }

    /// Consumes a kick of port `i`'s RX or TX ring (the counter resets; the next kick wakes the
    /// worker again). A failure is harmless: every ring is serviced anyway.
    fn drain_kick(&self, i: usize, rx: bool) {
        if let Some(c) = self.own(i) {
            if let Some(g) = lock(c).as_ref() {
                let _ = if rx { g.rx_kick() } else { g.tx_kick() }.read();
            }
        }
    }

    /// Takes offered rings / gives rings back for this worker's pair of every port. True if
    /// anything changed.
    fn sync_slots(&mut self) -> bool {
        let mut changed = false;
        let k = self.vnf.index;
        for (i, p) in self.vnf.ports.iter().enumerate() {
            let (Port::Vhost(slot), Some(SharedPort::Vhost { pairs, attached })) =
                (p, self.vnf.shared.ports.get(i))
            else {
                continue;
            };
            let Some(cell) = pairs.get(k) else {
                continue;
            };
            let mut g = lock(cell);
            let mut held = g.take().map(NetRings::into_pair);
            if slot.sync(&mut held) {
                changed = true;
                guest_info!(
                    "port {i} ({}) pair {k}: frontend {}",
                    slot.name(),
                    if held.is_some() {
                        "attached"
                    } else {
                        "detached"
                    }
                );
            }
            let bit = 1u64 << k;
            if held.is_some() {
                attached.fetch_or(bit, Ordering::AcqRel);
            } else {
                attached.fetch_and(!bit, Ordering::AcqRel);
            }
            *g = held.map(NetRings::new);
        }
        changed
    }

    /// Whether any pair of the vNF's own port (port 0) is attached.
    fn vnf_attached(&self) -> bool {
        matches!(
            self.vnf.shared.ports.first(),
            Some(SharedPort::Vhost { attached, .. }) if attached.load(Ordering::Acquire) != 0
        )
    }

    /// Clears the instance once the vNF has been away for its keep time (worker 0, with
    /// expiry).
    fn forget_if_away(&mut self) {
        let attached = self.vnf_attached();
        if attached {
            self.away_since = None;
        } else if self.was_attached {
            self.away_since = Some(Instant::now());
        }
        self.was_attached = attached;
        let Some(t) = self.away_since else {
            return;
        };
        if t.elapsed() < self.keep_detached {
            return;
        }
        self.away_since = None;
        let proc_ = &self.vnf.shared.proc_;
        let u = proc_.usage();
        if u.flows + u.groups + u.sas == 0 {
            return;
        }
        proc_.clear();
        info!(
            "vNF away for {} s: removed its {} flows, {} groups and {} SAs ({} KiB freed)",
            t.elapsed().as_secs(),
            u.flows,
            u.groups,
            u.sas,
            u.memory.saturating_sub(proc_.usage().memory) >> 10
        );
    }

    /// What the worker waits on: `exit`, every slot's wake-up, the rings' kicks, the TAPs.
    fn poll_set(&self, exit: &EventFd) -> (Vec<libc::pollfd>, Vec<FdRole>) {
        let mut fds = vec![];
        let mut roles = vec![];
        let mut add = |fd: i32, role| {
            fds.push(libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
            roles.push(role);
        };
        for (i, p) in self.vnf.ports.iter().enumerate() {
            match p {
                Port::Vhost(slot) => {
                    add(slot.wake_fd().as_raw_fd(), FdRole::Slot(i));
                    if let Some(g) = self.own(i).map(lock).as_deref().and_then(Option::as_ref) {
                        // The descriptors stay open while the rings are attached, and only
                        // this worker detaches them (then it builds a new set).
                        add(g.tx_kick().as_raw_fd(), FdRole::TxKick(i));
                        if i == 0 {
                            // Drained so that it never stays readable; nothing waits on it.
                            add(g.rx_kick().as_raw_fd(), FdRole::RxKick(i));
                        }
                    }
                }
                Port::Tap(t) => add(t.raw_fd(), FdRole::Tap),
            }
        }
        add(exit.as_raw_fd(), FdRole::Exit);
        (fds, roles)
    }

    /// Runs until `exit`, then gives this worker's rings back and returns its part of the
    /// instance.
    ///
    /// A panic (a bug) resets the vNF's instance and the loop goes on: this worker's lane
    /// first leaves the batch it was in (so that the reset, which waits for every lane to be
    /// out of its batch, does not wait for it), then every flow, group and SA of the vNF is
    /// removed. The instance is shared by all the vNF's workers: the other lanes finish the
    /// batch they are in, then find the instance empty (their caches are dropped; their
    /// packets miss and go to the vNF as PACKET_IN until it installs its flows again) and
    /// keep running; their rings are untouched. After [`MAX_PANICS`] this worker stops
    /// serving (its queue pair of every port goes dark; if it is worker 0, flows no longer
    /// expire); the vNF's other workers and other vNFs go on.
    fn run(mut self, exit: &EventFd) -> VnfInstance {
        let mut panics = 0;
        while std::panic::catch_unwind(AssertUnwindSafe(|| self.serve(exit))).is_err() {
            panics += 1;
            let reset = std::panic::catch_unwind(AssertUnwindSafe(|| {
                self.vnf.lane.end_batch();
                self.touched.clear();
                self.vnf.shared.proc_.clear();
            }));
            if panics >= MAX_PANICS || reset.is_err() {
                error!(
                    worker = self.vnf.index,
                    "vNF worker panicked {panics} time(s) (a bug): it stops serving its queue pair"
                );
                break;
            }
            error!(
                worker = self.vnf.index,
                "vNF worker panicked (a bug): this vNF's flows, groups and SAs are reset"
            );
        }
        self.publish();
        info!(worker = self.vnf.index, stats = ?self.vnf.stats, "vNF worker stops");
        let k = self.vnf.index;
        for (i, p) in self.vnf.ports.iter().enumerate() {
            let (Port::Vhost(slot), Some(SharedPort::Vhost { pairs, attached })) =
                (p, self.vnf.shared.ports.get(i))
            else {
                continue;
            };
            if let Some(cell) = pairs.get(k) {
                attached.fetch_and(!(1u64 << k), Ordering::AcqRel);
                slot.give_back(lock(cell).take().map(NetRings::into_pair));
            }
        }
        self.vnf
    }

    /// The worker's loop, until `exit` is signalled.
    fn serve(&mut self, exit: &EventFd) {
        self.sync_slots();
        let mut last_expire = Instant::now();
        let (mut fds, mut roles) = self.poll_set(exit);
        let mut busy = true;
        loop {
            for f in &mut fds {
                f.revents = 0;
            }
            let timeout = if busy { 0 } else { 100 };
            // poll(2) rather than vmm-sys-util's epoll: the set is a handful of descriptors
            // that changes whenever a frontend comes or goes (an epoll registration would have
            // to follow every ring, and outlives our descriptor when the connection holds a
            // duplicate), and the busy loop polls it with a zero timeout.
            // SAFETY: a live array of pollfd structs of the length passed.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if r < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                warn!("vNF worker: poll: {}", io::Error::last_os_error());
                break;
            }
            let mut slots = false;
            let mut quit = false;
            for (f, role) in fds.iter().zip(&roles) {
                if f.revents == 0 {
                    continue;
                }
                match role {
                    FdRole::Exit => quit = true,
                    FdRole::TxKick(i) => self.drain_kick(*i, false),
                    FdRole::RxKick(i) => self.drain_kick(*i, true),
                    FdRole::Slot(_) => slots = true,
                    FdRole::Tap => {}
                }
            }
            if quit {
                break;
            }
            if slots && self.sync_slots() {
                (fds, roles) = self.poll_set(exit);
            }
            busy = self.pass();
            if !busy && !self.spin.is_zero() {
                // Busy-poll a little before sleeping: a wake-up costs more than a short spin
                // when frames come in steady streams.
                let t = Instant::now();
                while t.elapsed() < self.spin {
                    if self.pass() {
                        busy = true;
                        break;
                    }
                    std::hint::spin_loop();
                }
            }
            if !busy {
                busy = self.rearm();
            }
            if self.vnf.index == 0 && last_expire.elapsed() >= EXPIRE_EVERY {
                last_expire = Instant::now();
                self.emits.clear();
                let t = self.now();
                self.vnf.shared.proc_.expire(t, &mut self.emits);
                self.emit_all();
                self.forget_if_away();
            }
            self.flush();
            self.publish();
        }
    }

    /// Services the ports round-robin, a batch each per round, until none has input or
    /// [`MAX_ROUNDS`] rounds ran. True if it found input (poll again without sleeping).
    fn pass(&mut self) -> bool {
        for i in 0..self.vnf.ports.len() {
            if let Some(g) = self
                .own(i)
                .map(lock)
                .as_deref_mut()
                .and_then(Option::as_mut)
            {
                g.refresh();
            }
        }
        for round in 0..MAX_ROUNDS {
            let mut busy = false;
            for i in 0..self.vnf.ports.len() {
                busy |= match &self.vnf.ports[i] {
                    Port::Vhost(_) => self.virtio_batch(i) > 0,
                    Port::Tap(_) => self.tap_batch(i) > 0,
                };
            }
            self.flush();
            if !busy {
                return round > 0;
            }
        }
        true
    }

    /// Asks every guest driver for kicks again before sleeping (while the worker polls, the
    /// drivers do not kick). True if frames came meanwhile (do not sleep).
    fn rearm(&mut self) -> bool {
        let mut more = false;
        for i in 0..self.vnf.ports.len() {
            if let Some(g) = self
                .own(i)
                .map(lock)
                .as_deref_mut()
                .and_then(Option::as_mut)
            {
                more |= g.tx_rearm();
            }
        }
        more
    }

    /// Takes up to a batch of frames from this worker's pair of virtio port `i` and processes
    /// them. Control frames from the vNF's own port go to its instance and are never
    /// forwarded; from an uplink they are ordinary frames. Returns the chains consumed.
    fn virtio_batch(&mut self, i: usize) -> usize {
        let id = PortId(i as u16);
        let VnfLoop {
            vnf, chain, pkts, ..
        } = self;
        let Some(SharedPort::Vhost { pairs, .. }) = vnf.shared.ports.get(i) else {
            return 0;
        };
        let Some(cell) = pairs.get(vnf.index) else {
            return 0;
        };
        // Frames from uplinks may stay partly in the guest's buffer (one copy when forwarded);
        // the vNF's own frames are loaded whole (control frames are parsed whole).
        let (chains, mut n) = match lock(cell).as_mut() {
            Some(g) => g.receive(chain, pkts, id, id != PortId::VNF, &mut vnf.stats.bad_tx),
            None => return 0,
        };
        self.vnf.stats.batches += u64::from(chains > 0);
        self.count_in(i, n);
        if id != PortId::VNF {
            self.vnf.stats.from_uplinks += n as u64;
        } else {
            self.vnf.stats.from_vnf += n as u64;
            // Take the control frames out (keeping the order of the others).
            let mut keep = 0;
            for j in 0..n {
                if let Some((_, src, payload)) = proto::parse_frame(self.pkts[j].frame()) {
                    self.vnf.stats.control += 1;
                    self.vnf.shared.set_vnf_mac(src);
                    self.emits.clear();
                    let t = self.now();
                    let proc_ = &*self.vnf.shared.proc_;
                    self.control.handle(proc_, t, payload, &mut self.emits);
                    self.emit_all();
                    continue;
                }
                self.pkts.swap(keep, j);
                keep += 1;
            }
            n = keep;
        }
        if n > 0 {
            self.process(n);
        }
        // Every frame of the batch is forwarded: forget where partial ones came from, then
        // give the TX chains back.
        for p in &mut self.pkts[..n] {
            if !p.is_whole() {
                p.reset(id);
            }
        }
        if let Some(g) = self
            .own(i)
            .map(lock)
            .as_deref_mut()
            .and_then(Option::as_mut)
        {
            g.tx_complete();
        }
        chains
    }

    /// Reads up to a batch of frames from this worker's queue of TAP port `i` and processes
    /// them.
    fn tap_batch(&mut self, i: usize) -> usize {
        let Port::Tap(tap) = &self.vnf.ports[i] else {
            return 0;
        };
        let mut n = 0;
        while n < BATCH {
            let area = self.pkts[n].load_area(PortId(i as u16));
            match tap.read(area) {
                Ok(Some(len)) => {
                    self.pkts[n].set_len(len);
                    n += 1;
                }
                Ok(None) => break,
                Err(e) => {
                    debug!("uplink {}: read: {e}", tap.name());
                    break;
                }
            }
        }
        self.vnf.stats.from_uplinks += n as u64;
        self.count_in(i, n);
        if n > 0 {
            self.process(n);
        }
        n
    }

    fn process(&mut self, n: usize) {
        let t = self.now();
        self.vnf
            .lane
            .process(t, &mut self.pkts[..n], &mut self.verdicts[..n]);
        // Outputs to virtio ports go out in one ring pass per port; the rest one by one.
        let mut to_guests = false;
        for i in 0..n {
            match self.verdicts[i] {
                Verdict::Output(port) => {
                    if matches!(
                        self.vnf.shared.ports.get(usize::from(port.0)),
                        Some(SharedPort::Vhost { .. })
                    ) {
                        to_guests = true;
                    } else {
                        // A TAP takes host bytes: a pending frame is finished in its buffer.
                        let p = &mut self.pkts[i];
                        if p.is_pending() && !self.vnf.lane.finish_here(i, p) {
                            continue;
                        }
                        let f = OutFrame::of(&self.pkts[i]);
                        send_out(&mut self.vnf, &mut self.chain, &mut self.touched, port, f);
                    }
                }
                Verdict::Drop => {}
                Verdict::Miss { table } => {
                    let p = &mut self.pkts[i];
                    if p.in_port == PortId::VNF {
                        continue; // vNF-originated misses are dropped, never looped back
                    }
                    p.make_whole();
                    // Sent with the batch's other PACKET_INs, in one ring pass.
                    let at = self.frame.len();
                    proto::encode_packet_in(
                        self.vnf.shared.vnf_mac(),
                        p.in_port,
                        table,
                        p.frame(),
                        &mut self.frame,
                        at,
                    );
                    self.spans.push((PortId::VNF, at, self.frame.len()));
                }
            }
        }
        if !self.spans.is_empty() {
            let (frame, spans) = (&self.frame, &self.spans);
            let frames = spans.iter().map(|&(_, a, b)| OutFrame::whole(&frame[a..b]));
            send_many(
                &mut self.vnf,
                &mut self.chain,
                &mut self.touched,
                PortId::VNF,
                spans.len(),
                frames,
            );
            self.frame.clear();
            self.spans.clear();
        }
        if to_guests {
            self.send_to_guests(n);
        }
        self.vnf.lane.end_batch();
    }

    /// Puts the frames of the batch's first `n` packets bound for virtio ports into their RX
    /// rings, a ring pass per port; pending frames are finished where they land.
    fn send_to_guests(&mut self, n: usize) {
        for pi in 0..self.vnf.shared.ports.len() {
            if !matches!(self.vnf.shared.ports[pi], SharedPort::Vhost { .. }) {
                continue;
            }
            let want = PortId(pi as u16);
            let verdicts = &self.verdicts[..n];
            let count = verdicts
                .iter()
                .filter(|v| **v == Verdict::Output(want))
                .count();
            if count == 0 {
                continue;
            }
            let pkts = &self.pkts;
            let frames = verdicts
                .iter()
                .zip(pkts.iter())
                .enumerate()
                .filter(|(_, (v, _))| **v == Verdict::Output(want))
                .map(|(i, (_, p))| OutFrame::of_batch(p, i));
            let lane = &mut self.vnf.lane;
            let sent = send_virtio(
                &self.vnf.shared,
                self.vnf.index,
                &mut self.chain,
                &mut self.touched,
                pi,
                frames,
                &mut |i, at| lane.finish_into(i, pkts.get(i)?, at),
            );
            let bytes = verdicts
                .iter()
                .zip(pkts.iter())
                .filter(|(v, _)| **v == Verdict::Output(want))
                .take(sent)
                .map(|(_, p)| p.len() as u64)
                .sum();
            self.vnf.stats.count_out(want, count, sent, bytes);
        }
    }

    /// Sends what the processor emitted: each port's frames in one ring pass (in order per
    /// port), control payloads wrapped for the vNF back to back in one buffer.
    fn emit_all(&mut self) {
        let emits = std::mem::take(&mut self.emits);
        self.frame.clear();
        self.spans.clear();
        let mac = self.vnf.shared.vnf_mac();
        for e in &emits {
            match e {
                Emit::Frame { port, .. } => self.spans.push((*port, 0, 0)),
                Emit::Control(payload) => {
                    let a = self.frame.len();
                    self.frame.extend_from_slice(&mac);
                    self.frame.extend_from_slice(&proto::BACKEND_MAC);
                    self.frame.extend_from_slice(&ETHERTYPE.to_be_bytes());
                    self.frame.extend_from_slice(payload);
                    self.spans.push((PortId::VNF, a, self.frame.len()));
                }
            }
        }
        let mut done: [PortId; 8] = [PortId(u16::MAX); 8];
        let mut ndone = 0;
        for k in 0..self.spans.len() {
            let port = self.spans[k].0;
            if done[..ndone].contains(&port) {
                continue;
            }
            let (frame, spans) = (&self.frame, &self.spans);
            let mine = |(_, s): &(&Emit, &(PortId, usize, usize))| s.0 == port;
            let count = emits.iter().zip(spans).skip(k).filter(mine).count();
            let frames = emits
                .iter()
                .zip(spans)
                .skip(k)
                .filter(mine)
                .map(|(e, s)| match e {
                    Emit::Frame { frame, .. } => OutFrame::whole(frame),
                    Emit::Control(_) => OutFrame::whole(&frame[s.1..s.2]),
                });
            send_many(
                &mut self.vnf,
                &mut self.chain,
                &mut self.touched,
                port,
                count,
                frames,
            );
            if ndone < done.len() {
                done[ndone] = port;
                ndone += 1;
            } else {
                break; // more ports than remembered: the rest goes on the next call (never: 8)
            }
        }
        self.frame.clear();
        self.spans.clear();
        self.emits = emits;
        self.emits.clear();
    }

    /// Publishes this worker's counters for the operator.
    fn publish(&self) {
        if let Some(c) = self.vnf.shared.counters.get(self.vnf.index) {
            c.publish(&self.vnf.stats);
        }
    }

    /// Counts `n` frames received from port `i` (the first `n` of the batch).
    fn count_in(&mut self, i: usize, n: usize) {
        let bytes = self.pkts[..n].iter().map(|p| p.len() as u64).sum();
        if let Some(p) = self.vnf.stats.ports.get_mut(i) {
            p.received(n, bytes);
        }
    }

    /// Notifies every guest of what this worker put into its RX rings.
    fn flush(&mut self) {
        for (p, q) in self.touched.drain(..) {
            if let Some(SharedPort::Vhost { pairs, .. }) = self.vnf.shared.ports.get(p) {
                if let Some(g) = pairs
                    .get(q)
                    .map(lock)
                    .as_deref_mut()
                    .and_then(Option::as_mut)
                {
                    g.rx_flush();
                }
            }
        }
    }
}

/// The pair of a port with the `attached` mask that worker `k` sends through: its own if
/// attached, else one of the attached ones (spread over the workers). None if none is.
fn pick_pair(attached: u64, k: usize) -> Option<usize> {
    if k < 64 && attached & (1 << k) != 0 {
        return Some(k);
    }
    let n = attached.count_ones() as usize;
    if n == 0 {
        return None;
    }
    let mut nth = k % n;
    let mut m = attached;
    loop {
        let b = m.trailing_zeros() as usize;
        if nth == 0 {
            return Some(b);
        }
        nth -= 1;
        m &= m - 1;
    }
}

/// Puts `frames` into virtio port `p`'s RX ring of the pair [`pick_pair`] chooses, holding
/// its lock for the batch (pending frames finished with `finish` where they land). Returns
/// how many went in.
fn send_virtio<'f>(
    shared: &VnfShared,
    k: usize,
    chain: &mut ChainBufs,
    touched: &mut Vec<(usize, usize)>,
    p: usize,
    frames: impl IntoIterator<Item = OutFrame<'f>>,
    finish: &mut dyn FnMut(usize, &[dpacc_spec::Seg<'_>]) -> Option<usize>,
) -> usize {
    let Some(SharedPort::Vhost { pairs, attached }) = shared.ports.get(p) else {
        return 0;
    };
    let Some(q) = pick_pair(attached.load(Ordering::Acquire), k) else {
        return 0;
    };
    let Some(cell) = pairs.get(q) else {
        return 0;
    };
    let sent = match lock(cell).as_mut() {
        Some(g) => g.send(chain, frames, finish),
        None => 0,
    };
    if sent > 0 && !touched.contains(&(p, q)) {
        touched.push((p, q));
    }
    sent
}

/// Sends `count` `frames` out of `port`: a virtio port's in one ring pass.
fn send_many<'f>(
    vnf: &mut VnfInstance,
    chain: &mut ChainBufs,
    touched: &mut Vec<(usize, usize)>,
    port: PortId,
    count: usize,
    frames: impl IntoIterator<Item = OutFrame<'f>>,
) {
    let i = usize::from(port.0);
    match vnf.ports.get(i) {
        Some(Port::Vhost(_)) => {
            // Bytes of the frames taken; the ring stops after the first that did not fit.
            let (mut taken, mut total, mut last) = (0usize, 0u64, 0u64);
            let frames = frames.into_iter().inspect(|f| {
                taken += 1;
                last = f.len() as u64;
                total += last;
            });
            let sent = send_virtio(
                &vnf.shared,
                vnf.index,
                chain,
                touched,
                i,
                frames,
                &mut |_, _| None,
            );
            let bytes = if sent < taken { total - last } else { total };
            vnf.stats.count_out(port, count, sent, bytes);
        }
        Some(Port::Tap(_)) => {
            for f in frames {
                send_out(vnf, chain, touched, port, f);
            }
        }
        None => debug!("output to missing port {}", port.0),
    }
}

/// Sends `frame` out of `port`.
fn send_out(
    vnf: &mut VnfInstance,
    chain: &mut ChainBufs,
    touched: &mut Vec<(usize, usize)>,
    port: PortId,
    frame: OutFrame<'_>,
) {
    let i = usize::from(port.0);
    let len = frame.len() as u64;
    match vnf.ports.get(i) {
        Some(Port::Vhost(_)) => {
            let sent = send_virtio(
                &vnf.shared,
                vnf.index,
                chain,
                touched,
                i,
                [frame],
                &mut |_, _| None,
            );
            vnf.stats
                .count_out(port, 1, sent, if sent > 0 { len } else { 0 });
        }
        Some(Port::Tap(tap)) => match tap.write(frame) {
            Ok(()) => {
                vnf.stats.to_uplinks += 1;
                if let Some(p) = vnf.stats.ports.get_mut(i) {
                    p.sent(1, 1, len);
                }
            }
            Err(e) => {
                debug!("uplink {}: write: {e}", tap.name());
                if let Some(p) = vnf.stats.ports.get_mut(i) {
                    p.sent(1, 0, 0);
                }
            }
        },
        None => debug!("output to missing port {}", port.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dpacc_spec::fastpath::Usage;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn workers_use_their_own_pair_or_share_the_enabled_ones() {
        assert_eq!(pick_pair(0b11, 1), Some(1));
        assert_eq!(pick_pair(0b01, 1), Some(0), "pair 1 disabled: pair 0");
        assert_eq!(pick_pair(0, 0), None);
        assert_eq!(pick_pair(0b1010, 0), Some(1));
        assert_eq!(pick_pair(0b1010, 2), Some(1));
        assert_eq!(pick_pair(0b1010, 3), Some(3));
        assert_eq!(pick_pair(0b1010, 4), Some(1));
        assert_eq!(pick_pair(0b1010, 5), Some(3));
    }

    /// A flow processor whose `expire` panics the first `panics` times.
    struct Buggy {
        panics: u32,
        expires: Arc<AtomicU32>,
        clears: Arc<AtomicU32>,
    }

    struct IdleLane;

    impl FlowLane for IdleLane {
        fn process(&mut self, _: u64, _: &mut [PacketBuf], _: &mut [Verdict]) {}
    }

    impl FlowProcessor for Buggy {
        fn lane(&self, _: usize) -> Option<Box<dyn FlowLane>> {
            Some(Box::new(IdleLane))
        }
        fn control(&self, _: u64, _: &[u8], _: &mut Vec<Emit>) {}
        fn expire(&self, _: u64, _: &mut Vec<Emit>) {
            let n = self.expires.fetch_add(1, Ordering::SeqCst);
            if n < self.panics {
                panic!("injected bug {n}");
            }
        }
        fn flow_count(&self) -> usize {
            0
        }
        fn usage(&self) -> Usage {
            Usage::default()
        }
        fn clear(&self) {
            self.clears.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn worker(panics: u32) -> (VnfWorker, Arc<AtomicU32>, Arc<AtomicU32>) {
        let (expires, clears) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        let proc_: Arc<dyn FlowProcessor> = Arc::new(Buggy {
            panics,
            expires: expires.clone(),
            clears: clears.clone(),
        });
        let lane = proc_.lane(0).unwrap();
        let w = VnfWorker::spawn(
            VnfInstance {
                shared: Arc::new(VnfShared {
                    proc_,
                    ports: vec![SharedPort::vhost(1)],
                    epoch: Instant::now(),
                    vnf_mac: AtomicU64::new(0xffff_ffff_ffff),
                    counters: Box::new([super::super::counters::WorkerCounters::new(1)]),
                }),
                lane,
                index: 0,
                ports: vec![Port::Vhost(Arc::new(RingSlot::new("vnf").unwrap()))],
                stats: VnfStats::default(),
            },
            Duration::ZERO,
            Duration::from_secs(60),
        )
        .unwrap();
        (w, expires, clears)
    }

    #[test]
    fn a_panic_resets_the_instance_and_the_worker_goes_on() {
        let (w, expires, clears) = worker(1);
        let t = Instant::now();
        while expires.load(Ordering::SeqCst) < 3 {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "the worker kept expiring"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            clears.load(Ordering::SeqCst),
            1,
            "the instance was reset once"
        );
        assert!(w.stop().is_some(), "the worker returns its instance");
    }

    #[test]
    fn a_worker_that_keeps_panicking_stops_alone() {
        let (w, expires, clears) = worker(u32::MAX);
        let t = Instant::now();
        while expires.load(Ordering::SeqCst) < MAX_PANICS {
            assert!(t.elapsed() < Duration::from_secs(5));
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(expires.load(Ordering::SeqCst), MAX_PANICS, "it stopped");
        assert_eq!(clears.load(Ordering::SeqCst), MAX_PANICS);
        assert!(w.stop().is_some());
    }
}
