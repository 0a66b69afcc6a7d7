//! Booting the QEMU test guest (tests/qemu/) with a program of ours appended to its
//! initramfs: the guest's /init runs `/dpacc/run` when present. TCG only; one boot per call.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

fn ws() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The cargo target directory.
pub fn target() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| ws().join("target"), PathBuf::from)
}

/// Runs a command, panicking with its output on failure.
pub fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// False (after a loud SKIPPED) when QEMU is missing; a failure with CI=true.
pub fn qemu_or_skip() -> bool {
    let ok = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        let msg = "SKIPPED: qemu-system-x86_64 not found (run tests/qemu/install-deps.sh)";
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{msg} (CI=true: failure)"
        );
        eprintln!("{msg}");
    }
    ok
}

/// Builds (or reuses) the guest kernel and base initramfs; returns their directory.
pub fn build_guest() -> PathBuf {
    let guest = target().join("qemu-guest");
    run(
        Command::new("bash")
            .arg(ws().join("tests/qemu/build-guest.sh"))
            .arg(&guest),
        "tests/qemu/build-guest.sh",
    );
    guest
}

/// Builds a target of package `pkg` statically linked (`what` = `["--example", "x"]` or
/// `["--bin", "x"]`); returns the binary.
pub fn static_binary(pkg: &str, what: [&str; 2]) -> PathBuf {
    let dir = target().join("guest-static");
    run(
        Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", pkg])
            .args(what)
            .args(["--target", "x86_64-unknown-linux-gnu", "--target-dir"])
            .arg(&dir)
            .env("RUSTFLAGS", "-C target-feature=+crt-static"),
        "static build for the guest",
    );
    let sub = if what[0] == "--example" {
        "debug/examples"
    } else {
        "debug"
    };
    dir.join("x86_64-unknown-linux-gnu").join(sub).join(what[1])
}

/// The base initramfs plus `/dpacc/run` (a shell script), stripped `binaries` (installed as
/// `/dpacc/<name>`) and data `files` (`/dpacc/<relative path>`), in run directory `dir`
/// (recreated).
pub fn initrd_with(
    guest: &Path,
    dir: &Path,
    run_script: &str,
    binaries: &[(&str, &Path)],
    files: &[(String, Vec<u8>)],
) -> PathBuf {
    let _ = fs::remove_dir_all(dir);
    let root = dir.join("root/dpacc");
    fs::create_dir_all(&root).unwrap();
    for (name, data) in files {
        let p = root.join(name);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    }
    for (name, bin) in binaries {
        run(
            Command::new("strip")
                .arg("-o")
                .arg(root.join(name))
                .arg(bin),
            "strip",
        );
    }
    fs::write(root.join("run"), format!("#!/bin/sh\n{run_script}")).unwrap();
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
    initrd
}

/// What a boot printed.
pub struct Boot {
    /// QEMU's exit (None: killed at the time limit).
    pub status: Option<ExitStatus>,
    /// The serial console.
    pub serial: String,
    /// QEMU's stderr.
    pub stderr: String,
    /// Wall time.
    pub secs: f64,
}

impl Boot {
    /// Everything, for assertion messages.
    pub fn diag(&self) -> String {
        format!(
            "qemu {:?} after {:.1} s; stderr:\n{}\nserial:\n{}",
            self.status, self.secs, self.stderr, self.serial
        )
    }
}

/// Boots the guest with `initrd` and extra QEMU arguments; waits at most `limit`.
///
/// QEMU 10's TCG now and then aborts on an assertion of its own in the firmware's first
/// seconds (`iotlb_to_section: Assertion ... failed`, before the guest kernel has printed
/// anything, so before any dpacc code ran in the guest): such a boot is retried once, said on
/// stderr. Any other outcome is returned as it is.
pub fn boot(guest: &Path, dir: &Path, initrd: &Path, extra: &[&str], limit: Duration) -> Boot {
    let b = boot_once(guest, dir, initrd, extra, limit);
    let aborted = b
        .status
        .is_some_and(|s| std::os::unix::process::ExitStatusExt::signal(&s) == Some(6));
    if aborted && b.stderr.contains("Assertion") && !b.serial.contains("DPACC") {
        eprintln!(
            "QEMU aborted on an assertion of its own before the guest ran (retrying once):\n{}",
            b.stderr
        );
        return boot_once(guest, dir, initrd, extra, limit);
    }
    b
}

