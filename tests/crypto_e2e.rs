//! End to end: guest library → virtqueues in shared memory → real vhost-user backend over a real
//! unix socket → software driver, and back. Answers are published test vectors (NIST SP 800-38A,
//! the GCM spec test cases, RFC 8439, FIPS 180, RFC 4231/2202) or values computed with Python's
//! `hmac` module (an independent implementation).

mod common;

use std::time::{Duration, Instant};

use common::{h, Backend};
use dpacc::guest::{CompletionMode, CryptoDevice, Error, Op, Options, RawDesc, SessionControl};
use dpacc::spec::virtio_crypto::{self as vc, status};
use dpacc::spec::{
    AeadAlg, ChainAuth, ChainOrder, CipherAlg, CryptoError, Direction, HashAlg, MacAlg,
    SessionParams,
};
use vm_memory::ByteValued;

const F2_PLAIN: &str = "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51\
                        30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710";
const K128: &str = "2b7e151628aed2a6abf7158809cf4f3c";
const K192: &str = "8e73b0f7da0e6452c810f32b809079e562f8ead2522c6b7b";
const K256: &str = "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4";

fn cipher(dev: &CryptoDevice, alg: CipherAlg, key: &[u8], dir: Direction) -> dpacc::guest::Session {
    dev.create_session(&SessionParams::Cipher { alg, key, dir })
        .expect("create cipher session")
}

/// (algorithm, key, nonce, aad, plaintext, ciphertext || tag)
type AeadCase<'a> = (AeadAlg, Vec<u8>, Vec<u8>, Vec<u8>, &'a [u8], Vec<u8>);

fn both_modes(name: &str, f: impl Fn(&CryptoDevice)) {
    for mode in [CompletionMode::Interrupt, CompletionMode::Poll] {
        let b = Backend::start(&format!("{name}-{mode:?}"), 1, 1024);
        let dev = b.connect(mode);
        f(&dev);
    }
}

#[test]
fn aes_cbc_and_ctr_match_sp800_38a() {
    both_modes("cbcctr", |dev| {
        let iv = h("000102030405060708090a0b0c0d0e0f");
        let ctr = h("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff");
        let p = h(F2_PLAIN);
        let cases = [
            (CipherAlg::AesCbc, K128, &iv, "7649abac8119b246cee98e9b12e9197d5086cb9b507219ee95db113a917678b273bed6b8e3c1743b7116e69e222295163ff1caa1681fac09120eca307586e1a7"),
            (CipherAlg::AesCbc, K192, &iv, "4f021db243bc633d7178183a9fa071e8b4d9ada9ad7dedf4e5e738763f69145a571b242012fb7ae07fa9baac3df102e008b0e27988598881d920a9e64f5615cd"),
            (CipherAlg::AesCbc, K256, &iv, "f58c4c04d6e5f1ba779eabfb5f7bfbd69cfc4e967edb808d679f777bc6702c7d39f23369a9d9bacfa530e26304231461b2eb05e2c39be9fcda6c19078c6a9d1b"),
            (CipherAlg::AesCtr, K128, &ctr, "874d6191b620e3261bef6864990db6ce9806f66b7970fdff8617187bb9fffdff5ae4df3edbd5d35e5b4f09020db03eab1e031dda2fbe03d1792170a0f3009cee"),
            (CipherAlg::AesCtr, K192, &ctr, "1abc932417521ca24f2b0459fe7e6e0b090339ec0aa6faefd5ccc2c6f4ce8e941e36b26bd1ebc670d1bd1d665620abf74f78a7f6d29809585a97daec58c6b050"),
            (CipherAlg::AesCtr, K256, &ctr, "601ec313775789a5b7a7f504bbf3d228f443e3ca4d62b59aca84e990cacaf5c52b0930daa23de94ce87017ba2d84988ddfc9c58db67aada613c2dd08457941a6"),
        ];
        for (alg, key, iv, ct) in cases {
            let key = h(key);
            let ct = h(ct);
            let enc = cipher(dev, alg, &key, Direction::Encrypt);
            let dec = cipher(dev, alg, &key, Direction::Decrypt);
            assert_eq!(
                enc.encrypt(iv, &[], &p).unwrap(),
                ct,
                "{alg:?} {}",
                key.len()
            );
            assert_eq!(
                dec.decrypt(iv, &[], &ct).unwrap(),
                p,
                "{alg:?} {}",
                key.len()
            );
            // CTR takes any length: a 21-byte prefix is the ciphertext prefix.
            if alg == CipherAlg::AesCtr {
                assert_eq!(enc.encrypt(iv, &[], &p[..21]).unwrap(), ct[..21]);
            }
        }
    });
}

