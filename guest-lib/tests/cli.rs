//! The `dpacc` CLI against a real `dpacc-backend` daemon (in-process, software driver) over a
//! real unix socket. Expected outputs were computed with Python's `cryptography`, `hashlib` and
//! `hmac` modules, an independent implementation.

use std::io::Write;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};

use dpacc_backend::{serve, CryptoBackendConfig};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// One backend for the whole test binary (it serves one client after another).
fn backend() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("dpacc-cli-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let config = CryptoBackendConfig {
            queues: 2,
            queue_size: 256,
            max_sessions: 64,
            driver: Arc::new(dpacc_sw::SwDriver::new()),
            busy_poll: std::time::Duration::from_micros(50),
        };
        std::thread::spawn(move || {
            let never = EventFd::new(EFD_NONBLOCK).unwrap();
            serve(&listener, config, &never).unwrap();
        });
        path
    })
}

/// Runs `dpacc` with `SOCK` in `args` replaced by the backend's socket; returns (exit code,
/// stdout, stderr). Clients run one at a time (the backend serves one frontend at a time).
fn cli(args: &[&str], stdin: &[u8]) -> (i32, Vec<u8>, String) {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let sock = backend().to_str().unwrap().to_owned();
    let args: Vec<&str> = args
        .iter()
        .map(|a| if *a == "SOCK" { sock.as_str() } else { a })
        .collect();
    let mut child = Command::new(env!("CARGO_BIN_EXE_dpacc"))
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The CLI may exit (usage error) before reading stdin.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    let o = child.wait_with_output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        o.stdout,
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn digest_prints_hex() {
    let (rc, out, err) = cli(&["digest", "--socket", "SOCK", "--alg", "sha256"], b"hello");
    assert_eq!(rc, 0, "{err}");
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824\n"
    );
    let (rc, out, err) = cli(
        &[
            "digest",
            "--socket",
            "SOCK",
            "--alg",
            "hmac-sha256",
            "--key",
            "4a656665",
        ],
        b"what do ya want for nothing?",
    );
    assert_eq!(rc, 0, "{err}");
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843\n"
    );
}

#[test]
fn aead_round_trip_and_authentication_failure() {
    let key = "00".repeat(16);
    let iv = "00".repeat(12);
    let gcm = |op: &'static str| {
        [
            "crypto",
            "--socket",
            "SOCK",
            "--alg",
            "aes-128-gcm",
            "--key",
            &key,
            "--iv",
            &iv,
            op,
        ]
        .map(str::to_owned)
    };
    let run = |args: [String; 10], input: &[u8]| {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        cli(&a, input)
    };
    let (rc, ct, err) = run(gcm("encrypt"), b"abc");
    assert_eq!(rc, 0, "{err}");
    assert_eq!(hex::encode(&ct), "62eab96033359197cf5649807d175e6059575c");
    let (rc, out, err) = run(gcm("decrypt"), &ct);
    assert_eq!((rc, out.as_slice()), (0, &b"abc"[..]), "{err}");
    // A forged ciphertext: exit 1, a clear message, nothing on stdout.
    let mut bad = ct.clone();
    bad[0] ^= 0xff;
    let (rc, out, err) = run(gcm("decrypt"), &bad);
    assert_eq!(rc, 1);
    assert!(out.is_empty());
    assert!(err.contains("authentication failed"), "{err}");
}

#[test]
fn encrypt_then_mac_chain() {
    let key = "00".repeat(16);
    let iv = "01".repeat(16);
    let args = |op| {
        vec![
            "crypto",
            "--socket",
            "SOCK",
            "--alg",
            "aes-128-cbc",
            "--key",
            &key,
            "--iv",
            &iv,
            "--auth-alg",
            "hmac-sha256",
            "--auth-key",
            "0102",
            op,
        ]
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>()
    };
    let run = |a: Vec<String>, input: &[u8]| {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        cli(&a, input)
    };
    let (rc, out, err) = run(args("encrypt"), &[0u8; 16]);
    assert_eq!(rc, 0, "{err}");
    assert_eq!(
        hex::encode(&out),
        "e14d5d0ee27715df08b4152ba23da8e0\
         1aa1b99fd4371384578e82e8cc3f7f2bdc21f42a3259ab0e9ac4ed7871ebfb2a"
    );
    let (rc, pt, err) = run(args("decrypt"), &out);
    assert_eq!((rc, pt), (0, vec![0u8; 16]), "{err}");
    let mut forged = out.clone();
    forged[20] ^= 1;
    let (rc, pt, err) = run(args("decrypt"), &forged);
    assert_eq!((rc, pt.len()), (1, 0), "{err}");
}

