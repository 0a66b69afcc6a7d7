//! IPsec ESP in tunnel mode with AES-GCM (RFC 4303 + RFC 4106), on the crypto driver traits.
//!
//! Outbound: `[L2][outer IPv4][SPI][seq][IV=seq as 8 bytes][inner packet, pad, pad length,
//! next header][ICV 16]`, nonce = salt ‖ IV, AAD = SPI ‖ seq (no extended sequence numbers).
//! Inbound: anti-replay window of 64 packets (RFC 4303 §3.4.3) checked before and updated
//! after the ICV check.
//!
//! An SA is shared by every lane of its instance (one per virtio-net queue pair): its
//! sequence number is an atomic counter and its replay window one 128-bit atomic word updated
//! by compare-and-swap, so two lanes never send the same sequence number and a packet
//! replayed on another queue pair is still refused; its counters are per lane and summed when
//! read.

use std::net::Ipv4Addr;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use portable_atomic::AtomicU128;

use dpacc_spec::fastpath::{PacketBuf, MAX_FRAME};
use dpacc_spec::{
    run_sync, AeadAlg, CryptoDriver, CryptoError, CryptoOp, CryptoQueue, Direction, Iv, Seg,
    SessionHandle, SessionParams,
};
use zeroize::Zeroizing;

use super::checksum;
use super::key::{ETH_IPV4, ETH_IPV6, IPPROTO_ESP};
use crate::aead::AeadKey;
use crate::session::{Kind, SwSession};

const ICV: usize = 16;
const ESP_HDR: usize = 16; // SPI, sequence number, 8-byte IV

/// Which way an SA works.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaDir {
    /// Encapsulate, with these outer tunnel addresses.
    Outbound {
        /// Outer source.
        src: Ipv4Addr,
        /// Outer destination.
        dst: Ipv4Addr,
    },
    /// Decapsulate.
    Inbound,
}

/// An SA as the vNF installs it.
#[derive(Clone, Debug)]
pub struct SaConfig {
    /// Security parameter index.
    pub spi: u32,
    /// AES key (16 or 32 bytes), erased on drop.
    pub key: Zeroizing<Vec<u8>>,
    /// RFC 4106 salt (the last 4 bytes of the keying material).
    pub salt: [u8; 4],
    /// Direction and tunnel endpoints.
    pub dir: SaDir,
}

/// Why an ESP packet was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EspDrop {
    /// Not a well-formed ESP-in-IPv4 packet, or the inner packet is not IP.
    Malformed,
    /// Replayed or too old (outside the window).
    Replay,
    /// ICV check failed.
    Auth,
    /// No room to grow the packet, or the sequence number space is exhausted.
    NoRoom,
    /// The crypto driver failed.
    Crypto,
}

/// Per-SA counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SaStats {
    /// Packets processed successfully.
    pub packets: u64,
    /// Replayed packets dropped.
    pub replay_drops: u64,
    /// Packets failing the ICV check.
    pub auth_drops: u64,
    /// Other drops.
    pub other_drops: u64,
}

/// The RFC 4303 §3.4.3 sliding window (64 packets), as a value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayWindow {
    top: u32,
    bits: u64,
}

impl ReplayWindow {
    /// Whether `seq` may be processed (not zero, not seen, not older than the window).
    pub fn check(&self, seq: u32) -> bool {
        if seq == 0 {
            return false;
        }
        if seq > self.top {
            return true;
        }
        let d = self.top - seq;
        d < 64 && self.bits & (1u64 << d) == 0
    }

    /// Records `seq` as received (after the ICV verified).
    pub fn accept(&mut self, seq: u32) {
        if seq > self.top {
            let shift = seq - self.top;
            self.bits = if shift >= 64 { 0 } else { self.bits << shift };
            self.bits |= 1;
            self.top = seq;
        } else {
            self.bits |= 1u64 << (self.top - seq);
        }
    }

    fn pack(self) -> u128 {
        u128::from(self.top) << 64 | u128::from(self.bits)
    }

    fn unpack(v: u128) -> Self {
        Self {
            top: (v >> 64) as u32,
            bits: v as u64,
        }
    }
}

/// A [`ReplayWindow`] shared by lanes: one 128-bit atomic word.
#[derive(Debug, Default)]
pub struct SharedWindow(AtomicU128);

impl SharedWindow {
    /// The window now.
    pub fn get(&self) -> ReplayWindow {
        ReplayWindow::unpack(self.0.load(Ordering::Acquire))
    }

    /// Whether `seq` may be processed now.
    pub fn check(&self, seq: u32) -> bool {
        self.get().check(seq)
    }

    /// [`accept`](Self::accept) for a window only one thread updates: a load and a store,
    /// no compare-and-swap (a locked instruction, which would wait for the store buffer to
    /// drain the AEAD's output stores just made).
    fn accept_one_thread(&self, seq: u32) -> bool {
        let mut w = self.get();
        if !w.check(seq) {
            return false;
        }
        w.accept(seq);
        self.0.store(w.pack(), Ordering::Release);
        true
    }

