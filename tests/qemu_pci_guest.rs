//! A vNF inside a VM drives the VM's virtio PCI functions from userspace with the guest
//! library (issue 10): QEMU 10 (TCG) + the Debian guest kernel, `virtio-crypto-pci` on
//! `cryptodev-vhost-user` and `virtio-net-pci` on `-netdev vhost-user`, both served by
//! dpacc's backend (in this test process); inside the guest the static `dpacc` CLI and the
//! test vNF (tests/qemu/guest/pci_vnf.rs) bind the functions to `uio_pci_generic` and run
//! over `--pci` / `open("pci:...")`.
//!
//! Checked, in one boot:
//! - the clear errors: the function still bound to `virtio-pci`, then no hugepages;
//! - `dpacc pci bind` (the user's prepare step), then AES-128/256-GCM, ChaCha20-Poly1305,
//!   AES-CBC, SHA-256, HMAC-SHA256 and AES-CBC + HMAC-SHA256 chains (encrypt-then-MAC and
//!   verify-then-decrypt) through `dpacc ... --pci`, with random keys, IVs, AAD and lengths made
//!   on the host and expected outputs from Python `cryptography` / `hmac`; tampered tags and
//!   MACs fail authentication with no output. In-band sessions (the backend's own algorithms)
//!   and QEMU's control queue (AES-CBC, chains) both;
//! - the batch API: 96 AES-GCM operations in flight at once on the data queue of each of two
//!   crypto functions, in parallel; one tampered tag fails alone; the library finds that QEMU
//!   hands only data queue 0 of a 2-queue device to the backend;
//! - `dpacc bench --pci` prints ops/s, with interrupts and with `--poll`, and `dpacc bench net
//!   --pci` frames per second (functional only under TCG); a second process cannot open a
//!   function the bench holds;
//! - a vNF killed (SIGKILL) with operations in flight, then a new process opens the same
//!   function and works;
//! - net: `dpacc flow --pci` installs a flow, frames the vNF sends reach a namespace behind the
//!   port's TAP uplink, a frame from the namespace misses the tables and arrives as PACKET_IN;
//!   `dpacc pci unbind` gives the function back to the kernel;
//! - completions were waited for on the functions' interrupts (uio, INTx), not by polling.
//!
//! Needs QEMU (SKIPPED otherwise, a failure with CI=true), root, iproute2, python3 with
//! `cryptography` (.ci/install-deps.sh).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::guest::{boot, build_guest, initrd_with, qemu_or_skip, static_binary};
use common::netns::Net;
use common::Backend;

/// Functions of the guest (QEMU's default `pc` machine, fixed slots).
const CRYPTO_A: &str = "0000:00:04.0";
const NET: &str = "0000:00:05.0";
const CRYPTO_B: &str = "0000:00:06.0";
const GUEST_MAC: &str = "52:54:00:dc:ac:19";
const SUBNET: u8 = 19;
/// Operations per device in the batch phase (all in flight at once).
const BATCH: usize = 96;
/// Frames the vNF sends towards the namespace.
const FRAMES: usize = 5;

/// Writes the cases under argv[1]: `cases/list` (`NAME EXPECT ARGS...`), `cases/NAME.in`,
/// `cases/NAME.exp`, and `batch.txt`. Expected answers from `cryptography` and `hmac`.
const GENERATE: &str = r#"
import os, sys, random, hmac, hashlib
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

out, dev, nbatch = sys.argv[1], sys.argv[2], int(sys.argv[3])
os.makedirs(out + "/cases", exist_ok=True)
r = random.SystemRandom()
lines = []
def case(name, expect, args, data, exp):
    open(f"{out}/cases/{name}.in", "wb").write(data)
    open(f"{out}/cases/{name}.exp", "wb").write(exp)
    lines.append(f"{name} {expect} {args}")
def cbc(key, iv, data, enc):
    c = Cipher(algorithms.AES(key), modes.CBC(iv))
    x = c.encryptor() if enc else c.decryptor()
    return x.update(data) + x.finalize()
