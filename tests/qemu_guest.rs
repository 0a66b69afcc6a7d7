//! End-to-end: stock QEMU 10 + a stock Debian Linux guest drive a virtio-crypto device.
//!
//! The guest (tests/qemu/build-guest.sh: Debian's 6.1 kernel, busybox, and the static
//! program tests/qemu/guest/afalg_test.c) pushes AES-CBC requests through AF_ALG, bound
//! to the guest driver `virtio_crypto_aes_cbc`, and compares every answer with the
//! expected bytes that this test computed on the host with the `openssl enc` CLI, an
//! implementation independent of ours.
//!
//! Tests (QEMU runs with TCG; one boot at a time):
//! - `qemu_guest_builtin_reference`: QEMU's own `cryptodev-backend-builtin`. Proves the
//!   guest program and the expected answers right, independently of dpacc.
//! - `qemu_guest_vhost_user`: `dpacc-backend crypto` over vhost-user, 2 data queues.
//! - `qemu_guest_vhost_user_restart`: the backend is killed while the guest idles and
//!   restarted on the same socket; QEMU reconnects (reconnect-ms) but replays neither the
//!   memory table, the rings nor the sessions, so the guest resets the device (driver
//!   unbind + bind) and must then keep working (see tests/qemu/README.md).
//!
//! When `qemu-system-x86_64` is missing the tests print SKIPPED and pass, except with
//! `CI=true`, where that is a failure. Artifacts (serial console, backend logs, cases)
//! land in `<target>/qemu-guest/runs/<test>/`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

/// One QEMU boot at a time: the machine has 2 cores and each TCG guest has 2 vCPUs.
static BOOT_LOCK: Mutex<()> = Mutex::new(());

/// Hard limit for one boot, from QEMU start to power-off.
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
/// Longest silence on the guest console before the boot is declared stuck (a normal
/// run prints a line every few seconds; the guest's own watchdog fires at 200 s).
const STALL_TIMEOUT: Duration = Duration::from_secs(90);
/// Set-key cycles on one socket in the guest's `rekey` phase.
const REKEYS: usize = 200;
/// Guest threads in the `threads` phase.
const THREADS: usize = 2;
/// Payload lengths (bytes, multiples of the AES block): 16 B … 64 KiB.
const LENGTHS: &[usize] = &[16, 32, 48, 64, 272, 1024, 4096, 16384, 65536];
const KEY_LENGTHS: &[usize] = &[16, 24, 32];

// ------------------------------------------------------------------ environment

fn workspace_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                workspace_dir().join(d)
            }
        }
        None => workspace_dir().join("target"),
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Returns the QEMU binary, or None after printing SKIPPED (outside CI only).
fn qemu_or_skip(test: &str) -> Option<PathBuf> {
    if let Some(q) = find_in_path("qemu-system-x86_64") {
        return Some(q);
    }
    let in_ci = std::env::var("CI").map(|v| v == "true").unwrap_or(false);
    assert!(
        !in_ci,
        "{test}: qemu-system-x86_64 not found and CI=true: the QEMU guest test must run in CI \
         (run `bash tests/qemu/install-deps.sh` in .ci/run)"
    );
    eprintln!();
    eprintln!("************************************************************************");
    eprintln!("SKIPPED: qemu-system-x86_64 not found (run tests/qemu/install-deps.sh)");
    eprintln!("         test {test} did not boot a guest");
    eprintln!("************************************************************************");
    None
}

fn run_checked(cmd: &mut Command, what: &str) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Kernel and initramfs, built (or reused from cache) by tests/qemu/build-guest.sh.
fn build_guest() -> (PathBuf, PathBuf) {
    let out = target_dir().join("qemu-guest");
    let script = workspace_dir().join("tests/qemu/build-guest.sh");
    let t0 = Instant::now();
    run_checked(
        Command::new("bash").arg(&script).arg(&out),
        "tests/qemu/build-guest.sh",
    );
    eprintln!("guest image ready in {:.1} s", t0.elapsed().as_secs_f64());
    (out.join("vmlinuz"), out.join("initramfs.cpio.gz"))
}