    /// Records `seq` unless it was recorded meanwhile (by another lane) or left the window:
    /// true if this call recorded it.
    pub fn accept(&self, seq: u32) -> bool {
        let mut cur = self.0.load(Ordering::Acquire);
        loop {
            let mut w = ReplayWindow::unpack(cur);
            if !w.check(seq) {
                return false;
            }
            w.accept(seq);
            match self
                .0
                .compare_exchange_weak(cur, w.pack(), Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }
}

/// Counters of one lane, written by that lane only (a load and a store, no read-modify-write).
#[repr(align(64))]
#[derive(Debug, Default)]
pub(crate) struct LaneSaStats {
    packets: AtomicU64,
    replay_drops: AtomicU64,
    auth_drops: AtomicU64,
    other_drops: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

/// The software driver's AEAD key inside an SA's session.
struct DirectKey(NonNull<AeadKey>);

// SAFETY: it points into the `SwSession` that the SA's `session` (an `Arc`, never replaced or
// moved out of while the SA lives) keeps alive at a fixed address; `AeadKey` is shared by
// lanes on several threads anyway (`SwSession` is `Send + Sync` as a `DriverSession`).
unsafe impl Send for DirectKey {}
// SAFETY: as above; only `&AeadKey` is ever formed from it.
unsafe impl Sync for DirectKey {}

/// A live SA.
pub struct Sa {
    cfg: SaConfig,
    session: SessionHandle,
    /// The software driver's key behind `session` (None: another driver's session), found
    /// once: looking it up per frame took two indirect calls (`as_any`, `type_id`).
    direct: Option<DirectKey>,
    /// The last sequence number sent (shared by the lanes; past `u32::MAX`: exhausted).
    seq: AtomicU64,
    window: SharedWindow,
    /// Per lane.
    stats: Box<[LaneSaStats]>,
    /// Never run on two threads at once ([`in_instance`](Self::in_instance) with one lane):
    /// the sequence number, the replay window and the AEAD's gather context are updated
    /// without locked instructions.
    one_thread: bool,
    /// An outbound SA's outer IPv4 header with its total length and checksum zero, and the
    /// one's-complement sum of its words ([`write_outer`](Self::write_outer)): built once,
    /// not per packet.
    outer: ([u8; 20], u32),
}

impl std::fmt::Debug for Sa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sa")
            .field("spi", &self.cfg.spi)
            .field("dir", &self.cfg.dir)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Sa {
    /// Creates the SA's AEAD session on `driver`, for one lane.
    pub fn new(cfg: SaConfig, driver: &dyn CryptoDriver) -> Result<Self, CryptoError> {
        Self::with_lanes(cfg, driver, 1)
    }

    /// Creates the SA's AEAD session on `driver`, shared by `lanes` lanes.
    pub fn with_lanes(
        cfg: SaConfig,
        driver: &dyn CryptoDriver,
        lanes: usize,
    ) -> Result<Self, CryptoError> {
        let dir = match cfg.dir {
            SaDir::Outbound { .. } => Direction::Encrypt,
            SaDir::Inbound => Direction::Decrypt,
        };
        let session = driver.create_session(&SessionParams::Aead {
            alg: AeadAlg::AesGcm,
            key: &cfg.key,
            tag_len: ICV,
            dir,
        })?;
        let direct = match &session
            .as_any()
            .downcast_ref::<SwSession>()
            .map(|s| &s.kind)
        {
            Some(Kind::Aead(k)) => Some(DirectKey(NonNull::from(k))),
            _ => None,
        };
        Ok(Self {
            session,
            direct,
            seq: AtomicU64::new(0),
            window: SharedWindow::default(),
            stats: (0..lanes.max(1)).map(|_| LaneSaStats::default()).collect(),
            one_thread: false,
            outer: outer_template(cfg.dir),
            cfg,
        })
    }

    /// [`with_lanes`](Self::with_lanes) for a flow-processor instance, which runs an SA only
    /// inside a lane's read section (one thread per lane, by its token) or under the
    /// instance's writer lock (no lane inside): with one lane, never on two threads at once.
    pub(crate) fn in_instance(
        cfg: SaConfig,
        driver: &dyn CryptoDriver,
        lanes: usize,
    ) -> Result<Self, CryptoError> {
        let mut sa = Self::with_lanes(cfg, driver, lanes)?;
        sa.one_thread = lanes <= 1;
        Ok(sa)
    }

    /// Records `seq` in the replay window (see [`SharedWindow::accept`]).
    fn accept(&self, seq: u32) -> bool {
        match self.one_thread {
            true => self.window.accept_one_thread(seq),
            false => self.window.accept(seq),
        }
    }

    /// The SPI.
    pub fn spi(&self) -> u32 {
        self.cfg.spi
    }

    fn nonce(&self, iv: &[u8]) -> Iv {
        let mut n = [0u8; 12];
        n[..4].copy_from_slice(&self.cfg.salt);
        n[4..].copy_from_slice(iv);
        Iv::new(&n).expect("12 bytes")
    }

    /// Writes the outer IPv4 header of a packet of `total` bytes from the link header on
    /// (the SA's template; the checksum is the template's sum plus the length, RFC 1071).
    fn write_outer(&self, ip: &mut [u8], total: u16) {
        let (t, sum) = &self.outer;
        ip.copy_from_slice(t);
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        let c = checksum::fold(sum + u32::from(total));
        ip[10..12].copy_from_slice(&c.to_be_bytes());
    }

    /// Counters, summed over the lanes.
    pub fn stats(&self) -> SaStats {
        let r = Ordering::Relaxed;
        let mut s = SaStats::default();
        for l in &*self.stats {
            s.packets += l.packets.load(r);
            s.replay_drops += l.replay_drops.load(r);
            s.auth_drops += l.auth_drops.load(r);
            s.other_drops += l.other_drops.load(r);
        }
        s
    }

    /// The replay window now.
    pub fn window(&self) -> ReplayWindow {
        self.window.get()
    }

    fn count(&self, lane: usize, r: Result<(), EspDrop>) -> Result<(), EspDrop> {
        let Some(c) = self.stats.get(lane) else {
            return r;
        };
        match r {
            Ok(()) => bump(&c.packets),
            Err(EspDrop::Replay) => bump(&c.replay_drops),
            Err(EspDrop::Auth) => bump(&c.auth_drops),
            Err(_) => bump(&c.other_drops),
        }
        r
    }

    /// Takes the next sequence number (None once the 32-bit space is used up: the SA must be
    /// replaced). An SA never run on two threads at once ([`in_instance`](Self::in_instance)
    /// with one lane) takes it with a load and a store: a `lock xadd` per packet waited for
    /// the store buffer to drain (the batch's header stores, the previous batch's AEAD
    /// output), ~40 % of `encap_deferred`'s samples. Shared SAs keep the `fetch_add` (a race
    /// there would send one number twice: a nonce reused).
    fn next_seq(&self) -> Option<u32> {
        let s = if self.one_thread {
            let s = self.seq.load(Ordering::Relaxed) + 1;
            self.seq.store(s, Ordering::Relaxed);
            s
        } else {
            self.seq.fetch_add(1, Ordering::Relaxed) + 1
        };
        u32::try_from(s).ok()
    }

    /// Encapsulates the IP packet after the `l2`-byte link header of `pkt` (tunnel mode), on
    /// lane `lane`.
    pub fn encap(
        &self,
        pkt: &mut PacketBuf,
        l2: usize,
        q: &mut dyn CryptoQueue,
        lane: usize,
    ) -> Result<(), EspDrop> {
        let r = self.encap_inner(pkt, l2, q);
        self.count(lane, r)
    }

    fn encap_inner(
        &self,
        pkt: &mut PacketBuf,
        l2: usize,
        q: &mut dyn CryptoQueue,
    ) -> Result<(), EspDrop> {
        let SaDir::Outbound { .. } = self.cfg.dir else {
            return Err(EspDrop::Malformed);
        };
        // Every byte is encrypted: load the rest of a partial frame.
        pkt.make_whole();
        let f = pkt.frame();
        if l2 < 14 || f.len() <= l2 {
            return Err(EspDrop::Malformed);
        }
        let nh = match f[l2] >> 4 {
            4 => 4u8,
            6 => 41u8,
            _ => return Err(EspDrop::Malformed),
        };
        let inner = f.len() - l2;
        let pad = (4 - (inner + 2) % 4) % 4;
        let grow_front = 20 + ESP_HDR;
        let grow_tail = pad + 2 + ICV;
        if pkt.headroom() < grow_front || pkt.tailroom() < grow_tail {
            return Err(EspDrop::NoRoom);
        }
        let Some(seq) = self.next_seq() else {
            return Err(EspDrop::NoRoom); // sequence space exhausted: the SA must be replaced
        };
        let old_len = pkt.len();
        let fr = pkt.push_front(grow_front).expect("headroom checked");
        fr.copy_within(grow_front..grow_front + l2, 0);
        let total = old_len + grow_front + grow_tail;
        assert!(pkt.set_len(total), "tailroom checked");
        let fr = pkt.frame_mut();
        fr[l2 - 2..l2].copy_from_slice(&ETH_IPV4.to_be_bytes());
        self.write_outer(&mut fr[l2..l2 + 20], (total - l2) as u16);
        // ESP header: SPI, sequence number, IV (the 64-bit sequence number: unique per key).
        let e = l2 + 20;
        fr[e..e + 4].copy_from_slice(&self.cfg.spi.to_be_bytes());
        fr[e + 4..e + 8].copy_from_slice(&seq.to_be_bytes());
        fr[e + 8..e + 16].copy_from_slice(&u64::from(seq).to_be_bytes());
        // Trailer: padding 1, 2, 3..., pad length, next header.
        let body = e + ESP_HDR;
        let t = body + inner;
        for (i, b) in fr[t..t + pad].iter_mut().enumerate() {
            *b = i as u8 + 1;
        }
        fr[t + pad] = pad as u8;
        fr[t + pad + 1] = nh;
        let nonce = self.nonce(&fr[e + 8..e + 16]);
        let (head, rest) = fr.split_at_mut(body);
        let (plain, icv) = rest.split_at_mut(inner + pad + 2);
        let aad = [Seg::from_ref(&head[e..e + 8])];
        let data = [Seg::from_mut(plain)];
        let tag = [Seg::from_mut(icv)];
        let op = CryptoOp {
            session: &self.session,
            iv: nonce,
            src: &data,
            dst: &data,
            aad: &aad,
            digest: &tag,
            chain: Default::default(),
            user_data: 0,
        };
        run_sync(q, &op).map_err(|_| EspDrop::Crypto)
    }

    /// Decapsulates the ESP packet (outer IPv4 after `l2` bytes of link header, ESP after
    /// `l4`), leaving `[L2][inner packet]`, on lane `lane`.
    pub fn decap(
        &self,
        pkt: &mut PacketBuf,
        l2: usize,
        l4: usize,
        q: &mut dyn CryptoQueue,
        lane: usize,
    ) -> Result<(), EspDrop> {
        let r = self.decap_inner(pkt, l2, l4, q);
        self.count(lane, r)
    }

    fn decap_inner(
        &self,
        pkt: &mut PacketBuf,
        l2: usize,
        l4: usize,
        q: &mut dyn CryptoQueue,
    ) -> Result<(), EspDrop> {
        // Every byte is authenticated and decrypted: load the rest of a partial frame.
        pkt.make_whole();
        let len = pkt.len();
        if l2 < 14 || l4 <= l2 || len < l4 + ESP_HDR + 2 + ICV {
            return Err(EspDrop::Malformed);
        }
        let fr = pkt.frame_mut();
        // The outer IPv4 total length bounds the packet (Ethernet may pad short frames).
        let ip_total = usize::from(u16::from_be_bytes([fr[l2 + 2], fr[l2 + 3]]));
        let end = l2 + ip_total;
        if end > len || end < l4 + ESP_HDR + 2 + ICV {
            return Err(EspDrop::Malformed);
        }
        let seq = u32::from_be_bytes([fr[l4 + 4], fr[l4 + 5], fr[l4 + 6], fr[l4 + 7]]);
        if !self.window.check(seq) {
            return Err(EspDrop::Replay);
        }
        let nonce = self.nonce(&fr[l4 + 8..l4 + 16]);
        let body = l4 + ESP_HDR;
        let ct_len = end - ICV - body;
        {
            let (head, rest) = fr.split_at_mut(body);
            let (ct, icv) = rest.split_at_mut(ct_len);
            let aad = [Seg::from_ref(&head[l4..l4 + 8])];
            let data = [Seg::from_mut(ct)];
            let tag = [Seg::from_ref(&icv[..ICV])];
            let op = CryptoOp {
                session: &self.session,
                iv: nonce,
                src: &data,
                dst: &data,
                aad: &aad,
                digest: &tag,
                chain: Default::default(),
                user_data: 0,
            };
            match run_sync(q, &op) {
                Ok(()) => {}
                Err(CryptoError::AuthFailed) => return Err(EspDrop::Auth),
                Err(_) => return Err(EspDrop::Crypto),
            }
        }
        if !self.accept(seq) {
            // Another lane accepted the same number meanwhile: a replay after all.
            fr[body..body + ct_len].fill(0);
            return Err(EspDrop::Replay);
        }
        let pad = usize::from(fr[body + ct_len - 2]);
        let nh = fr[body + ct_len - 1];
        let Some(inner) = ct_len.checked_sub(2 + pad) else {
            return Err(EspDrop::Malformed);
        };
        let et = match nh {
            4 => ETH_IPV4,
            41 => ETH_IPV6,
            _ => return Err(EspDrop::Malformed),
        };
        let shift = body - l2;
        fr.copy_within(0..l2, shift);
        fr[shift + l2 - 2..shift + l2].copy_from_slice(&et.to_be_bytes());
        assert!(pkt.pull_front(shift));
        assert!(pkt.set_len(l2 + inner));
        Ok(())
    }
}

/// Which AEAD a pending packet still needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Work {
    Seal,
    Open,
}

/// What a pending ESP packet still needs where its frame lands: the AEAD over `span` bytes
/// at `off` of the output frame (the ICV after them on encap; `tag` on decap). Everything
/// here was copied from the packet when it was processed: nothing is read back from guest
/// memory but the decrypted trailer, which is checked.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Deferred {
    /// The SA that made it, which finishes it: found once, in `process` (looking the SPI up
    /// again per frame was a hash probe, ~1.5 % of an ESP frame's samples).
    sa: NonNull<Sa>,
    work: Work,
    nonce: [u8; 12],
    aad: [u8; 8],
    off: usize,
    span: usize,
    tag: [u8; ICV],
    seq: u32,
}

// SAFETY: `sa` is only a reference that `Deferred` carries for its holder (a lane's pending
// slots, on the lane's thread); it is dereferenced only through `Deferred::sa`, whose caller
// vouches for the SA's life. `Sa` is `Sync`.
unsafe impl Send for Deferred {}

impl Deferred {
    /// The SA that made it (outbound for a seal, inbound for an open).
    ///
    /// # Safety
    /// That SA must still be alive at the address it had when it made this (for a lane: the
    /// same read section of the instance, in which no SA is added, replaced or removed).
    pub(crate) unsafe fn sa(&self) -> &Sa {
        // SAFETY: the caller's.
        unsafe { self.sa.as_ref() }
    }
}

/// The segments covering `len` bytes at `off` of the stream `segs`, in `out`.
fn carve<'a, 'o, const N: usize>(
    segs: &[Seg<'a>],
    off: usize,
    len: usize,
    out: &'o mut [Seg<'a>; N],
) -> Option<&'o [Seg<'a>]> {
    let mut n = 0;
    let mut pos = 0;
    let end = off.checked_add(len)?;
    for s in segs {
        let (a, b) = (pos, pos + s.len());
        pos = b;
        if b <= off || a >= end {
            continue;
        }
        let from = off.max(a) - a;
        let to = end.min(b) - a;
        if n == out.len() {
            return None;
        }
        // SAFETY: `from..to` lies inside the segment, which the caller vouches for.
        out[n] = unsafe { Seg::from_raw(s.ptr().add(from), to - from) };
        n += 1;
    }
    (pos >= end).then_some(&out[..n])
}

