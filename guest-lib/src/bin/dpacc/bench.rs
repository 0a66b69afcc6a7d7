//! `dpacc bench`: operations per second through the backend (async batch API, one thread per
//! queue) beside the same driver called in-process (the *raw* figure: `dpacc_sw::SwDriver`
//! through the driver traits, with the same algorithm, size, batch, buffers and threads, run
//! just before and just after the device run and counted as one), for every case of a sweep
//! (sizes × completion modes × queue counts), each with its same-run ratio; or, with
//! `--latency`, the round trip of a single operation (p50/p99).

use std::time::{Duration, Instant};

use clap::ValueEnum;
use dpacc_guest::mem::SharedMemory;
use dpacc_guest::{
    CompletionMode, CryptoDevice, Hugepages, Op, OpBufs, Options, Session, SessionControl,
};
use dpacc_spec::{
    Completion, CryptoDriver, CryptoOp, Direction, Iv, MacAlg, Seg, SessionHandle, SessionParams,
};

use crate::{usage, Alg, AlgKind, CliError, DigestAlg};

/// How the bench notices completions (`--mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Sleep on the call eventfd (the device interrupts, throttled by EVENT_IDX).
    Interrupt,
    /// Busy-poll the used ring (the device is asked not to interrupt).
    Poll,
}

impl Mode {
    fn completion(self) -> CompletionMode {
        match self {
            Mode::Interrupt => CompletionMode::Interrupt,
            Mode::Poll => CompletionMode::Poll,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Mode::Interrupt => "interrupts",
            Mode::Poll => "polled",
        }
    }
}

/// Pages of the shared memory (`--hugepages`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Pages {
    /// 2 MiB hugepages when free, else 4 KiB pages.
    Auto,
    /// 2 MiB hugepages, or an error saying how to reserve them.
    On,
    /// 4 KiB pages.
    Off,
}

impl From<Pages> for Hugepages {
    fn from(p: Pages) -> Self {
        match p {
            Pages::Auto => Hugepages::Auto,
            Pages::On => Hugepages::On,
            Pages::Off => Hugepages::Off,
        }
    }
}

/// Parsed `bench` arguments.
pub struct Args {
    /// `vhost-user:PATH` or `pci:BDF`.
    pub device: String,
    pub sessions: SessionControl,
    pub alg: String,
    pub sizes: Vec<usize>,
    pub batch: usize,
    /// Operations in flight per queue (`None`: [`IN_FLIGHT_BATCHES`] batches).
    pub in_flight: Option<usize>,
    /// With interrupts: completions a thread waits for (`None`: half of `in_flight`).
    pub wake_after: Option<usize>,
    /// With interrupts: `Options::wait_poll` (`None`: the library's default).
    pub wait_poll: Option<Duration>,
    pub queues: Vec<u16>,
    pub seconds: f64,
    pub modes: Vec<Mode>,
    pub latency: bool,
    /// Pages of the shared memory (`Options::hugepages`).
    pub hugepages: Hugepages,
    /// The raw peer's buffers on 2 MiB hugepages too (default: its own heap, 4 KiB pages).
    pub raw_hugepages: bool,
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Cipher,
    Aead,
    Digest(usize),
}

const KEY: [u8; 64] = [0x42; 64];
/// Batches each bench thread keeps in flight by default: the next batch is submitted before the
/// previous one completes, so the device always has work queued while the thread reaps
/// completions.
const IN_FLIGHT_BATCHES: usize = 4;
/// Most round trips a latency run records (the run stops there or after `--seconds`).
const MAX_SAMPLES: usize = 1 << 21;

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

/// Bytes of output beside `dst` (tag or digest).
fn digest_len(kind: Kind) -> usize {
    match kind {
        Kind::Cipher => 0,
        Kind::Aead => 16,
        Kind::Digest(n) => n,
    }
}

