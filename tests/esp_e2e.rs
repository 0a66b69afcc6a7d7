//! IPsec ESP through the fast-path device with an independent peer: a host in one namespace
//! (behind uplink 1) sends UDP to a remote network; the vNF's flows encapsulate it (tunnel
//! mode, AES-GCM) out of uplink 2, where scapy's ESP implementation, in the other namespace,
//! decrypts it and answers with its own ESP packet, which the fast path decapsulates back to
//! the host. A replayed copy and a tampered copy of scapy's packet must not reach the host.
//!
//! Needs root, iproute2, python3 with scapy + cryptography; SKIPPED otherwise (CI=true: fail).

mod common;

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::netns::{connect, flow, must, Net};
use dpacc::spec::fastpath::flow::{Action, Match, Prefix};
use dpacc::spec::fastpath::proto::{SaDirection, SaSpec};
use dpacc::spec::fastpath::PortId;

const KEY: &str = "000102030405060708090a0b0c0d0e0f";
const SALT: &str = "c0ffee00";

const PEER: &str = r#"
import sys
from scapy.all import Ether, IP, UDP, Raw, AsyncSniffer, sendp
from scapy.layers.ipsec import SecurityAssociation, ESP
iface, key = sys.argv[1], bytes.fromhex(sys.argv[2]) + bytes.fromhex(sys.argv[3])
sa_in = SecurityAssociation(ESP, spi=0x100, crypt_algo='AES-GCM', crypt_key=key,
                            tunnel_header=IP(src='192.0.2.1', dst='192.0.2.2'))
sa_out = SecurityAssociation(ESP, spi=0x200, crypt_algo='AES-GCM', crypt_key=key,
                             tunnel_header=IP(src='192.0.2.2', dst='192.0.2.1'))
sn = AsyncSniffer(iface=iface, count=1, lfilter=lambda p: ESP in p)
sn.start()
import time; time.sleep(0.5)
print('ready', flush=True)
sn.join(timeout=15)
if sn.running: sn.stop()
if not sn.results:
    print('no ESP packet'); sys.exit(1)
inner = sa_in.decrypt(sn.results[0][IP])
data = bytes(inner[UDP].payload)
print('peer got', inner[IP].src, inner[IP].dst, data.decode(), flush=True)
reply = IP(src=inner[IP].dst, dst=inner[IP].src) / UDP(sport=inner[UDP].dport, dport=inner[UDP].sport) / Raw(b'pong:' + data)
frame = bytes(Ether(dst='02:00:00:00:00:aa', src='02:00:00:00:00:bb') / sa_out.encrypt(reply))
sendp(Ether(frame), iface=iface, verbose=False)
sendp(Ether(frame), iface=iface, verbose=False)            # replay
bad = bytearray(frame); bad[-20] ^= 1                      # tampered ciphertext
sendp(Ether(bytes(bad)), iface=iface, verbose=False)
later = bytes(Ether(dst='02:00:00:00:00:aa', src='02:00:00:00:00:bb') / sa_out.encrypt(reply / Raw(b'+2')))
sendp(Ether(later), iface=iface, verbose=False)            # a fresh packet still gets through
print('sent', flush=True)
"#;

const HOST: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('10.9.5.1', 40000)); s.settimeout(3)
s.sendto(b'ping', ('10.9.6.1', 9999))
got = []
try:
    while True:
        got.append(s.recvfrom(2048)[0].decode())
except socket.timeout:
    pass
print('|'.join(got))
"#;

#[test]
fn esp_tunnel_interoperates_with_scapy_through_the_device() {
    let scapy = Command::new("python3")
        .args(["-c", "import scapy.layers.ipsec, cryptography"])
        .status()
        .is_ok_and(|s| s.success());
    if !scapy {
        let msg = "SKIPPED: python3 with scapy and cryptography not found";
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{msg} (CI=true: failure)"
        );
        eprintln!("{msg}");
        return;
    }
    let Some(net) = Net::start("e", 5) else {
        return;
    };
    let mut ft = connect(&net);
    // The host (ns[0], 10.9.5.1) reaches 10.9.6.0/24 through the port.
    must(&[
        "ip",
        "-n",
        &net.ns[0],
        "route",
        "add",
        "10.9.6.0/24",
        "via",
        "10.9.5.254",
    ]);
    must(&[
        "ip",
        "-n",
        &net.ns[0],
        "neigh",
        "add",
        "10.9.5.254",
        "lladdr",
        "02:00:00:00:00:fe",
        "dev",
        &net.taps[0],
    ]);
    let host_mac: Vec<u8> = net
        .mac_of(0)
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    let sa = |spi, dir| SaSpec {
        spi,
        key: hex::decode(KEY).unwrap(),
        salt: hex::decode(SALT).unwrap().try_into().unwrap(),
        dir,
    };
    ft.add_sa(sa(
        0x100,
        SaDirection::Outbound {
            src: "192.0.2.1".parse().unwrap(),
            dst: "192.0.2.2".parse().unwrap(),
        },
    ))
    .unwrap();
    ft.add_sa(sa(0x200, SaDirection::Inbound)).unwrap();
    let dst = Some(Prefix {
        addr: "10.9.6.0".parse().unwrap(),
        len: 24,
    });
    ft.add_flow(flow(
        1,
        Match {
            in_port: Some(1),
            eth_type: Some(0x0800),
            dst,
            ..Match::default()
        },
        vec![Action::EspEncap(0x100), Action::Output(PortId(2))],
    ))
    .unwrap();
    ft.add_flow(flow(
        2,
        Match {
            in_port: Some(2),
            eth_type: Some(0x0800),
            proto: Some(50),
            spi: Some(0x200),
            ..Match::default()
        },
        vec![
            Action::EspDecap,
            Action::SetEthDst(host_mac.try_into().unwrap()),
            Action::Output(PortId(1)),
        ],
    ))
    .unwrap();

    let mut peer = Command::new("ip")
        .args([
            "netns",
            "exec",
            &net.ns[1],
            "python3",
            "-c",
            PEER,
            &net.taps[1],
            KEY,
            SALT,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(peer.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    std::thread::sleep(Duration::from_millis(300));
    let host = Command::new("ip")
        .args(["netns", "exec", &net.ns[0], "python3", "-c", HOST])
        .output()
        .unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let status = peer.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut peer.stderr.take().unwrap(), &mut err).unwrap();
    let got = String::from_utf8_lossy(&host.stdout).trim().to_string();
    eprintln!("peer: {rest}\nhost received: {got}");
    assert!(status.success(), "scapy peer failed: {rest}\n{err}");
    assert!(
        rest.contains("peer got 10.9.5.1 10.9.6.1 ping"),
        "scapy decrypted our ESP: {rest}"
    );
    assert_eq!(
        got, "pong:ping|pong:ping+2",
        "exactly the genuine replies arrive (no replay, no forgery)"
    );
    assert_eq!(ft.stats(1).unwrap().packets, 1);
    assert_eq!(
        ft.stats(2).unwrap().packets,
        4,
        "four ESP packets matched; two were dropped by the SA"
    );
}
