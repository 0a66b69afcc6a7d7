//! [`FlowTable`]: a vNF's typed handle on its flow-processor instance, over any [`FrameIo`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use dpacc_spec::fastpath::flow::{Bucket, Expired, FlowSpec, FlowStats, FlowSummary};
use dpacc_spec::fastpath::proto::{self, Body, Message, SaSpec, BACKEND_MAC};
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

/// The vNF's side of the control protocol: requests with transaction ids, typed replies and
/// errors, events queued (at most [`MAX_QUEUED_EVENTS`]) while waiting for replies.
pub struct FlowTable<T: FrameIo> {
    io: T,
    mac: [u8; 6],
    txid: u32,
    events: VecDeque<Event>,
    events_dropped: u64,
    buf: Vec<u8>,
    /// How long to wait for a reply.
    pub timeout: Duration,
}

impl<T: FrameIo> FlowTable<T> {
    /// Control over `io`, sending from `mac` (the vNF port's MAC address).
    pub fn new(io: T, mac: [u8; 6]) -> Self {
        Self {
            io,
            mac,
            txid: 0,
            events: VecDeque::new(),
            events_dropped: 0,
            buf: vec![0u8; 16384],
            timeout: Duration::from_secs(2),
        }
    }

    /// The transport, e.g. to send data frames.
    pub fn io(&mut self) -> &mut T {
        &mut self.io
    }

    /// Events dropped because [`MAX_QUEUED_EVENTS`] were already waiting.
    pub fn events_dropped(&self) -> u64 {
        self.events_dropped
    }

    fn queue_event(&mut self, e: Event) {
        if self.events.len() >= MAX_QUEUED_EVENTS {
            self.events.pop_front();
            self.events_dropped += 1;
        }
        self.events.push_back(e);
    }

    fn request(&mut self, body: Body) -> Result<Body> {
        self.txid = self.txid.wrapping_add(1).max(1);
        let txid = self.txid;
        let mut frame = Vec::new();
        proto::encode_frame(BACKEND_MAC, self.mac, &Message { txid, body }, &mut frame);
        self.io.send(&frame)?;
        let deadline = Instant::now() + self.timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout);
            }
            let Some(n) = self.io.recv(&mut self.buf, Some(left))? else {
                return Err(Error::Timeout);
            };
            let Some((_, _, payload)) = proto::parse_frame(&self.buf[..n]) else {
                continue; // not a control frame
            };
            let Ok(m) = Message::decode(payload) else {
                continue;
            };
            match m.body {
                Body::PacketIn {
                    in_port,
                    table,
                    frame,
                } => self.queue_event(Event::PacketIn {
                    in_port,
                    table,
                    frame,
                }),
                Body::FlowExpired(e) => self.queue_event(Event::FlowExpired(e)),
                _ if m.txid != txid => {} // a late reply to an earlier request
                Body::Error { code, msg } => return Err(Error::FlowRejected { code, msg }),
                body => return Ok(body),
            }
        }
    }

    fn expect_ok(&mut self, body: Body) -> Result<()> {
        match self.request(body)? {
            Body::Ok => Ok(()),
            _ => Err(Error::Protocol("unexpected reply")),
        }
    }

    /// The instance's table count and flow quota.
    pub fn hello(&mut self) -> Result<(u8, u32)> {
        self.info().map(|i| (i.tables, i.max_flows))
    }

    /// The instance's tables, quotas, what it holds and its memory.
    pub fn info(&mut self) -> Result<InstanceInfo> {
        match self.request(Body::Hello)? {
            Body::HelloReply {
                tables,
                max_flows,
                usage,
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
        self.expect_ok(Body::FlowAdd(f))
    }

    /// Removes the flows with `cookie`.
    pub fn delete_flows(&mut self, cookie: u64) -> Result<()> {
        self.expect_ok(Body::FlowDelete { cookie })
    }

    /// Counters of the flows with `cookie`.
    pub fn stats(&mut self, cookie: u64) -> Result<FlowStats> {
        match self.request(Body::FlowStatsRequest { cookie })? {
            Body::FlowStatsReply { stats, .. } => Ok(stats),
            _ => Err(Error::Protocol("unexpected reply to FLOW_STATS")),
        }
    }

    /// Every installed flow (fetched page by page).
    pub fn list(&mut self) -> Result<Vec<FlowSummary>> {
        let mut all = Vec::new();
        loop {
            match self.request(Body::FlowListRequest {
                start: all.len() as u32,
            })? {
                Body::FlowListReply { total, entries, .. } => {
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
        self.expect_ok(Body::GroupAdd { id, buckets })
    }

    /// Installs an ESP SA.
    pub fn add_sa(&mut self, sa: SaSpec) -> Result<()> {
        self.expect_ok(Body::SaAdd(sa))
    }

    /// Sends a frame out of `port` (or through the tables as if from `port`). No reply unless
    /// it fails; a failure shows up as an error on a later request.
    pub fn packet_out(&mut self, port: PortId, through_tables: bool, frame: &[u8]) -> Result<()> {
        self.txid = self.txid.wrapping_add(1).max(1);
        let mut f = Vec::new();
        let body = Body::PacketOut {
            port,
            through_tables,
            frame: frame.to_vec(),
        };
        proto::encode_frame(
            BACKEND_MAC,
            self.mac,
            &Message {
                txid: self.txid,
                body,
            },
            &mut f,
        );
        self.io.send(&f)
    }

    /// The next event, waiting at most `timeout`.
    pub fn next_event(&mut self, timeout: Duration) -> Result<Option<Event>> {
        if let Some(e) = self.events.pop_front() {
            return Ok(Some(e));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(n) = self.io.recv(&mut self.buf, Some(left))? else {
                return Ok(None);
            };
            let Some((_, _, payload)) = proto::parse_frame(&self.buf[..n]) else {
                continue;
            };
            match Message::decode(payload).map(|m| m.body) {
                Ok(Body::PacketIn {
                    in_port,
                    table,
                    frame,
                }) => {
                    return Ok(Some(Event::PacketIn {
                        in_port,
                        table,
                        frame,
                    }))
                }
                Ok(Body::FlowExpired(e)) => return Ok(Some(Event::FlowExpired(e))),
                _ => {}
            }
            if left.is_zero() {
                return Ok(None);
            }
        }
    }
}
