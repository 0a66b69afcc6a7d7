//! [`GuestPort`]: a running virtio-net ring pair seen from the device: frames in from the
//! driver's TX ring, frames out into its RX ring (over several buffers with MRG_RXBUF), and
//! the notifications both need.

use dpacc_spec::fastpath::{PacketBuf, PortId, MAX_FRAME};
use tracing::warn;
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryMmap};

use super::slot::RingPair;
use crate::crypto::worker::{publish_avail_event, Notify};
use crate::vhost_user::GuestMem;
use crate::virtq::ChainBufs;

/// `struct virtio_net_hdr_v1` (VERSION_1 or MRG_RXBUF: 12 bytes, `num_buffers` last).
pub const NET_HDR_LEN: usize = 12;
/// The legacy header without `num_buffers` (neither VERSION_1 nor MRG_RXBUF).
const LEGACY_HDR_LEN: usize = 10;
/// `VIRTIO_NET_F_MRG_RXBUF`.
pub const VIRTIO_NET_F_MRG_RXBUF: u64 = 1 << 15;
const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Most RX buffers one frame may span with MRG_RXBUF.
const MAX_RX_BUFS: usize = 16;

/// What [`GuestPort::pop_frame`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Pop {
    /// The TX ring is empty.
    Empty,
    /// A chain was consumed but held no usable frame (broken, too short or too long).
    Bad,
    /// A frame was loaded into the packet buffer.
    Frame,
}

/// A virtio-net ring pair in use by a port worker.
pub struct GuestPort {
    rings: RingPair,
    mem: <GuestMem as GuestAddressSpace>::T,
    rx_notify: Notify,
    tx_notify: Notify,
    hdr_len: usize,
    mrg: bool,
    rx_used: bool,
}

impl GuestPort {
    /// Takes over a started ring pair.
    pub fn new(rings: RingPair) -> Self {
        let f = rings.rx.features;
        let mrg = f & VIRTIO_NET_F_MRG_RXBUF != 0;
        let hdr_len = if mrg || f & VIRTIO_F_VERSION_1 != 0 {
            NET_HDR_LEN
        } else {
            LEGACY_HDR_LEN
        };
        Self {
            mem: rings.tx.mem.memory(),
            rx_notify: Notify::new(rings.rx.call.as_ref().and_then(|c| c.try_clone().ok())),
            tx_notify: Notify::new(rings.tx.call.as_ref().and_then(|c| c.try_clone().ok())),
            hdr_len,
            mrg,
            rx_used: false,
            rings,
        }
    }

    /// Gives the rings back (with their current indices).
    pub fn into_rings(self) -> RingPair {
        self.rings
    }

    /// The TX ring's kick eventfd.
    pub fn tx_kick(&self) -> i32 {
        std::os::fd::AsRawFd::as_raw_fd(&self.rings.tx.kick)
    }

    /// The RX ring's kick eventfd (the driver added buffers).
    pub fn rx_kick(&self) -> i32 {
        std::os::fd::AsRawFd::as_raw_fd(&self.rings.rx.kick)
    }

    /// Takes a fresh guest memory snapshot (call once per wake-up, before using the rings).
    pub fn refresh(&mut self) {
        self.mem = self.rings.tx.mem.memory();
    }

    /// Starts a TX pass: no kicks while we are draining.
    pub fn tx_begin(&mut self) {
        let _ = self.rings.tx.queue.disable_notification(&*self.mem);
    }

    /// Ends a TX pass that consumed `n` chains: notifies the driver of the used buffers and
    /// re-enables kicks. True if more frames arrived meanwhile (run another pass).
    pub fn tx_end(&mut self, n: usize) -> bool {
        let mem: &GuestMemoryMmap = &self.mem;
        if n > 0 {
            self.tx_notify.signal(&mut self.rings.tx.queue, mem);
        }
        let _ = publish_avail_event(&self.rings.tx.queue, mem);
        n > 0 || matches!(self.rings.tx.queue.enable_notification(mem), Ok(true))
    }

    /// Moves the next frame of the TX ring into `pkt` (arriving on `port`), returning its
    /// chain to the driver at once.
    pub fn pop_frame(&mut self, chain: &mut ChainBufs, pkt: &mut PacketBuf, port: PortId) -> Pop {
        let mem: &GuestMemoryMmap = &self.mem;
        let q = &mut self.rings.tx.queue;
        let Some(c) = q.pop_descriptor_chain(mem) else {
            return Pop::Empty;
        };
        let head = c.head_index();
        let ok = chain.walk(c, mem).is_ok();
        if let Err(e) = q.add_used(mem, head, 0) {
            warn!("tx add_used: {e}");
        }
        let total = chain.readable_len();
        if !ok || total < self.hdr_len + 14 || total - self.hdr_len > MAX_FRAME {
            return Pop::Bad;
        }
        let len = total - self.hdr_len;
        let area = pkt.load_area(port);
        if chain.read(self.hdr_len, &mut area[..len]).is_err() {
            return Pop::Bad;
        }
        pkt.set_len(len);
        Pop::Frame
    }

    /// Puts `frame` (after a zeroed virtio-net header) into the RX ring. On any shortage the
    /// ring is left as it was and false is returned (the frame is dropped).
    pub fn push_frame(&mut self, chain: &mut ChainBufs, frame: &[u8]) -> bool {
        let mem: &GuestMemoryMmap = &self.mem;
        let q = &mut self.rings.rx.queue;
        let hdr = self.hdr_len;
        let mut start = q.next_avail();
        let mut heads = [(0u16, 0u32); MAX_RX_BUFS];
        let mut nb = 0usize;
        let mut done = 0usize;
        let total = hdr + frame.len();
        while done < total {
            if nb == heads.len() || (nb == 1 && !self.mrg) {
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
                || (nb == 0 && chain.writable_len() < hdr);
            if broken {
                if nb > 0 {
                    // The driver's ring is broken mid-frame: drop the frame; it only hurts
                    // the driver's own reception.
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
                let mut h = [0u8; NET_HDR_LEN];
                h[10] = 1; // num_buffers, patched below when the frame spans several
                if chain.write(0, &h[..hdr]).is_err() {
                    q.set_next_avail(start);
                    return false;
                }
                written = hdr;
                done = hdr;
            }
            let take = (room - written).min(total - done);
            let from = done - hdr;
            if chain.write(written, &frame[from..from + take]).is_err() {
                q.set_next_avail(start);
                return false;
            }
            done += take;
            written += take;
            heads[nb] = (head, written as u32);
            nb += 1;
        }
        if nb > 1 {
            // num_buffers (little endian) in the first buffer's header: re-walk that chain.
            let now = q.next_avail();
            q.set_next_avail(start);
            let first = q.pop_descriptor_chain(mem);
            q.set_next_avail(now);
            if let Some(c) = first {
                if chain.walk(c, mem).is_ok() {
                    let _ = chain.write(10, &(nb as u16).to_le_bytes());
                }
            }
        }
        for &(h, len) in &heads[..nb] {
            if let Err(e) = q.add_used(mem, h, len) {
                warn!("rx add_used: {e}");
            }
        }
        self.rx_used = true;
        true
    }

    /// Notifies the driver of frames put into its RX ring since the last flush.
    pub fn rx_flush(&mut self) {
        if !self.rx_used {
            return;
        }
        self.rx_used = false;
        let mem: &GuestMemoryMmap = &self.mem;
        let _ = publish_avail_event(&self.rings.rx.queue, mem);
        self.rx_notify.signal(&mut self.rings.rx.queue, mem);
    }
}
