//! `GET /metrics` of a `--isolate` daemon: the supervisor's series merged with every
//! answering process's.

use std::path::PathBuf;
use std::process::Child;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::peek::{peek_all, PEEK_TIMEOUT};
use super::supervisor::Supervisor;
use crate::api::client;

impl Supervisor {
    /// `GET /metrics`: the supervisor's series, then every answering process's.
    pub fn metrics(&self) -> String {
        struct Row {
            name: String,
            pid: Option<u32>,
            restarts: u64,
            api: Option<PathBuf>,
        }
        let rows: Vec<Row> = {
            let inner = self.lock();
            inner
                .vnfs
                .iter()
                .map(|(n, p)| Row {
                    name: n.clone(),
                    pid: p.child.as_ref().map(Child::id),
                    restarts: p.restarts,
                    api: p.serving_api(self.cfg.private.as_deref()),
                })
                .collect()
        };
        let texts = peek_all(&rows, |r| {
            r.api.as_ref().and_then(|api| {
                client::request(api, "GET", "/metrics", b"", PEEK_TIMEOUT)
                    .ok()
                    .filter(|x| x.status == 200)
                    .and_then(|x| String::from_utf8(x.body).ok())
            })
        });
        let served: Vec<bool> = texts.iter().map(Option::is_some).collect();
        let parts: Vec<String> = texts.into_iter().flatten().collect();
        let mut reg = Registry::default();
        type L = Vec<(&'static str, String)>;
        let count = Family::<L, Gauge>::default();
        reg.register(
            "dpacc_vnfs",
            "vNF instances served by this daemon",
            count.clone(),
        );
        let up = Family::<L, Gauge>::default();
        reg.register(
            "dpacc_vnf_up",
            "1 while a vNF is served, 0 once it failed (with --isolate also 0 while its \
             process is down or does not answer)",
            up.clone(),
        );
        let pup = Family::<L, Gauge>::default();
        reg.register(
            "dpacc_vnf_process_up",
            "1 while the process of an isolated vNF runs, 0 while it waits to be restarted",
            pup.clone(),
        );
        let restarts = Family::<L, Counter>::default();
        reg.register(
            "dpacc_vnf_process_restarts",
            "Times the process of an isolated vNF was restarted after it ended",
            restarts.clone(),
        );
        count.get_or_create(&vec![]).set(rows.len() as i64);
        for (r, served) in rows.iter().zip(&served) {
            let l = vec![("vnf", r.name.clone())];
            if !served {
                up.get_or_create(&l).set(0);
            }
            pup.get_or_create(&l).set(i64::from(r.pid.is_some()));
            restarts.get_or_create(&l).inc_by(r.restarts);
        }
        let mut own = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_text::encode(&mut own, &reg);
        let mut all: Vec<&str> = vec![&own];
        all.extend(parts.iter().map(String::as_str));
        crate::api::merge::merge(&all)
    }
}
