//! The vNF side of tests/qemu_pci_guest.rs, run inside the QEMU guest (linked statically):
//! the guest library over the VM's virtio PCI functions, checked against answers the host
//! computed with an independent implementation (Python `cryptography`).
//!
//! - `batch CASES DEVICE...`: per device (one thread each, in parallel): AES-GCM encrypt every
//!   case of CASES (`key iv aad plaintext ciphertext||tag`, hex, one key for all) with all
//!   operations pushed before one flush (all in flight at once), then decrypt them back with
//!   the tag of one case tampered; prints `DPACC-BATCH ...` lines.
//! - `crash DEVICE`: pushes large operations, flushes, and kills itself (SIGKILL) while they
//!   are in flight.
//! - `net DEVICE DST_MAC DST_IP SRC_IP COUNT SECONDS`: sends COUNT UDP frames (port 7777,
//!   payload `dpacc-pci-frame-N`) on the vNF port, then prints the PACKET_IN events that arrive
//!   within SECONDS.

use std::net::Ipv4Addr;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use dpacc_guest::net::{Event, FlowTable, FrameIo, NetOptions, VirtioNetPort};
use dpacc_guest::{CryptoDevice, CryptoError, Op, Options};
use dpacc_spec::{AeadAlg, Direction, SessionParams};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

struct Case {
    key: Vec<u8>,
    iv: Vec<u8>,
    aad: Vec<u8>,
    pt: Vec<u8>,
    ct: Vec<u8>,
}

fn hex(s: &str) -> Res<Vec<u8>> {
    if s == "-" {
        return Ok(Vec::new());
    }
    if s.len() % 2 != 0 {
        return Err(format!("odd hex length: {s}").into());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(Into::into))
        .collect()
}

fn cases(path: &str) -> Res<Vec<Case>> {
    let text = std::fs::read_to_string(path)?;
    let mut v = Vec::new();
    for l in text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
    {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() != 5 {
            return Err(format!("bad case line: {l}").into());
        }
        v.push(Case {
            key: hex(f[0])?,
            iv: hex(f[1])?,
            aad: hex(f[2])?,
            pt: hex(f[3])?,
            ct: hex(f[4])?,
        });
    }
    Ok(v)
}

fn open(dev: &str) -> Res<CryptoDevice> {
    let opts = Options {
        queue_size: 256,
        arena_size: 8 << 20,
        ..Options::default()
    };
    Ok(CryptoDevice::open(dev, opts)?)
}

fn gcm(key: &[u8], dir: Direction) -> SessionParams<'_> {
    SessionParams::Aead {
        alg: AeadAlg::AesGcm,
        key,
        tag_len: 0,
        dir,
    }
}

/// Encrypts then decrypts every case on data queue 0 of `dev`, all in flight at once.
fn batch_one(dev_name: &str, cs: &[Case], start: &Barrier) -> Res<String> {
    let dev = open(dev_name)?;
    let key = &cs[0].key;
    let enc = dev.create_session(&gcm(key, Direction::Encrypt))?;
    let mut q = dev.queue(0)?;
    // Under QEMU the only data queue that reaches the backend is now held: the decrypt session
    // goes in-band through the held queue.
    let dec = q.create_session(&gcm(key, Direction::Decrypt))?;
    let mut report = format!(
        "DPACC-BATCH {dev_name}: {} data queue(s) reach the backend, in-band sessions {}\n",
        dev.num_queues(),
        dev.uses_in_band_sessions()
    );
    for (pass, sess) in [("encrypt", &enc), ("decrypt", &dec)] {
        for (i, c) in cs.iter().enumerate() {
            let (input, out_len) = if pass == "encrypt" {
                (c.pt.clone(), c.ct.len())
            } else {
                let mut ct = c.ct.clone();
                if i == 3 {
                    // Case 3's tag is tampered with: it must fail authentication alone.
                    let last = ct.len() - 1;
                    ct[last] ^= 0x80;
                }
                (ct, c.pt.len())
            };
            let src = dev.alloc_from(&input)?;
            let dst = dev.alloc(out_len.max(1))?;
            let mut dst = dst;
            dst.set_len(out_len)?;
            let aad = if c.aad.is_empty() {
                None
            } else {
                Some(dev.alloc_from(&c.aad)?)
            };
            let op = Op::aead(sess, &c.iv, aad, src, dst).with_user_data(i as u64);
            q.push(op).map_err(|r| r.error)?;
        }
        start.wait();
        q.flush()?;
        let in_flight = q.in_flight();
        let mut done = Vec::with_capacity(cs.len());
        while q.in_flight() > 0 {
            q.wait(&mut done)?;
        }
        let (mut ok, mut wrong, mut auth) = (0, 0, 0);
        for c in &done {
            let case = &cs[c.user_data as usize];
            let want: &[u8] = if pass == "encrypt" {
                &case.ct
            } else {
                &case.pt
            };
            match c.result {
                Ok(()) => {
                    let got = c.bufs.dst.as_ref().map(|d| d.as_slice()).unwrap_or(&[]);
                    if got == want {
                        ok += 1;
                    } else {
                        wrong += 1;
                        eprintln!("{dev_name} {pass} case {}: wrong output", c.user_data);
                    }
                }
                Err(CryptoError::AuthFailed) if pass == "decrypt" && c.user_data == 3 => auth += 1,
                Err(e) => {
                    wrong += 1;
                    eprintln!("{dev_name} {pass} case {}: {e}", c.user_data);
                }
            }
        }
        report.push_str(&format!(
            "DPACC-BATCH {dev_name} queue {} {pass}: {in_flight} in flight, {ok} ok, {auth} auth-failed, {wrong} wrong\n",
            q.index()
        ));
    }
    Ok(report)
}

