//! An in-process `dpacc-backend net` vNF port whose uplinks are further vhost-user virtio-net
//! ports (no root needed), and the DPDK `dpdk-testpmd` peer for them.

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dpacc::backend::net::{serve, NetBackendConfig, UplinkSpec};
use dpacc::spec::fastpath::Quotas;
use dpacc::sw::flow::SwFastPath;
use dpacc::sw::SwDriver;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// A vNF port with `n` vhost-user uplinks (ports 1..=n), stopped on drop.
pub struct VhostNet {
    /// The vNF port's socket.
    pub vnf: PathBuf,
    /// The uplinks' sockets.
    pub uplinks: Vec<PathBuf>,
    shutdown: Arc<EventFd>,
    backend: Option<std::thread::JoinHandle<()>>,
}

impl VhostNet {
    /// Starts it; sockets are named after `tag`.
    pub fn start(tag: &str, n: usize, max_flows: usize) -> Self {
        let dir = std::env::temp_dir();
        let id = std::process::id();
        let vnf = dir.join(format!("dpacc-vn-{id}-{tag}.sock"));
        let uplinks: Vec<PathBuf> = (1..=n)
            .map(|k| dir.join(format!("dpacc-vn-{id}-{tag}-u{k}.sock")))
            .collect();
        let (shutdown, backend) = spawn_backend(
            &vnf,
            uplinks.iter().cloned().map(UplinkSpec::Vhost).collect(),
            max_flows,
            1024,
            [0x52, 0x54, 0, 0xdc, 0xac, 0x01],
            1,
        );
        let t = Instant::now();
        while !uplinks.iter().all(|u| u.exists()) {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "uplink sockets not bound"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Self {
            vnf,
            uplinks,
            shutdown,
            backend: Some(backend),
        }
    }
}

/// Serves a vNF port on `socket` (a stale file is replaced) with these uplinks, on the
/// software fast path with `queue_pairs` pairs (and workers), from a thread of the test
/// process; fire the eventfd to stop it.
pub fn spawn_backend(
    socket: &Path,
    uplinks: Vec<UplinkSpec>,
    max_flows: usize,
    queue_size: u16,
    mac: [u8; 6],
    queue_pairs: u16,
) -> (Arc<EventFd>, std::thread::JoinHandle<()>) {
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket).unwrap();
    let shutdown = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let cfg = NetBackendConfig {
        uplinks,
        quotas: Quotas {
            flows: max_flows,
            ..Quotas::default()
        },
        keep_detached: Duration::from_secs(300),
        queue_size,
        mac,
        fastpath: Arc::new(SwFastPath::new(Arc::new(SwDriver::new()))),
        busy_poll: Duration::from_micros(50),
        queue_pairs,
    };
    let stop = shutdown.clone();
    let backend = std::thread::spawn(move || serve(&listener, cfg, &stop).expect("net backend"));
    (shutdown, backend)
}

impl Drop for VhostNet {
    fn drop(&mut self) {
        let _ = self.shutdown.write(1);
        if let Some(b) = self.backend.take() {
            let _ = b.join();
        }
        let _ = std::fs::remove_file(&self.vnf);
    }
}

/// `dpdk-testpmd`, with 2 MiB hugepages reserved and mounted (needs root): `Some(path)`, or
/// None after printing SKIPPED (a failure with CI=true, where `.ci/run` installs Debian's
/// dpdk-dev).
pub fn testpmd_or_skip() -> Option<&'static str> {
    let skip = |why: &str| {
        let msg = format!("SKIPPED: {why}");
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{msg} (CI=true: failure)"
        );
        eprintln!("{msg}");
        None
    };
    let bin = "dpdk-testpmd";
    if Command::new(bin).arg("--version").output().is_err() {
        return skip("dpdk-testpmd not installed (Debian package dpdk-dev)");
    }
    if let Err(e) = ensure_hugepages(256) {
        return skip(&format!("no hugepages for DPDK: {e}"));
    }
    Some(bin)
}

fn free_hugepages() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("HugePages_Free:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Why hugepages could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum HugepagesError {
    /// Writing `nr_hugepages` failed.
    #[error("reserving hugepages: {0}")]
    Reserve(std::io::Error),
    /// The kernel reserved fewer than asked.
    #[error("only {0} free")]
    TooFew(u64),
    /// `/dev/hugepages` could not be created.
    #[error("{0}")]
    MountPoint(std::io::Error),
    /// `mount -t hugetlbfs` failed.
    #[error("cannot mount hugetlbfs")]
    Mount,
}

/// Makes sure `pages` 2 MiB hugepages are free and hugetlbfs is mounted at /dev/hugepages.
pub fn ensure_hugepages(pages: u64) -> Result<(), HugepagesError> {
    if free_hugepages() < pages {
        let total: u64 = std::fs::read_to_string("/proc/sys/vm/nr_hugepages")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        std::fs::write("/proc/sys/vm/nr_hugepages", (total + pages).to_string())
            .map_err(HugepagesError::Reserve)?;
        if free_hugepages() < pages {
            return Err(HugepagesError::TooFew(free_hugepages()));
        }
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if !mounts.lines().any(|l| l.contains(" hugetlbfs ")) {
        std::fs::create_dir_all("/dev/hugepages").map_err(HugepagesError::MountPoint)?;
        let ok = Command::new("mount")
            .args(["-t", "hugetlbfs", "nodev", "/dev/hugepages"])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err(HugepagesError::Mount);
        }
    }
    Ok(())
}

/// Port statistics from testpmd's `show port stats all`: (RX-packets, TX-packets) per port.
pub fn parse_port_stats(out: &str) -> Vec<(u64, u64)> {
    let mut ports = Vec::new();
    let num = |l: &str, key: &str| -> Option<u64> {
        let i = l.find(key)? + key.len();
        l[i..].split_whitespace().next()?.parse().ok()
    };
    let mut rx = None;
    let mut inside = false;
    for l in out.lines() {
        if l.contains("NIC statistics for port") {
            inside = true;
            rx = None;
        }
        if !inside {
            continue;
        }
        if let Some(v) = num(l, "RX-packets:") {
            rx = Some(v);
        }
        if let (Some(r), Some(t)) = (rx, num(l, "TX-packets:")) {
            ports.push((r, t));
            rx = None;
            inside = false;
        }
    }
    ports
}
