//! The per-connection vhost-user state machine and the accept loop.
//!
//! One frontend is served at a time. A malformed message (bad header, oversized, truncated)
//! closes that connection; a well-framed request that cannot be honoured is logged and answered
//! with a reply-ack error when one was asked for, and the connection stays up. After a
//! disconnect every ring is stopped and the device is reset before the next frontend is
//! accepted.
//!
//! A fault inside the frontend's memory (its file shrank under us, see [`super::fault`]) and a
//! panic while handling its messages end that connection the same way, and only it. Every log
//! line a frontend can trigger is rate-limited ([`crate::guest_log`]).

use std::io;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::{debug, error, info};
use vhost::vhost_user::message::{
    FrontendReq, VhostUserConfig, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
    VhostUserVringAddr, VhostUserVringState, VHOST_USER_CONFIG_SIZE,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{Queue, QueueT};
use vm_memory::{ByteValued, GuestAddress, GuestAddressSpace, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;
use zeroize::Zeroize;

use super::channel::{Channel, ChannelError, Msg};
use super::device::{DeviceError, DeviceReply, GuestMem, QueueStart, VhostUserDevice};
use super::memory::{map_table, AddrMap, MemoryError};
use super::tables::{GuestTables, InstallError};
use crate::guest_log::{guest_info, guest_warn};
use crate::ready::{self, ReadySet};

/// Tokens of the descriptors the accept/message loop waits on.
const LISTENER: u32 = 0;
const SHUTDOWN: u32 = 1;
const FRONTEND: u32 = 2;
const FAULT: u32 = 3;

/// How long a frontend may stall in the middle of a message before it is dropped.
const MID_MESSAGE_TIMEOUT: Duration = Duration::from_secs(5);

/// Fatal errors of the accept loop.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Accepting or polling failed.
    #[error("listener: {0}")]
    Io(#[from] io::Error),
}

/// Why one request failed (the connection continues).
#[derive(Debug, thiserror::Error)]
enum ReqError {
    #[error("payload of {got} bytes, expected {want}")]
    PayloadSize { got: usize, want: usize },
    #[error("no vring {0}")]
    NoSuchRing(u32),
    #[error("invalid ring size {0}")]
    RingSize(u32),
    #[error("invalid vring base {0}")]
    RingBase(u32),
    #[error("vring {0} is running")]
    RingRunning(usize),
    #[error("vring address outside the memory table")]
    RingAddr,
    #[error("ring does not fit guest memory")]
    RingInvalid,
    #[error("missing file descriptor")]
    MissingFd,
    #[error("invalid config access")]
    Config,
    #[error("memory table: {0}")]
    Memory(#[from] MemoryError),
    #[error("memory table: {0}")]
    Install(#[from] InstallError),
    #[error("device: {0}")]
    Device(#[from] DeviceError),
    #[error("queue: {0}")]
    Queue(#[from] virtio_queue::Error),
    #[error("unsupported request {0}")]
    Unsupported(u32),
    #[error("eventfd: {0}")]
    Io(#[from] io::Error),
}

/// Per-ring state as the frontend configured it.
#[derive(Debug, Default)]
struct Vring {
    size: u16,
    base: u16,
    /// Descriptor, used, available ring addresses (frontend virtual addresses).
    addr: Option<(u64, u64, u64)>,
    kick: Option<EventFd>,
    call: Option<EventFd>,
    err: Option<EventFd>,
    /// `None` until SET_VRING_ENABLE says otherwise.
    enabled: Option<bool>,
    started: bool,
}

enum Outcome {
    Ack(Result<(), ReqError>),
    Replied,
}

enum End {
    Closed,
    Shutdown,
    /// An access to the frontend's memory faulted.
    Faulted,
}

/// The state of one connected frontend: what it negotiated, its memory table, its rings.
struct Connection<'d, D: VhostUserDevice> {
    dev: &'d mut D,
    tables: &'d mut GuestTables,
    channel: Channel,
    features: u64,
    protocol: u64,
    mem: GuestMem,
    mem_set: bool,
    addr_map: AddrMap,
    vrings: Vec<Vring>,
    reply: Vec<u8>,
}

/// Serves frontends on `listener`, one at a time, until `shutdown` becomes readable.
pub(crate) fn serve<D: VhostUserDevice>(
    listener: &UnixListener,
    dev: &mut D,
    shutdown: &EventFd,
) -> Result<(), ServeError> {
    // Waiting for a frontend, and (the listener left out, so that a second frontend knocking
    // does not keep waking us) serving one.
    let mut accepting = ReadySet::new()?;
    accepting.add(listener, LISTENER)?;
    accepting.add(shutdown, SHUTDOWN)?;
    let mut serving = ReadySet::new()?;
    serving.add(shutdown, SHUTDOWN)?;
    let mut tables = GuestTables::new()?;
    serving.add(tables.wake_fd(), FAULT)?;
    loop {
        let ready = accepting.wait()?;
        if ready::has(ready, SHUTDOWN) {
            stopping();
            return Ok(());
        }
        if !ready::has(ready, LISTENER) {
            continue;
        }
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if accept_error_is_transient(&e) => {
                // Out of descriptors or memory, or the peer gave up: not this socket's end
                // (and never the daemon's). Try again shortly.
                guest_warn!("accept: {e}; retrying");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let setup = stream
            .set_nonblocking(false)
            .and_then(|()| stream.set_read_timeout(Some(MID_MESSAGE_TIMEOUT)))
            .and_then(|()| serving.add(&stream, FRONTEND));
        if let Err(e) = setup {
            guest_warn!("refusing a frontend: {e}");
            continue;
        }
        guest_info!("frontend connected");
        tables.begin_connection();
        dev.connected();
        let mut c = Connection::new(dev, &mut tables, Channel::new(stream));
        // A panic is a bug, but one frontend's bug: it ends this connection only.
        let end = std::panic::catch_unwind(AssertUnwindSafe(|| c.run(&mut serving)));
        if std::panic::catch_unwind(AssertUnwindSafe(|| c.teardown())).is_err() {
            error!("tearing the connection down panicked");
        }
        // (Closing the socket would drop it from the set too; nothing else holds it.)
        let _ = serving.remove(c.channel.stream());
        match end {
            Ok(Ok(End::Shutdown)) => {
                stopping();
                return Ok(());
            }
            Ok(Ok(End::Closed)) => guest_info!("frontend disconnected"),
            Ok(Ok(End::Faulted)) => guest_warn!(
                "closing connection: its memory faulted (a region shrank or lost its pages); \
                 {} fault(s) contained since start",
                super::fault::total_faults()
            ),
            Ok(Err(e)) => guest_warn!("closing connection: {e}"),
            Err(_) => error!("closing connection: handling its messages panicked"),
        }
    }
}

/// Whether an `accept` failure is a passing condition (descriptors or memory exhausted, a
/// connection aborted before it was accepted) rather than a broken listener.
fn accept_error_is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EMFILE
                | libc::ENFILE
                | libc::ENOBUFS
                | libc::ENOMEM
                | libc::ECONNABORTED
                | libc::EPROTO
                | libc::EPERM
        )
    )
}

/// Logs the end of a server loop (with what guests made us suppress or contain).
fn stopping() {
    let (logs, faults) = (
        crate::guest_log::suppressed_total(),
        super::fault::total_faults(),
    );
    info!(
        "shutdown requested ({logs} guest-triggered log line(s) suppressed, {faults} guest \
         memory fault(s) contained since start)"
    );
}

fn pod<T: ByteValued + Default>(p: &[u8]) -> Result<T, ReqError> {
    let want = std::mem::size_of::<T>();
    if p.len() != want {
        return Err(ReqError::PayloadSize { got: p.len(), want });
    }
    // Copy rather than cast: the payload buffer need not be aligned for `T`.
    let mut v = T::default();
    v.as_mut_slice().copy_from_slice(p);
    Ok(v)
}

fn eventfd_from(fd: OwnedFd) -> EventFd {
    // SAFETY: `fd` is an owned descriptor the frontend sent us for this purpose; ownership moves
    // into the EventFd, which closes it on drop.
    unsafe { EventFd::from_raw_fd(fd.into_raw_fd()) }
}

impl<'d, D: VhostUserDevice> Connection<'d, D> {
    fn new(dev: &'d mut D, tables: &'d mut GuestTables, channel: Channel) -> Self {
        let n = dev.num_queues();
        Self {
            dev,
            tables,
            channel,
            features: 0,
            protocol: 0,
            mem: GuestMem::new(GuestMemoryMmap::new()),
            mem_set: false,
            addr_map: AddrMap::default(),
            vrings: (0..n).map(|_| Vring::default()).collect(),
            reply: Vec::with_capacity(4096),
        }
    }

    fn offered_features(&self) -> u64 {
        self.dev.features()
            | (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn offered_protocol(&self) -> u64 {
        (VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIG
            | self.dev.protocol_features())
        .bits()
    }

    /// Handles the frontend's messages until it leaves or `serving` (the frontend's socket and
    /// the shutdown eventfd) reports the shutdown.
    fn run(&mut self, serving: &mut ReadySet) -> Result<End, ChannelError> {
        let mut msg = Msg::default();
        loop {
            let ready = serving.wait()?;
            if ready::has(ready, SHUTDOWN) {
                return Ok(End::Shutdown);
            }
            if ready::has(ready, FAULT) && self.tables.faulted() {
                return Ok(End::Faulted);
            }
            if !ready::has(ready, FRONTEND) {
                continue;
            }
            match self.channel.recv(&mut msg) {
                Ok(()) => {}
                Err(ChannelError::Closed) => return Ok(End::Closed),
                Err(e) => return Err(e),
            }
            self.handle(&mut msg)?;
        }
    }

    /// Stops every ring, resets the device and lets go of the memory.
    fn teardown(&mut self) {
        for i in 0..self.vrings.len() {
            self.dev.stop_queue(i);
            self.vrings[i].started = false;
        }
        self.dev.reset();
        self.tables.end_connection(&self.mem);
        self.mem_set = false;
        self.addr_map = AddrMap::default();
    }

    fn handle(&mut self, msg: &mut Msg) -> Result<(), ChannelError> {
        let code = msg.request;
        let req = FrontendReq::try_from(code).ok();
        debug!(request = ?req, code, size = msg.payload.len(), "vhost-user request");
        let outcome = match req {
            Some(r) => self.dispatch(r, msg)?,
            None => Outcome::Ack(Err(ReqError::Unsupported(code))),
        };
        if let Outcome::Ack(r) = outcome {
            let ok = r.is_ok();
            if let Err(e) = r {
                guest_warn!("request {code} ({req:?}) failed: {e}");
            }
            let acked = self.protocol & VhostUserProtocolFeatures::REPLY_ACK.bits() != 0;
            if msg.need_reply() && acked {
                self.channel.reply_ack(code, ok)?;
            }
        }
        Ok(())
    }

    fn reply_u64(&mut self, code: u32, v: u64) -> Result<Outcome, ChannelError> {
        self.channel.reply(code, &v.to_ne_bytes())?;
        Ok(Outcome::Replied)
    }

    fn dispatch(&mut self, req: FrontendReq, msg: &mut Msg) -> Result<Outcome, ChannelError> {
        let code = msg.request;
        let p = &msg.payload[..];
        let r = match req {
            FrontendReq::GET_FEATURES => return self.reply_u64(code, self.offered_features()),
            FrontendReq::GET_PROTOCOL_FEATURES => {
                return self.reply_u64(code, self.offered_protocol())
            }
            FrontendReq::GET_QUEUE_NUM => return self.reply_u64(code, self.vrings.len() as u64),
            FrontendReq::SET_FEATURES => pod::<u64>(p).map(|v| {
                let offered = self.offered_features();
                if v & !offered != 0 {
                    guest_warn!("frontend acked unoffered features {:#x}", v & !offered);
                }
                self.features = v & offered;
                debug!("features acked: {:#x}", self.features);
            }),
            FrontendReq::SET_PROTOCOL_FEATURES => pod::<u64>(p).map(|v| {
                self.protocol = v & self.offered_protocol();
            }),
            FrontendReq::SET_OWNER => Ok(()),
            FrontendReq::RESET_OWNER => {
                self.teardown();
                for v in &mut self.vrings {
                    *v = Vring::default();
                }
                Ok(())
            }
            FrontendReq::SET_MEM_TABLE => {
                let fds = std::mem::take(&mut msg.fds);
                self.set_mem_table(&msg.payload, fds)
            }
            FrontendReq::SET_VRING_NUM => self.set_vring_num(p),
            FrontendReq::SET_VRING_ADDR => self.set_vring_addr(p),
            FrontendReq::SET_VRING_BASE => self.set_vring_base(p),
            FrontendReq::GET_VRING_BASE => {
                return match self.get_vring_base(p) {
                    Ok(state) => {
                        self.channel.reply(code, state.as_slice())?;
                        Ok(Outcome::Replied)
                    }
                    Err(e) => {
                        // The frontend waits for a reply: answer with the stored base.
                        guest_warn!("GET_VRING_BASE: {e}");
                        let s = VhostUserVringState::new(0, 0);
                        self.channel.reply(code, s.as_slice())?;
                        Ok(Outcome::Replied)
                    }
                };
            }
            FrontendReq::SET_VRING_KICK
            | FrontendReq::SET_VRING_CALL
            | FrontendReq::SET_VRING_ERR => self.set_vring_fd(req, msg),
            FrontendReq::SET_VRING_ENABLE => self.set_vring_enable(p),
            FrontendReq::GET_CONFIG => {
                self.get_config(p);
                self.channel.reply(code, &self.reply)?;
                return Ok(Outcome::Replied);
            }
            FrontendReq::SET_CONFIG => self.set_config(p),
            _ => {
                self.reply.clear();
                let r = self.dev.handle_request(code, &msg.payload, &mut self.reply);
                // Device requests may carry key material (CREATE_CRYPTO_SESSION).
                msg.payload.zeroize();
                match r {
                    DeviceReply::Reply => {
                        self.channel.reply(code, &self.reply)?;
                        self.reply.zeroize();
                        return Ok(Outcome::Replied);
                    }
                    DeviceReply::Ack(true) => Ok(()),
                    DeviceReply::Ack(false) => Err(ReqError::Device(DeviceError::NotSupported)),
                    DeviceReply::Unknown => Err(ReqError::Unsupported(code)),
                }
            }
        };
        Ok(Outcome::Ack(r))
    }

    fn ring(&mut self, index: u32) -> Result<usize, ReqError> {
        let i = index as usize;
        if i < self.vrings.len() {
            Ok(i)
        } else {
            Err(ReqError::NoSuchRing(index))
        }
    }

    fn set_mem_table(&mut self, payload: &[u8], fds: Vec<OwnedFd>) -> Result<(), ReqError> {
        let t = map_table(payload, fds)?;
        let (regions, sealed) = (t.ranges.len(), t.sealed);
        self.addr_map = self.tables.install(&self.mem, t)?;
        self.mem_set = true;
        guest_info!("memory table set: {regions} region(s), {sealed} sealed against shrinking");
        for i in 0..self.vrings.len() {
            self.try_start(i)?;
        }
        Ok(())
    }

    fn set_vring_num(&mut self, p: &[u8]) -> Result<(), ReqError> {
        let s: VhostUserVringState = pod(p)?;
        let i = self.ring(s.index)?;
        let num = s.num;
        if num == 0 || num > u32::from(self.dev.max_queue_size()) || !num.is_power_of_two() {
            return Err(ReqError::RingSize(num));
        }
        if self.vrings[i].started {
            return Err(ReqError::RingRunning(i));
        }
        self.vrings[i].size = num as u16;
        Ok(())
    }

    fn set_vring_addr(&mut self, p: &[u8]) -> Result<(), ReqError> {
        let a: VhostUserVringAddr = pod(p)?;
        let i = self.ring(a.index)?;
        if self.vrings[i].started {
            return Err(ReqError::RingRunning(i));
        }
        self.vrings[i].addr = Some((a.descriptor, a.used, a.available));
        self.try_start(i)
    }

    fn set_vring_base(&mut self, p: &[u8]) -> Result<(), ReqError> {
        let s: VhostUserVringState = pod(p)?;
        let i = self.ring(s.index)?;
        if s.num > u32::from(u16::MAX) {
            return Err(ReqError::RingBase(s.num));
        }
        if self.vrings[i].started {
            return Err(ReqError::RingRunning(i));
        }
        self.vrings[i].base = s.num as u16;
        Ok(())
    }

    fn get_vring_base(&mut self, p: &[u8]) -> Result<VhostUserVringState, ReqError> {
        let s: VhostUserVringState = pod(p)?;
        let i = self.ring(s.index)?;
        self.stop(i);
        // The ring is stopped until the frontend kicks it off again.
        self.vrings[i].kick = None;
        Ok(VhostUserVringState::new(
            s.index,
            u32::from(self.vrings[i].base),
        ))
    }

    fn set_vring_fd(&mut self, req: FrontendReq, msg: &mut Msg) -> Result<(), ReqError> {
        let v: u64 = pod(&msg.payload)?;
        let i = self.ring((v & 0xff) as u32)?;
        let fd = if v & 0x100 != 0 {
            None
        } else {
            Some(eventfd_from(msg.take_fd().ok_or(ReqError::MissingFd)?))
        };
        match req {
            FrontendReq::SET_VRING_KICK => {
                if fd.is_none() {
                    guest_warn!("vring {i}: polling mode (no kick fd) is not supported");
                }
                self.stop(i);
                self.vrings[i].kick = fd;
            }
            FrontendReq::SET_VRING_CALL => {
                // A running ring picks up the new call fd by restarting.
                self.stop(i);
                self.vrings[i].call = fd;
            }
            _ => {
                self.vrings[i].err = fd;
                return Ok(());
            }
        }
        self.try_start(i)
    }

    fn set_vring_enable(&mut self, p: &[u8]) -> Result<(), ReqError> {
        let s: VhostUserVringState = pod(p)?;
        let i = self.ring(s.index)?;
        let on = s.num != 0;
        self.vrings[i].enabled = Some(on);
        if on {
            self.try_start(i)
        } else {
            self.stop(i);
            Ok(())
        }
    }

    fn get_config(&mut self, p: &[u8]) {
        self.reply.clear();
        let hdr_len = std::mem::size_of::<VhostUserConfig>();
        let hdr = p
            .get(..hdr_len)
            .and_then(VhostUserConfig::from_slice)
            .copied();
        let Some(h) = hdr else {
            self.reply
                .extend_from_slice(VhostUserConfig::default().as_slice());
            return;
        };
        let (off, size) = (h.offset, h.size);
        let ok = off
            .checked_add(size)
            .is_some_and(|e| e <= VHOST_USER_CONFIG_SIZE)
            && p.len() == hdr_len + size as usize;
        if !ok {
            guest_warn!("GET_CONFIG: invalid access offset {off} size {size}");
            let mut h = h;
            h.size = 0;
            self.reply.extend_from_slice(h.as_slice());
            return;
        }
        self.reply.extend_from_slice(h.as_slice());
        self.reply.resize(hdr_len + size as usize, 0);
        self.dev
            .read_config(off as usize, &mut self.reply[hdr_len..]);
    }

    fn set_config(&mut self, p: &[u8]) -> Result<(), ReqError> {
        let hdr_len = std::mem::size_of::<VhostUserConfig>();
        let h = p
            .get(..hdr_len)
            .and_then(VhostUserConfig::from_slice)
            .copied()
            .ok_or(ReqError::Config)?;
        if p.len() != hdr_len + h.size as usize {
            return Err(ReqError::Config);
        }
        self.dev
            .write_config(h.offset as usize, &p[hdr_len..])
            .map_err(Into::into)
    }

    /// Stops ring `i` if it runs, remembering where it stopped.
    fn stop(&mut self, i: usize) {
        if !self.vrings[i].started {
            return;
        }
        self.vrings[i].started = false;
        if let Some(q) = self.dev.stop_queue(i) {
            self.vrings[i].base = q.next_avail();
        }
        debug!("vring {i} stopped at {}", self.vrings[i].base);
    }

    /// Starts ring `i` once it has memory, a size, addresses and a kick fd, unless it was
    /// explicitly disabled. (QEMU's cryptodev-vhost-user never sends SET_VRING_ENABLE.)
    fn try_start(&mut self, i: usize) -> Result<(), ReqError> {
        let event_idx = self.features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let vr = &self.vrings[i];
        if vr.started || vr.enabled == Some(false) || !self.mem_set || vr.size == 0 {
            return Ok(());
        }
        let (Some((d, u, a)), Some(kick)) = (vr.addr, vr.kick.as_ref()) else {
            return Ok(());
        };
        let tr = |va: u64| self.addr_map.va_to_gpa(va).ok_or(ReqError::RingAddr);
        let (d, u, a) = (tr(d)?, tr(u)?, tr(a)?);
        let mut q = Queue::new(vr.size)?;
        q.try_set_desc_table_address(GuestAddress(d))?;
        q.try_set_avail_ring_address(GuestAddress(a))?;
        q.try_set_used_ring_address(GuestAddress(u))?;
        q.set_event_idx(event_idx);
        q.set_next_avail(vr.base);
        q.set_ready(true);
        {
            let mem = self.mem.memory();
            if !q.is_valid(&*mem) {
                return Err(ReqError::RingInvalid);
            }
            let used = q.used_idx(&*mem, Ordering::Acquire)?;
            q.set_next_used(used.0);
        }
        let start = QueueStart {
            index: i,
            queue: q,
            kick: kick.try_clone()?,
            call: match &vr.call {
                Some(c) => Some(c.try_clone()?),
                None => None,
            },
            mem: self.mem.clone(),
            features: self.features,
        };
        self.dev.start_queue(start)?;
        let (size, base) = (vr.size, vr.base);
        self.vrings[i].started = true;
        guest_info!("vring {i} started (size {size}, base {base})");
        Ok(())
    }
}

/// One connection driven message by message (the fuzzing entry point of the state machine):
/// no accept loop, no waiting.
#[cfg(feature = "fuzzing")]
pub(crate) struct Driver<'d, D: VhostUserDevice> {
    conn: Connection<'d, D>,
    msg: Msg,
}

#[cfg(feature = "fuzzing")]
impl<'d, D: VhostUserDevice> Driver<'d, D> {
    /// A connection of `dev` over `stream` (the frontend writes to the other end).
    pub(crate) fn new(
        dev: &'d mut D,
        tables: &'d mut GuestTables,
        stream: std::os::unix::net::UnixStream,
    ) -> Self {
        tables.begin_connection();
        dev.connected();
        Self {
            conn: Connection::new(dev, tables, Channel::new(stream)),
            msg: Msg::default(),
        }
    }

    /// Reads and handles one message; false once the connection would be closed (a framing
    /// error, or its memory faulted).
    pub(crate) fn step(&mut self) -> bool {
        if self.conn.channel.recv(&mut self.msg).is_err() {
            return false;
        }
        self.conn.handle(&mut self.msg).is_ok() && !self.conn.tables.faulted()
    }
}

#[cfg(feature = "fuzzing")]
impl<D: VhostUserDevice> Drop for Driver<'_, D> {
    fn drop(&mut self) {
        self.conn.teardown();
    }
}
