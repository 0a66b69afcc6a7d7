//! `GET /metrics`: the daemon's counters in the Prometheus text exposition format (0.0.4),
//! encoded by the `prometheus-client` crate. Every scrape reads the counters the workers
//! already keep (relaxed loads of lines the workers publish; the flow processor's per-lane
//! counters) into a fresh registry: a worker never waits for a scrape.
//!
//! Names: `dpacc_vnf_*` per vNF (labels `vnf`, and `port`, `queue`, `reason`, `direction`,
//! `rule` where they apply), `dpacc_crypto_*` for the crypto device (`dpacc_crypto_session_*`
//! per open session: labels `connection`, `session`, `alg`, `op`, `fallback`); counters end
//! in `_total`.

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::api::vnfs::VnfEntry;
use crate::crypto::CryptoView;

/// The `Content-Type` of what [`render_net`] and [`render_crypto`] return.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

type Labels = Vec<(&'static str, String)>;

/// Families registered on first use, in a fixed order.
struct Families {
    reg: Registry,
}

impl Families {
    fn new() -> Self {
        Self {
            reg: Registry::default(),
        }
    }

    fn counter(&mut self, name: &str, help: &str) -> Family<Labels, Counter> {
        let f = Family::<Labels, Counter>::default();
        self.reg.register(name, help, f.clone());
        f
    }

    fn gauge(&mut self, name: &str, help: &str) -> Family<Labels, Gauge> {
        let f = Family::<Labels, Gauge>::default();
        self.reg.register(name, help, f.clone());
        f
    }

    fn encode(&self) -> String {
        let mut s = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_text::encode(&mut s, &self.reg);
        s
    }
}

fn set(c: &Family<Labels, Counter>, l: Labels, v: u64) {
    c.get_or_create(&l).inc_by(v);
}

fn gauge(g: &Family<Labels, Gauge>, l: Labels, v: u64) {
    g.get_or_create(&l)
        .set(i64::try_from(v).unwrap_or(i64::MAX));
}

/// The metrics of a net daemon's vNFs.
pub fn render_net(vnfs: &[VnfEntry]) -> String {
    let mut f = Families::new();
    let count = f.gauge("dpacc_vnfs", "vNF instances served by this daemon");
    gauge(&count, vec![], vnfs.len() as u64);
    let rx_p = f.counter(
        "dpacc_vnf_port_rx_packets",
        "Frames received from a port (its TX ring or TAP), per queue",
    );
    let rx_b = f.counter(
        "dpacc_vnf_port_rx_bytes",
        "Bytes of the frames received from a port",
    );
    let tx_p = f.counter(
        "dpacc_vnf_port_tx_packets",
        "Frames sent out of a port (its RX ring or TAP), per queue",
    );
    let tx_b = f.counter(
        "dpacc_vnf_port_tx_bytes",
        "Bytes of the frames sent out of a port",
    );
    let tx_d = f.counter(
        "dpacc_vnf_port_tx_dropped",
        "Frames for a port dropped: no room in its RX ring, no frontend, or a failed write",
    );
    let drops = f.counter(
        "dpacc_vnf_drops",
        "Frames a vNF's instance or device dropped, by reason (policy: the operator's policy; \
         flow: drop actions and lists without output; no_rx_buffer: a full or absent RX ring; \
         bad_tx: malformed TX chains or oversized frames)",
    );
    let misses = f.counter(
        "dpacc_vnf_misses",
        "Frames that missed every table (PACKET_IN to the vNF)",
    );
    let hits = f.counter("dpacc_vnf_cache_hits", "Exact-match cache hits");
    let control = f.counter(
        "dpacc_vnf_control_frames",
        "Control frames of the vNF handled, per queue",
    );
    let flows = f.gauge("dpacc_vnf_flows", "Flows installed in a vNF's instance");
    let max_flows = f.gauge("dpacc_vnf_max_flows", "Flow quota of a vNF's instance");
    let up = f.gauge("dpacc_vnf_up", "1 while a vNF is served, 0 once it failed");
    let r_p = f.counter(
        "dpacc_vnf_policy_rule_packets",
        "Frames an operator policy rule matched (rule: index in its list, or default)",
    );
    let r_b = f.counter(
        "dpacc_vnf_policy_rule_bytes",
        "Bytes of the frames a rule matched",
    );
    let r_d = f.counter(
        "dpacc_vnf_policy_rule_denies",
        "Frames an operator policy rule dropped (deny, or over its rate limit)",
    );
    for v in vnfs {
        let name = v.info.name.clone();
        let l = |extra: &[(&'static str, String)]| -> Labels {
            let mut l = vec![("vnf", name.clone())];
            l.extend_from_slice(extra);
            l
        };
        let p = v.view.processor();
        let c = p.counters();
        let workers = v.view.workers();
        gauge(&up, l(&[]), u64::from(v.info.error.is_none()));
        gauge(&flows, l(&[]), p.flow_count() as u64);
        gauge(&max_flows, l(&[]), v.info.max_flows);
        set(&misses, l(&[]), c.misses);
        set(&hits, l(&[]), c.cache_hits);
        let (mut no_buf, mut bad_tx) = (0, 0);
        for (q, w) in workers.iter().enumerate() {
            no_buf += w.rx_no_buffer;
            bad_tx += w.bad_tx;
            set(&control, l(&[("queue", q.to_string())]), w.control);
            for (port, pc) in w.ports.iter().enumerate() {
                let pl = l(&[("port", port.to_string()), ("queue", q.to_string())]);
                set(&rx_p, pl.clone(), pc.rx_packets);
                set(&rx_b, pl.clone(), pc.rx_bytes);
                set(&tx_p, pl.clone(), pc.tx_packets);
                set(&tx_b, pl.clone(), pc.tx_bytes);
                set(&tx_d, pl, pc.tx_dropped);
            }
        }
        for (reason, n) in [
            ("policy", c.policy_drops),
            ("flow", c.drops.saturating_sub(c.policy_drops)),
            ("no_rx_buffer", no_buf),
            ("bad_tx", bad_tx),
        ] {
            set(&drops, l(&[("reason", reason.into())]), n);
        }
        if let Some((_, pc)) = p.policy() {
            for (dir, list) in [("ingress", &pc.ingress), ("egress", &pc.egress)] {
                let rules = list
                    .rules
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (i.to_string(), r))
                    .chain([("default".to_string(), &list.default)]);
                for (rule, rc) in rules {
                    let rl = l(&[("direction", dir.into()), ("rule", rule)]);
                    set(&r_p, rl.clone(), rc.packets);
                    set(&r_b, rl.clone(), rc.bytes);
                    set(&r_d, rl, rc.denies);
                }
            }
        }
    }
    f.encode()
}

/// The metrics of a crypto daemon.
pub fn render_crypto(view: Option<&CryptoView>) -> String {
    let mut f = Families::new();
    let ops = f.counter(
        "dpacc_crypto_queue_operations",
        "Crypto requests completed with status OK, per data queue",
    );
    let errs = f.counter(
        "dpacc_crypto_queue_errors",
        "Crypto requests completed with an error status, per data queue",
    );
    let bytes = f.counter(
        "dpacc_crypto_queue_bytes",
        "Bytes of the crypto requests' buffers, per data queue",
    );
    let open = f.gauge("dpacc_crypto_sessions", "Crypto sessions open");
    let max = f.gauge(
        "dpacc_crypto_sessions_max",
        "Most crypto sessions open at once",
    );
    let created = f.counter("dpacc_crypto_sessions_created", "Crypto sessions created");
    let failed = f.counter(
        "dpacc_crypto_sessions_failed",
        "Crypto session creations refused (quota, parameters, driver)",
    );
    let closed = f.counter("dpacc_crypto_sessions_closed", "Crypto sessions closed");
    let fallbacks = f.counter(
        "dpacc_crypto_driver_fallbacks",
        "Sessions created on the software fallback because the accelerator driver lacks the \
         algorithm",
    );
    let s_ops = f.counter(
        "dpacc_crypto_session_operations",
        "Crypto requests completed with status OK, per open session",
    );
    let s_errs = f.counter(
        "dpacc_crypto_session_errors",
        "Crypto requests on an open session completed with an error status",
    );
    let s_bytes = f.counter(
        "dpacc_crypto_session_bytes",
        "Bytes of the crypto requests' buffers, per open session",
    );
    if let Some(v) = view {
        let d = || vec![("driver", v.driver().to_string())];
        for (q, c) in v.queues().iter().enumerate() {
            let l = vec![("queue", q.to_string())];
            set(&ops, l.clone(), c.operations);
            set(&errs, l.clone(), c.errors);
            set(&bytes, l, c.bytes);
        }
        let s = v.sessions();
        gauge(&open, vec![], s.open);
        gauge(&max, vec![], s.max);
        set(&created, vec![], s.created);
        set(&failed, vec![], s.failed);
        set(&closed, vec![], s.closed);
        set(&fallbacks, d(), s.fallbacks);
        // Every open session: at most the session quota (--max-sessions) of the one frontend.
        for st in v.open_sessions(usize::MAX).sessions {
            let sl = &st.labels;
            let l = vec![
                ("connection", sl.connection.to_string()),
                ("session", sl.id.to_string()),
                ("alg", sl.alg.clone()),
                ("op", sl.op.to_string()),
                ("fallback", sl.fallback.to_string()),
            ];
            set(&s_ops, l.clone(), st.count.operations);
            set(&s_errs, l.clone(), st.count.errors);
            set(&s_bytes, l, st.count.bytes);
        }
    }
    f.encode()
}