fn batch(path: &str, devs: &[String]) -> Res<()> {
    let cs = Arc::new(cases(path)?);
    if cs.len() < 4 {
        return Err("need at least 4 cases".into());
    }
    let start = Arc::new(Barrier::new(devs.len()));
    let hs: Vec<_> = devs
        .iter()
        .cloned()
        .map(|d| {
            let (cs, start) = (cs.clone(), start.clone());
            std::thread::spawn(move || batch_one(&d, &cs, &start).map_err(|e| format!("{d}: {e}")))
        })
        .collect();
    for h in hs {
        match h.join() {
            Ok(Ok(r)) => print!("{r}"),
            Ok(Err(e)) => println!("DPACC-BATCH-ERROR {e}"),
            Err(_) => println!("DPACC-BATCH-ERROR thread panicked"),
        }
    }
    Ok(())
}

fn crash(dev_name: &str) -> Res<()> {
    let dev = open(dev_name)?;
    let key = [7u8; 32];
    let enc = dev.create_session(&gcm(&key, Direction::Encrypt))?;
    let mut q = dev.queue(0)?;
    let mut n = 0;
    for i in 0..128u64 {
        let src = dev.alloc(32 << 10)?;
        let dst = dev.alloc((32 << 10) + 16)?;
        let iv = [i as u8; 12];
        if q.push(Op::aead(&enc, &iv, None, src, dst)).is_err() {
            break;
        }
        n += 1;
    }
    q.flush()?;
    println!(
        "DPACC-CRASH {dev_name}: {n} operations pushed, {} in flight; SIGKILL",
        q.in_flight()
    );
    // SAFETY: sending SIGKILL to ourselves; nothing runs after it.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    Ok(())
}

fn mac(s: &str) -> Res<[u8; 6]> {
    let v: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()?;
    v.try_into().map_err(|_| "bad MAC".into())
}

fn udp_frame(dst: [u8; 6], src: [u8; 6], sip: Ipv4Addr, dip: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let ip_len = 20 + 8 + payload.len();
    let mut f = Vec::with_capacity(14 + ip_len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&sip.octets());
    ip[16..20].copy_from_slice(&dip.octets());
    let sum = ip
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u32>();
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = !((sum & 0xffff) + (sum >> 16)) as u16;
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&7777u16.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]); // no UDP checksum (IPv4)
    f.extend_from_slice(payload);
    f
}

fn net(args: &[String]) -> Res<()> {
    let [dev_name, dst_mac, dst_ip, src_ip, count, secs] = args else {
        return Err("net DEVICE DST_MAC DST_IP SRC_IP COUNT SECONDS".into());
    };
    let port = VirtioNetPort::open(dev_name, NetOptions::default())?;
    let me = port.mac();
    let mut ft = FlowTable::new(port, me);
    let (dst, dip, sip): (_, Ipv4Addr, Ipv4Addr) =
        (mac(dst_mac)?, dst_ip.parse()?, src_ip.parse()?);
    let count: usize = count.parse()?;
    for i in 0..count {
        let payload = format!("dpacc-pci-frame-{i}");
        ft.io()
            .send(&udp_frame(dst, me, sip, dip, payload.as_bytes()))?;
    }
    println!("DPACC-NET-SENT {count} frames from {dev_name}");
    let end = std::time::Instant::now() + Duration::from_secs_f64(secs.parse()?);
    let mut seen = 0;
    while let Some(left) = end.checked_duration_since(std::time::Instant::now()) {
        match ft.next_event(left)? {
            Some(Event::PacketIn { in_port, frame, .. }) => {
                let marker = frame.windows(14).any(|w| w == b"dpacc-from-ns-");
                println!(
                    "DPACC-PACKET-IN port {} {} bytes marker {marker}",
                    in_port.0,
                    frame.len()
                );
                seen += 1;
                if marker && seen >= 1 {
                    break;
                }
            }
            Some(Event::FlowExpired(_)) => {}
            None => break,
        }
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
        Some("batch") if args.len() >= 3 => batch(&args[1], &args[2..]),
        Some("crash") if args.len() == 2 => crash(&args[1]),
        Some("net") => net(&args[1..]),
        _ => Err("usage: pci_vnf batch CASES DEVICE... | crash DEVICE | net ...".into()),
    };
    if let Err(e) = r {
        println!("DPACC-VNF-ERROR {e}");
        std::process::exit(1);
    }
}