fn boot_once(guest: &Path, dir: &Path, initrd: &Path, extra: &[&str], limit: Duration) -> Boot {
    let serial_path = dir.join("serial.log");
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
        .arg(initrd)
        .args(["-append", "console=ttyS0 quiet panic=-1"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&serial_path).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start qemu");
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    Boot {
        status,
        serial: fs::read_to_string(&serial_path).unwrap_or_default(),
        stderr,
        secs: t0.elapsed().as_secs_f64(),
    }
}

/// A stock guest with one `virtio-net-pci` on a `dpacc-backend net` vNF port (vhost-user;
/// guest memory shared through a memfd, as vhost-user needs) and `dpacc` in its initrd,
/// running `script`. The script says how it went with lines that start with `tag`:
/// `{tag}-DONE` at the end, `{tag}-FAIL ...` for a failed step.
pub struct NetGuest<'a> {
    /// The run's directory name under the guest's `runs/`.
    pub run: &'a str,
    /// The guest's run script.
    pub script: &'a str,
    /// The vNF port's vhost-user socket.
    pub socket: &'a Path,
    /// The guest's MAC address.
    pub mac: &'a str,
    /// Queue pairs (more than one turns on `mq`).
    pub queues: usize,
    /// The script's line prefix, e.g. `DPACC-NET`.
    pub tag: &'a str,
}

impl NetGuest<'_> {
    /// Boots the guest (at most 240 s), prints the serial lines with the tag or a flow
    /// counter (and those containing any of `show`), and asserts that the script finished
    /// without a failed step.
    pub fn boot(&self, show: &[&str]) -> Boot {
        let guest = build_guest();
        let dpacc = static_binary("dpacc-guest", ["--bin", "dpacc"]);
        let dir = guest.join("runs").join(self.run);
        let initrd = initrd_with(&guest, &dir, self.script, &[("dpacc", &dpacc)], &[]);
        let chardev = format!("socket,id=c0,path={}", self.socket.display());
        let (netdev, device) = if self.queues > 1 {
            (
                format!("vhost-user,id=n0,chardev=c0,queues={}", self.queues),
                format!(
                    "virtio-net-pci,netdev=n0,mac={},mq=on,vectors={}",
                    self.mac,
                    2 * self.queues + 2
                ),
            )
        } else {
            (
                "vhost-user,id=n0,chardev=c0".to_string(),
                format!("virtio-net-pci,netdev=n0,mac={}", self.mac),
            )
        };
        let b = boot(
            &guest,
            &dir,
            &initrd,
            &[
                "-object",
                "memory-backend-memfd,id=mem,size=512M,share=on",
                "-numa",
                "node,memdev=mem",
                "-chardev",
                &chardev,
                "-netdev",
                &netdev,
                "-device",
                &device,
            ],
            Duration::from_secs(240),
        );
        for l in b.serial.lines().filter(|l| {
            l.contains(self.tag) || l.contains("cookie") || show.iter().any(|s| l.contains(s))
        }) {
            eprintln!("{}", l.trim());
        }
        assert!(
            b.serial.contains(&format!("{}-DONE", self.tag)),
            "the guest script did not finish\n{}",
            b.diag()
        );
        assert!(
            !b.serial.contains(&format!("{}-FAIL", self.tag)),
            "a step of the guest script failed\n{}",
            b.diag()
        );
        b
    }
}

/// The packet count of flow `cookie` in `dpacc flow ... stats` output (`cookie N: P packets
/// ...`) on the serial console; 0 if it is not there.
pub fn flow_packets(serial: &str, cookie: u64) -> u64 {
    serial
        .lines()
        .find_map(|l| l.split(&format!("cookie {cookie}: ")).nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}