/// `cargo build -p dpacc-backend --bin dpacc-backend`, returns the binary path.
fn build_backend() -> PathBuf {
    let t0 = Instant::now();
    run_checked(
        Command::new(env!("CARGO"))
            .args(["build", "-p", "dpacc-backend", "--bin", "dpacc-backend"])
            .current_dir(workspace_dir()),
        "cargo build -p dpacc-backend --bin dpacc-backend",
    );
    let bin = target_dir().join("debug").join("dpacc-backend");
    assert!(
        bin.is_file(),
        "{} not found after cargo build",
        bin.display()
    );
    eprintln!("dpacc-backend built in {:.1} s", t0.elapsed().as_secs_f64());
    bin
}

fn run_dir(test: &str) -> PathBuf {
    let d = target_dir().join("qemu-guest").join("runs").join(test);
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
    d
}

// ------------------------------------------------------------------ test cases

fn random_bytes(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("read /dev/urandom");
    b
}

/// AES-CBC without padding by the `openssl enc` CLI: the independent oracle.
fn openssl_cbc(dir: &Path, encrypt: bool, key: &[u8], iv: &[u8], input: &[u8]) -> Vec<u8> {
    let inp = dir.join("oracle.in");
    let outp = dir.join("oracle.out");
    fs::write(&inp, input).expect("write oracle input");
    let cipher = format!("-aes-{}-cbc", key.len() * 8);
    run_checked(
        Command::new("openssl")
            .args(["enc", &cipher, "-nopad", if encrypt { "-e" } else { "-d" }])
            .args(["-K", &hex::encode(key), "-iv", &hex::encode(iv)])
            .arg("-in")
            .arg(&inp)
            .arg("-out")
            .arg(&outp),
        "openssl enc",
    );
    let out = fs::read(&outp).expect("read oracle output");
    let _ = fs::remove_file(&inp);
    let _ = fs::remove_file(&outp);
    out
}

/// Writes `cases.txt` (the format tests/qemu/guest/afalg_test.c reads) and returns how
/// many cases it holds.
fn generate_cases(dir: &Path) -> usize {
    // First make sure the oracle itself is right: NIST SP 800-38A, F.2.1 CBC-AES128.Encrypt.
    let k = hex::decode("2b7e151628aed2a6abf7158809cf4f3c").unwrap();
    let iv = hex::decode("000102030405060708090a0b0c0d0e0f").unwrap();
    let pt =
        hex::decode("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51").unwrap();
    let ct = openssl_cbc(dir, true, &k, &iv, &pt);
    assert_eq!(
        hex::encode(ct),
        "7649abac8119b246cee98e9b12e9197d5086cb9b507219ee95db113a917678b2",
        "openssl enc does not reproduce the NIST SP 800-38A CBC vector"
    );

    let mut text = String::from("# id op key iv input expected (hex); expected by openssl enc\n");
    let mut n = 0;
    for &kl in KEY_LENGTHS {
        for &len in LENGTHS {
            for encrypt in [true, false] {
                let key = random_bytes(kl);
                let iv = random_bytes(16);
                let input = random_bytes(len);
                let expected = openssl_cbc(dir, encrypt, &key, &iv, &input);
                assert_eq!(expected.len(), len, "openssl output length");
                let op = if encrypt { "enc" } else { "dec" };
                writeln!(
                    text,
                    "aes{}-{len}-{op} {op} {} {} {} {}",
                    kl * 8,
                    hex::encode(&key),
                    hex::encode(&iv),
                    hex::encode(&input),
                    hex::encode(&expected)
                )
                .unwrap();
                n += 1;
            }
        }
    }
    fs::write(dir.join("cases.txt"), text).expect("write cases.txt");
    n
}

