//! Entry points of the cargo-fuzz targets in `fuzz/` (feature `fuzzing`): thin adapters over
//! the crate's internals, which stay private. Not an API: shapes follow the internals.
//!
//! Every function here panics only on a harness failure (no memfd, no socket pair) or on a
//! broken invariant of the code under test; hostile input must never make one panic.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use dpacc_spec::fastpath::{FastPathDriver, InstanceConfig, PacketBuf, PortId, Quotas};
use dpacc_spec::virtio_crypto::status;
use dpacc_spec::{
    AeadAlg, ChainAuth, ChainOrder, CipherAlg, CryptoDriver, Direction, HashAlg, MacAlg,
    SessionParams,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::crypto::control::{Control, ControlPath};
use crate::crypto::data::DataPath;
use crate::crypto::sessions::SessionTable;
use crate::crypto::worker::{Notify, Processor};
use crate::crypto::{CryptoBackendConfig, CryptoDevice};
use crate::net::device::NetDevice;
use crate::net::rings::NetRings;
use crate::net::rings::OutFrame;
use crate::net::slot::{RingPair, RingSlot};
use crate::net::vnf_worker::{Port, SharedPort, VnfInstance, VnfShared, VnfStats, VnfWorker};
use crate::vhost_user::{channel, memory, server, tables, GuestMem, QueueStart};
use crate::virtq::{ChainBufs, FastMem};

fn memfd(size: usize, seal: bool) -> OwnedFd {
    // SAFETY: creating and sizing a memfd we own.
    unsafe {
        let fd = libc::memfd_create(
            c"dpacc-fuzz".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        );
        assert!(fd >= 0, "memfd_create");
        assert_eq!(libc::ftruncate(fd, size as i64), 0);
        if seal {
            libc::fcntl(fd, libc::F_ADD_SEALS, libc::F_SEAL_SHRINK);
        }
        OwnedFd::from_raw_fd(fd)
    }
}

// ------------------------------------------------------------------ vhost-user messages

/// Feeds `bytes` to the message framing as one frontend's byte stream (at most 64 KiB);
/// returns how many messages were read before the stream ended or broke.
pub fn decode_messages(bytes: &[u8]) -> usize {
    let (a, mut b) = UnixStream::pair().expect("socketpair");
    b.write_all(&bytes[..bytes.len().min(64 << 10)])
        .expect("socket buffer");
    drop(b);
    let mut ch = channel::Channel::new(a);
    let mut m = channel::Msg::default();
    let mut n = 0;
    while ch.recv(&mut m).is_ok() {
        n += 1;
    }
    n
}

/// Parses a SET_MEM_TABLE payload with one memfd per entry of `files` (size, sealed; at most
/// 1 MiB each). When the table is accepted, every byte it maps must be readable: a region past
/// the end of its file would raise SIGBUS here. Returns whether it was accepted.
pub fn memory_table(payload: &[u8], files: &[(usize, bool)]) -> bool {
    let fds = files
        .iter()
        .map(|&(size, seal)| memfd(size.min(1 << 20), seal))
        .collect();
    let Ok(t) = memory::map_table(payload, fds) else {
        return false;
    };
    for r in t.mem.iter() {
        use vm_memory::GuestMemoryRegion;
        let (start, len) = (r.start_addr(), r.len());
        for a in [start.0, start.0 + len / 2, start.0 + len - 1] {
            let _: u8 = t.mem.read_obj(GuestAddress(a)).expect("mapped");
        }
    }
    assert_eq!(t.ranges.len(), t.mem.num_regions());
    true
}

/// The device a [`vhost_user_session`] talks to.
#[derive(Clone, Copy, Debug)]
pub enum Device {
    /// virtio-crypto, one data queue and the control queue, on the software driver.
    Crypto,
    /// A vNF's virtio-net port with its worker and flow processor.
    Net,
}

/// A file descriptor attached to a message.
#[derive(Clone, Copy, Debug)]
pub enum Fd {
    /// The session's guest memory (a 256 KiB memfd, not sealed).
    Memory,
    /// A fresh eventfd (kick/call/err); [`SessionOp::Kick`] signals them by number.
    Event,
    /// Something that is neither (a pipe).
    Pipe,
}

/// One step of a [`vhost_user_session`].
#[derive(Clone, Debug)]
pub enum SessionOp {
    /// A message from the frontend.
    Msg {
        /// Request code.
        request: u32,
        /// Header flags (version bits included, as sent).
        flags: u32,
        /// Payload.
        payload: Vec<u8>,
        /// Attached descriptors.
        fds: Vec<Fd>,
    },
    /// Write into guest memory (ignored past its current size).
    Write {
        /// Offset.
        offset: usize,
        /// Bytes.
        data: Vec<u8>,
    },
    /// Signal the eventfd with this number (modulo those created).
    Kick(u8),
    /// Truncate the guest memory file to this many bytes (the attack of issue 11).
    Shrink(usize),
}

/// Size of a session's guest memory.
pub const SESSION_MEM: usize = 256 << 10;

/// Runs `ops` as one frontend connection against `device` (the server's state machine, its
/// workers included). Ends early where the server would close the connection.
pub fn vhost_user_session(device: Device, ops: &[SessionOp]) {
    let mem_fd = memfd(SESSION_MEM, false);
    // SAFETY: mapping the memfd we just sized; unmapped at the end of this function.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            SESSION_MEM,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            mem_fd.as_raw_fd(),
            0,
        )
    };
    assert_ne!(base, libc::MAP_FAILED, "mmap");
    let mut tables = tables::GuestTables::new().expect("eventfd");
    match device {
        Device::Crypto => {
            let mut dev = CryptoDevice::new(CryptoBackendConfig {
                queues: 1,
                queue_size: 64,
                max_sessions: 8,
                driver: Arc::new(dpacc_sw::SwDriver::new()),
                busy_poll: Duration::ZERO,
            })
            .expect("config");
            // Predictable ids: the first session a frontend creates is 1 << 32.
            dev.sessions = Arc::new(SessionTable::with_first_gen(8, 1));
            run_session(&mut dev, &mut tables, &mem_fd, base.cast(), ops);
            dev.stop_all();
        }
        Device::Net => {
            let slot = Arc::new(RingSlot::new("fuzz").expect("eventfd"));
            let fp = dpacc_sw::flow::SwFastPath::new(Arc::new(dpacc_sw::SwDriver::new()));
            let proc_ = fp
                .create_instance(&InstanceConfig {
                    name: "fuzz".into(),
                    uplinks: 0,
                    quotas: Quotas {
                        flows: 16,
                        groups: 4,
                        buckets: 16,
                        sas: 4,
                        actions: 8,
                    },
                    lanes: 1,
                })
                .expect("instance");
            let lane = proc_.lane(0).expect("lane 0");
            let worker = VnfWorker::spawn(
                VnfInstance {
                    shared: Arc::new(VnfShared {
                        proc_,
                        ports: vec![SharedPort::vhost(1)],
                        epoch: std::time::Instant::now(),
                        vnf_mac: AtomicU64::new(0xffff_ffff_ffff),
                        counters: Box::new([crate::net::counters::WorkerCounters::new(1)]),
                    }),
                    lane,
                    index: 0,
                    ports: vec![Port::Vhost(slot.clone())],
                    stats: VnfStats::default(),
                },
                Duration::ZERO,
                Duration::from_secs(60),
            )
            .expect("worker");
            let mut dev = NetDevice::new([2, 0, 0, 0, 0, 1], 64, vec![slot]);
            run_session(&mut dev, &mut tables, &mem_fd, base.cast(), ops);
            worker.stop();
        }
    }
    drop(tables);
    // SAFETY: unmapping what we mapped above.
    unsafe { libc::munmap(base, SESSION_MEM) };
}