struct Stats {
    ops: u64,
    secs: f64,
    /// CPU seconds the bench threads used (device runs only; 0 otherwise).
    cpu: f64,
}

impl Stats {
    fn rate(&self) -> f64 {
        self.ops as f64 / self.secs.max(1e-9)
    }

    /// Both runs as one: their operations over their time.
    fn and(&self, other: &Stats) -> Stats {
        Stats {
            ops: self.ops + other.ops,
            secs: self.secs + other.secs,
            cpu: self.cpu + other.cpu,
        }
    }

    fn print(&self, who: &str, size: usize, note: &str) {
        let ops = self.rate();
        println!(
            "{who:10} {:>10} ops in {:.2} s: {:>12.0} ops/s {:>10.1} MB/s{note}",
            self.ops,
            self.secs,
            ops,
            ops * size as f64 / 1e6
        );
    }
}

/// One throughput case of the sweep, for the summary.
struct Row {
    mode: Mode,
    queues: u16,
    size: usize,
    device: f64,
    raw: f64,
    /// Cores' worth of CPU the backend's data-queue workers used during the device run.
    backend_busy: Option<f64>,
    /// Cores' worth of CPU the bench's own threads used during the device run.
    client_cpu: f64,
}

pub fn run(a: Args) -> Result<(), CliError> {
    let positive = !a.sizes.is_empty()
        && a.sizes.iter().all(|&s| s > 0)
        && !a.queues.is_empty()
        && a.queues.iter().all(|&q| q > 0)
        && a.batch > 0
        && a.in_flight != Some(0)
        && a.wake_after != Some(0)
        && !a.modes.is_empty()
        && a.seconds.is_finite()
        && a.seconds > 0.0;
    if !positive {
        return Err(usage(
            "--size, --batch, --in-flight, --wake-after, --queues and --seconds must be positive",
        ));
    }
    let mut kind = Kind::Cipher;
    for &size in &a.sizes {
        kind = params(&a.alg, size)?.1;
    }
    let (p, _) = params(&a.alg, a.sizes[0])?;
    if a.latency {
        return latency(&a, &p, kind);
    }
    let depth = match a.in_flight {
        Some(d) => d,
        None => a
            .batch
            .checked_mul(IN_FLIGHT_BATCHES)
            .ok_or(usage("--batch too large"))?,
    };
    let dur = Duration::from_secs_f64(a.seconds);
    let max_size = a.sizes.iter().copied().max().unwrap_or(1);
    let mut rows = Vec::new();
    for &mode in &a.modes {
        for &queues in &a.queues {
            // The ring holds every operation in flight (one descriptor each when indirect).
            let qsize = depth.next_power_of_two().clamp(64, 4096) as u16;
            let per_op = 2 * max_size + 256;
            let opts = Options {
                queues: Some(queues),
                queue_size: qsize,
                completion: mode.completion(),
                arena_size: per_op
                    .saturating_mul(depth)
                    .saturating_mul(usize::from(queues))
                    .saturating_add(1 << 20),
                session_control: a.sessions,
                wait_poll: a.wait_poll.unwrap_or(Options::default().wait_poll),
                hugepages: a.hugepages,
                ..Options::default()
            };
            let dev = crate::open(&a.device, opts)?;
            let session = dev.create_session(&p)?;
            let extras = [
                (dev.uses_indirect(), "indirect descriptors"),
                (dev.uses_in_band_sessions(), "sessions in-band"),
                (dev.page_size() >= 2 << 20, "2 MiB pages"),
                (dev.page_size() < 2 << 20, "4 KiB pages"),
                (a.raw_hugepages, "raw peer on 2 MiB pages"),
            ];
            let extras: Vec<&str> = extras.iter().filter(|e| e.0).map(|e| e.1).collect();
            let wake = wake_after(mode, a.batch, depth, a.wake_after);
            for &size in &a.sizes {
                println!(
                    "case      {} {size} B, batch {}, {depth} in flight per queue, woken after {wake} completions, {queues} queue(s), {}{}",
                    a.alg,
                    a.batch,
                    mode.name(),
                    if extras.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", extras.join(", "))
                    }
                );
                // The raw peer runs just before and just after the device run, and the ratio is
                // taken against both together: the machine's speed drifts between runs of a few
                // seconds (the two raw runs of one case differed by up to 10 % on the 2-core
                // machine of docs/performance.md), so one raw run on one side moved the ratio.
                // The `before` line ends the first raw run: what runs between it and the
                // `device` line is the device run alone (benches/lookaside.sh measures the
                // client's CPU there).
                let raw_run =
                    || software(&p, kind, size, a.batch, depth, queues, dur, a.raw_hugepages);
                let raw_before = raw_run()?;
                println!(
                    "before    raw {:.0} ops/s (the software driver in-process, before the device run)",
                    raw_before.rate()
                );
                let before = backend_cpu(&dev, queues);
                let dev_stats = device_run(&dev, &session, kind, size, a.batch, depth, wake, dur)?;
                // No worker threads yet before the run (the backend starts them when the
                // queues start, which may still be under way): they had used nothing.
                let backend_busy = backend_cpu(&dev, queues)
                    .map(|e| (e - before.unwrap_or(0.0)) / dev_stats.secs.max(1e-9));
                dev_stats.print("device", size, "");
                let raw_after = raw_run()?;
                let raw = raw_before.and(&raw_after);
                raw.print(
                    "raw",
                    size,
                    &format!(
                        "  (the software driver in-process, {queues} thread(s), same buffers; {:.0} before and {:.0} ops/s after the device run)",
                        raw_before.rate(),
                        raw_after.rate()
                    ),
                );
                let ratio = dev_stats.rate() / raw.rate().max(1e-9);
                println!("ratio     device/raw = {ratio:.3} (same run)");
                if let Some(busy) = backend_busy {
                    println!(
                        "backend   data-queue workers busy {busy:.2} core(s): {:.0} ops/s per busy backend core",
                        dev_stats.rate() / busy.max(1e-9)
                    );
                }
                let client_cpu = dev_stats.cpu / dev_stats.secs.max(1e-9);
                println!(
                    "client    bench threads used {client_cpu:.2} core(s) during the device run"
                );
                rows.push(Row {
                    mode,
                    queues,
                    size,
                    device: dev_stats.rate(),
                    raw: raw.rate(),
                    backend_busy,
                    client_cpu,
                });
            }
        }
    }
    if !rows.is_empty() {
        println!("summary   {} (ratios are device/raw, same run)", a.alg);
        println!(
            "{:>10} {:>6} {:>7} {:>13} {:>13} {:>7} {:>12} {:>16} {:>10}",
            "mode",
            "queues",
            "size",
            "device ops/s",
            "raw ops/s",
            "ratio",
            "backend busy",
            "per backend core",
            "client cpu"
        );
        for r in &rows {
            let (busy, per_core) = match r.backend_busy {
                Some(b) => (format!("{b:.2}"), format!("{:.0}", r.device / b.max(1e-9))),
                None => ("-".into(), "-".into()),
            };
            println!(
                "{:>10} {:>6} {:>7} {:>13.0} {:>13.0} {:>7.3} {:>12} {:>16} {:>10.2}",
                r.mode.name(),
                r.queues,
                r.size,
                r.device,
                r.raw,
                r.device / r.raw.max(1e-9),
                busy,
                per_core,
                r.client_cpu
            );
        }
    }
    Ok(())
}

