//! Network namespaces with TAP uplinks of an in-process `dpacc-backend net` port, for the
//! fast-path tests (needs root and iproute2; SKIPPED otherwise, a failure with CI=true).

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dpacc::backend::net::UplinkSpec;
use dpacc::guest::net::{FlowTable, NetOptions, VirtioNetPort};
use dpacc::spec::fastpath::flow::{Action, FlowSpec, Match};
use vmm_sys_util::eventfd::EventFd;

pub fn sh(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn must(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces, each holding one TAP uplink of the port, addressed 10.9.<n>.1/.2.
pub struct Net {
    /// The namespaces.
    pub ns: [String; 2],
    /// The TAP uplinks (port 1 in ns[0], port 2 in ns[1]).
    pub taps: [String; 2],
    /// The port's vhost-user socket.
    pub socket: std::path::PathBuf,
    shutdown: Arc<EventFd>,
    backend: Option<std::thread::JoinHandle<()>>,
}

impl Net {
    /// Starts a port with two TAP uplinks in two new namespaces, addressed 10.9.SUBNET.1/.2.
    pub fn start(tag: &str, subnet: u8) -> Option<Self> {
        Self::start_with(tag, subnet, 1)
    }

    /// The same with `queue_pairs` queue pairs (and workers; multi-queue TAPs when more than
    /// one).
    pub fn start_with(tag: &str, subnet: u8, queue_pairs: u16) -> Option<Self> {
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
        let (shutdown, backend) = super::vhost_net::spawn_backend(
            &socket,
            taps.iter().map(|t| UplinkSpec::Tap(t.clone())).collect(),
            64,
            256,
            [0x52, 0x54, 0, 0xdc, 0xac, subnet],
            queue_pairs,
        );
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

    /// The MAC address of TAP `i` (as `ip` prints it).
    pub fn mac_of(&self, i: usize) -> String {
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

/// A table-0 flow with priority 10 and no timeouts.
pub fn flow(cookie: u64, m: Match, actions: Vec<Action>) -> FlowSpec {
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

/// Connects the vNF (this process) to the port.
pub fn connect(net: &Net) -> FlowTable<VirtioNetPort> {
    let port = VirtioNetPort::connect(&net.socket, NetOptions::default()).expect("virtio-user net");
    assert!(port.mrg_rxbuf());
    let mac = [0x02, 0, 0, 0, 0x0f, 0x01];
    let mut ft = FlowTable::new(port, mac);
    assert_eq!(ft.hello().unwrap(), (8, 64));
    ft
}
