//! The AF_ALG driver (accel-hw/src/afalg) against a real Linux kernel crypto API: this host's
//! kernel has no AF_ALG, so the driver's self-test (accel-hw/examples/afalg_selftest.rs, built
//! statically) runs inside the Debian 6.1 guest of the QEMU harness (tests/qemu/), with no
//! virtio-crypto device: the kernel's own implementations answer. The self-test checks
//! NIST/RFC vectors and compares many asynchronous (AIO) requests with dpacc's software driver.
//!
//! Without `qemu-system-x86_64` the test prints SKIPPED and passes, except with `CI=true`.

mod common;

use std::time::Duration;

use common::guest::{boot, build_guest, initrd_with, qemu_or_skip, static_binary};

#[test]
fn afalg_driver_in_a_real_guest_kernel() {
    if !qemu_or_skip() {
        return;
    }
    let guest = build_guest();
    let bin = static_binary("dpacc-hw", ["--example", "afalg_selftest"]);
    let dir = guest.join("runs/afalg_driver");
    let initrd = initrd_with(
        &guest,
        &dir,
        "/dpacc/afalg_selftest\n",
        &[("afalg_selftest", &bin)],
        &[],
    );
    let b = boot(&guest, &dir, &initrd, &[], Duration::from_secs(240));
    let (status, log) = (b.status, b.serial.clone());
    let diag = || b.diag();
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
}