/// CPU seconds the backend's data-queue workers (threads `vq0`..) have used so far, when the
/// backend is a process on this host (virtio-user; not inside a VM).
fn backend_cpu(dev: &CryptoDevice, queues: u16) -> Option<f64> {
    let pid = dev.backend_pid()?;
    // SAFETY: sysconf has no memory effects.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if tck <= 0 {
        return None;
    }
    let mut ticks = 0u64;
    let mut seen = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let path = t.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let is_data_worker = comm
            .trim()
            .strip_prefix("vq")
            .and_then(|n| n.parse::<u16>().ok())
            .is_some_and(|n| n < queues);
        if !is_data_worker {
            continue;
        }
        let stat = std::fs::read_to_string(path.join("stat")).ok()?;
        // Fields after the command name (which may hold spaces): state is field 3, utime 14,
        // stime 15 (proc(5)).
        let rest = &stat[stat.rfind(')')? + 1..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        ticks += f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        seen += 1;
    }
    (seen > 0).then(|| ticks as f64 / tck as f64)
}

#[inline]
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

fn alloc_bufs(dev: &CryptoDevice, kind: Kind, size: usize) -> Result<OpBufs, CliError> {
    let mut b = OpBufs {
        src: Some(dev.alloc(size)?),
        ..OpBufs::default()
    };
    match kind {
        Kind::Cipher => b.dst = Some(dev.alloc(size)?),
        Kind::Aead => b.dst = Some(dev.alloc(size + 16)?),
        Kind::Digest(n) => b.digest = Some(dev.alloc(n)?),
    }
    Ok(b)
}

