//! Self-test of the AF_ALG driver against the running kernel, built statically and run inside
//! the QEMU guest by `tests/qemu_afalg_driver.rs` (this host's kernel has no AF_ALG).
//!
//! Checks published vectors (NIST SP 800-38A CBC/CTR, SP 800-38D GCM incl. tag tamper, RFC
//! 8439 ChaCha20-Poly1305, FIPS 180 SHA, RFC 4231 HMAC), then many requests in flight through
//! the asynchronous queue, compared with dpacc's software driver (an independent
//! implementation). Prints `DPACC-AFALG-CASE <name> PASS|FAIL ...`, the kernel drivers found,
//! a throughput figure, and `DPACC-AFALG-RESULT: N passed, M failed`.

use std::time::Instant;

use dpacc_hw::afalg::AfAlgDriver;
use dpacc_spec::{
    run_sync, AeadAlg, CipherAlg, Completion, CryptoDriver, CryptoError, CryptoOp, CryptoQueue,
    Direction, HashAlg, Iv, MacAlg, Seg, SessionHandle, SessionParams,
};

struct Tally {
    passed: u32,
    failed: u32,
}

impl Tally {
    fn check(&mut self, name: &str, ok: bool, detail: impl FnOnce() -> String) {
        if ok {
            self.passed += 1;
            println!("DPACC-AFALG-CASE {name} PASS");
        } else {
            self.failed += 1;
            println!("DPACC-AFALG-CASE {name} FAIL {}", detail());
        }
    }
}

fn h(s: &str) -> Vec<u8> {
    hex::decode(s.replace(' ', "")).expect("hex")
}

/// One synchronous op: returns (dst, digest) or the error.
fn run(
    q: &mut dyn CryptoQueue,
    s: &SessionHandle,
    iv: &[u8],
    aad: &[u8],
    src: &[u8],
    digest_in: Option<&[u8]>,
    digest_len: usize,
) -> Result<(Vec<u8>, Vec<u8>), CryptoError> {
    let mut dst = vec![0u8; src.len()];
    let mut dig = digest_in.map_or(vec![0u8; digest_len], <[u8]>::to_vec);
    let srcs = [Seg::from_ref(src)];
    let aads = [Seg::from_ref(aad)];
    let dsts = [Seg::from_mut(&mut dst)];
    let digs = [Seg::from_mut(&mut dig)];
    let op = CryptoOp {
        session: s,
        iv: Iv::new(iv)?,
        src: &srcs,
        dst: &dsts,
        aad: if aad.is_empty() { &[] } else { &aads },
        digest: if digest_len == 0 && digest_in.is_none() {
            &[]
        } else {
            &digs
        },
        chain: Default::default(),
        user_data: 7,
    };
    run_sync(q, &op)?;
    Ok((dst, dig))
}

