//! Known-answer tests: NIST SP 800-38A, McGrew–Viega GCM, RFC 8439, FIPS 180, RFC 4231/2202.

mod common;

use common::*;
use dpacc_spec::{
    AeadAlg, ChainAuth, ChainOrder, ChainRanges, CipherAlg, CryptoError, Direction, HashAlg,
    MacAlg, Seg, SessionParams,
};

const SP800_38A_PT: &str = "6bc1bee22e409f96e93d7e117393172a ae2d8a571e03ac9c9eb76fac45af8e51
    30c81c46a35ce411e5fbc1191a0a52ef f69f2445df4f9b17ad2b417be66c3710";
const KEY128: &str = "2b7e151628aed2a6abf7158809cf4f3c";
const KEY192: &str = "8e73b0f7da0e6452c810f32b809079e562f8ead2522c6b7b";
const KEY256: &str = "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4";

fn cipher_kat(alg: CipherAlg, key: &str, iv: &str, ct: &str) {
    let (key, iv, pt, ct) = (h(key), h(iv), h(SP800_38A_PT), h(ct));
    let enc = session(SessionParams::Cipher {
        alg,
        key: &key,
        dir: Direction::Encrypt,
    });
    let dec = session(SessionParams::Cipher {
        alg,
        key: &key,
        dir: Direction::Decrypt,
    });
    assert_eq!(oneshot(&enc, &iv, &pt, &[], &[], 0).unwrap().0, ct);
    assert_eq!(oneshot(&dec, &iv, &ct, &[], &[], 0).unwrap().0, pt);
}

#[test]
fn sp800_38a_f2_cbc() {
    let iv = "000102030405060708090a0b0c0d0e0f";
    cipher_kat(
        CipherAlg::AesCbc,
        KEY128,
        iv,
        "7649abac8119b246cee98e9b12e9197d 5086cb9b507219ee95db113a917678b2
         73bed6b8e3c1743b7116e69e22229516 3ff1caa1681fac09120eca307586e1a7",
    );
    cipher_kat(
        CipherAlg::AesCbc,
        KEY192,
        iv,
        "4f021db243bc633d7178183a9fa071e8 b4d9ada9ad7dedf4e5e738763f69145a
         571b242012fb7ae07fa9baac3df102e0 08b0e27988598881d920a9e64f5615cd",
    );
    cipher_kat(
        CipherAlg::AesCbc,
        KEY256,
        iv,
        "f58c4c04d6e5f1ba779eabfb5f7bfbd6 9cfc4e967edb808d679f777bc6702c7d
         39f23369a9d9bacfa530e26304231461 b2eb05e2c39be9fcda6c19078c6a9d1b",
    );
}

#[test]
fn sp800_38a_f5_ctr() {
    let iv = "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff";
    cipher_kat(
        CipherAlg::AesCtr,
        KEY128,
        iv,
        "874d6191b620e3261bef6864990db6ce 9806f66b7970fdff8617187bb9fffdff
         5ae4df3edbd5d35e5b4f09020db03eab 1e031dda2fbe03d1792170a0f3009cee",
    );
    cipher_kat(
        CipherAlg::AesCtr,
        KEY192,
        iv,
        "1abc932417521ca24f2b0459fe7e6e0b 090339ec0aa6faefd5ccc2c6f4ce8e94
         1e36b26bd1ebc670d1bd1d665620abf7 4f78a7f6d29809585a97daec58c6b050",
    );
    cipher_kat(
        CipherAlg::AesCtr,
        KEY256,
        iv,
        "601ec313775789a5b7a7f504bbf3d228 f443e3ca4d62b59aca84e990cacaf5c5
         2b0930daa23de94ce87017ba2d84988d dfc9c58db67aada613c2dd08457941a6",
    );
}

#[test]
fn ctr_counter_carries_across_all_128_bits() {
    // Counter ff..ff wraps to 00..00: the second keystream block is AES_K(0).
    let key = h(KEY128);
    let s = session(SessionParams::Cipher {
        alg: CipherAlg::AesCtr,
        key: &key,
        dir: Direction::Encrypt,
    });
    let (ks, _) = oneshot(&s, &[0xff; 16], &[0u8; 32], &[], &[], 0).unwrap();
    let (zero_block, _) = oneshot(&s, &[0u8; 16], &[0u8; 16], &[], &[], 0).unwrap();
    assert_eq!(&ks[16..], &zero_block[..]);
    // A partial tail is fine for CTR.
    let (odd, _) = oneshot(&s, &[0xff; 16], &[0u8; 21], &[], &[], 0).unwrap();
    assert_eq!(odd, ks[..21]);
}

