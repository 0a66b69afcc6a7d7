//! [`VnfWorker`]: the one thread that runs a vNF instance (its flow processor and all its
//! ports: port 0, the vNF's own virtio-net device; uplinks 1.., TAP or vhost-user virtio-net),
//! without locks.
//!
//! The worker runs from start-up to shutdown, whichever frontends come and go: virtio-net
//! ring pairs arrive and leave through their [`RingSlot`]s. Frames for a port whose frontend
//! is absent are dropped and counted.
//!
//! While the vNF itself (port 0) is away, its flows keep forwarding between the uplinks (a
//! vNF restart costs no traffic); if it stays away longer than its keep time, its flows,
//! groups and SAs are removed and their memory freed.

use std::io;
use std::os::fd::AsRawFd;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dpacc_spec::fastpath::proto::{self, ETHERTYPE};
use dpacc_spec::fastpath::{Emit, FlowProcessor, PacketBuf, PortId, Verdict, MAX_FRAME};
use tracing::{debug, error, info, warn};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::rings::NetRings;
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

/// Counters of one vNF's worker, logged when it stops.
#[derive(Clone, Copy, Debug, Default)]
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
}

impl VnfStats {
    /// Counts `sent` of `wanted` frames put on virtio port `port`'s RX ring (the rest had no
    /// room or no frontend).
    fn count_out(&mut self, port: PortId, wanted: usize, sent: usize) {
        if port == PortId::VNF {
            self.to_vnf += sent as u64;
        } else {
            self.to_uplinks += sent as u64;
        }
        self.rx_no_buffer += (wanted - sent) as u64;
    }
}

/// One port of a vNF instance, by [`PortId`].
pub(crate) enum Port {
    /// A virtio-net device served over vhost-user (the vNF's own, or an uplink).
    Vhost {
        /// Where its rings arrive.
        slot: Arc<RingSlot>,
        /// The rings, while a frontend is attached.
        rings: Option<NetRings>,
    },
    /// A TAP uplink.
    Tap(Tap),
}

/// A vNF instance: its flow processor and its ports (what its worker owns).
pub(crate) struct VnfInstance {
    /// The vNF's flow processor.
    pub(crate) proc_: Box<dyn FlowProcessor>,
    /// Ports by [`PortId`]: 0 is the vNF's (always `Vhost`), uplinks follow.
    pub(crate) ports: Vec<Port>,
    /// Counters.
    pub(crate) stats: VnfStats,
    /// The vNF's MAC (learned from its control frames) for replies and events.
    pub(crate) vnf_mac: [u8; 6],
}

/// The running worker thread of one vNF instance.
pub(crate) struct VnfWorker {
    exit: EventFd,
    thread: Option<JoinHandle<VnfInstance>>,
}

impl VnfWorker {
    /// Starts the worker thread; it busy-polls for `spin` after its ports run dry before it
    /// sleeps, and clears the instance once the vNF has been away for `keep_detached`.
    pub(crate) fn spawn(
        vnf: VnfInstance,
        spin: Duration,
        keep_detached: Duration,
    ) -> io::Result<Self> {
        let exit = EventFd::new(EFD_NONBLOCK)?;
        let exit2 = exit.try_clone()?;
        let thread = std::thread::Builder::new()
            .name("vnf-worker".into())
            .spawn(move || VnfLoop::new(vnf, spin, keep_detached).run(&exit2))?;
        Ok(Self {
            exit,
            thread: Some(thread),
        })
    }

