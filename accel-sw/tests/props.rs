//! Property tests: round trips, tamper detection and segmentation independence.

mod common;

use common::*;
use dpacc_spec::{
    AeadAlg, ChainAuth, ChainOrder, ChainRanges, CipherAlg, CryptoError, Direction, HashAlg,
    MacAlg, Seg, SessionParams,
};
use proptest::prelude::*;

fn cipher_alg() -> impl Strategy<Value = (CipherAlg, usize)> {
    (
        prop_oneof![Just(CipherAlg::AesCbc), Just(CipherAlg::AesCtr)],
        prop_oneof![Just(16usize), Just(24), Just(32)],
    )
}

fn aead_alg() -> impl Strategy<Value = (AeadAlg, usize)> {
    prop_oneof![
        Just((AeadAlg::AesGcm, 16usize)),
        Just((AeadAlg::AesGcm, 32)),
        Just((AeadAlg::ChaCha20Poly1305, 32)),
    ]
}

/// Ciphers `input` with `src`/`dst` split at the given cuts, in place or not.
fn cipher_split(
    s: &dpacc_spec::SessionHandle,
    iv: &[u8],
    input: &[u8],
    src_cuts: &[usize],
    dst_cuts: &[usize],
    in_place: bool,
) -> Vec<u8> {
    if in_place {
        let mut buf = input.to_vec();
        let segs = split_mut(&mut buf, src_cuts);
        run(s, iv, &segs, &segs, &[], &[], ChainRanges::default()).unwrap();
        drop(segs);
        buf
    } else {
        let mut out = vec![0u8; input.len()];
        let src = split(input, src_cuts);
        let dst = split_mut(&mut out, dst_cuts);
        run(s, iv, &src, &dst, &[], &[], ChainRanges::default()).unwrap();
        drop(dst);
        out
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn cipher_round_trip_any_segmentation(
        (alg, klen) in cipher_alg(),
        key in prop::collection::vec(any::<u8>(), 32),
        iv in prop::array::uniform16(any::<u8>()),
        data in prop::collection::vec(any::<u8>(), 0..300),
        src_cuts in prop::collection::vec(0usize..300, 0..6),
        dst_cuts in prop::collection::vec(0usize..300, 0..6),
        in_place in any::<bool>(),
    ) {
        let mut data = data;
        if alg == CipherAlg::AesCbc {
            data.truncate(data.len() / 16 * 16);
        }
        let key = &key[..klen];
        let mk = |dir| session(SessionParams::Cipher { alg, key, dir });
        let (enc, dec) = (mk(Direction::Encrypt), mk(Direction::Decrypt));
        let reference = oneshot(&enc, &iv, &data, &[], &[], 0).unwrap().0;
        let ct = cipher_split(&enc, &iv, &data, &src_cuts, &dst_cuts, in_place);
        prop_assert_eq!(&ct, &reference);
        let pt = cipher_split(&dec, &iv, &ct, &dst_cuts, &src_cuts, !in_place);
        prop_assert_eq!(pt, data);
    }

    #[test]
    fn aead_round_trip_and_tamper(
        (alg, klen) in aead_alg(),
        key in prop::collection::vec(any::<u8>(), 32),
        nonce in prop::array::uniform12(any::<u8>()),
        data in prop::collection::vec(any::<u8>(), 0..200),
        aad in prop::collection::vec(any::<u8>(), 0..40),
        src_cuts in prop::collection::vec(0usize..200, 0..5),
        dst_cuts in prop::collection::vec(0usize..200, 0..5),
        aad_cuts in prop::collection::vec(0usize..40, 0..3),
        tag_cut in 0usize..16,
        in_place in any::<bool>(),
        flip in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let key = &key[..klen];
        let mk = |dir| session(SessionParams::Aead { alg, key, tag_len: 0, dir });
        let (enc, dec) = (mk(Direction::Encrypt), mk(Direction::Decrypt));
        let (reference, ref_tag) = oneshot(&enc, &nonce, &data, &aad, &[], 16).unwrap();

        // Encrypt, scattered.
        let mut ct = data.clone();
        let mut tag = [0u8; 16];
        {
            let mut out = vec![0u8; data.len()];
            let aad_s = split(&aad, &aad_cuts);
            let tag_s = split_mut(&mut tag, &[tag_cut]);
            if in_place {
                let segs = split_mut(&mut ct, &src_cuts);
                run(&enc, &nonce, &segs, &segs, &aad_s, &tag_s, ChainRanges::default()).unwrap();
            } else {
                let src = split(&data, &src_cuts);
                let dst = split_mut(&mut out, &dst_cuts);
                run(&enc, &nonce, &src, &dst, &aad_s, &tag_s, ChainRanges::default()).unwrap();
                drop(dst);
                ct = out;
            }
        }
        prop_assert_eq!(&ct, &reference);
        prop_assert_eq!(&tag[..], &ref_tag[..]);

        // Decrypt, scattered the other way.
        let decrypt = |ct: &[u8], tag: &[u8], aad: &[u8]| -> (Result<(), CryptoError>, Vec<u8>) {
            let aad_s = split(aad, &aad_cuts);
            let tag_s = split(tag, &[tag_cut]);
            if in_place {
                let mut buf = ct.to_vec();
                let segs = split_mut(&mut buf, &dst_cuts);
                let r = run(&dec, &nonce, &segs, &segs, &aad_s, &tag_s, ChainRanges::default());
                drop(segs);
                (r, buf)
            } else {
                let mut out = vec![0xeeu8; ct.len()];
                let src = split(ct, &dst_cuts);
                let dst = split_mut(&mut out, &src_cuts);
                let r = run(&dec, &nonce, &src, &dst, &aad_s, &tag_s, ChainRanges::default());
                drop(dst);
                (r, out)
            }
        };
        let (r, pt) = decrypt(&ct, &tag, &aad);
        prop_assert_eq!(r, Ok(()));
        prop_assert_eq!(&pt, &data);

        // Flip one bit of ciphertext, tag or AAD.
        let mut all = [ct.clone(), tag.to_vec(), aad.clone()].concat();
        let i = flip.index(all.len());
        all[i] ^= 1 << bit;
        let (c2, rest) = all.split_at(ct.len());
        let (t2, a2) = rest.split_at(16);
        let (r, out) = decrypt(c2, t2, a2);
        prop_assert_eq!(r, Err(CryptoError::AuthFailed));
        // Nothing released: dst untouched (ciphertext in place / fill pattern) or zeroed.
        let untouched = if in_place { c2.to_vec() } else { vec![0xee; ct.len()] };
        prop_assert!(out == untouched || out.iter().all(|&b| b == 0), "plaintext released");
        prop_assert!(data.is_empty() || out != data);
    }

    #[test]
    fn chain_result_independent_of_segmentation(
        key in prop::collection::vec(any::<u8>(), 16),
        akey in prop::collection::vec(any::<u8>(), 0..150),
        iv in prop::array::uniform16(any::<u8>()),
        blocks in 0usize..8,
        hdr in 0usize..24,
        cuts in prop::collection::vec(0usize..200, 0..5),
        in_place in any::<bool>(),
    ) {
        let total = hdr + blocks * 16 + 12;
        let data: Vec<u8> = (0..total).map(|i| (i * 7) as u8).collect();
        let ranges = ChainRanges {
            cipher_offset: hdr as u32,
            cipher_len: (blocks * 16) as u32,
            auth_offset: 0,
            auth_len: (hdr + blocks * 16) as u32,
        };
        let mk = |order, dir| session(SessionParams::Chain {
            order, cipher: CipherAlg::AesCbc, cipher_key: &key, dir,
            auth: ChainAuth::Mac(MacAlg::Hmac(HashAlg::Sha1)), auth_key: &akey, digest_len: 12,
        });
        let enc = mk(ChainOrder::CipherThenHash, Direction::Encrypt);
        let dec = mk(ChainOrder::HashThenCipher, Direction::Decrypt);
        let go = |s: &dpacc_spec::SessionHandle, input: &[u8], cuts: &[usize], in_place: bool| {
            let mut icv = [0u8; 12];
            let mut out = vec![0u8; input.len()];
            let dig = [Seg::from_mut(&mut icv)];
            if in_place {
                out.copy_from_slice(input);
                let segs = split_mut(&mut out, cuts);
                run(s, &iv, &segs, &segs, &[], &dig, ranges).unwrap();
            } else {
                let src = split(input, cuts);
                let dst = split_mut(&mut out, &[]);
                run(s, &iv, &src, &dst, &[], &dig, ranges).unwrap();
            }
            (out, icv)
        };
        let (ct_ref, icv_ref) = go(&enc, &data, &[], false);
        let (ct, icv) = go(&enc, &data, &cuts, in_place);
        prop_assert_eq!(&ct, &ct_ref);
        prop_assert_eq!(icv, icv_ref);
        let (pt, icv2) = go(&dec, &ct, &cuts, !in_place);
        prop_assert_eq!(pt, data);
        prop_assert_eq!(icv2, icv);
    }
}
