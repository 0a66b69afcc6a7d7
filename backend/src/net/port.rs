//! The worker of one vNF port: its TX ring (frames from the vNF), its RX ring (frames to the
//! vNF), its TAP uplinks, and its flow-processor instance, all on one thread (no locks).

use std::io;
use std::os::fd::AsRawFd;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dpacc_spec::fastpath::proto::{self, ETHERTYPE};
use dpacc_spec::fastpath::{Emit, FlowProcessor, PacketBuf, PortId, Verdict, MAX_FRAME};
use tracing::{debug, info, warn};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::tap::Tap;
use crate::crypto::worker::{publish_avail_event, Notify};
use crate::vhost_user::QueueStart;
use crate::virtq::ChainBufs;

/// `struct virtio_net_hdr_v1` (VERSION_1: always 12 bytes, `num_buffers` last).
pub const NET_HDR_LEN: usize = 12;
/// `VIRTIO_NET_F_MRG_RXBUF`.
pub const VIRTIO_NET_F_MRG_RXBUF: u64 = 1 << 15;
const BATCH: usize = 32;
const EXPIRE_EVERY: Duration = Duration::from_millis(100);

/// Counters of one port, logged when its worker stops.
#[derive(Clone, Copy, Debug, Default)]
pub struct PortStats {
    /// Frames the vNF transmitted (data and control).
    pub from_vnf: u64,
    /// Control frames handled.
    pub control: u64,
    /// Frames put on the vNF's RX ring.
    pub to_vnf: u64,
    /// Frames for the vNF dropped because its RX ring had no room.
    pub rx_no_buffer: u64,
    /// Frames read from uplinks.
    pub from_uplinks: u64,
    /// Frames written to uplinks.
    pub to_uplinks: u64,
    /// Malformed TX chains or oversized frames.
    pub bad_tx: u64,
}

/// What a port owns across frontend connections.
pub struct PortState {
    /// The port's flow processor.
    pub proc_: Box<dyn FlowProcessor>,
    /// Uplinks (port ids 1..).
    pub uplinks: Vec<Tap>,
    /// Counters.
    pub stats: PortStats,
    /// The vNF's MAC (learned from its control frames) for replies and events.
    pub vnf_mac: [u8; 6],
}

/// The two rings of a port.
pub struct Rings {
    /// Ring 0: device → vNF.
    pub rx: QueueStart,
    /// Ring 1: vNF → device.
    pub tx: QueueStart,
}

/// A running port worker.
pub struct PortWorker {
    exit: EventFd,
    thread: Option<JoinHandle<(Rings, PortState)>>,
}

impl PortWorker {
    /// Starts the worker thread.
    pub fn spawn(rings: Rings, state: PortState) -> io::Result<Self> {
        let exit = EventFd::new(EFD_NONBLOCK)?;
        let exit2 = exit.try_clone()?;
        let thread = std::thread::Builder::new()
            .name("net-port".into())
            .spawn(move || run(rings, state, exit2))?;
        Ok(Self {
            exit,
            thread: Some(thread),
        })
    }

    /// Stops it and returns the rings and the port state.
    pub fn stop(mut self) -> Option<(Rings, PortState)> {
        let _ = self.exit.write(1);
        self.thread.take().and_then(|t| t.join().ok())
    }
}

impl Drop for PortWorker {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = self.exit.write(1);
            let _ = t.join();
        }
    }
}

/// Per-thread scratch.
struct Work {
    pkts: Vec<PacketBuf>,
    verdicts: Vec<Verdict>,
    chain: ChainBufs,
    emits: Vec<Emit>,
    frame: Vec<u8>,
    rx_used: bool,
    t0: Instant,
}

fn drain_eventfd(fd: i32) {
    let mut v = [0u8; 8];
    // SAFETY: reading the 8-byte counter into a live buffer (non-blocking fd or ready).
    unsafe { libc::read(fd, v.as_mut_ptr().cast(), 8) };
}

