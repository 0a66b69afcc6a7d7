//! The management API through the real `dpacc-backend net` binary and a real HTTP client
//! (`curl --unix-socket`): vNFs created at run time with vhost-user uplinks, guest-library
//! clients (virtio-user) on every socket forwarding traffic, one vNF deleted while the other
//! keeps forwarding; bad requests answered with 4xx and a message, the daemon unaffected;
//! `/metrics` scraped while traffic runs and parsed by the Python `prometheus_client` parser,
//! its numbers equal to the flow counters the vNF reads over its own control protocol.
//!
//! Needs curl and python3 with prometheus_client (.ci/install-deps.sh); SKIPPED without them,
//! a failure with CI=true.

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::api::{forward_udp, have, parse_metrics, sample, udp_frame, Daemon};
use common::netns::flow;
use dpacc::guest::net::{FlowTable, FrameIo, NetOptions, VirtioNetPort};
use dpacc::spec::fastpath::flow::{Action, Match};
use dpacc::spec::fastpath::PortId;

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("dpacc-api-{}-{name}", std::process::id()))
}

/// An Ethernet/IPv4/UDP frame (60 bytes) to UDP port 9000, tagged with `seq`.
fn frame(seq: u32) -> Vec<u8> {
    udp_frame(seq, 9000)
}

/// A vNF created through the API: its control client and its two uplink peers.
struct Vnf {
    ft: FlowTable<VirtioNetPort>,
    up1: VirtioNetPort,
    up2: VirtioNetPort,
}

fn create(d: &Daemon, name: &str) -> Vnf {
    let (s, u1, u2) = (
        tmp(&format!("{name}.sock")),
        tmp(&format!("{name}-u1.sock")),
        tmp(&format!("{name}-u2.sock")),
    );
    let body = format!(
        r#"{{"socket": "{}", "uplinks": ["vhost:{}", "vhost:{}"], "max_flows": 16}}"#,
        s.display(),
        u1.display(),
        u2.display()
    );
    let info = d.json("PUT", &format!("/vnfs/{name}"), Some(&body), 201);
    assert_eq!(info["name"], name);
    assert_eq!(info["max_flows"], 16);
    assert_eq!(info["state"], "running");
    let port = VirtioNetPort::connect(&s, NetOptions::default()).unwrap();
    let mac = port.mac();
    let mut ft = FlowTable::new(port, mac);
    assert_eq!(ft.hello().unwrap(), (8, 16), "the quota given in the API");
    ft.add_flow(flow(
        1,
        Match {
            in_port: Some(1),
            ..Match::default()
        },
        vec![Action::Output(PortId(2))],
    ))
    .unwrap();
    let up1 = VirtioNetPort::connect(&u1, NetOptions::default()).unwrap();
    let up2 = VirtioNetPort::connect(&u2, NetOptions::default()).unwrap();
    Vnf { ft, up1, up2 }
}

/// Sends `n` frames from uplink 1 and returns how many came out of uplink 2.
fn forward(v: &mut Vnf, n: u32) -> u32 {
    forward_udp(&mut v.up1, &mut v.up2, n, 9000)
}