    /// Stops it (its rings go back to their slots) and returns the instance.
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

/// What the worker thread runs: the instance and its per-batch buffers.
struct VnfLoop {
    vnf: VnfInstance,
    spin: Duration,
    keep_detached: Duration,
    /// Since when the vNF (port 0) has been away; None while it is attached or after its
    /// state was cleared.
    away_since: Option<Instant>,
    pkts: Vec<PacketBuf>,
    verdicts: Vec<Verdict>,
    chain: ChainBufs,
    emits: Vec<Emit>,
    frame: Vec<u8>,
    t0: Instant,
}

impl VnfLoop {
    fn new(vnf: VnfInstance, spin: Duration, keep_detached: Duration) -> Self {
        Self {
            vnf,
            spin,
            keep_detached,
            away_since: Some(Instant::now()),
            pkts: (0..BATCH).map(|_| PacketBuf::new()).collect(),
            verdicts: vec![Verdict::Drop; BATCH],
            chain: ChainBufs::new(),
            emits: Vec::new(),
            frame: Vec::with_capacity(MAX_FRAME + 64),
            t0: Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64
    }

    /// Consumes a kick of port `i`'s RX or TX ring (the counter resets; the next kick wakes the
    /// worker again). A failure is harmless: every ring is serviced anyway.
    fn drain_kick(&self, i: usize, rx: bool) {
        if let Some(Port::Vhost { rings: Some(g), .. }) = self.vnf.ports.get(i) {
            let _ = if rx { g.rx_kick() } else { g.tx_kick() }.read();
        }
    }

    /// Takes offered rings / gives rings back for every port. True if anything changed.
    fn sync_slots(&mut self) -> bool {
        let mut changed = false;
        for (i, p) in self.vnf.ports.iter_mut().enumerate() {
            if let Port::Vhost { slot, rings } = p {
                let mut held = rings.take().map(NetRings::into_pair);
                if slot.sync(&mut held) {
                    changed = true;
                    guest_info!(
                        "port {i} ({}): frontend {}",
                        slot.name(),
                        if held.is_some() {
                            "attached"
                        } else {
                            "detached"
                        }
                    );
                }
                *rings = held.map(NetRings::new);
            }
        }
        if changed {
            let attached = matches!(
                self.vnf.ports.first(),
                Some(Port::Vhost { rings: Some(_), .. })
            );
            match (attached, self.away_since) {
                (true, _) => self.away_since = None,
                (false, None) => self.away_since = Some(Instant::now()),
                (false, Some(_)) => {}
            }
        }
        changed
    }

    /// Clears the instance once the vNF has been away for its keep time.
    fn forget_if_away(&mut self) {
        let Some(t) = self.away_since else {
            return;
        };
        if t.elapsed() < self.keep_detached {
            return;
        }
        self.away_since = None;
        let u = self.vnf.proc_.usage();
        if u.flows + u.groups + u.sas == 0 {
            return;
        }
        self.vnf.proc_.clear();
        info!(
            "vNF away for {} s: removed its {} flows, {} groups and {} SAs ({} KiB freed)",
            t.elapsed().as_secs(),
            u.flows,
            u.groups,
            u.sas,
            u.memory.saturating_sub(self.vnf.proc_.usage().memory) >> 10
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
                Port::Vhost { slot, rings } => {
                    add(slot.wake_fd().as_raw_fd(), FdRole::Slot(i));
                    if let Some(g) = rings {
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

    /// Runs until `exit`, then gives every ring back and returns the instance. A panic (a bug)
    /// resets this vNF's flows, groups and SAs and the loop goes on; after [`MAX_PANICS`] the
    /// worker stops serving (this vNF's ports go dark; other vNFs never notice).
    fn run(mut self, exit: &EventFd) -> VnfInstance {
        let mut panics = 0;
        while std::panic::catch_unwind(AssertUnwindSafe(|| self.serve(exit))).is_err() {
            panics += 1;
            let clear = std::panic::catch_unwind(AssertUnwindSafe(|| self.vnf.proc_.clear()));
            if panics >= MAX_PANICS || clear.is_err() {
                error!("vNF worker panicked {panics} time(s) (a bug): it stops serving this vNF");
                break;
            }
            error!("vNF worker panicked (a bug): this vNF's flows, groups and SAs are reset");
        }
        info!(stats = ?self.vnf.stats, "vNF worker stops");
        for p in &mut self.vnf.ports {
            if let Port::Vhost { slot, rings } = p {
                slot.give_back(rings.take().map(NetRings::into_pair));
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
            if last_expire.elapsed() >= EXPIRE_EVERY {
                last_expire = Instant::now();
                self.emits.clear();
                let t = self.now();
                self.vnf.proc_.expire(t, &mut self.emits);
                self.emit_all();
                self.forget_if_away();
            }
            self.flush();
        }
    }

    /// Services the ports round-robin, a batch each per round, until none has input or
    /// [`MAX_ROUNDS`] rounds ran. True if it found input (poll again without sleeping).
    fn pass(&mut self) -> bool {
        for p in &mut self.vnf.ports {
            if let Port::Vhost { rings: Some(g), .. } = p {
                g.refresh();
            }
        }
        for round in 0..MAX_ROUNDS {
            let mut busy = false;
            for i in 0..self.vnf.ports.len() {
                busy |= match &self.vnf.ports[i] {
                    Port::Vhost { rings: Some(_), .. } => self.virtio_batch(i) > 0,
                    Port::Vhost { rings: None, .. } => false,
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
        for p in &mut self.vnf.ports {
            if let Port::Vhost { rings: Some(g), .. } = p {
                more |= g.tx_rearm();
            }
        }
        more
    }

    /// Takes up to a batch of frames from virtio port `i`'s TX ring and processes them.
    /// Control frames from the vNF's own port go to its instance and are never forwarded;
    /// from an uplink they are ordinary frames. Returns the chains consumed.
    fn virtio_batch(&mut self, i: usize) -> usize {
        let id = PortId(i as u16);
        let Port::Vhost { rings: Some(g), .. } = &mut self.vnf.ports[i] else {
            return 0;
        };
        let (chains, mut n) = g.receive(
            &mut self.chain,
            &mut self.pkts,
            id,
            &mut self.vnf.stats.bad_tx,
        );
        self.vnf.stats.batches += u64::from(chains > 0);
        if id != PortId::VNF {
            self.vnf.stats.from_uplinks += n as u64;
        } else {
            self.vnf.stats.from_vnf += n as u64;
            // Take the control frames out (keeping the order of the others).
            let mut keep = 0;
            for j in 0..n {
                if let Some((_, src, payload)) = proto::parse_frame(self.pkts[j].frame()) {
                    self.vnf.stats.control += 1;
                    self.vnf.vnf_mac = src;
                    self.emits.clear();
                    let t = self.now();
                    self.vnf.proc_.control(t, payload, &mut self.emits);
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
        chains
    }

    /// Reads up to a batch of frames from TAP port `i` and processes them.
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
        if n > 0 {
            self.process(n);
        }
        n
    }

    fn process(&mut self, n: usize) {
        let t = self.now();
        self.vnf
            .proc_
            .process(t, &mut self.pkts[..n], &mut self.verdicts[..n]);
        // Outputs to virtio ports go out in one ring pass per port; the rest one by one.
        let mut to_guests = false;
        for i in 0..n {
            match self.verdicts[i] {
                Verdict::Output(port) => {
                    if matches!(
                        self.vnf.ports.get(usize::from(port.0)),
                        Some(Port::Vhost { .. })
                    ) {
                        to_guests = true;
                    } else {
                        output(&mut self.vnf, &mut self.chain, port, self.pkts[i].frame());
                    }
                }
                Verdict::Drop => {}
                Verdict::Miss { table } => {
                    let p = &self.pkts[i];
                    if p.in_port == PortId::VNF {
                        continue; // vNF-originated misses are dropped, never looped back
                    }
                    proto::encode_packet_in(
                        self.vnf.vnf_mac,
                        p.in_port,
                        table,
                        p.frame(),
                        &mut self.frame,
                    );
                    output(&mut self.vnf, &mut self.chain, PortId::VNF, &self.frame);
                }
            }
        }
        if !to_guests {
            return;
        }
        for (pi, p) in self.vnf.ports.iter_mut().enumerate() {
            let Port::Vhost { rings, .. } = p else {
                continue;
            };
            let want = PortId(pi as u16);
            let verdicts = &self.verdicts[..n];
            let count = verdicts
                .iter()
                .filter(|v| **v == Verdict::Output(want))
                .count();
            if count == 0 {
                continue;
            }
            let sent = match rings {
                Some(g) => {
                    let pkts = &self.pkts;
                    g.send(
                        &mut self.chain,
                        verdicts
                            .iter()
                            .zip(pkts.iter())
                            .filter(|(v, _)| **v == Verdict::Output(want))
                            .map(|(_, p)| p.frame()),
                    )
                }
                None => 0,
            };
            self.vnf.stats.count_out(want, count, sent);
        }
    }

    fn emit_all(&mut self) {
        let emits = std::mem::take(&mut self.emits);
        for e in &emits {
            match e {
                Emit::Frame { port, frame } => output(&mut self.vnf, &mut self.chain, *port, frame),
                Emit::Control(payload) => {
                    self.frame.clear();
                    self.frame.extend_from_slice(&self.vnf.vnf_mac);
                    self.frame.extend_from_slice(&proto::BACKEND_MAC);
                    self.frame.extend_from_slice(&ETHERTYPE.to_be_bytes());
                    self.frame.extend_from_slice(payload);
                    output(&mut self.vnf, &mut self.chain, PortId::VNF, &self.frame);
                }
            }
        }
        self.emits = emits;
        self.emits.clear();
    }

    /// Notifies every guest of what its RX ring received.
    fn flush(&mut self) {
        for p in &mut self.vnf.ports {
            if let Port::Vhost { rings: Some(g), .. } = p {
                g.rx_flush();
            }
        }
    }
}

/// Sends `frame` out of `port`.
fn output(vnf: &mut VnfInstance, chain: &mut ChainBufs, port: PortId, frame: &[u8]) {
    match vnf.ports.get_mut(usize::from(port.0)) {
        Some(Port::Vhost { rings: g, .. }) => {
            let sent = g.as_mut().map_or(0, |g| g.send(chain, [frame]));
            vnf.stats.count_out(port, 1, sent);
        }
        Some(Port::Tap(tap)) => match tap.write(frame) {
            Ok(()) => vnf.stats.to_uplinks += 1,
            Err(e) => debug!("uplink {}: write: {e}", tap.name()),
        },
        None => debug!("output to missing port {}", port.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dpacc_spec::fastpath::Usage;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A flow processor whose `expire` panics the first `panics` times.
    struct Buggy {
        panics: u32,
        expires: Arc<AtomicU32>,
        clears: Arc<AtomicU32>,
    }

    impl FlowProcessor for Buggy {
        fn process(&mut self, _: u64, _: &mut [PacketBuf], _: &mut [Verdict]) {}
        fn control(&mut self, _: u64, _: &[u8], _: &mut Vec<Emit>) {}
        fn expire(&mut self, _: u64, _: &mut Vec<Emit>) {
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
        fn clear(&mut self) {
            self.clears.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn worker(panics: u32) -> (VnfWorker, Arc<AtomicU32>, Arc<AtomicU32>) {
        let (expires, clears) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        let w = VnfWorker::spawn(
            VnfInstance {
                proc_: Box::new(Buggy {
                    panics,
                    expires: expires.clone(),
                    clears: clears.clone(),
                }),
                ports: vec![Port::Vhost {
                    slot: Arc::new(RingSlot::new("vnf").unwrap()),
                    rings: None,
                }],
                stats: VnfStats::default(),
                vnf_mac: [0xff; 6],
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
