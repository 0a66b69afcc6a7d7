//! [`SwFlowProcessor`] behind the fast-path contract: the control protocol on top of the typed
//! core, and the [`SwFastPath`] driver that creates instances.

use std::sync::Arc;

use dpacc_spec::fastpath::policy::{Policy, PolicyCounters, PolicyError};
use dpacc_spec::fastpath::proto::{self, Body, ErrorCode, Message, SaDirection};
use dpacc_spec::fastpath::{
    Emit, FastPathDriver, FlowLane, FlowProcessor, InstanceConfig, InstanceError, PacketBuf,
    PortId, ProcessorCounters, Usage, Verdict,
};
use dpacc_spec::CryptoDriver;
use zeroize::Zeroizing;

use super::esp::{SaConfig, SaDir};
use super::{Action, FlowError, SwInstance, SwLane, TABLES};

/// The software fast-path driver.
pub struct SwFastPath {
    crypto: Arc<dyn CryptoDriver>,
}

impl SwFastPath {
    /// Instances do ESP on `crypto`.
    pub fn new(crypto: Arc<dyn CryptoDriver>) -> Self {
        Self { crypto }
    }
}

impl FastPathDriver for SwFastPath {
    fn name(&self) -> &str {
        "sw"
    }

    fn create_instance(
        &self,
        cfg: &InstanceConfig,
    ) -> Result<Arc<dyn FlowProcessor>, InstanceError> {
        let mut p = SwInstance::with_quotas(self.crypto.clone(), cfg.quotas, cfg.lanes)
            .map_err(|e| InstanceError::Config(e.to_string()))?;
        p.set_uplinks(cfg.uplinks);
        Ok(Arc::new(SwShared(p)))
    }
}

fn code(e: &FlowError) -> ErrorCode {
    match e {
        FlowError::Quota(..) => ErrorCode::Quota,
        FlowError::BadTable(_) => ErrorCode::BadTable,
        FlowError::BadActions(_) => ErrorCode::BadActions,
        FlowError::NotFound(_) => ErrorCode::NotFound,
        FlowError::Crypto(_) => ErrorCode::Crypto,
    }
}

fn reply(out: &mut Vec<Emit>, txid: u32, body: Body) {
    let mut p = Vec::new();
    Message { txid, body }.encode(&mut p);
    out.push(Emit::Control(p));
}

fn error(out: &mut Vec<Emit>, txid: u32, code: ErrorCode, msg: impl Into<String>) {
    reply(
        out,
        txid,
        Body::Error {
            code,
            msg: msg.into(),
        },
    );
}

/// An instance behind the fast-path contract.
struct SwShared(Arc<SwInstance>);

impl SwInstance {
    fn check_ports(&self, actions: &[Action]) -> Result<(), FlowError> {
        for a in actions {
            if let Action::Output(PortId(p)) = a {
                if *p > self.uplinks {
                    return Err(FlowError::BadActions(
                        "output to a port this instance does not have",
                    ));
                }
            }
        }
        Ok(())
    }

    fn handle(
        &self,
        now: u64,
        txid: u32,
        body: Body,
        out: &mut Vec<Emit>,
    ) -> Result<(), FlowError> {
        match body {
            Body::Hello => reply(
                out,
                txid,
                Body::HelloReply {
                    tables: TABLES as u8,
                    max_flows: u32::try_from(self.max_flows()).unwrap_or(u32::MAX),
                    usage: Some(self.usage()),
                },
            ),
            Body::FlowAdd(spec) => {
                self.check_ports(&spec.actions)?;
                self.add_flow(spec, now)?;
                reply(out, txid, Body::Ok);
            }
            Body::FlowDelete { cookie } => {
                if self.delete_flows(cookie).is_empty() {
                    return Err(FlowError::NotFound(format!("flow with cookie {cookie}")));
                }
                reply(out, txid, Body::Ok);
            }
            Body::FlowStatsRequest { cookie } => {
                let stats = self
                    .flow_stats(cookie)
                    .ok_or_else(|| FlowError::NotFound(format!("flow with cookie {cookie}")))?;
                reply(out, txid, Body::FlowStatsReply { cookie, stats });
            }
            Body::FlowListRequest { start } => {
                let entries = self.list(start as usize, proto::LIST_PAGE);
                reply(
                    out,
                    txid,
                    Body::FlowListReply {
                        total: self.flow_count() as u32,
                        start,
                        entries,
                    },
                );
            }
            Body::GroupAdd { id, buckets } => {
                for b in &buckets {
                    self.check_ports(&b.actions)?;
                }
                self.add_group(id, buckets)?;
                reply(out, txid, Body::Ok);
            }
            Body::SaAdd(s) => {
                self.add_sa(SaConfig {
                    spi: s.spi,
                    key: Zeroizing::new(s.key.clone()),
                    salt: s.salt,
                    dir: match s.dir {
                        SaDirection::Outbound { src, dst } => SaDir::Outbound { src, dst },
                        SaDirection::Inbound => SaDir::Inbound,
                    },
                })?;
                reply(out, txid, Body::Ok);
            }
            Body::PacketOut {
                port,
                through_tables,
                frame,
            } => {
                if port.0 > self.uplinks {
                    return Err(FlowError::BadActions(
                        "packet-out to a port this instance does not have",
                    ));
                }
                if !through_tables {
                    if self.control_egress_allows(now, port, &frame) {
                        out.push(Emit::Frame { port, frame });
                    }
                    return Ok(());
                }
                let mut b = [PacketBuf::new()];
                if !b[0].load(&frame, port) {
                    return Err(FlowError::BadActions("packet-out frame too long"));
                }
                let mut v = [Verdict::Drop];
                self.process_control(now, &mut b, &mut v);
                if let Verdict::Output(p) = v[0] {
                    out.push(Emit::Frame {
                        port: p,
                        frame: b[0].frame().to_vec(),
                    });
                }
            }
            other => {
                error(
                    out,
                    txid,
                    ErrorCode::Unsupported,
                    format!("a vNF cannot send {}", kind(&other)),
                );
            }
        }
        Ok(())
    }
}

