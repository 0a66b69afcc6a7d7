//! Writes the seed corpora in `fuzz/corpus/<target>/`: well-formed inputs (protocol
//! handshakes, ring layouts with valid chains, requests for every session kind, control
//! messages, frames with correct checksums) for the fuzzer to mutate.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --example make_seeds` (any toolchain).

use std::net::Ipv4Addr;
use std::path::Path;

use dpacc_backend::fuzzing::{session_id, session_params, SESSION_KEY};
use dpacc_fuzz::{session_op, Writer, SESSION_UA};
use dpacc_guest::request;
use dpacc_spec::fastpath::flow::{Action, Bucket, FlowSpec, Match, Prefix};
use dpacc_spec::fastpath::proto::{Body, Message, SaDirection, SaSpec};
use dpacc_spec::fastpath::PortId;
use dpacc_spec::vhost_user_crypto::{QemuCryptoSession, QemuSymSessionInfo};
use dpacc_spec::virtio_crypto::{self as vc, DataRequest};
use dpacc_spec::{ctrl, in_band, SessionParams};
use vm_memory::ByteValued;

fn save(target: &str, name: &str, data: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), data).unwrap();
}

// ------------------------------------------------------------------ guest memory layouts

/// A 16-byte split-ring descriptor.
fn desc(addr: u64, len: u32, flags: u16, next: u16) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    d[14..].copy_from_slice(&next.to_le_bytes());
    d
}

const NEXT: u16 = 1;
const WRITE: u16 = 2;
const INDIRECT: u16 = 4;

/// A guest memory image under construction.
struct Image(Vec<u8>);

impl Image {
    fn new(size: usize) -> Self {
        Self(vec![0; size])
    }

    fn put(&mut self, at: u64, b: &[u8]) {
        let at = at as usize;
        self.0[at..at + b.len()].copy_from_slice(b);
    }

    /// Makes `heads` available on the ring whose avail ring is at `avail`.
    fn avail(&mut self, avail: u64, heads: &[u16]) {
        self.put(avail + 2, &(heads.len() as u16).to_le_bytes());
        for (i, h) in heads.iter().enumerate() {
            self.put(avail + 4 + 2 * i as u64, &h.to_le_bytes());
        }
    }

    /// Cuts trailing zeroes (the target reads missing bytes as zero).
    fn bytes(&self) -> &[u8] {
        let end = self.0.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        &self.0[..end]
    }
}

/// A data request for session `slot` with its readable parts and writable length.
fn data_request(slot: u8) -> (Vec<u8>, u32) {
    let p = session_params()[usize::from(slot)].validated().unwrap();
    let info = p.info();
    let id = session_id(slot);
    let src: Vec<u8> = (0..32u8).collect();
    let (req, mut readable, writable): (DataRequest, Vec<u8>, u32) = match slot {
        0 | 1 => (
            request::cipher(&info, id, 16, 32),
            [vec![7u8; 16], src].concat(),
            32 + 1,
        ),
        2 => (
            request::aead(&info, id, 12, 8, 32, 48),
            [vec![7u8; 12], src, vec![9u8; 8]].concat(),
            48 + 1,
        ),
        3 | 7 => (
            request::aead(&info, id, 12, 8, 48, 32),
            [vec![7u8; 12], vec![1u8; 48], vec![9u8; 8]].concat(),
            32 + 1,
        ),
        4 => (request::hash(&info, id, 32, 32), src, 32 + 1),
        5 => (request::hash(&info, id, 32, 16), src, 16 + 1),
        _ => (
            request::chain(&info, id, 16, 32, 0, 32),
            [vec![7u8; 16], src].concat(),
            32 + 32 + 1,
        ),
    };
    let mut r = req.as_slice().to_vec();
    r.append(&mut readable);
    (r, writable)
}

/// A control-queue create request (header + keys) for these parameters, and its writable
/// length.
fn create_request(p: &SessionParams<'_>) -> (Vec<u8>, u32) {
    let mut keys = Vec::new();
    let req = ctrl::encode_create(p, &mut keys);
    ([req.as_slice(), &keys].concat(), 16)
}

// ------------------------------------------------------------------ crypto

