//! The real `dpacc-backend` binary with its management API, and a real HTTP client for it
//! (`curl --unix-socket`), for the operator tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dpacc::guest::net::{FrameIo, VirtioNetPort};

pub use super::daemon::backend_bin;

/// Whether `tool` runs (`tool --version`); without it the test is SKIPPED, or fails with
/// CI=true.
pub fn have(tool: &str, args: &[&str]) -> bool {
    if Command::new(tool)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        return true;
    }
    let msg = format!("SKIPPED: {tool} {args:?} does not run");
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{msg} (CI=true: failure; .ci/install-deps.sh installs it)"
    );
    eprintln!("{msg}");
    false
}

/// A running daemon with an API socket; SIGTERM and wait on drop.
pub struct Daemon {
    /// The child.
    pub child: Child,
    /// Its API socket.
    pub api: PathBuf,
}

impl Daemon {
    /// Starts `dpacc-backend ARGS --api-socket API` and waits for the API socket.
    pub fn start(args: &[&str], api: &Path) -> Self {
        let _ = std::fs::remove_file(api);
        let child = Command::new(backend_bin())
            .args(args)
            .arg("--api-socket")
            .arg(api)
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let t = Instant::now();
        while !api.exists() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "API socket not created"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            api: api.to_path_buf(),
        }
    }

    /// Waits (at most 10 s) until the daemon has created `socket` (a vNF or device socket).
    pub fn wait_for(&self, socket: &Path) {
        let t = Instant::now();
        while !socket.exists() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{} not created",
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `METHOD path` with an optional body through curl: (status, body).
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let mut c = Command::new("curl");
        c.args([
            "-s",
            "-S",
            "--max-time",
            "30",
            "-X",
            method,
            "--unix-socket",
        ])
        .arg(&self.api)
        .args(["-w", "\n%{http_code}"]);
        if body.is_some() {
            c.args([
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                "@-",
            ]);
            c.stdin(Stdio::piped());
        }
        c.arg(format!("http://localhost{path}"));
        c.stdout(Stdio::piped());
        let mut ch = c.spawn().unwrap();
        if let Some(b) = body {
            use std::io::Write;
            let mut stdin = ch.stdin.take().unwrap();
            stdin.write_all(b.as_bytes()).unwrap();
        }
        let out = ch.wait_with_output().unwrap();
        let s = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = s.rsplit_once('\n').unwrap_or(("", &s));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// `call`, asserting the status; the body as JSON (Null when empty).
    pub fn json(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        want: u16,
    ) -> serde_json::Value {
        let (code, b) = self.call(method, path, body);
        assert_eq!(code, want, "{method} {path}: {b}");
        if b.trim().is_empty() {
            return serde_json::Value::Null;
        }
        serde_json::from_str(&b).unwrap_or_else(|e| panic!("{method} {path}: {e}: {b}"))
    }

    /// `METHOD path` (with `body` unless it is empty) answered with status `want` and a JSON
    /// error whose message contains `msg`.
    pub fn expect_error(&self, method: &str, path: &str, body: &str, want: u16, msg: &str) {
        let (code, b) = self.call(method, path, (!body.is_empty()).then_some(body));
        assert_eq!(code, want, "{method} {path}: {b}");
        let v: serde_json::Value = serde_json::from_str(&b).unwrap_or_else(|e| panic!("{e}: {b}"));
        let e = v["error"].as_str().unwrap_or_default();
        assert!(e.contains(msg), "{method} {path}: {e}");
    }

    /// SIGTERM; returns whether it exited with status 0.
    pub fn terminate(&mut self) -> bool {
        // SAFETY: sending SIGTERM to our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().is_ok_and(|s| s.success())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.terminate();
        }
    }
}

/// Samples of a Prometheus text exposition as parsed by the Python `prometheus_client`
/// parser (an independent implementation): (name, labels, value).
pub fn parse_metrics(text: &str) -> Vec<(String, serde_json::Map<String, serde_json::Value>, f64)> {
    let py = "import sys, json\n\
              from prometheus_client.parser import text_string_to_metric_families as f\n\
              print(json.dumps([[s.name, s.labels, s.value] for m in f(sys.stdin.read()) for s in m.samples]))";
    let mut ch = Command::new("python3")
        .args(["-c", py])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        ch.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    }
    let out = ch.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused the exposition:\n{text}"
    );
    let v: Vec<(String, serde_json::Map<String, serde_json::Value>, f64)> =
        serde_json::from_slice(&out.stdout).unwrap();
    v
}

/// The sum of the samples named `name` whose labels include all of `labels`.
pub fn sample(
    samples: &[(String, serde_json::Map<String, serde_json::Value>, f64)],
    name: &str,
    labels: &[(&str, &str)],
) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).and_then(|x| x.as_str()) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

/// An Ethernet/IPv4/UDP frame (60 bytes) from 10.0.0.1:5000 to 10.0.0.2:`dport`, tagged with
/// `seq`.
pub fn udp_frame(seq: u32, dport: u16) -> Vec<u8> {
    let mut f = vec![0u8; 60];
    f[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 2]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f[14] = 0x45;
    f[16..18].copy_from_slice(&46u16.to_be_bytes());
    f[22] = 64;
    f[23] = 17;
    f[26..30].copy_from_slice(&[10, 0, 0, 1]);
    f[30..34].copy_from_slice(&[10, 0, 0, 2]);
    f[34..36].copy_from_slice(&5000u16.to_be_bytes());
    f[36..38].copy_from_slice(&dport.to_be_bytes());
    f[42..46].copy_from_slice(&seq.to_be_bytes());
    f
}

/// Sends `n` frames to UDP port `dport` from `from` (a vNF's uplink peer); how many came out
/// of `to` (what is still on its way is waited for: every frame, or none, the end being a
/// second of silence).
pub fn forward_udp(from: &mut VirtioNetPort, to: &mut VirtioNetPort, n: u32, dport: u16) -> u32 {
    let mut got = 0;
    let mut buf = vec![0u8; 2048];
    for i in 0..n {
        from.send(&udp_frame(i, dport)).unwrap();
        while let Some(len) = to.recv(&mut buf, Some(Duration::ZERO)).unwrap() {
            assert_eq!(len, 60);
            got += 1;
        }
    }
    while got < n
        && to
            .recv(&mut buf, Some(Duration::from_secs(1)))
            .unwrap()
            .is_some()
    {
        got += 1;
    }
    got
}
