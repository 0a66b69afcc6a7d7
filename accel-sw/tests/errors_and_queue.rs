//! Bad input gives the right typed error (never a panic); queue behaviour.

mod common;

use std::sync::Arc;

use common::*;
use dpacc_spec::{
    AeadAlg, ChainAuth, ChainOrder, ChainRanges, CipherAlg, Completion, CryptoDriver, CryptoError,
    CryptoOp, Direction, DriverSession, HashAlg, Iv, MacAlg, Seg, SessionInfo, SessionParams,
};
use dpacc_sw::SwDriver;

fn create(p: SessionParams<'_>) -> Result<(), CryptoError> {
    SwDriver::new().create_session(&p).map(|_| ())
}

#[test]
fn session_creation_errors() {
    let k = [0u8; 64];
    for bad in [0, 15, 17, 20, 33, 64] {
        assert_eq!(
            create(SessionParams::Cipher {
                alg: CipherAlg::AesCbc,
                key: &k[..bad],
                dir: Direction::Encrypt
            }),
            Err(CryptoError::InvalidKeyLength)
        );
    }
    // AES-192-GCM is not offered; ChaCha needs 32 bytes.
    assert_eq!(
        create(SessionParams::Aead {
            alg: AeadAlg::AesGcm,
            key: &k[..24],
            tag_len: 0,
            dir: Direction::Encrypt
        }),
        Err(CryptoError::InvalidKeyLength)
    );
    assert_eq!(
        create(SessionParams::Aead {
            alg: AeadAlg::ChaCha20Poly1305,
            key: &k[..16],
            tag_len: 0,
            dir: Direction::Encrypt
        }),
        Err(CryptoError::InvalidKeyLength)
    );
    assert_eq!(
        create(SessionParams::Aead {
            alg: AeadAlg::AesGcm,
            key: &k[..16],
            tag_len: 8,
            dir: Direction::Encrypt
        }),
        Err(CryptoError::InvalidDigestLength)
    );
    assert_eq!(
        create(SessionParams::Hash {
            alg: HashAlg::Sha1,
            digest_len: 21
        }),
        Err(CryptoError::InvalidDigestLength)
    );
    let long = [1u8; 513];
    assert_eq!(
        create(SessionParams::Mac {
            alg: MacAlg::Hmac(HashAlg::Sha256),
            key: &long,
            digest_len: 0
        }),
        Err(CryptoError::InvalidKeyLength)
    );
    // A plain hash in a chain takes no key.
    assert_eq!(
        create(SessionParams::Chain {
            order: ChainOrder::CipherThenHash,
            cipher: CipherAlg::AesCbc,
            cipher_key: &k[..16],
            dir: Direction::Encrypt,
            auth: ChainAuth::Hash(HashAlg::Sha256),
            auth_key: &k[..4],
            digest_len: 0,
        }),
        Err(CryptoError::InvalidKeyLength)
    );
    // Unknown algorithms never get as far as a driver: the virtio number does not decode.
    assert_eq!(CipherAlg::from_virtio(0xdead), None);
    assert_eq!(AeadAlg::from_virtio(0xdead), None);
    // Empty HMAC keys and keys longer than a block are fine.
    create(SessionParams::Mac {
        alg: MacAlg::Hmac(HashAlg::Sha512),
        key: &[],
        digest_len: 0,
    })
    .unwrap();
    create(SessionParams::Mac {
        alg: MacAlg::Hmac(HashAlg::Sha512),
        key: &long[..512],
        digest_len: 0,
    })
    .unwrap();
}