fn crypto_seeds() {
    for slot in 0..8u8 {
        let (req, w) = data_request(slot);
        save(
            "crypto_request",
            &format!("data-{slot}"),
            &Writer::default().u8(0).u16(w as u16).bytes(&req).0,
        );
    }
    for (i, p) in session_params().iter().enumerate() {
        let (req, w) = create_request(p);
        save(
            "crypto_request",
            &format!("control-create-{i}"),
            &Writer::default().u8(1).u16(w as u16).bytes(&req).0,
        );
    }
    // The same requests in-band, on a data queue (dpacc_spec::in_band), and its own two.
    for (i, p) in session_params().iter().enumerate().take(3) {
        let (req, w) = create_request(p);
        save(
            "crypto_request",
            &format!("in-band-create-{i}"),
            &Writer::default().u8(0).u16(w as u16).bytes(&req).0,
        );
    }
    for (name, op, w) in [
        (
            "in-band-get-config",
            in_band::GET_CONFIG,
            in_band::GET_CONFIG_INPUT_LEN,
        ),
        ("in-band-close-all", in_band::CLOSE_ALL_SESSIONS, 1),
    ] {
        let mut req = vc::CtrlRequest::default();
        req.header.opcode = op.into();
        save(
            "crypto_request",
            name,
            &Writer::default()
                .u8(0)
                .u16(w as u16)
                .bytes(req.as_slice())
                .0,
        );
    }
    let destroy = ctrl::encode_destroy(vc::SERVICE_CIPHER, session_id(0));
    save(
        "crypto_request",
        "control-destroy",
        &Writer::default().u8(1).u16(1).bytes(destroy.as_slice()).0,
    );
    for (name, s) in qemu_sessions() {
        save(
            "crypto_request",
            &format!("qemu-{name}"),
            &Writer::default().u8(2).u16(0).bytes(s.as_slice()).0,
        );
    }

    // Rings: every request kind, direct and indirect chains; the control queue.
    let mut img = Image::new(0x10000);
    let mut heads = Vec::new();
    let mut next_desc = 0u16;
    let mut data_at = 0x4000u64;
    for slot in 0..8u8 {
        let (req, w) = data_request(slot);
        img.put(data_at, &req);
        let (r, wr) = (data_at, data_at + 0x400);
        heads.push(next_desc);
        if slot % 2 == 0 {
            img.put(
                u64::from(next_desc) * 16,
                &desc(r, req.len() as u32, NEXT, next_desc + 1),
            );
            img.put(u64::from(next_desc + 1) * 16, &desc(wr, w, WRITE, 0));
            next_desc += 2;
        } else {
            // Indirect: a table of two descriptors at data_at + 0x600.
            let t = data_at + 0x600;
            img.put(t, &desc(r, req.len() as u32, NEXT, 1));
            img.put(t + 16, &desc(wr, w, WRITE, 0));
            img.put(u64::from(next_desc) * 16, &desc(t, 32, INDIRECT, 0));
            next_desc += 1;
        }
        data_at += 0x800;
    }
    img.avail(0x1000, &heads);
    let hdr = |control: u8| {
        Writer::default()
            .u8(control)
            .u8(4) // 16 entries
            .u16(0)
            .u16(0x1000)
            .u16(0x2000)
            .u16(0)
            .u8(1)
    };
    save(
        "crypto_ring",
        "data-all-kinds",
        &hdr(0).bytes(img.bytes()).0,
    );
    let mut img = Image::new(0x10000);
    let mut heads = Vec::new();
    for (i, p) in session_params().iter().enumerate().take(6) {
        let (req, w) = create_request(p);
        let at = 0x4000 + 0x800 * i as u64;
        img.put(at, &req);
        let d = 2 * i as u16;
        img.put(u64::from(d) * 16, &desc(at, req.len() as u32, NEXT, d + 1));
        img.put(u64::from(d + 1) * 16, &desc(at + 0x400, w, WRITE, 0));
        heads.push(d);
    }
    img.avail(0x1000, &heads);
    save(
        "crypto_ring",
        "control-creates",
        &hdr(1).bytes(img.bytes()).0,
    );
}