struct Gcm {
    key: &'static str,
    iv: &'static str,
    pt: &'static str,
    aad: &'static str,
    ct: &'static str,
    tag: &'static str,
}

const GCM_PT: &str = "d9313225f88406e5a55909c5aff5269a 86a7a9531534f7da2e4c303d8a318a72
    1c3c0c95956809532fcf0e2449a6b525 b16aedf5aa0de657ba637b391aafd255";
const GCM_PT60: &str = "d9313225f88406e5a55909c5aff5269a 86a7a9531534f7da2e4c303d8a318a72
    1c3c0c95956809532fcf0e2449a6b525 b16aedf5aa0de657ba637b39";
const GCM_AAD: &str = "feedfacedeadbeeffeedfacedeadbeefabaddad2";

const GCM_CASES: &[Gcm] = &[
    // Test Case 2
    Gcm {
        key: "00000000000000000000000000000000",
        iv: "000000000000000000000000",
        pt: "00000000000000000000000000000000",
        aad: "",
        ct: "0388dace60b6a392f328c2b971b2fe78",
        tag: "ab6e47d42cec13bdf53a67b21257bddf",
    },
    // Test Case 3
    Gcm {
        key: "feffe9928665731c6d6a8f9467308308",
        iv: "cafebabefacedbaddecaf888",
        pt: GCM_PT,
        aad: "",
        ct: "42831ec2217774244b7221b784d0d49c e3aa212f2c02a4e035c17e2329aca12e
             21d514b25466931c7d8f6a5aac84aa05 1ba30b396a0aac973d58e091473f5985",
        tag: "4d5c2af327cd64a62cf35abd2ba6fab4",
    },
    // Test Case 4
    Gcm {
        key: "feffe9928665731c6d6a8f9467308308",
        iv: "cafebabefacedbaddecaf888",
        pt: GCM_PT60,
        aad: GCM_AAD,
        ct: "42831ec2217774244b7221b784d0d49c e3aa212f2c02a4e035c17e2329aca12e
             21d514b25466931c7d8f6a5aac84aa05 1ba30b396a0aac973d58e091",
        tag: "5bc94fbc3221a5db94fae95ae7121a47",
    },
    // Test Case 14
    Gcm {
        key: "00000000000000000000000000000000 00000000000000000000000000000000",
        iv: "000000000000000000000000",
        pt: "00000000000000000000000000000000",
        aad: "",
        ct: "cea7403d4d606b6e074ec5d3baf39d18",
        tag: "d0d1c8a799996bf0265b98b5d48ab919",
    },
    // Test Case 15
    Gcm {
        key: "feffe9928665731c6d6a8f9467308308 feffe9928665731c6d6a8f9467308308",
        iv: "cafebabefacedbaddecaf888",
        pt: GCM_PT,
        aad: "",
        ct: "522dc1f099567d07f47f37a32a84427d 643a8cdcbfe5c0c97598a2bd2555d1aa
             8cb08e48590dbb3da7b08b1056828838 c5f61e6393ba7a0abcc9f662898015ad",
        tag: "b094dac5d93471bdec1a502270e3cc6c",
    },
    // Test Case 16
    Gcm {
        key: "feffe9928665731c6d6a8f9467308308 feffe9928665731c6d6a8f9467308308",
        iv: "cafebabefacedbaddecaf888",
        pt: GCM_PT60,
        aad: GCM_AAD,
        ct: "522dc1f099567d07f47f37a32a84427d 643a8cdcbfe5c0c97598a2bd2555d1aa
             8cb08e48590dbb3da7b08b1056828838 c5f61e6393ba7a0abcc9f662",
        tag: "76fc6ece0f4e1768cddf8853bb2d551b",
    },
];

fn aead_kat(alg: AeadAlg, key: &[u8], iv: &[u8], pt: &[u8], aad: &[u8], ct: &[u8], tag: &[u8]) {
    let enc = session(SessionParams::Aead {
        alg,
        key,
        tag_len: 0,
        dir: Direction::Encrypt,
    });
    let dec = session(SessionParams::Aead {
        alg,
        key,
        tag_len: 16,
        dir: Direction::Decrypt,
    });
    let (c, t) = oneshot(&enc, iv, pt, aad, &[], 16).unwrap();
    assert_eq!(c, ct);
    assert_eq!(t, tag);
    let (p, _) = oneshot(&dec, iv, ct, aad, tag, 16).unwrap();
    assert_eq!(p, pt);
    let mut bad = tag.to_vec();
    bad[0] ^= 1;
    assert_eq!(
        oneshot(&dec, iv, ct, aad, &bad, 16),
        Err(CryptoError::AuthFailed)
    );
}

