//! A raw vhost-user frontend over a real unix socket against the real server (in-process).

#[path = "../src/crypto/test_driver.rs"]
#[allow(dead_code)]
mod test_driver;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use dpacc_backend::crypto::{serve, CryptoBackendConfig};
use dpacc_spec::vhost_user_crypto::{QemuCryptoSession, QemuSymSessionInfo};
use dpacc_spec::virtio_crypto::{self as vc, DataRequest};
use dpacc_spec::CryptoDriver;
use vm_memory::ByteValued;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

// The raw frontend the root package's hostile-frontend tests use (one copy of it).
#[path = "../../tests/common/raw_vhost.rs"]
#[allow(dead_code)]
mod raw_vhost;

use raw_vhost::{
    Front, GET_CONFIG, GET_QUEUE_NUM, GET_VRING_BASE, PF_CRYPTO, SET_VRING_BASE, SET_VRING_CALL,
    SET_VRING_KICK, SET_VRING_NUM,
};

const CREATE: u32 = 26;
const CLOSE: u32 = 27;

struct Daemon {
    path: PathBuf,
    shutdown: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl Daemon {
    fn start(name: &str, max_sessions: usize) -> Self {
        Self::with_driver(name, max_sessions, Arc::new(test_driver::XorDriver))
    }

    fn with_driver(name: &str, max_sessions: usize, driver: Arc<dyn CryptoDriver>) -> Self {
        let path = std::env::temp_dir().join(format!(
            "dpacc-backend-test-{}-{name}.sock",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let shutdown = EventFd::new(EFD_NONBLOCK).unwrap();
        let sd = shutdown.try_clone().unwrap();
        let config = CryptoBackendConfig {
            queues: 1,
            queue_size: 256,
            max_sessions,
            driver,
            busy_poll: std::time::Duration::ZERO,
        };
        let thread = std::thread::spawn(move || serve(&listener, config, &sd).unwrap());
        Self {
            path,
            shutdown,
            thread: Some(thread),
        }
    }

    fn connect(&self) -> Front {
        Front::connect(&self.path)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.shutdown.write(1).unwrap();
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What QEMU's cryptodev-vhost-user does beyond the generic frontend.
trait CryptoFront {
    /// QEMU's handshake against a crypto backend with one data queue: the features offered.
    fn crypto_handshake(&mut self) -> u64;
    /// CREATE_CRYPTO_SESSION: the session id (-1: refused).
    fn create(&mut self, s: &QemuCryptoSession) -> i64;
    /// CREATE_CRYPTO_SESSION with any payload.
    fn create_raw(&mut self, payload: &[u8]) -> i64;
}

impl CryptoFront for Front {
    fn crypto_handshake(&mut self) -> u64 {
        let o = self.negotiate();
        assert_eq!(o.protocol_features & PF_CRYPTO, PF_CRYPTO);
        assert_eq!(o.queues, 2);
        o.features
    }

    fn create(&mut self, s: &QemuCryptoSession) -> i64 {
        self.create_raw(s.as_slice())
    }

    fn create_raw(&mut self, payload: &[u8]) -> i64 {
        self.send(CREATE, 0, payload);
        let r = self.recv(CREATE);
        assert_eq!(r.len(), 1072);
        let mut s = QemuCryptoSession::default();
        s.as_mut_slice().copy_from_slice(&r);
        assert!(s.key_area_mut_free(), "keys are not echoed");
        s.session_id
    }
}

trait KeysZero {
    fn key_area_mut_free(&self) -> bool;
}

impl KeysZero for QemuCryptoSession {
    fn key_area_mut_free(&self) -> bool {
        self.u[48..48 + 64 + 512].iter().all(|&b| b == 0)
    }
}

fn aes128_cbc(dir: u8, key: &[u8; 16]) -> QemuCryptoSession {
    let mut s = QemuCryptoSession {
        op_code: u64::from(vc::CIPHER_CREATE_SESSION),
        ..Default::default()
    };
    s.set_sym_info(&QemuSymSessionInfo {
        cipher_alg: vc::cipher::AES_CBC,
        key_len: 16,
        op_type: vc::SYM_OP_CIPHER as u8,
        direction: dir,
        ..Default::default()
    });
    s.key_area_mut()[..16].copy_from_slice(key);
    s
}

#[test]
fn qemu_style_handshake_and_sessions() {
    let d = Daemon::start("sessions", 2);
    let mut f = d.connect();
    let feats = f.crypto_handshake();
    assert_ne!(feats & (1 << 32), 0, "VERSION_1");
    assert_ne!(feats & (1 << 30), 0, "PROTOCOL_FEATURES");
    assert_ne!(feats & (1 << 29), 0, "EVENT_IDX");
    assert_ne!(feats & (1 << 28), 0, "INDIRECT_DESC");

    // Config space: status ready, one data queue, AES-CBC offered.
    let mut cfg = Vec::new();
    cfg.extend_from_slice(&0u32.to_ne_bytes());
    cfg.extend_from_slice(&56u32.to_ne_bytes());
    cfg.extend_from_slice(&0u32.to_ne_bytes());
    cfg.extend_from_slice(&[0u8; 56]);
    f.send(GET_CONFIG, 0, &cfg);
    let r = f.recv(GET_CONFIG);
    assert_eq!(r.len(), 12 + 56);
    let mut c = vc::Config::default();
    c.as_mut_slice().copy_from_slice(&r[12..]);
    assert_eq!(c.status.to_native(), vc::S_HW_READY);
    assert_eq!(c.max_dataqueues.to_native(), 1);
    assert_ne!(c.cipher_algo_l.to_native() & (1 << vc::cipher::AES_CBC), 0);

    let enc = f.create(&aes128_cbc(1, &[7; 16]));
    let dec = f.create(&aes128_cbc(2, &[7; 16]));
    assert!(enc > 0 && dec > 0 && enc != dec, "{enc} {dec}");
    // Table full (max 2).
    assert_eq!(f.create(&aes128_cbc(1, &[7; 16])), -1);
    assert_eq!(f.acked(CLOSE, &(enc as u64).to_ne_bytes()), 0);
    // Closing it again fails, and the id is not handed out again.
    assert_ne!(f.acked(CLOSE, &(enc as u64).to_ne_bytes()), 0);
    let again = f.create(&aes128_cbc(1, &[7; 16]));
    assert!(again > 0 && again != enc);
    // CLOSE without NEED_REPLY gets no reply; the next request still works.
    f.send(CLOSE, 0, &(again as u64).to_ne_bytes());
    assert_eq!(f.get_u64(GET_QUEUE_NUM), 2);

    // Hostile payloads: -1 and the connection keeps working.
    assert_eq!(f.create_raw(&[0u8; 100]), -1);
    let mut s = aes128_cbc(1, &[7; 16]);
    let mut i = s.sym_info();
    i.key_len = 9999;
    s.set_sym_info(&i);
    assert_eq!(f.create(&s), -1);
    let mut s = aes128_cbc(1, &[7; 16]);
    s.op_code = 0x7777;
    assert_eq!(f.create(&s), -1);
    let mut s = aes128_cbc(1, &[7; 16]);
    let mut i = s.sym_info();
    i.key_len = 5;
    s.set_sym_info(&i);
    assert_eq!(f.create(&s), -1);
    // An unknown request with NEED_REPLY: an error ack, connection alive.
    assert_ne!(f.acked(99, &[]), 0);
    // A CLOSE with a short payload.
    assert_ne!(f.acked(CLOSE, &[1, 2, 3]), 0);
    assert_eq!(f.get_u64(GET_QUEUE_NUM), 2);

    // Garbage header: the connection is closed...
    f.s.write_all(&[0xff; 12]).unwrap();
    let mut b = [0u8; 1];
    assert_eq!(f.s.read(&mut b).unwrap(), 0);
    // ...and the next frontend is served, with fresh state (sessions dropped).
    let mut g = d.connect();
    g.crypto_handshake();
    assert_eq!(g.acked(CLOSE, &(dec as u64).to_ne_bytes()), 1);
    assert!(g.create(&aes128_cbc(1, &[7; 16])) > 0);
}

#[test]
fn oversized_message_closes_connection_only() {
    let d = Daemon::start("oversized", 16);
    let mut f = d.connect();
    let mut hdr = Vec::new();
    hdr.extend_from_slice(&CREATE.to_ne_bytes());
    hdr.extend_from_slice(&1u32.to_ne_bytes());
    hdr.extend_from_slice(&0x10_0000u32.to_ne_bytes());
    f.s.write_all(&hdr).unwrap();
    let mut b = [0u8; 1];
    assert_eq!(f.s.read(&mut b).unwrap(), 0);
    let mut g = d.connect();
    g.crypto_handshake();
}

/// Frontend-side guest memory: a memfd mapped into this process.
struct Memfd {
    fd: RawFd,
    ptr: *mut u8,
    size: usize,
}

impl Memfd {
    fn new(size: usize) -> Self {
        // SAFETY: test code: create, size and map a memfd.
        unsafe {
            let fd = libc::memfd_create(c"dpacc-test".as_ptr(), 0);
            assert!(fd >= 0);
            assert_eq!(libc::ftruncate(fd, size as i64), 0);
            let ptr = libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            );
            assert_ne!(ptr, libc::MAP_FAILED);
            Self {
                fd,
                ptr: ptr.cast(),
                size,
            }
        }
    }

    fn va(&self, gpa: u64) -> u64 {
        self.ptr as u64 + gpa
    }

    fn write(&self, gpa: u64, data: &[u8]) {
        assert!(gpa as usize + data.len() <= self.size);
        for (i, b) in data.iter().enumerate() {
            // SAFETY: inside the mapping (checked above).
            unsafe { std::ptr::write_volatile(self.ptr.add(gpa as usize + i), *b) };
        }
    }

    fn read(&self, gpa: u64, len: usize) -> Vec<u8> {
        assert!(gpa as usize + len <= self.size);
        // SAFETY: inside the mapping (checked above).
        (0..len)
            .map(|i| unsafe { std::ptr::read_volatile(self.ptr.add(gpa as usize + i)) })
            .collect()
    }
}

impl Drop for Memfd {
    fn drop(&mut self) {
        // SAFETY: unmapping and closing what `new` created.
        unsafe {
            libc::munmap(self.ptr.cast(), self.size);
            libc::close(self.fd);
        }
    }
}

fn wait_readable(fd: RawFd, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one live pollfd.
    unsafe { libc::poll(&mut p, 1, ms) == 1 }
}

/// Sets up memory and data ring 0 like a frontend, encrypts `src` with AES-128-CBC in a
/// QEMU-style session, and returns (status, ciphertext).
fn cbc_encrypt_through_ring(
    driver: Arc<dyn CryptoDriver>,
    name: &str,
    key: &[u8; 16],
    iv: &[u8; 16],
    src: &[u8],
) -> (u8, Vec<u8>) {
    const DESC: u64 = 0x0;
    const AVAIL: u64 = 0x1000;
    const USED: u64 = 0x2000;
    const REQ: u64 = 0x10000;
    const DST: u64 = 0x20000;
    const STATUS: u64 = 0x30000;
    const QSIZE: u16 = 16;

    let d = Daemon::with_driver(name, 16, driver);
    let mut f = d.connect();
    let feats = f.crypto_handshake();
    let mem = Memfd::new(1 << 20);
    assert_eq!(f.mem_table(mem.fd, mem.size as u64, mem.va(0), 0), 0);
    let state = |i: u32, n: u32| [i.to_ne_bytes(), n.to_ne_bytes()].concat();
    assert_eq!(f.acked(SET_VRING_NUM, &state(0, u32::from(QSIZE))), 0);
    assert_eq!(
        f.acked(SET_VRING_NUM, &state(0, 1000)),
        1,
        "not a power of two"
    );
    assert_eq!(f.acked(SET_VRING_BASE, &state(0, 0)), 0);
    assert_eq!(
        f.vring_addr(0, mem.va(DESC), mem.va(USED), mem.va(AVAIL)),
        0
    );
    let kick = EventFd::new(EFD_NONBLOCK).unwrap();
    let call = EventFd::new(EFD_NONBLOCK).unwrap();
    assert_eq!(
        f.acked_fds(SET_VRING_KICK, &0u64.to_ne_bytes(), &[kick.as_raw_fd()]),
        0
    );
    assert_eq!(
        f.acked_fds(SET_VRING_CALL, &0u64.to_ne_bytes(), &[call.as_raw_fd()]),
        0
    );
    assert_ne!(feats & (1 << 29), 0);

    let sid = f.create(&aes128_cbc(1, key));
    assert!(sid > 0);

    // Request: header + iv + 32 bytes of source in one readable descriptor.
    let mut req = DataRequest::default();
    req.header.opcode = vc::CIPHER_ENCRYPT.into();
    req.header.session_id = (sid as u64).into();
    let mut sym = vc::SymDataReq::default();
    sym.set_para(&vc::CipherDataPara {
        iv_len: 16.into(),
        src_data_len: (src.len() as u32).into(),
        dst_data_len: (src.len() as u32).into(),
        padding: 0.into(),
    });
    sym.op_type = vc::SYM_OP_CIPHER.into();
    req.set_body(&sym);
    let mut readable = req.as_slice().to_vec();
    readable.extend_from_slice(iv);
    readable.extend_from_slice(src);
    mem.write(REQ, &readable);
    mem.write(STATUS, &[0xee]);
    let desc = |addr: u64, len: u32, flags: u16, next: u16| {
        let mut b = Vec::new();
        b.extend_from_slice(&addr.to_le_bytes());
        b.extend_from_slice(&len.to_le_bytes());
        b.extend_from_slice(&flags.to_le_bytes());
        b.extend_from_slice(&next.to_le_bytes());
        b
    };
    mem.write(DESC, &desc(REQ, readable.len() as u32, 1, 1));
    mem.write(DESC + 16, &desc(DST, src.len() as u32, 1 | 2, 2));
    mem.write(DESC + 32, &desc(STATUS, 1, 2, 0));
    // avail: flags 0, idx 1, ring[0] = 0; used_event (after the ring) = 0.
    mem.write(AVAIL + 4, &0u16.to_le_bytes());
    mem.write(AVAIL + 2, &1u16.to_le_bytes());
    kick.write(1).unwrap();

    assert!(
        wait_readable(call.as_raw_fd(), 5000),
        "call eventfd signalled"
    );
    let used_idx = u16::from_le_bytes(mem.read(USED + 2, 2).try_into().unwrap());
    assert_eq!(used_idx, 1);
    let elem = mem.read(USED + 4, 8);
    assert_eq!(
        u32::from_le_bytes(elem[0..4].try_into().unwrap()),
        0,
        "head"
    );
    assert_eq!(
        u32::from_le_bytes(elem[4..8].try_into().unwrap()) as usize,
        src.len() + 1,
        "len"
    );
    let status = mem.read(STATUS, 1)[0];
    let dst = mem.read(DST, src.len());

    // GET_VRING_BASE stops the ring and reports where it stopped.
    f.send(GET_VRING_BASE, 0, &state(0, 0));
    assert_eq!(f.recv(GET_VRING_BASE), state(0, 1));
    (status, dst)
}

#[test]
fn data_queue_round_trip_through_a_real_ring() {
    let src: Vec<u8> = (0..32u8).collect();
    let (status, dst) = cbc_encrypt_through_ring(
        Arc::new(test_driver::XorDriver),
        "data-xor",
        &[0x11; 16],
        &[0x22; 16],
        &src,
    );
    assert_eq!(status, vc::status::OK);
    let want: Vec<u8> = src.iter().map(|b| b ^ 0x11 ^ 0x22).collect();
    assert_eq!(dst, want);
}

/// NIST SP 800-38A, F.2.1 CBC-AES128.Encrypt, through the software driver.
#[test]
fn aes_128_cbc_nist_vector_through_a_real_ring() {
    let key: [u8; 16] = hex::decode("2b7e151628aed2a6abf7158809cf4f3c")
        .unwrap()
        .try_into()
        .unwrap();
    let iv: [u8; 16] = hex::decode("000102030405060708090a0b0c0d0e0f")
        .unwrap()
        .try_into()
        .unwrap();
    let pt = hex::decode(concat!(
        "6bc1bee22e409f96e93d7e117393172a",
        "ae2d8a571e03ac9c9eb76fac45af8e51",
        "30c81c46a35ce411e5fbc1191a0a52ef",
        "f69f2445df4f9b17ad2b417be66c3710"
    ))
    .unwrap();
    let ct = hex::decode(concat!(
        "7649abac8119b246cee98e9b12e9197d",
        "5086cb9b507219ee95db113a917678b2",
        "73bed6b8e3c1743b7116e69e22229516",
        "3ff1caa1681fac09120eca307586e1a7"
    ))
    .unwrap();
    let (status, dst) = cbc_encrypt_through_ring(
        Arc::new(dpacc_sw::SwDriver::new()),
        "data-nist",
        &key,
        &iv,
        &pt,
    );
    assert_eq!(status, vc::status::OK);
    assert_eq!(hex::encode(dst), hex::encode(ct));
}

/// Found by the `crypto_request` fuzz target: the CREATE_CRYPTO_SESSION reply echoed most of
/// the request (the asymmetric arm's key area among it). Now only the opcode and the id.
#[test]
fn create_session_reply_echoes_nothing_of_the_request() {
    let d = Daemon::start("echo", 4);
    let mut f = d.connect();
    f.crypto_handshake();
    for op_code in [vc::CIPHER_CREATE_SESSION, 0x0400_0003] {
        let mut s = aes128_cbc(1, &[7; 16]);
        s.op_code = u64::from(op_code);
        s.u[600..].fill(0xab); // past the sym keys: where an asym key would be
        f.send(CREATE, 0, s.as_slice());
        let r = f.recv(CREATE);
        assert_eq!(r.len(), 1072);
        assert_eq!(r[..8], u64::from(op_code).to_ne_bytes());
        assert!(r[8..1064].iter().all(|&b| b == 0), "request bytes echoed");
    }
}

/// Found by the `crypto_ring` fuzz target: a ring whose used ring overlaps its avail ring
/// never runs dry (each used entry announces a new available one), and the worker never
/// looked at its exit eventfd again: GET_VRING_BASE (and the disconnect) hung for ever.
#[test]
fn a_ring_that_never_runs_dry_still_stops() {
    const DESC: u64 = 0x0;
    const RINGS: u64 = 0x1000;
    let d = Daemon::start("overlap", 4);
    let mut f = d.connect();
    f.crypto_handshake();
    let mem = Memfd::new(1 << 20);
    assert_eq!(f.mem_table(mem.fd, mem.size as u64, mem.va(0), 0), 0);
    let state = |i: u32, n: u32| [i.to_ne_bytes(), n.to_ne_bytes()].concat();
    assert_eq!(f.acked(SET_VRING_NUM, &state(0, 1)), 0);
    // One chain announced: avail idx (0) - next_avail (65535) = 1.
    assert_eq!(f.acked(SET_VRING_BASE, &state(0, 65535)), 0);
    assert_eq!(
        f.vring_addr(0, mem.va(DESC), mem.va(RINGS), mem.va(RINGS)),
        0
    );
    let kick = EventFd::new(EFD_NONBLOCK).unwrap();
    assert_eq!(
        f.acked_fds(SET_VRING_KICK, &0u64.to_ne_bytes(), &[kick.as_raw_fd()]),
        0
    );
    kick.write(1).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let used_idx = u16::from_le_bytes(mem.read(RINGS + 2, 2).try_into().unwrap());
    assert!(used_idx > 1, "the ring keeps going ({used_idx})");
    // The worker stops when asked (the socket read times out after 10 s otherwise).
    f.send(GET_VRING_BASE, 0, &state(0, 0));
    let r = f.recv(GET_VRING_BASE);
    assert_eq!(r[..4], 0u32.to_ne_bytes());
    assert_eq!(f.get_u64(GET_QUEUE_NUM), 2);
}