#[test]
fn aead_matches_gcm_spec_and_rfc8439_and_rejects_forgeries() {
    both_modes("aead", |dev| {
        let iv = h("cafebabefacedbaddecaf888");
        let p = h("d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39");
        let aad = h("feedfacedeadbeeffeedfacedeadbeefabaddad2");
        let k = "feffe9928665731c6d6a8f9467308308";
        let chacha_pt = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
        let cases: [AeadCase<'_>; 3] = [
            // GCM test case 4 (AES-128) and 16 (AES-256): ciphertext || tag.
            (AeadAlg::AesGcm, h(k), iv.clone(), aad.clone(), &p,
             h("42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091 5bc94fbc3221a5db94fae95ae7121a47")),
            (AeadAlg::AesGcm, h(&format!("{k}{k}")), iv.clone(), aad.clone(), &p,
             h("522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662 76fc6ece0f4e1768cddf8853bb2d551b")),
            // RFC 8439 §2.8.2.
            (AeadAlg::ChaCha20Poly1305,
             (0x80u8..0xa0).collect(), h("070000004041424344454647"), h("50515253c0c1c2c3c4c5c6c7"), chacha_pt,
             h("d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d63dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b3692ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc3ff4def08e4b7a9de576d26586cec64b6116 1ae10b594f09e26a7e902ecbd0600691")),
        ];
        for (alg, key, nonce, aad, pt, expected) in cases {
            let mk = |dir| {
                dev.create_session(&SessionParams::Aead {
                    alg,
                    key: &key,
                    tag_len: 16,
                    dir,
                })
                .unwrap()
            };
            let (enc, dec) = (mk(Direction::Encrypt), mk(Direction::Decrypt));
            assert_eq!(enc.encrypt(&nonce, &aad, pt).unwrap(), expected, "{alg:?}");
            assert_eq!(dec.decrypt(&nonce, &aad, &expected).unwrap(), pt, "{alg:?}");
            // Tampering with the ciphertext, the tag or the AAD is an authentication failure,
            // a distinct error from a malformed request.
            for flip in [0, expected.len() - 1] {
                let mut bad = expected.clone();
                bad[flip] ^= 0x01;
                let e = dec.decrypt(&nonce, &aad, &bad).unwrap_err();
                assert_eq!(
                    e.crypto(),
                    Some(CryptoError::AuthFailed),
                    "{alg:?} byte {flip}"
                );
            }
            let mut bad_aad = aad.clone();
            bad_aad[0] ^= 0x80;
            let e = dec.decrypt(&nonce, &bad_aad, &expected).unwrap_err();
            assert_eq!(e.crypto(), Some(CryptoError::AuthFailed));
        }
    });
}