/// Completions a bench thread waits for before it refills (at most `depth`). Polled: one
/// batch. With interrupts: `asked` (`--wake-after`), by default half of what is in flight (at
/// least a batch), so the device still
/// has half its work queued when the thread wakes, and interrupts one wake-up per half ring
/// rather than per batch: waking a sleeping thread costs the device's worker about 10 µs of
/// its core on this VM, a sixth of the work of a 32 × 16 KiB batch (docs/performance.md).
fn wake_after(mode: Mode, batch: usize, depth: usize, asked: Option<usize>) -> usize {
    let chunk = batch.min(depth).max(1);
    match (mode, asked) {
        (Mode::Poll, _) => chunk,
        (Mode::Interrupt, Some(n)) => n.clamp(1, depth.max(1)),
        (Mode::Interrupt, None) => (depth / 2).max(chunk),
    }
}

/// Every queue's thread at once; the rate of them all.
#[allow(clippy::too_many_arguments)]
fn device_run(
    dev: &CryptoDevice,
    session: &Session,
    kind: Kind,
    size: usize,
    batch: usize,
    depth: usize,
    wake: usize,
    dur: Duration,
) -> Result<Stats, CliError> {
    let queues = dev.num_queues();
    let results: Vec<Result<Stats, CliError>> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..queues)
            .map(|i| {
                sc.spawn(move || {
                    device_thread(dev, session, i, kind, size, batch, depth, wake, dur)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or(Err(CliError::Panicked("bench thread"))))
            .collect()
    });
    let mut total = Stats {
        ops: 0,
        secs: 0.0,
        cpu: 0.0,
    };
    for r in results {
        let s = r?;
        total.ops += s.ops;
        total.secs = total.secs.max(s.secs);
        total.cpu += s.cpu;
    }
    Ok(total)
}

#[allow(clippy::too_many_arguments)]
fn device_thread(
    dev: &CryptoDevice,
    s: &Session,
    qi: u16,
    kind: Kind,
    size: usize,
    batch: usize,
    depth: usize,
    wake: usize,
    dur: Duration,
) -> Result<Stats, CliError> {
    let mut q = dev.queue(qi)?;
    let iv = vec![7u8; iv_len(kind)];
    // Buffers for `depth` operations (capped by what the ring can hold).
    let depth = depth.min(q.free_slots()).max(1);
    let mut free: Vec<OpBufs> = Vec::with_capacity(depth);
    for _ in 0..depth {
        free.push(alloc_bufs(dev, kind, size)?);
    }
    // A batch is submitted as soon as a whole batch of buffers is free (or, when the ring is
    // smaller than a batch, whatever is free): pipelined, never ping-pong.
    let chunk = batch.min(depth);
    let mut ops = 0u64;
    let cpu0 = thread_cpu();
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
        // Wake up once `wake` operations have completed (the rest of the ring keeps the device
        // busy meanwhile), not on every completion. Each completion's buffers go straight back
        // to the free list (no `Vec` of completions in between).
        let mut failed = None;
        q.wait_for_with(wake.min(depth), |c| {
            if let Err(e) = c.result {
                failed.get_or_insert(e);
            }
            ops += 1;
            free.push(c.bufs);
        })?;
        if let Some(e) = failed {
            return Err(e.into());
        }
        if running && start.elapsed() >= dur {
            running = false;
        }
    }
    Ok(Stats {
        ops,
        secs: start.elapsed().as_secs_f64(),
        cpu: thread_cpu() - cpu0,
    })
}