#[test]
fn gcm_mcgrew_viega_cases() {
    for c in GCM_CASES {
        aead_kat(
            AeadAlg::AesGcm,
            &h(c.key),
            &h(c.iv),
            &h(c.pt),
            &h(c.aad),
            &h(c.ct),
            &h(c.tag),
        );
    }
}

#[test]
fn rfc8439_2_8_2_chacha20_poly1305() {
    let pt = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
    let key: Vec<u8> = (0x80..=0x9f).collect();
    aead_kat(
        AeadAlg::ChaCha20Poly1305,
        &key,
        &h("070000004041424344454647"),
        pt,
        &h("50515253c0c1c2c3c4c5c6c7"),
        &h(
            "d31a8d34648e60db7b86afbc53ef7ec2 a4aded51296e08fea9e2b5a736ee62d6
            3dbea45e8ca9671282fafb69da92728b 1a71de0a9e060b2905d6a5b67ecd3b36
            92ddbd7f2d778b8c9803aee328091b58 fab324e4fad675945585808b4831d7bc
            3ff4def08e4b7a9de576d26586cec64b 6116",
        ),
        &h("1ae10b594f09e26a7e902ecbd0600691"),
    );
}

const ABC: &[u8] = b"abc";
const MSG448: &[u8] = b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";

#[test]
fn fips180_sha() {
    let cases: &[(HashAlg, &[u8], &str)] = &[
        (
            HashAlg::Sha1,
            ABC,
            "a9993e364706816aba3e25717850c26c9cd0d89d",
        ),
        (
            HashAlg::Sha1,
            MSG448,
            "84983e441c3bd26ebaae4aa1f95129e5e54670f1",
        ),
        (
            HashAlg::Sha256,
            ABC,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        ),
        (
            HashAlg::Sha256,
            MSG448,
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
        ),
        (
            HashAlg::Sha384,
            ABC,
            "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed
             8086072ba1e7cc2358baeca134c825a7",
        ),
        (
            HashAlg::Sha384,
            MSG448,
            "3391fdddfc8dc7393707a65b1b4709397cf8b1d162af05abfe8f450de5f36bc6
             b0455a8520bc4e6f5fe95b1fe3c8452b",
        ),
        (
            HashAlg::Sha512,
            ABC,
            "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a
             2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
        ),
        (
            HashAlg::Sha512,
            MSG448,
            "204a8fc6dda82f0a0ced7beb8e08a41657c16ef468b228a8279be331a703c335
             96fd15c13b1b07f9aa1d3bea57789ca031ad85c7a71dd70354ec631238ca3445",
        ),
    ];
    for &(alg, msg, want) in cases {
        let want = h(want);
        let s = session(SessionParams::Hash { alg, digest_len: 0 });
        assert_eq!(digest(&s, msg, want.len()).unwrap(), want, "{alg:?}");
        // Truncated digest, and a message split into many segments.
        let t = session(SessionParams::Hash {
            alg,
            digest_len: 12,
        });
        let mut d = [0u8; 12];
        let src = split(msg, &[1, 2, 7, 30]);
        let dig = [Seg::from_mut(&mut d)];
        run(&t, &[], &src, &[], &[], &dig, ChainRanges::default()).unwrap();
        assert_eq!(d[..], want[..12]);
    }
}

struct Hmac {
    key: Vec<u8>,
    data: Vec<u8>,
    sha256: &'static str,
    sha384: &'static str,
    sha512: &'static str,
}

