//! [`VirtioNetPort`]: a vNF port driven from this process, the RX and TX rings of a virtio-net
//! device in memory the device can reach: over virtio-user straight to `dpacc-backend net`'s
//! socket (containers and tests), or over the VM's `virtio-net-pci` function (a vNF in a VM;
//! QEMU hands the rings to the same backend).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::FrameIo;
use crate::mem::{place, SharedMemory};
use crate::transport::pci::caps::VIRTIO_ID_NET;
use crate::transport::virtio_user::VirtioUser;
use crate::transport::{setup_split_queue, Endpoint, Transport};
use crate::virtq::{Notifier, RawDesc, RingLayout, SplitQueue};
use crate::{Error, Result};

/// `VIRTIO_NET_F_MRG_RXBUF`.
pub const VIRTIO_NET_F_MRG_RXBUF: u64 = 1 << 15;
/// `VIRTIO_NET_F_MAC`.
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
const HDR: usize = 12;
const TX_SLOT: usize = 2048;

/// Options of a [`VirtioNetPort`].
#[derive(Clone, Copy, Debug)]
pub struct NetOptions {
    /// Ring size of both queues.
    pub queue_size: u16,
    /// Size of each posted RX buffer (with MRG_RXBUF a frame may span several).
    pub rx_buf: usize,
    /// Ask for MRG_RXBUF.
    pub mrg_rxbuf: bool,
}

impl Default for NetOptions {
    fn default() -> Self {
        Self {
            queue_size: 256,
            rx_buf: 2048,
            mrg_rxbuf: true,
        }
    }
}

/// A virtio-net port driven from this process.
pub struct VirtioNetPort {
    // First: dropping the transport stops the device before the memory can go.
    _t: Box<dyn Transport>,
    mem: Arc<SharedMemory>,
    rx: SplitQueue,
    tx: SplitQueue,
    rx_n: Box<dyn Notifier>,
    tx_n: Box<dyn Notifier>,
    rx_off: usize,
    /// Bytes between RX buffers (`rx_buf`, or the next power of two on hugepage memory so
    /// that no buffer straddles two DMA segments).
    rx_stride: usize,
    tx_off: usize,
    opts: NetOptions,
    mrg: bool,
    mac: [u8; 6],
    tx_free: Vec<u16>,
}

impl std::fmt::Debug for VirtioNetPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioNetPort")
            .field("mac", &self.mac)
            .field("mrg", &self.mrg)
            .finish()
    }
}

fn wanted_features(opts: &NetOptions) -> u64 {
    VIRTIO_NET_F_MAC
        | if opts.mrg_rxbuf {
            VIRTIO_NET_F_MRG_RXBUF
        } else {
            0
        }
}

impl VirtioNetPort {
    /// Opens the port at `endpoint`: `pci:DDDD:BB:DD.F` (a `virtio-net-pci` function of this
    /// VM, see [`transport::pci`](crate::transport::pci)) or `vhost-user:PATH` (the port's
    /// socket).
    pub fn open(endpoint: &str, opts: NetOptions) -> Result<Self> {
        let ep: Endpoint = endpoint.parse()?;
        let t = ep.open(VIRTIO_ID_NET, wanted_features(&opts), true, false)?;
        Self::with_transport(t, opts)
    }

    /// Connects to a vhost-user net device at `path`, sets up the rings and posts RX buffers.
    pub fn connect(path: impl AsRef<Path>, opts: NetOptions) -> Result<Self> {
        let t = VirtioUser::connect_with(path.as_ref(), wanted_features(&opts), true, false)?;
        Self::with_transport(Box::new(t), opts)
    }

