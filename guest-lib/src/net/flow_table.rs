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
//! for [`FlowTable::next_event`], at most [`FlowTable::max_events`]; past that, new events
//! are dropped and counted ([`FlowTable::dropped_events`]), as a NIC drops frames when its
//! ring is full.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use dpacc_spec::fastpath::flow::{Bucket, Expired, FlowSpec, FlowStats, FlowSummary};
use dpacc_spec::fastpath::proto::{self, Body, Caps, Framed, Message, SaSpec, BACKEND_MAC};
use dpacc_spec::fastpath::PortId;

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

/// The vNF's side of the control protocol: requests with transaction ids (blocking or
/// pipelined), typed replies and errors, events queued while waiting for replies.
pub struct FlowTable<T: FrameIo> {
    io: T,
    mac: [u8; 6],
    txid: u32,
    events: VecDeque<Event>,
    max_events: usize,
    dropped_events: u64,
    late_replies: u64,
    buf: Vec<u8>,
    /// How long to wait for a reply.
    pub timeout: Duration,
    pending: HashMap<u32, Pending>,
    /// (txid, deadline) in submission order (answered ones are skipped when reached).
    deadlines: VecDeque<(u32, Instant)>,
    /// Completions not handed out yet.
    done: VecDeque<Completion>,
    packet_outs: VecDeque<u32>,
    max_in_flight: usize,
    /// Highest version to ask for in HELLO (2: batches).
    max_version: u8,
    /// What the device offered (batching on when Some).
    caps: Option<Caps>,
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
            max_events: 65536,
            dropped_events: 0,
            late_replies: 0,
            buf: vec![0u8; 16384],
            timeout: Duration::from_secs(2),
            pending: HashMap::new(),
            deadlines: VecDeque::new(),
            done: VecDeque::new(),
            packet_outs: VecDeque::new(),
            max_in_flight: 1024,
            max_version: proto::VERSION_2,
            caps: None,
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

    /// Most events kept for [`next_event`](Self::next_event) (default 65536).
    pub fn set_max_events(&mut self, n: usize) {
        self.max_events = n.max(1);
    }

    /// The queue limit of [`set_max_events`](Self::set_max_events).
    pub fn max_events(&self) -> usize {
        self.max_events
    }

    /// Events dropped because the queue was full.
    pub fn dropped_events(&self) -> u64 {
        self.dropped_events
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
            self.deadlines.push_back((txid, deadline));
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
        let Ok(m) = Message::decode(payload) else {
            return;
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
            self.dropped_events += 1;
        } else {
            self.events.push_back(event);
        }
    }

    fn complete(&mut self, txid: u32, body: Body, payload: &[u8]) {
        let request = match self.pending.remove(&txid) {
            Some(p) => p.request,
            None if matches!(body, Body::Error { .. }) && self.packet_outs.contains(&txid) => {
                Request::PacketOut
            }
            None => {
                self.late_replies += 1;
                return;
            }
        };
        let result = match (request, body) {
            (_, Body::Error { code, msg }) => Err(Error::FlowRejected { code, msg }),
            (Request::Hello, Body::HelloReply { tables, max_flows }) => {
                let caps = Caps::of_hello_reply(payload)
                    .filter(|c| c.version >= proto::VERSION_2 && c.max_batch > 0);
                self.caps = caps.filter(|_| self.max_version >= proto::VERSION_2);
                Ok(Reply::Hello {
                    tables,
                    max_flows,
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
        self.expire(Instant::now());
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
        let txid = self.submit_hello()?;
        match self.wait_for(txid)? {
            Reply::Hello {
                tables, max_flows, ..
            } => Ok((tables, max_flows)),
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

    /// Every installed flow (fetched page by page).
    pub fn list(&mut self) -> Result<Vec<FlowSummary>> {
        let mut all = Vec::new();
        loop {
            let txid = self.submit_list_page(all.len() as u32)?;
            match self.wait_for(txid)? {
                Reply::ListPage { total, entries, .. } => {
                    let done = entries.is_empty() || all.len() + entries.len() >= total as usize;
                    all.extend(entries);
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
            if !self.pump(Some(left))? && left.is_zero() {
                return Ok(None);
            }
        }
    }
}