/// CPU seconds the calling thread has used (user and system).
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a live, writable timespec.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
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
    Ok(software(&p, Kind::Aead, size, batch, batch, 1, dur, false)?.rate())
}

/// The raw baseline: `dpacc_sw::SwDriver` through the driver traits, batched like the device
/// run, over as many buffers per thread as the device run keeps in flight (`depth`: the same
/// working set in the caches), on the heap (4 KiB pages) or, with `huge`, on 2 MiB hugepages
/// like the device's memory. The one place that names the software driver.
#[allow(clippy::too_many_arguments)]
fn software(
    p: &SessionParams<'_>,
    kind: Kind,
    size: usize,
    batch: usize,
    depth: usize,
    threads: u16,
    dur: Duration,
    huge: bool,
) -> Result<Stats, CliError> {
    let drv = dpacc_sw::SwDriver::new();
    let handle = drv.create_session(p).map_err(CliError::from)?;
    let results: Vec<Result<Stats, CliError>> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..threads)
            .map(|_| {
                let (drv, handle) = (&drv, &handle);
                sc.spawn(move || sw_thread(drv, handle, kind, size, batch, depth, dur, huge))
            })
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or(Err(CliError::Panicked("software bench thread")))
            })
            .collect()
    });
    let mut total = Stats {
        ops: 0,
        secs: 0.0,
        cpu: 0.0,
    };
    for r in results {
        let s = r?;
        total.ops += s.ops;
        total.secs = total.secs.max(s.secs);
        total.cpu += s.cpu;
    }
    Ok(total)
}

/// Where the in-process baseline's buffers live.
enum SwMem {
    /// One heap allocation per buffer (4 KiB pages).
    Heap(Vec<Vec<u8>>),
    /// One region on 2 MiB hugepages, carved in 64-byte-aligned pieces.
    Huge(SharedMemory),
}

impl SwMem {
    /// Room for `lens`, in that order.
    fn new(lens: &[usize], huge: bool) -> Result<Self, CliError> {
        if !huge {
            return Ok(Self::Heap(lens.iter().map(|&l| vec![0; l]).collect()));
        }
        let total = lens.iter().map(|l| l.next_multiple_of(64)).sum::<usize>();
        Ok(Self::Huge(SharedMemory::with_pages(
            total.max(1),
            0,
            Hugepages::On,
        )?))
    }