fn rfc4231() -> Vec<Hmac> {
    vec![
        Hmac {
            key: vec![0x0b; 20],
            data: b"Hi There".to_vec(),
            sha256: "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
            sha384: "afd03944d84895626b0825f4ab46907f15f9dadbe4101ec682aa034c7cebc59c
                     faea9ea9076ede7f4af152e8b2fa9cb6",
            sha512: "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cde
                     daa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854",
        },
        Hmac {
            key: b"Jefe".to_vec(),
            data: b"what do ya want for nothing?".to_vec(),
            sha256: "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            sha384: "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e
                     8e2240ca5e69e2c78b3239ecfab21649",
            sha512: "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554
                     9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737",
        },
        Hmac {
            key: vec![0xaa; 20],
            data: vec![0xdd; 50],
            sha256: "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
            sha384: "88062608d3e6ad8a0aa2ace014c8a86f0aa635d947ac9febe83ef4e55966144b
                     2a5ab39dc13814b94e3ab6e101a34f27",
            sha512: "fa73b0089d56a284efb0f0756c890be9b1b5dbdd8ee81a3655f83e33b2279d39
                     bf3e848279a722c806b485a47e67c807b946a337bee8942674278859e13292fb",
        },
        Hmac {
            key: (1..=25).collect(),
            data: vec![0xcd; 50],
            sha256: "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
            sha384: "3e8a69b7783c25851933ab6290af6ca77a9981480850009cc5577c6e1f573b4e
                     6801dd23c4a7d679ccf8a386c674cffb",
            sha512: "b0ba465637458c6990e5a8c5f61d4af7e576d97ff94b872de76f8050361ee3db
                     a91ca5c11aa25eb4d679275cc5788063a5f19741120c4f2de2adebeb10a298dd",
        },
        // Test case 5: truncated to 128 bits.
        Hmac {
            key: vec![0x0c; 20],
            data: b"Test With Truncation".to_vec(),
            sha256: "a3b6167473100ee06e0c796c2955552b",
            sha384: "3abf34c3503b2a23a46efc619baef897",
            sha512: "415fad6271580a531d4179bc891d87a6",
        },
        Hmac {
            key: vec![0xaa; 131],
            data: b"Test Using Larger Than Block-Size Key - Hash Key First".to_vec(),
            sha256: "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
            sha384: "4ece084485813e9088d2c63a041bc5b44f9ef1012a2b588f3cd11f05033ac4c6
                     0c2ef6ab4030fe8296248df163f44952",
            sha512: "80b24263c7c1a3ebb71493c1dd7be8b49b46d1f41b4aeec1121b013783f8f352
                     6b56d037e05f2598bd0fd2215d6a1e5295e64f73f63f0aec8b915a985d786598",
        },
        Hmac {
            key: vec![0xaa; 131],
            data: b"This is a test using a larger than block-size key and a larger than block-size data. The key needs to be hashed before being used by the HMAC algorithm.".to_vec(),
            sha256: "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
            sha384: "6617178e941f020d351e2f254e8fd32c602420feb0b8fb9adccebb82461e99c5
                     a678cc31e799176d3860e6110c46523e",
            sha512: "e37b6a775dc87dbaa4dfa9f96e5e3ffddebd71f8867289865df5a32d20cdc944
                     b6022cac3c4982b10d5eeb55c3e4de15134676fb6de0446065c97440fa8c6a58",
        },
    ]
}

fn mac(alg: HashAlg, key: &[u8], data: &[u8], len: usize) -> Vec<u8> {
    let s = session(SessionParams::Mac {
        alg: MacAlg::Hmac(alg),
        key,
        digest_len: len,
    });
    digest(&s, data, len).unwrap()
}

#[test]
fn rfc4231_hmac_sha2() {
    for (i, c) in rfc4231().iter().enumerate() {
        for (alg, want) in [
            (HashAlg::Sha256, c.sha256),
            (HashAlg::Sha384, c.sha384),
            (HashAlg::Sha512, c.sha512),
        ] {
            let want = h(want);
            assert_eq!(
                mac(alg, &c.key, &c.data, want.len()),
                want,
                "case {} {alg:?}",
                i + 1
            );
        }
    }
}

#[test]
fn rfc2202_hmac_sha1() {
    let cases: &[(Vec<u8>, Vec<u8>, &str)] = &[
        (
            vec![0x0b; 20],
            b"Hi There".to_vec(),
            "b617318655057264e28bc0b6fb378c8ef146be00",
        ),
        (
            b"Jefe".to_vec(),
            b"what do ya want for nothing?".to_vec(),
            "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79",
        ),
        (
            vec![0xaa; 20],
            vec![0xdd; 50],
            "125d7342b9ac11cd91a39af48aa17b4f63f175d3",
        ),
        (
            (1..=25).collect(),
            vec![0xcd; 50],
            "4c9007f4026250c6bc8414f9bf50c86c2d7235da",
        ),
        (
            vec![0x0c; 20],
            b"Test With Truncation".to_vec(),
            "4c1a03424b55e07fe7f27be1",
        ),
        (
            vec![0xaa; 80],
            b"Test Using Larger Than Block-Size Key - Hash Key First".to_vec(),
            "aa4ae5e15272d00e95705637ce8a3b55ed402112",
        ),
        (
            vec![0xaa; 80],
            b"Test Using Larger Than Block-Size Key and Larger Than One Block-Size Data".to_vec(),
            "e8e99d0f45237d786d6bbaa7965c7808bbff1a91",
        ),
    ];
    for (key, data, want) in cases {
        let want = h(want);
        assert_eq!(mac(HashAlg::Sha1, key, data, want.len()), want);
    }
}