#[test]
fn vnfs_are_created_and_deleted_at_run_time_and_bad_requests_get_4xx() {
    if !have("curl", &["--version"]) {
        return;
    }
    let api = tmp("api.sock");
    let mut d = Daemon::start(&["net", "--max-flows", "64"], &api);
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&api).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the API socket is the owner's only");
    assert_eq!(d.json("GET", "/vnfs", None, 200), serde_json::json!([]));

    let mut a = create(&d, "alpha");
    let mut b = create(&d, "beta");
    assert_eq!(forward(&mut a, 100), 100);
    assert_eq!(forward(&mut b, 100), 100);
    let list = d.json("GET", "/vnfs", None, 200);
    let names: Vec<_> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].clone())
        .collect();
    assert_eq!(names, ["alpha", "beta"]);
    assert_eq!(list[0]["flows"], 1);

    // Bad requests: a 4xx with a message each.
    let sb = tmp("beta.sock").display().to_string();
    let ub = tmp("beta-u1.sock").display().to_string();
    let big = format!(
        r#"{{"socket": "/tmp/x", "pad": "{}"}}"#,
        "x".repeat(2 << 20)
    );
    let many_rules = format!(
        r#"{{"ingress": {{"rules": [{}]}}}}"#,
        vec![r#"{"action": "deny"}"#; 1025].join(",")
    );
    let fresh = tmp("fresh.sock").display().to_string();
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
            format!(r#"{{"socket": "{fresh}", "uplinks": ["veth:x"]}}"#),
            400,
            "unknown uplink",
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
            format!(r#"{{"socket": "{ub}"}}"#),
            409,
            "in use",
        ),
        (
            "PUT",
            "/vnfs/gamma",
            format!(r#"{{"socket": "{fresh}", "uplinks": ["vhost:{fresh}"]}}"#),
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
        (
            "PUT",
            "/vnfs/gamma",
            format!(r#"{{"socket": "{fresh}", "max_flows": 1073741824}}"#),
            422,
            "out of range",
        ),
        ("PUT", "/vnfs/gamma", big, 413, "over"),
        ("GET", "/vnfs/nope", String::new(), 404, "no vNF named"),
        ("DELETE", "/vnfs/nope", String::new(), 404, "no vNF named"),
        (
            "GET",
            "/vnfs/nope/stats",
            String::new(),
            404,
            "no vNF named",
        ),
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
        ("PUT", "/vnfs/beta/policy", many_rules, 422, "at most 1024"),
        ("POST", "/vnfs", "{}".to_string(), 405, "not allowed"),
        ("PATCH", "/vnfs/beta", "{}".to_string(), 405, "not allowed"),
        ("GET", "/nowhere", String::new(), 404, "no such resource"),
    ] {
        d.expect_error(method, path, &body, status, msg);
    }
    assert!(
        !std::path::Path::new(&fresh).exists(),
        "nothing was left behind"
    );

    // Delete alpha while beta forwards: beta's traffic goes on, alpha's sockets are gone.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let Vnf {
        ft: ft_b,
        up1,
        mut up2,
    } = b;
    let sender = {
        let (stop, sent) = (stop.clone(), sent.clone());
        let mut up1 = up1;
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                up1.send(&frame(i)).unwrap();
                sent.fetch_add(1, Ordering::Relaxed);
                i += 1;
                if i % 32 == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            up1
        })
    };
    let receiver = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut got = 0u64;
            let mut buf = vec![0u8; 2048];
            let mut idle = Instant::now();
            while !stop.load(Ordering::Relaxed) || idle.elapsed() < Duration::from_millis(500) {
                if up2
                    .recv(&mut buf, Some(Duration::from_millis(20)))
                    .unwrap()
                    .is_some()
                {
                    got += 1;
                    idle = Instant::now();
                }
            }
            (up2, got)
        })
    };
    // Scrape while the traffic runs: the independent parser takes it, counters only grow.
    let mut last = 0.0;
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(150));
        let (code, text) = d.call("GET", "/metrics", None);
        assert_eq!(code, 200);
        let s = parse_metrics(&text);
        let rx = sample(
            &s,
            "dpacc_vnf_port_rx_packets_total",
            &[("vnf", "beta"), ("port", "1")],
        );
        assert!(rx >= last, "{rx} < {last}");
        last = rx;
    }
    assert!(last > 0.0, "traffic is counted while it runs");
    d.json("DELETE", "/vnfs/alpha", None, 204);
    for s in ["alpha.sock", "alpha-u1.sock", "alpha-u2.sock"] {
        assert!(!tmp(s).exists(), "{s} removed");
    }
    let before = sent.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        sent.load(Ordering::Relaxed) > before + 100,
        "beta keeps taking frames"
    );
    stop.store(true, Ordering::Relaxed);
    let _up1 = sender.join().unwrap();
    let (_up2, got) = receiver.join().unwrap();
    let sent = sent.load(Ordering::Relaxed);
    assert!(
        got * 100 >= sent * 99,
        "beta forwarded while alpha was deleted: {got} of {sent}"
    );
    // alpha's clients see their connections closed.
    let mut buf = vec![0u8; 2048];
    assert!(
        a.up1.send(&frame(0)).is_err()
            || a.up2
                .recv(&mut buf, Some(Duration::from_millis(200)))
                .map_or(true, |r| r.is_none()),
        "alpha no longer forwards"
    );
    assert!(a.ft.hello().is_err(), "alpha's vNF lost its instance");

    // The numbers agree: the vNF's own flow counter (its control protocol), the API's
    // statistics, and the metrics parsed by prometheus_client.
    let mut ft_b = ft_b;
    let total = 100 + sent;
    let t = Instant::now();
    let samples = loop {
        let s = parse_metrics(&d.call("GET", "/metrics", None).1);
        let m = |n: &str| sample(&s, n, &[("vnf", "beta"), ("port", "1")]) as u64;
        if m("dpacc_vnf_port_rx_packets_total") == total || t.elapsed() > Duration::from_secs(5) {
            break s;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let fs = ft_b.stats(1).unwrap();
    assert_eq!(fs.packets, total, "the flow counted every frame");
    let m = |name: &str, l: &[(&str, &str)]| sample(&samples, name, l) as u64;
    let beta = |port: &'static str| [("vnf", "beta"), ("port", port)];
    assert_eq!(m("dpacc_vnf_port_rx_packets_total", &beta("1")), fs.packets);
    assert_eq!(m("dpacc_vnf_port_rx_bytes_total", &beta("1")), fs.bytes);
    // What left uplink 2 is what its peer received; the rest found its RX ring full and is
    // counted as dropped there.
    let tx = m("dpacc_vnf_port_tx_packets_total", &beta("2"));
    let dropped = m("dpacc_vnf_port_tx_dropped_total", &beta("2"));
    assert_eq!(tx, 100 + got);
    assert_eq!(tx + dropped, fs.packets);
    assert_eq!(m("dpacc_vnf_port_tx_bytes_total", &beta("2")), tx * 60);
    let drops = |r: &'static str| m("dpacc_vnf_drops_total", &[("vnf", "beta"), ("reason", r)]);
    assert_eq!(drops("no_rx_buffer"), dropped);
    assert_eq!(drops("flow") + drops("policy") + drops("bad_tx"), 0);
    assert_eq!(m("dpacc_vnf_flows", &[("vnf", "beta")]), 1);
    assert_eq!(m("dpacc_vnf_misses_total", &[("vnf", "beta")]), 0);
    assert_eq!(m("dpacc_vnfs", &[]), 1);
    assert_eq!(
        m("dpacc_vnf_port_rx_packets_total", &[("vnf", "alpha")]),
        0,
        "alpha is gone"
    );
    let st = d.json("GET", "/vnfs/beta/stats", None, 200);
    assert_eq!(st["flow_list"][0]["packets"], fs.packets);
    assert_eq!(st["ports"][1]["rx_packets"], fs.packets);
    assert_eq!(st["ports"][2]["tx_packets"], tx);
    assert!(st["control_frames"].as_u64().unwrap() >= 3);

    // A vNF of the same name and sockets can be created again.
    let mut a = create(&d, "alpha");
    assert_eq!(forward(&mut a, 10), 10);
    drop(a);
    assert!(d.terminate(), "clean exit on SIGTERM");
    assert!(!api.exists(), "API socket removed");
    for s in ["alpha.sock", "beta.sock", "beta-u1.sock"] {
        assert!(!tmp(s).exists(), "{s} removed");
    }
}

#[test]
fn sighup_is_survived_and_sigterm_stops_cleanly() {
    if !have("curl", &["--version"]) {
        return;
    }
    let api = tmp("hup-api.sock");
    let sock = tmp("hup.sock");
    let mut d = Daemon::start(
        &[
            "net",
            "--port",
            &format!("name=hup,socket={}", sock.display()),
        ],
        &api,
    );
    d.wait_for(&sock);
    // A second daemon on the same API socket refuses to start (the live socket stays).
    let st = std::process::Command::new(common::api::backend_bin())
        .args(["net", "--api-socket"])
        .arg(&api)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!st.success(), "a live API socket is not taken over");
    let mut ft = FlowTable::new(
        VirtioNetPort::connect(&sock, NetOptions::default()).unwrap(),
        [2, 0, 0, 0, 0, 9],
    );
    ft.hello().unwrap();
    for _ in 0..3 {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(d.child.id() as i32, libc::SIGHUP) };
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        d.child.try_wait().unwrap().is_none(),
        "SIGHUP does not kill it"
    );
    assert_eq!(d.json("GET", "/vnfs", None, 200)[0]["name"], "hup");
    ft.hello().unwrap();
    assert!(d.terminate(), "exit status 0 on SIGTERM");
    assert!(!api.exists() && !sock.exists(), "sockets removed");
    assert!(ft.hello().is_err(), "the connection was closed");
}