/// initrd = the cached initramfs + a small second cpio archive holding /dpacc/cases.txt
/// and /dpacc/args (Linux unpacks concatenated archives in order).
fn make_initrd(dir: &Path, base: &Path, args: &str) -> PathBuf {
    let stage = dir.join("stage");
    fs::create_dir_all(stage.join("dpacc")).unwrap();
    fs::copy(dir.join("cases.txt"), stage.join("dpacc/cases.txt")).unwrap();
    fs::write(stage.join("dpacc/args"), format!("{args}\n")).unwrap();
    // gzip-compressed like the base archive: the kernel rejects an uncompressed archive
    // that follows a compressed one ("invalid magic at start of compressed archive").
    let mut cpio = Command::new("sh")
        .args(["-c", "cpio -o -H newc -R +0:+0 --quiet | gzip -1"])
        .current_dir(&stage)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn sh -c 'cpio | gzip' (run tests/qemu/install-deps.sh)");
    {
        let mut sin = cpio.stdin.take().unwrap();
        sin.write_all(b"dpacc\ndpacc/cases.txt\ndpacc/args\n")
            .unwrap();
    }
    let out = cpio.wait_with_output().expect("cpio");
    assert!(out.status.success(), "cpio | gzip failed: {}", out.status);
    let mut initrd = fs::read(base).expect("read initramfs.cpio.gz");
    initrd.extend_from_slice(&out.stdout);
    let path = dir.join("initrd");
    fs::write(&path, initrd).unwrap();
    let _ = fs::remove_dir_all(&stage);
    path
}

// ------------------------------------------------------------------ processes

/// Kills the child on drop (a failing assert must not leave QEMU or a backend behind).
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_backend(bin: &Path, socket: &Path, log: &Path) -> Reaped {
    let logf = fs::File::create(log).expect("create backend log");
    let child = Command::new(bin)
        .args(["crypto", "--socket"])
        .arg(socket)
        .args(["--queues", "2"])
        // QEMU's virtio-crypto-pci has 1024-entry virtqueues (SET_VRING_NUM 1024).
        .args(["--queue-size", "1024"])
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(logf.try_clone().unwrap())
        .stderr(logf)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
    let mut b = Reaped(child);
    let t0 = Instant::now();
    while !socket.exists() {
        if let Ok(Some(st)) = b.0.try_wait() {
            panic!(
                "dpacc-backend exited ({st}) before creating {}:\n{}",
                socket.display(),
                tail(log, 40)
            );
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "dpacc-backend did not create {} within 30 s:\n{}",
            socket.display(),
            tail(log, 40)
        );
        thread::sleep(Duration::from_millis(50));
    }
    b
}

/// Lines of the file at `path` that contain `needle` (0 when unreadable).
fn count_in(path: &Path, needle: &str) -> usize {
    fs::read_to_string(path)
        .map(|t| t.lines().filter(|l| l.contains(needle)).count())
        .unwrap_or(0)
}

fn tail(path: &Path, lines: usize) -> String {
    let s = fs::read_to_string(path).unwrap_or_default();
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

enum Device<'a> {
    Builtin,
    VhostUser { socket: &'a Path },
}

struct Qemu {
    child: Reaped,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    started: Instant,
    serial: PathBuf,
    stderr: PathBuf,
}

fn start_qemu(qemu: &Path, kernel: &Path, initrd: &Path, device: &Device<'_>, dir: &Path) -> Qemu {
    let mut cmd = Command::new(qemu);
    cmd.args(["-accel", "tcg", "-m", "512", "-smp", "2"])
        .args(["-nographic", "-no-reboot"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 quiet panic=-1"])
        .args([
            "-object",
            "memory-backend-memfd,id=mem,size=512M,share=on",
            "-numa",
            "node,memdev=mem",
        ]);
    match device {
        // QEMU's builtin backend supports one queue only.
        Device::Builtin => cmd.args(["-object", "cryptodev-backend-builtin,id=cd0,queues=1"]),
        Device::VhostUser { socket } => cmd
            .arg("-chardev")
            .arg(format!(
                "socket,id=ch0,path={},reconnect-ms=1000",
                socket.display()
            ))
            .args([
                "-object",
                "cryptodev-vhost-user,id=cd0,chardev=ch0,queues=2",
            ]),
    };
    cmd.args(["-device", "virtio-crypto-pci,cryptodev=cd0"]);
    fs::write(dir.join("qemu-cmdline.txt"), format!("{cmd:?}\n")).unwrap();

    let stderr = dir.join("qemu.stderr");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", qemu.display()));
    let stdin = child.stdin.take();
    let stdout = child.stdout.take().unwrap();
    let serial = dir.join("serial.log");
    let mut serial_file = fs::File::create(&serial).unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let _ = serial_file.write_all(&buf);
                    let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                    if tx.send(line).is_err() {
                        // Keep capturing to the file even when nobody listens.
                        continue;
                    }
                }
            }
        }
    });
    Qemu {
        child: Reaped(child),
        stdin,
        lines: rx,
        started: Instant::now(),
        serial,
        stderr,
    }
}

