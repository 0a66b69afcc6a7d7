//! [`FlowTable`]: a vNF's typed handle on its flow-processor instance, over any [`FrameIo`].
//!
//! Two ways to use it, freely mixed:
//! - blocking calls ([`FlowTable::add_flow`], [`FlowTable::stats`], ...): one request, wait
//!   for its reply;
//! - pipelined: `submit_*` queues a request and returns its transaction id at once;
//!   [`FlowTable::flush`] sends what is queued (several requests per frame once
//!   [`FlowTable::hello`] found a version-2 device: BATCH frames, `spec/fastpath.md`);
//!   [`FlowTable::poll_completions`] (never blocks) and [`FlowTable::wait_completions`] hand
//!   back each request's own [`Completion`], matched by txid in whatever order the answers
//!   come. A request with no answer within [`FlowTable::timeout`] completes with
//!   [`Error::NoReply`] naming it. Nothing here needs a runtime: an event loop calls
//!   `poll_completions` when the port is readable, an async wrapper does so from its `poll`.
//!
//! Events (PACKET_IN, FLOW_EXPIRED) that arrive while it waits or polls for replies are queued
//! for [`FlowTable::next_event`], at most [`FlowTable::max_events`] ([`MAX_QUEUED_EVENTS`]
//! by default); past that the oldest is dropped and counted ([`FlowTable::events_dropped`]).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use dpacc_spec::fastpath::flow::{Bucket, Expired, FlowSpec, FlowStats, FlowSummary};
use dpacc_spec::fastpath::proto::{self, Body, Caps, Framed, Message, SaSpec, BACKEND_MAC};
use dpacc_spec::fastpath::{PortId, Usage};

use super::FrameIo;
use crate::{Error, Result};

/// Something the instance reported on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A packet missed the tables (the exception path).
    PacketIn {
        /// Where it arrived.
        in_port: PortId,
        /// Table of the miss.
        table: u8,
        /// The frame.
        frame: Vec<u8>,
    },
    /// A flow expired.
    FlowExpired(Expired),
}

/// What a request asked (named in completions and errors).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Request {
    /// HELLO.
    Hello,
    /// FLOW_ADD.
    FlowAdd,
    /// FLOW_DELETE.
    FlowDelete,
    /// FLOW_STATS.
    FlowStats,
    /// FLOW_LIST (one page).
    FlowList,
    /// GROUP_ADD.
    GroupAdd,
    /// SA_ADD.
    SaAdd,
    /// PACKET_OUT (completes only when it fails: a sent frame has no reply).
    PacketOut,
}

impl Request {
    /// The message's name in `spec/fastpath.md`.
    pub fn name(self) -> &'static str {
        match self {
            Request::Hello => "HELLO",
            Request::FlowAdd => "FLOW_ADD",
            Request::FlowDelete => "FLOW_DELETE",
            Request::FlowStats => "FLOW_STATS",
            Request::FlowList => "FLOW_LIST",
            Request::GroupAdd => "GROUP_ADD",
            Request::SaAdd => "SA_ADD",
            Request::PacketOut => "PACKET_OUT",
        }
    }
}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A successful answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Done (FLOW_ADD, FLOW_DELETE, GROUP_ADD, SA_ADD).
    Ok,
    /// HELLO's answer.
    Hello {
        /// Tables per instance.
        tables: u8,
        /// Flow quota.
        max_flows: u32,
        /// Its quotas, what it holds and its memory (None from backends that predate it).
        usage: Option<Usage>,
        /// What a version-2 device offers (None: a version-1 device).
        caps: Option<Caps>,
    },
    /// FLOW_STATS's answer.
    Stats(FlowStats),
    /// A FLOW_LIST page.
    ListPage {
        /// Flows installed in all.
        total: u32,
        /// Index of the first entry.
        start: u32,
        /// The entries.
        entries: Vec<FlowSummary>,
    },
}

/// The end of one request: its answer, or why there is none.
#[derive(Debug)]
pub struct Completion {
    /// The request's transaction id (what `submit_*` returned).
    pub txid: u32,
    /// What it asked.
    pub request: Request,
    /// Its own result: [`Error::FlowRejected`] for an ERROR reply (quota, bad actions...),
    /// [`Error::NoReply`] when none came in time.
    pub result: Result<Reply>,
}

struct Pending {
    request: Request,
    deadline: Instant,
}

/// Hashes a txid (sequential numbers) with one multiplication: the pending table is on the
/// path of every request, and its keys are ours, not an adversary's.
#[derive(Default)]
struct TxidHasher(u64);

