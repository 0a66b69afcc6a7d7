//! A fake device for tests (feature `testing`, and this crate's own unit tests): the device
//! side of the split rings the library sets up, in the same shared memory, doing exactly what
//! the test (or a fuzz target) tells it, including what no real device should: used ids of idle
//! chains, the same id twice, used indices that jump or go back, lengths past the buffers,
//! any status byte, answers nobody asked for.
//!
//! [`FakeDevice`] hands out a [`Transport`] ([`FakeDevice::transport`]) that the library's
//! devices are brought up over (`CryptoDevice::with_transport`,
//! `VirtioNetPort::with_transport`). Each queue's device side is a [`DeviceRing`]; a test
//! either drives it by hand ([`FakeDevice::with_ring`]: pop chains, write used entries) or
//! installs a [`Handler`] that answers every chain as soon as the library kicks or waits (what
//! blocking calls such as session creation need). Everything runs on the caller's thread: the
//! library's kick calls the handler.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::mem::SharedMemory;
use crate::transport::{QueueSetup, Transport};
use crate::virtq::{Notifier, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};

/// Guest address of the first byte of the fake device's shared memory.
pub const GPA_BASE: u64 = 0x4000_0000;

/// One buffer of a chain, as the device sees it (indirect tables already followed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Desc {
    /// Guest address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// Device-writable.
    pub writable: bool,
}

/// A chain the device took off the avail ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    /// Its head descriptor (what a used entry names).
    pub head: u16,
    /// Its buffers in order.
    pub descs: Vec<Desc>,
}

impl Chain {
    /// Device-writable bytes in all.
    pub fn writable_len(&self) -> u32 {
        self.descs
            .iter()
            .filter(|d| d.writable)
            .map(|d| d.len)
            .fold(0u32, u32::saturating_add)
    }
    /// Device-readable buffers.
    pub fn readable(&self) -> impl Iterator<Item = &Desc> {
        self.descs.iter().filter(|d| !d.writable)
    }
    /// Device-writable buffers.
    pub fn writable(&self) -> impl Iterator<Item = &Desc> {
        self.descs.iter().filter(|d| d.writable)
    }
}

/// The device side of one split ring.
pub struct DeviceRing {
    mem: Arc<SharedMemory>,
    size: u16,
    /// Offsets of the three parts in `mem`.
    desc: usize,
    avail: usize,
    used: usize,
    last_avail: u16,
    used_idx: u16,
}

impl std::fmt::Debug for DeviceRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceRing")
            .field("size", &self.size)
            .field("last_avail", &self.last_avail)
            .field("used_idx", &self.used_idx)
            .finish()
    }
}

impl DeviceRing {
    fn offset_of(mem: &SharedMemory, process_addr: u64) -> Result<usize> {
        (process_addr as usize)
            .checked_sub(mem.as_ptr() as usize)
            .filter(|&o| o < mem.len())
            .ok_or(Error::InvalidArgument("ring outside the shared memory"))
    }

    fn new(mem: Arc<SharedMemory>, q: &QueueSetup) -> Result<Self> {
        Ok(Self {
            desc: Self::offset_of(&mem, q.desc.1)?,
            avail: Self::offset_of(&mem, q.avail.1)?,
            used: Self::offset_of(&mem, q.used.1)?,
            size: q.size,
            mem,
            last_avail: 0,
            used_idx: 0,
        })
    }

    /// Entries in the ring.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// The used index this side published last.
    pub fn used_idx(&self) -> u16 {
        self.used_idx
    }