/// ESP-like layout: 8-byte header (authenticated, not encrypted), 16-byte IV slot left
/// untouched, 64 bytes of CBC payload; HMAC-SHA-256-128 over header + payload.
#[test]
fn chain_encrypt_then_mac_matches_independent_cbc_and_hmac() {
    let ckey = h(KEY128);
    let akey = vec![0x0b; 20];
    let iv = h("000102030405060708090a0b0c0d0e0f");
    let hdr = h("0000000100000002");
    let mut pkt = hdr.clone();
    pkt.extend_from_slice(&h(SP800_38A_PT));
    let ranges = ChainRanges {
        cipher_offset: 8,
        cipher_len: 64,
        auth_offset: 0,
        auth_len: 72,
    };
    let chain = |order, dir| {
        session(SessionParams::Chain {
            order,
            cipher: CipherAlg::AesCbc,
            cipher_key: &ckey,
            dir,
            auth: ChainAuth::Mac(MacAlg::Hmac(HashAlg::Sha256)),
            auth_key: &akey,
            digest_len: 16,
        })
    };
    let enc = chain(ChainOrder::CipherThenHash, Direction::Encrypt);
    let dec = chain(ChainOrder::HashThenCipher, Direction::Decrypt);

    // Out of place encrypt.
    let mut out = vec![0u8; pkt.len()];
    let mut icv = [0u8; 16];
    {
        let src = [Seg::from_ref(&pkt)];
        let dst = [Seg::from_mut(&mut out)];
        let dig = [Seg::from_mut(&mut icv)];
        run(&enc, &iv, &src, &dst, &[], &dig, ranges).unwrap();
    }
    let mut want = hdr.clone();
    want.extend_from_slice(&h(
        "7649abac8119b246cee98e9b12e9197d 5086cb9b507219ee95db113a917678b2
         73bed6b8e3c1743b7116e69e22229516 3ff1caa1681fac09120eca307586e1a7",
    ));
    assert_eq!(out, want);
    let want_icv = mac(HashAlg::Sha256, &akey, &want, 32);
    assert_eq!(icv[..], want_icv[..16]);

    // In-place decrypt over a scattered buffer reproduces the MAC and the plaintext.
    let mut buf = out.clone();
    let mut icv2 = [0u8; 16];
    {
        let segs = split_mut(&mut buf, &[5, 13, 30]);
        let dig = [Seg::from_mut(&mut icv2)];
        run(&dec, &iv, &segs, &segs, &[], &dig, ranges).unwrap();
    }
    assert_eq!(icv2, icv);
    assert_eq!(buf, pkt);
}

#[test]
fn chain_hashes_aad_first_and_copies_outside_cipher_range() {
    let ckey = h(KEY256);
    let ranges = ChainRanges {
        cipher_offset: 4,
        cipher_len: 16,
        auth_offset: 2,
        auth_len: 20,
    };
    let s = session(SessionParams::Chain {
        order: ChainOrder::CipherThenHash,
        cipher: CipherAlg::AesCtr,
        cipher_key: &ckey,
        dir: Direction::Encrypt,
        auth: ChainAuth::Hash(HashAlg::Sha512),
        auth_key: &[],
        digest_len: 0,
    });
    let src: Vec<u8> = (0..24).collect();
    let mut dst = vec![0u8; 24];
    let mut dig = [0u8; 64];
    let aad = b"spi+seq";
    {
        let s_ = [Seg::from_ref(&src)];
        let d_ = [Seg::from_mut(&mut dst)];
        let a_ = [Seg::from_ref(aad)];
        let g_ = [Seg::from_mut(&mut dig)];
        run(&s, &[9; 16], &s_, &d_, &a_, &g_, ranges).unwrap();
    }
    assert_eq!(dst[..4], src[..4]);
    assert_eq!(dst[20..], src[20..]);
    let ctr = session(SessionParams::Cipher {
        alg: CipherAlg::AesCtr,
        key: &ckey,
        dir: Direction::Encrypt,
    });
    assert_eq!(
        dst[4..20],
        oneshot(&ctr, &[9; 16], &src[4..20], &[], &[], 0).unwrap().0[..]
    );
    let sha = session(SessionParams::Hash {
        alg: HashAlg::Sha512,
        digest_len: 0,
    });
    let mut hashed = aad.to_vec();
    hashed.extend_from_slice(&dst[2..22]);
    assert_eq!(dig.to_vec(), digest(&sha, &hashed, 64).unwrap());
}