impl std::hash::Hasher for TxidHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u32(&mut self, v: u32) {
        self.0 = u64::from(v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type TxidMap<V> = HashMap<u32, V, std::hash::BuildHasherDefault<TxidHasher>>;

/// Where the frame being filled with requests lies in `out`.
struct Open {
    /// Start of the frame (its Ethernet header).
    frame: usize,
    /// Start of its BATCH header (version 2).
    batch: usize,
    /// Messages in it.
    count: usize,
    /// Whether it is a BATCH (the device speaks version 2).
    batched: bool,
}

/// PACKET_OUT txids remembered to name their ERRORs.
const PACKET_OUT_MEMORY: usize = 4096;
/// Frames queued before `submit_*` sends them without waiting for [`FlowTable::flush`].
const AUTO_FLUSH_FRAMES: usize = 32;

/// Events kept while waiting for replies; older ones are dropped beyond this (and counted).
pub const MAX_QUEUED_EVENTS: usize = 4096;

/// What HELLO tells about the instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InstanceInfo {
    /// Tables.
    pub tables: u8,
    /// Flow quota.
    pub max_flows: u32,
    /// Its quotas, what it holds and its memory (None from backends that predate it).
    pub usage: Option<Usage>,
}

/// The vNF's side of the control protocol: requests with transaction ids (blocking or
/// pipelined), typed replies and errors, events queued (at most [`MAX_QUEUED_EVENTS`] by
/// default) while waiting for replies.
pub struct FlowTable<T: FrameIo> {
    io: T,
    mac: [u8; 6],
    txid: u32,
    events: VecDeque<Event>,
    max_events: usize,
    events_dropped: u64,
    late_replies: u64,
    buf: Vec<u8>,
    /// How long to wait for a reply.
    pub timeout: Duration,
    pending: TxidMap<Pending>,
    /// (txid, deadline) in deadline order (answered ones are skipped when reached).
    deadlines: VecDeque<(u32, Instant)>,
    /// Completions not handed out yet.
    done: VecDeque<Completion>,
    packet_outs: VecDeque<u32>,
    max_in_flight: usize,
    /// Highest version to ask for in HELLO (2: batches).
    max_version: u8,
    /// What the device offered (batching on when Some).
    caps: Option<Caps>,
    /// The flow quota the last HELLO_REPLY reported (bounds a FLOW_LIST walk).
    max_flows: Option<u32>,
    /// Longest frame this side sends.
    max_frame: usize,
    /// Queued frames, back to back; `frames` delimits them.
    out: Vec<u8>,
    frames: Vec<(usize, usize)>,
    open: Option<Open>,
}

impl<T: FrameIo> FlowTable<T> {
    /// Control over `io`, sending from `mac` (the vNF port's MAC address).
    pub fn new(io: T, mac: [u8; 6]) -> Self {
        Self {
            io,
            mac,
            txid: 0,
            events: VecDeque::new(),
            max_events: MAX_QUEUED_EVENTS,
            events_dropped: 0,
            late_replies: 0,
            buf: vec![0u8; 16384],
            timeout: Duration::from_secs(2),
            pending: TxidMap::default(),
            deadlines: VecDeque::new(),
            done: VecDeque::new(),
            packet_outs: VecDeque::new(),
            max_in_flight: 1024,
            max_version: proto::VERSION_2,
            caps: None,
            max_flows: None,
            max_frame: 1514,
            out: Vec::new(),
            frames: Vec::new(),
            open: None,
        }
    }

    /// The transport, e.g. to send data frames.
    pub fn io(&mut self) -> &mut T {
        &mut self.io
    }

    /// The highest protocol version [`hello`](Self::hello) asks for: 2 (the default) lets
    /// requests share frames with a device that offers it; 1 speaks version 1 only.
    pub fn set_max_version(&mut self, v: u8) {
        self.max_version = v.clamp(proto::VERSION, proto::VERSION_2);
        if self.max_version < proto::VERSION_2 {
            self.caps = None;
        }
    }

    /// The version in use: 2 once [`hello`](Self::hello) found a version-2 device, else 1.
    pub fn version(&self) -> u8 {
        if self.caps.is_some() {
            proto::VERSION_2
        } else {
            proto::VERSION
        }
    }

    /// Longest frame to send (default 1514, a standard Ethernet frame, which every
    /// transport carries; a virtio-user port takes up to 2036).
    pub fn set_max_frame(&mut self, bytes: usize) {
        self.max_frame = bytes.max(64);
    }

    /// Most requests waiting for replies (default 1024); `submit_*` fails with
    /// [`Error::QueueFull`] past it. Keep it within what the port's RX ring holds when the
    /// device speaks version 1 (a reply per frame).
    pub fn set_max_in_flight(&mut self, n: usize) {
        self.max_in_flight = n.max(1);
    }

    /// Requests waiting for their replies.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Most events kept for [`next_event`](Self::next_event) (default
    /// [`MAX_QUEUED_EVENTS`]); past it the oldest is dropped and counted.
    pub fn set_max_events(&mut self, n: usize) {
        self.max_events = n.max(1);
    }

    /// The queue limit of [`set_max_events`](Self::set_max_events).
    pub fn max_events(&self) -> usize {
        self.max_events
    }

    /// Events dropped because the queue was full.
    pub fn events_dropped(&self) -> u64 {
        self.events_dropped
    }

    /// Replies that matched no waiting request (they came after their request timed out).
    pub fn late_replies(&self) -> u64 {
        self.late_replies
    }

    // ------------------------------------------------------------ sending

    fn next_txid(&mut self) -> u32 {
        self.txid = self.txid.wrapping_add(1).max(1);
        self.txid
    }