#[test]
fn hashes_and_macs_match_fips180_and_rfc4231() {
    both_modes("digest", |dev| {
        let hashes = [
            (HashAlg::Sha1, "a9993e364706816aba3e25717850c26c9cd0d89d"),
            (HashAlg::Sha256, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
            (HashAlg::Sha384, "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed8086072ba1e7cc2358baeca134c825a7"),
            (HashAlg::Sha512, "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"),
        ];
        for (alg, d) in hashes {
            let s = dev
                .create_session(&SessionParams::Hash { alg, digest_len: 0 })
                .unwrap();
            assert_eq!(s.digest(b"abc").unwrap(), h(d), "{alg:?}");
        }
        // The empty message (a zero-length source).
        let s = dev
            .create_session(&SessionParams::Hash {
                alg: HashAlg::Sha256,
                digest_len: 0,
            })
            .unwrap();
        assert_eq!(
            s.digest(b"").unwrap(),
            h("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        );
        // RFC 2202 / RFC 4231 test case 2 ("Jefe"), and a truncated MAC.
        let macs = [
            (HashAlg::Sha1, "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"),
            (HashAlg::Sha256, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
            (HashAlg::Sha384, "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e8e2240ca5e69e2c78b3239ecfab21649"),
            (HashAlg::Sha512, "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737"),
        ];
        for (hash, mac) in macs {
            for digest_len in [0, 12] {
                let s = dev
                    .create_session(&SessionParams::Mac {
                        alg: MacAlg::Hmac(hash),
                        key: b"Jefe",
                        digest_len,
                    })
                    .unwrap();
                let full = h(mac);
                let want = if digest_len == 0 {
                    &full[..]
                } else {
                    &full[..digest_len]
                };
                assert_eq!(
                    s.mac(b"what do ya want for nothing?").unwrap(),
                    want,
                    "{hash:?}"
                );
            }
        }
    });
}

#[test]
fn encrypt_then_mac_chain_as_ipsec_esp_uses_it() {
    both_modes("chain", |dev| {
        let key = h(K128);
        let auth_key: Vec<u8> = (1u8..=32).collect();
        let iv = h("000102030405060708090a0b0c0d0e0f");
        let esp_header = h("0000100100000001"); // SPI, sequence number: authenticated, not encrypted
        let ct = h("7649abac8119b246cee98e9b12e9197d5086cb9b507219ee95db113a917678b273bed6b8e3c1743b7116e69e222295163ff1caa1681fac09120eca307586e1a7");
        // HMAC-SHA-256(auth_key, header || ciphertext), computed with Python's hmac module.
        let mac = h("29ad2f0072680d851189f9736cdea3675275e21248d282a715a0502e08be580a");
        let mk = |order, dir| {
            dev.create_session(&SessionParams::Chain {
                order,
                cipher: CipherAlg::AesCbc,
                cipher_key: &key,
                dir,
                auth: ChainAuth::Mac(MacAlg::Hmac(HashAlg::Sha256)),
                auth_key: &auth_key,
                digest_len: 0,
            })
            .unwrap()
        };
        let enc = mk(ChainOrder::CipherThenHash, Direction::Encrypt);
        let (data, digest) = enc.chain(&iv, &esp_header, &h(F2_PLAIN)).unwrap();
        assert_eq!((data, digest), (ct.clone(), mac.clone()));

        let dec = mk(ChainOrder::HashThenCipher, Direction::Decrypt);
        assert_eq!(
            dec.verify_then_decrypt(&iv, &esp_header, &ct, &mac)
                .unwrap(),
            h(F2_PLAIN)
        );
        let mut forged = mac.clone();
        forged[31] ^= 1;
        let e = dec
            .verify_then_decrypt(&iv, &esp_header, &ct, &forged)
            .unwrap_err();
        assert_eq!(e.crypto(), Some(CryptoError::AuthFailed));
    });
}

#[test]
fn many_sessions_and_the_session_limit() {
    let b = Backend::start("sessions", 1, 64);
    let dev = b.connect(CompletionMode::Interrupt);
    let key = h(K128);
    // Churn: create and close far more sessions than the table holds.
    for i in 0..500u32 {
        let s = cipher(&dev, CipherAlg::AesCtr, &key, Direction::Encrypt);
        let iv = [i as u8; 16];
        assert_eq!(s.encrypt(&iv, &[], &[0u8; 8]).unwrap().len(), 8);
        s.close().unwrap();
    }
    // Fill the table; one more is NOSPC, the open ones keep working, a freed slot is reusable.
    let mut open: Vec<_> = (0..64)
        .map(|_| cipher(&dev, CipherAlg::AesCbc, &key, Direction::Encrypt))
        .collect();
    let e = dev
        .create_session(&SessionParams::Cipher {
            alg: CipherAlg::AesCbc,
            key: &key,
            dir: Direction::Encrypt,
        })
        .unwrap_err();
    assert_eq!(e.crypto(), Some(CryptoError::NoSpace));
    let mut ids: Vec<u64> = open.iter().map(|s| s.id()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 64, "session ids are unique");
    let iv = h("000102030405060708090a0b0c0d0e0f");
    for s in &open {
        assert_eq!(
            s.encrypt(&iv, &[], &h(F2_PLAIN)).unwrap()[..4],
            h("7649abac")[..]
        );
    }
    open.pop().unwrap().close().unwrap();
    let again = cipher(&dev, CipherAlg::AesCbc, &key, Direction::Encrypt);
    assert!(!ids.contains(&again.id()) || open.iter().all(|s| s.id() != again.id()));
}

#[test]
fn several_queues_from_several_threads() {
    let b = Backend::start("queues", 2, 1024);
    let dev = b.connect(CompletionMode::Interrupt);
    assert_eq!(dev.num_queues(), 2);
    let key = [7u8; 32];
    let enc = dev
        .create_session(&SessionParams::Aead {
            alg: AeadAlg::AesGcm,
            key: &key,
            tag_len: 16,
            dir: Direction::Encrypt,
        })
        .unwrap();
    let dec = dev
        .create_session(&SessionParams::Aead {
            alg: AeadAlg::AesGcm,
            key: &key,
            tag_len: 16,
            dir: Direction::Decrypt,
        })
        .unwrap();
    std::thread::scope(|sc| {
        for qi in 0..2u16 {
            let (dev, enc, dec) = (&dev, &enc, &dec);
            sc.spawn(move || {
                let mut q = dev.queue(qi).unwrap();
                let mut done = Vec::new();
                let mut checked = 0;
                for round in 0..10u64 {
                    // A batch of encryptions of different sizes ...
                    for i in 0..32u64 {
                        let len = 1 + ((round * 32 + i) * 37 % 3000) as usize;
                        let pt: Vec<u8> = (0..len).map(|j| (j as u64 ^ i ^ round) as u8).collect();
                        let nonce = [(i as u8) ^ (qi as u8); 12];
                        let op = Op::aead(
                            enc,
                            &nonce,
                            None,
                            dev.alloc_from(&pt).unwrap(),
                            dev.alloc(len + 16).unwrap(),
                        )
                        .with_user_data((round << 32) | i);
                        q.push(op).unwrap();
                    }
                    q.flush().unwrap();
                    while q.in_flight() > 0 {
                        q.wait(&mut done).unwrap();
                    }
                    // ... each decrypted back through the same queue, in one batch.
                    let encrypted = std::mem::take(&mut done);
                    for c in encrypted {
                        c.result.unwrap();
                        let i = c.user_data & 0xffff_ffff;
                        let ct = c.bufs.dst.unwrap();
                        let nonce = [(i as u8) ^ (qi as u8); 12];
                        let pt_len = ct.len() - 16;
                        let op = Op::aead(dec, &nonce, None, ct, dev.alloc(pt_len).unwrap())
                            .with_user_data(c.user_data);
                        q.push(op).unwrap();
                    }
                    q.flush().unwrap();
                    while q.in_flight() > 0 {
                        q.wait(&mut done).unwrap();
                    }
                    for c in done.drain(..) {
                        c.result.unwrap();
                        let (i, round) = (c.user_data & 0xffff_ffff, c.user_data >> 32);
                        let pt = c.bufs.dst.unwrap();
                        let len = 1 + ((round * 32 + i) * 37 % 3000) as usize;
                        assert_eq!(pt.len(), len);
                        assert!(pt
                            .as_slice()
                            .iter()
                            .enumerate()
                            .all(|(j, b)| *b == (j as u64 ^ i ^ round) as u8));
                        checked += 1;
                    }
                }
                assert_eq!(checked, 320);
            });
        }
    });
}

/// dpacc's in-band session control (what a vNF behind QEMU uses, `dpacc_spec::in_band`) over
/// virtio-user: sessions created on a data queue, 80 AES-GCM operations in flight at once on
/// each of two queues (the GCM spec's test case 4 as the answer), sessions created on a held
/// queue while its operations are in flight, and destroys deferred while every queue is held.
#[test]
fn in_band_sessions_with_80_in_flight_on_two_queues() {
    let b = Backend::start("inband", 2, 3);
    let opts = Options {
        session_control: SessionControl::InBand,
        queue_size: 128,
        arena_size: 4 << 20,
        timeout: Duration::from_secs(10),
        ..Options::default()
    };
    let dev = CryptoDevice::connect(b.path(), opts).unwrap();
    assert!(dev.uses_in_band_sessions());
    assert_eq!(dev.num_queues(), 2);
    // SHA-256("abc") (FIPS 180-4) through an in-band hash session.
    let sha = dev
        .create_session(&SessionParams::Hash {
            alg: HashAlg::Sha256,
            digest_len: 0,
        })
        .unwrap();
    assert_eq!(
        sha.digest(b"abc").unwrap(),
        h("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    );
    drop(sha);
    let key = h("feffe9928665731c6d6a8f9467308308");
    let iv = h("cafebabefacedbaddecaf888");
    let pt = h("d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39");
    let aad = h("feedfacedeadbeeffeedfacedeadbeefabaddad2");
    let expected = h("42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e0915bc94fbc3221a5db94fae95ae7121a47");
    let enc = dev
        .create_session(&SessionParams::Aead {
            alg: AeadAlg::AesGcm,
            key: &key,
            tag_len: 16,
            dir: Direction::Encrypt,
        })
        .unwrap();
    let mut queues = [dev.queue(0).unwrap(), dev.queue(1).unwrap()];
    // Every queue is held: an in-band create has nowhere to go ...
    let e = dev
        .create_session(&SessionParams::Hash {
            alg: HashAlg::Sha1,
            digest_len: 0,
        })
        .unwrap_err();
    assert!(matches!(e, Error::NoQueue), "{e}");
    std::thread::scope(|sc| {
        for q in queues.iter_mut() {
            let (dev, enc, iv, pt, aad, expected) = (&dev, &enc, &iv, &pt, &aad, &expected);
            sc.spawn(move || {
                for i in 0..80u64 {
                    let op = Op::aead(
                        enc,
                        iv,
                        Some(dev.alloc_from(aad).unwrap()),
                        dev.alloc_from(pt).unwrap(),
                        dev.alloc(pt.len() + 16).unwrap(),
                    )
                    .with_user_data(i);
                    q.push(op).unwrap();
                }
                q.flush().unwrap();
                assert_eq!(q.in_flight(), 80);
                // A session created in-band on this (held) queue while the 80 are in flight;
                // their completions seen meanwhile are kept for `wait`. Its destroy is
                // deferred (every queue is held).
                let s = q
                    .create_session(&SessionParams::Hash {
                        alg: HashAlg::Sha256,
                        digest_len: 0,
                    })
                    .unwrap();
                drop(s);
                assert_eq!(q.in_flight(), 80);
                let mut done = Vec::new();
                while q.in_flight() > 0 {
                    q.wait(&mut done).unwrap();
                }
                assert_eq!(done.len(), 80);
                for c in done {
                    c.result.unwrap();
                    assert_eq!(c.bufs.dst.unwrap().as_slice(), &expected[..]);
                }
            });
        }
    });
    // ... and destroys are deferred: the table holds 3 sessions, so the 3 below fit only once
    // the deferred destroys of `enc` and of the two sessions above went out with the first.
    drop(enc);
    drop(queues);
    let more: Vec<_> = (0..3)
        .map(|_| {
            dev.create_session(&SessionParams::Hash {
                alg: HashAlg::Sha256,
                digest_len: 0,
            })
            .expect("the deferred destroy freed its slot")
        })
        .collect();
    assert_eq!(more.len(), 3);
}

#[test]
fn two_clients_one_after_another() {
    let b = Backend::start("twoclients", 1, 1024);
    let key = h(K128);
    let iv = h("000102030405060708090a0b0c0d0e0f");
    let first_id = {
        let dev = b.connect(CompletionMode::Interrupt);
        let s = cipher(&dev, CipherAlg::AesCbc, &key, Direction::Encrypt);
        assert_eq!(
            s.encrypt(&iv, &[], &h(F2_PLAIN)).unwrap()[..4],
            h("7649abac")[..]
        );
        s.id()
        // The client disconnects without closing its session.
    };
    let dev = b.connect(CompletionMode::Poll);
    let s = cipher(&dev, CipherAlg::AesCbc, &key, Direction::Encrypt);
    assert_eq!(
        s.encrypt(&iv, &[], &h(F2_PLAIN)).unwrap()[..4],
        h("7649abac")[..]
    );
    // The first client's session did not survive its connection.
    let st = raw_request(&dev, |r| r.header.session_id = first_id.into(), 16, 16);
    assert_eq!(st.status, Some(status::INVSESS));
}

/// The child half of `client_killed_mid_stream`: hammers the backend until killed.
#[test]
#[ignore = "run only as the child of client_killed_mid_stream"]
fn child_client_hammering_the_backend() {
    let Ok(path) = std::env::var("DPACC_E2E_CHILD_SOCKET") else {
        return;
    };
    let dev = CryptoDevice::connect(&path, Default::default()).unwrap();
    let s = cipher(&dev, CipherAlg::AesCtr, &[1; 16], Direction::Encrypt);
    let mut q = dev.queue(0).unwrap();
    let mut done = Vec::new();
    eprintln!("child: streaming");
    loop {
        while q.free_slots() > 0 {
            let op = Op::cipher(
                &s,
                &[0; 16],
                dev.alloc(4096).unwrap(),
                dev.alloc(4096).unwrap(),
            );
            q.push(op).unwrap();
        }
        q.flush().unwrap();
        q.wait(&mut done).unwrap();
        done.clear();
    }
}

#[test]
fn client_killed_mid_stream() {
    let b = Backend::start("killed", 1, 1024);
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_client_hammering_the_backend",
            "--ignored",
            "--nocapture",
        ])
        .env("DPACC_E2E_CHILD_SOCKET", b.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the child is streaming, let it run, then SIGKILL it mid-stream.
    let mut err = child.stderr.take().unwrap();
    let mut seen = Vec::new();
    let start = Instant::now();
    while !String::from_utf8_lossy(&seen).contains("child: streaming") {
        let mut buf = [0u8; 256];
        let n = std::io::Read::read(&mut err, &mut buf).unwrap();
        assert!(
            n > 0 && start.elapsed() < Duration::from_secs(60),
            "child never streamed"
        );
        seen.extend_from_slice(&buf[..n]);
    }
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();
    // The backend notices the disconnect, resets, and serves the next client.
    let dev = b.connect(CompletionMode::Interrupt);
    let s = cipher(&dev, CipherAlg::AesCbc, &h(K128), Direction::Encrypt);
    let iv = h("000102030405060708090a0b0c0d0e0f");
    assert_eq!(
        s.encrypt(&iv, &[], &h(F2_PLAIN)).unwrap()[..4],
        h("7649abac")[..]
    );
}

/// What a raw request came back with.
#[derive(Debug)]
struct RawResult {
    used_len: u32,
    /// The status byte (the last writable byte), when the device wrote one.
    status: Option<u8>,
}

/// Sends a cipher-encrypt data request built by `edit` with `src_len` source bytes and a
/// `dst_len`-byte destination, as separate descriptors [req][iv][src] / [dst][status].
fn raw_request(
    dev: &CryptoDevice,
    edit: impl FnOnce(&mut vc::DataRequest),
    src_len: usize,
    dst_len: usize,
) -> RawResult {
    let mut req = vc::DataRequest::default();
    req.header.opcode = vc::CIPHER_ENCRYPT.into();
    let mut sym = vc::SymDataReq::default();
    sym.set_para(&vc::CipherDataPara {
        iv_len: 16.into(),
        src_data_len: (src_len as u32).into(),
        dst_data_len: (dst_len as u32).into(),
        padding: 0.into(),
    });
    sym.op_type = vc::SYM_OP_CIPHER.into();
    req.set_body(&sym);
    edit(&mut req);
    let r = dev.alloc_from(req.as_slice()).unwrap();
    let iv = dev.alloc(16).unwrap();
    let src = dev.alloc(src_len.max(1)).unwrap();
    let dst = dev.alloc(dst_len.max(1)).unwrap();
    let mut st = dev.alloc_from(&[0xee]).unwrap();
    st.as_mut_slice()[0] = 0xee;
    let descs = [
        RawDesc::readable(r.gpa(), 72),
        RawDesc::readable(iv.gpa(), 16),
        RawDesc::readable(src.gpa(), src_len as u32),
        RawDesc::writable(dst.gpa(), dst_len as u32),
        RawDesc::writable(st.gpa(), 1),
    ];
    raw_post(dev, &descs, &st)
}

/// Edits the cipher parameters of a raw request's body.
fn edit_para(r: &mut vc::DataRequest, edit: impl FnOnce(&mut vc::CipherDataPara)) {
    let mut sym: vc::SymDataReq = r.body();
    let mut p: vc::CipherDataPara = sym.para();
    edit(&mut p);
    sym.set_para(&p);
    r.set_body(&sym);
}

fn raw_post(dev: &CryptoDevice, descs: &[RawDesc], status_buf: &dpacc::guest::DmaBuf) -> RawResult {
    let mut q = dev.queue(0).unwrap();
    let mut raw = q.raw().unwrap();
    // SAFETY: every writable descriptor points into buffers this function's caller keeps alive
    // until `wait` returns (or at bogus addresses outside our memory, which the device rejects).
    unsafe { raw.post(descs) }.unwrap();
    let u = raw.wait().unwrap();
    let st = status_buf.as_slice()[0];
    RawResult {
        used_len: u.len,
        status: (st != 0xee).then_some(st),
    }
}

#[test]
fn malformed_requests_get_a_status_and_the_backend_keeps_serving() {
    let b = Backend::start("hostile", 1, 1024);
    let dev = b.connect(CompletionMode::Interrupt);
    let key = h(K128);
    let s = cipher(&dev, CipherAlg::AesCbc, &key, Direction::Encrypt);
    let dec = cipher(&dev, CipherAlg::AesCbc, &key, Direction::Decrypt);
    let sid = s.id();

    // A well-formed raw request works (and proves the raw path itself is right).
    let ok = raw_request(&dev, |r| r.header.session_id = sid.into(), 16, 16);
    assert_eq!(ok.status, Some(status::OK), "{ok:?}");

    // Each case but the first edits a well-formed request on `sid`.
    let on_sid = |edit: &dyn Fn(&mut vc::DataRequest), src_len, dst_len| {
        raw_request(
            &dev,
            |r| {
                r.header.session_id = sid.into();
                edit(r)
            },
            src_len,
            dst_len,
        )
    };
    let cases: Vec<(&str, RawResult, u8)> = vec![
        (
            "unknown session",
            raw_request(&dev, |r| r.header.session_id = 0xdead_beef.into(), 16, 16),
            status::INVSESS,
        ),
        (
            "unknown opcode",
            on_sid(&|r| r.header.opcode = 0x999.into(), 16, 16),
            status::NOTSUPP,
        ),
        (
            "hash opcode on a cipher session",
            on_sid(&|r| r.header.opcode = vc::HASH.into(), 16, 16),
            status::ERR,
        ),
        (
            "decrypt opcode on an encrypt session",
            on_sid(&|r| r.header.opcode = vc::CIPHER_DECRYPT.into(), 16, 16),
            status::ERR,
        ),
        (
            "encrypt opcode on a decrypt session",
            raw_request(&dev, |r| r.header.session_id = dec.id().into(), 16, 16),
            status::ERR,
        ),
        (
            "src_len larger than the chain",
            on_sid(
                &|r| edit_para(r, |p| p.src_data_len = 0x7fff_ffff.into()),
                16,
                16,
            ),
            status::ERR,
        ),
        (
            "dst shorter than the result",
            on_sid(&|_| {}, 32, 16),
            status::ERR,
        ),
        (
            "wrong iv length",
            on_sid(&|r| edit_para(r, |p| p.iv_len = 8.into()), 16, 16),
            status::ERR,
        ),
        ("partial CBC block", on_sid(&|_| {}, 15, 15), status::ERR),
        (
            "unknown op_type",
            on_sid(
                &|r| {
                    let mut sym: vc::SymDataReq = r.body();
                    sym.op_type = 77.into();
                    r.set_body(&sym);
                },
                16,
                16,
            ),
            status::NOTSUPP,
        ),
    ];
    for (what, got, want) in &cases {
        assert_eq!(got.status, Some(*want), "{what}: {got:?}");
    }

    // Chains too broken to carry a status come back with used length 0.
    let st = dev.alloc_from(&[0xee]).unwrap();
    let req = dev.alloc(72).unwrap();
    let broken: [(&str, Vec<RawDesc>); 4] = [
        ("no writable byte", vec![RawDesc::readable(req.gpa(), 72)]),
        (
            "address outside guest memory",
            vec![
                RawDesc::readable(0xdead_0000_0000, 72),
                RawDesc::writable(st.gpa(), 1),
            ],
        ),
        (
            "readable after writable",
            vec![
                RawDesc::writable(st.gpa(), 1),
                RawDesc::readable(req.gpa(), 72),
            ],
        ),
        (
            "huge length",
            vec![
                RawDesc::readable(req.gpa(), u32::MAX),
                RawDesc::writable(st.gpa(), 1),
            ],
        ),
    ];
    for (what, descs) in broken {
        let got = raw_post(&dev, &descs, &st);
        assert_eq!(got.used_len, 0, "{what}: {got:?}");
        assert_eq!(
            got.status, None,
            "{what}: the device wrote into a chain it rejected"
        );
    }
    // A short header (fewer than 72 readable bytes) with a status byte: ERR.
    let got = raw_post(
        &dev,
        &[
            RawDesc::readable(req.gpa(), 40),
            RawDesc::writable(st.gpa(), 1),
        ],
        &st,
    );
    assert_eq!(got.status, Some(status::ERR), "short header: {got:?}");

    // After all that, the device still serves correct answers.
    let iv = h("000102030405060708090a0b0c0d0e0f");
    assert_eq!(
        s.encrypt(&iv, &[], &h(F2_PLAIN)).unwrap()[..4],
        h("7649abac")[..]
    );
    assert!(matches!(
        dev.create_session(&SessionParams::Cipher {
            alg: CipherAlg::AesCbc,
            key: &[0; 5],
            dir: Direction::Encrypt
        }),
        Err(Error::Crypto(CryptoError::InvalidKeyLength))
    ));
}
