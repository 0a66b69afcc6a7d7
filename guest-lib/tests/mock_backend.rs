//! The library against a mock virtio-crypto device served by rust-vmm's `vhost-user-backend`
//! (the same stack a real backend uses): vhost-user handshake, memory table, ring addresses,
//! EVENT_IDX, indirect descriptors, control and data queues. The mock's "crypto" is fake
//! (XOR, constant tags) so the test checks plumbing, not algorithms.

use std::io::Result as IoResult;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use dpacc_guest::{CompletionMode, CryptoDevice, CryptoError, Error, Op, Options};
use dpacc_spec::virtio_crypto::status;
use dpacc_spec::{
    AeadAlg, Capabilities, ChainAuth, ChainOrder, CipherAlg, Direction, HashAlg, MacAlg,
    SessionParams,
};
use vhost::vhost_user::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackendMut, VhostUserDaemon, VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

const DATA_QUEUES: usize = 2;
const TAG: [u8; 16] = [0xaa; 16];

struct Mock {
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
    event_idx: bool,
}

fn u32_at(b: &[u8], off: usize) -> usize {
    b.get(off..off + 4)
        .map_or(0, |s| u32::from_le_bytes(s.try_into().unwrap()) as usize)
}

/// Returns (bytes to write into the writable stream, status).
fn process(ctrl: bool, r: &[u8]) -> (Vec<u8>, u8) {
    let op = u32_at(r, 0) as u32;
    if ctrl {
        return if op & 0xff == 2 {
            let mut v = 7u64.to_le_bytes().to_vec();
            v.extend_from_slice(&[0; 8]);
            (v, status::OK)
        } else {
            (vec![], status::OK)
        };
    }
    let body = 24;
    match op {
        0 | 1 => {
            let chain = u32_at(r, 64) == 2;
            let iv = u32_at(r, body);
            let src = u32_at(r, body + 4);
            let data = &r[72 + iv..72 + iv + src];
            let mut out: Vec<u8> = data.iter().map(|b| b ^ r[72]).collect();
            if chain {
                out.extend(std::iter::repeat_n(0x33, u32_at(r, body + 32)));
            }
            (out, status::OK)
        }
        0x100 | 0x200 => {
            let src = u32_at(r, body);
            (vec![src as u8; u32_at(r, body + 4)], status::OK)
        }
        0x300 | 0x301 => {
            let (iv, src) = (u32_at(r, body), u32_at(r, body + 8));
            let data = &r[72 + iv..72 + iv + src];
            if op == 0x300 {
                let mut out: Vec<u8> = data.iter().map(|b| b ^ 1).collect();
                out.extend_from_slice(&TAG);
                (out, status::OK)
            } else if data.len() < 16 || data[data.len() - 16..] != TAG {
                (vec![], status::BADMSG)
            } else {
                (
                    data[..data.len() - 16].iter().map(|b| b ^ 1).collect(),
                    status::OK,
                )
            }
        }
        _ => (vec![], status::NOTSUPP),
    }
}