fn run_session<D: crate::vhost_user::VhostUserDevice>(
    dev: &mut D,
    tables: &mut tables::GuestTables,
    mem_fd: &OwnedFd,
    base: *mut u8,
    ops: &[SessionOp],
) {
    let (a, mut b) = UnixStream::pair().expect("socketpair");
    b.set_nonblocking(true).expect("nonblocking");
    let mut events: Vec<EventFd> = Vec::new();
    let mut pipes: Vec<(OwnedFd, OwnedFd)> = Vec::new();
    let mut mem_len = SESSION_MEM;
    let mut driver = server::Driver::new(dev, tables, a);
    let mut sink = vec![0u8; 8192];
    for op in ops {
        match op {
            SessionOp::Msg {
                request,
                flags,
                payload,
                fds,
            } => {
                let mut raw: Vec<RawFd> = Vec::new();
                for f in fds.iter().take(channel::MAX_FDS) {
                    raw.push(match f {
                        Fd::Memory => mem_fd.as_raw_fd(),
                        Fd::Event => {
                            events.push(EventFd::new(EFD_NONBLOCK).expect("eventfd"));
                            events[events.len() - 1].as_raw_fd()
                        }
                        Fd::Pipe => {
                            let mut p = [0; 2];
                            // SAFETY: pipe2 into a two-element array.
                            assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
                            // SAFETY: both descriptors were just created and are ours.
                            pipes.push(unsafe {
                                (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1]))
                            });
                            p[0]
                        }
                    });
                }
                let payload = &payload[..payload.len().min(channel::MAX_PAYLOAD)];
                send_msg(&b, *request, *flags, payload, &raw);
                let alive = driver.step();
                while let Ok(n) = b.read(&mut sink) {
                    if n == 0 {
                        break;
                    }
                }
                if !alive {
                    return;
                }
            }
            SessionOp::Write { offset, data } => {
                let end = offset.saturating_add(data.len());
                if end <= mem_len {
                    // SAFETY: inside our mapping and inside the file's current size.
                    unsafe {
                        std::ptr::copy_nonoverlapping(data.as_ptr(), base.add(*offset), data.len())
                    };
                }
            }
            SessionOp::Kick(i) => {
                if !events.is_empty() {
                    let _ = events[usize::from(*i) % events.len()].write(1);
                    std::thread::yield_now();
                }
            }
            SessionOp::Shrink(len) => {
                let len = (*len).min(SESSION_MEM);
                // SAFETY: ftruncate on our memfd; we never touch our mapping past `mem_len`.
                unsafe { libc::ftruncate(mem_fd.as_raw_fd(), len as i64) };
                mem_len = mem_len.min(len & !4095);
            }
        }
    }
}