# Known-answer self-check of the oracle: NIST SP 800-38D test case 3 (AES-128-GCM).
k = bytes.fromhex("feffe9928665731c6d6a8f9467308308"); n = bytes.fromhex("cafebabefacedbaddecaf888")
p = bytes.fromhex("d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255")
assert AESGCM(k).encrypt(n, p, None)[-16:].hex() == "4d5c2af327cd64a62cf35abd2ba6fab4"
sock = f"--pci {dev}"
for sessions in ["auto", "control-queue"]:
    sx = f"--sessions {sessions}"
    tag = "ib" if sessions == "auto" else "cq"
    for bits in ([128, 256] if sessions == "auto" else [128]):
        key, iv, data = os.urandom(bits // 8), os.urandom(16), os.urandom(16 * r.randint(1, 200))
        ct = cbc(key, iv, data, True)
        a = f"crypto {sock} {sx} --alg aes-{bits}-cbc --key {key.hex()} --iv {iv.hex()}"
        case(f"{tag}-cbc{bits}-enc", "ok", a + " encrypt", data, ct)
        case(f"{tag}-cbc{bits}-dec", "ok", a + " decrypt", ct, data)
    key, mkey, iv = os.urandom(16), os.urandom(32), os.urandom(16)
    aad, data = os.urandom(r.randint(0, 64)), os.urandom(16 * r.randint(1, 100))
    ct = cbc(key, iv, data, True)
    mac = hmac.new(mkey, aad + ct, hashlib.sha256).digest()
    a = (f"crypto {sock} {sx} --alg aes-128-cbc --key {key.hex()} --iv {iv.hex()} "
         f"--auth-alg hmac-sha256 --auth-key {mkey.hex()}" + (f" --aad {aad.hex()}" if aad else ""))
    case(f"{tag}-chain-enc", "ok", a + " encrypt", data, ct + mac)
    case(f"{tag}-chain-dec", "ok", a + " decrypt", ct + mac, data)
    bad = bytearray(ct + mac); bad[-1] ^= 1
    case(f"{tag}-chain-tampered", "auth", a + " decrypt", bytes(bad), b"")
for alg, klen in [("aes-128-gcm", 16), ("aes-256-gcm", 32), ("chacha20-poly1305", 32)]:
    key, iv = os.urandom(klen), os.urandom(12)
    aad, data = os.urandom(r.randint(0, 64)), os.urandom(r.randint(1, 4000))
    ct = (ChaCha20Poly1305 if alg.startswith("chacha") else AESGCM)(key).encrypt(iv, data, aad or None)
    a = f"crypto {sock} --alg {alg} --key {key.hex()} --iv {iv.hex()}" + (f" --aad {aad.hex()}" if aad else "")
    case(f"{alg}-enc", "ok", a + " encrypt", data, ct)
    case(f"{alg}-dec", "ok", a + " decrypt", ct, data)
    bad = bytearray(ct); bad[-1] ^= 0x40
    case(f"{alg}-tampered", "auth", a + " decrypt", bytes(bad), b"")
data = os.urandom(r.randint(0, 3000))
case("sha256", "ok", f"digest {sock} --alg sha256", data, (hashlib.sha256(data).hexdigest() + "\n").encode())
key, data = os.urandom(r.randint(1, 100)), os.urandom(r.randint(0, 3000))
case("hmac-sha256", "ok", f"digest {sock} --alg hmac-sha256 --key {key.hex()}", data,
     (hmac.new(key, data, hashlib.sha256).hexdigest() + "\n").encode())
open(f"{out}/cases/list", "w").write("\n".join(lines) + "\n")
key = os.urandom(16)
with open(f"{out}/batch.txt", "w") as f:
    for i in range(nbatch):
        iv, aad, pt = os.urandom(12), os.urandom(r.randint(0, 32)), os.urandom(r.randint(1, 1500))
        ct = AESGCM(key).encrypt(iv, pt, aad or None)
        f.write(f"{key.hex()} {iv.hex()} {aad.hex() or '-'} {pt.hex()} {ct.hex()}\n")
print(len(lines))
"#;

/// The guest's script (`@A@`, `@B@`, `@N@`, `@NSMAC@` are filled in).
const RUN: &str = r#"
D=/dpacc/dpacc
V=/dpacc/vnf
A=@A@
B=@B@
N=@N@
$D pci list
echo "DPACC-STEP bound"
if $D crypto --pci $A --alg aes-128-gcm --key 000102030405060708090a0b0c0d0e0f --iv 000000000000000000000000 encrypt </dev/null >/tmp/o 2>/tmp/e; then
    echo "DPACC-CHECK bound FAIL (it ran)"
elif grep -q "bound to the kernel driver virtio-pci" /tmp/e && grep -q "dpacc pci bind $A" /tmp/e; then
    echo "DPACC-CHECK bound ok"
else
    echo "DPACC-CHECK bound FAIL"
fi
cat /tmp/e
$D pci bind $A $B $N && echo "DPACC-CHECK bind ok"
echo "DPACC-STEP hugepages"
if $D crypto --pci $A --alg aes-128-gcm --key 000102030405060708090a0b0c0d0e0f --iv 000000000000000000000000 encrypt </dev/null >/tmp/o 2>/tmp/e; then
    echo "DPACC-CHECK hugepages FAIL (it ran)"
elif grep -q "not enough free 2 MiB hugepages" /tmp/e && grep -q "nr_hugepages" /tmp/e; then
    echo "DPACC-CHECK hugepages ok"
else
    echo "DPACC-CHECK hugepages FAIL"
fi
cat /tmp/e
echo 48 > /proc/sys/vm/nr_hugepages
$D pci list
echo "DPACC-STEP cases"
while read name expect args; do
    # shellcheck disable=SC2086 # args is a word list
    $D $args </dpacc/cases/$name.in >/tmp/o 2>/tmp/e
    rc=$?
    if [ "$expect" = ok ]; then
        if [ $rc = 0 ] && cmp -s /tmp/o /dpacc/cases/$name.exp; then echo "DPACC-CASE $name ok";
        else echo "DPACC-CASE $name FAIL rc=$rc: $(cat /tmp/e)"; fi
    else
        if [ $rc = 1 ] && [ ! -s /tmp/o ] && grep -q "authentication failed" /tmp/e; then echo "DPACC-CASE $name ok";
        else echo "DPACC-CASE $name FAIL rc=$rc: $(cat /tmp/e)"; fi
    fi
done </dpacc/cases/list
echo "DPACC-STEP batch"
$V batch /dpacc/batch.txt pci:$A pci:$B
echo "DPACC-STEP bench"
$D bench --pci $A --alg aes-128-gcm --size 1024 --batch 64 --seconds 2 &
bench=$!
sleep 1
# One owner at a time.
if $D digest --pci $A --alg sha256 </dev/null >/tmp/o 2>/tmp/e; then
    echo "DPACC-CHECK in-use FAIL (it ran)"
elif grep -q "in use by another process" /tmp/e; then
    echo "DPACC-CHECK in-use ok"
else
    echo "DPACC-CHECK in-use FAIL: $(cat /tmp/e)"
fi
wait $bench
$D bench --pci $B --alg hmac-sha256 --size 256 --seconds 1 --poll
echo "DPACC-STEP crash"
$V crash pci:$A
echo "DPACC-CRASH-EXIT $?"
first=$(head -n 1 /dpacc/cases/list | cut -d' ' -f1)
args=$(head -n 1 /dpacc/cases/list | cut -d' ' -f3-)
# shellcheck disable=SC2086
if $D $args </dpacc/cases/$first.in >/tmp/o 2>/tmp/e && cmp -s /tmp/o /dpacc/cases/$first.exp; then
    echo "DPACC-AFTER-CRASH ok"
else
    echo "DPACC-AFTER-CRASH FAIL: $(cat /tmp/e)"
fi
$V batch /dpacc/batch.txt pci:$A | sed 's/^DPACC-BATCH/DPACC-AFTER-CRASH-BATCH/'
echo "DPACC-STEP net"
$D flow --pci $N info
$D flow --pci $N add --cookie 1 --match in_port=0 --actions output:1 || echo "DPACC-NET-FAIL add"
$V net pci:$N @NSMAC@ 10.9.@SUBNET@.1 10.9.@SUBNET@.3 @FRAMES@ 30
$D flow --pci $N stats --cookie 1
$D bench net --pci $N --seconds 1
$D pci unbind $N
# Completions were waited for on the functions' interrupts (uio_pci_generic, INTx).
echo "DPACC-IRQS $(grep uio_pci_generic /proc/interrupts | awk '{for (i = 2; i <= NF - 3; i++) s += $i} END {print s + 0}')"
echo "DPACC-DONE"
"#;

fn python_ok() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import cryptography"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let msg = "SKIPPED: python3 with cryptography missing (run .ci/install-deps.sh)";
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{msg} (CI=true: failure)"
        );
        eprintln!("{msg}");
    }
    ok
}