#[test]
fn operation_errors() {
    let key = [3u8; 16];
    let cbc = session(SessionParams::Cipher {
        alg: CipherAlg::AesCbc,
        key: &key,
        dir: Direction::Encrypt,
    });
    let ctr = session(SessionParams::Cipher {
        alg: CipherAlg::AesCtr,
        key: &key,
        dir: Direction::Decrypt,
    });
    let gcm = session(SessionParams::Aead {
        alg: AeadAlg::AesGcm,
        key: &key,
        tag_len: 0,
        dir: Direction::Encrypt,
    });
    let gcm_dec = session(SessionParams::Aead {
        alg: AeadAlg::AesGcm,
        key: &key,
        tag_len: 0,
        dir: Direction::Decrypt,
    });
    let sha = session(SessionParams::Hash {
        alg: HashAlg::Sha384,
        digest_len: 0,
    });
    let data = [0u8; 48];

    // IV sizes.
    assert_eq!(
        oneshot(&cbc, &[0; 12], &data, &[], &[], 0),
        Err(CryptoError::InvalidIvLength)
    );
    assert_eq!(
        oneshot(&ctr, &[], &data, &[], &[], 0),
        Err(CryptoError::InvalidIvLength)
    );
    assert_eq!(
        oneshot(&gcm, &[0; 16], &data, &[], &[], 16),
        Err(CryptoError::InvalidIvLength)
    );
    assert_eq!(
        oneshot(&gcm, &[0; 8], &data, &[], &[], 16),
        Err(CryptoError::InvalidIvLength)
    );
    // CBC partial block.
    assert_eq!(
        oneshot(&cbc, &[0; 16], &data[..47], &[], &[], 0),
        Err(CryptoError::InvalidDataLength)
    );
    // Destination too small.
    let mut small = [0u8; 47];
    let src = [Seg::from_ref(&data)];
    let dst = [Seg::from_mut(&mut small)];
    assert_eq!(
        run(&cbc, &[0; 16], &src, &dst, &[], &[], ChainRanges::default()),
        Err(CryptoError::BufferTooSmall)
    );
    assert_eq!(
        run(&ctr, &[0; 16], &src, &[], &[], &[], ChainRanges::default()),
        Err(CryptoError::BufferTooSmall)
    );
    // Digest / tag buffer too small.
    assert_eq!(digest(&sha, b"abc", 47), Err(CryptoError::BufferTooSmall));
    assert_eq!(
        oneshot(&gcm, &[0; 12], &data, &[], &[], 15),
        Err(CryptoError::BufferTooSmall)
    );
    assert_eq!(
        oneshot(&gcm_dec, &[0; 12], &data, &[], &[0; 15], 0),
        Err(CryptoError::BufferTooSmall)
    );
    // A hash digest may go to a larger buffer; only the digest length is written.
    let mut big = [0xaau8; 60];
    let d = [Seg::from_mut(&mut big)];
    run(
        &sha,
        &[],
        &[Seg::from_ref(b"abc")],
        &[],
        &[],
        &d,
        ChainRanges::default(),
    )
    .unwrap();
    assert_eq!(big[48..], [0xaa; 12]);
}