    /// Reads `buf.len()` bytes at guest address `gpa`; false if outside the shared memory.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> bool {
        let Some(p) = self.ptr(gpa, buf.len()) else {
            return false;
        };
        for (k, b) in buf.iter_mut().enumerate() {
            // SAFETY: `ptr` checked that the range is inside the mapping; volatile, as the
            // driver side (the library) writes it through raw pointers, not references.
            *b = unsafe { std::ptr::read_volatile(p.add(k)) };
        }
        true
    }

    /// Writes `bytes` at guest address `gpa`; false if outside the shared memory.
    pub fn write(&self, gpa: u64, bytes: &[u8]) -> bool {
        let Some(p) = self.ptr(gpa, bytes.len()) else {
            return false;
        };
        for (k, &b) in bytes.iter().enumerate() {
            // SAFETY: inside the mapping (checked by `ptr`); the fake device writes where the
            // test tells it, as a device would.
            unsafe { std::ptr::write_volatile(p.add(k), b) };
        }
        true
    }

    fn ptr(&self, gpa: u64, len: usize) -> Option<*mut u8> {
        let off = usize::try_from(gpa.checked_sub(self.mem.gpa_base())?).ok()?;
        self.mem.ptr_at(off, len)
    }

    fn r16(&self, off: usize) -> u16 {
        let mut b = [0u8; 2];
        self.read(self.mem.gpa(off), &mut b);
        u16::from_le_bytes(b)
    }

    fn w32(&self, off: usize, v: u32) {
        self.write(self.mem.gpa(off), &v.to_le_bytes());
    }

    /// Reads descriptor `i` of the table at guest address `table`.
    fn desc_at(&self, table: u64, i: u16) -> Option<(u64, u32, u16, u16)> {
        let mut b = [0u8; 16];
        if !self.read(table.checked_add(u64::from(i) * 16)?, &mut b) {
            return None;
        }
        Some((
            u64::from_le_bytes(b[0..8].try_into().ok()?),
            u32::from_le_bytes(b[8..12].try_into().ok()?),
            u16::from_le_bytes([b[12], b[13]]),
            u16::from_le_bytes([b[14], b[15]]),
        ))
    }

    /// Walks a chain from descriptor `i` of `table` (`n` entries), at most `n` links.
    fn walk(&self, table: u64, n: u16, mut i: u16, out: &mut Vec<Desc>) -> Option<()> {
        for _ in 0..n {
            if i >= n {
                return None;
            }
            let (addr, len, flags, next) = self.desc_at(table, i)?;
            if flags & VIRTQ_DESC_F_INDIRECT != 0 {
                let m = u16::try_from(len / 16).ok()?;
                self.walk(addr, m, 0, out)?;
            } else {
                out.push(Desc {
                    addr,
                    len,
                    writable: flags & VIRTQ_DESC_F_WRITE != 0,
                });
            }
            if flags & VIRTQ_DESC_F_NEXT == 0 {
                return Some(());
            }
            i = next;
        }
        None
    }

    /// Takes the next chain the driver made available (`None`: nothing new, or a chain this
    /// fake cannot walk).
    pub fn pop(&mut self) -> Option<Chain> {
        let idx = self.r16(self.avail + 2);
        if idx == self.last_avail {
            return None;
        }
        let slot = usize::from(self.last_avail % self.size);
        let head = self.r16(self.avail + 4 + 2 * slot);
        self.last_avail = self.last_avail.wrapping_add(1);
        // EVENT_IDX: a kick for the very next entry (a device that wants every one).
        let ev = self.used + 4 + 8 * usize::from(self.size);
        self.write(self.mem.gpa(ev), &self.last_avail.to_le_bytes());
        let mut descs = Vec::new();
        self.walk(self.mem.gpa(self.desc), self.size, head, &mut descs)?;
        Some(Chain { head, descs })
    }

    /// Writes used entry number `used_idx + ahead` (not published).
    pub fn write_used_entry(&mut self, ahead: u16, id: u32, len: u32) {
        let slot = usize::from(self.used_idx.wrapping_add(ahead) % self.size);
        self.w32(self.used + 4 + 8 * slot, id);
        self.w32(self.used + 8 + 8 * slot, len);
    }

    /// Publishes `idx` as the used index, whatever it is.
    pub fn set_used_idx(&mut self, idx: u16) {
        self.used_idx = idx;
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        self.write(self.mem.gpa(self.used + 2), &idx.to_le_bytes());
    }

    /// Writes one used entry and publishes it.
    pub fn push_used(&mut self, id: u32, len: u32) {
        self.write_used_entry(0, id, len);
        self.set_used_idx(self.used_idx.wrapping_add(1));
    }

    /// Writes `bytes` into the chain's device-writable buffers from byte `at` of them (as one
    /// stream); returns how many fitted.
    pub fn write_writable(&self, chain: &Chain, at: usize, bytes: &[u8]) -> usize {
        let mut skip = at;
        let mut done = 0;
        for d in chain.writable() {
            let len = d.len as usize;
            if skip >= len {
                skip -= len;
                continue;
            }
            let n = (len - skip).min(bytes.len() - done);
            if !self.write(d.addr + skip as u64, &bytes[done..done + n]) {
                return done;
            }
            done += n;
            skip = 0;
            if done == bytes.len() {
                break;
            }
        }
        done
    }

    /// The chain's device-readable bytes, as one stream.
    pub fn read_readable(&self, chain: &Chain) -> Vec<u8> {
        let mut out = Vec::new();
        for d in chain.readable() {
            let mut b = vec![0u8; d.len as usize];
            if self.read(d.addr, &mut b) {
                out.extend_from_slice(&b);
            }
        }
        out
    }

    /// Writes `status` into the chain's last device-writable byte (where virtio-crypto keeps
    /// it) and completes the chain with its whole writable length.
    pub fn complete_with_status(&mut self, chain: &Chain, status: u8) {
        let wl = chain.writable_len();
        if wl > 0 {
            self.write_writable(chain, wl as usize - 1, &[status]);
        }
        self.push_used(u32::from(chain.head), wl);
    }
}

