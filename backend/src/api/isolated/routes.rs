//! The API requests of a `--isolate` daemon: answered by the supervisor, or forwarded to
//! the vNF's process (a policy change recorded for its restarts).

use std::time::Duration;

use tracing::error;

use super::files::{files, write_atomic};
use super::supervisor::Supervisor;
use crate::api::client;
use crate::api::json::VnfRequest;
use crate::api::routes::{registry_error, Reply};
use crate::api::vnfs::RegistryError;

/// How long a forwarded request may take (a stuck process answers 503 after it).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

impl Supervisor {
    /// Forwards a request for vNF `name` to its process.
    fn forward(&self, name: &str, method: &str, path: &str, body: &[u8]) -> Reply {
        let api = match self.snapshot(name) {
            Ok((_, Some(api))) => api,
            Ok((info, None)) => {
                return Reply::error(
                    503,
                    format!(
                        "vNF '{name}' is {}: its process does not serve it now; try again",
                        info.state
                    ),
                )
            }
            Err(e) => return e.reply(),
        };
        match client::request(&api, method, path, body, FORWARD_TIMEOUT) {
            // Its process does not have the vNF (yet): it is starting.
            Ok(r) if r.status == 404 => Reply::error(
                503,
                format!("vNF '{name}': its process is starting; try again"),
            ),
            Ok(r) => Reply::forwarded(r.status, String::from_utf8_lossy(&r.body).into_owned()),
            Err(e) => Reply::error(
                503,
                format!("vNF '{name}': its process does not answer ({e}); try again"),
            ),
        }
    }

