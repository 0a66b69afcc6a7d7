//! The inline fast path end to end with real peers: `dpacc-backend net` (in-process) serves a
//! vNF port with two TAP uplinks that the test moves into two network namespaces; the kernel's
//! TCP stacks in those namespaces talk through the port. The vNF (this test, through the guest
//! library's virtio-user `VirtioNetPort` and `FlowTable`) sees the first packets as PACKET_IN,
//! installs flows, re-injects those packets with PACKET_OUT, and the rest of the connection
//! runs in the flow processor without it.
//!
//! Needs root, iproute2 and python3; otherwise SKIPPED (a failure with CI=true).

use std::os::unix::net::UnixListener;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dpacc::backend::net::{serve, NetBackendConfig};
use dpacc::guest::net::{Event, FlowTable, FrameIo, NetOptions, VirtioNetPort};
use dpacc::spec::fastpath::flow::{Action, FlowSpec, Match, Prefix};
use dpacc::spec::fastpath::PortId;
use dpacc::sw::flow::SwFastPath;
use dpacc::sw::SwDriver;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

fn sh(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn must(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces, each holding one TAP uplink of the port, addressed 10.9.<n>.1/.2.
struct Net {
    ns: [String; 2],
    taps: [String; 2],
    socket: std::path::PathBuf,
    shutdown: Arc<EventFd>,
    backend: Option<std::thread::JoinHandle<()>>,
}

impl Net {
    fn start(tag: &str, subnet: u8) -> Option<Self> {
        let id = std::process::id() % 10_000;
        let ns = [format!("dpns{id}{tag}1"), format!("dpns{id}{tag}2")];
        let taps = [format!("dpt{id}{tag}1"), format!("dpt{id}{tag}2")];
        if !sh(&["ip", "netns", "add", &ns[0]]) {
            let msg = "SKIPPED: cannot create network namespaces (needs root and iproute2)";
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{msg} (CI=true: failure)"
            );
            eprintln!("{msg}");
            return None;
        }
        must(&["ip", "netns", "add", &ns[1]]);
        let socket = std::env::temp_dir().join(format!("dpacc-net-{id}-{tag}.sock"));
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket).unwrap();
        let shutdown = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
        let cfg = NetBackendConfig {
            uplinks: taps.to_vec(),
            max_flows: 64,
            queue_size: 256,
            mac: [0x52, 0x54, 0, 0xdc, 0xac, subnet],
            fastpath: Arc::new(SwFastPath::new(Arc::new(SwDriver::new()))),
        };
        let stop = shutdown.clone();
        let backend =
            std::thread::spawn(move || serve(&listener, cfg, &stop).expect("net backend"));
        let t = Instant::now();
        while !taps.iter().all(|n| sh(&["ip", "link", "show", "dev", n])) {
            assert!(t.elapsed() < Duration::from_secs(5), "TAPs not created");
            std::thread::sleep(Duration::from_millis(20));
        }
        for i in 0..2 {
            let (n, d) = (&ns[i], &taps[i]);
            let addr = format!("10.9.{subnet}.{}/24", i + 1);
            must(&["ip", "link", "set", d, "netns", n]);
            must(&["ip", "-n", n, "addr", "add", &addr, "dev", d]);
            must(&["ip", "-n", n, "link", "set", d, "up"]);
            must(&["ip", "-n", n, "link", "set", "lo", "up"]);
        }
        Some(Self {
            ns,
            taps,
            socket,
            shutdown,
            backend: Some(backend),
        })
    }

    fn mac_of(&self, i: usize) -> String {
        let out = Command::new("ip")
            .args([
                "-n",
                &self.ns[i],
                "-br",
                "link",
                "show",
                "dev",
                &self.taps[i],
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(2)
            .unwrap()
            .to_string()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = self.shutdown.write(1);
        if let Some(b) = self.backend.take() {
            let _ = b.join();
        }
        for n in &self.ns {
            let _ = sh(&["ip", "netns", "del", n]);
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

const SERVER: &str = r#"
import hashlib, http.server, sys
body = bytes((i * 7 + 3) % 251 for i in range(300000))
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header('Content-Length', str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
s = http.server.HTTPServer((sys.argv[1], int(sys.argv[2])), H)
print('ready', flush=True)
s.handle_request()
"#;

const CLIENT: &str = r#"
import hashlib, sys, time, urllib.request
for attempt in range(50):
    try:
        d = urllib.request.urlopen(sys.argv[1], timeout=20).read(); break
    except Exception as e:
        time.sleep(0.2)
else:
    print('failed', e); sys.exit(1)
print(len(d), hashlib.sha256(d).hexdigest())
"#;

fn expected() -> String {
    let out = Command::new("python3")
        .args(["-c", "import hashlib; b=bytes((i*7+3)%251 for i in range(300000)); print(len(b), hashlib.sha256(b).hexdigest())"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Runs server (ns2) and client (ns1) while the vNF answers PACKET_INs with `on_miss`;
/// returns (client output, PACKET_INs seen).
fn transfer(
    net: &Net,
    ft: &mut FlowTable<VirtioNetPort>,
    listen: (&str, u16),
    url: &str,
    mut on_miss: impl FnMut(&mut FlowTable<VirtioNetPort>, PortId, &[u8]),
) -> (String, usize) {
    let mut server = Command::new("ip")
        .args([
            "netns",
            "exec",
            &net.ns[1],
            "python3",
            "-c",
            SERVER,
            listen.0,
            &listen.1.to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "ready");
    let client = Command::new("ip")
        .args(["netns", "exec", &net.ns[0], "python3", "-c", CLIENT, url])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut misses = 0;
    let t = Instant::now();
    let client = std::thread::spawn(move || client.wait_with_output().unwrap());
    while !client.is_finished() && t.elapsed() < Duration::from_secs(40) {
        if let Some(Event::PacketIn { in_port, frame, .. }) =
            ft.next_event(Duration::from_millis(50)).unwrap()
        {
            misses += 1;
            on_miss(ft, in_port, &frame);
        }
    }
    let out = client.join().unwrap();
    let _ = server.kill();
    let _ = server.wait();
    (
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        misses,
    )
}

fn flow(cookie: u64, m: Match, actions: Vec<Action>) -> FlowSpec {
    FlowSpec {
        table: 0,
        priority: 10,
        cookie,
        m,
        actions,
        idle_timeout_ns: 0,
        hard_timeout_ns: 0,
        notify_expiry: false,
    }
}

fn connect(net: &Net) -> FlowTable<VirtioNetPort> {
    let port = VirtioNetPort::connect(&net.socket, NetOptions::default()).expect("virtio-user net");
    assert!(port.mrg_rxbuf());
    let mac = [0x02, 0, 0, 0, 0x0f, 0x01];
    let mut ft = FlowTable::new(port, mac);
    assert_eq!(ft.hello().unwrap(), (8, 64));
    ft
}

#[test]
fn tcp_through_the_fast_path_after_the_first_packets() {
    let Some(net) = Net::start("f", 1) else {
        return;
    };
    let mut ft = connect(&net);
    let mut installed = [false; 2];
    let (got, misses) = transfer(
        &net,
        &mut ft,
        ("10.9.1.2", 8080),
        "http://10.9.1.2:8080/",
        |ft, in_port, frame| {
            let i = usize::from(in_port.0) - 1;
            let out = PortId(3 - in_port.0);
            if !installed[i] {
                let m = Match {
                    in_port: Some(in_port.0),
                    ..Match::default()
                };
                ft.add_flow(flow(in_port.0.into(), m, vec![Action::Output(out)]))
                    .unwrap();
                installed[i] = true;
            }
            ft.packet_out(out, false, frame).unwrap();
        },
    );
    assert_eq!(
        got,
        expected(),
        "the HTTP body crossed the fast path intact"
    );
    let (a, b) = (ft.stats(1).unwrap(), ft.stats(2).unwrap());
    eprintln!("PACKET_INs seen by the vNF: {misses}; flow counters: {a:?} {b:?}");
    assert!(
        (1..20).contains(&misses),
        "the vNF saw only the first packets ({misses})"
    );
    assert!(
        a.packets + b.packets > 100,
        "the connection ran in the flow processor"
    );
    assert!(a.bytes + b.bytes > 300_000);
}

#[test]
fn nat_to_a_virtual_ip_with_real_tcp() {
    let Some(net) = Net::start("n", 2) else {
        return;
    };
    let mut ft = connect(&net);
    // ns1 reaches the virtual IP 10.9.2.100:80 at ns2's MAC; the vNF maps it to 10.9.2.2:8080.
    let mac2 = net.mac_of(1);
    must(&[
        "ip",
        "-n",
        &net.ns[0],
        "neigh",
        "add",
        "10.9.2.100",
        "lladdr",
        &mac2,
        "dev",
        &net.taps[0],
    ]);
    let pfx = |a: &str| {
        Some(Prefix {
            addr: a.parse().unwrap(),
            len: 32,
        })
    };
    ft.add_flow(flow(
        1,
        Match {
            in_port: Some(1),
            eth_type: Some(0x0806),
            ..Match::default()
        },
        vec![Action::Output(PortId(2))],
    ))
    .unwrap();
    ft.add_flow(flow(
        2,
        Match {
            in_port: Some(2),
            eth_type: Some(0x0806),
            ..Match::default()
        },
        vec![Action::Output(PortId(1))],
    ))
    .unwrap();
    let mut done = false;
    let (got, misses) = transfer(
        &net,
        &mut ft,
        ("10.9.2.2", 8080),
        "http://10.9.2.100:80/",
        |ft, in_port, frame| {
            if !done && in_port == PortId(1) && frame.len() > 34 && frame[23] == 6 {
                ft.add_flow(flow(
                    3,
                    Match {
                        in_port: Some(1),
                        eth_type: Some(0x0800),
                        dst: pfx("10.9.2.100"),
                        proto: Some(6),
                        dport: Some(80),
                        ..Match::default()
                    },
                    vec![
                        Action::SetIpv4Dst("10.9.2.2".parse().unwrap()),
                        Action::SetL4Dst(8080),
                        Action::Output(PortId(2)),
                    ],
                ))
                .unwrap();
                ft.add_flow(flow(
                    4,
                    Match {
                        in_port: Some(2),
                        eth_type: Some(0x0800),
                        src: pfx("10.9.2.2"),
                        proto: Some(6),
                        sport: Some(8080),
                        ..Match::default()
                    },
                    vec![
                        Action::SetIpv4Src("10.9.2.100".parse().unwrap()),
                        Action::SetL4Src(80),
                        Action::Output(PortId(1)),
                    ],
                ))
                .unwrap();
                done = true;
            }
            if done && in_port == PortId(1) {
                // Re-inject the first packet through the tables (now translated).
                ft.packet_out(in_port, true, frame).unwrap();
            }
        },
    );
    assert_eq!(
        got,
        expected(),
        "the body arrived through the NAT (checksums fixed, or TCP would drop it)"
    );
    let (a, b) = (ft.stats(3).unwrap(), ft.stats(4).unwrap());
    eprintln!("NAT: PACKET_INs {misses}; forward {a:?}, reverse {b:?}");
    assert!(a.packets > 10 && b.packets > 10);
}

#[test]
fn control_frames_reach_only_their_own_instance() {
    // Two ports = two backends (one per vNF); flows added on one are invisible on the other.
    let Some(n1) = Net::start("a", 3) else {
        return;
    };
    let Some(n2) = Net::start("b", 4) else {
        return;
    };
    let mut f1 = connect(&n1);
    let mut f2 = connect(&n2);
    f1.add_flow(flow(77, Match::default(), vec![Action::Drop]))
        .unwrap();
    assert_eq!(f1.stats(77).unwrap().packets, 0);
    assert!(
        f2.stats(77).is_err(),
        "port 2's instance must not see port 1's flow"
    );
    // A frame that is not a control frame is not answered as one.
    f2.io().send(&[0xff; 60]).unwrap();
    assert!(f2.stats(77).is_err());
}