fn qemu_sessions() -> Vec<(&'static str, QemuCryptoSession)> {
    let mk = |info: QemuSymSessionInfo| {
        let mut s = QemuCryptoSession {
            op_code: u64::from(vc::CIPHER_CREATE_SESSION),
            ..Default::default()
        };
        s.set_sym_info(&info);
        s.key_area_mut()[..info.key_len as usize].fill(0x11);
        s.auth_key_area_mut()[..info.auth_key_len as usize].fill(0x22);
        s
    };
    vec![
        (
            "cbc",
            mk(QemuSymSessionInfo {
                cipher_alg: vc::cipher::AES_CBC,
                key_len: 16,
                op_type: vc::SYM_OP_CIPHER as u8,
                direction: 1,
                ..Default::default()
            }),
        ),
        (
            "chain",
            mk(QemuSymSessionInfo {
                cipher_alg: vc::cipher::AES_CBC,
                key_len: 32,
                hash_alg: vc::mac::HMAC_SHA_256,
                hash_result_len: 32,
                auth_key_len: 32,
                op_type: vc::SYM_OP_ALGORITHM_CHAINING as u8,
                direction: 1,
                hash_mode: vc::HASH_MODE_AUTH as u8,
                alg_chain_order: vc::CHAIN_ORDER_CIPHER_THEN_HASH as u8,
                ..Default::default()
            }),
        ),
    ]
}

// ------------------------------------------------------------------ vhost-user

/// A raw vhost-user message.
fn vmsg(request: u32, flags: u32, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&request.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&(payload.len() as u32).to_ne_bytes());
    m.extend_from_slice(payload);
    m
}

fn mem_table(regions: &[(u64, u64, u64, u64)]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&(regions.len() as u32).to_ne_bytes());
    p.extend_from_slice(&0u32.to_ne_bytes());
    for &(gpa, size, ua, off) in regions {
        for v in [gpa, size, ua, off] {
            p.extend_from_slice(&v.to_ne_bytes());
        }
    }
    p
}

fn vring_state(i: u32, n: u32) -> Vec<u8> {
    [i.to_ne_bytes(), n.to_ne_bytes()].concat()
}

fn vring_addr(i: u32, base: u64) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&i.to_ne_bytes());
    p.extend_from_slice(&0u32.to_ne_bytes());
    for v in [
        SESSION_UA + base,
        SESSION_UA + base + 0x2000,
        SESSION_UA + base + 0x1000,
        0,
    ] {
        p.extend_from_slice(&v.to_ne_bytes());
    }
    p
}

/// A session under construction (`vhost_user_session` input).
struct Session(Writer);

impl Session {
    fn new(net: bool) -> Self {
        Self(Writer::default().u8(u8::from(net)))
    }

    fn msg(self, request: u8, payload: &[u8], fds: &[u8]) -> Self {
        let data = Writer::default()
            .u8(request)
            .u8(0x1 | 0x8)
            .u8(fds.len() as u8)
            .bytes(fds)
            .bytes(payload)
            .0;
        Self(self.0.u8(session_op::MSG).chunk(&data))
    }

    fn write(self, offset: u32, data: &[u8]) -> Self {
        let d = Writer::default().u32(offset).bytes(data).0;
        Self(self.0.u8(session_op::WRITE).chunk(&d))
    }

    fn kick(self, i: u8) -> Self {
        Self(self.0.u8(session_op::KICK).chunk(&[i]))
    }

    fn shrink(self, len: u32) -> Self {
        Self(self.0.u8(session_op::SHRINK).chunk(&len.to_le_bytes()))
    }

    /// Features, protocol features (REPLY_ACK, MQ, CONFIG, CRYPTO_SESSION), owner, memory.
    fn handshake(self) -> Self {
        self.msg(1, &[], &[])
            .msg(
                2,
                &((1u64 << 32) | (1 << 29) | (1 << 28) | (1 << 30) | (1 << 15) | (1 << 5))
                    .to_ne_bytes(),
                &[],
            )
            .msg(15, &[], &[])
            .msg(16, &(1u64 | 8 | 0x80 | 0x200).to_ne_bytes(), &[])
            .msg(17, &[], &[])
            .msg(3, &[], &[])
            .msg(5, &mem_table(&[(0, 256 << 10, SESSION_UA, 0)]), &[0])
    }