    /// A policy request: forwarded; a `PUT` the process accepted is recorded (what it
    /// answered, the policy as set) before it is acknowledged, a `DELETE` forgotten.
    fn policy(&self, name: &str, method: &str, body: &[u8]) -> Reply {
        let (lock, file) = {
            let inner = self.lock();
            let Some(p) = inner.vnfs.get(name) else {
                return registry_error(RegistryError::NotFound(name.to_string()));
            };
            (
                p.policy.clone(),
                self.cfg.private.as_deref().map(|d| files(d, p.id).policy),
            )
        };
        let Some(file) = file else {
            return Reply::error(503, "no API");
        };
        let _g = lock.lock().unwrap_or_else(|e| e.into_inner());
        let r = self.forward(name, method, &format!("/vnfs/{name}/policy"), body);
        let recorded = match (method, r.status) {
            ("PUT", 200) => write_atomic(&file, r.body.as_bytes()),
            ("DELETE", 204) => match std::fs::remove_file(&file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
            _ => Ok(()),
        };
        match recorded {
            Ok(()) => r,
            Err(e) => {
                error!(
                    "vNF {name}: recording its policy in {}: {e}",
                    file.display()
                );
                Reply::error(
                    500,
                    format!(
                        "the vNF's process took the change but it could not be recorded for \
                         its restarts ({e}); put the policy again"
                    ),
                )
            }
        }
    }
}

/// The routes of a `--isolate` daemon: the same resources, bodies and errors as the
/// one-process daemon's (spec/api.md).
pub fn routes(sup: &Supervisor, method: &str, segs: &[&str], body: &[u8]) -> Reply {
    match segs {
        ["vnfs"] => match method {
            "GET" => Reply::json(200, &sup.list()),
            _ => Reply::method_not_allowed(method, "GET"),
        },
        ["vnfs", name] => match method {
            "GET" => match sup.info(name) {
                Ok(i) => Reply::json(200, &i),
                Err(e) => e.reply(),
            },
            "PUT" => {
                let r: VnfRequest = match crate::api::routes::parse(body) {
                    Ok(r) => r,
                    Err(reply) => return reply,
                };
                match sup.create(name, &r.socket, &r.uplinks, r.max_flows) {
                    Ok(i) => Reply::json(201, &i),
                    Err(e) => e.reply(),
                }
            }
            "DELETE" => match sup.delete(name) {
                Ok(()) => Reply::empty(204),
                Err(e) => e.reply(),
            },
            _ => Reply::method_not_allowed(method, "GET, PUT, DELETE"),
        },
        ["vnfs", name, "policy"] => {
            if let Err(e) = sup.snapshot(name) {
                return e.reply();
            }
            match method {
                "GET" => sup.forward(name, "GET", &format!("/vnfs/{name}/policy"), b""),
                "PUT" | "DELETE" => sup.policy(name, method, body),
                _ => Reply::method_not_allowed(method, "GET, PUT, DELETE"),
            }
        }
        ["vnfs", name, "stats"] => match method {
            "GET" => sup.forward(name, "GET", &format!("/vnfs/{name}/stats"), b""),
            _ => Reply::method_not_allowed(method, "GET"),
        },
        ["metrics"] => match method {
            "GET" => Reply::metrics(sup.metrics()),
            _ => Reply::method_not_allowed(method, "GET"),
        },
        _ => Reply::error(404, "no such resource (see spec/api.md)"),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::api::isolated::SupervisorConfig;

    #[test]
    fn requests_are_checked_before_any_process_starts() {
        let dir = std::env::temp_dir().join(format!("dpacc-iso-unit-{}.d", std::process::id()));
        let sup = Supervisor::new(SupervisorConfig {
            // Never started: every request below is refused first.
            exe: "/nonexistent/dpacc-backend".into(),
            base_args: vec!["net".into()],
            default_max_flows: 64,
            mac: [2, 0, 0, 0, 0, 1],
            queue_pairs: 1,
            private: Some(dir.clone()),
            reserved: vec!["/tmp/api.sock".into()],
        })
        .unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let call = |m: &str, p: &str, b: &str| {
            let segs: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
            routes(&sup, m, &segs, b.as_bytes())
        };
        let inside = format!(r#"{{"socket": "{}/x.sock"}}"#, dir.display());
        for (m, p, b, status) in [
            ("PUT", "/vnfs/a", "{", 400),
            ("PUT", "/vnfs/.a", r#"{"socket": "/tmp/a.sock"}"#, 400),
            ("PUT", "/vnfs/a", r#"{"socket": "rel.sock"}"#, 400),
            ("PUT", "/vnfs/a", r#"{"socket": "/tmp/a,b.sock"}"#, 400),
            ("PUT", "/vnfs/a", r#"{"socket": "/tmp/api.sock"}"#, 409),
            ("PUT", "/vnfs/a", &inside, 409),
            (
                "PUT",
                "/vnfs/a",
                r#"{"socket": "/tmp/a.sock", "max_flows": 0}"#,
                422,
            ),
            (
                "PUT",
                "/vnfs/a",
                r#"{"socket": "/tmp/a.sock", "uplinks": ["tap:x", "tap:x"]}"#,
                409,
            ),
            ("GET", "/vnfs/a", "", 404),
            ("DELETE", "/vnfs/a", "", 404),
            ("GET", "/vnfs/a/policy", "", 404),
            ("PUT", "/vnfs/a/policy", "{}", 404),
            ("GET", "/vnfs/a/stats", "", 404),
            ("POST", "/vnfs", "", 405),
            ("HEAD", "/vnfs/a/stats", "", 405),
            ("GET", "/nothing", "", 404),
        ] {
            let r = call(m, p, b);
            assert_eq!(r.status, status, "{m} {p} {b}: {}", r.body);
            assert_eq!(r.allow.is_some(), status == 405);
        }
        // A binary that cannot start: 500, nothing left behind.
        let r = call("PUT", "/vnfs/a", r#"{"socket": "/tmp/a.sock"}"#);
        assert_eq!(r.status, 500, "{}", r.body);
        assert_eq!(call("GET", "/vnfs", "").body.trim(), "[]");
        let m = call("GET", "/metrics", "");
        assert!(m.body.contains("dpacc_vnfs 0"), "{}", m.body);
        sup.stop_all();
        assert!(!dir.exists());
    }
}