    /// Queues one request's payload (written by `encode`) and registers it.
    fn submit_with(
        &mut self,
        request: Request,
        encode: impl FnOnce(u32, &mut Vec<u8>),
    ) -> Result<u32> {
        if request != Request::PacketOut && self.pending.len() >= self.max_in_flight {
            return Err(Error::QueueFull);
        }
        let txid = self.next_txid();
        self.queue(txid, encode)?;
        if request == Request::PacketOut {
            if self.packet_outs.len() == PACKET_OUT_MEMORY {
                self.packet_outs.pop_front();
            }
            self.packet_outs.push_back(txid);
        } else {
            let deadline = Instant::now() + self.timeout;
            self.pending.insert(txid, Pending { request, deadline });
            // Kept in deadline order (what `expire` relies on); only a `timeout` shortened
            // since earlier submissions puts one before the end.
            match self.deadlines.back() {
                Some(&(_, last)) if last > deadline => {
                    let at = self.deadlines.partition_point(|d| d.1 <= deadline);
                    self.deadlines.insert(at, (txid, deadline));
                }
                _ => self.deadlines.push_back((txid, deadline)),
            }
        }
        Ok(txid)
    }

    fn begin_frame(&mut self) -> Open {
        let frame = self.out.len();
        self.out.extend_from_slice(&BACKEND_MAC);
        self.out.extend_from_slice(&self.mac);
        self.out.extend_from_slice(&proto::ETHERTYPE.to_be_bytes());
        let batch = self.out.len();
        let batched = self.caps.is_some();
        if batched {
            proto::begin_batch(&mut self.out, 0);
        }
        Open {
            frame,
            batch,
            count: 0,
            batched,
        }
    }

    /// Ends the open frame: a BATCH of one becomes that message alone.
    fn close_frame(&mut self) {
        let Some(o) = self.open.take() else {
            return;
        };
        if o.batched {
            if o.count == 1 {
                self.out
                    .drain(o.batch..o.batch + proto::HEADER_LEN)
                    .for_each(drop);
            } else {
                let txid = self.next_txid();
                self.out[o.batch + 4..o.batch + 8].copy_from_slice(&txid.to_be_bytes());
                proto::end_batch(&mut self.out, o.batch);
            }
        }
        if o.count > 0 {
            self.frames.push((o.frame, self.out.len()));
        } else {
            self.out.truncate(o.frame);
        }
    }

    fn queue(&mut self, txid: u32, encode: impl FnOnce(u32, &mut Vec<u8>)) -> Result<()> {
        if self.open.is_none() {
            self.open = Some(self.begin_frame());
        }
        let (max_batch, max_frame) = match self.caps {
            Some(c) if self.open.as_ref().is_some_and(|o| o.batched) => (
                usize::from(c.max_batch).max(1),
                self.max_frame.min(usize::from(c.max_frame)),
            ),
            _ => (1, self.max_frame),
        };
        let at = self.out.len();
        encode(txid, &mut self.out);
        let o = self.open.as_ref().expect("opened above");
        let len = self.out.len() - o.frame;
        if o.count > 0 && len > max_frame {
            // Does not fit: move it to a frame of its own.
            let msg = self.out.split_off(at);
            self.close_frame();
            self.open = Some(self.begin_frame());
            self.out.extend_from_slice(&msg);
        }
        let o = self.open.as_mut().expect("open");
        o.count += 1;
        if o.count >= max_batch || self.out.len() - o.frame >= max_frame {
            self.close_frame();
        }
        if self.frames.len() >= AUTO_FLUSH_FRAMES {
            self.send_frames()?;
        }
        Ok(())
    }

    fn send_frames(&mut self) -> Result<()> {
        let mut refs: [&[u8]; AUTO_FLUSH_FRAMES] = [&[]; AUTO_FLUSH_FRAMES];
        let mut r = Ok(());
        for chunk in self.frames.chunks(AUTO_FLUSH_FRAMES) {
            for (d, &(a, b)) in refs.iter_mut().zip(chunk) {
                *d = &self.out[a..b];
            }
            r = self.io.send_all(&refs[..chunk.len()]);
            if r.is_err() {
                break;
            }
        }
        self.frames.clear();
        if self.open.is_none() {
            self.out.clear();
        }
        r
    }

    /// Sends every queued request.
    pub fn flush(&mut self) -> Result<()> {
        self.close_frame();
        if self.frames.is_empty() {
            self.out.clear();
            return Ok(());
        }
        self.send_frames()
    }

    /// Queues a HELLO (asking for the device's capabilities unless
    /// [`set_max_version`](Self::set_max_version)`(1)`).
    pub fn submit_hello(&mut self) -> Result<u32> {
        let v2 = self.max_version >= proto::VERSION_2;
        // HELLO goes alone: its answer decides how later requests are framed.
        self.flush()?;
        let caps = self.caps.take();
        let r = self.submit_with(Request::Hello, |txid, out| {
            if v2 {
                proto::encode_hello_v2(txid, out);
            } else {
                Message {
                    txid,
                    body: Body::Hello,
                }
                .encode(out);
            }
        });
        self.flush()?;
        self.caps = caps;
        r
    }

    fn submit_body(&mut self, request: Request, body: Body) -> Result<u32> {
        self.submit_with(request, |txid, out| Message { txid, body }.encode(out))
    }