/// Answers every chain of one queue as soon as the driver kicks or waits. It runs with the
/// fake device locked: it must not call [`FakeDevice`] methods.
pub type Handler = Box<dyn FnMut(&mut DeviceRing, Chain) + Send>;

struct State {
    mem: Option<Arc<SharedMemory>>,
    rings: Vec<Option<DeviceRing>>,
    handlers: Vec<Option<Handler>>,
    kicks: Vec<u64>,
    config: Vec<u8>,
    features: u64,
}

impl State {
    /// Runs queue `index`'s handler on every chain available.
    fn serve(&mut self, index: usize) {
        let (Some(Some(ring)), Some(slot)) =
            (self.rings.get_mut(index), self.handlers.get_mut(index))
        else {
            return;
        };
        if let Some(h) = slot.as_mut() {
            while let Some(c) = ring.pop() {
                h(ring, c);
            }
        }
    }
}

/// A scripted virtio device over the library's own shared memory (see the module docs).
/// Cheap to clone: every clone is the same device.
#[derive(Clone)]
pub struct FakeDevice {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for FakeDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeDevice").finish_non_exhaustive()
    }
}

impl FakeDevice {
    /// A device with `num_queues` queues, this config space and these negotiated features.
    pub fn new(num_queues: u16, config: Vec<u8>, features: u64) -> Self {
        let n = usize::from(num_queues);
        Self {
            state: Arc::new(Mutex::new(State {
                mem: None,
                rings: (0..n).map(|_| None).collect(),
                handlers: (0..n).map(|_| None).collect(),
                kicks: vec![0; n],
                config,
                features,
            })),
        }
    }

    /// A ready virtio-crypto device with `data_queues` data queues (and the control queue
    /// after them) offering every service and algorithm, EVENT_IDX and indirect descriptors.
    pub fn crypto(data_queues: u16) -> Self {
        let features = crate::transport::VIRTIO_F_VERSION_1
            | crate::transport::VIRTIO_RING_F_EVENT_IDX
            | crate::transport::VIRTIO_RING_F_INDIRECT_DESC;
        Self::new(data_queues + 1, crypto_config(data_queues), features)
    }