    /// Brings the port up over any [`Transport`] (RX queue 0, TX queue 1).
    pub fn with_transport(mut t: Box<dyn Transport>, opts: NetOptions) -> Result<Self> {
        if t.num_queues() < 2 {
            return Err(Error::Protocol("a net device needs an RX and a TX queue"));
        }
        let qs = opts
            .queue_size
            .min(t.max_queue_size(0))
            .min(t.max_queue_size(1));
        if qs == 0 || !qs.is_power_of_two() || opts.rx_buf < HDR + 14 {
            return Err(Error::InvalidArgument("queue size or RX buffer size"));
        }
        let mrg = t.features() & VIRTIO_NET_F_MRG_RXBUF != 0;
        if !mrg && opts.rx_buf < HDR + 1514 {
            return Err(Error::InvalidArgument(
                "RX buffers below 1526 bytes need MRG_RXBUF",
            ));
        }
        let mut mac = [0u8; 6];
        t.read_config(&mut mac)?;
        let seg = t.dma_segment();
        let rx_stride = match seg {
            Some(s) if opts.rx_buf <= s => opts.rx_buf.next_power_of_two(),
            Some(_) => return Err(Error::InvalidArgument("RX buffers above 2 MiB")),
            None => opts.rx_buf,
        };
        let ring = RingLayout::new(qs).total;
        let n = usize::from(qs);
        let rx_ring = place(0, ring, 4096, seg);
        let tx_ring = place(rx_ring + ring, ring, 4096, seg);
        let rx_off = place(tx_ring + ring, n * rx_stride, rx_stride.max(4096), seg);
        let tx_off = place(rx_off + n * rx_stride, n * TX_SLOT, 4096, seg);
        let total = tx_off + n * TX_SLOT;
        let mem = t.setup_memory(total)?;
        // SAFETY: the two rings have their own 4 KiB-aligned parts of the fresh, zeroed
        // mapping, used by their queue only; `mem` is kept beside the queues in `Self`.
        let (rx, rx_n) = unsafe { setup_split_queue(&mut *t, &mem, rx_ring, 0, qs, true)? };
        // SAFETY: as above.
        let (tx, tx_n) = unsafe { setup_split_queue(&mut *t, &mem, tx_ring, 1, qs, true)? };
        t.activate()?;
        let mut me = Self {
            _t: t,
            mem,
            rx,
            tx,
            rx_n,
            tx_n,
            rx_off,
            rx_stride,
            tx_off,
            opts,
            mrg,
            mac,
            tx_free: (0..qs).rev().collect(),
        };
        for i in 0..qs {
            me.post_rx(i)?;
        }
        if me.rx.publish() {
            me.rx_n.kick()?;
        }
        Ok(me)
    }

    /// The MAC address the device reported.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Whether MRG_RXBUF was negotiated.
    pub fn mrg_rxbuf(&self) -> bool {
        self.mrg
    }

    fn post_rx(&mut self, slot: u16) -> Result<()> {
        let off = self.rx_off + usize::from(slot) * self.rx_stride;
        self.rx.add(
            &[RawDesc::writable(
                self.mem.gpa(off),
                self.opts.rx_buf as u32,
            )],
            u64::from(slot),
        )?;
        Ok(())
    }

    fn rx_bytes(&self, slot: u64, len: usize) -> &[u8] {
        let off = self.rx_off + slot as usize * self.rx_stride;
        let p = self.mem.ptr_at(off, len).expect("inside the RX area");
        // SAFETY: the buffer was returned by the device (used ring), so it is ours to read
        // until we post it again; `len` was checked against the buffer size.
        unsafe { std::slice::from_raw_parts(p, len) }
    }