    /// Queues a FLOW_ADD.
    pub fn submit_add_flow(&mut self, f: FlowSpec) -> Result<u32> {
        self.submit_body(Request::FlowAdd, Body::FlowAdd(f))
    }

    /// Queues a FLOW_DELETE.
    pub fn submit_delete_flows(&mut self, cookie: u64) -> Result<u32> {
        self.submit_body(Request::FlowDelete, Body::FlowDelete { cookie })
    }

    /// Queues a FLOW_STATS.
    pub fn submit_stats(&mut self, cookie: u64) -> Result<u32> {
        self.submit_body(Request::FlowStats, Body::FlowStatsRequest { cookie })
    }

    /// Queues a FLOW_LIST for the page starting at flow `start`.
    pub fn submit_list_page(&mut self, start: u32) -> Result<u32> {
        self.submit_body(Request::FlowList, Body::FlowListRequest { start })
    }

    /// Queues a GROUP_ADD.
    pub fn submit_add_group(&mut self, id: u32, buckets: Vec<Bucket>) -> Result<u32> {
        self.submit_body(Request::GroupAdd, Body::GroupAdd { id, buckets })
    }

    /// Queues an SA_ADD.
    pub fn submit_add_sa(&mut self, sa: SaSpec) -> Result<u32> {
        self.submit_body(Request::SaAdd, Body::SaAdd(sa))
    }

    /// Queues a PACKET_OUT: `frame` out of `port` (or through the tables as if from `port`).
    /// It has no reply when it works; a failure completes it with its ERROR.
    pub fn submit_packet_out(
        &mut self,
        port: PortId,
        through_tables: bool,
        frame: &[u8],
    ) -> Result<u32> {
        self.submit_with(Request::PacketOut, |txid, out| {
            proto::encode_packet_out(txid, port, through_tables, frame, out)
        })
    }

    // ------------------------------------------------------------ receiving

    /// Receives one frame (waiting at most `timeout`) and sorts what it carries. False if
    /// none came.
    fn pump(&mut self, timeout: Option<Duration>) -> Result<bool> {
        let mut buf = std::mem::take(&mut self.buf);
        let r = self.io.recv(&mut buf, timeout);
        if let Ok(Some(n)) = r {
            self.sort_frame(&buf[..n]);
        }
        self.buf = buf;
        Ok(r?.is_some())
    }

    fn sort_frame(&mut self, frame: &[u8]) {
        let Some((_, _, payload)) = proto::parse_frame(frame) else {
            return; // not a control frame
        };
        match proto::framed(payload) {
            Ok(Framed::One(p)) => self.sort_message(p),
            Ok(Framed::Batch { messages, .. }) => {
                for m in messages {
                    match m {
                        Ok(p) => self.sort_message(p),
                        Err(_) => break,
                    }
                }
            }
            Err(_) => {}
        }
    }

    fn sort_message(&mut self, payload: &[u8]) {
        let m = match Message::decode(payload) {
            Ok(m) => m,
            Err(_) => {
                // A reply whose header names a waiting request but whose body cannot be
                // decoded (truncated, bad TLVs) fails that request now, not at its deadline.
                if let Ok(h) = proto::Header::parse(payload) {
                    if let Some(p) = self.pending.remove(&h.txid) {
                        self.done.push_back(Completion {
                            txid: h.txid,
                            request: p.request,
                            result: Err(Error::Protocol("a reply that cannot be decoded")),
                        });
                    }
                }
                return;
            }
        };
        let event = match m.body {
            Body::PacketIn {
                in_port,
                table,
                frame,
            } => Event::PacketIn {
                in_port,
                table,
                frame,
            },
            Body::FlowExpired(e) => Event::FlowExpired(e),
            body => {
                self.complete(m.txid, body, payload);
                return;
            }
        };
        if self.events.len() >= self.max_events {
            self.events.pop_front();
            self.events_dropped += 1;
        }
        self.events.push_back(event);
    }

    fn complete(&mut self, txid: u32, body: Body, payload: &[u8]) {
        let request = match self.pending.remove(&txid) {
            Some(p) => p.request,
            // A PACKET_OUT's ERROR completes it once: a repeated one is a late reply.
            None if matches!(body, Body::Error { .. }) && self.forget_packet_out(txid) => {
                Request::PacketOut
            }
            None => {
                self.late_replies += 1;
                return;
            }
        };
        let result = match (request, body) {
            (_, Body::Error { code, msg }) => Err(Error::FlowRejected { code, msg }),
            (
                Request::Hello,
                Body::HelloReply {
                    tables,
                    max_flows,
                    usage,
                },
            ) => {
                let caps = Caps::of_hello_reply(payload)
                    .filter(|c| c.version >= proto::VERSION_2 && c.max_batch > 0);
                self.caps = caps.filter(|_| self.max_version >= proto::VERSION_2);
                self.max_flows = Some(max_flows);
                Ok(Reply::Hello {
                    tables,
                    max_flows,
                    usage,
                    caps,
                })
            }
            (Request::FlowStats, Body::FlowStatsReply { stats, .. }) => Ok(Reply::Stats(stats)),
            (
                Request::FlowList,
                Body::FlowListReply {
                    total,
                    start,
                    entries,
                },
            ) => Ok(Reply::ListPage {
                total,
                start,
                entries,
            }),
            (
                Request::FlowAdd
                | Request::FlowDelete
                | Request::GroupAdd
                | Request::SaAdd
                | Request::PacketOut,
                Body::Ok,
            ) => Ok(Reply::Ok),
            _ => Err(Error::Protocol("a reply of the wrong type")),
        };
        self.done.push_back(Completion {
            txid,
            request,
            result,
        });
    }

