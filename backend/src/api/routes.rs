//! Requests to responses: the management API's resources (spec/api.md). Pure functions of
//! the method, the path and the body over the daemon's state, so every status is testable
//! without a socket.

use std::sync::{Arc, OnceLock};

use dpacc_spec::fastpath::policy::PolicyError;
use serde::Serialize;
use serde_json::json;

use super::json::{PolicyJson, VnfInfo, VnfRequest};
use super::vnfs::{RegistryError, VnfEntry, VnfRegistry};
use crate::crypto::CryptoView;
use crate::net::NetServeError;

/// What the API of a daemon serves.
#[derive(Clone)]
pub enum Target {
    /// A `dpacc-backend net` daemon's vNFs.
    Net(Arc<VnfRegistry>),
    /// A `dpacc-backend crypto` daemon's device (set once it is up).
    Crypto(Arc<OnceLock<CryptoView>>),
    /// A `dpacc-backend net --isolate` daemon's vNF processes.
    Isolated(Arc<super::isolated::Supervisor>),
}

/// A response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Content-Type.
    pub content_type: &'static str,
    /// Body.
    pub body: String,
    /// Methods the resource allows (the `Allow` header of a 405).
    pub allow: Option<&'static str>,
}

pub(crate) const JSON: &str = "application/json";

impl Reply {
    pub(crate) fn json(status: u16, v: &impl Serialize) -> Self {
        Self {
            status,
            content_type: JSON,
            // Our own types serialize without failing.
            body: serde_json::to_string_pretty(v).unwrap_or_default() + "\n",
            allow: None,
        }
    }

    /// `{"error": msg}` with `status`.
    pub fn error(status: u16, msg: impl std::fmt::Display) -> Self {
        Self::json(status, &json!({ "error": msg.to_string() }))
    }

    /// A JSON body as another process gave it (`--isolate`'s forwarding).
    pub(crate) fn forwarded(status: u16, body: String) -> Self {
        Self {
            status,
            content_type: JSON,
            body,
            allow: None,
        }
    }

    /// A Prometheus text exposition (`GET /metrics`).
    pub(crate) fn metrics(body: String) -> Self {
        Self {
            status: 200,
            content_type: crate::metrics::CONTENT_TYPE,
            body,
            allow: None,
        }
    }

    pub(crate) fn empty(status: u16) -> Self {
        Self {
            status,
            content_type: JSON,
            body: String::new(),
            allow: None,
        }
    }

    pub(crate) fn method_not_allowed(method: &str, allow: &'static str) -> Self {
        Self {
            allow: Some(allow),
            ..Self::error(
                405,
                format!("{method} is not allowed here (allowed: {allow})"),
            )
        }
    }
}

/// The HTTP status of a registry error.
pub fn status_of(e: &RegistryError) -> u16 {
    match e {
        RegistryError::NotFound(_) => 404,
        RegistryError::Exists(_) | RegistryError::InUse(_) => 409,
        RegistryError::MaxFlows(_) | RegistryError::TooMany | RegistryError::TooManyUplinks(_) => {
            422
        }
        RegistryError::BadName(_) | RegistryError::Relative(_) | RegistryError::Uplink(_) => 400,
        RegistryError::Start(NetServeError::Bind(_) | NetServeError::Tap { .. }) => 400,
        RegistryError::Start(_) => 500,
    }
}

pub(crate) fn registry_error(e: RegistryError) -> Reply {
    Reply::error(status_of(&e), e)
}

pub(crate) fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Reply> {
    serde_json::from_slice(body).map_err(|e| Reply::error(400, format!("bad JSON body: {e}")))
}

fn info(e: &VnfEntry) -> VnfInfo {
    VnfInfo {
        flows: e.view.processor().flow_count() as u64,
        ..e.info.clone()
    }
}

/// Most flows listed in a vNF's statistics.
pub const STATS_FLOWS: usize = 1000;

