//! The service files in docs/: the libvirt domain validates against libvirt's schema
//! (`virt-xml-validate`, Debian libvirt-clients + libxml2-utils), and the systemd unit's
//! ExecStart runs the real binary, which tells a notify socket READY=1 (Type=notify) and
//! stops with status 0 on SIGTERM (KillSignal), its sockets removed.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::api::{backend_bin, have};

fn doc(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("docs")
            .join(name),
    )
    .unwrap()
}

#[test]
fn the_libvirt_domain_validates_and_has_both_devices() {
    if !have("virt-xml-validate", &["--help"]) || !have("xmllint", &["--version"]) {
        return;
    }
    let xml = doc("libvirt-vnf.xml");
    let dir = std::env::temp_dir().join(format!("dpacc-svc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let check = |text: &str| {
        let p = dir.join("domain.xml");
        std::fs::write(&p, text).unwrap();
        let out = Command::new("virt-xml-validate")
            .arg(&p)
            .arg("domain")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = check(&xml);
    assert!(ok, "docs/libvirt-vnf.xml does not validate: {err}");
    // The validator does refuse a broken domain (so the pass above means something).
    assert!(!check(&xml.replace("type='vhostuser'", "type='vhost-user-typo'")).0);
    // Both devices, on the sockets of the service's runtime directory, over shared memory.
    for want in [
        "<interface type='vhostuser'>",
        "path='/run/dpacc/blue.sock' mode='client'",
        "cryptodev-vhost-user",
        "virtio-crypto-pci",
        "path=/run/dpacc/crypto.sock",
        "<access mode='shared'/>",
        "<source type='memfd'/>",
    ] {
        assert!(xml.contains(want), "missing {want}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_systemd_units_command_runs_and_notifies_ready() {
    let unit = doc("dpacc-backend.service");
    assert!(unit.contains("Type=notify") && unit.contains("RuntimeDirectory=dpacc"));
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap();
    let mut args: Vec<String> = exec.split_whitespace().skip(1).map(String::from).collect();
    // The unit's paths, moved into a directory of our own.
    let dir = std::env::temp_dir().join(format!("dpacc-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for a in &mut args {
        *a = a.replace("/run/dpacc", &dir.display().to_string());
    }
    let api = dir.join("api.sock");
    assert!(args.iter().any(|a| Path::new(a) == api), "{args:?}");
    let notify = dir.join("notify.sock");
    let rx = UnixDatagram::bind(&notify).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut child = Command::new(backend_bin())
        .args(&args)
        .env("NOTIFY_SOCKET", &notify)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = rx.recv(&mut buf).expect("READY=1 on the notify socket");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("READY=1"));
    assert!(api.exists(), "the API socket listens once READY=1 is sent");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let t = Instant::now();
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(st.success(), "{st:?}");
    let n = rx.recv(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
    assert!(!api.exists(), "the API socket is removed");
    let _ = std::fs::remove_dir_all(&dir);
}
