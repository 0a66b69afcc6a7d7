//! The AF_ALG driver (accel-hw/src/afalg) against a real Linux kernel crypto API: this host's
//! kernel has no AF_ALG, so the driver's self-test (accel-hw/examples/afalg_selftest.rs, built
//! statically) runs inside the Debian 6.1 guest of the QEMU harness (tests/qemu/), with no
//! virtio-crypto device: the kernel's own implementations answer. The self-test checks
//! NIST/RFC vectors and compares many asynchronous (AIO) requests with dpacc's software driver.
//!
//! Without `qemu-system-x86_64` the test prints SKIPPED and passes, except with `CI=true`.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn ws() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn target() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| ws().join("target"), PathBuf::from)
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn afalg_driver_in_a_real_guest_kernel() {
    let have_qemu = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_qemu {
        let msg = "SKIPPED: qemu-system-x86_64 not found (run tests/qemu/install-deps.sh)";
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{msg} (CI=true: failure)"
        );
        eprintln!("{msg}");
        return;
    }
    let guest = target().join("qemu-guest");
    run(
        Command::new("bash")
            .arg(ws().join("tests/qemu/build-guest.sh"))
            .arg(&guest),
        "tests/qemu/build-guest.sh",
    );
    // The self-test, linked statically for the initramfs.
    let static_dir = target().join("guest-static");
    run(
        Command::new(env!("CARGO"))
            .args([
                "build",
                "-q",
                "-p",
                "dpacc-hw",
                "--example",
                "afalg_selftest",
            ])
            .args(["--target", "x86_64-unknown-linux-gnu", "--target-dir"])
            .arg(&static_dir)
            .env("RUSTFLAGS", "-C target-feature=+crt-static"),
        "static build of afalg_selftest",
    );
    let bin = static_dir.join("x86_64-unknown-linux-gnu/debug/examples/afalg_selftest");

    // A second cpio with /dpacc/run, appended to the cached initramfs.
    let dir = guest.join("runs/afalg_driver");
    let _ = fs::remove_dir_all(&dir);
    let root = dir.join("root/dpacc");
    fs::create_dir_all(&root).unwrap();
    run(
        Command::new("strip")
            .arg("-o")
            .arg(root.join("afalg_selftest"))
            .arg(&bin),
        "strip",
    );
    fs::write(root.join("run"), "#!/bin/sh\n/dpacc/afalg_selftest\n").unwrap();
    run(
        Command::new("chmod").arg("0755").arg(root.join("run")),
        "chmod",
    );
    let initrd = dir.join("initrd");
    run(
        Command::new("sh").arg("-c").arg(format!(
            "cd '{}' && find dpacc | cpio -o -H newc -R +0:+0 --quiet | gzip > ../extra.cpio.gz \
             && cat '{}' ../extra.cpio.gz > '{}'",
            dir.join("root").display(),
            guest.join("initramfs.cpio.gz").display(),
            initrd.display()
        )),
        "initrd",
    );

    let serial = dir.join("serial.log");
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-m",
            "512",
            "-smp",
            "2",
            "-nographic",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(guest.join("vmlinuz"))
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 quiet panic=-1"])
        .stdin(Stdio::null())
        .stdout(fs::File::create(&serial).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start qemu");
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if t0.elapsed() > Duration::from_secs(240) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let log = fs::read_to_string(&serial).unwrap_or_default();
    let diag = || {
        format!(
            "qemu {status:?} after {:?}; stderr:\n{err}\nserial ({}):\n{log}",
            t0.elapsed(),
            serial.display()
        )
    };
    for l in log
        .lines()
        .filter(|l| l.contains("DPACC-AFALG-DRIVER") || l.contains("FIGURE"))
    {
        eprintln!("{}", l.trim());
    }
    let verdict = log
        .lines()
        .find_map(|l| l.split("DPACC-AFALG-RESULT: ").nth(1))
        .unwrap_or_else(|| panic!("no verdict from the guest\n{}", diag()));
    let (passed, rest) = verdict.split_once(" passed, ").expect("verdict format");
    let passed: u32 = passed.trim().parse().unwrap();
    let failed: u32 = rest.split_whitespace().next().unwrap().parse().unwrap();
    assert_eq!(failed, 0, "AF_ALG self-test failures\n{}", diag());
    // Vectors for CBC x3, CTR, bad length, GCM x4, ChaCha, SHA x4, HMAC x2, async x2, churn.
    assert_eq!(passed, 19, "every AF_ALG check must run\n{}", diag());
    for must in [
        "cbc(aes)",
        "ctr(aes)",
        "gcm(aes)",
        "rfc7539(chacha20,poly1305)",
        "sha512",
        "hmac(sha256)",
    ] {
        assert!(
            log.contains(&format!("DPACC-AFALG-DRIVER {must} -> ")),
            "{must} not discovered\n{}",
            diag()
        );
    }
    assert!(status.is_some(), "guest did not power off\n{}", diag());
    let _ = Path::new(&serial);
}
