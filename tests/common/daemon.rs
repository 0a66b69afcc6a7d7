//! The real `dpacc-backend` binary as a child process: built on demand, its stderr kept for
//! diagnostics, its memory (VmRSS) readable, stopped with SIGTERM on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `dpacc-backend` binary (built here: the root package cannot name another package's
/// binary).
pub fn backend_bin() -> PathBuf {
    let st = Command::new(env!("CARGO"))
        .args([
            "build",
            "-q",
            "-p",
            "dpacc-backend",
            "--bin",
            "dpacc-backend",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target"),
        Into::into,
    );
    target.join("debug/dpacc-backend")
}

/// A running `dpacc-backend`.
pub struct Daemon {
    child: Child,
    log: PathBuf,
    sockets: Vec<PathBuf>,
}

impl Daemon {
    /// Starts `dpacc-backend ARGS` and waits until every path in `sockets` exists.
    pub fn start(args: &[&str], sockets: &[&Path]) -> Self {
        let log = std::env::temp_dir().join(format!(
            "dpacc-daemon-{}-{}.log",
            std::process::id(),
            sockets
                .first()
                .and_then(|s| s.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        ));
        for s in sockets {
            let _ = std::fs::remove_file(s);
        }
        let child = Command::new(backend_bin())
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut d = Self {
            child,
            log,
            sockets: sockets.iter().map(|s| s.to_path_buf()).collect(),
        };
        let t = Instant::now();
        while !sockets.iter().all(|s| s.exists()) {
            assert!(d.alive(), "dpacc-backend exited early:\n{}", d.stderr());
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "sockets not created:\n{}",
                d.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    /// Still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Asserts it still runs (with its log if not).
    pub fn assert_alive(&mut self, when: &str) {
        if !self.alive() {
            let st = self.child.wait().unwrap();
            panic!("dpacc-backend died {when} ({st}):\n{}", self.stderr());
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory in KiB (VmRSS).
    pub fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// What it logged so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits up to `timeout` for a log line containing `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        self.wait_for_logs(needle, 1, timeout)
    }

    /// Waits up to `timeout` until `n` log lines contain `needle`.
    pub fn wait_for_logs(&self, needle: &str, n: usize, timeout: Duration) -> bool {
        let t = Instant::now();
        while t.elapsed() < timeout {
            if self.stderr().lines().filter(|l| l.contains(needle)).count() >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Stops it with SIGTERM; returns everything it logged.
    pub fn stop(mut self) -> String {
        self.terminate();
        self.stderr()
    }

    fn terminate(&mut self) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t = Instant::now();
        while self.alive() && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.terminate();
        for s in &self.sockets {
            let _ = std::fs::remove_file(s);
        }
        if std::thread::panicking() {
            eprintln!("--- dpacc-backend log:\n{}", self.stderr());
        }
        let _ = std::fs::remove_file(&self.log);
    }
}