fn stats(e: &VnfEntry) -> serde_json::Value {
    let p = e.view.processor();
    let c = p.counters();
    let workers = e.view.workers();
    let nports = workers.first().map_or(0, |w| w.ports.len());
    let ports: Vec<_> = (0..nports)
        .map(|i| {
            let queues: Vec<_> = workers
                .iter()
                .enumerate()
                .map(|(q, w)| {
                    let pc = w.ports.get(i).copied().unwrap_or_default();
                    json!({
                        "queue": q,
                        "rx_packets": pc.rx_packets, "rx_bytes": pc.rx_bytes,
                        "tx_packets": pc.tx_packets, "tx_bytes": pc.tx_bytes,
                        "tx_dropped": pc.tx_dropped,
                    })
                })
                .collect();
            let sum = |f: fn(&crate::net::counters::PortCount) -> u64| -> u64 {
                workers.iter().filter_map(|w| w.ports.get(i)).map(f).sum()
            };
            json!({
                "port": i,
                "kind": match i {
                    0 => "vnf".to_string(),
                    _ => e.info.uplinks.get(i - 1).cloned().unwrap_or_default(),
                },
                "rx_packets": sum(|p| p.rx_packets), "rx_bytes": sum(|p| p.rx_bytes),
                "tx_packets": sum(|p| p.tx_packets), "tx_bytes": sum(|p| p.tx_bytes),
                "tx_dropped": sum(|p| p.tx_dropped),
                "queues": queues,
            })
        })
        .collect();
    let flows = p.flows(0, STATS_FLOWS);
    let count = p.flow_count();
    json!({
        "name": e.info.name,
        "state": e.info.state,
        "flows": count,
        "max_flows": e.info.max_flows,
        "misses": c.misses,
        "cache_hits": c.cache_hits,
        "drops": {
            "policy": c.policy_drops,
            "flow": c.drops.saturating_sub(c.policy_drops),
            "no_rx_buffer": workers.iter().map(|w| w.rx_no_buffer).sum::<u64>(),
            "bad_tx": workers.iter().map(|w| w.bad_tx).sum::<u64>(),
        },
        "control_frames": workers.iter().map(|w| w.control).sum::<u64>(),
        "ports": ports,
        "policy": p.policy().map(|(pol, pc)| PolicyJson::of(&pol, Some(&pc))),
        "flow_list": flows.iter().map(|f| json!({
            "cookie": f.cookie, "table": f.table, "priority": f.priority,
            "packets": f.stats.packets, "bytes": f.stats.bytes,
        })).collect::<Vec<_>>(),
        "flow_list_truncated": count > flows.len(),
    })
}

fn policy_error(e: PolicyError) -> Reply {
    let status = match e {
        PolicyError::TooManyRules(_) => 422,
        PolicyError::ZeroRate => 400,
        PolicyError::Unsupported => 501,
    };
    Reply::error(status, e)
}

fn vnf_routes(reg: &VnfRegistry, method: &str, segs: &[&str], body: &[u8]) -> Reply {
    match segs {
        ["vnfs"] => match method {
            "GET" => Reply::json(200, &reg.list().iter().map(info).collect::<Vec<_>>()),
            _ => Reply::method_not_allowed(method, "GET"),
        },
        ["vnfs", name] => match method {
            "GET" => match reg.get(name) {
                Ok(e) => Reply::json(200, &info(&e)),
                Err(e) => registry_error(e),
            },
            "PUT" => {
                let r: VnfRequest = match parse(body) {
                    Ok(r) => r,
                    Err(reply) => return reply,
                };
                match reg.create(name, &r.socket, &r.uplinks, r.max_flows) {
                    Ok(()) => match reg.get(name) {
                        Ok(e) => Reply::json(201, &info(&e)),
                        Err(e) => registry_error(e),
                    },
                    Err(e) => registry_error(e),
                }
            }
            "DELETE" => match reg.delete(name) {
                Ok(()) => Reply::empty(204),
                Err(e) => registry_error(e),
            },
            _ => Reply::method_not_allowed(method, "GET, PUT, DELETE"),
        },
        ["vnfs", name, "policy"] => {
            let e = match reg.get(name) {
                Ok(e) => e,
                Err(e) => return registry_error(e),
            };
            let p = e.view.processor();
            match method {
                "GET" => Reply::json(
                    200,
                    &match p.policy() {
                        Some((pol, c)) => PolicyJson::of(&pol, Some(&c)),
                        None => PolicyJson::default(),
                    },
                ),
                "PUT" => {
                    let j: PolicyJson = match parse(body) {
                        Ok(j) => j,
                        Err(reply) => return reply,
                    };
                    let pol = match j.to_policy() {
                        Ok(pol) => pol,
                        Err(e) => return Reply::error(400, e),
                    };
                    if let Err(e) = pol.validate() {
                        return policy_error(e);
                    }
                    match p.set_policy(Some(pol.clone())) {
                        Ok(()) => {
                            tracing::info!(
                                "vNF {name}: operator policy set ({} ingress, {} egress rules)",
                                pol.ingress.rules.len(),
                                pol.egress.rules.len()
                            );
                            Reply::json(200, &PolicyJson::of(&pol, None))
                        }
                        Err(e) => policy_error(e),
                    }
                }
                "DELETE" => match p.set_policy(None) {
                    Ok(()) => {
                        tracing::info!("vNF {name}: operator policy removed");
                        Reply::empty(204)
                    }
                    Err(e) => policy_error(e),
                },
                _ => Reply::method_not_allowed(method, "GET, PUT, DELETE"),
            }
        }
        ["vnfs", name, "stats"] => match method {
            "GET" => match reg.get(name) {
                Ok(e) => Reply::json(200, &stats(&e)),
                Err(e) => registry_error(e),
            },
            _ => Reply::method_not_allowed(method, "GET"),
        },
        ["metrics"] => match method {
            "GET" => Reply::metrics(crate::metrics::render_net(&reg.list())),
            _ => Reply::method_not_allowed(method, "GET"),
        },
        _ => Reply::error(404, "no such resource (see spec/api.md)"),
    }
}

