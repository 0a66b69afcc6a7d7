//! The whole look-aside path — guest library → virtqueue in shared memory → backend worker →
//! software driver → back — against the same driver called in-process, for AES-256-GCM encrypt
//! at 64 B, 1 KiB and 16 KiB, 32 operations per batch with two batches in flight.
//!
//! The backend runs in this process on its own thread (one backend core), the client on the
//! bench thread. `dpacc bench` prints the same comparison as a single figure per run.

use std::os::unix::net::UnixListener;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dpacc::backend::{serve, CryptoBackendConfig};
use dpacc::guest::{CompletionMode, CryptoDevice, Op, Options};
use dpacc::spec::{
    AeadAlg, ChainRanges, Completion, CryptoDriver, CryptoOp, Direction, Iv, Seg, SessionParams,
};
use dpacc::sw::SwDriver;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const BATCH: usize = 32;
const SIZES: [usize; 3] = [64, 1024, 16 * 1024];
const KEY: [u8; 32] = [0x11; 32];
const NONCE: [u8; 12] = [3; 12];

fn params() -> SessionParams<'static> {
    SessionParams::Aead {
        alg: AeadAlg::AesGcm,
        key: &KEY,
        tag_len: 0,
        dir: Direction::Encrypt,
    }
}

fn start_backend() -> (std::path::PathBuf, Arc<EventFd>) {
    let path = std::env::temp_dir().join(format!("dpacc-bench-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).expect("bind");
    let stop = Arc::new(EventFd::new(EFD_NONBLOCK).expect("eventfd"));
    let s = stop.clone();
    std::thread::spawn(move || {
        let config = CryptoBackendConfig {
            queues: 1,
            queue_size: 1024,
            max_sessions: 16,
            driver: Arc::new(SwDriver::new()),
            busy_poll: std::time::Duration::from_micros(50),
        };
        serve(&listener, config, &s).expect("serve");
    });
    (path, stop)
}

fn through_backend(c: &mut Criterion, mode: CompletionMode, name: &str) {
    let (path, stop) = start_backend();
    let dev = CryptoDevice::connect(
        &path,
        Options {
            completion: mode,
            queue_size: 256,
            arena_size: 64 << 20,
            timeout: Duration::from_secs(10),
            ..Options::default()
        },
    )
    .expect("connect");
    let session = dev.create_session(&params()).expect("session");
    let mut q = dev.queue(0).expect("queue");
    let mut group = c.benchmark_group(name);
    for size in SIZES {
        // Two batches' worth of buffers, recycled from completions: no allocation per op.
        let mut free: Vec<Op> = (0..2 * BATCH)
            .map(|_| {
                let src = dev.alloc(size).expect("alloc");
                let dst = dev.alloc(size + 16).expect("alloc");
                Op::aead(&session, &NONCE, None, src, dst)
            })
            .collect();
        let mut done = Vec::with_capacity(2 * BATCH);
        group.throughput(Throughput::Bytes((size * BATCH) as u64));
        group.bench_function(BenchmarkId::from_parameter(size), |b| {
            b.iter(|| {
                // Keep the ring fed: submit a batch, then reap whatever is finished so the
                // backend always has the next batch waiting.
                for op in free.drain(..BATCH.min(free.len())) {
                    q.push(op).map_err(|r| r.error).expect("push");
                }
                q.flush().expect("flush");
                let target = q.in_flight().saturating_sub(BATCH);
                while q.in_flight() > target {
                    q.wait(&mut done).expect("wait");
                }
                for c in done.drain(..) {
                    c.result.expect("op");
                    let bufs = c.bufs;
                    free.push(Op::aead(
                        &session,
                        &NONCE,
                        None,
                        bufs.src.expect("src"),
                        bufs.dst.expect("dst"),
                    ));
                }
            })
        });
        while q.in_flight() > 0 {
            q.wait(&mut done).expect("drain");
        }
        done.clear();
    }
    group.finish();
    drop(q);
    drop(session);
    drop(dev);
    let _ = stop.write(1);
}

fn raw_driver(c: &mut Criterion) {
    let drv = SwDriver::new();
    let session = drv.create_session(&params()).expect("session");
    let mut queue = drv.open_queue(BATCH).expect("queue");
    let iv = Iv::new(&NONCE).expect("iv");
    let mut group = c.benchmark_group("path/raw_driver_aes256gcm");
    for size in SIZES {
        let src = vec![0x5au8; size];
        let mut dst = vec![vec![0u8; size]; BATCH];
        let mut tags = vec![[0u8; 16]; BATCH];
        let s = [Seg::from_ref(&src)];
        let d: Vec<[Seg<'_>; 1]> = dst.iter_mut().map(|b| [Seg::from_mut(b)]).collect();
        let t: Vec<[Seg<'_>; 1]> = tags.iter_mut().map(|b| [Seg::from_mut(b)]).collect();
        let ops: Vec<CryptoOp<'_>> = (0..BATCH)
            .map(|i| CryptoOp {
                session: &session,
                iv,
                src: &s,
                dst: &d[i],
                aad: &[],
                digest: &t[i],
                chain: ChainRanges::default(),
                user_data: i as u64,
            })
            .collect();
        let mut out = [Completion::default(); BATCH];
        group.throughput(Throughput::Bytes((size * BATCH) as u64));
        group.bench_function(BenchmarkId::from_parameter(size), |b| {
            b.iter(|| {
                // SAFETY: the segments borrow `src`, `dst` and `tags`, which outlive every
                // completion, all dequeued before this closure returns.
                let n = unsafe { queue.enqueue(&ops) };
                assert_eq!(n, BATCH);
                assert_eq!(queue.dequeue(&mut out), BATCH);
            })
        });
    }
    group.finish();
}

fn crypto_path(c: &mut Criterion) {
    raw_driver(c);
    through_backend(c, CompletionMode::Poll, "path/backend_poll_aes256gcm");
    through_backend(c, CompletionMode::Interrupt, "path/backend_irq_aes256gcm");
}

criterion_group!(benches, crypto_path);
criterion_main!(benches);