    /// Ring `i` (16 entries) at guest-physical `i * 0x4000` with a call and a kick eventfd
    /// (eventfds number 2i and 2i + 1).
    fn ring(self, i: u32) -> Self {
        let idx = u64::from(i).to_ne_bytes();
        self.msg(8, &vring_state(i, 16), &[])
            .msg(10, &vring_state(i, 0), &[])
            .msg(9, &vring_addr(i, u64::from(i) * 0x4000), &[])
            .msg(13, &idx, &[1])
            .msg(12, &idx, &[1])
    }
}

fn vhost_user_seeds() {
    // The message stream decoder: a QEMU-like handshake.
    let mut stream = Vec::new();
    for (r, p) in [
        (1u32, vec![]),
        (15, vec![]),
        (16, (1u64 | 8 | 0x80).to_ne_bytes().to_vec()),
        (17, vec![]),
        (3, vec![]),
        (2, (1u64 << 32).to_ne_bytes().to_vec()),
        (5, mem_table(&[(0, 1 << 20, SESSION_UA, 0)])),
        (8, vring_state(0, 256)),
        (9, vring_addr(0, 0)),
        (10, vring_state(0, 0)),
        (12, 0x100u64.to_ne_bytes().to_vec()),
        (11, vring_state(0, 0)),
        (
            24,
            [0u32.to_ne_bytes(), 8u32.to_ne_bytes(), 0u32.to_ne_bytes()]
                .concat()
                .into_iter()
                .chain([0; 8])
                .collect(),
        ),
        (27, 5u64.to_ne_bytes().to_vec()),
    ] {
        stream.extend(vmsg(r, 0x1 | 0x8, &p));
    }
    save(
        "vhost_user_msg",
        "handshake",
        &[&[0u8][..], &stream].concat(),
    );
    let table = |files: &[(u8, u8)], regions: &[(u64, u64, u64, u64)]| {
        let mut w = Writer::default().u8(1).u8(files.len() as u8);
        for &(pages, seal) in files {
            w = w.u8(pages).u8(seal);
        }
        w.bytes(&mem_table(regions)).0
    };
    save(
        "vhost_user_msg",
        "table-one",
        &table(&[(64, 0)], &[(0, 64 << 12, SESSION_UA, 0)]),
    );
    save(
        "vhost_user_msg",
        "table-two-sealed",
        &table(
            &[(16, 1), (32, 0)],
            &[
                (0, 16 << 12, SESSION_UA, 0),
                (1 << 20, 16 << 12, SESSION_UA + (1 << 20), 16 << 12),
            ],
        ),
    );
    save(
        "vhost_user_msg",
        "table-past-eof",
        &table(&[(1, 0)], &[(0, 1 << 20, SESSION_UA, 0)]),
    );

    // Crypto: handshake, a session, data ring 0 with a request, kicks, stop.
    let (req, w) = data_request(0);
    let mut img = Image::new(0x4000);
    img.put(0, &desc(0x3000, req.len() as u32, NEXT, 1));
    img.put(16, &desc(0x3800, w, WRITE, 0));
    img.avail(0x1000, &[0]);
    img.put(0x3000, &req);
    let qemu = &qemu_sessions()[0].1;
    let s = Session::new(false)
        .handshake()
        .msg(26, qemu.as_slice(), &[])
        .ring(0)
        .write(0, img.bytes())
        .kick(1)
        .kick(1)
        .msg(11, &vring_state(0, 0), &[])
        .msg(27, &session_id(0).to_ne_bytes(), &[]);
    save("vhost_user_session", "crypto-request", &s.0 .0);
    let s = Session::new(false)
        .handshake()
        .ring(0)
        .ring(1)
        .shrink(4096)
        .kick(1)
        .kick(3);
    save("vhost_user_session", "crypto-shrink", &s.0 .0);

    // Net: handshake, both rings, a HELLO control frame and a data frame on TX, RX buffers.
    let hello = {
        let mut f = Vec::new();
        dpacc_spec::fastpath::proto::encode_frame(
            dpacc_spec::fastpath::proto::BACKEND_MAC,
            [2, 0, 0, 0, 0, 9],
            &Message {
                txid: 1,
                body: Body::Hello,
            },
            &mut f,
        );
        f
    };
    let mut img = Image::new(0x8000);
    // RX ring 0: two writable 2 KiB buffers.
    img.put(0, &desc(0x3000, 0x800, WRITE, 0));
    img.put(16, &desc(0x3800, 0x800, WRITE, 0));
    img.avail(0x1000, &[0, 1]);
    // TX ring 1: header + HELLO in one descriptor, header and frame in two.
    let mut tx0 = vec![0u8; 12];
    tx0.extend_from_slice(&hello);
    img.put(0x7000, &tx0);
    img.put(0x4000, &desc(0x7000, tx0.len() as u32, 0, 0));
    img.put(0x4010, &desc(0x7400, 12, NEXT, 2));
    img.put(0x4020, &desc(0x7500, 60, 0, 0));
    img.put(0x7500, &tcp4(80, false, &[1, 2, 3, 4]));
    img.avail(0x5000, &[0, 1]);
    let s = Session::new(true)
        .handshake()
        .ring(0)
        .ring(1)
        .write(0, img.bytes())
        .kick(3)
        .kick(1)
        .msg(11, &vring_state(1, 0), &[])
        .msg(11, &vring_state(0, 0), &[]);
    save("vhost_user_session", "net-hello", &s.0 .0);
    let s = Session::new(true)
        .handshake()
        .ring(0)
        .ring(1)
        .shrink(0)
        .kick(3);
    save("vhost_user_session", "net-shrink", &s.0 .0);

    // net_ring: the same layout with every feature combination.
    let mut ring_img = Image::new(0x8000);
    ring_img.put(0, &desc(0x3000, 0x800, WRITE, 0));
    ring_img.put(16, &desc(0x3800, 0x40, WRITE, 2));
    ring_img.put(32, &desc(0x3900, 0x800, WRITE, 0));
    ring_img.avail(0x1000, &[0, 1]);
    ring_img.put(0x7000, &tx0);
    ring_img.put(0x4000, &desc(0x7000, tx0.len() as u32, 0, 0));
    ring_img.put(0x4010, &desc(0x7400, 12, NEXT, 2));
    ring_img.put(0x4020, &desc(0x7500, 60, 0, 0));
    ring_img.put(0x7500, &tcp4(80, false, &[1, 2, 3, 4]));
    ring_img.avail(0x5000, &[0, 1]);
    for f in 0..8u8 {
        let w = Writer::default()
            .u8(4)
            .u8(f)
            .u16(0)
            .u16(0)
            .chunk(&udp4(53, &[9; 100]))
            .bytes(ring_img.bytes());
        save("net_ring", &format!("features-{f}"), &w.0);
    }
}