    /// Whether `txid` is a PACKET_OUT still remembered; forgets it (its ERROR completes it).
    fn forget_packet_out(&mut self, txid: u32) -> bool {
        match self.packet_outs.iter().position(|&t| t == txid) {
            Some(i) => {
                self.packet_outs.remove(i);
                true
            }
            None => false,
        }
    }

    /// Completes the requests whose deadline passed with [`Error::NoReply`].
    fn expire(&mut self, now: Instant) {
        while let Some(&(txid, deadline)) = self.deadlines.front() {
            if !self.pending.contains_key(&txid) {
                self.deadlines.pop_front();
                continue;
            }
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            if let Some(p) = self.pending.remove(&txid) {
                self.done.push_back(Completion {
                    txid,
                    request: p.request,
                    result: Err(Error::NoReply {
                        request: p.request.name(),
                        txid,
                        after: self.timeout,
                    }),
                });
            }
        }
    }

    /// Sends what is queued, takes every frame already received (never waits), and appends
    /// the completed requests to `out`. Returns how many it appended.
    pub fn poll_completions(&mut self, out: &mut Vec<Completion>) -> Result<usize> {
        self.flush()?;
        // Bounded so that a flood of frames cannot keep the caller here.
        for _ in 0..1024 {
            if !self.pump(Some(Duration::ZERO))? {
                break;
            }
        }
        if !self.pending.is_empty() {
            self.expire(Instant::now());
        }
        let n = self.done.len();
        out.extend(self.done.drain(..));
        Ok(n)
    }

    /// Like [`poll_completions`](Self::poll_completions), but waits up to `timeout` for at
    /// least one completion (or until no request is in flight).
    pub fn wait_completions(
        &mut self,
        out: &mut Vec<Completion>,
        timeout: Duration,
    ) -> Result<usize> {
        let end = Instant::now() + timeout;
        loop {
            let n = self.poll_completions(out)?;
            let now = Instant::now();
            if n > 0 || self.pending.is_empty() || now >= end {
                return Ok(n);
            }
            let next = self.deadlines.front().map_or(end, |d| d.1.min(end));
            let wait = next.saturating_duration_since(now);
            self.pump(Some(wait.max(Duration::from_micros(1))))?;
        }
    }

    /// Waits for the completion of `txid` (others that come meanwhile are kept for
    /// [`poll_completions`](Self::poll_completions)).
    fn wait_for(&mut self, txid: u32) -> Result<Reply> {
        self.flush()?;
        loop {
            if let Some(i) = self.done.iter().position(|c| c.txid == txid) {
                let c = self.done.remove(i).expect("found above");
                return c.result;
            }
            let Some(p) = self.pending.get(&txid) else {
                return Err(Error::Protocol("request neither waiting nor answered"));
            };
            let now = Instant::now();
            let left = p.deadline.saturating_duration_since(now);
            if left.is_zero() {
                self.expire(now);
                continue;
            }
            self.pump(Some(left))?;
        }
    }

    // ------------------------------------------------------------ blocking calls

    fn expect_ok(&mut self, txid: u32) -> Result<()> {
        match self.wait_for(txid)? {
            Reply::Ok => Ok(()),
            _ => Err(Error::Protocol("unexpected reply")),
        }
    }

    /// The instance's table count and flow quota (and, with a version-2 device, turns on
    /// batching: later requests share frames).
    pub fn hello(&mut self) -> Result<(u8, u32)> {
        self.info().map(|i| (i.tables, i.max_flows))
    }

    /// The instance's tables, quotas, what it holds and its memory (and, with a version-2
    /// device, turns on batching: later requests share frames).
    pub fn info(&mut self) -> Result<InstanceInfo> {
        let txid = self.submit_hello()?;
        match self.wait_for(txid)? {
            Reply::Hello {
                tables,
                max_flows,
                usage,
                ..
            } => Ok(InstanceInfo {
                tables,
                max_flows,
                usage,
            }),
            _ => Err(Error::Protocol("unexpected reply to HELLO")),
        }
    }

    /// Installs (or replaces) a flow.
    pub fn add_flow(&mut self, f: FlowSpec) -> Result<()> {
        let txid = self.submit_add_flow(f)?;
        self.expect_ok(txid)
    }

    /// Removes the flows with `cookie`.
    pub fn delete_flows(&mut self, cookie: u64) -> Result<()> {
        let txid = self.submit_delete_flows(cookie)?;
        self.expect_ok(txid)
    }

    /// Counters of the flows with `cookie`.
    pub fn stats(&mut self, cookie: u64) -> Result<FlowStats> {
        let txid = self.submit_stats(cookie)?;
        match self.wait_for(txid)? {
            Reply::Stats(s) => Ok(s),
            _ => Err(Error::Protocol("unexpected reply to FLOW_STATS")),
        }
    }

