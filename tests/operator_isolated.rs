//! The management API of `dpacc-backend net --isolate` (a process per vNF, ADR 0018), through
//! the real binary and a real HTTP client (`curl --unix-socket`): vNFs created at run time each
//! get a process of their own and forward traffic between guest-library clients (virtio-user)
//! on their uplinks; the operator's policy is enforced, also by a process restarted after it
//! was killed, from its first frame; statistics and `/metrics` (parsed by the Python
//! `prometheus_client` parser) come from the processes, a process that does not answer gets
//! 503 and is left out of the scrape, never a hang; a deleted vNF's process is gone and not
//! restarted; bad requests get the 4xx of the one-process daemon.
//!
//! Needs curl and python3 with prometheus_client (.ci/install-deps.sh); SKIPPED without them,
//! a failure with CI=true.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::api::{forward_udp, have, parse_metrics, sample, Daemon};
use common::netns::flow;
use dpacc::guest::net::{FlowTable, NetOptions, VirtioNetPort};
use dpacc::spec::fastpath::flow::{Action, Match};
use dpacc::spec::fastpath::PortId;

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("dpacc-iso-{}-{name}", std::process::id()))
}

/// A vNF's control client (its flow 1: uplink 1 to uplink 2) and its two uplink peers.
struct Vnf {
    _ft: FlowTable<VirtioNetPort>,
    up1: VirtioNetPort,
    up2: VirtioNetPort,
}

/// Connects to vNF `name`'s sockets (its process serves them) and installs its flow.
fn connect(name: &str) -> Vnf {
    let port = VirtioNetPort::connect(tmp(&format!("{name}.sock")), NetOptions::default())
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let mac = port.mac();
    let mut ft = FlowTable::new(port, mac);
    assert_eq!(ft.hello().unwrap(), (8, 16), "the quota given in the API");
    let m = Match {
        in_port: Some(1),
        ..Match::default()
    };
    ft.add_flow(flow(1, m, vec![Action::Output(PortId(2))]))
        .unwrap();
    let up = |k: u8| {
        VirtioNetPort::connect(tmp(&format!("{name}-u{k}.sock")), NetOptions::default()).unwrap()
    };
    Vnf {
        _ft: ft,
        up1: up(1),
        up2: up(2),
    }
}

fn create(d: &Daemon, name: &str) -> Vnf {
    let body = format!(
        r#"{{"socket": "{}", "uplinks": ["vhost:{}", "vhost:{}"], "max_flows": 16}}"#,
        tmp(&format!("{name}.sock")).display(),
        tmp(&format!("{name}-u1.sock")).display(),
        tmp(&format!("{name}-u2.sock")).display()
    );
    let info = d.json("PUT", &format!("/vnfs/{name}"), Some(&body), 201);
    assert_eq!(info["name"], name);
    assert_eq!(info["max_flows"], 16);
    assert_eq!(info["state"], "running");
    assert_eq!(info["restarts"], 0);
    assert!(info["pid"].as_u64().is_some(), "{info}");
    connect(name)
}

/// Sends `n` frames to UDP port `dport` from uplink 1; how many came out of uplink 2.
fn forward(v: &mut Vnf, n: u32, dport: u16) -> u32 {
    forward_udp(&mut v.up1, &mut v.up2, n, dport)
}

fn pid_of(d: &Daemon, name: &str) -> i32 {
    let v = d.json("GET", &format!("/vnfs/{name}"), None, 200);
    v["pid"].as_i64().unwrap_or_else(|| panic!("{v}")) as i32
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// The operator's rule: no UDP to port 9000 from uplink 1.
const POLICY: &str = r#"{"ingress": {"rules": [
    {"match": {"port": 1, "proto": "udp", "dport": 9000}, "action": "deny"}
]}}"#;