fn run(mut rings: Rings, mut st: PortState, exit: EventFd) -> (Rings, PortState) {
    let rx_notify = Notify::new(rings.rx.call.as_ref().and_then(|c| c.try_clone().ok()));
    let tx_notify = Notify::new(rings.tx.call.as_ref().and_then(|c| c.try_clone().ok()));
    let mrg = rings.rx.features & VIRTIO_NET_F_MRG_RXBUF != 0;
    let mut w = Work {
        pkts: (0..BATCH).map(|_| PacketBuf::new()).collect(),
        verdicts: vec![Verdict::Drop; BATCH],
        chain: ChainBufs::new(),
        emits: Vec::new(),
        frame: Vec::with_capacity(MAX_FRAME + 64),
        rx_used: false,
        t0: Instant::now(),
    };
    let mut last_expire = Instant::now();
    let mut fds: Vec<libc::pollfd> = [
        rings.tx.kick.as_raw_fd(),
        rings.rx.kick.as_raw_fd(),
        exit.as_raw_fd(),
    ]
    .into_iter()
    .chain(st.uplinks.iter().map(Tap::raw_fd))
    .map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    })
    .collect();
    let mut first = true;
    loop {
        for f in &mut fds {
            f.revents = 0;
        }
        if !first {
            // SAFETY: a live array of pollfd structs of the length passed.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
            if r < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                warn!("net port: poll: {}", io::Error::last_os_error());
                break;
            }
            if fds[2].revents != 0 {
                break;
            }
        }
        first = false;
        for i in [0, 1] {
            if fds[i].revents != 0 {
                drain_eventfd(fds[i].fd);
            }
        }
        let mem = rings.tx.mem.memory();
        w.rx_used = false;
        // Frames from the vNF.
        loop {
            let _ = rings.tx.queue.disable_notification(&*mem);
            let n = tx_batch(&mut rings, &mut st, &mut w, &mem, mrg);
            tx_notify.signal(&mut rings.tx.queue, &mem);
            let _ = publish_avail_event(&rings.tx.queue, &mem);
            if n == 0 && !matches!(rings.tx.queue.enable_notification(&*mem), Ok(true)) {
                break;
            }
        }
        // Frames from the uplinks.
        for u in 0..st.uplinks.len() {
            loop {
                let mut n = 0;
                while n < BATCH {
                    let area = w.pkts[n].load_area(PortId(u as u16 + 1));
                    match st.uplinks[u].read(area) {
                        Ok(Some(len)) => {
                            w.pkts[n].set_len(len);
                            n += 1;
                        }
                        Ok(None) => break,
                        Err(e) => {
                            debug!("uplink {}: read: {e}", st.uplinks[u].name());
                            break;
                        }
                    }
                }
                if n == 0 {
                    break;
                }
                st.stats.from_uplinks += n as u64;
                process(&mut rings, &mut st, &mut w, &mem, mrg, n);
            }
        }
        if last_expire.elapsed() >= EXPIRE_EVERY {
            last_expire = Instant::now();
            w.emits.clear();
            st.proc_.expire(now(&w), &mut w.emits);
            emit_all(&mut rings, &mut st, &mut w, &mem, mrg);
        }
        if w.rx_used {
            let _ = publish_avail_event(&rings.rx.queue, &mem);
            rx_notify.signal(&mut rings.rx.queue, &mem);
        }
    }
    info!(stats = ?st.stats, "net port worker stops");
    (rings, st)
}

fn now(w: &Work) -> u64 {
    w.t0.elapsed().as_nanos() as u64
}