    /// Every installed flow (fetched page by page, up to the total the first page reports).
    pub fn list(&mut self) -> Result<Vec<FlowSummary>> {
        let mut all = Vec::new();
        let mut limit = None;
        loop {
            let asked = all.len() as u32;
            let txid = self.submit_list_page(asked)?;
            match self.wait_for(txid)? {
                Reply::ListPage {
                    total,
                    start,
                    entries,
                } => {
                    if start != asked {
                        return Err(Error::Protocol("FLOW_LIST reply for another page"));
                    }
                    if self.max_flows.is_some_and(|m| total > m) {
                        return Err(Error::Protocol(
                            "FLOW_LIST total above the flow quota HELLO reported",
                        ));
                    }
                    // The first page's total bounds the walk: a device cannot keep it going
                    // (or make this side allocate) by raising it page after page.
                    let limit = *limit.get_or_insert(total) as usize;
                    let room = limit.saturating_sub(all.len());
                    let done = entries.is_empty() || entries.len() >= room;
                    all.extend(entries.into_iter().take(room));
                    if done {
                        return Ok(all);
                    }
                }
                _ => return Err(Error::Protocol("unexpected reply to FLOW_LIST")),
            }
        }
    }

    /// Installs a select group.
    pub fn add_group(&mut self, id: u32, buckets: Vec<Bucket>) -> Result<()> {
        let txid = self.submit_add_group(id, buckets)?;
        self.expect_ok(txid)
    }

    /// Installs an ESP SA.
    pub fn add_sa(&mut self, sa: SaSpec) -> Result<()> {
        let txid = self.submit_add_sa(sa)?;
        self.expect_ok(txid)
    }

    /// Sends a frame out of `port` (or through the tables as if from `port`) now. No reply
    /// unless it fails; a failure shows up as a [`Completion`] of
    /// [`poll_completions`](Self::poll_completions).
    pub fn packet_out(&mut self, port: PortId, through_tables: bool, frame: &[u8]) -> Result<()> {
        self.submit_packet_out(port, through_tables, frame)?;
        self.flush()
    }