#[test]
fn usage_mistakes_exit_2_with_a_message() {
    let key = "00".repeat(16);
    let (rc, _, err) = cli(
        &[
            "crypto",
            "--socket",
            "SOCK",
            "--alg",
            "aes-128-gcm",
            "--key",
            &key,
            "--iv",
            "0011",
            "encrypt",
        ],
        b"x",
    );
    assert_eq!(rc, 2);
    assert!(
        err.contains("12-byte nonce") && !err.contains("panicked"),
        "{err}"
    );
    let (rc, _, err) = cli(
        &[
            "crypto",
            "--socket",
            "SOCK",
            "--alg",
            "aes-256-cbc",
            "--key",
            &key,
            "--iv",
            &"00".repeat(16),
            "encrypt",
        ],
        b"0123456789abcdef",
    );
    assert_eq!(rc, 2);
    assert!(err.contains("32-byte key"), "{err}");
    let (rc, _, err) = cli(
        &[
            "digest",
            "--socket",
            "/nonexistent/dpacc.sock",
            "--alg",
            "sha256",
        ],
        b"",
    );
    assert_ne!(rc, 0);
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bench_reports_device_software_and_ratio() {
    let (rc, out, err) = cli(
        &[
            "bench",
            "--socket",
            "SOCK",
            "--alg",
            "aes-128-cbc",
            "--size",
            "64",
            "--batch",
            "8",
            "--queues",
            "2",
            "--seconds",
            "0.2",
        ],
        b"",
    );
    assert_eq!(rc, 0, "{err}");
    let out = String::from_utf8(out).unwrap();
    assert!(
        out.contains("device") && out.contains("software") && out.contains("ratio"),
        "{out}"
    );
}

/// A sweep prints one case (raw before, device, raw before and after together, same-run ratio,
/// the backend workers' CPU) per size × mode × queue count, then a summary row each; --latency
/// prints percentiles per mode.
#[test]
fn bench_sweeps_cases_and_measures_latency() {
    let (rc, out, err) = cli(
        &[
            "bench",
            "--socket",
            "SOCK",
            "--alg",
            "aes-256-gcm",
            "--size",
            "64,1024",
            "--mode",
            "interrupt,poll",
            "--queues",
            "1,2",
            "--batch",
            "8",
            "--seconds",
            "0.1",
        ],
        b"",
    );
    assert_eq!(rc, 0, "{err}");
    let out = String::from_utf8(out).unwrap();
    let count = |p: &str| out.lines().filter(|l| l.starts_with(p)).count();
    assert_eq!(count("case "), 8, "{out}");
    assert_eq!(count("device "), 8, "{out}");
    assert_eq!(count("raw "), 8, "{out}");
    assert_eq!(count("before    raw "), 8, "{out}");
    assert_eq!(count("ratio     device/raw = "), 8, "{out}");
    // The raw figure is the runs before and after the device run together: its rate lies
    // between theirs, and both are the ones printed.
    let num = |s: &str| s.trim().parse::<f64>().unwrap();
    let befores: Vec<f64> = out
        .lines()
        .filter_map(|l| l.strip_prefix("before    raw "))
        .map(|l| num(l.split(" ops/s").next().unwrap()))
        .collect();
    for (l, first) in out.lines().filter(|l| l.starts_with("raw ")).zip(befores) {
        let rate = num(l
            .split("ops in")
            .nth(1)
            .unwrap()
            .split(':')
            .nth(1)
            .unwrap()
            .split("ops/s")
            .next()
            .unwrap());
        let tail = l.split("same buffers; ").nth(1).unwrap();
        let before = num(tail.split(" before").next().unwrap());
        let after = num(tail
            .split("before and ")
            .nth(1)
            .unwrap()
            .split(" ops/s after")
            .next()
            .unwrap());
        assert_eq!(before, first, "{l}");
        assert!(
            before.min(after) - 1.0 <= rate && rate <= before.max(after) + 1.0,
            "{l}"
        );
    }
    // The backend runs in this test's process: its data-queue workers are found and measured.
    assert_eq!(count("backend   data-queue workers busy"), 8, "{out}");
    let rows = out
        .lines()
        .skip_while(|l| !l.starts_with("summary"))
        .filter(|l| l.contains("interrupts") || l.contains("polled"))
        .count();
    assert_eq!(rows, 8, "{out}");

    let (rc, out, err) = cli(
        &[
            "bench",
            "--socket",
            "SOCK",
            "--alg",
            "aes-256-gcm",
            "--size",
            "64",
            "--mode",
            "interrupt,poll",
            "--latency",
            "--seconds",
            "0.1",
        ],
        b"",
    );
    assert_eq!(rc, 0, "{err}");
    let out = String::from_utf8(out).unwrap();
    let lat: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("device") && l.contains("p50") && l.contains("p99"))
        .collect();
    assert_eq!(lat.len(), 2, "{out}");
    assert!(out.contains("latency   aes-256-gcm 64 B, one operation in flight, interrupts"));
    assert!(out.contains("latency   aes-256-gcm 64 B, one operation in flight, polled"));
    assert_eq!(
        out.lines()
            .filter(|l| l.starts_with("ratio     device/raw p50"))
            .count(),
        2,
        "{out}"
    );
}
