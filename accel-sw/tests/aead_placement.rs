//! The AEADs with every placement of source and destination the driver distinguishes — out of
//! place (one segment each, disjoint: AWS-LC reads `src` and writes `dst` in one pass), in
//! place (the same memory), overlapping by a few bytes (a hostile guest's layout), scattered
//! (the bounce buffer), a scattered source into one destination — against Python's
//! `cryptography` package (OpenSSL) as the independent implementation, both directions, and
//! with forged tags, ciphertexts and AADs.
//!
//! Needs python3 with `cryptography` (CI installs it via .ci/install-deps.sh); without it the
//! test is skipped, and with CI=true it fails instead.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;
use dpacc_spec::{AeadAlg, ChainRanges, CryptoError, Direction, Seg, SessionHandle, SessionParams};

const SCRIPT: &str = r#"
import sys
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
for line in sys.stdin:
    alg, key, nonce, aad, pt = (bytes.fromhex(x) if i else x for i, x in enumerate(line.split(",")))
    a = AESGCM(key) if alg == "gcm" else ChaCha20Poly1305(key)
    print(a.encrypt(nonce, pt, aad).hex())
"#;

/// One case: algorithm, key, nonce, AAD, plaintext.
struct Case {
    alg: AeadAlg,
    key: Vec<u8>,
    nonce: Vec<u8>,
    aad: Vec<u8>,
    pt: Vec<u8>,
}

/// A small deterministic generator (xorshift), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn cases() -> Vec<Case> {
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    let mut out = Vec::new();
    for (alg, klen) in [
        (AeadAlg::AesGcm, 16),
        (AeadAlg::AesGcm, 32),
        (AeadAlg::ChaCha20Poly1305, 32),
    ] {
        for len in [0usize, 1, 15, 16, 17, 64, 255, 1024, 4099, 16 * 1024 + 3] {
            let aad_len = [0usize, 8, 12, 20][len % 4];
            out.push(Case {
                alg,
                key: r.bytes(klen),
                nonce: r.bytes(12),
                aad: r.bytes(aad_len),
                pt: r.bytes(len),
            });
        }
    }
    out
}

/// Ciphertext ‖ tag of every case from Python's `cryptography`, or None (skipped).
fn reference(cases: &[Case]) -> Option<Vec<Vec<u8>>> {
    let ok = Command::new("python3")
        .args(["-c", "import cryptography.hazmat.primitives.ciphers.aead"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        let msg = "SKIPPED: python3 with cryptography not found (pip install cryptography)";
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{msg} (CI=true: failure)"
        );
        eprintln!("{msg}");
        return None;
    }
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut input = String::new();
    for c in cases {
        let alg = match c.alg {
            AeadAlg::AesGcm => "gcm",
            AeadAlg::ChaCha20Poly1305 => "chacha",
        };
        input.push_str(&format!(
            "{alg},{},{},{},{}\n",
            hex::encode(&c.key),
            hex::encode(&c.nonce),
            hex::encode(&c.aad),
            hex::encode(&c.pt)
        ));
    }
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Vec<u8>> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| hex::decode(l.trim()).unwrap())
        .collect();
    assert_eq!(lines.len(), cases.len());
    Some(lines)
}

fn sessions(c: &Case) -> (SessionHandle, SessionHandle) {
    let p = |dir| SessionParams::Aead {
        alg: c.alg,
        key: &c.key,
        tag_len: 16,
        dir,
    };
    (
        session(p(Direction::Encrypt)),
        session(p(Direction::Decrypt)),
    )
}

/// Where `src` and `dst` lie.
#[derive(Clone, Copy, Debug)]
enum Placement {
    /// Two disjoint buffers, one segment each.
    OutOfPlace,
    /// One buffer, both.
    InPlace,
    /// `dst` starts 5 bytes after `src` in one buffer (a partial overlap).
    Overlap,
    /// Both split into several segments.
    Scattered,
    /// `src` split into several segments, `dst` one segment.
    ScatteredSrc,
}

const PLACEMENTS: [Placement; 5] = [
    Placement::OutOfPlace,
    Placement::InPlace,
    Placement::Overlap,
    Placement::Scattered,
    Placement::ScatteredSrc,
];