fn send_msg(s: &UnixStream, request: u32, flags: u32, payload: &[u8], fds: &[RawFd]) {
    let mut buf = Vec::with_capacity(12 + payload.len());
    buf.extend_from_slice(&request.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&(payload.len() as u32).to_ne_bytes());
    buf.extend_from_slice(payload);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut cmsg = [0u64; 8];
    // SAFETY: an SCM_RIGHTS message over live buffers; `fds` holds at most MAX_FDS (8)
    // descriptors, which fit the 64-byte control buffer.
    let n = unsafe {
        let mut mh: libc::msghdr = std::mem::zeroed();
        mh.msg_iov = &mut iov;
        mh.msg_iovlen = 1;
        if !fds.is_empty() {
            mh.msg_control = cmsg.as_mut_ptr().cast();
            mh.msg_controllen = libc::CMSG_SPACE((4 * fds.len()) as u32) as _;
            let c = libc::CMSG_FIRSTHDR(&mh);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN((4 * fds.len()) as u32) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c).cast(), fds.len());
        }
        libc::sendmsg(s.as_raw_fd(), &mh, 0)
    };
    assert_eq!(n as usize, buf.len(), "sendmsg");
}

// ------------------------------------------------------------------ rings over an image

/// Size of the guest memory image of the ring targets (guest-physical 0..IMAGE).
pub const IMAGE: usize = 64 << 10;