/// Takes up to a batch of frames from the TX ring; control frames are handled at once, the
/// others processed. Returns the chains consumed.
fn tx_batch(
    rings: &mut Rings,
    st: &mut PortState,
    w: &mut Work,
    mem: &GuestMemoryMmap,
    mrg: bool,
) -> usize {
    let mut chains = 0;
    let mut n = 0;
    while n < BATCH {
        let Some(chain) = rings.tx.queue.pop_descriptor_chain(mem) else {
            break;
        };
        chains += 1;
        let head = chain.head_index();
        let ok = w.chain.walk(chain, mem).is_ok();
        let len = w.chain.readable_len().saturating_sub(NET_HDR_LEN);
        if let Err(e) = rings.tx.queue.add_used(mem, head, 0) {
            warn!("tx add_used: {e}");
        }
        if !ok || w.chain.readable_len() < NET_HDR_LEN + 14 || len > MAX_FRAME {
            st.stats.bad_tx += 1;
            continue;
        }
        st.stats.from_vnf += 1;
        let t = now(w);
        let Work {
            pkts,
            chain: cb,
            emits,
            ..
        } = &mut *w;
        let p = &mut pkts[n];
        let area = p.load_area(PortId::VNF);
        if cb.read(NET_HDR_LEN, &mut area[..len]).is_err() {
            st.stats.bad_tx += 1;
            continue;
        }
        p.set_len(len);
        if let Some((_, src, payload)) = proto::parse_frame(p.frame()) {
            // Control frames are for this port's instance only, and never forwarded.
            st.stats.control += 1;
            st.vnf_mac = src;
            emits.clear();
            st.proc_.control(t, payload, emits);
            emit_all(rings, st, w, mem, mrg);
            continue;
        }
        n += 1;
    }
    if n > 0 {
        process(rings, st, w, mem, mrg, n);
    }
    chains
}

fn process(
    rings: &mut Rings,
    st: &mut PortState,
    w: &mut Work,
    mem: &GuestMemoryMmap,
    mrg: bool,
    n: usize,
) {
    let t = now(w);
    st.proc_.process(t, &mut w.pkts[..n], &mut w.verdicts[..n]);
    for i in 0..n {
        match w.verdicts[i] {
            Verdict::Output(port) => {
                let Work {
                    pkts,
                    chain,
                    rx_used,
                    ..
                } = &mut *w;
                output(rings, st, chain, mem, mrg, port, pkts[i].frame(), rx_used);
            }
            Verdict::Drop => {}
            Verdict::Miss { table } => {
                if w.pkts[i].in_port == PortId::VNF {
                    continue; // vNF-originated misses are dropped, never looped back
                }
                let Work {
                    pkts,
                    chain,
                    frame,
                    rx_used,
                    ..
                } = &mut *w;
                proto::encode_packet_in(st.vnf_mac, pkts[i].in_port, table, pkts[i].frame(), frame);
                output(rings, st, chain, mem, mrg, PortId::VNF, frame, rx_used);
            }
        }
    }
}

fn emit_all(rings: &mut Rings, st: &mut PortState, w: &mut Work, mem: &GuestMemoryMmap, mrg: bool) {
    let emits = std::mem::take(&mut w.emits);
    for e in &emits {
        match e {
            Emit::Frame { port, frame } => output(
                rings,
                st,
                &mut w.chain,
                mem,
                mrg,
                *port,
                frame,
                &mut w.rx_used,
            ),
            Emit::Control(payload) => {
                w.frame.clear();
                w.frame.extend_from_slice(&st.vnf_mac);
                w.frame.extend_from_slice(&proto::BACKEND_MAC);
                w.frame.extend_from_slice(&ETHERTYPE.to_be_bytes());
                w.frame.extend_from_slice(payload);
                let f = std::mem::take(&mut w.frame);
                output(
                    rings,
                    st,
                    &mut w.chain,
                    mem,
                    mrg,
                    PortId::VNF,
                    &f,
                    &mut w.rx_used,
                );
                w.frame = f;
            }
        }
    }
    w.emits = emits;
    w.emits.clear();
}