/// Runs `s` over `input` placed as `how`, with `aad` and a 16-byte `digest` buffer (the tag
/// in on decrypt, out on encrypt); returns (output, digest buffer after).
fn run_placed(
    s: &SessionHandle,
    nonce: &[u8],
    how: Placement,
    input: &[u8],
    aad: &[u8],
    tag: [u8; 16],
) -> (Result<(), CryptoError>, Vec<u8>, [u8; 16]) {
    let n = input.len();
    let mut digest = tag;
    let aad_s = split(aad, &[3]);
    let cuts = [1, n / 3, n / 2 + 1];
    let (result, out) = match how {
        Placement::OutOfPlace | Placement::Scattered | Placement::ScatteredSrc => {
            let mut out = vec![0xa5u8; n];
            let src = match how {
                Placement::OutOfPlace => vec![Seg::from_ref(input)],
                _ => split(input, &cuts),
            };
            let dst = match how {
                Placement::Scattered => split_mut(&mut out, &[2, n / 4, n.saturating_sub(1)]),
                _ => vec![Seg::from_mut(&mut out)],
            };
            let dig = [Seg::from_mut(&mut digest)];
            let r = run(s, nonce, &src, &dst, &aad_s, &dig, ChainRanges::default());
            (r, out)
        }
        Placement::InPlace | Placement::Overlap => {
            let shift = if matches!(how, Placement::Overlap) {
                5
            } else {
                0
            };
            let mut buf = vec![0u8; n + shift];
            buf[..n].copy_from_slice(input);
            let base = buf.as_mut_ptr();
            // SAFETY: both segments lie inside `buf`, which outlives the operation; the driver
            // is allowed to see them overlap (in place exactly, or partially as a hostile guest
            // may send).
            let (src, dst) = unsafe {
                (
                    [Seg::from_raw(base, n)],
                    [Seg::from_raw(base.add(shift), n)],
                )
            };
            let dig = [Seg::from_mut(&mut digest)];
            let r = run(s, nonce, &src, &dst, &aad_s, &dig, ChainRanges::default());
            (r, buf[shift..].to_vec())
        }
    };
    (result, out, digest)
}

#[test]
fn aeads_match_python_cryptography_in_every_placement() {
    let cases = cases();
    let Some(want) = reference(&cases) else {
        return;
    };
    for (c, want) in cases.iter().zip(&want) {
        let (enc, dec) = sessions(c);
        let n = c.pt.len();
        let (ct, tag) = want.split_at(n);
        let tag: [u8; 16] = tag.try_into().unwrap();
        for how in PLACEMENTS {
            let what = format!("{:?} {} B {how:?}", c.alg, n);
            let (r, out, t) = run_placed(&enc, &c.nonce, how, &c.pt, &c.aad, [0; 16]);
            assert_eq!(r, Ok(()), "encrypt {what}");
            assert_eq!(out, ct, "ciphertext {what}");
            assert_eq!(t, tag, "tag {what}");
            let (r, out, _) = run_placed(&dec, &c.nonce, how, ct, &c.aad, tag);
            assert_eq!(r, Ok(()), "decrypt {what}");
            assert_eq!(out, c.pt, "plaintext {what}");
        }
    }
}

#[test]
fn forged_tags_ciphertexts_and_aads_release_no_plaintext() {
    let cases = cases();
    let Some(want) = reference(&cases) else {
        return;
    };
    for (c, want) in cases.iter().zip(&want) {
        let (_, dec) = sessions(c);
        let n = c.pt.len();
        let (ct, tag) = want.split_at(n);
        let tag: [u8; 16] = tag.try_into().unwrap();
        let mut bad_tag = tag;
        bad_tag[15] ^= 0x80;
        let mut bad_ct = ct.to_vec();
        if let Some(b) = bad_ct.get_mut(n / 2) {
            *b ^= 1;
        }
        let mut bad_aad = c.aad.clone();
        bad_aad.push(0);
        let forgeries: [(&[u8], &[u8], [u8; 16]); 3] = [
            (ct, &c.aad, bad_tag),
            (&bad_ct, &c.aad, if n > 0 { tag } else { bad_tag }),
            (ct, &bad_aad, tag),
        ];
        for (input, aad, t) in forgeries {
            for how in PLACEMENTS {
                let what = format!("{:?} {} B {how:?}", c.alg, n);
                let (r, out, _) = run_placed(&dec, &c.nonce, how, input, aad, t);
                assert_eq!(r, Err(CryptoError::AuthFailed), "{what}");
                // Nothing of the plaintext is left in the destination: it is wiped (zeros)
                // where the library wrote into it, or untouched (the bounce buffer was used).
                let untouched = match how {
                    Placement::OutOfPlace | Placement::Scattered | Placement::ScatteredSrc => {
                        out.iter().all(|&b| b == 0xa5)
                    }
                    _ => false,
                };
                assert!(
                    out.iter().all(|&b| b == 0) || untouched,
                    "plaintext released: {what}"
                );
                if n >= 16 {
                    assert_ne!(out, c.pt, "{what}");
                }
            }
        }
    }
}