fn kind(b: &Body) -> &'static str {
    match b {
        Body::HelloReply { .. } => "HELLO_REPLY",
        Body::Ok => "OK",
        Body::Error { .. } => "ERROR",
        Body::FlowStatsReply { .. } => "FLOW_STATS_REPLY",
        Body::PacketIn { .. } => "PACKET_IN",
        Body::FlowExpired(_) => "FLOW_EXPIRED",
        Body::FlowListReply { .. } => "FLOW_LIST_REPLY",
        _ => "this message",
    }
}

impl FlowProcessor for SwShared {
    fn lane(&self, index: usize) -> Option<Box<dyn FlowLane>> {
        match self.0.lane(index) {
            Ok(Some(l)) => Some(Box::new(l)),
            _ => None,
        }
    }

    fn control(&self, now_ns: u64, request: &[u8], out: &mut Vec<Emit>) {
        let txid = request
            .get(4..8)
            .map_or(0, |b| u32::from_be_bytes(b.try_into().expect("4 bytes")));
        match Message::decode(request) {
            Err(e) => error(out, txid, e.code(), e.to_string()),
            Ok(m) => {
                if let Err(e) = self.0.handle(now_ns, m.txid, m.body, out) {
                    error(out, m.txid, code(&e), e.to_string());
                }
            }
        }
    }

    fn expire(&self, now_ns: u64, out: &mut Vec<Emit>) {
        let mut ev = Vec::new();
        self.0.expire(now_ns, &mut ev);
        for e in ev {
            reply(out, 0, Body::FlowExpired(e));
        }
    }

    fn flow_count(&self) -> usize {
        self.0.flow_count()
    }

    fn set_policy(&self, policy: Option<Policy>) -> Result<(), PolicyError> {
        self.0.set_policy(policy)
    }

    fn policy(&self) -> Option<(Policy, PolicyCounters)> {
        self.0.policy()
    }

    fn counters(&self) -> ProcessorCounters {
        let s = self.0.stats();
        ProcessorCounters {
            misses: s.misses,
            drops: s.drops,
            policy_drops: s.policy_drops,
            cache_hits: s.emc_hits,
        }
    }

    fn flows(&self, start: usize, max: usize) -> Vec<dpacc_spec::fastpath::flow::FlowSummary> {
        self.0.list(start, max)
    }

    fn usage(&self) -> Usage {
        self.0.usage()
    }

    fn clear(&self) {
        self.0.clear();
    }
}

impl FlowLane for SwLane {
    fn process(&mut self, now_ns: u64, pkts: &mut [PacketBuf], verdicts: &mut [Verdict]) {
        SwLane::process(self, now_ns, pkts, verdicts);
    }

    fn enable_finish(&mut self) -> bool {
        SwLane::enable_finish(self)
    }

    fn finish(&mut self, index: usize, frame: &[dpacc_spec::Seg<'_>]) -> Option<usize> {
        SwLane::finish(self, index, frame)
    }

    fn finish_into(
        &mut self,
        index: usize,
        pkt: &PacketBuf,
        frame: &[dpacc_spec::Seg<'_>],
    ) -> Option<usize> {
        SwLane::finish_into(self, index, pkt, frame)
    }

    fn finish_here(&mut self, index: usize, pkt: &mut PacketBuf) -> bool {
        SwLane::finish_here(self, index, pkt)
    }

    fn end_batch(&mut self) {
        SwLane::end_batch(self);
    }
}