// ------------------------------------------------------------------ fast path

fn csum(data: &[u8], init: u32) -> u16 {
    let mut s = init;
    for c in data.chunks(2) {
        s += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// Ethernet + IPv4 + TCP (or UDP) with correct checksums.
fn ip4(proto: u8, l4: &[u8], vlan: bool) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1];
    if vlan {
        f.extend_from_slice(&[0x81, 0x00, 0x00, 0x07]);
    }
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = vec![
        0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, proto, 0, 0, 10, 1, 0, 1, 10, 2, 0, 1,
    ];
    ip[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    let c = csum(&ip, 0);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut l4 = l4.to_vec();
    let mut pseudo = u32::from(proto) + l4.len() as u32;
    for c in ip[12..20].chunks(2) {
        pseudo += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    let at = if proto == 6 { 16 } else { 6 };
    l4[at..at + 2].copy_from_slice(&[0, 0]);
    let c = csum(&l4, pseudo);
    l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
    f.extend(ip);
    f.extend(l4);
    f
}

fn tcp4(dport: u16, vlan: bool, payload: &[u8]) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&40000u16.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[12] = 0x50;
    t[13] = 0x18;
    t.extend_from_slice(payload);
    ip4(6, &t, vlan)
}

fn udp4(dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = vec![0u8; 8];
    u[0..2].copy_from_slice(&5353u16.to_be_bytes());
    u[2..4].copy_from_slice(&dport.to_be_bytes());
    u[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(payload);
    ip4(17, &u, false)
}

fn fastpath_seeds() {
    let rw = |mode: u8, flip: (u16, u8), frame: &[u8]| {
        Writer::default()
            .u8(mode)
            .u16(flip.0)
            .u8(flip.1)
            .bytes(frame)
            .0
    };
    let payload: Vec<u8> = (0..64u8).collect();
    for (name, mode, f) in [
        ("tcp80", 1, tcp4(80, false, &payload)),
        ("tcp80-vlan", 1, tcp4(80, true, &payload)),
        ("tcp443-group", 2, tcp4(443, false, &payload)),
        ("tcp-goto", 0, tcp4(22, false, &payload)),
        ("udp", 1, udp4(53, &payload)),
        ("udp-odd", 2, udp4(53, &payload[..33])),
    ] {
        save("packet_rewrite", name, &rw(mode, (0, 0), &f));
    }
    let inner = &tcp4(80, false, &payload)[14..];
    save("packet_rewrite", "esp-round-trip", &rw(0x80, (0, 0), inner));
    save("packet_rewrite", "esp-flipped", &rw(0x80, (40, 1), inner));
    let mut v6 = vec![
        2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x86, 0xdd, 0x60, 0, 0, 0, 0, 28, 6, 64,
    ];
    v6.extend([0x20, 1, 0xd, 0xb8].iter().chain(&[0; 12]));
    v6.extend([0x20, 1, 0xd, 0xb8].iter().chain(&[0; 11]).chain(&[1]));
    v6.extend(&tcp4(80, false, &[0; 8])[34..]);
    save("packet_rewrite", "ipv6-tcp", &rw(1, (0, 0), &v6));

    // Fused ESP, each as `cut u16 | flip u16 | frame` (an odd cut: a destination in two
    // pieces at cut / 2; an odd flip: bit 0 of byte flip / 2 of the sealed frame flipped).
    let fe =
        |cut: u16, flip: u16, frame: &[u8]| Writer::default().u16(cut).u16(flip).bytes(frame).0;
    let big: Vec<u8> = (0..1300u32).map(|i| (i * 7) as u8).collect();
    save(
        "fused_esp",
        "udp-one-buffer",
        &fe(0, 0, &udp4(53, &payload)),
    );
    save(
        "fused_esp",
        "udp-1400-split-tampered",
        &fe(300 << 1 | 1, 700 << 1 | 1, &udp4(53, &big)),
    );
    save(
        "fused_esp",
        "tcp-whole-tampered",
        &fe(0, 60 << 1 | 1, &tcp4(80, false, &payload[..20])),
    );

    // Control messages, each as `step u8 | chunk`.
    let enc = |m: &Message| {
        let mut p = Vec::new();
        m.encode(&mut p);
        p
    };
    let flow = FlowSpec {
        table: 0,
        priority: 100,
        cookie: 7,
        m: Match {
            eth_type: Some(0x0800),
            dst: Some(Prefix {
                addr: "10.2.0.0".parse().unwrap(),
                len: 16,
            }),
            proto: Some(6),
            dport: Some(80),
            ..Match::default()
        },
        actions: vec![
            Action::SetIpv4Dst(Ipv4Addr::new(10, 0, 0, 2)),
            Action::SetL4Dst(8080),
            Action::Output(PortId(1)),
        ],
        idle_timeout_ns: 5_000_000,
        hard_timeout_ns: 0,
        notify_expiry: true,
    };
    let bodies = [
        Body::Hello,
        Body::FlowAdd(flow.clone()),
        Body::FlowAdd(FlowSpec {
            table: 1,
            cookie: 8,
            actions: vec![Action::Group(3)],
            ..flow.clone()
        }),
        Body::GroupAdd {
            id: 3,
            buckets: vec![
                Bucket {
                    weight: 1,
                    actions: vec![Action::SetEthDst([4; 6]), Action::Output(PortId(1))],
                },
                Bucket {
                    weight: 2,
                    actions: vec![Action::Output(PortId(2))],
                },
            ],
        },
        Body::SaAdd(SaSpec {
            spi: 0x100,
            key: SESSION_KEY[..16].to_vec(),
            salt: [1, 2, 3, 4],
            dir: SaDirection::Outbound {
                src: Ipv4Addr::new(192, 0, 2, 1),
                dst: Ipv4Addr::new(192, 0, 2, 2),
            },
        }),
        Body::FlowAdd(FlowSpec {
            cookie: 9,
            priority: 200,
            actions: vec![Action::EspEncap(0x100), Action::Output(PortId(2))],
            ..flow.clone()
        }),
        Body::PacketOut {
            port: PortId(0),
            through_tables: true,
            frame: tcp4(80, false, &[1; 20]),
        },
        Body::PacketOut {
            port: PortId(1),
            through_tables: false,
            frame: udp4(53, &[2; 20]),
        },
        Body::FlowStatsRequest { cookie: 7 },
        Body::FlowListRequest { start: 0 },
        Body::FlowDelete { cookie: 8 },
    ];
    let mut all = Writer::default();
    for (i, b) in bodies.iter().enumerate() {
        let m = Message {
            txid: i as u32 + 1,
            body: b.clone(),
        };
        let p = enc(&m);
        save(
            "fastpath_control",
            &format!("one-{i}"),
            &Writer::default().u8(1).chunk(&p).0,
        );
        all = all.u8(3).chunk(&p);
    }
    save("fastpath_control", "session", &all.0);
}

// ------------------------------------------------------------------ guest library

/// `guest_completions`: a device that behaves, for each of the three modes (the fuzzer then
/// bends its used entries, indices, statuses and frames).
fn guest_seeds() {
    // Crypto: four operations pushed, taken, completed OK (two with statuses outside the
    // spec), polled; then a used entry for an idle id.
    let mut w = Writer::default().u8(0).u8(1);
    for len in [0u8, 16, 48, 240] {
        w = w.u8(0).u8(len);
    }
    w = w.u8(65); // the device takes them
    for (sel, status) in [(0u8, 0u8), (1, 0), (2, 7), (3, 0xff)] {
        w = w.u8(64).u8(sel).u8(status);
    }
    w = w.u8(32).u8(0).u8(0);
    save("guest_completions", "crypto", &w.0);
    let w = Writer::default()
        .u8(0)
        .u8(0)
        .u8(0)
        .u8(32)
        .u8(65)
        .u8(66) // a used entry: ahead 0, an id of no chain, the chain's length
        .u8(0)
        .u8(0x80)
        .u32(5)
        .u16(0)
        .u8(67) // published
        .u16(1)
        .u8(32);
    save("guest_completions", "crypto-idle-id", &w.0);

    // Flow table: requests of each kind, answered (OK, ERROR, stats, a HELLO reply), polled.
    let mut w = Writer::default().u8(1);
    for kind in 0..5u8 {
        w = w.u8(0).u8(kind).u32(7);
    }
    let mut error = Vec::new();
    Message {
        txid: 0,
        body: Body::Error {
            code: dpacc_spec::fastpath::proto::ErrorCode::NotFound,
            msg: "no such flow".into(),
        },
    }
    .encode(&mut error);
    let answers: [(u8, u8, &[u8]); 4] = [
        (8, 0, &[0u8; 24]),
        (3, 1, &[]),
        (4, 4, &error[12..]),
        (2, 3, &[8, 0, 0, 0, 100]),
    ];
    for (ty, sel, body) in answers {
        w = w
            .u8(0x41)
            .u8(ty)
            .u8(0)
            .u8(sel)
            .u32(0)
            .u16(u16::MAX)
            .chunk(body);
    }
    save("guest_completions", "flow-table", &w.0);

    // Net port (MRG): the device takes the RX buffers, writes a header and a frame into one,
    // completes it; the port receives; then a frame claiming three buffers.
    let mut frame = vec![0u8; 12];
    frame[10] = 1;
    frame.extend_from_slice(&[0xab; 60]);
    let mut w = Writer::default().u8(2).u8(1).u8(65);
    w = w.u8(68).u8(0).u16(0).chunk(&frame);
    w = w.u8(66).u8(0).u8(0).u32(0).u16((72i16 - 256) as u16);
    w = w.u8(67).u16(1).u8(0).u16(2048);
    frame[10] = 3;
    w = w.u8(68).u8(1).u16(0).chunk(&frame);
    w = w.u8(69).u8(1).u8(0).u8(0).u16(4095);
    save("guest_completions", "net-port", &w.0);
}

fn main() {
    crypto_seeds();
    vhost_user_seeds();
    fastpath_seeds();
    guest_seeds();
    println!("seeds written to {}/corpus", env!("CARGO_MANIFEST_DIR"));
}