/// Where a ring lives in the image, as a frontend would configure it.
#[derive(Clone, Copy, Debug)]
pub struct RingParams {
    /// Ring size (a power of two is valid; others are refused, like the server does).
    pub size: u16,
    /// Descriptor table address.
    pub desc: u64,
    /// Available ring address.
    pub avail: u64,
    /// Used ring address.
    pub used: u64,
    /// Next available index the device starts from.
    pub next_avail: u16,
    /// VIRTIO_RING_F_EVENT_IDX negotiated.
    pub event_idx: bool,
}

fn image(bytes: &[u8]) -> GuestMemoryMmap {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), IMAGE)]).expect("anonymous memory");
    let n = bytes.len().min(IMAGE);
    mem.write_slice(&bytes[..n], GuestAddress(0))
        .expect("inside");
    mem
}

fn queue(p: RingParams, mem: &GuestMemoryMmap) -> Option<Queue> {
    let mut q = Queue::new(p.size).ok()?;
    q.try_set_desc_table_address(GuestAddress(p.desc)).ok()?;
    q.try_set_avail_ring_address(GuestAddress(p.avail)).ok()?;
    q.try_set_used_ring_address(GuestAddress(p.used)).ok()?;
    q.set_event_idx(p.event_idx);
    q.set_next_avail(p.next_avail);
    q.set_ready(true);
    if !q.is_valid(mem) {
        return None;
    }
    let used = q.used_idx(mem, std::sync::atomic::Ordering::Acquire).ok()?;
    q.set_next_used(used.0);
    Some(q)
}

/// Session ids the crypto targets can name: `1 << 32 | slot` for slots 0..7 = AES-128-CBC
/// encrypt, decrypt; AES-128-GCM encrypt, decrypt; SHA-256; HMAC-SHA-256; AES-CBC then
/// HMAC-SHA-256; ChaCha20-Poly1305 decrypt.
pub fn session_id(slot: u8) -> u64 {
    1 << 32 | u64::from(slot % 8)
}

/// The key of every fuzzing session.
pub const SESSION_KEY: [u8; 32] = [0x11; 32];

/// The sessions behind [`session_id`] `0..8`, in order.
pub fn session_params() -> [SessionParams<'static>; 8] {
    let k: &'static [u8; 32] = &SESSION_KEY;
    [
        SessionParams::Cipher {
            alg: CipherAlg::AesCbc,
            key: &k[..16],
            dir: Direction::Encrypt,
        },
        SessionParams::Cipher {
            alg: CipherAlg::AesCbc,
            key: &k[..16],
            dir: Direction::Decrypt,
        },
        SessionParams::Aead {
            alg: AeadAlg::AesGcm,
            key: &k[..16],
            tag_len: 16,
            dir: Direction::Encrypt,
        },
        SessionParams::Aead {
            alg: AeadAlg::AesGcm,
            key: &k[..16],
            tag_len: 16,
            dir: Direction::Decrypt,
        },
        SessionParams::Hash {
            alg: HashAlg::Sha256,
            digest_len: 0,
        },
        SessionParams::Mac {
            alg: MacAlg::Hmac(HashAlg::Sha256),
            key: k,
            digest_len: 16,
        },
        SessionParams::Chain {
            order: ChainOrder::CipherThenHash,
            cipher: CipherAlg::AesCbc,
            cipher_key: &k[..16],
            dir: Direction::Encrypt,
            auth: ChainAuth::Mac(MacAlg::Hmac(HashAlg::Sha256)),
            auth_key: &k[..20],
            digest_len: 0,
        },
        SessionParams::Aead {
            alg: AeadAlg::ChaCha20Poly1305,
            key: k,
            tag_len: 16,
            dir: Direction::Decrypt,
        },
    ]
}