#[allow(clippy::too_many_arguments)]
fn output(
    rings: &mut Rings,
    st: &mut PortState,
    chain: &mut ChainBufs,
    mem: &GuestMemoryMmap,
    mrg: bool,
    port: PortId,
    frame: &[u8],
    rx_used: &mut bool,
) {
    if port == PortId::VNF {
        if to_vnf(&mut rings.rx.queue, chain, mem, mrg, frame) {
            st.stats.to_vnf += 1;
            *rx_used = true;
        } else {
            st.stats.rx_no_buffer += 1;
        }
        return;
    }
    match st.uplinks.get(usize::from(port.0) - 1) {
        Some(tap) => match tap.write(frame) {
            Ok(()) => st.stats.to_uplinks += 1,
            Err(e) => debug!("uplink {}: write: {e}", tap.name()),
        },
        None => debug!("output to missing port {}", port.0),
    }
}

/// Puts `frame` (with a virtio-net header) into the RX ring, over several buffers with
/// MRG_RXBUF. On any shortage the ring is left as it was and false is returned.
fn to_vnf(
    q: &mut Queue,
    chain: &mut ChainBufs,
    mem: &GuestMemoryMmap,
    mrg: bool,
    frame: &[u8],
) -> bool {
    let mut start = q.next_avail();
    let mut heads: [(u16, u32); 16] = [(0, 0); 16];
    let mut nb = 0usize;
    let mut done = 0usize;
    let total = NET_HDR_LEN + frame.len();
    while done < total {
        if nb == heads.len() || (nb == 1 && !mrg) {
            q.set_next_avail(start);
            return false;
        }
        let Some(c) = q.pop_descriptor_chain(mem) else {
            q.set_next_avail(start);
            return false;
        };
        let head = c.head_index();
        let broken = chain.walk(c, mem).is_err()
            || chain.writable_len() == 0
            || (nb == 0 && chain.writable_len() < NET_HDR_LEN);
        if broken {
            if nb > 0 {
                // The guest's own ring is broken mid-frame: drop the frame; it only hurts
                // the guest's reception.
                q.set_next_avail(start);
                return false;
            }
            // Hand the unusable buffer back empty and go on with the next one.
            let _ = q.add_used(mem, head, 0);
            start = q.next_avail();
            continue;
        }
        let room = chain.writable_len();
        let mut written = 0usize;
        if nb == 0 {
            if chain.write(0, &[0u8; NET_HDR_LEN]).is_err() {
                q.set_next_avail(start);
                return false;
            }
            written = NET_HDR_LEN;
            done = NET_HDR_LEN;
        }
        let take = (room - written).min(total - done);
        let from = done - NET_HDR_LEN;
        if chain.write(written, &frame[from..from + take]).is_err() {
            q.set_next_avail(start);
            return false;
        }
        done += take;
        written += take;
        heads[nb] = (head, written as u32);
        nb += 1;
    }
    // num_buffers (little endian) in the first buffer's header: re-walk the first chain.
    let nbuf = (nb as u16).to_le_bytes();
    if nb > 1 {
        // The first chain's buffers are no longer in `chain`; write through guest memory.
        if let Some(c) = descriptor_chain_at(q, mem, start) {
            if chain.walk(c, mem).is_ok() {
                let _ = chain.write(10, &nbuf);
            }
        }
    } else {
        let _ = chain.write(10, &nbuf);
    }
    for &(h, len) in &heads[..nb] {
        if let Err(e) = q.add_used(mem, h, len) {
            warn!("rx add_used: {e}");
        }
    }
    true
}

/// The chain at avail position `at` (already popped), for patching its header.
fn descriptor_chain_at<'m>(
    q: &mut Queue,
    mem: &'m GuestMemoryMmap,
    at: u16,
) -> Option<virtio_queue::DescriptorChain<&'m GuestMemoryMmap>> {
    let now = q.next_avail();
    q.set_next_avail(at);
    let c = q.pop_descriptor_chain(mem);
    q.set_next_avail(now);
    c
}