impl Sa {
    /// Encapsulates the IP packet after the `l2`-byte link header of `pkt` without loading
    /// the rest of a partial frame: the outer headers and the ESP trailer are written now,
    /// the payload is sealed where the frame lands ([`finish`](Self::finish)). `pkt` is
    /// marked pending and its work written into `slot` (None after an error).
    ///
    /// The work is built where it stays, in the lane's slot: returned by value, its fields
    /// (stored a few bytes at a time) were read back 16 bytes at a time to be moved into the
    /// slot, a load no store could forward to, which waited for the stores to reach the cache
    /// (~24 % of `Exec::run`'s samples in an ESP run).
    pub(crate) fn encap_deferred_into(
        &self,
        pkt: &mut PacketBuf,
        l2: usize,
        lane: usize,
        slot: &mut Option<Deferred>,
    ) -> Result<(), EspDrop> {
        let r = self.encap_deferred_inner(pkt, l2, slot);
        if let Err(e) = r {
            *slot = None;
            let _ = self.count(lane, Err(e));
        }
        r
    }

    /// [`encap_deferred_into`](Self::encap_deferred_into), the work returned.
    #[cfg(test)]
    pub(crate) fn encap_deferred(
        &self,
        pkt: &mut PacketBuf,
        l2: usize,
        lane: usize,
    ) -> Result<Deferred, EspDrop> {
        let mut slot = None;
        self.encap_deferred_into(pkt, l2, lane, &mut slot)?;
        slot.ok_or(EspDrop::Malformed)
    }

