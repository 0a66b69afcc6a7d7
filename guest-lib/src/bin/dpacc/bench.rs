//! `dpacc bench`: throughput through the backend (async batch API, one thread per queue) and
//! through the software driver called in-process, with the same algorithm, size and batch.

use std::time::{Duration, Instant};

use clap::ValueEnum;
use dpacc_guest::{CompletionMode, CryptoDevice, Op, OpBufs, Options, Session, SessionControl};
use dpacc_spec::{
    Completion, CryptoDriver, CryptoOp, Direction, Iv, MacAlg, Seg, SessionHandle, SessionParams,
};

use crate::{usage, Alg, AlgKind, CliError, DigestAlg};

/// Parsed `bench` arguments.
pub struct Args {
    /// `vhost-user:PATH` or `pci:BDF`.
    pub device: String,
    pub sessions: SessionControl,
    pub alg: String,
    pub size: usize,
    pub batch: usize,
    pub queues: u16,
    pub seconds: f64,
    pub poll: bool,
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Cipher,
    Aead,
    Digest(usize),
}

const KEY: [u8; 64] = [0x42; 64];
/// Batches each bench thread keeps in flight: the next batch is submitted before the previous
/// one completes, so the device always has work queued while the thread reaps completions.
const IN_FLIGHT_BATCHES: usize = 4;

fn params(alg: &str, size: usize) -> Result<(SessionParams<'static>, Kind), CliError> {
    if let Ok(a) = Alg::from_str(alg, true) {
        return Ok(match a.kind() {
            AlgKind::Cipher(c, klen) => {
                if c == dpacc_spec::CipherAlg::AesCbc && size % 16 != 0 {
                    return Err(usage("--size must be a multiple of 16 for CBC"));
                }
                (
                    SessionParams::Cipher {
                        alg: c,
                        key: &KEY[..klen],
                        dir: Direction::Encrypt,
                    },
                    Kind::Cipher,
                )
            }
            AlgKind::Aead(x, klen) => (
                SessionParams::Aead {
                    alg: x,
                    key: &KEY[..klen],
                    tag_len: 0,
                    dir: Direction::Encrypt,
                },
                Kind::Aead,
            ),
        });
    }
    if let Ok(d) = DigestAlg::from_str(alg, true) {
        let (h, hmac) = d.parts();
        return Ok(if hmac {
            (
                SessionParams::Mac {
                    alg: MacAlg::Hmac(h),
                    key: &KEY[..32],
                    digest_len: 0,
                },
                Kind::Digest(h.digest_len()),
            )
        } else {
            (
                SessionParams::Hash {
                    alg: h,
                    digest_len: 0,
                },
                Kind::Digest(h.digest_len()),
            )
        });
    }
    Err(usage(format!(
        "--alg {alg}: not a cipher, AEAD, hash or HMAC name (e.g. aes-128-cbc, aes-256-gcm, sha256, hmac-sha256)"
    )))
}

fn iv_len(kind: Kind) -> usize {
    match kind {
        Kind::Cipher => 16,
        Kind::Aead => 12,
        Kind::Digest(_) => 0,
    }
}

struct Stats {
    ops: u64,
    secs: f64,
}

impl Stats {
    fn print(&self, who: &str, size: usize) {
        let ops = self.ops as f64 / self.secs;
        println!(
            "{who:9} {:>10} ops in {:.2} s: {:>12.0} ops/s {:>10.1} MB/s",
            self.ops,
            self.secs,
            ops,
            ops * size as f64 / 1e6
        );
    }
}