/// `dpacc-backend crypto --queues 2` with an API socket, and a guest-library client on it.
fn crypto_daemon(name: &str) -> (Daemon, dpacc::guest::CryptoDevice) {
    let sock = tmp(&format!("{name}.sock"));
    let d = Daemon::start(
        &[
            "crypto",
            "--socket",
            &sock.display().to_string(),
            "--queues",
            "2",
        ],
        &tmp(&format!("{name}-api.sock")),
    );
    d.wait_for(&sock);
    let dev = dpacc::guest::CryptoDevice::connect(&sock, dpacc::guest::Options::default()).unwrap();
    (d, dev)
}

#[test]
fn the_crypto_daemon_serves_metrics_and_stats() {
    if !have("curl", &["--version"]) || !have("python3", &["-c", "import prometheus_client"]) {
        return;
    }
    let (d, dev) = crypto_daemon("crypto");
    let key = [7u8; 16];
    let s = dev
        .create_session(&dpacc::spec::SessionParams::Aead {
            alg: dpacc::spec::AeadAlg::AesGcm,
            key: &key,
            tag_len: 16,
            dir: dpacc::spec::Direction::Encrypt,
        })
        .unwrap();
    for _ in 0..10 {
        s.encrypt(&[1u8; 12], &[], &[0u8; 100]).unwrap();
    }
    let st = d.json("GET", "/stats", None, 200);
    let ops: u64 = st["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["operations"].as_u64().unwrap())
        .sum();
    assert_eq!(ops, 10);
    assert_eq!(st["sessions"]["open"], 1);
    let samples = parse_metrics(&d.call("GET", "/metrics", None).1);
    assert_eq!(
        sample(&samples, "dpacc_crypto_queue_operations_total", &[]),
        10.0
    );
    assert_eq!(
        sample(&samples, "dpacc_crypto_queue_errors_total", &[]),
        0.0
    );
    assert!(sample(&samples, "dpacc_crypto_queue_bytes_total", &[]) >= 1000.0);
    assert_eq!(sample(&samples, "dpacc_crypto_sessions", &[]), 1.0);
    assert_eq!(
        sample(&samples, "dpacc_crypto_sessions_created_total", &[]),
        1.0
    );
    assert_eq!(d.call("GET", "/vnfs", None).0, 404);
}

/// One AEAD request's bytes as the device counts them (spec/api.md): readable request header
/// (72), IV, source and AAD; writable destination and status byte.
fn aead_bytes(iv: usize, src: usize, aad: usize, dst: usize) -> u64 {
    (72 + iv + src + aad + dst + 1) as u64
}

/// The per-session series of `session` (by id), each of the three counters.
fn session_series(
    samples: &[(String, serde_json::Map<String, serde_json::Value>, f64)],
    id: u64,
) -> Vec<(String, serde_json::Map<String, serde_json::Value>, f64)> {
    samples
        .iter()
        .filter(|(n, l, _)| {
            n.starts_with("dpacc_crypto_session_")
                && l.get("session").and_then(|v| v.as_str()) == Some(&id.to_string())
        })
        .cloned()
        .collect()
}

#[test]
fn the_crypto_daemon_counts_per_session_and_forgets_closed_sessions() {
    use dpacc::spec::{AeadAlg, Direction, SessionParams};
    if !have("curl", &["--version"]) || !have("python3", &["-c", "import prometheus_client"]) {
        return;
    }
    let (d, dev) = crypto_daemon("crypto-sess");
    // AES-256-GCM encrypt: GCM test case 16's key; ChaCha20-Poly1305 decrypt: RFC 8439 §2.8.2.
    let gcm_key = common::h("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308");
    let gcm = dev
        .create_session(&SessionParams::Aead {
            alg: AeadAlg::AesGcm,
            key: &gcm_key,
            tag_len: 16,
            dir: Direction::Encrypt,
        })
        .unwrap();
    let chacha_key: Vec<u8> = (0x80u8..0xa0).collect();
    let chacha = dev
        .create_session(&SessionParams::Aead {
            alg: AeadAlg::ChaCha20Poly1305,
            key: &chacha_key,
            tag_len: 16,
            dir: Direction::Decrypt,
        })
        .unwrap();

    // GCM: 7 × 100 bytes without AAD, 5 × 1000 bytes with 16 bytes of AAD; all OK.
    let mut gcm_bytes = 0;
    for (n, len, aad) in [(7, 100, 0), (5, 1000, 16)] {
        for i in 0..n {
            let ct = gcm
                .encrypt(&[i as u8; 12], &vec![3u8; aad], &vec![i as u8; len])
                .unwrap();
            assert_eq!(ct.len(), len + 16);
            gcm_bytes += aead_bytes(12, len, aad, len + 16);
        }
    }
    // ChaCha20-Poly1305: 4 valid ciphertexts (the RFC's answer each time), 3 forged tags.
    let nonce = common::h("070000004041424344454647");
    let aad = common::h("50515253c0c1c2c3c4c5c6c7");
    let sealed = common::h("d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d63dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b3692ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc3ff4def08e4b7a9de576d26586cec64b61161ae10b594f09e26a7e902ecbd0600691");
    let plain: &[u8] = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
    let mut forged = sealed.clone();
    *forged.last_mut().unwrap() ^= 1;
    for _ in 0..4 {
        assert_eq!(chacha.decrypt(&nonce, &aad, &sealed).unwrap(), plain);
    }
    for _ in 0..3 {
        assert!(chacha.decrypt(&nonce, &aad, &forged).is_err());
    }
    let chacha_bytes = 7 * aead_bytes(12, sealed.len(), aad.len(), plain.len());

    let (gid, cid) = (gcm.id(), chacha.id());
    // GET /stats lists both, with their labels and exact counts.
    let st = d.json("GET", "/stats", None, 200);
    assert_eq!(st["session_list_total"], 2);
    assert_eq!(st["session_list_truncated"], false);
    let listed = |st: &serde_json::Value, id: u64| {
        st["session_list"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"].as_u64() == Some(id))
            .cloned()
    };
    let g = listed(&st, gid).expect("GCM session listed");
    assert_eq!(
        (&g["connection"], &g["alg"], &g["op"], &g["fallback"]),
        (
            &1.into(),
            &"aes-256-gcm".into(),
            &"encrypt".into(),
            &false.into()
        )
    );
    assert_eq!(
        (&g["operations"], &g["errors"], &g["bytes"]),
        (&12.into(), &0.into(), &gcm_bytes.into())
    );
    let c = listed(&st, cid).expect("ChaCha session listed");
    assert_eq!(
        (&c["connection"], &c["alg"], &c["op"], &c["fallback"]),
        (
            &1.into(),
            &"chacha20-poly1305".into(),
            &"decrypt".into(),
            &false.into()
        )
    );
    assert_eq!(
        (&c["operations"], &c["errors"], &c["bytes"]),
        (&4.into(), &3.into(), &chacha_bytes.into())
    );
    // The queues saw exactly these requests.
    let queue_sum = |k: &str| -> u64 {
        st["queues"]
            .as_array()
            .unwrap()
            .iter()
            .map(|q| q[k].as_u64().unwrap())
            .sum()
    };
    assert_eq!(
        (
            queue_sum("operations"),
            queue_sum("errors"),
            queue_sum("bytes")
        ),
        (16, 3, gcm_bytes + chacha_bytes)
    );

    // /metrics, through the Python prometheus_client parser: the same numbers and labels.
    let samples = parse_metrics(&d.call("GET", "/metrics", None).1);
    let gs = gid.to_string();
    let cs = cid.to_string();
    for (id, alg, op, ops, errs, bytes) in [
        (&gs, "aes-256-gcm", "encrypt", 12.0, 0.0, gcm_bytes as f64),
        (
            &cs,
            "chacha20-poly1305",
            "decrypt",
            4.0,
            3.0,
            chacha_bytes as f64,
        ),
    ] {
        let l = [
            ("session", id.as_str()),
            ("connection", "1"),
            ("alg", alg),
            ("op", op),
            ("fallback", "false"),
        ];
        assert_eq!(
            sample(&samples, "dpacc_crypto_session_operations_total", &l),
            ops
        );
        assert_eq!(
            sample(&samples, "dpacc_crypto_session_errors_total", &l),
            errs
        );
        assert_eq!(
            sample(&samples, "dpacc_crypto_session_bytes_total", &l),
            bytes
        );
    }
    assert_eq!(session_series(&samples, gid).len(), 3);
    assert_eq!(session_series(&samples, cid).len(), 3);

    // Closing the ChaCha session takes its series away; its counts stay in the queues'.
    chacha.close().unwrap();
    let samples = parse_metrics(&d.call("GET", "/metrics", None).1);
    assert!(
        session_series(&samples, cid).is_empty(),
        "closed session's series gone"
    );
    assert_eq!(session_series(&samples, gid).len(), 3);
    assert_eq!(
        sample(&samples, "dpacc_crypto_queue_errors_total", &[]),
        3.0
    );
    let st = d.json("GET", "/stats", None, 200);
    assert_eq!(st["session_list_total"], 1);
    assert!(listed(&st, cid).is_none() && listed(&st, gid).is_some());

    // A new frontend connection: the old one's sessions are gone, the new one's carry the
    // next connection number.
    drop(gcm);
    drop(dev);
    let t = Instant::now();
    loop {
        let st = d.json("GET", "/stats", None, 200);
        if st["sessions"]["open"] == 0 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{st}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let sock = tmp("crypto-sess.sock");
    let dev = dpacc::guest::CryptoDevice::connect(&sock, dpacc::guest::Options::default()).unwrap();
    let again = dev
        .create_session(&SessionParams::Aead {
            alg: AeadAlg::AesGcm,
            key: &gcm_key[..16],
            tag_len: 16,
            dir: Direction::Decrypt,
        })
        .unwrap();
    let st = d.json("GET", "/stats", None, 200);
    let a = listed(&st, again.id()).expect("new session listed");
    assert_eq!(
        (&a["connection"], &a["alg"], &a["op"], &a["operations"]),
        (
            &2.into(),
            &"aes-128-gcm".into(),
            &"decrypt".into(),
            &0.into()
        )
    );
    assert_eq!(st["session_list_total"], 1);
}