/// Most sessions `GET /stats` of a crypto daemon lists.
pub const STATS_SESSIONS: usize = 1000;

fn crypto_routes(view: Option<&CryptoView>, method: &str, segs: &[&str]) -> Reply {
    match segs {
        ["metrics"] => match method {
            "GET" => Reply::metrics(crate::metrics::render_crypto(view)),
            _ => Reply::method_not_allowed(method, "GET"),
        },
        ["stats"] => match method {
            "GET" => {
                let Some(v) = view else {
                    return Reply::error(503, "the crypto device is not up yet");
                };
                let s = v.sessions();
                let list = v.open_sessions(STATS_SESSIONS);
                Reply::json(
                    200,
                    &json!({
                        "driver": v.driver(),
                        "queues": v.queues().iter().enumerate().map(|(i, q)| json!({
                            "queue": i, "operations": q.operations, "errors": q.errors,
                            "bytes": q.bytes,
                        })).collect::<Vec<_>>(),
                        "sessions": {
                            "open": s.open, "max": s.max, "created": s.created,
                            "failed": s.failed, "closed": s.closed, "fallbacks": s.fallbacks,
                        },
                        "session_list": list.sessions.iter().map(|st| json!({
                            "connection": st.labels.connection, "id": st.labels.id,
                            "alg": st.labels.alg, "op": st.labels.op,
                            "fallback": st.labels.fallback,
                            "operations": st.count.operations, "errors": st.count.errors,
                            "bytes": st.count.bytes,
                        })).collect::<Vec<_>>(),
                        "session_list_total": list.total,
                        "session_list_truncated": list.total > list.sessions.len() as u64,
                    }),
                )
            }
            _ => Reply::method_not_allowed(method, "GET"),
        },
        ["vnfs", ..] => Reply::error(
            404,
            "this daemon serves a crypto device: vNFs are managed by dpacc-backend net",
        ),
        _ => Reply::error(404, "no such resource (see spec/api.md)"),
    }
}