    fn encap_deferred_inner(
        &self,
        pkt: &mut PacketBuf,
        l2: usize,
        slot: &mut Option<Deferred>,
    ) -> Result<(), EspDrop> {
        let SaDir::Outbound { .. } = self.cfg.dir else {
            return Err(EspDrop::Malformed);
        };
        let f = pkt.frame();
        if l2 < 14 || f.len() <= l2 {
            return Err(EspDrop::Malformed);
        }
        let nh = match f[l2] >> 4 {
            4 => 4u8,
            6 => 41u8,
            _ => return Err(EspDrop::Malformed),
        };
        let inner = pkt.len() - l2;
        let pad = (4 - (inner + 2) % 4) % 4;
        let grow_front = 20 + ESP_HDR;
        if pkt.headroom() < grow_front || pkt.len() + grow_front + pad + 2 + ICV > MAX_FRAME {
            return Err(EspDrop::NoRoom);
        }
        let Some(seq) = self.next_seq() else {
            return Err(EspDrop::NoRoom);
        };
        // A partial frame's pieces (resident inner bytes, rest, trailer) each start and end
        // on a 16-byte cipher block where they can: a few bytes of the rest copied to either
        // side now. An AEAD update that starts or ends inside a block costs AWS-LC a partial
        // block (~15-20 ns each at 1400 B, in-process); the bytes come from the source either
        // way.
        // (Not done over an earlier tail; either step failing leaves the frame as it was.)
        if let (Some((_, rest)), true) = (pkt.rest(), pkt.tail().is_empty()) {
            let resident = pkt.frame().len() - l2;
            let front = ((16 - resident % 16) % 16).min(rest);
            let back = ((resident + rest) % 16).min(rest - front);
            if pkt.load_rest_front(front) {
                let _ = pkt.rest_end_to_tail(back);
            }
        }
        let total = pkt.len() + grow_front + pad + 2 + ICV;
        let fr = pkt.push_front(grow_front).ok_or(EspDrop::NoRoom)?;
        fr.copy_within(grow_front..grow_front + l2, 0);
        fr[l2 - 2..l2].copy_from_slice(&ETH_IPV4.to_be_bytes());
        self.write_outer(&mut fr[l2..l2 + 20], (total - l2) as u16);
        let e = l2 + 20;
        fr[e..e + 4].copy_from_slice(&self.cfg.spi.to_be_bytes());
        fr[e + 4..e + 8].copy_from_slice(&seq.to_be_bytes());
        fr[e + 8..e + 16].copy_from_slice(&u64::from(seq).to_be_bytes());
        let mut trailer = [0u8; 3 + 2 + ICV];
        for (i, b) in trailer[..pad].iter_mut().enumerate() {
            *b = i as u8 + 1;
        }
        trailer[pad] = pad as u8;
        trailer[pad + 1] = nh;
        if !pkt.push_tail(&trailer[..pad + 2 + ICV]) {
            return Err(EspDrop::NoRoom);
        }
        let d = slot.insert(Deferred {
            sa: NonNull::from(self),
            work: Work::Seal,
            nonce: [0; 12],
            aad: [0; 8],
            off: e + ESP_HDR,
            span: inner + pad + 2,
            tag: [0; ICV],
            seq,
        });
        d.nonce[..4].copy_from_slice(&self.cfg.salt);
        d.nonce[4..].copy_from_slice(&u64::from(seq).to_be_bytes());
        d.aad[..4].copy_from_slice(&self.cfg.spi.to_be_bytes());
        d.aad[4..].copy_from_slice(&seq.to_be_bytes());
        pkt.set_pending();
        Ok(())
    }

    /// Decapsulates the ESP packet (outer IPv4 after `l2`, ESP after `l4`) without loading
    /// the rest of a partial frame: the outer headers go, the ICV is copied aside, and the
    /// payload is opened where the frame lands ([`finish`](Self::finish)), which also checks
    /// and strips the trailer. `pkt` is marked pending and its work written into `slot` (None
    /// after an error; built there as in [`encap_deferred_into`](Self::encap_deferred_into)).
    pub(crate) fn decap_deferred_into(
        &self,
        pkt: &mut PacketBuf,
        l2: usize,
        l4: usize,
        lane: usize,
        slot: &mut Option<Deferred>,
    ) -> Result<(), EspDrop> {
        let r = self.decap_deferred_inner(pkt, l2, l4, slot);
        if let Err(e) = r {
            *slot = None;
            let _ = self.count(lane, Err(e));
        }
        r
    }

    /// [`decap_deferred_into`](Self::decap_deferred_into), the work returned.
    #[cfg(test)]
    pub(crate) fn decap_deferred(
        &self,
        pkt: &mut PacketBuf,
        l2: usize,
        l4: usize,
        lane: usize,
    ) -> Result<Deferred, EspDrop> {
        let mut slot = None;
        self.decap_deferred_into(pkt, l2, l4, lane, &mut slot)?;
        slot.ok_or(EspDrop::Malformed)
    }