fn sessions(driver: &dyn CryptoDriver) -> Arc<SessionTable> {
    let t = SessionTable::with_first_gen(16, 1);
    for (i, p) in session_params().iter().enumerate() {
        let id = t.create(driver, p).expect("session");
        assert_eq!(id, session_id(i as u8));
    }
    Arc::new(t)
}

/// The control-request handler of a device with one data queue over `table`.
fn control_of(driver: &Arc<dyn CryptoDriver>, table: &Arc<SessionTable>) -> Control {
    Control::new(
        driver.clone(),
        table.clone(),
        driver.capabilities().to_config(1),
    )
}

/// Runs the crypto data queue (with in-band control requests) or, with `control`, the control
/// queue over a ring in a guest memory image made of `bytes`. Returns the chains completed.
pub fn crypto_ring(bytes: &[u8], p: RingParams, control: bool) -> usize {
    let mem = image(bytes);
    let Some(mut q) = queue(p, &mem) else {
        return 0;
    };
    let driver: Arc<dyn CryptoDriver> = Arc::new(dpacc_sw::SwDriver::new());
    let table = sessions(&*driver);
    let notify = Notify::new(None);
    let fast = FastMem::new(&mem);
    let n = if control {
        ControlPath::new(control_of(&driver, &table)).process(&mut q, &fast, &notify)
    } else {
        let dq = driver.open_queue(256).expect("driver queue");
        DataPath::new(dq, table.clone())
            .with_in_band_control(control_of(&driver, &table))
            .process(&mut q, &fast, &notify)
    };
    assert!(n <= 1 << 16, "{n} chains completed from one ring pass");
    n
}

/// What [`crypto_request`] feeds the request bytes to.
#[derive(Clone, Copy, Debug)]
pub enum CryptoRequest {
    /// A data queue request (header, IVs, sources...).
    Data,
    /// A control queue request (create/destroy session).
    Control,
    /// QEMU's CREATE_CRYPTO_SESSION payload (vhost-user request 26).
    QemuSession,
}