fn main() {
    let mut t = Tally {
        passed: 0,
        failed: 0,
    };
    let drv = match AfAlgDriver::open() {
        Ok(d) => d,
        Err(e) => {
            println!("DPACC-AFALG-CASE open FAIL {e}");
            println!("DPACC-AFALG-RESULT: 0 passed, 1 failed");
            std::process::exit(1);
        }
    };
    for (alg, driver) in drv.kernel_drivers() {
        println!("DPACC-AFALG-DRIVER {alg} -> {driver}");
    }
    let caps = drv.capabilities();
    let sw = dpacc_sw::SwDriver::new();
    let mut q = drv.open_queue(64).expect("queue");
    let q = &mut *q;
    let sess = |p: SessionParams<'_>| drv.create_session(&p).expect("session");

    // SP 800-38A F.2.1/F.2.2 (AES-128-CBC), F.2.5 (AES-256-CBC), F.5.1 (AES-128-CTR).
    let k128 = h("2b7e151628aed2a6abf7158809cf4f3c");
    let k256 = h("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4");
    let pt = h("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51");
    let iv = h("000102030405060708090a0b0c0d0e0f");
    let cbc = |key: &[u8], dir| {
        sess(SessionParams::Cipher {
            alg: CipherAlg::AesCbc,
            key,
            dir,
        })
    };
    let ct128 = h("7649abac8119b246cee98e9b12e9197d5086cb9b507219ee95db113a917678b2");
    let r = run(q, &cbc(&k128, Direction::Encrypt), &iv, &[], &pt, None, 0);
    t.check(
        "cbc-128-enc",
        r.as_ref().map(|r| &r.0) == Ok(&ct128),
        || format!("{r:?}"),
    );
    let r = run(
        q,
        &cbc(&k128, Direction::Decrypt),
        &iv,
        &[],
        &ct128,
        None,
        0,
    );
    t.check("cbc-128-dec", r.as_ref().map(|r| &r.0) == Ok(&pt), || {
        format!("{r:?}")
    });
    let ct256 = h("f58c4c04d6e5f1ba779eabfb5f7bfbd69cfc4e967edb808d679f777bc6702c7d");
    let r = run(q, &cbc(&k256, Direction::Encrypt), &iv, &[], &pt, None, 0);
    t.check(
        "cbc-256-enc",
        r.as_ref().map(|r| &r.0) == Ok(&ct256),
        || format!("{r:?}"),
    );
    if caps.has_cipher(CipherAlg::AesCtr) {
        let ctr = sess(SessionParams::Cipher {
            alg: CipherAlg::AesCtr,
            key: &k128,
            dir: Direction::Encrypt,
        });
        let want = h("874d6191b620e3261bef6864990db6ce9806f66b7970fdff8617187bb9fffdff");
        let r = run(
            q,
            &ctr,
            &h("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff"),
            &[],
            &pt,
            None,
            0,
        );
        t.check("ctr-128", r.as_ref().map(|r| &r.0) == Ok(&want), || {
            format!("{r:?}")
        });
    }
    // Bad input is a typed error, not a crash.
    let r = run(
        q,
        &cbc(&k128, Direction::Encrypt),
        &iv,
        &[],
        &pt[..17],
        None,
        0,
    );
    t.check(
        "cbc-bad-length",
        r == Err(CryptoError::InvalidDataLength),
        || format!("{r:?}"),
    );

    // SP 800-38D test case 4 (AES-128-GCM), tag and AAD tamper.
    if caps.has_aead(AeadAlg::AesGcm) {
        let gk = h("feffe9928665731c6d6a8f9467308308");
        let gp = h("d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39");
        let aad = h("feedfacedeadbeeffeedfacedeadbeefabaddad2");
        let nonce = h("cafebabefacedbaddecaf888");
        let gct = h("42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091");
        let tag = h("5bc94fbc3221a5db94fae95ae7121a47");
        let gs = |dir| {
            sess(SessionParams::Aead {
                alg: AeadAlg::AesGcm,
                key: &gk,
                tag_len: 16,
                dir,
            })
        };
        let r = run(q, &gs(Direction::Encrypt), &nonce, &aad, &gp, None, 16);
        t.check(
            "gcm-128-enc",
            r.as_ref() == Ok(&(gct.clone(), tag.clone())),
            || format!("{r:?}"),
        );
        let dec = gs(Direction::Decrypt);
        let r = run(q, &dec, &nonce, &aad, &gct, Some(&tag), 16);
        t.check("gcm-128-dec", r.as_ref().map(|r| &r.0) == Ok(&gp), || {
            format!("{r:?}")
        });
        let mut bad = tag.clone();
        bad[0] ^= 1;
        let r = run(q, &dec, &nonce, &aad, &gct, Some(&bad), 16);
        t.check("gcm-tag-tamper", r == Err(CryptoError::AuthFailed), || {
            format!("{r:?}")
        });
        let mut bad_aad = aad.clone();
        bad_aad[3] ^= 0x40;
        let r = run(q, &dec, &nonce, &bad_aad, &gct, Some(&tag), 16);
        t.check("gcm-aad-tamper", r == Err(CryptoError::AuthFailed), || {
            format!("{r:?}")
        });
    } else {
        t.check("gcm-present", false, || {
            "gcm(aes) not offered by the kernel".into()
        });
    }
    // RFC 8439 §2.8.2.
    if caps.has_aead(AeadAlg::ChaCha20Poly1305) {
        let ck: Vec<u8> = (0x80u8..0xa0).collect();
        let cs = sess(SessionParams::Aead {
            alg: AeadAlg::ChaCha20Poly1305,
            key: &ck,
            tag_len: 16,
            dir: Direction::Encrypt,
        });
        let r = run(
            q,
            &cs,
            &h("070000004041424344454647"),
            &h("50515253c0c1c2c3c4c5c6c7"),
            b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.",
            None,
            16,
        );
        let want = h("1ae10b594f09e26a7e902ecbd0600691");
        t.check(
            "chacha20-poly1305",
            r.as_ref().map(|r| &r.1) == Ok(&want),
            || format!("{r:?}"),
        );
    }
    // FIPS 180 "abc", RFC 4231 test case 2 (truncated to 16 bytes too).
    let abc: [(HashAlg, &str); 4] = [
        (HashAlg::Sha1, "a9993e364706816aba3e25717850c26c9cd0d89d"),
        (HashAlg::Sha256, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
        (HashAlg::Sha384, "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed8086072ba1e7cc2358baeca134c825a7"),
        (HashAlg::Sha512, "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"),
    ];
    for (alg, want) in abc {
        if !caps.has_hash(alg) {
            continue;
        }
        let s = sess(SessionParams::Hash { alg, digest_len: 0 });
        let r = run(q, &s, &[], &[], b"abc", None, alg.digest_len());
        t.check(
            &format!("{alg:?}-abc"),
            r.as_ref().map(|r| hex::encode(&r.1)) == Ok(want.to_string()),
            || format!("{r:?}"),
        );
    }
    if caps.has_mac(MacAlg::Hmac(HashAlg::Sha256)) {
        let want = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        for len in [32usize, 16] {
            let s = sess(SessionParams::Mac {
                alg: MacAlg::Hmac(HashAlg::Sha256),
                key: b"Jefe",
                digest_len: len,
            });
            let r = run(q, &s, &[], &[], b"what do ya want for nothing?", None, len);
            t.check(
                &format!("hmac-sha256-{len}"),
                r.as_ref().map(|r| hex::encode(&r.1)) == Ok(want[..2 * len].to_string()),
                || format!("{r:?}"),
            );
        }
    }

    // Many requests in flight (AIO), 1 KiB .. 64 KiB, checked against dpacc-sw.
    let key = [0x5au8; 32];
    for (name, p) in [
        (
            "async-cbc-256",
            SessionParams::Cipher {
                alg: CipherAlg::AesCbc,
                key: &key,
                dir: Direction::Encrypt,
            },
        ),
        (
            "async-gcm-256",
            SessionParams::Aead {
                alg: AeadAlg::AesGcm,
                key: &key,
                tag_len: 16,
                dir: Direction::Encrypt,
            },
        ),
    ] {
        let s = sess(p);
        let sws = sw.create_session(&p).unwrap();
        let mut swq = sw.open_queue(1).unwrap();
        let n = 48usize;
        let sizes: Vec<usize> = (0..n).map(|i| 1024 << (i % 7)).collect();
        let srcs: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &l)| (0..l).map(|j| (i * 131 + j * 7) as u8).collect())
            .collect();
        let mut dsts: Vec<Vec<u8>> = sizes.iter().map(|&l| vec![0u8; l]).collect();
        let mut tags = vec![[0u8; 16]; n];
        let ivs: Vec<[u8; 16]> = (0..n).map(|i| [i as u8; 16]).collect();
        let gcm = matches!(p, SessionParams::Aead { .. });
        let src_segs: Vec<[Seg<'_>; 1]> = srcs.iter().map(|s| [Seg::from_ref(s)]).collect();
        let dst_segs: Vec<[Seg<'_>; 1]> = dsts.iter_mut().map(|d| [Seg::from_mut(d)]).collect();
        let tag_segs: Vec<[Seg<'_>; 1]> = tags.iter_mut().map(|d| [Seg::from_mut(d)]).collect();
        let ops: Vec<CryptoOp<'_>> = (0..n)
            .map(|i| CryptoOp {
                session: &s,
                iv: Iv::new(&ivs[i][..if gcm { 12 } else { 16 }]).unwrap(),
                src: &src_segs[i],
                dst: &dst_segs[i],
                aad: &[],
                digest: if gcm { &tag_segs[i] } else { &[] },
                chain: Default::default(),
                user_data: i as u64,
            })
            .collect();
        let start = Instant::now();
        let (mut next, mut done, mut max_in_flight) = (0, 0, 0);
        let mut comps = [Completion::default(); 64];
        let mut results = vec![None; n];
        while done < n {
            // SAFETY: every buffer outlives the loop, which ends only when all completed.
            next += unsafe { q.enqueue(&ops[next..]) };
            max_in_flight = max_in_flight.max(q.in_flight());
            let got = q.dequeue(&mut comps);
            for c in &comps[..got] {
                results[c.user_data as usize] = Some(c.result);
            }
            done += got;
            if got == 0 {
                std::thread::yield_now();
            }
        }
        let secs = start.elapsed().as_secs_f64();
        drop(ops);
        drop((src_segs, dst_segs, tag_segs));
        let mut bad = Vec::new();
        for i in 0..n {
            let mut want = vec![0u8; sizes[i]];
            let mut want_tag = [0u8; 16];
            let (ss, ds, ts) = (
                [Seg::from_ref(&srcs[i])],
                [Seg::from_mut(&mut want)],
                [Seg::from_mut(&mut want_tag)],
            );
            let op = CryptoOp {
                session: &sws,
                iv: Iv::new(&ivs[i][..if gcm { 12 } else { 16 }]).unwrap(),
                src: &ss,
                dst: &ds,
                aad: &[],
                digest: if gcm { &ts } else { &[] },
                chain: Default::default(),
                user_data: 0,
            };
            run_sync(&mut *swq, &op).unwrap();
            if results[i] != Some(Ok(())) || dsts[i] != want || (gcm && tags[i] != want_tag) {
                bad.push(i);
            }
        }
        let bytes: usize = sizes.iter().sum();
        println!(
            "DPACC-AFALG-FIGURE {name}: {n} requests, up to {max_in_flight} in flight, {:.1} MB/s",
            bytes as f64 / secs / 1e6
        );
        t.check(name, bad.is_empty() && max_in_flight > 1, || {
            format!("mismatching requests {bad:?}; max in flight {max_in_flight}")
        });
    }

    // Session churn: 200 create/close cycles, each used once.
    let mut churn_ok = true;
    for i in 0..200u32 {
        let k = [i as u8; 16];
        let s = cbc(&k, Direction::Encrypt);
        let p = SessionParams::Cipher {
            alg: CipherAlg::AesCbc,
            key: &k,
            dir: Direction::Encrypt,
        };
        let sws = sw.create_session(&p).unwrap();
        let mut swq = sw.open_queue(1).unwrap();
        let got = run(q, &s, &iv, &[], &pt, None, 0);
        let want = run(&mut *swq, &sws, &iv, &[], &pt, None, 0);
        churn_ok &= got.is_ok() && got == want;
    }
    t.check("session-churn-200", churn_ok, || {
        "a re-keyed session disagreed with dpacc-sw".into()
    });

    println!(
        "DPACC-AFALG-RESULT: {} passed, {} failed",
        t.passed, t.failed
    );
    std::process::exit(if t.failed == 0 { 0 } else { 1 });
}