    /// The next event, waiting at most `timeout` (replies that come meanwhile are kept for
    /// their requests). Sends what is queued first.
    pub fn next_event(&mut self, timeout: Duration) -> Result<Option<Event>> {
        self.flush()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.events.pop_front() {
                return Ok(Some(e));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let got = self.pump(Some(left))?;
            // Past the deadline, frames that are no event (replies, garbage) do not keep the
            // caller here, however fast they come.
            if left.is_zero() && (!got || self.events.is_empty()) {
                return Ok(self.events.pop_front());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Against a frame-level fake peer (`net::frame_peer`; the real backend is in
    //! `guest-lib/tests/flow_pipeline.rs`): it records what the table sends and answers what
    //! the test tells it, in any order.
    use dpacc_spec::fastpath::flow::{Action, Match};
    use dpacc_spec::fastpath::proto::ErrorCode;

    use super::*;

    use crate::net::frame_peer::{FramePeer as Peer, VNF_MAC as MAC};

    impl Peer {
        /// The messages of every frame sent so far (taken), and whether each frame was a
        /// BATCH.
        fn take_sent(&self) -> Vec<(bool, Vec<Message>)> {
            let frames = std::mem::take(&mut *self.sent.lock().unwrap());
            frames
                .iter()
                .map(|f| {
                    let (_, _, p) = proto::parse_frame(f).unwrap();
                    match proto::framed(p).unwrap() {
                        Framed::One(p) => (false, vec![Message::decode(p).unwrap()]),
                        Framed::Batch { messages, .. } => (
                            true,
                            messages
                                .map(|m| Message::decode(m.unwrap()).unwrap())
                                .collect(),
                        ),
                    }
                })
                .collect()
        }

        /// A reply BATCH with these messages.
        fn answer_batch(&self, msgs: &[Message]) {
            let mut p = Vec::new();
            let s = proto::begin_batch(&mut p, 0);
            for m in msgs {
                m.encode(&mut p);
            }
            proto::end_batch(&mut p, s);
            self.answer(p);
        }

        /// Answers HELLO as a version-1 device (no capabilities) or a version-2 one.
        fn answer_hello(&self, txid: u32, v2: bool) {
            let mut p = Vec::new();
            Message {
                txid,
                body: Body::HelloReply {
                    tables: 8,
                    max_flows: 100,
                    usage: None,
                },
            }
            .encode(&mut p);
            if v2 {
                let caps = Caps {
                    version: 2,
                    max_batch: 256,
                    max_frame: 9216,
                };
                assert!(caps.append_to_hello_reply(&mut p));
            }
            self.answer(p);
        }
    }

    fn flow(cookie: u64) -> FlowSpec {
        FlowSpec {
            table: 0,
            priority: 10,
            cookie,
            m: Match {
                dport: Some(cookie as u16),
                ..Match::default()
            },
            actions: vec![Action::Output(PortId(1))],
            idle_timeout_ns: 0,
            hard_timeout_ns: 0,
            notify_expiry: false,
        }
    }

    fn packet_in(n: u8) -> Body {
        Body::PacketIn {
            in_port: PortId(1),
            table: 0,
            frame: vec![n; 60],
        }
    }

    /// HELLO through the fake peer, answered as `v2` says.
    fn connect(v2: bool) -> (FlowTable<Peer>, Peer) {
        let peer = Peer::default();
        let mut ft = FlowTable::new(peer.clone(), MAC);
        let txid = ft.submit_hello().unwrap();
        let sent = peer.take_sent();
        assert_eq!(sent.len(), 1);
        let hello = &peer_payloads(&sent)[0];
        assert_eq!(hello.body, Body::Hello);
        peer.answer_hello(txid, v2);
        let mut c = Vec::new();
        ft.wait_completions(&mut c, Duration::from_secs(1)).unwrap();
        assert!(
            matches!(&c[..], [Completion { result: Ok(Reply::Hello { caps, .. }), .. }] if caps.is_some() == v2),
            "{c:?}"
        );
        assert_eq!(ft.version(), if v2 { 2 } else { 1 });
        (ft, peer)
    }

    fn peer_payloads(sent: &[(bool, Vec<Message>)]) -> Vec<Message> {
        sent.iter().flat_map(|(_, m)| m.iter().cloned()).collect()
    }

    /// 64 requests in flight, answered in reverse order with events in between (v1 frames):
    /// each completion carries its own request's answer; the events wait, in order.
    #[test]
    fn answers_out_of_order_are_matched_by_txid_and_events_are_kept() {
        let (mut ft, peer) = connect(false);
        let mut txids = Vec::new();
        for i in 0..64u64 {
            txids.push(if i % 8 == 7 {
                (ft.submit_stats(i).unwrap(), i)
            } else {
                (ft.submit_add_flow(flow(i)).unwrap(), i)
            });
        }
        assert_eq!(ft.in_flight(), 64);
        ft.flush().unwrap();
        let sent = peer.take_sent();
        assert_eq!(sent.len(), 64, "version 1: one request per frame");
        assert!(sent.iter().all(|(batch, _)| !batch));
        let msgs = peer_payloads(&sent);
        for (k, m) in msgs.iter().enumerate().rev() {
            let cookie = txids[k].1;
            assert_eq!(m.txid, txids[k].0);
            let body = match &m.body {
                Body::FlowStatsRequest { cookie } => Body::FlowStatsReply {
                    cookie: *cookie,
                    stats: FlowStats {
                        packets: *cookie,
                        bytes: 0,
                    },
                },
                Body::FlowAdd(_) if cookie % 5 == 0 => Body::Error {
                    code: ErrorCode::Quota,
                    msg: format!("flow quota exceeded ({cookie} flows)"),
                },
                Body::FlowAdd(_) => Body::Ok,
                other => panic!("{other:?}"),
            };
            peer.answer_msg(m.txid, body);
            if k % 16 == 0 {
                peer.answer_msg(0, packet_in(k as u8));
            }
        }
        let mut c = Vec::new();
        while c.len() < 64 {
            ft.wait_completions(&mut c, Duration::from_secs(1)).unwrap();
        }
        assert_eq!(ft.in_flight(), 0);
        // Reverse order in, each matched to its own request.
        assert_eq!(c[0].txid, txids[63].0);
        for comp in &c {
            let (_, cookie) = *txids.iter().find(|t| t.0 == comp.txid).unwrap();
            match (&comp.request, &comp.result) {
                (Request::FlowStats, Ok(Reply::Stats(s))) => assert_eq!(s.packets, cookie),
                (Request::FlowAdd, Ok(Reply::Ok)) => assert_ne!(cookie % 5, 0),
                (Request::FlowAdd, Err(Error::FlowRejected { code, msg })) => {
                    assert_eq!(cookie % 5, 0);
                    assert_eq!(*code, ErrorCode::Quota);
                    assert_eq!(*msg, format!("flow quota exceeded ({cookie} flows)"));
                }
                other => panic!("{other:?} for cookie {cookie}"),
            }
        }
        let ev: Vec<_> = std::iter::from_fn(|| ft.next_event(Duration::ZERO).unwrap()).collect();
        let want: Vec<_> = [48u8, 32, 16, 0]
            .iter()
            .map(|&n| Event::PacketIn {
                in_port: PortId(1),
                table: 0,
                frame: vec![n; 60],
            })
            .collect();
        assert_eq!(ev, want);
    }

    /// With a version-2 device, requests share BATCH frames, and a reply BATCH in another
    /// order completes each of them; a lone request still goes as a plain message.
    #[test]
    fn a_version_2_device_gets_batches_and_answers_in_batches() {
        let (mut ft, peer) = connect(true);
        ft.set_max_frame(600);
        let mut txids = Vec::new();
        for i in 0..40u64 {
            txids.push(ft.submit_add_flow(flow(i)).unwrap());
        }
        ft.submit_packet_out(PortId(2), false, &[9u8; 60]).unwrap();
        ft.flush().unwrap();
        let sent = peer.take_sent();
        assert!(sent.len() > 1 && sent.len() < 10, "{} frames", sent.len());
        assert!(sent.iter().all(|(batch, m)| *batch && m.len() > 1));
        assert!(std::mem::take(&mut *peer.sent.lock().unwrap()).is_empty());
        let msgs = peer_payloads(&sent);
        assert_eq!(msgs.len(), 41);
        assert_eq!(
            msgs.iter().map(|m| m.txid).take(40).collect::<Vec<_>>(),
            txids
        );
        // The PACKET_OUT failed; flows answered in two reply batches, odd ones first.
        let po = msgs[40].txid;
        let odd: Vec<_> = txids
            .iter()
            .filter(|t| *t % 2 == 1)
            .map(|&txid| Message {
                txid,
                body: Body::Ok,
            })
            .chain([Message {
                txid: po,
                body: Body::Error {
                    code: ErrorCode::BadActions,
                    msg: "packet-out to a port this instance does not have".into(),
                },
            }])
            .collect();
        let even: Vec<_> = txids
            .iter()
            .filter(|t| *t % 2 == 0)
            .map(|&txid| Message {
                txid,
                body: Body::Ok,
            })
            .collect();
        peer.answer_batch(&odd);
        peer.answer_batch(&even);
        let mut c = Vec::new();
        while c.len() < 41 {
            ft.wait_completions(&mut c, Duration::from_secs(1)).unwrap();
        }
        let bad: Vec<_> = c.iter().filter(|c| c.result.is_err()).collect();
        assert_eq!(bad.len(), 1);
        assert_eq!((bad[0].txid, bad[0].request), (po, Request::PacketOut));
        assert!(c
            .iter()
            .filter(|c| c.request == Request::FlowAdd)
            .all(|c| matches!(c.result, Ok(Reply::Ok))));
        // One request alone: a plain message, not a batch of one.
        ft.submit_delete_flows(3).unwrap();
        ft.flush().unwrap();
        let sent = peer.take_sent();
        assert!(matches!(&sent[..], [(false, m)] if m.len() == 1));
    }

    /// A lost answer: the request completes with an error naming it (type and txid), the
    /// others are not disturbed; a blocking call says the same.
    #[test]
    fn a_lost_answer_times_out_naming_the_request() {
        let (mut ft, peer) = connect(true);
        ft.timeout = Duration::from_millis(100);
        let lost = ft.submit_add_flow(flow(1)).unwrap();
        let ok = ft.submit_stats(1).unwrap();
        ft.flush().unwrap();
        peer.answer_msg(
            ok,
            Body::FlowStatsReply {
                cookie: 1,
                stats: FlowStats::default(),
            },
        );
        let mut c = Vec::new();
        ft.wait_completions(&mut c, Duration::from_secs(1)).unwrap();
        assert!(
            matches!(&c[..], [Completion { txid, result: Ok(Reply::Stats(_)), .. }] if *txid == ok)
        );
        c.clear();
        let t = Instant::now();
        ft.wait_completions(&mut c, Duration::from_secs(1)).unwrap();
        assert!(t.elapsed() < Duration::from_millis(500));
        assert_eq!(c.len(), 1);
        assert_eq!((c[0].txid, c[0].request), (lost, Request::FlowAdd));
        let e = c.remove(0).result.unwrap_err();
        assert!(matches!(e, Error::NoReply { request: "FLOW_ADD", txid, .. } if txid == lost));
        assert_eq!(
            e.to_string(),
            format!("no reply to FLOW_ADD (txid {lost}) within 100ms")
        );
        // A late answer is counted, not mistaken for another request's.
        peer.answer_msg(lost, Body::Ok);
        let e = ft.delete_flows(5).unwrap_err();
        assert!(
            e.to_string().starts_with("no reply to FLOW_DELETE (txid "),
            "{e}"
        );
        assert_eq!(ft.late_replies(), 1);
        assert_eq!(ft.in_flight(), 0);
    }

    /// Events beyond the queue's limit drop the oldest, counted; replies still get through.
    #[test]
    fn the_event_queue_is_bounded() {
        let (mut ft, peer) = connect(false);
        ft.set_max_events(2);
        let txid = ft.submit_delete_flows(1).unwrap();
        for n in 0..5 {
            peer.answer_msg(0, packet_in(n));
        }
        peer.answer_msg(txid, Body::Ok);
        let mut c = Vec::new();
        ft.wait_completions(&mut c, Duration::from_secs(1)).unwrap();
        assert!(matches!(c[0].result, Ok(Reply::Ok)));
        assert_eq!(ft.events_dropped(), 3);
        for n in [3, 4] {
            assert_eq!(
                ft.next_event(Duration::ZERO).unwrap(),
                Some(Event::PacketIn {
                    in_port: PortId(1),
                    table: 0,
                    frame: vec![n; 60]
                })
            );
        }
    }

    /// Past `max_in_flight`, submissions are refused (nothing is queued).
    #[test]
    fn in_flight_requests_are_bounded() {
        let (mut ft, peer) = connect(false);
        ft.set_max_in_flight(3);
        for i in 0..3 {
            ft.submit_add_flow(flow(i)).unwrap();
        }
        assert!(matches!(ft.submit_add_flow(flow(9)), Err(Error::QueueFull)));
        ft.flush().unwrap();
        assert_eq!(peer.take_sent().len(), 3);
    }
}