/// One request as a two-descriptor chain (readable `req`, then `writable` bytes for the
/// device; one readable descriptor if 0) through the data or control queue, or `req` as a
/// QEMU session payload. A data request's status byte must be a virtio-crypto status;
/// a QEMU session reply never echoes key material.
pub fn crypto_request(kind: CryptoRequest, req: &[u8], writable: u32) {
    const READ_AT: u64 = 0x1000;
    const WRITE_AT: u64 = 0x8000;
    let req = &req[..req.len().min((WRITE_AT - READ_AT) as usize)];
    let writable = writable % (IMAGE as u32 - WRITE_AT as u32);
    let driver: Arc<dyn CryptoDriver> = Arc::new(dpacc_sw::SwDriver::new());
    if let CryptoRequest::QemuSession = kind {
        let dev = CryptoDevice::new(CryptoBackendConfig {
            queues: 1,
            queue_size: 64,
            max_sessions: 8,
            driver,
            busy_poll: Duration::ZERO,
        })
        .expect("config");
        let mut reply = Vec::new();
        dev.create_qemu_session(req, &mut reply);
        assert_eq!(reply.len(), 1072);
        // Nothing of the request is echoed but its opcode (never key material).
        assert!(
            reply[8..1064].iter().all(|&b| b == 0),
            "request bytes echoed in the reply"
        );
        return;
    }
    let mem = image(&[]);
    let put = |i: u64, addr: u64, len: u32, flags: u16, next: u16| {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..].copy_from_slice(&next.to_le_bytes());
        mem.write_slice(&d, GuestAddress(i * 16)).expect("inside");
    };
    if writable > 0 {
        put(0, READ_AT, req.len() as u32, crate::virtq::F_NEXT, 1);
        put(1, WRITE_AT, writable, crate::virtq::F_WRITE, 0);
    } else {
        put(0, READ_AT, req.len() as u32, 0, 0);
    }
    mem.write_slice(req, GuestAddress(READ_AT)).expect("inside");
    // avail: flags 0, idx 1, ring[0] = 0.
    mem.write_slice(&[0, 0, 1, 0, 0, 0], GuestAddress(0x400))
        .expect("inside");
    let status_at = GuestAddress(WRITE_AT + u64::from(writable.max(1)) - 1);
    mem.write_obj(0xeeu8, status_at).expect("inside");
    let mut q = queue(
        RingParams {
            size: 4,
            desc: 0,
            avail: 0x400,
            used: 0x800,
            next_avail: 0,
            event_idx: false,
        },
        &mem,
    )
    .expect("a valid ring");
    let table = sessions(&*driver);
    let notify = Notify::new(None);
    let fast = FastMem::new(&mem);
    let n = match kind {
        CryptoRequest::Control => {
            ControlPath::new(control_of(&driver, &table)).process(&mut q, &fast, &notify)
        }
        _ => {
            let dq = driver.open_queue(256).expect("driver queue");
            DataPath::new(dq, table.clone())
                .with_in_band_control(control_of(&driver, &table))
                .process(&mut q, &fast, &notify)
        }
    };
    assert_eq!(n, 1, "the one chain is completed");
    if matches!(kind, CryptoRequest::Data) && writable > 0 {
        let s: u8 = mem.read_obj(status_at).expect("inside");
        assert!(
            s == 0xee
                || matches!(
                    s,
                    status::OK
                        | status::ERR
                        | status::BADMSG
                        | status::NOTSUPP
                        | status::INVSESS
                        | status::NOSPC
                ),
            "status byte {s:#x}"
        );
    }
}

/// Runs a vNF port's rings (RX ring `rx`, TX ring `tx`) over an image made of `bytes`: takes
/// what the driver transmitted, then puts it back on the RX ring followed by `extra`, and
/// gives the TX chains back. With `partial`, frames are taken as from an uplink: the bytes
/// past their headers stay in the TX buffers and are copied from there into the RX buffers
/// (the one-copy path). Returns (frames received, frames sent).
pub fn net_rings(
    bytes: &[u8],
    rx: RingParams,
    tx: RingParams,
    features: u64,
    partial: bool,
    extra: &[u8],
) -> (usize, usize) {
    let m = image(bytes);
    let (Some(rxq), Some(txq)) = (queue(rx, &m), queue(tx, &m)) else {
        return (0, 0);
    };
    let mem = GuestMem::new(m);
    let start = |index, queue| QueueStart {
        index,
        queue,
        kick: EventFd::new(EFD_NONBLOCK).expect("eventfd"),
        call: Some(EventFd::new(EFD_NONBLOCK).expect("eventfd")),
        mem: mem.clone(),
        features,
    };
    let mut rings = NetRings::new(RingPair {
        rx: start(0, rxq),
        tx: start(1, txq),
    });
    rings.refresh();
    let mut chain = ChainBufs::new();
    let mut pkts: Vec<PacketBuf> = (0..32).map(|_| PacketBuf::new()).collect();
    let mut bad = 0;
    let port = if partial { PortId(1) } else { PortId::VNF };
    let (_, n) = rings.receive(&mut chain, &mut pkts, port, partial, &mut bad);
    let sent = rings.send(
        &mut chain,
        pkts[..n]
            .iter()
            .map(OutFrame::of)
            .chain(std::iter::once(OutFrame::whole(extra))),
        &mut |_, _| None,
    );
    // The partial frames' rest is in the TX buffers: forget it before they go back.
    for p in &mut pkts[..n] {
        p.reset(port);
    }
    rings.rx_flush();
    rings.tx_complete();
    let _ = rings.tx_rearm();
    (n, sent)
}