pub fn run(a: Args) -> Result<(), CliError> {
    if a.size == 0 || a.batch == 0 || a.queues == 0 || a.seconds.is_nan() || a.seconds <= 0.0 {
        return Err(usage(
            "--size, --batch, --queues and --seconds must be positive",
        ));
    }
    let (p, kind) = params(&a.alg, a.size)?;
    let dur = Duration::from_secs_f64(a.seconds);
    // `IN_FLIGHT_BATCHES` batches in flight per queue (see `device_thread`); the ring holds them.
    let depth = a
        .batch
        .checked_mul(IN_FLIGHT_BATCHES)
        .ok_or(usage("--batch too large"))?;
    let qsize = depth.next_power_of_two().clamp(64, 4096) as u16;
    let per_op = 2 * a.size + 256;
    let opts = Options {
        queues: Some(a.queues),
        queue_size: qsize,
        completion: if a.poll {
            CompletionMode::Poll
        } else {
            CompletionMode::Interrupt
        },
        arena_size: per_op * depth * a.queues as usize + (1 << 20),
        session_control: a.sessions,
        ..Options::default()
    };
    let dev = crate::open(&a.device, opts)?;
    let session = dev.create_session(&p)?;
    println!(
        "alg {} size {} batch {} queues {} ({} completions{})",
        a.alg,
        a.size,
        a.batch,
        a.queues,
        if a.poll { "polled" } else { "by interrupt" },
        if dev.uses_indirect() {
            ", indirect descriptors"
        } else {
            ""
        },
    );
    if dev.uses_in_band_sessions() {
        println!("sessions in-band on a data queue (the device is a VMM's model)");
    }
    let results: Vec<Result<Stats, CliError>> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..a.queues)
            .map(|i| {
                let (dev, session) = (&dev, &session);
                sc.spawn(move || device_thread(dev, session, i, kind, a.size, a.batch, dur))
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or(Err(CliError::Panicked("bench thread"))))
            .collect()
    });
    let mut dev_stats = Stats { ops: 0, secs: 0.0 };
    for r in results {
        let s = r?;
        dev_stats.ops += s.ops;
        dev_stats.secs = dev_stats.secs.max(s.secs);
    }
    dev_stats.print("device", a.size);
    drop(session);

    match software(&p, kind, a.size, a.batch, a.queues, dur)? {
        Some(sw) => {
            sw.print("software", a.size);
            let r = (dev_stats.ops as f64 / dev_stats.secs) / (sw.ops as f64 / sw.secs);
            println!("ratio     device/software = {r:.3}");
        }
        None => println!("software  driver not available in this build"),
    }
    Ok(())
}

fn make_op(s: &Session, kind: Kind, iv: &[u8], b: OpBufs, ud: u64) -> Op {
    let op = match kind {
        Kind::Cipher | Kind::Aead => {
            let (src, dst) = (b.src.expect("src"), b.dst.expect("dst"));
            if matches!(kind, Kind::Cipher) {
                Op::cipher(s, iv, src, dst)
            } else {
                Op::aead(s, iv, None, src, dst)
            }
        }
        Kind::Digest(_) => Op::digest(s, b.src.expect("src"), b.digest.expect("digest")),
    };
    op.with_user_data(ud)
}

fn device_thread(
    dev: &CryptoDevice,
    s: &Session,
    qi: u16,
    kind: Kind,
    size: usize,
    batch: usize,
    dur: Duration,
) -> Result<Stats, CliError> {
    let mut q = dev.queue(qi)?;
    let iv = vec![7u8; iv_len(kind)];
    // Buffers for `IN_FLIGHT_BATCHES` batches (capped by what the ring can hold).
    let depth = (batch * IN_FLIGHT_BATCHES).min(q.free_slots()).max(1);
    let mut free: Vec<OpBufs> = Vec::with_capacity(depth);
    for _ in 0..depth {
        let mut b = OpBufs {
            src: Some(dev.alloc(size)?),
            ..OpBufs::default()
        };
        match kind {
            Kind::Cipher => b.dst = Some(dev.alloc(size)?),
            Kind::Aead => b.dst = Some(dev.alloc(size + 16)?),
            Kind::Digest(n) => b.digest = Some(dev.alloc(n)?),
        }
        free.push(b);
    }
    // A batch is submitted as soon as a whole batch of buffers is free (or, when the ring is
    // smaller than a batch, whatever is free): pipelined, never ping-pong.
    let chunk = batch.min(depth);
    let mut out = Vec::with_capacity(depth);
    let mut ops = 0u64;
    let start = Instant::now();
    let mut running = true;
    while running || q.in_flight() > 0 {
        if running {
            let mut full = false;
            while !full && free.len() >= chunk {
                for _ in 0..chunk {
                    let Some(b) = free.pop() else { break };
                    if let Err(r) = q.push(make_op(s, kind, &iv, b, 0)) {
                        if !matches!(r.error, dpacc_guest::Error::QueueFull) {
                            return Err(r.error.into());
                        }
                        free.push(r.op.into_bufs());
                        full = true;
                        break;
                    }
                }
                q.flush()?;
            }
        }
        out.clear();
        // Wake up once a batch's worth has completed (the rest of the ring keeps the device
        // busy meanwhile), not on every completion.
        q.wait_for(&mut out, chunk)?;
        for c in out.drain(..) {
            c.result?;
            ops += 1;
            free.push(c.bufs);
        }
        if running && start.elapsed() >= dur {
            running = false;
        }
    }
    Ok(Stats {
        ops,
        secs: start.elapsed().as_secs_f64(),
    })
}