impl VhostUserBackendMut for Mock {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        DATA_QUEUES + 1
    }
    fn max_queue_size(&self) -> usize {
        1024
    }
    fn features(&self) -> u64 {
        (1 << 32) | (1 << 28) | (1 << 29) | (1 << 30)
    }
    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::REPLY_ACK
    }
    fn set_event_idx(&mut self, enabled: bool) {
        self.event_idx = enabled;
    }
    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let cfg = Capabilities::software().to_config(DATA_QUEUES as u32);
        let b = vm_memory::ByteValued::as_slice(&cfg);
        b.get(offset as usize..(offset + size) as usize)
            .map_or_else(Vec::new, |s| s.to_vec())
    }
    fn update_memory(&mut self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> IoResult<()> {
        self.mem = mem;
        Ok(())
    }
    fn handle_event(
        &mut self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> IoResult<()> {
        let q = device_event as usize;
        let vring = &vrings[q];
        let mem = self.mem.memory();
        loop {
            if self.event_idx {
                vring.disable_notification().unwrap();
            }
            loop {
                let chain = vring
                    .get_mut()
                    .get_queue_mut()
                    .pop_descriptor_chain(mem.clone());
                let Some(chain) = chain else { break };
                let head = chain.head_index();
                let mut r = Vec::new();
                let mut w = Vec::new();
                for d in chain {
                    if d.is_write_only() {
                        w.push((d.addr(), d.len() as usize));
                    } else {
                        let mut b = vec![0; d.len() as usize];
                        mem.read_slice(&mut b, d.addr()).unwrap();
                        r.extend_from_slice(&b);
                    }
                }
                let (out, st) = process(q == DATA_QUEUES, &r);
                let total: usize = w.iter().map(|x| x.1).sum();
                let mut stream = out;
                let used = if q == DATA_QUEUES && u32_at(&r, 0) & 0xff == 2 {
                    // SessionInput: id then status u32.
                    stream.truncate(8);
                    stream.extend_from_slice(&(st as u32).to_le_bytes());
                    stream.len()
                } else {
                    let n = stream.len() + 1;
                    stream.resize(total.max(1) - 1, 0);
                    stream.push(st);
                    if st == status::OK {
                        n
                    } else {
                        1
                    }
                };
                let mut off = 0;
                for (a, l) in &w {
                    let n = (*l).min(stream.len().saturating_sub(off));
                    mem.write_slice(&stream[off..off + n], GuestAddress(a.0))
                        .unwrap();
                    off += n;
                }
                vring.add_used(head, used.min(total) as u32).unwrap();
            }
            if !self.event_idx || !vring.enable_notification().unwrap() {
                break;
            }
        }
        if vring.needs_notification().unwrap() {
            vring.signal_used_queue().unwrap();
        }
        Ok(())
    }
}

fn start(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("dpacc-guest-{}-{name}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    let mock = Mock {
        mem: mem.clone(),
        event_idx: false,
    };
    let mut daemon =
        VhostUserDaemon::new("mock-crypto".into(), Arc::new(RwLock::new(mock)), mem).unwrap();
    let p = path.clone();
    std::thread::spawn(move || {
        let _ = daemon.serve(&p);
    });
    for _ in 0..200 {
        if path.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    path
}

fn connect(path: &Path, completion: CompletionMode, indirect: bool) -> CryptoDevice {
    CryptoDevice::connect(
        path,
        Options {
            completion,
            indirect,
            queue_size: 64,
            arena_size: 4 << 20,
            timeout: Duration::from_secs(5),
            ..Options::default()
        },
    )
    .unwrap()
}

fn exercise(dev: &CryptoDevice) {
    assert_eq!(dev.num_queues(), DATA_QUEUES as u16);
    assert!(dev.capabilities().has_cipher(CipherAlg::AesCbc));

    let key = [1u8; 16];
    let s = dev
        .create_session(&SessionParams::Cipher {
            alg: CipherAlg::AesCbc,
            key: &key,
            dir: Direction::Encrypt,
        })
        .unwrap();
    assert_eq!(s.id(), 7);
    let ct = s.encrypt(&[0x11; 16], &[], &[0x22; 32]).unwrap();
    assert_eq!(ct, vec![0x33; 32]);
    // Local checks: wrong IV length, partial CBC block, wrong direction.
    assert_eq!(
        s.encrypt(&[0; 12], &[], &[0; 16]).unwrap_err().crypto(),
        Some(CryptoError::InvalidIvLength)
    );
    assert_eq!(
        s.encrypt(&[0; 16], &[], &[0; 15]).unwrap_err().crypto(),
        Some(CryptoError::InvalidDataLength)
    );
    assert!(matches!(
        s.decrypt(&[0; 16], &[], &[0; 16]),
        Err(Error::InvalidArgument(_))
    ));
    // Bad key length never reaches the device.
    assert_eq!(
        dev.create_session(&SessionParams::Cipher {
            alg: CipherAlg::AesCbc,
            key: &[0; 15],
            dir: Direction::Encrypt,
        })
        .unwrap_err()
        .crypto(),
        Some(CryptoError::InvalidKeyLength)
    );

    let h = dev
        .create_session(&SessionParams::Hash {
            alg: HashAlg::Sha256,
            digest_len: 0,
        })
        .unwrap();
    assert_eq!(h.digest(b"hello").unwrap(), vec![5; 32]);

    let gk = [9u8; 32];
    let enc = dev
        .create_session(&SessionParams::Aead {
            alg: AeadAlg::AesGcm,
            key: &gk,
            tag_len: 0,
            dir: Direction::Encrypt,
        })
        .unwrap();
    let dec = dev
        .create_session(&SessionParams::Aead {
            alg: AeadAlg::AesGcm,
            key: &gk,
            tag_len: 0,
            dir: Direction::Decrypt,
        })
        .unwrap();
    let c = enc.encrypt(&[0; 12], b"aad", b"plain").unwrap();
    assert_eq!(c.len(), 5 + 16);
    assert_eq!(dec.decrypt(&[0; 12], b"aad", &c).unwrap(), b"plain");
    let mut bad = c.clone();
    *bad.last_mut().unwrap() ^= 1;
    assert_eq!(
        dec.decrypt(&[0; 12], b"aad", &bad).unwrap_err().crypto(),
        Some(CryptoError::AuthFailed)
    );

    let ak = [3u8; 20];
    let chain = dev
        .create_session(&SessionParams::Chain {
            order: ChainOrder::HashThenCipher,
            cipher: CipherAlg::AesCbc,
            cipher_key: &key,
            dir: Direction::Decrypt,
            auth: ChainAuth::Mac(MacAlg::Hmac(HashAlg::Sha256)),
            auth_key: &ak,
            digest_len: 0,
        })
        .unwrap();
    let pt = chain
        .verify_then_decrypt(&[1; 16], b"hdr", &[1; 16], &[0x33; 32])
        .unwrap();
    assert_eq!(pt, vec![0; 16]);
    assert_eq!(
        chain
            .verify_then_decrypt(&[1; 16], b"hdr", &[1; 16], &[0x34; 32])
            .unwrap_err()
            .crypto(),
        Some(CryptoError::AuthFailed)
    );
    chain.close().unwrap();

    // Async batches on every queue, from one thread each.
    std::thread::scope(|sc| {
        for qi in 0..DATA_QUEUES as u16 {
            let (dev, s) = (dev, &s);
            sc.spawn(move || {
                let mut q = dev.queue(qi).unwrap();
                let mut out = Vec::with_capacity(64);
                let mut done = 0u64;
                for round in 0..20u64 {
                    for i in 0..40u64 {
                        if q.free_slots() == 0 {
                            q.flush().unwrap();
                            q.wait(&mut out).unwrap();
                        }
                        let src = dev.alloc_from(&[i as u8; 64]).unwrap();
                        let dst = dev.alloc(64).unwrap();
                        let op =
                            Op::cipher(s, &[0xf0; 16], src, dst).with_user_data(round * 100 + i);
                        q.push(op).unwrap();
                    }
                    q.flush().unwrap();
                    while q.in_flight() > 0 {
                        q.wait(&mut out).unwrap();
                    }
                    for c in out.drain(..) {
                        c.result.unwrap();
                        let i = (c.user_data % 100) as u8;
                        assert_eq!(c.bufs.dst.unwrap().as_slice(), &[i ^ 0xf0; 64]);
                        done += 1;
                    }
                }
                assert_eq!(done, 800);
                // Rejected pushes hand the operation back.
                let src = dev.alloc(3).unwrap();
                let dst = dev.alloc(3).unwrap();
                let r = q.push(Op::cipher(s, &[0; 16], src, dst)).unwrap_err();
                assert_eq!(r.error.crypto(), Some(CryptoError::InvalidDataLength));
                assert!(r.op.into_bufs().src.is_some());
            });
        }
    });
    // Both queues are back in the pool; a third taker of queue 0 works again.
    drop(dev.queue(0).unwrap());
}

#[test]
fn interrupt_mode_with_indirect_descriptors() {
    let path = start("irq");
    let dev = connect(&path, CompletionMode::Interrupt, true);
    assert!(dev.uses_indirect());
    exercise(&dev);
}

#[test]
fn poll_mode_with_direct_descriptors() {
    let path = start("poll");
    let dev = connect(&path, CompletionMode::Poll, false);
    assert!(!dev.uses_indirect());
    exercise(&dev);
}

#[test]
fn raw_api_reaches_the_device() {
    let path = start("raw");
    let dev = connect(&path, CompletionMode::Interrupt, true);
    let mut q = dev.queue(1).unwrap();
    let mut raw = q.raw().unwrap();
    // An unknown opcode: the device answers NOTSUPP in the last writable byte.
    let req = dev
        .alloc_from(&{
            let mut r = [0u8; 72];
            r[0..4].copy_from_slice(&0x999u32.to_le_bytes());
            r
        })
        .unwrap();
    let st = dev.alloc(1).unwrap();
    // SAFETY: the only writable descriptor is `st`, untouched until the chain is used.
    unsafe {
        raw.post(&[
            dpacc_guest::RawDesc::readable(req.gpa(), 72),
            dpacc_guest::RawDesc::writable(st.gpa(), 1),
        ])
    }
    .unwrap();
    let u = raw.wait().unwrap();
    assert_eq!(u.len, 1);
    assert_eq!(st.as_slice(), &[status::NOTSUPP]);
}

/// Runs the CLI against a fresh mock (the mock daemon serves one connection); `SOCK` in `args`
/// is replaced by its socket path.
fn cli(args: &[&str], stdin: &[u8]) -> (i32, Vec<u8>, String) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let path = start(&format!("cli{}", N.fetch_add(1, Ordering::Relaxed)));
    let sock = path.to_str().unwrap();
    let args: Vec<&str> = args
        .iter()
        .map(|a| if *a == "SOCK" { sock } else { a })
        .collect();
    let mut child = Command::new(env!("CARGO_BIN_EXE_dpacc"))
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The CLI may exit (usage error) before reading stdin.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    let o = child.wait_with_output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        o.stdout,
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn cli_exit_codes_and_outputs() {
    let sock = "SOCK";
    let (rc, out, _) = cli(&["digest", "--socket", sock, "--alg", "sha256"], b"hello");
    assert_eq!(rc, 0);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!("{}\n", "05".repeat(32))
    );

    let key = "00".repeat(16);
    let gcm = [
        "crypto",
        "--socket",
        sock,
        "--alg",
        "aes-128-gcm",
        "--key",
        &key,
    ];
    let iv = "00".repeat(12);
    let (rc, ct, _) = cli(&[&gcm[..], &["--iv", &iv, "encrypt"]].concat(), b"abc");
    assert_eq!((rc, ct.len()), (0, 3 + 16));
    let mut bad = ct.clone();
    bad[0] ^= 0xff;
    bad[3] ^= 0xff;
    let (rc, out, err) = cli(&[&gcm[..], &["--iv", &iv, "decrypt"]].concat(), &bad);
    assert_eq!(rc, 1);
    assert!(out.is_empty());
    assert!(err.contains("authentication failed"), "{err}");
    let (rc, out, _) = cli(&[&gcm[..], &["--iv", &iv, "decrypt"]].concat(), &ct);
    assert_eq!((rc, out), (0, b"abc".to_vec()));

    // Usage mistakes: exit 2, a message, no panic.
    let (rc, _, err) = cli(&[&gcm[..], &["--iv", "0011", "encrypt"]].concat(), b"x");
    assert_eq!(rc, 2);
    assert!(
        err.contains("12-byte nonce") && !err.contains("panicked"),
        "{err}"
    );
    let (rc, _, err) = cli(
        &[
            "crypto",
            "--socket",
            sock,
            "--alg",
            "aes-256-cbc",
            "--key",
            &key,
            "--iv",
            &"00".repeat(16),
            "encrypt",
        ],
        b"0123456789abcdef",
    );
    assert_eq!(rc, 2);
    assert!(err.contains("32-byte key"), "{err}");

    // Encrypt-then-MAC: ciphertext || 32-byte MAC.
    let (rc, out, err) = cli(
        &[
            "crypto",
            "--socket",
            sock,
            "--alg",
            "aes-128-cbc",
            "--key",
            &key,
            "--iv",
            &"01".repeat(16),
            "--auth-alg",
            "hmac-sha256",
            "--auth-key",
            "0102",
            "encrypt",
        ],
        &[0u8; 16],
    );
    assert_eq!(rc, 0, "{err}");
    assert_eq!(out, [vec![1u8; 16], vec![0x33; 32]].concat());

    let (rc, out, err) = cli(
        &[
            "bench",
            "--socket",
            sock,
            "--alg",
            "aes-128-cbc",
            "--size",
            "64",
            "--batch",
            "8",
            "--queues",
            "2",
            "--seconds",
            "0.2",
        ],
        b"",
    );
    assert_eq!(rc, 0, "{err}");
    let out = String::from_utf8(out).unwrap();
    assert!(
        out.contains("device") && out.contains("software") && out.contains("ratio"),
        "{out}"
    );
}