    fn decap_deferred_inner(
        &self,
        pkt: &mut PacketBuf,
        l2: usize,
        l4: usize,
        slot: &mut Option<Deferred>,
    ) -> Result<(), EspDrop> {
        let len = pkt.len();
        let fr = pkt.frame();
        if l2 < 14 || l4 <= l2 || fr.len() < l4 + ESP_HDR || len < l4 + ESP_HDR + 2 + ICV {
            return Err(EspDrop::Malformed);
        }
        let ip_total = usize::from(u16::from_be_bytes([fr[l2 + 2], fr[l2 + 3]]));
        let end = l2 + ip_total;
        if end > len || end < l4 + ESP_HDR + 2 + ICV {
            return Err(EspDrop::Malformed);
        }
        let seq = u32::from_be_bytes([fr[l4 + 4], fr[l4 + 5], fr[l4 + 6], fr[l4 + 7]]);
        if !self.window.check(seq) {
            return Err(EspDrop::Replay);
        }
        let d = slot.insert(Deferred {
            sa: NonNull::from(self),
            work: Work::Open,
            nonce: [0; 12],
            aad: [0; 8],
            off: l2,
            span: end - ICV - (l4 + ESP_HDR),
            tag: [0; ICV],
            seq,
        });
        d.nonce[..4].copy_from_slice(&self.cfg.salt);
        d.nonce[4..].copy_from_slice(&fr[l4 + 8..l4 + 16]);
        d.aad.copy_from_slice(&fr[l4..l4 + 8]);
        // The ICV, from the rest in the source in one copy where it lies there (the common
        // case), else byte by byte wherever it is.
        let res = fr.len();
        match pkt.rest() {
            Some((p, n)) if end - ICV >= res && end <= res + n => {
                // SAFETY: `end - ICV - res + ICV <= n`: inside the rest, readable while the
                // frame is partial; a raw copy into our own array.
                unsafe {
                    std::ptr::copy_nonoverlapping(p.add(end - ICV - res), d.tag.as_mut_ptr(), ICV)
                };
            }
            _ => {
                if !pkt.read_at(end - ICV, &mut d.tag) {
                    return Err(EspDrop::Malformed);
                }
            }
        }
        // [L2][outer IP][ESP header][ct][ICV] -> [L2][ct]: the link header moves forward
        // over the outer headers; the ICV (and any Ethernet padding) is cut.
        // A partial frame stays partial: the ciphertext's first bytes are resident, the rest
        // in the source buffer ([`finish_into`](Self::finish_into) opens it from there).
        let shift = l4 + ESP_HDR - l2;
        let fr = pkt.frame_mut();
        fr.copy_within(0..l2, shift);
        if !pkt.pull_front(shift) {
            return Err(EspDrop::Malformed);
        }
        if !pkt.truncate(l2 + d.span) {
            // The cut falls inside the resident bytes (a frame just over HEADER_BYTES).
            pkt.make_whole();
            if !pkt.truncate(l2 + d.span) {
                return Err(EspDrop::Malformed);
            }
        }
        pkt.set_pending();
        Ok(())
    }