/// Operations per second of the in-process software driver for AES-128-GCM encryption of
/// `size` bytes, batched by `batch`, on one thread (the raw figure ESP encapsulation is
/// compared with).
pub fn software_gcm128(size: usize, batch: usize, dur: Duration) -> Result<f64, CliError> {
    let p = SessionParams::Aead {
        alg: dpacc_spec::AeadAlg::AesGcm,
        key: &KEY[..16],
        tag_len: 0,
        dir: Direction::Encrypt,
    };
    Ok(software(&p, Kind::Aead, size, batch, 1, dur)?
        .map(|s| s.ops as f64 / s.secs)
        .unwrap_or(0.0))
}

/// The in-process software baseline: `dpacc_sw::SwDriver` through the driver traits, batched
/// like the device run. The one place that names the software driver.
fn software(
    p: &SessionParams<'_>,
    kind: Kind,
    size: usize,
    batch: usize,
    threads: u16,
    dur: Duration,
) -> Result<Option<Stats>, CliError> {
    let drv = dpacc_sw::SwDriver::new();
    let handle = drv.create_session(p).map_err(CliError::from)?;
    let results: Vec<Result<Stats, CliError>> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..threads)
            .map(|_| {
                let (drv, handle) = (&drv, &handle);
                sc.spawn(move || sw_thread(drv, handle, kind, size, batch, dur))
            })
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or(Err(CliError::Panicked("software bench thread")))
            })
            .collect()
    });
    let mut total = Stats { ops: 0, secs: 0.0 };
    for r in results {
        let s = r?;
        total.ops += s.ops;
        total.secs = total.secs.max(s.secs);
    }
    Ok(Some(total))
}

fn sw_thread(
    drv: &dyn CryptoDriver,
    session: &SessionHandle,
    kind: Kind,
    size: usize,
    batch: usize,
    dur: Duration,
) -> Result<Stats, CliError> {
    let sw_err = CliError::from;
    let mut queue = drv.open_queue(batch).map_err(sw_err)?;
    let srcs: Vec<Vec<u8>> = (0..batch).map(|_| vec![0x5a; size]).collect();
    let mut dsts: Vec<Vec<u8>> = (0..batch).map(|_| vec![0; size]).collect();
    let dlen = match kind {
        Kind::Cipher => 0,
        Kind::Aead => 16,
        Kind::Digest(n) => n,
    };
    let mut digs: Vec<Vec<u8>> = (0..batch).map(|_| vec![0; dlen]).collect();
    let src_segs: Vec<[Seg<'_>; 1]> = srcs.iter().map(|s| [Seg::from_ref(s)]).collect();
    let dst_segs: Vec<[Seg<'_>; 1]> = dsts.iter_mut().map(|d| [Seg::from_mut(d)]).collect();
    let dig_segs: Vec<[Seg<'_>; 1]> = digs.iter_mut().map(|d| [Seg::from_mut(d)]).collect();
    let iv = Iv::new(&vec![7u8; iv_len(kind)]).map_err(sw_err)?;
    let ops: Vec<CryptoOp<'_>> = (0..batch)
        .map(|i| CryptoOp {
            session,
            iv,
            src: &src_segs[i],
            dst: if matches!(kind, Kind::Digest(_)) {
                &[]
            } else {
                &dst_segs[i]
            },
            aad: &[],
            digest: if matches!(kind, Kind::Cipher) {
                &[]
            } else {
                &dig_segs[i]
            },
            chain: Default::default(),
            user_data: i as u64,
        })
        .collect();
    let mut done = vec![Completion::default(); batch];
    let mut n = 0u64;
    let start = Instant::now();
    while start.elapsed() < dur {
        // SAFETY: every segment points into `srcs`/`dsts`/`digs`, which outlive this loop and
        // are not touched while operations are in flight; we dequeue everything before the
        // next enqueue reuses them.
        let taken = unsafe { queue.enqueue(&ops) };
        let mut got = 0;
        while got < taken {
            let k = queue.dequeue(&mut done);
            for c in &done[..k] {
                c.result.map_err(sw_err)?;
            }
            got += k;
        }
        n += taken as u64;
        if taken == 0 {
            return Err(CliError::SoftwareQueueRefused);
        }
    }
    Ok(Stats {
        ops: n,
        secs: start.elapsed().as_secs_f64(),
    })
}