/// The response to `method path` with `body`.
pub fn handle(target: &Target, method: &str, url: &str, body: &[u8]) -> Reply {
    let path = url.split(['?', '#']).next().unwrap_or("");
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match target {
        Target::Net(reg) => vnf_routes(reg, method, &segs, body),
        Target::Crypto(v) => crypto_routes(v.get(), method, &segs),
        Target::Isolated(s) => super::isolated::routes(s, method, &segs, body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::vnfs::VnfTemplate;

    fn registry() -> Arc<VnfRegistry> {
        Arc::new(VnfRegistry::new(VnfTemplate {
            quotas: dpacc_spec::fastpath::Quotas {
                flows: 64,
                ..Default::default()
            },
            keep_detached: std::time::Duration::from_secs(1),
            queue_size: 256,
            mac: [0x52, 0x54, 0, 0xdc, 0xac, 1],
            fastpath: Arc::new(dpacc_sw::flow::SwFastPath::new(Arc::new(
                dpacc_sw::SwDriver::new(),
            ))),
            busy_poll: std::time::Duration::ZERO,
            queue_pairs: 1,
        }))
    }

    fn err(r: &Reply) -> String {
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        v["error"].as_str().unwrap().to_string()
    }

    #[test]
    fn every_error_has_its_status_and_a_message() {
        let t = Target::Net(registry());
        let many_uplinks = format!(
            r#"{{"socket": "/tmp/x.sock", "uplinks": [{}]}}"#,
            vec![r#""tap:x""#; 33].join(",")
        );
        for (m, p, body, status) in [
            ("GET", "/", "", 404),
            ("GET", "/vnfs/x/y/z", "", 404),
            ("GET", "/vnfs/none", "", 404),
            ("DELETE", "/vnfs/none", "", 404),
            ("GET", "/vnfs/none/policy", "", 404),
            ("PUT", "/vnfs/none/policy", "{}", 404),
            ("PUT", "/vnfs/x", "", 400),
            ("PUT", "/vnfs/x", "null", 400),
            ("PUT", "/vnfs/x", "{\"socket\": 5}", 400),
            (
                "PUT",
                "/vnfs/.x",
                "{\"socket\": \"/nonexistent-dir/x.sock\"}",
                400,
            ),
            (
                "PUT",
                "/vnfs/x",
                "{\"socket\": \"/nonexistent-dir/x.sock\"}",
                400,
            ),
            (
                "PUT",
                "/vnfs/x",
                "{\"socket\": \"/tmp/x.sock\", \"max_flows\": 0}",
                422,
            ),
            ("POST", "/metrics", "", 405),
            ("PUT", "/vnfs/x", &many_uplinks, 422),
            ("DELETE", "/vnfs", "", 405),
            ("HEAD", "/vnfs/x/stats", "", 405),
        ] {
            let r = handle(&t, m, p, body.as_bytes());
            assert_eq!(r.status, status, "{m} {p} {body}: {}", r.body);
            assert!(!err(&r).is_empty());
            assert_eq!(r.allow.is_some(), status == 405);
        }
        assert_eq!(handle(&t, "GET", "/vnfs?x=1", b"").status, 200);
        assert_eq!(handle(&t, "GET", "/metrics", b"").status, 200);
        let c = Target::Crypto(Arc::new(OnceLock::new()));
        assert_eq!(handle(&c, "GET", "/stats", b"").status, 503);
        assert_eq!(handle(&c, "GET", "/metrics", b"").status, 200);
        assert_eq!(handle(&c, "PUT", "/vnfs/x", b"{}").status, 404);
    }

    #[test]
    fn a_start_up_policy_is_in_force_when_the_vnf_is_created() {
        let reg = registry();
        let sock =
            std::env::temp_dir().join(format!("dpacc-routes-sp-{}.sock", std::process::id()));
        let j: PolicyJson = serde_json::from_str(
            r#"{"ingress": {"rules": [{"match": {"proto": "udp"}, "action": "deny"}]}}"#,
        )
        .unwrap();
        let pol = j.to_policy().unwrap();
        reg.create_parsed("sp", &sock, Vec::new(), None, Some(pol.clone()))
            .unwrap();
        let (set, counters) = reg.get("sp").unwrap().view.processor().policy().unwrap();
        assert_eq!(set, pol);
        assert_eq!(counters.ingress.rules[0].packets, 0);
        let t = Target::Net(reg);
        let r = handle(&t, "GET", "/vnfs/sp/policy", b"");
        assert!(r.body.contains("\"deny\""), "{}", r.body);
        assert_eq!(handle(&t, "DELETE", "/vnfs/sp", b"").status, 204);
    }

    #[test]
    fn garbage_never_panics() {
        let t = Target::Net(registry());
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let methods = ["GET", "PUT", "DELETE", "POST", "\u{0}"];
        let paths = [
            "/vnfs/a",
            "/vnfs/a/policy",
            "/vnfs/%00",
            "//vnfs//a//",
            "/metrics",
        ];
        for _ in 0..2000 {
            let len = (next() % 64) as usize;
            let body: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let m = methods[(next() % 5) as usize];
            let p = paths[(next() % 5) as usize];
            let r = handle(&t, m, p, &body);
            assert!(
                r.status == 200 || (400..500).contains(&r.status),
                "{m} {p}: {}",
                r.status
            );
        }
        // Structured garbage on a real vNF: policies with every kind of wrong value.
        let sock = std::env::temp_dir().join(format!("dpacc-routes-{}.sock", std::process::id()));
        let body = format!(r#"{{"socket": "{}"}}"#, sock.display());
        assert_eq!(handle(&t, "PUT", "/vnfs/a", body.as_bytes()).status, 201);
        for (body, status) in [
            (
                r#"{"ingress": {"rules": [{"match": {"src": "1.2.3.4/999"}, "action": "deny"}]}}"#,
                400,
            ),
            (
                r#"{"ingress": {"rules": [{"match": {"proto": -1}, "action": "deny"}]}}"#,
                400,
            ),
            (
                r#"{"ingress": {"rules": [{"action": "rate_limit", "bytes_per_sec": 18446744073709551615}]}}"#,
                200,
            ),
            (r#"{"ingress": {"rules": {}}}"#, 400),
            (r#"{"ingress": null}"#, 400),
        ] {
            let r = handle(&t, "PUT", "/vnfs/a/policy", body.as_bytes());
            assert_eq!(r.status, status, "{body}: {}", r.body);
        }
        for _ in 0..500 {
            let len = (next() % 48) as usize;
            let mut body = br#"{"ingress": {"rules": [{"#.to_vec();
            let alphabet: &[u8] = b"{}[]\":,0123456789actionmatchdeny";
            body.extend((0..len).map(|_| alphabet[(next() % alphabet.len() as u64) as usize]));
            let r = handle(&t, "PUT", "/vnfs/a/policy", &body);
            assert!(
                r.status == 200 || r.status == 400 || r.status == 422,
                "{}",
                r.status
            );
        }
        assert_eq!(handle(&t, "GET", "/vnfs/a/stats", b"").status, 200);
        assert_eq!(handle(&t, "DELETE", "/vnfs/a", b"").status, 204);
        assert!(!sock.exists());
    }
}