impl Qemu {
    fn diagnostics(&self) -> String {
        format!(
            "--- serial console (last 60 lines of {})\n{}\n--- qemu stderr ({})\n{}",
            self.serial.display(),
            tail(&self.serial, 60),
            self.stderr.display(),
            tail(&self.stderr, 30)
        )
    }

    /// Next console line, or None on timeout, console stall, or QEMU exit.
    fn next_line(&self) -> Option<String> {
        let left = BOOT_TIMEOUT.checked_sub(self.started.elapsed())?;
        match self.lines.recv_timeout(left.min(STALL_TIMEOUT)) {
            Ok(l) => Some(l),
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => None,
        }
    }

    fn send(&mut self, text: &str) {
        let s = self.stdin.as_mut().expect("qemu stdin");
        s.write_all(text.as_bytes()).expect("write to QEMU stdin");
        s.flush().expect("flush QEMU stdin");
    }

    /// Waits (bounded) for QEMU to exit after the guest powered off.
    fn finish(&mut self) -> Option<std::process::ExitStatus> {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(st)) = self.child.0.try_wait() {
                return Some(st);
            }
            thread::sleep(Duration::from_millis(100));
        }
        None
    }
}

// ------------------------------------------------------------------ verdict

#[derive(Default, Debug)]
struct Outcome {
    phases: BTreeMap<String, (usize, usize)>,
    result: Option<(usize, usize)>,
    failures: Vec<String>,
    boot_s: Option<f64>,
    total_s: f64,
}

/// Parses "<prefix>N passed, M failed".
fn parse_counts(s: &str) -> Option<(usize, usize)> {
    let (p, rest) = s.trim().split_once(" passed, ")?;
    let f = rest.split_whitespace().next()?;
    Some((p.trim().parse().ok()?, f.parse().ok()?))
}

/// Runs one boot to its verdict. `on_wait_restart` is called when the guest idles
/// for the restart scenario; it must make the device usable again (or not) and return.
fn run_guest(qemu: &mut Qemu, mut on_wait_restart: impl FnMut(&mut Qemu)) -> Outcome {
    let mut o = Outcome::default();
    while let Some(line) = qemu.next_line() {
        if line.contains("DPACC-GUEST-BOOT") {
            o.boot_s = Some(qemu.started.elapsed().as_secs_f64());
        } else if let Some(rest) = line.split("DPACC-PHASE ").nth(1) {
            if let Some((name, counts)) = rest.split_once(':') {
                if let Some(c) = parse_counts(counts) {
                    o.phases.insert(name.to_string(), c);
                }
            }
        } else if (line.contains("DPACC-CASE") && line.contains(" FAIL"))
            || line.contains("DPACC-GUEST-ERROR")
        {
            o.failures.push(line.clone());
        } else if line.contains("DPACC-GUEST-WAIT-RESTART") {
            on_wait_restart(qemu);
        } else if let Some(rest) = line.split("DPACC-GUEST-RESULT: ").nth(1) {
            o.result = parse_counts(rest);
            break;
        }
    }
    o.total_s = qemu.started.elapsed().as_secs_f64();
    o
}

/// What the guest must report for `ncases` cases.
fn expected_phases(
    ncases: usize,
    rekeys: usize,
    threads: usize,
    restart: Restart,
) -> Vec<(&'static str, usize)> {
    let mut v = vec![("seq", ncases)];
    if rekeys > 0 {
        v.push(("rekey", rekeys));
    }
    if threads > 0 {
        v.push(("threads", threads * ncases));
    }
    match restart {
        Restart::No => {}
        // One case before the restart.
        Restart::Observe => v.push(("restart", 1)),
        // One case before the restart, then every case re-keyed and every case fresh.
        Restart::Rebind => v.push(("restart", 1 + 2 * ncases)),
    }
    v
}

