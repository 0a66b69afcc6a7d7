//! `dpacc flow` against a real `dpacc-backend net` port (in-process, software fast path, no
//! uplinks) over virtio-user: each command is a new frontend connection, and the port's
//! flow-processor instance keeps its flows across them.

use std::os::unix::net::UnixListener;
use std::process::Command;
use std::sync::Arc;

use dpacc_backend::net::{serve, NetBackendConfig};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

fn dpacc(sock: &str, args: &[&str]) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_dpacc"))
        .args(["flow", "--socket", sock])
        .args(args)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn add_stats_del_info_and_clear_errors() {
    let path = std::env::temp_dir().join(format!("dpacc-flowcli-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    let stop = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let stop2 = stop.clone();
    let backend = std::thread::spawn(move || {
        let cfg = NetBackendConfig {
            uplinks: vec![],
            quotas: dpacc_spec::fastpath::Quotas {
                flows: 2,
                ..Default::default()
            },
            keep_detached: std::time::Duration::from_secs(300),
            queue_size: 256,
            mac: [0x52, 0x54, 0, 1, 2, 3],
            fastpath: Arc::new(dpacc_sw::flow::SwFastPath::new(Arc::new(
                dpacc_sw::SwDriver::new(),
            ))),
            busy_poll: std::time::Duration::from_micros(50),
            queue_pairs: 1,
        };
        serve(&listener, cfg, &stop2).unwrap();
    });
    let s = path.to_str().unwrap();
    let (code, out, err) = dpacc(s, &["info"]);
    assert_eq!((code, err.as_str()), (0, ""));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert_eq!(lines[0], "8 tables, at most 2 flows");
    assert_eq!(
        lines[1],
        "flows 0/2, groups 0/1024, buckets 0/16384, SAs 0/1024, at most 16 actions per list"
    );
    assert!(
        lines[2].starts_with("memory ") && lines[2].contains(" KiB of at most "),
        "{out}"
    );
    let add = |cookie: &str, m: &str, a: &str| {
        dpacc(
            s,
            &["add", "--cookie", cookie, "--match", m, "--actions", a],
        )
    };
    assert_eq!(
        add(
            "1",
            "ip,tcp,nw_dst=10.0.0.0/8,tp_dst=80",
            "set_nw_dst:10.1.1.1,set_tp_dst:8080,output:0"
        )
        .0,
        0
    );
    assert_eq!(add("2", "arp", "output:0").0, 0);
    let (code, _, err) = add("3", "udp", "drop");
    assert_eq!(code, 1);
    assert!(err.contains("flow quota exceeded (2 flows)"), "{err}");
    let (code, _, err) = add("4", "in_port=1", "output:5");
    assert_eq!(code, 1);
    assert!(
        err.contains("output to a port this instance does not have"),
        "{err}"
    );
    let (code, _, err) = add("5", "colour=blue", "drop");
    assert_eq!(code, 2);
    assert!(err.contains("unknown match field 'colour=blue'"), "{err}");
    assert_eq!(
        dpacc(s, &["stats", "--cookie", "1"]).1,
        "cookie 1: 0 packets, 0 bytes\n"
    );
    assert_eq!(
        dpacc(s, &["list"]).1,
        "2 flows\ncookie 1 table 0 priority 100: 0 packets, 0 bytes\ncookie 2 table 0 priority 100: 0 packets, 0 bytes\n"
    );
    assert_eq!(dpacc(s, &["del", "--cookie", "1"]).0, 0);
    let (code, _, err) = dpacc(s, &["stats", "--cookie", "1"]);
    assert_eq!(code, 1);
    assert!(err.contains("not found: flow with cookie 1"), "{err}");
    // SAs and groups for esp_encap / esp_decap / group actions.
    let key = "000102030405060708090a0b0c0d0e0f";
    let (code, out, err) = dpacc(
        s,
        &[
            "sa",
            "--spi",
            "0x100",
            "--key",
            key,
            "--salt",
            "01020304",
            "--tunnel",
            "192.0.2.1,192.0.2.2",
        ],
    );
    assert_eq!(
        (code, out.as_str()),
        (0, "outbound SA 0x100 installed\n"),
        "{err}"
    );
    let (code, out, _) = dpacc(
        s,
        &["sa", "--spi", "256", "--key", key, "--salt", "01020304"],
    );
    assert_eq!((code, out.as_str()), (0, "inbound SA 0x100 installed\n"));
    let (code, _, err) = dpacc(s, &["sa", "--spi", "1", "--key", key, "--salt", "0102"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--salt must be 4 bytes"), "{err}");
    let (code, _, err) = dpacc(
        s,
        &["sa", "--spi", "1", "--key", "0011", "--salt", "01020304"],
    );
    assert_eq!(
        code, 1,
        "a 2-byte AES key must be refused by the backend: {err}"
    );
    let (code, out, err) = dpacc(
        s,
        &[
            "group",
            "--id",
            "7",
            "--bucket",
            "1=set_nw_dst:10.0.0.2;output:0",
            "--bucket",
            "3=output:0",
        ],
    );
    assert_eq!(
        (code, out.as_str()),
        (0, "group 7 installed (2 buckets)\n"),
        "{err}"
    );
    let (code, _, err) = dpacc(s, &["group", "--id", "8", "--bucket", "x=output:0"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = dpacc(s, &["group", "--id", "8", "--bucket", "1=output:3"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("port this instance does not have"), "{err}");
    // bench net installs a hairpin flow (quota: one slot is free again) and gets every frame back.
    let o = Command::new(env!("CARGO_BIN_EXE_dpacc"))
        .args(["bench", "net", "--socket", s, "--seconds", "0.3"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let (got, rest) = text
        .trim_start_matches("net")
        .trim()
        .split_once(" of ")
        .unwrap();
    let sent = rest.split_whitespace().next().unwrap();
    assert_eq!(got, sent, "{text}");
    assert!(got.parse::<u64>().unwrap() > 0, "{text}");
    assert!(text.contains(&format!("(flow hits {got}; ")), "{text}");
    let _ = stop.write(1);
    backend.join().unwrap();
    let _ = std::fs::remove_file(&path);
}