    /// Queues as many of `frames` as there are free TX slots, with one publish and at most
    /// one kick; returns how many were queued.
    pub fn send_batch(&mut self, frames: &[&[u8]]) -> Result<usize> {
        self.reap_tx()?;
        let mut n = 0;
        for f in frames {
            if f.len() + HDR > TX_SLOT {
                return Err(Error::InvalidArgument("frame longer than 2036 bytes"));
            }
            let Some(slot) = self.tx_free.pop() else {
                break;
            };
            let off = self.tx_off + usize::from(slot) * TX_SLOT;
            let p = self
                .mem
                .ptr_at(off, HDR + f.len())
                .expect("inside the TX area");
            // SAFETY: the slot is free (not in flight), inside our shared mapping.
            unsafe {
                std::ptr::write_bytes(p, 0, HDR);
                std::ptr::copy_nonoverlapping(f.as_ptr(), p.add(HDR), f.len());
            }
            self.tx.add(
                &[RawDesc::readable(self.mem.gpa(off), (HDR + f.len()) as u32)],
                u64::from(slot),
            )?;
            n += 1;
        }
        if n > 0 && self.tx.publish() {
            self.tx_n.kick()?;
        }
        Ok(n)
    }

    fn reap_tx(&mut self) -> Result<()> {
        while let Some(u) = self.tx.reap()? {
            self.tx_free.push(u.token as u16);
        }
        Ok(())
    }
}

impl FrameIo for VirtioNetPort {
    fn send(&mut self, frame: &[u8]) -> Result<()> {
        if frame.len() + HDR > TX_SLOT {
            return Err(Error::InvalidArgument("frame longer than 2036 bytes"));
        }
        self.reap_tx()?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.tx_free.is_empty() {
            if Instant::now() > deadline {
                return Err(Error::Timeout);
            }
            if self.tx.prepare_wait() {
                self.tx_n.wait(Some(Duration::from_millis(50)))?;
            }
            self.reap_tx()?;
        }
        self.send_batch(&[frame])?;
        Ok(())
    }

    fn send_all(&mut self, frames: &[&[u8]]) -> Result<()> {
        let mut rest = frames;
        while let Some(first) = rest.first() {
            let n = self.send_batch(rest)?;
            if n == 0 {
                self.send(first)?; // waits for a free TX slot
                rest = &rest[1..];
            } else {
                rest = &rest[n..];
            }
        }
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8], timeout: Option<Duration>) -> Result<Option<usize>> {
        // A poll (zero timeout) reads no clock: event loops call it in a tight loop.
        let poll = timeout == Some(Duration::ZERO);
        let deadline = if poll {
            None
        } else {
            timeout.map(|t| Instant::now() + t)
        };
        loop {
            if let Some(u) = self.rx.reap()? {
                let len = (u.len as usize).min(self.opts.rx_buf);
                if len < HDR {
                    self.post_rx(u.token as u16)?;
                    continue;
                }
                let first = self.rx_bytes(u.token, len);
                // Without MRG_RXBUF a frame is one buffer, whatever the header says.
                let nbuf = if self.mrg {
                    u16::from_le_bytes([first[10], first[11]]).max(1)
                } else {
                    1
                };
                let mut n = (len - HDR).min(buf.len());
                buf[..n].copy_from_slice(&first[HDR..HDR + n]);
                self.post_rx(u.token as u16)?;
                for _ in 1..nbuf {
                    let Some(more) = self.rx.reap()? else {
                        // The device publishes a frame's buffers together: the rest of the
                        // ring can no longer be told apart into frames.
                        self.rx.mark_broken();
                        return Err(Error::Protocol("num_buffers larger than the buffers used"));
                    };
                    let l = (more.len as usize).min(self.opts.rx_buf);
                    let take = l.min(buf.len() - n);
                    let src = self.rx_bytes(more.token, l);
                    buf[n..n + take].copy_from_slice(&src[..take]);
                    n += take;
                    self.post_rx(more.token as u16)?;
                }
                if self.rx.publish() {
                    self.rx_n.kick()?;
                }
                return Ok(Some(n));
            }
            if poll {
                return Ok(None);
            }
            let left = match deadline {
                Some(d) => {
                    let l = d.saturating_duration_since(Instant::now());
                    if l.is_zero() {
                        return Ok(None);
                    }
                    Some(l.min(Duration::from_millis(100)))
                }
                None => Some(Duration::from_millis(100)),
            };
            if self.rx.prepare_wait() {
                self.rx_n.wait(left)?;
            }
        }
    }
}