    /// A virtio-net device (RX queue 0, TX queue 1) with MAC `mac`, and MRG_RXBUF if `mrg`.
    pub fn net(mac: [u8; 6], mrg: bool) -> Self {
        let features = crate::transport::VIRTIO_F_VERSION_1
            | crate::transport::VIRTIO_RING_F_EVENT_IDX
            | crate::net::port::VIRTIO_NET_F_MAC
            | if mrg {
                crate::net::port::VIRTIO_NET_F_MRG_RXBUF
            } else {
                0
            };
        Self::new(2, mac.to_vec(), features)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The transport to bring a library device up over.
    pub fn transport(&self) -> Box<dyn Transport> {
        Box::new(FakeTransport { dev: self.clone() })
    }

    /// Answers every chain of queue `index` with `h` from now on (and those waiting now).
    pub fn set_handler(&self, index: u16, h: Handler) {
        let mut s = self.lock();
        if let Some(slot) = s.handlers.get_mut(usize::from(index)) {
            *slot = Some(h);
        }
        s.serve(usize::from(index));
    }

    /// Stops answering queue `index` by itself (chains then wait for [`with_ring`](Self::with_ring)).
    pub fn clear_handler(&self, index: u16) {
        if let Some(slot) = self.lock().handlers.get_mut(usize::from(index)) {
            *slot = None;
        }
    }

    /// Runs `f` on queue `index`'s device side (`None` if the queue was never set up).
    pub fn with_ring<R>(&self, index: u16, f: impl FnOnce(&mut DeviceRing) -> R) -> Option<R> {
        let mut s = self.lock();
        s.rings
            .get_mut(usize::from(index))
            .and_then(|r| r.as_mut())
            .map(f)
    }

    /// Kicks the driver sent on queue `index`.
    pub fn kicks(&self, index: u16) -> u64 {
        self.lock()
            .kicks
            .get(usize::from(index))
            .copied()
            .unwrap_or(0)
    }
}

/// The config space of [`FakeDevice::crypto`]: ready, `data_queues` data queues, every
/// service and algorithm (also what it answers to dpacc's in-band `GET_CONFIG`).
pub fn crypto_config(data_queues: u16) -> Vec<u8> {
    use dpacc_spec::virtio_crypto::{Config, S_HW_READY};
    use vm_memory::ByteValued;
    let all = u32::MAX.into();
    let c = Config {
        status: S_HW_READY.into(),
        max_dataqueues: u32::from(data_queues).into(),
        crypto_services: 0xf.into(),
        cipher_algo_l: all,
        hash_algo: all,
        mac_algo_l: all,
        aead_algo: all,
        max_cipher_key_len: 64.into(),
        max_auth_key_len: 512.into(),
        max_size: (1u64 << 20).into(),
        ..Config::default()
    };
    c.as_slice().to_vec()
}

struct FakeTransport {
    dev: FakeDevice,
}

impl Transport for FakeTransport {
    fn features(&self) -> u64 {
        self.dev.lock().features
    }
    fn num_queues(&self) -> u16 {
        self.dev.lock().rings.len() as u16
    }
    fn read_config(&mut self, buf: &mut [u8]) -> Result<()> {
        let s = self.dev.lock();
        buf.fill(0);
        let n = buf.len().min(s.config.len());
        buf[..n].copy_from_slice(&s.config[..n]);
        Ok(())
    }
    fn setup_memory(&mut self, size: usize) -> Result<Arc<SharedMemory>> {
        let mem = Arc::new(SharedMemory::new(size, GPA_BASE)?);
        self.dev.lock().mem = Some(mem.clone());
        Ok(mem)
    }
    fn setup_queue(&mut self, q: &QueueSetup) -> Result<Box<dyn Notifier>> {
        let mut s = self.dev.lock();
        let mem = s
            .mem
            .clone()
            .ok_or(Error::InvalidArgument("queue set up before the memory"))?;
        let ring = DeviceRing::new(mem, q)?;
        let slot = s
            .rings
            .get_mut(usize::from(q.index))
            .ok_or(Error::InvalidArgument("queue index"))?;
        *slot = Some(ring);
        Ok(Box::new(FakeNotifier {
            dev: self.dev.clone(),
            index: q.index,
        }))
    }
    fn activate(&mut self) -> Result<()> {
        Ok(())
    }
}

struct FakeNotifier {
    dev: FakeDevice,
    index: u16,
}

impl Notifier for FakeNotifier {
    fn kick(&self) -> Result<()> {
        let mut s = self.dev.lock();
        let i = usize::from(self.index);
        if let Some(k) = s.kicks.get_mut(i) {
            *k += 1;
        }
        s.serve(i);
        Ok(())
    }

    /// Answers what its handler can, then "interrupts" after at most a millisecond (the
    /// library rechecks its ring and its deadline after every wake-up).
    fn wait(&self, timeout: Option<Duration>) -> Result<bool> {
        self.dev.lock().serve(usize::from(self.index));
        let t = timeout.unwrap_or(Duration::from_millis(1));
        std::thread::sleep(t.min(Duration::from_millis(1)));
        Ok(true)
    }
}
