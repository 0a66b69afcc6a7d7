//! [`QueueWorker`]: one thread per started crypto ring (data or control queue): waits on the
//! kick eventfd, drains the ring through the ring layer ([`SplitRing`]), signals the call
//! eventfd when the ring says the driver wants it (EVENT_IDX or NO_INTERRUPT), and hands the
//! ring back when asked to stop. A data-queue worker keeps polling its ring for a bounded time
//! after it runs dry (`busy_poll`) before it re-arms kicks and sleeps: requests that come within
//! that time cost the driver no kick and the worker no wake-up.

use std::io;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{debug, warn};
use virtio_queue::Queue;
use vm_memory::{GuestAddressSpace, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::guest_log::guest_warn;
use crate::ready::{self, ReadySet};
use crate::split_ring::SplitRing;
use crate::vhost_user::QueueStart;
use crate::virtq::FastMem;

/// Signals the frontend after used entries were published.
pub(crate) struct Notify {
    call: Option<EventFd>,
}

impl Notify {
    /// Signals `call` (None: the frontend polls; nothing to signal).
    pub(crate) fn new(call: Option<EventFd>) -> Self {
        Self { call }
    }

    /// Signals the call eventfd when `wanted` (what [`SplitRing::close`] decided).
    pub(crate) fn signal(&self, wanted: bool) {
        if let (true, Some(call)) = (wanted, &self.call) {
            if let Err(e) = call.write(1) {
                guest_warn!("call eventfd: {e}");
            }
        }
    }
}

/// What a worker does with the chains of its ring.
pub(crate) trait Processor: Send + 'static {
    /// Processes the available chains (at least one batch, if any); returns how many were
    /// completed. Implementations open the ring with [`SplitRing::open`] over `mem`, close it
    /// after each batch and signal through `notify`.
    fn process(
        &mut self,
        q: &mut Queue,
        mem: &FastMem<'_, GuestMemoryMmap>,
        notify: &Notify,
    ) -> usize;
}

/// The running worker thread of one crypto ring.
pub(crate) struct QueueWorker {
    exit: EventFd,
    thread: Option<JoinHandle<Queue>>,
}

impl QueueWorker {
    /// Spawns a worker thread processing `start`'s ring with `proc_`, polling the ring for
    /// `busy_poll` after it runs dry before sleeping until a kick.
    pub(crate) fn spawn<P: Processor>(
        start: QueueStart,
        mut proc_: P,
        busy_poll: Duration,
    ) -> io::Result<Self> {
        let exit = EventFd::new(EFD_NONBLOCK)?;
        let waiter = ReadySet::new()?;
        waiter.add(&start.kick, KICK)?;
        waiter.add(&exit, EXIT)?;
        let thread = std::thread::Builder::new()
            .name(format!("vq{}", start.index))
            .spawn(move || run(start, waiter, &mut proc_, busy_poll))?;
        Ok(Self {
            exit,
            thread: Some(thread),
        })
    }

    /// Stops the worker (after its current batch) and returns the ring.
    pub(crate) fn stop(mut self) -> Option<Queue> {
        let _ = self.exit.write(1);
        self.thread.take().and_then(|t| t.join().ok())
    }
}

impl Drop for QueueWorker {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = self.exit.write(1);
            let _ = t.join();
        }
    }
}

/// Tokens of the descriptors a worker waits on.
const KICK: u32 = 0;
const EXIT: u32 = 1;

/// The worker thread: drains the ring whenever `waiter` reports a kick, until it reports the
/// exit eventfd.
fn run<P: Processor>(
    start: QueueStart,
    mut waiter: ReadySet,
    p: &mut P,
    busy_poll: Duration,
) -> Queue {
    let QueueStart {
        index,
        mut queue,
        kick,
        call,
        mem,
        ..
    } = start;
    let notify = Notify::new(call);
    // Chains may already be waiting (a restart, or a kick sent before we started).
    let mut pending = true;
    loop {
        // A ring that never runs dry (a busy driver, or a hostile one whose rings overlap so
        // that our used entries announce new available ones) is drained a slice at a time,
        // looking at the exit eventfd in between, so the worker always stops when asked.
        let more = pending && drain(index, &mut queue, &mem, &notify, p, busy_poll);
        let ready = if more { waiter.poll() } else { waiter.wait() };
        let ready = match ready {
            Ok(r) => r,
            Err(e) => {
                warn!("vq{index}: poll: {e}");
                break;
            }
        };
        if ready::has(ready, EXIT) {
            break;
        }
        pending = more || ready::has(ready, KICK);
        if pending {
            // Consume the kick (the counter resets; a kick arriving later wakes us again). A
            // failure is harmless: the ring is drained anyway.
            let _ = kick.read();
        }
    }
    debug!("vq{index}: worker exits");
    queue
}

/// Passes over the ring one drain takes at most before the worker looks at its exit eventfd
/// (each pass: at most a ring's worth of chains, then at most `busy_poll` of polling).
const DRAIN_ROUNDS: usize = 16;

/// Drains the ring with kicks off, polls it for `busy_poll` once it is dry, then turns kicks
/// back on; drains again if chains came meanwhile. True: not dry after [`DRAIN_ROUNDS`]
/// passes (kicks may still be off); call again once the exit eventfd was looked at.
fn drain<P: Processor>(
    index: usize,
    q: &mut Queue,
    mem: &crate::vhost_user::GuestMem,
    notify: &Notify,
    p: &mut P,
    busy_poll: Duration,
) -> bool {
    // One memory snapshot per wakeup: segment pointers stay valid while it is held.
    let m = mem.memory();
    let fast = FastMem::new(&*m);
    for _ in 0..DRAIN_ROUNDS {
        match SplitRing::open(q, &fast) {
            Some(r) => {
                r.disable_kicks();
                r.close(q);
            }
            None => {
                guest_warn!("vq{index}: ring outside guest memory; waiting for the next kick");
                return false;
            }
        }
        let n = p.process(q, &fast, notify);
        if n > 0 && poll_ring(q, &fast, busy_poll) {
            continue;
        }
        let Some(mut r) = SplitRing::open(q, &fast) else {
            return false;
        };
        let more = r.enable_kicks();
        r.close(q);
        match (more, n) {
            (true, 0) => {
                // More is announced but nothing could be taken: a broken avail ring.
                guest_warn!("vq{index}: available ring is inconsistent; waiting for the next kick");
                return false;
            }
            (true, _) => continue,
            (false, _) => return false,
        }
    }
    true
}

/// Pause instructions between two looks at the avail index while polling.
const POLL_PAUSES: u32 = 8;

/// Polls the ring (kicks still off) until a chain is available or `limit` has passed; true if
/// one is.
fn poll_ring(q: &mut Queue, fast: &FastMem<'_, GuestMemoryMmap>, limit: Duration) -> bool {
    if limit.is_zero() {
        return false;
    }
    let start = Instant::now();
    let mut spins = 0u32;
    loop {
        let Some(mut r) = SplitRing::open(q, fast) else {
            return false;
        };
        let more = r.pending() > 0;
        r.close(q);
        if more {
            return true;
        }
        spins = spins.wrapping_add(1);
        // The clock is read every few rounds: a round is a load of the avail index.
        if spins % 32 == 0 && start.elapsed() >= limit {
            return false;
        }
        // Not every cycle: the avail index shares its line with the first avail entries, which
        // the driver is writing meanwhile; each look takes the line from it.
        for _ in 0..POLL_PAUSES {
            std::hint::spin_loop();
        }
    }
}