/// A child process killed on drop.
struct Reaped(Option<Child>);

impl Reaped {
    /// Waits for the child and returns its stdout.
    fn output(mut self) -> String {
        let c = self.0.take().expect("child");
        let out = c.wait_with_output().expect("wait");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// In namespace `ns`: counts UDP datagrams to port 7777 holding `dpacc-pci-frame-`, and sends
/// one datagram (`dpacc-from-ns-N`) to the guest every 200 ms, until `stop` exists (at most
/// 300 s); then prints `received N`.
fn namespace_peer(ns: &str, guest_ip: &str, stop: &std::path::Path) -> Reaped {
    let script = format!(
        r#"
import os, socket, time
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); rx.bind(("0.0.0.0", 7777)); rx.settimeout(0.2)
tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
n, i, end = 0, 0, time.time() + 300
while time.time() < end and not os.path.exists("{stop}"):
    try:
        d, _ = rx.recvfrom(2048)
        if d.startswith(b"dpacc-pci-frame-"): n += 1
    except socket.timeout:
        tx.sendto(b"dpacc-from-ns-%d" % i, ("{guest_ip}", 7777)); i += 1
print("received", n, flush=True)
"#,
        stop = stop.display()
    );
    Reaped(Some(
        Command::new("ip")
            .args(["netns", "exec", ns, "python3", "-c", &script])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 in the namespace"),
    ))
}

#[test]
fn vnf_in_a_vm_drives_crypto_and_net_over_userspace_virtio_pci() {
    if !qemu_or_skip() || !python_ok() {
        return;
    }
    let Some(net) = Net::start("v", SUBNET) else {
        return;
    };
    // Two crypto backends: A with two data queues (QEMU hands only the first to the backend),
    // B with one.
    let crypto_a = Backend::start("pci-a", 2, 256);
    let crypto_b = Backend::start("pci-b", 1, 256);
    let guest = build_guest();
    let dpacc = static_binary("dpacc-guest", ["--bin", "dpacc"]);
    let vnf = static_binary("dpacc", ["--example", "qemu_pci_vnf"]);
    let dir = guest.join("runs/pci_guest");
    let gen = std::env::temp_dir().join(format!("dpacc-pci-cases-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&gen);
    let out = Command::new("python3")
        .args(["-c", GENERATE])
        .arg(&gen)
        .arg(CRYPTO_A)
        .arg(BATCH.to_string())
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "case generation failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ncases: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let mut files = Vec::new();
    for e in std::fs::read_dir(gen.join("cases")).unwrap() {
        let e = e.unwrap();
        let name = format!("cases/{}", e.file_name().to_string_lossy());
        files.push((name, std::fs::read(e.path()).unwrap()));
    }
    files.push((
        "batch.txt".into(),
        std::fs::read(gen.join("batch.txt")).unwrap(),
    ));
    let _ = std::fs::remove_dir_all(&gen);
    let ns_mac = net.mac_of(0);
    let script = RUN
        .replace("@A@", CRYPTO_A)
        .replace("@B@", CRYPTO_B)
        .replace("@N@", NET)
        .replace("@NSMAC@", &ns_mac)
        .replace("@SUBNET@", &SUBNET.to_string())
        .replace("@FRAMES@", &FRAMES.to_string());
    let initrd = initrd_with(
        &guest,
        &dir,
        &script,
        &[("dpacc", &dpacc), ("vnf", &vnf)],
        &files,
    );
    // The namespace knows the guest's address (no ARP through the exception path).
    let guest_ip = format!("10.9.{SUBNET}.3");
    common::netns::must(&[
        "ip",
        "-n",
        &net.ns[0],
        "neigh",
        "replace",
        &guest_ip,
        "lladdr",
        GUEST_MAC,
        "dev",
        &net.taps[0],
    ]);
    let stop = std::env::temp_dir().join(format!("dpacc-pci-peer-stop-{}", std::process::id()));
    let _ = std::fs::remove_file(&stop);
    let peer = namespace_peer(&net.ns[0], &guest_ip, &stop);
    let dev = |sock: &std::path::Path, id: &str, slot: &str| -> [String; 6] {
        [
            "-chardev".into(),
            format!("socket,id=ch{id},path={}", sock.display()),
            "-object".into(),
            format!(
                "cryptodev-vhost-user,id=cd{id},chardev=ch{id},queues={}",
                if id == "a" { 2 } else { 1 }
            ),
            "-device".into(),
            format!("virtio-crypto-pci,cryptodev=cd{id},addr={slot}"),
        ]
    };
    let mut extra: Vec<String> = vec![
        "-object".into(),
        "memory-backend-memfd,id=mem,size=512M,share=on".into(),
        "-numa".into(),
        "node,memdev=mem".into(),
    ];
    extra.extend(dev(crypto_a.path(), "a", "04.0"));
    extra.extend(dev(crypto_b.path(), "b", "06.0"));
    extra.extend([
        "-chardev".into(),
        format!("socket,id=chn,path={}", net.socket.display()),
        "-netdev".into(),
        "vhost-user,id=n0,chardev=chn".into(),
        "-device".into(),
        format!("virtio-net-pci,netdev=n0,mac={GUEST_MAC},addr=05.0"),
    ]);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let b = boot(&guest, &dir, &initrd, &extra, Duration::from_secs(240));
    std::fs::write(&stop, b"").unwrap();
    let peer_out = peer.output();
    let _ = std::fs::remove_file(&stop);
    let log = &b.serial;
    for l in log
        .lines()
        .filter(|l| l.contains("DPACC") || l.contains("ops/s"))
    {
        eprintln!("{}", l.trim());
    }
    let diag = b.diag();
    assert!(
        log.contains("DPACC-DONE"),
        "the guest script did not finish\n{diag}"
    );
    assert!(log.contains("DPACC-CHECK bound ok"), "{diag}");
    assert!(log.contains("DPACC-CHECK bind ok"), "{diag}");
    assert!(log.contains("DPACC-CHECK hugepages ok"), "{diag}");
    assert!(log.contains("DPACC-CHECK in-use ok"), "{diag}");
    let fails: Vec<&str> = log.lines().filter(|l| l.contains("FAIL")).collect();
    assert!(fails.is_empty(), "failures:\n{}\n{diag}", fails.join("\n"));
    let passed = log
        .lines()
        .filter(|l| l.starts_with("DPACC-CASE") && l.ends_with(" ok"))
        .count();
    assert_eq!(passed, ncases, "cases passed\n{diag}");
    for d in [CRYPTO_A, CRYPTO_B] {
        let l = |pass: &str| format!("DPACC-BATCH pci:{d} queue 0 {pass}: {BATCH} in flight");
        assert!(
            log.contains(&format!(
                "{}, {BATCH} ok, 0 auth-failed, 0 wrong",
                l("encrypt")
            )),
            "{d}: batch encrypt\n{diag}"
        );
        assert!(
            log.contains(&format!(
                "{}, {} ok, 1 auth-failed, 0 wrong",
                l("decrypt"),
                BATCH - 1
            )),
            "{d}: batch decrypt\n{diag}"
        );
    }
    assert!(
        log.contains(&format!(
            "DPACC-BATCH pci:{CRYPTO_A}: 1 data queue(s) reach the backend, in-band sessions true"
        )),
        "the library must find that only data queue 0 reaches the backend\n{diag}"
    );
    assert!(!log.contains("DPACC-BATCH-ERROR"), "{diag}");
    let figures = log
        .lines()
        .filter(|l| l.starts_with("device") && l.contains("ops/s"))
        .count();
    assert_eq!(
        figures, 2,
        "dpacc bench --pci (interrupts, then --poll) printed no figure\n{diag}"
    );
    assert!(
        log.lines()
            .any(|l| l.starts_with("net ") && l.contains("Mpps") && l.contains("hairpin")),
        "dpacc bench net --pci printed no figure\n{diag}"
    );
    assert!(log.contains("DPACC-CRASH pci:"), "{diag}");
    assert!(
        log.contains("DPACC-CRASH-EXIT 137"),
        "the vNF was not killed\n{diag}"
    );
    assert!(log.contains("DPACC-AFTER-CRASH ok"), "{diag}");
    assert!(
        log.contains(&format!(
            "DPACC-AFTER-CRASH-BATCH pci:{CRYPTO_A} queue 0 encrypt: {BATCH} in flight, {BATCH} ok"
        )),
        "{diag}"
    );
    // Net.
    assert!(log.contains("8 tables, at most 64 flows"), "{diag}");
    assert!(log.contains("flow 1 installed"), "{diag}");
    assert!(
        log.contains(&format!("DPACC-NET-SENT {FRAMES} frames")),
        "{diag}"
    );
    assert!(
        log.contains("DPACC-PACKET-IN port 1") && log.contains("marker true"),
        "no PACKET_IN of the namespace's datagram\n{diag}"
    );
    let stats = log
        .lines()
        .find_map(|l| l.strip_prefix("cookie 1: "))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0);
    assert!(stats >= FRAMES, "flow 1 counted {stats} packets\n{diag}");
    assert!(
        log.contains(&format!("{NET}: driver now virtio-pci")),
        "dpacc pci unbind\n{diag}"
    );
    let irqs = log
        .lines()
        .find_map(|l| l.strip_prefix("DPACC-IRQS "))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .unwrap_or(0);
    assert!(
        irqs >= 20,
        "only {irqs} uio_pci_generic interrupts: completions were not signalled\n{diag}"
    );
    let received = peer_out
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0);
    assert_eq!(
        received, FRAMES,
        "datagrams the namespace received from the vNF (peer said: {peer_out})\n{diag}"
    );
    drop((crypto_a, crypto_b, net));
}
