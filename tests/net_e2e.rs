//! The inline fast path end to end with real peers: `dpacc-backend net` (in-process) serves a
//! vNF port with two TAP uplinks that the test moves into two network namespaces; the kernel's
//! TCP stacks in those namespaces talk through the port. The vNF (this test, through the guest
//! library's virtio-user `VirtioNetPort` and `FlowTable`) sees the first packets as PACKET_IN,
//! installs flows, re-injects those packets with PACKET_OUT, and the rest of the connection
//! runs in the flow processor without it.
//!
//! Needs root, iproute2 and python3; otherwise SKIPPED (a failure with CI=true).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::netns::{connect, flow, must, Net};
use dpacc::guest::net::{Event, FlowTable, FrameIo, VirtioNetPort};
use dpacc::spec::fastpath::flow::{Action, Match, Prefix};
use dpacc::spec::fastpath::PortId;

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
fn one_backend_serves_several_vnf_ports_each_with_its_own_instance() {
    let dir = std::env::temp_dir();
    let id = std::process::id();
    let (a, b) = (
        dir.join(format!("dpacc-mp-{id}-a.sock")),
        dir.join(format!("dpacc-mp-{id}-b.sock")),
    );
    let mut child = Command::new(common::daemon::backend_bin())
        .args(["net", "--max-flows", "4", "--port"])
        .arg(format!("socket={}", a.display()))
        .arg("--port")
        .arg(format!("socket={}", b.display()))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !(a.exists() && b.exists()) {
        assert!(t.elapsed() < Duration::from_secs(10), "sockets not created");
        std::thread::sleep(Duration::from_millis(20));
    }
    let open = |p: &std::path::Path| {
        let port = VirtioNetPort::connect(p, dpacc::guest::net::NetOptions::default()).unwrap();
        let mac = port.mac();
        (FlowTable::new(port, mac), mac)
    };
    let (mut fa, mac_a) = open(&a);
    let (mut fb, mac_b) = open(&b);
    assert_ne!(mac_a, mac_b, "each port has its own MAC");
    fa.add_flow(flow(77, Match::default(), vec![Action::Drop]))
        .unwrap();
    assert_eq!(fa.list().unwrap().len(), 1);
    assert!(
        fb.list().unwrap().is_empty(),
        "port b's instance must not see port a's flow"
    );
    assert!(fb.stats(77).is_err());
    // b's quota is its own: four flows fit there although a already holds one.
    for c in 0..4 {
        fb.add_flow(flow(
            c,
            Match {
                dport: Some(c as u16),
                ..Match::default()
            },
            vec![Action::Drop],
        ))
        .unwrap();
    }
    // A frame that is not a control frame gets no control answer.
    fb.io().send(&[0xff; 60]).unwrap();
    assert_eq!(fb.list().unwrap().len(), 4);
    drop((fa, fb));
    // SAFETY: sending SIGTERM to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let st = child.wait().unwrap();
    assert!(st.success(), "clean shutdown on SIGTERM: {st:?}");
    assert!(!a.exists() && !b.exists(), "sockets removed");
}