#[test]
fn chain_range_errors() {
    let key = [1u8; 32];
    let s = session(SessionParams::Chain {
        order: ChainOrder::HashThenCipher,
        cipher: CipherAlg::AesCbc,
        cipher_key: &key,
        dir: Direction::Decrypt,
        auth: ChainAuth::Mac(MacAlg::Hmac(HashAlg::Sha256)),
        auth_key: &key,
        digest_len: 12,
    });
    let mut buf = [0u8; 64];
    let mut icv = [0u8; 12];
    let segs = split_mut(&mut buf, &[10]);
    let dig = [Seg::from_mut(&mut icv)];
    let go = |r: ChainRanges, dig: &[Seg<'_>]| run(&s, &[0; 16], &segs, &segs, &[], dig, r);
    let r = |co, cl, ao, al| ChainRanges {
        cipher_offset: co,
        cipher_len: cl,
        auth_offset: ao,
        auth_len: al,
    };
    assert_eq!(go(r(16, 48, 0, 64), &dig), Ok(()));
    assert_eq!(
        go(r(32, 48, 0, 64), &dig),
        Err(CryptoError::InvalidDataLength)
    );
    assert_eq!(
        go(r(16, 48, 1, 64), &dig),
        Err(CryptoError::InvalidDataLength)
    );
    assert_eq!(
        go(r(u32::MAX, 16, 0, 0), &dig),
        Err(CryptoError::InvalidDataLength)
    );
    assert_eq!(
        go(r(0, 16, u32::MAX, u32::MAX), &dig),
        Err(CryptoError::InvalidDataLength)
    );
    assert_eq!(
        go(r(8, 20, 0, 64), &dig),
        Err(CryptoError::InvalidDataLength)
    );
    assert_eq!(
        go(r(16, 48, 0, 64), &dig[..0]),
        Err(CryptoError::BufferTooSmall)
    );
    assert_eq!(
        run(&s, &[0; 15], &segs, &segs, &[], &dig, r(16, 48, 0, 64)),
        Err(CryptoError::InvalidIvLength)
    );
}

struct Foreign;
impl DriverSession for Foreign {
    fn info(&self) -> SessionInfo {
        SessionInfo::Hash {
            alg: HashAlg::Sha1,
            digest_len: 20,
        }
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

#[test]
fn foreign_session_is_invalid() {
    let s: dpacc_spec::SessionHandle = Arc::new(Foreign);
    assert_eq!(digest(&s, b"abc", 20), Err(CryptoError::InvalidSession));
}

#[test]
fn queue_bounds_and_completions() {
    let drv = SwDriver::new();
    assert_eq!(drv.name(), "sw");
    assert!(drv.capabilities().has_aead(AeadAlg::ChaCha20Poly1305));
    assert_eq!(drv.open_queue(0).err(), Some(CryptoError::BadRequest));
    let mut q = drv.open_queue(4).unwrap();
    assert_eq!(q.notifier(), None);

    let key = [5u8; 32];
    let s = drv
        .create_session(&SessionParams::Cipher {
            alg: CipherAlg::AesCtr,
            key: &key,
            dir: Direction::Encrypt,
        })
        .unwrap();
    let bad_iv = Iv::new(&[0; 4]).unwrap();
    let mut bufs = [[0u8; 32]; 6];
    let segs: Vec<[Seg<'_>; 1]> = bufs.iter_mut().map(|b| [Seg::from_mut(b)]).collect();
    let ops: Vec<CryptoOp<'_>> = segs
        .iter()
        .enumerate()
        .map(|(i, sg)| CryptoOp {
            session: &s,
            iv: if i == 2 {
                bad_iv
            } else {
                Iv::new(&[i as u8; 16]).unwrap()
            },
            src: sg,
            dst: sg,
            aad: &[],
            digest: &[],
            chain: ChainRanges::default(),
            user_data: 100 + i as u64,
        })
        .collect();
    // SAFETY: every segment borrows `bufs`, which outlives all completions dequeued below.
    let taken = unsafe { q.enqueue(&ops) };
    assert_eq!(taken, 4);
    assert_eq!(q.in_flight(), 4);
    // SAFETY: as above.
    assert_eq!(unsafe { q.enqueue(&ops[4..]) }, 0);
    // The session handle may go away once the ops are taken.
    drop(ops);
    drop(s);

    let mut out = [Completion::default(); 3];
    assert_eq!(q.dequeue(&mut out), 3);
    assert_eq!(out.map(|c| c.user_data), [100, 101, 102]);
    assert_eq!(out[0].result, Ok(()));
    assert_eq!(out[2].result, Err(CryptoError::InvalidIvLength));
    assert_eq!(q.in_flight(), 1);
    assert_eq!(q.dequeue(&mut out), 1);
    assert_eq!(out[0].user_data, 103);
    assert_eq!(q.dequeue(&mut out), 0);
    assert_eq!(q.in_flight(), 0);
    drop(segs);
    assert_ne!(bufs[0], [0u8; 32]);
    assert_eq!(bufs[2], [0u8; 32]);
    assert_eq!(bufs[5], [0u8; 32]);
}

#[test]
fn queue_wraps_around_many_times() {
    let drv = SwDriver::new();
    let mut q = drv.open_queue(3).unwrap();
    let s = drv
        .create_session(&SessionParams::Hash {
            alg: HashAlg::Sha256,
            digest_len: 4,
        })
        .unwrap();
    let mut d = [0u8; 4];
    let dig = [Seg::from_mut(&mut d)];
    let src = [Seg::from_ref(b"abc")];
    let mut next = 0u64;
    let mut seen = 0u64;
    let mut out = [Completion::default(); 2];
    for _ in 0..50 {
        let ops: Vec<CryptoOp<'_>> = (0..2)
            .map(|i| CryptoOp {
                session: &s,
                iv: Iv::default(),
                src: &src,
                dst: &[],
                aad: &[],
                digest: &dig,
                chain: ChainRanges::default(),
                user_data: next + i,
            })
            .collect();
        // SAFETY: `src`/`dig` borrow locals that outlive the loop and all dequeues.
        let n = unsafe { q.enqueue(&ops) } as u64;
        next += n;
        let m = q.dequeue(&mut out[..1]);
        for c in &out[..m] {
            assert_eq!(c.user_data, seen);
            assert_eq!(c.result, Ok(()));
            seen += 1;
        }
    }
    while q.dequeue(&mut out[..1]) == 1 {
        assert_eq!(out[0].user_data, seen);
        seen += 1;
    }
    assert_eq!(seen, next);
    assert_eq!(d, [0xba, 0x78, 0x16, 0xbf]);
}

#[test]
fn large_scattered_aead_uses_bounce_and_oversize_is_rejected() {
    let key = [7u8; 32];
    let enc = session(SessionParams::Aead {
        alg: AeadAlg::AesGcm,
        key: &key,
        tag_len: 0,
        dir: Direction::Encrypt,
    });
    let data = vec![0x42u8; dpacc_sw::DATA_BOUNCE_LEN + 1];
    let mut out = vec![0u8; data.len()];
    let mut tag = [0u8; 16];
    let src = split(&data, &[100]);
    {
        let dst = split_mut(&mut out, &[200]);
        let t = [Seg::from_mut(&mut tag)];
        assert_eq!(
            run(&enc, &[0; 12], &src, &dst, &[], &t, ChainRanges::default()),
            Err(CryptoError::InvalidDataLength)
        );
    }
    // Single-segment destinations have no size limit.
    let dst = [Seg::from_mut(&mut out)];
    let t = [Seg::from_mut(&mut tag)];
    assert_eq!(
        run(&enc, &[0; 12], &src, &dst, &[], &t, ChainRanges::default()),
        Ok(())
    );
    // Scattered CBC/CTR larger than the bounce buffer streams through it.
    let ctr = session(SessionParams::Cipher {
        alg: CipherAlg::AesCtr,
        key: &key,
        dir: Direction::Encrypt,
    });
    let whole = oneshot(&ctr, &[1; 16], &data, &[], &[], 0).unwrap().0;
    let mut out2 = vec![0u8; data.len()];
    let dst2 = split_mut(&mut out2, &[77, 1 << 19]);
    run(
        &ctr,
        &[1; 16],
        &src,
        &dst2,
        &[],
        &[],
        ChainRanges::default(),
    )
    .unwrap();
    drop(dst2);
    assert!(out2 == whole);
}

/// AES-256-GCM through one queue of depth 3, many times round its completion ring: every
/// completion carries its own result (the known answer, McGrew-Viega test case 16; a forged tag
/// `AuthFailed` with no plaintext released; a short IV `InvalidIvLength`; a short tag buffer
/// `BufferTooSmall`), in order, whatever the mix of successes and failures before it.
#[test]
fn aead_completions_through_a_wrapping_queue_carry_their_own_results() {
    const KEY: &str = "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308";
    const IV: &str = "cafebabefacedbaddecaf888";
    const PT: &str = "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72\
                      1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39";
    const AAD: &str = "feedfacedeadbeeffeedfacedeadbeefabaddad2";
    const CT: &str = "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa\
                      8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662";
    const TAG: &str = "76fc6ece0f4e1768cddf8853bb2d551b";
    let drv = SwDriver::new();
    let mut q = drv.open_queue(3).unwrap();
    let key = h(KEY);
    let mk = |dir| {
        drv.create_session(&SessionParams::Aead {
            alg: AeadAlg::AesGcm,
            key: &key,
            tag_len: 16,
            dir,
        })
        .unwrap()
    };
    let (enc, dec) = (mk(Direction::Encrypt), mk(Direction::Decrypt));
    let (pt, ct, aad, tag, iv) = (h(PT), h(CT), h(AAD), h(TAG), h(IV));
    let mut forged = tag.clone();
    forged[7] ^= 0x10;
    let good_iv = Iv::new(&iv).unwrap();
    let short_iv = Iv::new(&iv[..8]).unwrap();
    let aad_s = [Seg::from_ref(&aad)];
    // Per operation kind: what it expects.
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Kind {
        Seal,
        Open,
        Forged,
        ShortIv,
        ShortTag,
    }
    let kinds = [
        Kind::Seal,
        Kind::Forged,
        Kind::Open,
        Kind::ShortIv,
        Kind::Seal,
        Kind::ShortTag,
        Kind::Open,
    ];
    let (mut next, mut seen) = (0usize, 0usize);
    let mut out = [Completion::default(); 2];
    for round in 0..40 {
        // Two operations a round into a queue of depth 3 drained at the end of each round:
        // both are taken, and the ring wraps every few rounds.
        let picks: Vec<Kind> = (0..2).map(|i| kinds[(next + i) % kinds.len()]).collect();
        let mut outs = vec![vec![0xa5u8; pt.len()]; 2];
        let mut tags = [[0u8; 16]; 2];
        let mut shorts = [[0u8; 15]; 2];
        for (k, t) in picks.iter().zip(tags.iter_mut()) {
            if matches!(k, Kind::Open) {
                t.copy_from_slice(&tag);
            } else if matches!(k, Kind::Forged) {
                t.copy_from_slice(&forged);
            }
        }
        let segs: Vec<_> = outs
            .iter_mut()
            .zip(tags.iter_mut().zip(shorts.iter_mut()))
            .map(|(o, (t, s))| ([Seg::from_mut(o)], [Seg::from_mut(t)], [Seg::from_mut(s)]))
            .collect();
        let srcs: Vec<[Seg<'_>; 1]> = picks
            .iter()
            .map(|k| match k {
                Kind::Open | Kind::Forged => [Seg::from_ref(&ct)],
                _ => [Seg::from_ref(&pt)],
            })
            .collect();
        let ops: Vec<CryptoOp<'_>> = (0..2)
            .map(|i| {
                let k = picks[i];
                CryptoOp {
                    session: if matches!(k, Kind::Open | Kind::Forged) {
                        &dec
                    } else {
                        &enc
                    },
                    iv: if k == Kind::ShortIv {
                        short_iv
                    } else {
                        good_iv
                    },
                    src: &srcs[i],
                    dst: &segs[i].0,
                    aad: &aad_s,
                    digest: if k == Kind::ShortTag {
                        &segs[i].2
                    } else {
                        &segs[i].1
                    },
                    chain: ChainRanges::default(),
                    user_data: (next + i) as u64,
                }
            })
            .collect();
        // SAFETY: every segment borrows locals that outlive the dequeues of this round, and
        // the queue is drained at the end of each round (below).
        let taken = unsafe { q.enqueue(&ops) };
        assert_eq!(taken, 2, "round {round}");
        next += taken;
        drop(ops);
        // Drain everything this round took, one or two at a time.
        while q.in_flight() > 0 {
            let m = q.dequeue(&mut out[..1 + round % 2]);
            for c in &out[..m] {
                assert_eq!(c.user_data as usize, seen);
                let want = match kinds[seen % kinds.len()] {
                    Kind::Seal | Kind::Open => Ok(()),
                    Kind::Forged => Err(CryptoError::AuthFailed),
                    Kind::ShortIv => Err(CryptoError::InvalidIvLength),
                    Kind::ShortTag => Err(CryptoError::BufferTooSmall),
                };
                assert_eq!(c.result, want, "operation {seen}");
                seen += 1;
            }
        }
        drop(segs);
        for (i, k) in picks.iter().enumerate() {
            match k {
                Kind::Seal => assert_eq!((&outs[i], &tags[i][..]), (&ct, &tag[..])),
                Kind::Open => assert_eq!(outs[i], pt),
                Kind::Forged => assert!(outs[i].iter().all(|&b| b == 0)),
                Kind::ShortIv | Kind::ShortTag => {
                    assert!(outs[i].iter().all(|&b| b == 0xa5));
                    assert_eq!(tags[i], [0u8; 16]);
                }
            }
        }
    }
    assert_eq!((seen, next), (80, 80));
}