#[test]
fn isolated_vnfs_are_managed_policed_and_measured_through_the_api() {
    if !have("curl", &["--version"]) || !have("python3", &["-c", "import prometheus_client"]) {
        return;
    }
    let api = tmp("api.sock");
    let private = PathBuf::from(format!("{}.d", api.display()));
    // One vNF on the command line (its process is serving it once the API answers), the
    // others created through the API.
    let delta = tmp("delta.sock");
    let mut d = Daemon::start(
        &[
            "net",
            "--isolate",
            "--max-flows",
            "64",
            "--port",
            &format!("name=delta,socket={}", delta.display()),
        ],
        &api,
    );
    let mode = |p: &PathBuf| {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions())
            & 0o777
    };
    assert_eq!(mode(&api), 0o600, "the API socket is the owner's only");
    assert_eq!(
        mode(&private),
        0o700,
        "the processes' sockets are root's only"
    );
    let list = d.json("GET", "/vnfs", None, 200);
    assert_eq!(list[0]["name"], "delta", "{list}");
    assert_eq!(list[0]["max_flows"], 64);
    d.json("DELETE", "/vnfs/delta", None, 204);
    assert!(!delta.exists(), "its process removed its socket");
    assert_eq!(d.json("GET", "/vnfs", None, 200), serde_json::json!([]));

    let mut a = create(&d, "alpha");
    let mut b = create(&d, "beta");
    let (pid_a, pid_b) = (pid_of(&d, "alpha"), pid_of(&d, "beta"));
    assert!(
        pid_a != pid_b && pid_a as u32 != d.child.id(),
        "a process each"
    );
    assert_eq!(forward(&mut a, 100, 9000), 100);
    assert_eq!(forward(&mut b, 100, 9000), 100);
    let list = d.json("GET", "/vnfs", None, 200);
    let names: Vec<_> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].clone())
        .collect();
    assert_eq!(names, ["alpha", "beta"]);
    assert_eq!(list[0]["flows"], 1, "the flow count comes from the process");
    assert_eq!(list[0]["state"], "running");

    // The operator's policy on alpha, enforced with traffic.
    let set = d.json("PUT", "/vnfs/alpha/policy", Some(POLICY), 200);
    assert_eq!(set["ingress"]["rules"][0]["action"], "deny");
    assert_eq!(forward(&mut a, 50, 9000), 0, "denied");
    assert_eq!(forward(&mut a, 50, 9001), 50, "the rest passes");
    let stats = d.json("GET", "/vnfs/alpha/stats", None, 200);
    assert_eq!(stats["drops"]["policy"], 50);
    assert_eq!(stats["ports"][2]["tx_packets"], 150);
    // A policy the process refuses is not recorded: the old one stays.
    let (code, body) = d.call(
        "PUT",
        "/vnfs/alpha/policy",
        Some(r#"{"ingress": {"rules": [{"match": {"src": "1.2.3.4/99"}, "action": "deny"}]}}"#),
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("bad prefix"), "{body}");
    let pol = d.json("GET", "/vnfs/alpha/policy", None, 200);
    assert_eq!(pol["ingress"]["rules"][0]["counters"]["denies"], 50);

    let s = parse_metrics(&d.call("GET", "/metrics", None).1);
    assert_eq!(
        sample(&s, "dpacc_vnfs", &[]),
        2.0,
        "the supervisor's count, once"
    );
    for v in ["alpha", "beta"] {
        assert_eq!(sample(&s, "dpacc_vnf_process_up", &[("vnf", v)]), 1.0);
        assert_eq!(sample(&s, "dpacc_vnf_up", &[("vnf", v)]), 1.0);
        assert_eq!(
            sample(&s, "dpacc_vnf_process_restarts_total", &[("vnf", v)]),
            0.0
        );
    }
    assert_eq!(
        sample(
            &s,
            "dpacc_vnf_port_rx_packets_total",
            &[("vnf", "beta"), ("port", "1")]
        ),
        100.0
    );
    assert_eq!(
        sample(
            &s,
            "dpacc_vnf_drops_total",
            &[("vnf", "alpha"), ("reason", "policy")]
        ),
        50.0
    );

    // Alpha's process stops answering (SIGSTOP): 503 after the forwarding timeout, never a
    // hang; the scrape leaves its series out; beta is not affected.
    // SAFETY: signalling a process of the daemon under test.
    unsafe { libc::kill(pid_a, libc::SIGSTOP) };
    let (code, body) = d.call("GET", "/vnfs/alpha/stats", None);
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("does not answer"), "{body}");
    let s = parse_metrics(&d.call("GET", "/metrics", None).1);
    assert_eq!(sample(&s, "dpacc_vnf_up", &[("vnf", "alpha")]), 0.0);
    assert_eq!(
        sample(&s, "dpacc_vnf_flows", &[("vnf", "alpha")]),
        0.0,
        "no series of alpha's"
    );
    assert_eq!(sample(&s, "dpacc_vnf_flows", &[("vnf", "beta")]), 1.0);
    assert_eq!(forward(&mut b, 100, 9000), 100);

    // Killed: it comes back in a new process, with the operator's policy in force before
    // the first frame (every frame to port 9000 is counted by the rule and dropped).
    // SAFETY: as above.
    unsafe { libc::kill(pid_a, libc::SIGKILL) };
    drop(a);
    let t = Instant::now();
    let pid_a2 = loop {
        let v = d.json("GET", "/vnfs/alpha", None, 200);
        if v["state"] == "running" && v["pid"].as_i64().is_some_and(|p| p as i32 != pid_a) {
            assert_eq!(v["restarts"], 1, "{v}");
            break v["pid"].as_i64().unwrap() as i32;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "alpha was not restarted: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!alive(pid_a));
    assert_eq!(pid_of(&d, "beta"), pid_b, "beta's process was not touched");
    let pol = d.json("GET", "/vnfs/alpha/policy", None, 200);
    assert_eq!(pol["ingress"]["rules"][0]["action"], "deny", "{pol}");
    assert_eq!(pol["ingress"]["rules"][0]["counters"]["packets"], 0);
    let mut a = connect("alpha");
    assert_eq!(
        forward(&mut a, 40, 9000),
        0,
        "the policy survived the crash"
    );
    assert_eq!(forward(&mut a, 40, 9001), 40);
    let pol = d.json("GET", "/vnfs/alpha/policy", None, 200);
    let c = &pol["ingress"]["rules"][0]["counters"];
    assert_eq!((&c["packets"], &c["denies"]), (&40.into(), &40.into()));
    let s = parse_metrics(&d.call("GET", "/metrics", None).1);
    assert_eq!(
        sample(&s, "dpacc_vnf_process_restarts_total", &[("vnf", "alpha")]),
        1.0
    );
    assert_eq!(sample(&s, "dpacc_vnf_up", &[("vnf", "alpha")]), 1.0);
    assert_eq!(
        sample(
            &s,
            "dpacc_vnf_policy_rule_denies_total",
            &[("vnf", "alpha"), ("direction", "ingress"), ("rule", "0")]
        ),
        40.0
    );

    // The policy removed: recorded too (a restart would not bring it back); the frames pass.
    d.json("DELETE", "/vnfs/alpha/policy", None, 204);
    assert_eq!(forward(&mut a, 20, 9000), 20);
    assert_eq!(
        std::fs::read_dir(&private)
            .unwrap()
            .filter(|e| e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".policy.json"))
            .count(),
        0
    );

    // Bad requests: the one-process daemon's 4xx, checked before any process starts or
    // (a socket that cannot be bound) reported by the process that could not start.
    let fresh = tmp("fresh.sock").display().to_string();
    let sb = tmp("beta.sock").display().to_string();
    let big = format!(
        r#"{{"socket": "/tmp/x", "pad": "{}"}}"#,
        "x".repeat(2 << 20)
    );
    for (method, path, body, status, msg) in [
        (
            "PUT",
            "/vnfs/gamma",
            "{\"socket\": ".to_string(),
            400,
            "bad JSON",
        ),
        (
            "PUT",
            "/vnfs/gamma",
            format!(r#"{{"socket": "{fresh}", "mac": 1}}"#),
            400,
            "unknown field",
        ),
        (
            "PUT",
            "/vnfs/gamma",
            r#"{"socket": "relative.sock"}"#.to_string(),
            400,
            "absolute",
        ),
        (
            "PUT",
            "/vnfs/a%20b",
            format!(r#"{{"socket": "{fresh}"}}"#),
            400,
            "bad vNF name",
        ),
        (
            "PUT",
            "/vnfs/gamma",
            r#"{"socket": "/nonexistent-dir/g.sock"}"#.to_string(),
            400,
            "nonexistent-dir",
        ),
        (
            "PUT",
            "/vnfs/beta",
            format!(r#"{{"socket": "{fresh}"}}"#),
            409,
            "exists",
        ),
        (
            "PUT",
            "/vnfs/gamma",
            format!(r#"{{"socket": "{sb}"}}"#),
            409,
            "in use",
        ),
        (
            "PUT",
            "/vnfs/gamma",
            format!(r#"{{"socket": "{}/9.sock"}}"#, private.display()),
            409,
            "in use",
        ),
        (
            "PUT",
            "/vnfs/gamma",
            format!(r#"{{"socket": "{fresh}", "max_flows": 0}}"#),
            422,
            "out of range",
        ),
        ("PUT", "/vnfs/gamma", big, 413, "over"),
        ("GET", "/vnfs/nope", String::new(), 404, "no vNF named"),
        ("DELETE", "/vnfs/nope", String::new(), 404, "no vNF named"),
        (
            "PUT",
            "/vnfs/nope/policy",
            "{}".to_string(),
            404,
            "no vNF named",
        ),
        (
            "PUT",
            "/vnfs/beta/policy",
            r#"{"ingress": {"rules": [{"action": "sometimes"}]}}"#.to_string(),
            400,
            "unknown variant",
        ),
        ("POST", "/vnfs", "{}".to_string(), 405, "not allowed"),
        ("GET", "/nowhere", String::new(), 404, "no such resource"),
    ] {
        d.expect_error(method, path, &body, status, msg);
    }
    assert!(
        !std::path::Path::new(&fresh).exists(),
        "nothing left behind"
    );
    let names: Vec<_> = d
        .json("GET", "/vnfs", None, 200)
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].clone())
        .collect();
    assert_eq!(names, ["alpha", "beta"], "no failed creation stays listed");

    // A second daemon on the same API socket is refused before it touches the first one's
    // private directory.
    let out = std::process::Command::new(common::api::backend_bin())
        .args(["net", "--isolate", "--api-socket"])
        .arg(&api)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("a live socket is there"), "{err}");
    assert_eq!(mode(&private), 0o700);
    assert_eq!(
        d.json("GET", "/vnfs/alpha/policy", None, 200)["ingress"]["rules"],
        serde_json::json!([]),
        "alpha's process still answers through its private socket"
    );

    // DELETE stops alpha's process for good; beta goes on.
    d.json("DELETE", "/vnfs/alpha", None, 204);
    assert!(!alive(pid_a2), "alpha's process is gone");
    for s in ["alpha.sock", "alpha-u1.sock", "alpha-u2.sock"] {
        assert!(!tmp(s).exists(), "{s} removed");
    }
    d.json("GET", "/vnfs/alpha", None, 404);
    assert_eq!(forward(&mut b, 100, 9000), 100);
    let s = parse_metrics(&d.call("GET", "/metrics", None).1);
    assert_eq!(sample(&s, "dpacc_vnfs", &[]), 1.0);
    assert_eq!(sample(&s, "dpacc_vnf_process_up", &[("vnf", "alpha")]), 0.0);
    assert!(
        !s.iter()
            .any(|(_, l, _)| l.get("vnf").and_then(|v| v.as_str()) == Some("alpha")),
        "no series of a deleted vNF"
    );
    drop(a);
    drop(b);
    assert!(d.terminate(), "a clean exit");
    assert!(
        !api.exists() && !private.exists(),
        "sockets and directory removed"
    );
    assert!(!alive(pid_b), "beta's process stopped with the daemon");
}