fn check_outcome(test: &str, qemu: &mut Qemu, o: &Outcome, expected: &[(&str, usize)]) {
    let exit = qemu.finish();
    let diag = qemu.diagnostics();
    eprintln!(
        "{test}: boot to guest /init {:.1} s, verdict after {:.1} s, qemu exit {:?}; phases {:?}",
        o.boot_s.unwrap_or(-1.0),
        o.total_s,
        exit,
        o.phases
    );
    let Some((passed, failed)) = o.result else {
        panic!(
            "{test}: no DPACC-GUEST-RESULT line from the guest after {:.0} s (limits: {} s per boot, \
             {} s of console silence): hang, crash or QEMU exit\n{diag}",
            o.total_s,
            BOOT_TIMEOUT.as_secs(),
            STALL_TIMEOUT.as_secs()
        );
    };
    assert!(
        o.failures.is_empty() && failed == 0,
        "{test}: guest reported {failed} failure(s):\n{}\n{diag}",
        o.failures.join("\n")
    );
    let total: usize = expected.iter().map(|(_, n)| n).sum();
    for (name, n) in expected {
        assert_eq!(
            o.phases.get(*name).copied(),
            Some((*n, 0)),
            "{test}: phase {name}: expected {n} passed, 0 failed\n{diag}"
        );
    }
    assert_eq!(
        passed, total,
        "{test}: guest passed {passed} checks, expected {total}\n{diag}"
    );
    assert!(
        exit.is_some(),
        "{test}: guest gave its verdict but QEMU did not exit after power-off\n{diag}"
    );
}

/// What the guest does around the host's restart point.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Restart {
    /// No restart phase.
    No,
    /// Idle across the restart, then only observe.
    Observe,
    /// Idle across the restart, then reset the device (driver unbind + bind) and run
    /// every case again.
    Rebind,
}

fn guest_args(rekeys: usize, threads: usize, restart: Restart) -> String {
    let mut a = format!("--rekeys {rekeys} --threads {threads}");
    match restart {
        Restart::No => {}
        Restart::Observe => a.push_str(" --restart"),
        Restart::Rebind => a.push_str(" --restart-rebind"),
    }
    a
}

fn socket_path(test: &str) -> PathBuf {
    // Unix socket paths are limited to 108 bytes: keep it short, out of target/.
    let p = std::env::temp_dir().join(format!("dpacc-qemu-{}-{test}.sock", std::process::id()));
    let _ = fs::remove_file(&p);
    p
}

// ------------------------------------------------------------------ tests

#[test]
fn qemu_guest_builtin_reference() {
    let test = "qemu_guest_builtin_reference";
    let Some(qemu_bin) = qemu_or_skip(test) else {
        return;
    };
    let _serial = BOOT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let (kernel, base) = build_guest();
    let dir = run_dir(test);
    let ncases = generate_cases(&dir);
    // The restart phase runs too (without a restart: the builtin backend lives in QEMU),
    // which proves the guest side of that scenario and its counting.
    let initrd = make_initrd(&dir, &base, &guest_args(REKEYS, THREADS, Restart::Rebind));
    let mut q = start_qemu(&qemu_bin, &kernel, &initrd, &Device::Builtin, &dir);
    let o = run_guest(&mut q, |q| q.send("go\n"));
    check_outcome(
        test,
        &mut q,
        &o,
        &expected_phases(ncases, REKEYS, THREADS, Restart::Rebind),
    );
}

