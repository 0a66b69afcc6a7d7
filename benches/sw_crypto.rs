//! Software driver throughput: AES-256-GCM and AES-128-CBC encrypt through `SwDriver` and its
//! queue, 32 operations enqueued per batch, at 64 B, 1 KiB and 16 KiB.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dpacc_spec::{
    AeadAlg, ChainRanges, CipherAlg, Completion, CryptoDriver, CryptoOp, Direction, Iv, Seg,
    SessionParams,
};
use dpacc_sw::SwDriver;

const BATCH: usize = 32;
const SIZES: [usize; 3] = [64, 1024, 16 * 1024];

fn bench_alg(c: &mut Criterion, name: &str, params: SessionParams<'_>, iv: &[u8], tag: bool) {
    let drv = SwDriver::new();
    let session = drv.create_session(&params).expect("session");
    let mut queue = drv.open_queue(BATCH).expect("queue");
    let iv = Iv::new(iv).expect("iv");
    let mut group = c.benchmark_group(name);
    for size in SIZES {
        let mut bufs = vec![vec![0x5au8; size]; BATCH];
        let mut tags = vec![[0u8; 16]; BATCH];
        let data: Vec<[Seg<'_>; 1]> = bufs.iter_mut().map(|b| [Seg::from_mut(b)]).collect();
        let digs: Vec<[Seg<'_>; 1]> = tags.iter_mut().map(|t| [Seg::from_mut(t)]).collect();
        let ops: Vec<CryptoOp<'_>> = data
            .iter()
            .zip(&digs)
            .enumerate()
            .map(|(i, (d, t))| CryptoOp {
                session: &session,
                iv,
                src: d,
                dst: d,
                aad: &[],
                digest: if tag { t } else { &[] },
                chain: ChainRanges::default(),
                user_data: i as u64,
            })
            .collect();
        let mut done = [Completion::default(); BATCH];
        group.throughput(Throughput::Bytes((size * BATCH) as u64));
        group.bench_function(BenchmarkId::from_parameter(size), |b| {
            b.iter(|| {
                // SAFETY: every segment borrows `bufs`/`tags`, which outlive the completions,
                // all dequeued before this closure returns.
                let n = unsafe { queue.enqueue(black_box(&ops)) };
                assert_eq!(n, BATCH);
                assert_eq!(queue.dequeue(&mut done), BATCH);
                assert!(done.iter().all(|c| c.result.is_ok()));
            })
        });
    }
    group.finish();
}

fn sw_crypto(c: &mut Criterion) {
    let key256 = [0x11u8; 32];
    let key128 = [0x22u8; 16];
    bench_alg(
        c,
        "sw/aes256gcm_encrypt",
        SessionParams::Aead {
            alg: AeadAlg::AesGcm,
            key: &key256,
            tag_len: 0,
            dir: Direction::Encrypt,
        },
        &[3u8; 12],
        true,
    );
    bench_alg(
        c,
        "sw/aes128cbc_encrypt",
        SessionParams::Cipher {
            alg: CipherAlg::AesCbc,
            key: &key128,
            dir: Direction::Encrypt,
        },
        &[4u8; 16],
        false,
    );
}

criterion_group!(benches, sw_crypto);
criterion_main!(benches);