    /// The pieces, disjoint, of the lengths given to `new`.
    fn pieces(&mut self, lens: &[usize]) -> Vec<&mut [u8]> {
        match self {
            Self::Heap(v) => v.iter_mut().map(|b| b.as_mut_slice()).collect(),
            Self::Huge(m) => {
                // SAFETY: the mapping is `m.len()` bytes, zero-initialised, lives as long as
                // the `&mut self` borrow and nothing else in this process or outside it (no
                // device was given it) accesses it.
                let mut rest = unsafe { std::slice::from_raw_parts_mut(m.as_ptr(), m.len()) };
                lens.iter()
                    .map(|&l| {
                        let (piece, tail) =
                            std::mem::take(&mut rest).split_at_mut(l.next_multiple_of(64));
                        rest = tail;
                        &mut piece[..l]
                    })
                    .collect()
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn sw_thread(
    drv: &dyn CryptoDriver,
    session: &SessionHandle,
    kind: Kind,
    size: usize,
    batch: usize,
    depth: usize,
    dur: Duration,
    huge: bool,
) -> Result<Stats, CliError> {
    let sw_err = CliError::from;
    let mut queue = drv.open_queue(batch).map_err(sw_err)?;
    // Whole batches covering at least `depth` operations' buffers, used in turn: all sources,
    // then all destinations, then all digests.
    let sets = depth.div_ceil(batch).max(1);
    let n = sets * batch;
    let lens: Vec<usize> = [size, size, digest_len(kind)]
        .iter()
        .flat_map(|&l| std::iter::repeat_n(l, n))
        .collect();
    let mut mem = SwMem::new(&lens, huge)?;
    let mut pieces = mem.pieces(&lens);
    for s in &mut pieces[..n] {
        s.fill(0x5a);
    }
    let mut it = pieces.into_iter();
    let src_segs: Vec<[Seg<'_>; 1]> = it.by_ref().take(n).map(|s| [Seg::from_ref(s)]).collect();
    let dst_segs: Vec<[Seg<'_>; 1]> = it.by_ref().take(n).map(|d| [Seg::from_mut(d)]).collect();
    let dig_segs: Vec<[Seg<'_>; 1]> = it.map(|d| [Seg::from_mut(d)]).collect();
    let iv = Iv::new(&vec![7u8; iv_len(kind)]).map_err(sw_err)?;
    let ops: Vec<CryptoOp<'_>> = (0..n)
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
    let mut set = 0;
    let start = Instant::now();
    while start.elapsed() < dur {
        let batch_ops = &ops[set * batch..(set + 1) * batch];
        set = (set + 1) % sets;
        // SAFETY: every segment points into `bufs`, which outlives this loop and is not
        // touched while operations are in flight; we dequeue everything before the next
        // enqueue reuses them.
        let taken = unsafe { queue.enqueue(batch_ops) }.min(batch);
        let mut got = 0;
        while got < taken {
            let k = queue.dequeue(&mut done).min(done.len());
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
        cpu: 0.0,
    })
}

/// Percentiles of round-trip times in nanoseconds (sorted in place).
struct Percentiles {
    n: usize,
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

impl Percentiles {
    fn of(samples: &mut [u32]) -> Self {
        samples.sort_unstable();
        let at = |q: f64| {
            let i = ((samples.len() as f64 * q) as usize).min(samples.len().saturating_sub(1));
            samples.get(i).copied().unwrap_or(0) as f64 / 1e3
        };
        Self {
            n: samples.len(),
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            p999: at(0.999),
            max: samples.last().copied().unwrap_or(0) as f64 / 1e3,
        }
    }

    fn print(&self, who: &str) {
        println!(
            "{who:10} {:>9} round trips: p50 {:>8.2} us  p90 {:>8.2} us  p99 {:>8.2} us  p99.9 {:>8.2} us  max {:>9.2} us",
            self.n, self.p50, self.p90, self.p99, self.p999, self.max
        );
    }
}

fn nanos(d: Duration) -> u32 {
    u32::try_from(d.as_nanos()).unwrap_or(u32::MAX)
}

/// `--latency`: one operation in flight at a time, each round trip (push, kick, wait for its
/// completion) timed, per mode and size; then the same operation on the in-process driver.
fn latency(a: &Args, p: &SessionParams<'_>, kind: Kind) -> Result<(), CliError> {
    let dur = Duration::from_secs_f64(a.seconds);
    let max_size = a.sizes.iter().copied().max().unwrap_or(1);
    let mut samples: Vec<u32> = Vec::with_capacity(MAX_SAMPLES);
    for &mode in &a.modes {
        let opts = Options {
            queues: Some(1),
            queue_size: 64,
            completion: mode.completion(),
            hugepages: a.hugepages,
            arena_size: 2 * max_size + (1 << 20),
            session_control: a.sessions,
            wait_poll: a.wait_poll.unwrap_or(Options::default().wait_poll),
            ..Options::default()
        };
        let dev = crate::open(&a.device, opts)?;
        let session = dev.create_session(p)?;
        let mut q = dev.queue(0)?;
        let iv = vec![7u8; iv_len(kind)];
        for &size in &a.sizes {
            println!(
                "latency   {} {size} B, one operation in flight, {}",
                a.alg,
                mode.name()
            );
            let mut bufs = Some(alloc_bufs(&dev, kind, size)?);
            let mut out = Vec::with_capacity(4);
            samples.clear();
            let start = Instant::now();
            let mut warm = 1000;
            while samples.len() < MAX_SAMPLES && start.elapsed() < dur {
                let b = bufs.take().ok_or(CliError::Panicked("latency buffers"))?;
                let t = Instant::now();
                q.submit(make_op(&session, kind, &iv, b, 1))
                    .map_err(|r| r.error)?;
                while out.is_empty() {
                    q.wait(&mut out)?;
                }
                let rtt = t.elapsed();
                let c = out.pop().ok_or(CliError::Panicked("latency completion"))?;
                c.result?;
                bufs = Some(c.bufs);
                if warm > 0 {
                    warm -= 1;
                } else {
                    samples.push(nanos(rtt));
                }
            }
            let dev_p = Percentiles::of(&mut samples);
            dev_p.print("device");
            let raw_p = software_latency(p, kind, size, dur, &mut samples)?;
            raw_p.print("raw");
            println!(
                "ratio     device/raw p50 = {:.1}, p99 = {:.1} (same run; the raw figure is the software driver in-process)",
                dev_p.p50 / raw_p.p50.max(1e-3),
                dev_p.p99 / raw_p.p99.max(1e-3)
            );
        }
    }
    Ok(())
}

/// Round trips of single operations on the in-process software driver.
fn software_latency(
    p: &SessionParams<'_>,
    kind: Kind,
    size: usize,
    dur: Duration,
    samples: &mut Vec<u32>,
) -> Result<Percentiles, CliError> {
    let sw_err = CliError::from;
    let drv = dpacc_sw::SwDriver::new();
    let session = drv.create_session(p).map_err(sw_err)?;
    let mut queue = drv.open_queue(1).map_err(sw_err)?;
    let src = vec![0x5a; size];
    let mut dst = vec![0; size];
    let mut dig = vec![0; digest_len(kind)];
    let src = [Seg::from_ref(&src)];
    let dst = [Seg::from_mut(&mut dst)];
    let dig = [Seg::from_mut(&mut dig)];
    let op = CryptoOp {
        session: &session,
        iv: Iv::new(&vec![7u8; iv_len(kind)]).map_err(sw_err)?,
        src: &src,
        dst: if matches!(kind, Kind::Digest(_)) {
            &[]
        } else {
            &dst
        },
        aad: &[],
        digest: if matches!(kind, Kind::Cipher) {
            &[]
        } else {
            &dig
        },
        chain: Default::default(),
        user_data: 1,
    };
    let mut done = [Completion::default()];
    samples.clear();
    let start = Instant::now();
    while samples.len() < samples.capacity() && start.elapsed() < dur {
        let t = Instant::now();
        // SAFETY: the segments borrow `bufs`, which outlives the operation: it is dequeued
        // below before the next one starts.
        if unsafe { queue.enqueue(std::slice::from_ref(&op)) } == 0 {
            return Err(CliError::SoftwareQueueRefused);
        }
        while queue.dequeue(&mut done) == 0 {}
        samples.push(nanos(t.elapsed()));
        done[0].result.map_err(sw_err)?;
    }
    Ok(Percentiles::of(samples))
}