    /// Runs what `d` still needs over the output frame, whose bytes `frame` covers in order
    /// (guest memory or the packet's own buffer). Returns the frame's final length, or None
    /// (dropped and counted; a failed open leaves no plaintext behind).
    pub(crate) fn finish(
        &self,
        d: &Deferred,
        frame: &[Seg<'_>],
        q: &mut dyn CryptoQueue,
        lane: usize,
    ) -> Option<usize> {
        self.counted(lane, self.finish_inner(d, frame, None, q))
    }

    /// Writes pending packet `pkt` into `frame` (where it lands, nothing of it there yet) and
    /// runs what `d` still needs on the way: with `frame` one segment, the AEAD reads its
    /// input from the packet buffer (headers, possibly rewritten; the ESP trailer) and the
    /// source buffer (the rest of a partial frame) and writes straight into `frame`: the
    /// frame's one copy. Otherwise (a chained or MRG destination) the frame is copied there
    /// first and finished in place ([`finish`](Self::finish)).
    ///
    /// On decap the ciphertext is read from the source guest's TX buffer and the plaintext
    /// lands in another guest's RX buffer: that is only safe where AWS-LC reads each
    /// ciphertext byte once for both GHASH and decryption, i.e. its AVX-512 code, which
    /// hashes the very registers it decrypts (`aesni-gcm-avx512.pl`); then a source guest
    /// rewriting its buffer meanwhile gets a failed tag or a consistent packet through, never
    /// an unauthenticated change. Its other code paths hash the input, then decrypt it
    /// (reading it twice), so without AVX-512 decap copies first (the destination guest can
    /// only race itself).
    pub(crate) fn finish_into(
        &self,
        d: &Deferred,
        pkt: &PacketBuf,
        frame: &[Seg<'_>],
        q: &mut dyn CryptoQueue,
        lane: usize,
    ) -> Option<usize> {
        let total = pkt.len();
        let head = pkt.frame();
        let rest = match pkt.rest() {
            // SAFETY: readable while the packet is partial (`PacketBuf::set_partial`), which it
            // stays while borrowed; only read through raw pointers.
            Some((p, n)) => unsafe { Seg::from_raw(p.cast_mut(), n) },
            None => Seg::from_ref(&[]),
        };
        // The frame as the packet holds it: resident bytes, rest, tail.
        let stream = [Seg::from_ref(head), rest, Seg::from_ref(pkt.tail())];
        let out_end = d.off + d.span + if d.work == Work::Seal { ICV } else { 0 };
        let fits = dpacc_spec::sg_len(frame) >= total;
        if !fits || out_end != total {
            let _ = self.count(lane, Err(EspDrop::Malformed));
            return None;
        }
        // (A whole frame's ciphertext is in the packet buffer: host memory.)
        let apart_ok = d.work == Work::Seal || pkt.rest().is_none() || gcm_reads_once();
        if crate::sg::single(frame).is_some() && d.off <= head.len() && apart_ok {
            // The bytes before the AEAD's (link header, outer headers on encap), from the
            // packet buffer; the AEAD writes the rest, and the ICV after it on encap.
            // SAFETY: `frame` is writable for `total >= d.off` bytes; `head` is ours.
            unsafe { crate::sg::scatter(frame, 0, &head[..d.off]) };
            // Decap of a partial frame: the ciphertext's resident bytes are an untouched copy
            // of the bytes before the rest in the source (`PacketBuf::resident_source`; only
            // the link header moved in front of them), so it is opened from the source in one
            // piece: one AEAD update, no piece boundary. Reading it there is what `apart_ok`
            // already allows for the rest (AWS-LC reads each ciphertext byte once).
            if d.work == Work::Open && pkt.rest().is_some() {
                if let Some(p) = pkt.resident_source(d.off) {
                    // `out_end == total` and no tail (`resident_source`): the span is the
                    // resident bytes from `d.off` plus the rest, all at `p`.
                    // SAFETY: readable while the packet is partial (`resident_source`); raw
                    // pointers only.
                    let one = [unsafe { Seg::from_raw(p.cast_mut(), d.span) }];
                    return self.counted(lane, self.finish_inner(d, frame, Some(&one), q));
                }
            }
            // At most one piece per piece of `stream` (a few stores: the store buffer is still
            // draining the previous frame's AEAD output).
            let mut src = [Seg::from_ref(&[]); 3];
            let Some(src) = carve(&stream, d.off, d.span, &mut src) else {
                let _ = self.count(lane, Err(EspDrop::Malformed));
                return None;
            };
            return self.counted(lane, self.finish_inner(d, frame, Some(src), q));
        }
        // SAFETY: `stream` is readable (above), `frame` writable for `total` bytes; a
        // memmove per piece (a hostile guest may overlap its RX and TX buffers).
        unsafe { crate::sg::copy(&stream, frame, 0, total) };
        self.finish(d, frame, q, lane)
    }

    fn counted(&self, lane: usize, r: Result<usize, EspDrop>) -> Option<usize> {
        match r {
            Ok(n) => {
                let _ = self.count(lane, Ok(()));
                Some(n)
            }
            Err(e) => {
                let _ = self.count(lane, Err(e));
                None
            }
        }
    }

    /// The AEAD `d` still needs over `frame`, in place or (`src`: its input elsewhere, as
    /// long as the span) out of place into `frame`.
    fn finish_inner(
        &self,
        d: &Deferred,
        frame: &[Seg<'_>],
        src: Option<&[Seg<'_>]>,
        q: &mut dyn CryptoQueue,
    ) -> Result<usize, EspDrop> {
        let total = dpacc_spec::sg_len(frame);
        let icv = if d.work == Work::Seal { ICV } else { 0 };
        if d.off + d.span + icv > total {
            return Err(EspDrop::Malformed);
        }
        // The software driver's key, called by the lane itself (no queue round), where the
        // frame is one segment (the common case: one RX buffer, or the packet's own buffer).
        if let (Some(f), Some(k)) = (crate::sg::single(frame), self.direct_key()) {
            // SAFETY: `d.off + d.span (+ ICV) <= total = f.len()` (checked above).
            let (data, tag_at) = unsafe {
                (
                    Seg::from_raw(f.ptr().add(d.off), d.span),
                    f.ptr().add(d.off + d.span),
                )
            };
            let own = [data];
            let input = src.unwrap_or(&own);
            match d.work {
                Work::Seal => {
                    // SAFETY: `input` readable (the caller's pieces, or `data`: in place), `data`
                    // writable; each piece the output or apart from it (the AEAD checks); the
                    // ICV's 16 bytes follow the span inside `f` (checked above).
                    unsafe {
                        k.seal_direct(&d.nonce, &d.aad, input, data, tag_at, self.one_thread)
                    }
                    .map_err(|_| EspDrop::Crypto)?;
                    return Ok(total);
                }
                Work::Open => {
                    // SAFETY: as for the seal; a failed open leaves no plaintext in `data`.
                    match unsafe {
                        k.open_direct(&d.nonce, &d.aad, &d.tag, input, data, self.one_thread)
                    } {
                        Ok(()) => {}
                        Err(CryptoError::AuthFailed) => return Err(EspDrop::Auth),
                        Err(_) => return Err(EspDrop::Crypto),
                    }
                    return self.opened(d, frame, &own);
                }
            }
        }
        let mut data = [Seg::from_ref(&[]); 16];
        let data = carve(frame, d.off, d.span, &mut data).ok_or(EspDrop::Malformed)?;
        let input = src.unwrap_or(data);
        let aad = [Seg::from_ref(&d.aad)];
        let nonce = Iv::new(&d.nonce).expect("12 bytes");
        match d.work {
            Work::Seal => {
                let mut tag = [Seg::from_ref(&[]); 16];
                let tag = carve(frame, d.off + d.span, ICV, &mut tag).ok_or(EspDrop::Malformed)?;
                let op = CryptoOp {
                    session: &self.session,
                    iv: nonce,
                    src: input,
                    dst: data,
                    aad: &aad,
                    digest: tag,
                    chain: Default::default(),
                    user_data: 0,
                };
                run_sync(q, &op).map_err(|_| EspDrop::Crypto)?;
                Ok(total)
            }
            Work::Open => {
                let tag = [Seg::from_ref(&d.tag)];
                let op = CryptoOp {
                    session: &self.session,
                    iv: nonce,
                    src: input,
                    dst: data,
                    aad: &aad,
                    digest: &tag,
                    chain: Default::default(),
                    user_data: 0,
                };
                match run_sync(q, &op) {
                    Ok(()) => {}
                    Err(CryptoError::AuthFailed) => return Err(EspDrop::Auth),
                    Err(_) => return Err(EspDrop::Crypto),
                }
                self.opened(d, frame, data)
            }
        }
    }

    /// After an open verified (plaintext in `data`, the span's pieces of `frame`): records
    /// the sequence number, checks and strips the trailer, writes the inner EtherType.
    /// Returns the frame's final length; on a drop `data` is wiped.
    fn opened(&self, d: &Deferred, frame: &[Seg<'_>], data: &[Seg<'_>]) -> Result<usize, EspDrop> {
        let wipe = |data: &[Seg<'_>]| {
            for s in data {
                // SAFETY: the segment is writable memory of the output frame.
                unsafe { std::ptr::write_bytes(s.ptr(), 0, s.len()) };
            }
        };
        if !self.accept(d.seq) {
            wipe(data);
            return Err(EspDrop::Replay);
        }
        // The trailer, copied once out of the (decrypted) frame and checked.
        let mut t = [0u8; 2];
        // SAFETY: `d.off + d.span <= total` (checked by the caller); readable segments.
        unsafe { crate::sg::gather(frame, d.off + d.span - 2, &mut t) };
        let (pad, nh) = (usize::from(t[0]), t[1]);
        let et = match nh {
            4 => ETH_IPV4,
            41 => ETH_IPV6,
            _ => {
                wipe(data);
                return Err(EspDrop::Malformed);
            }
        };
        let Some(inner) = d.span.checked_sub(2 + pad) else {
            wipe(data);
            return Err(EspDrop::Malformed);
        };
        // SAFETY: `d.off >= 14`: the EtherType lies in the frame's link header.
        unsafe { crate::sg::scatter(frame, d.off - 2, &et.to_be_bytes()) };
        Ok(d.off + inner)
    }

    /// The software driver's AEAD key behind the SA's session, when the session is the
    /// software driver's: the lane then runs the AEAD itself, without the crypto queue's
    /// enqueue/dequeue round (another driver's sessions go through the queue).
    fn direct_key(&self) -> Option<&AeadKey> {
        // SAFETY: the key lives inside `self.session`'s allocation (`DirectKey`).
        self.direct.as_ref().map(|k| unsafe { k.0.as_ref() })
    }

    /// [`finish`](Self::finish) in the packet's own buffer (made whole): for destinations
    /// that take host bytes.
    pub(crate) fn finish_here(
        &self,
        d: &Deferred,
        pkt: &mut PacketBuf,
        q: &mut dyn CryptoQueue,
        lane: usize,
    ) -> bool {
        pkt.make_whole();
        let n = {
            let frame = [Seg::from_mut(pkt.frame_mut())];
            self.finish(d, &frame, q, lane)
        };
        pkt.clear_pending();
        n.is_some_and(|n| pkt.set_len(n))
    }
}

/// Whether AWS-LC's AES-GCM runs its AVX-512 code here (the features it requires), which
/// reads each input byte once (see [`Sa::finish_into`]).
fn gcm_reads_once() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("avx")
            && std::arch::is_x86_feature_detected!("movbe")
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("vaes")
            && std::arch::is_x86_feature_detected!("vpclmulqdq")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The outer IPv4 header (no options, DF, TTL 64, ESP) of an outbound SA with its total
/// length and checksum zero, and the one's-complement sum of its words (an inbound SA: zeros).
fn outer_template(dir: SaDir) -> ([u8; 20], u32) {
    let SaDir::Outbound { src, dst } = dir else {
        return ([0; 20], 0);
    };
    let mut ip = [
        0x45,
        0,
        0,
        0,
        0,
        0,
        0x40,
        0,
        64,
        IPPROTO_ESP,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
    ];
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    (ip, checksum::sum(&ip, 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dpacc_spec::fastpath::PortId;

    const KEY: [u8; 16] = [0x42; 16];
    const SALT: [u8; 4] = [1, 2, 3, 4];

    fn sa(dir: SaDir) -> Sa {
        sa_in(dir, Mode::Shared)
    }

    /// How an SA runs its AEAD.
    #[derive(Clone, Copy, Debug)]
    enum Mode {
        /// The software key called by the lane, its gather context claimed atomically.
        Shared,
        /// The same, for an instance with one lane (no locked instructions).
        OneThread,
        /// Through the crypto queue (a driver whose sessions are not the software driver's).
        Queue,
    }

    const MODES: [Mode; 3] = [Mode::Shared, Mode::OneThread, Mode::Queue];

    fn sa_in(dir: SaDir, mode: Mode) -> Sa {
        let cfg = SaConfig {
            spi: 0x77,
            key: Zeroizing::new(KEY.to_vec()),
            salt: SALT,
            dir,
        };
        let sw = crate::SwDriver::new();
        match mode {
            Mode::Shared => Sa::new(cfg, &sw).unwrap(),
            Mode::OneThread => Sa::in_instance(cfg, &sw, 1).unwrap(),
            Mode::Queue => Sa::new(cfg, &Wrapped(sw)).unwrap(),
        }
    }

    /// The software driver behind sessions of another type: what a plug-in driver looks like
    /// to the SA (no direct call; every AEAD goes through `enqueue`).
    struct Wrapped(crate::SwDriver);
    struct WrappedSession(SessionHandle);
    struct WrappedQueue(Box<dyn CryptoQueue>);

    impl dpacc_spec::DriverSession for WrappedSession {
        fn info(&self) -> dpacc_spec::SessionInfo {
            self.0.info()
        }
        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
    }

    impl CryptoDriver for Wrapped {
        fn name(&self) -> &str {
            "wrapped"
        }
        fn capabilities(&self) -> dpacc_spec::Capabilities {
            self.0.capabilities()
        }
        fn create_session(&self, p: &SessionParams<'_>) -> Result<SessionHandle, CryptoError> {
            Ok(std::sync::Arc::new(WrappedSession(
                self.0.create_session(p)?,
            )))
        }
        fn open_queue(&self, depth: usize) -> Result<Box<dyn CryptoQueue>, CryptoError> {
            Ok(Box::new(WrappedQueue(self.0.open_queue(depth)?)))
        }
    }

    impl CryptoQueue for WrappedQueue {
        unsafe fn enqueue(&mut self, ops: &[CryptoOp<'_>]) -> usize {
            let mut n = 0;
            for op in ops {
                let inner = match op.session.as_any().downcast_ref::<WrappedSession>() {
                    Some(w) => &w.0,
                    None => op.session,
                };
                let op = CryptoOp {
                    session: inner,
                    iv: op.iv,
                    src: op.src,
                    dst: op.dst,
                    aad: op.aad,
                    digest: op.digest,
                    chain: op.chain,
                    user_data: op.user_data,
                };
                // SAFETY: forwarded from our caller.
                n += unsafe { self.0.enqueue(std::slice::from_ref(&op)) };
            }
            n
        }
        fn dequeue(&mut self, out: &mut [dpacc_spec::Completion]) -> usize {
            self.0.dequeue(out)
        }
        fn in_flight(&self) -> usize {
            self.0.in_flight()
        }
    }

    fn outbound() -> SaDir {
        SaDir::Outbound {
            src: Ipv4Addr::new(198, 51, 100, 1),
            dst: Ipv4Addr::new(198, 51, 100, 2),
        }
    }

    fn queue() -> Box<dyn CryptoQueue> {
        crate::SwDriver::new().open_queue(4).unwrap()
    }

    /// A queue that runs the sessions of SAs made in `mode` (and the software driver's).
    fn queue_in(mode: Mode) -> Box<dyn CryptoQueue> {
        match mode {
            Mode::Queue => Wrapped(crate::SwDriver::new()).open_queue(4).unwrap(),
            _ => queue(),
        }
    }

    /// An Ethernet + IPv4 + UDP frame of `len` bytes (payload bytes counting up).
    fn frame(len: usize) -> Vec<u8> {
        let mut f = vec![0u8; len];
        f[12..14].copy_from_slice(&ETH_IPV4.to_be_bytes());
        f[14] = 0x45;
        f[16..18].copy_from_slice(&((len - 14) as u16).to_be_bytes());
        f[22] = 64;
        f[23] = 17;
        f[26..30].copy_from_slice(&[10, 0, 0, 1]);
        f[30..34].copy_from_slice(&[10, 0, 0, 2]);
        for (i, b) in f[34..].iter_mut().enumerate() {
            *b = (i * 7 + 3) as u8;
        }
        f
    }

    /// `src` as a device loads it: partial (its first HEADER_BYTES resident, the rest left in
    /// `src`) when longer than that, else whole.
    fn loaded(src: &[u8]) -> PacketBuf {
        let mut p = PacketBuf::new();
        // SAFETY: `src` outlives `p`'s use in each test.
        assert!(unsafe { p.load_partial(src, PortId(1)) });
        p
    }

    /// `dst` as one segment, or cut into pieces at `cuts` (a chained / MRG destination).
    fn segs(dst: &mut [u8], cuts: &[usize]) -> Vec<Seg<'static>> {
        let mut out = Vec::new();
        let mut at = 0;
        let len = dst.len();
        for &c in cuts.iter().filter(|&&c| c < len).chain([len].iter()) {
            // SAFETY: inside `dst`, which outlives the segments' use in each test.
            out.push(unsafe { Seg::from_raw(dst.as_mut_ptr().add(at), c - at) });
            at = c;
        }
        out
    }

    /// Fused encap written where the frame lands (out of place from the packet buffer and the
    /// source, or copied then sealed for a scattered destination) is byte for byte the
    /// in-memory path's (the one scapy checks), also when the resident inner headers were
    /// rewritten (NAT) and differ from the source's; fused decap gives the original back.
    #[test]
    fn fused_esp_written_where_it_lands_matches_the_in_memory_path() {
        for (len, mode) in [
            60, 127, 128, 129, 130, 143, 144, 145, 160, 200, 1400, 1415, 1500,
        ]
        .into_iter()
        .flat_map(|l| MODES.map(|m| (l, m)))
        {
            let mut q = queue_in(mode);
            for cuts in [&[][..], &[7, 100, 700][..]] {
                let out_f = sa_in(outbound(), mode);
                let (out_r, inb) = (sa(outbound()), sa_in(SaDir::Inbound, mode));
                let src = frame(len);
                let mut p = loaded(&src);
                // NAT on the resident headers only: the source keeps the old address.
                p.frame_mut()[30..34].copy_from_slice(&[192, 0, 2, 9]);
                let mut want = src.clone();
                want[30..34].copy_from_slice(&[192, 0, 2, 9]);
                let d = out_f.encap_deferred(&mut p, 14, 0).unwrap();
                let mut dst = vec![0xa5u8; p.len()];
                let n = out_f.finish_into(&d, &p, &segs(&mut dst, cuts), &mut *q, 0);
                assert_eq!(n, Some(dst.len()), "{len} B, cuts {cuts:?}, {mode:?}");
                let mut r = PacketBuf::new();
                assert!(r.load(&want, PortId(1)));
                out_r.encap(&mut r, 14, &mut *q, 0).unwrap();
                assert!(
                    dst == r.frame(),
                    "{len} B, {cuts:?}, {mode:?}: encap differs"
                );

                let esp = dst;
                let mut p = loaded(&esp);
                let d = inb.decap_deferred(&mut p, 14, 34, 0).unwrap();
                let mut back = vec![0x5au8; p.len()];
                let n = inb.finish_into(&d, &p, &segs(&mut back, cuts), &mut *q, 0);
                assert_eq!(n, Some(want.len()), "{len} B, cuts {cuts:?}");
                assert!(
                    back[..want.len()] == want[..],
                    "{len} B, {mode:?}: decap differs"
                );
                assert_eq!(inb.stats().packets, 1);
            }
        }
    }

    /// A tampered ESP frame opened where it lands: dropped, counted, and no plaintext left in
    /// the destination (out of place or in place).
    #[test]
    fn a_tampered_frame_opened_where_it_lands_leaves_no_plaintext() {
        for (len, mode) in [60, 100, 1400]
            .into_iter()
            .flat_map(|l| MODES.map(|m| (l, m)))
        {
            let mut q = queue_in(mode);
            for cuts in [&[][..], &[50, 300][..]] {
                let (out, inb) = (sa(outbound()), sa_in(SaDir::Inbound, mode));
                let mut r = PacketBuf::new();
                assert!(r.load(&frame(len), PortId(1)));
                out.encap(&mut r, 14, &mut *q, 0).unwrap();
                let mut esp = r.frame().to_vec();
                let at = esp.len() - 20; // ciphertext, in the source past the resident bytes
                esp[at] ^= 1;
                let mut p = loaded(&esp);
                let d = inb.decap_deferred(&mut p, 14, 34, 0).unwrap();
                let mut dst = vec![0xa5u8; p.len()];
                let n = inb.finish_into(&d, &p, &segs(&mut dst, cuts), &mut *q, 0);
                assert_eq!(n, None);
                // Wiped (out of place, in place), or still the ciphertext (a scattered
                // destination is opened in the queue's bounce buffer, which is wiped).
                let left = &dst[d.off..d.off + d.span];
                let ct = &esp[14 + 20 + ESP_HDR..][..d.span];
                let wiped = left.iter().all(|&b| b == 0);
                assert!(
                    wiped || (!cuts.is_empty() && left == ct),
                    "{len} B, cuts {cuts:?}, {mode:?}: plaintext left behind"
                );
                assert_eq!(inb.stats().auth_drops, 1);
                // The genuine frame still opens (the sequence number was not consumed).
                esp[at] ^= 1;
                let mut p = loaded(&esp);
                let d = inb.decap_deferred(&mut p, 14, 34, 0).unwrap();
                let mut dst = vec![0u8; p.len()];
                let n = inb.finish_into(&d, &p, &segs(&mut dst, cuts), &mut *q, 0);
                assert_eq!(n, Some(len));
                // Once opened, the same frame again is a replay.
                let mut p = loaded(&esp);
                let again = inb.decap_deferred(&mut p, 14, 34, 0);
                assert_eq!(again.err(), Some(EspDrop::Replay), "{mode:?}");
            }
        }
    }

    /// Consecutive encapsulations number their packets 1, 2, 3... in every mode (the one-lane
    /// SA takes its numbers with a load and a store), put the number in the ESP header and the
    /// IV, and write a correct outer IPv4 header (the SA's template plus length and checksum)
    /// on both the deferred and the whole-frame path; a spent sequence space is refused.
    #[test]
    fn encap_numbers_packets_and_writes_a_valid_outer_header() {
        for mode in MODES {
            let out = sa_in(outbound(), mode);
            let mut q = queue_in(mode);
            for (n, len) in [(1u32, 60usize), (2, 1400), (3, 200), (4, 1415)] {
                let src = frame(len);
                let mut p = loaded(&src);
                let mut whole = PacketBuf::new();
                assert!(whole.load(&src, PortId(1)));
                let f: Vec<u8> = if n % 2 == 1 {
                    let d = out.encap_deferred(&mut p, 14, 0).unwrap();
                    let mut dst = vec![0u8; p.len()];
                    let got = out.finish_into(&d, &p, &segs(&mut dst, &[]), &mut *q, 0);
                    assert_eq!(got, Some(dst.len()));
                    dst
                } else {
                    out.encap(&mut whole, 14, &mut *q, 0).unwrap();
                    whole.frame().to_vec()
                };
                let ip = &f[14..34];
                assert_eq!(&ip[..2], &[0x45, 0], "{mode:?}");
                assert_eq!(
                    usize::from(u16::from_be_bytes([ip[2], ip[3]])),
                    f.len() - 14,
                    "{mode:?}: total length"
                );
                assert_eq!(&ip[6..10], &[0x40, 0, 64, IPPROTO_ESP]);
                assert_eq!(&ip[12..16], &[198, 51, 100, 1]);
                assert_eq!(&ip[16..20], &[198, 51, 100, 2]);
                assert_eq!(
                    checksum::fold(checksum::sum(ip, 0)),
                    0,
                    "{mode:?}: checksum"
                );
                assert_eq!(&f[34..38], &0x77u32.to_be_bytes());
                assert_eq!(&f[38..42], &n.to_be_bytes(), "{mode:?}: sequence number");
                assert_eq!(&f[42..50], &u64::from(n).to_be_bytes(), "{mode:?}: IV");
            }
            assert_eq!(out.stats().packets, 4);
            // The last number of the 32-bit space is sent; the one after it is refused.
            out.seq.store(u64::from(u32::MAX) - 1, Ordering::Relaxed);
            let src = frame(100);
            let mut p = loaded(&src);
            assert!(out.encap_deferred(&mut p, 14, 0).is_ok());
            let mut p = loaded(&src);
            assert_eq!(
                out.encap_deferred(&mut p, 14, 0).err(),
                Some(EspDrop::NoRoom)
            );
        }
    }

    #[test]
    fn replay_window_follows_rfc4303() {
        let mut w = ReplayWindow::default();
        assert!(!w.check(0));
        for s in [1, 2, 5, 3] {
            assert!(w.check(s));
            w.accept(s);
        }
        assert!(!w.check(2) && !w.check(5) && w.check(4));
        w.accept(100);
        assert!(!w.check(36), "100 - 36 = 64: outside the window");
        assert!(w.check(37) && !w.check(100) && w.check(101));
    }

    /// Lanes accepting the same sequence numbers at once: each number is accepted exactly
    /// once, and the window ends where a single lane would have left it.
    #[test]
    fn a_shared_window_accepts_each_number_once_across_lanes() {
        let w = std::sync::Arc::new(SharedWindow::default());
        let hs: Vec<_> = (0..2)
            .map(|_| {
                let w = w.clone();
                std::thread::spawn(move || (1..=20_000u32).filter(|&s| w.accept(s)).count())
            })
            .collect();
        let total: usize = hs.into_iter().map(|h| h.join().unwrap()).sum();
        // Whichever lane comes to a number first accepts it (it is inside the window then);
        // the other is refused: every number exactly once.
        assert_eq!(total, 20_000);
        let mut single = ReplayWindow::default();
        for s in 1..=20_000 {
            single.accept(s);
        }
        assert_eq!(w.get().top, single.top);
        assert!(!w.check(20_000) && !w.check(19_999) && w.check(20_001));
    }
}