#[test]
fn qemu_guest_vhost_user() {
    let test = "qemu_guest_vhost_user";
    let Some(qemu_bin) = qemu_or_skip(test) else {
        return;
    };
    let _serial = BOOT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let backend_bin = build_backend();
    let (kernel, base) = build_guest();
    let dir = run_dir(test);
    let ncases = generate_cases(&dir);
    let initrd = make_initrd(&dir, &base, &guest_args(REKEYS, THREADS, Restart::No));
    let socket = socket_path(test);
    let _backend = start_backend(&backend_bin, &socket, &dir.join("backend.log"));
    let mut q = start_qemu(
        &qemu_bin,
        &kernel,
        &initrd,
        &Device::VhostUser { socket: &socket },
        &dir,
    );
    let o = run_guest(&mut q, |_| {});
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        check_outcome(
            test,
            &mut q,
            &o,
            &expected_phases(ncases, REKEYS, THREADS, Restart::No),
        )
    }));
    let _ = fs::remove_file(&socket);
    if let Err(e) = r {
        eprintln!(
            "--- backend log (last 40 lines)\n{}",
            tail(&dir.join("backend.log"), 40)
        );
        std::panic::resume_unwind(e);
    }
}

#[test]
fn qemu_guest_vhost_user_restart() {
    let test = "qemu_guest_vhost_user_restart";
    let Some(qemu_bin) = qemu_or_skip(test) else {
        return;
    };
    let _serial = BOOT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let backend_bin = build_backend();
    let (kernel, base) = build_guest();
    let dir = run_dir(test);
    let ncases = generate_cases(&dir);
    // Session churn and threads are covered by qemu_guest_vhost_user: here only the
    // first pass and the restart.
    let initrd = make_initrd(&dir, &base, &guest_args(0, 0, Restart::Observe));
    let socket = socket_path(test);
    let log1 = dir.join("backend-1.log");
    let log2 = dir.join("backend-2.log");
    let mut backend = Some(start_backend(&backend_bin, &socket, &log1));
    let mut q = start_qemu(
        &qemu_bin,
        &kernel,
        &initrd,
        &Device::VhostUser { socket: &socket },
        &dir,
    );
    let mut restarted = false;
    let mut replayed_before_reset = 0;
    let o = run_guest(&mut q, |q| {
        // The guest idles with no AF_ALG socket open. Crash the backend (SIGKILL: no
        // goodbye on the socket, the socket file stays), start a new one on the same path
        // (the stale file is removed so that the wait for the new socket is meaningful),
        // wait until QEMU has reconnected (reconnect-ms=1000), then let the guest reset the
        // device (virtio_crypto unbind + bind) and go on.
        drop(backend.take());
        eprintln!(
            "{test}: backend killed; restarting it on {}",
            socket.display()
        );
        thread::sleep(Duration::from_millis(500));
        let _ = fs::remove_file(&socket);
        backend = Some(start_backend(&backend_bin, &socket, &log2));
        let t = Instant::now();
        while count_in(&log2, "request=Some(SET_VRING_ERR)") == 0
            && t.elapsed() < Duration::from_secs(20)
        {
            thread::sleep(Duration::from_millis(100));
        }
        thread::sleep(Duration::from_millis(500));
        replayed_before_reset = count_in(&log2, "request=Some(SET_MEM_TABLE)");
        restarted = true;
        q.send("go\n");
    });
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assert!(
            restarted,
            "{test}: the guest never reached the restart point\n{}",
            q.diagnostics()
        );
        check_outcome(
            test,
            &mut q,
            &o,
            &expected_phases(ncases, 0, 0, Restart::Observe),
        );
        let connects = count_in(&log2, "frontend connected");
        let handshakes = count_in(&log2, "request=Some(SET_VRING_ERR)");
        let mem_tables = count_in(&log2, "request=Some(SET_MEM_TABLE)");
        eprintln!(
            "{test}: new backend: {connects} connection(s), {handshakes} SET_VRING_ERR, \
             SET_MEM_TABLE {replayed_before_reset} at the restart point, {mem_tables} in all"
        );
        assert!(
            connects >= 1 && handshakes >= 1,
            "{test}: QEMU never reconnected to the new backend (connections {connects}, \
             SET_VRING_ERR {handshakes})"
        );
    }));
    drop(backend.take());
    let _ = fs::remove_file(&socket);
    if let Err(e) = r {
        eprintln!("--- backend-1 log (last 30 lines)\n{}", tail(&log1, 30));
        eprintln!("--- backend-2 log (last 40 lines)\n{}", tail(&log2, 40));
        std::panic::resume_unwind(e);
    }
}
