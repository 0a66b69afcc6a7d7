//! [`QueueWorker`]: one thread per started crypto ring (data or control queue): waits on the
//! kick eventfd, drains the ring, signals the call eventfd (honouring EVENT_IDX), and hands the
//! ring back when asked to stop.

use std::io;
use std::thread::JoinHandle;

use tracing::{debug, warn};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::guest_log::guest_warn;
use crate::ready::{self, ReadySet};
use crate::split_ring::publish_avail_event;
use crate::vhost_user::QueueStart;

/// Signals the frontend after used entries were added.
pub(crate) struct Notify {
    call: Option<EventFd>,
}

impl Notify {
    /// Signals `call` (None: the frontend polls; nothing to signal).
    pub(crate) fn new(call: Option<EventFd>) -> Self {
        Self { call }
    }

    /// Signals the call eventfd if the ring's notification suppression allows it.
    pub(crate) fn signal(&self, q: &mut Queue, mem: &GuestMemoryMmap) {
        let Some(call) = &self.call else {
            return;
        };
        match q.needs_notification(mem) {
            Ok(true) => {
                if let Err(e) = call.write(1) {
                    guest_warn!("call eventfd: {e}");
                }
            }
            Ok(false) => {}
            Err(e) => guest_warn!("needs_notification: {e}"),
        }
    }
}

/// What a worker does with the chains of its ring.
pub(crate) trait Processor: Send + 'static {
    /// Processes every available chain; returns how many were completed. Implementations
    /// signal through `notify` after each batch of used entries.
    fn process(&mut self, q: &mut Queue, mem: &GuestMemoryMmap, notify: &Notify) -> usize;
}

/// The running worker thread of one crypto ring.
pub(crate) struct QueueWorker {
    exit: EventFd,
    thread: Option<JoinHandle<Queue>>,
}

impl QueueWorker {
    /// Spawns a worker thread processing `start`'s ring with `proc_`.
    pub(crate) fn spawn<P: Processor>(start: QueueStart, mut proc_: P) -> io::Result<Self> {
        let exit = EventFd::new(EFD_NONBLOCK)?;
        let waiter = ReadySet::new()?;
        waiter.add(&start.kick, KICK)?;
        waiter.add(&exit, EXIT)?;
        let thread = std::thread::Builder::new()
            .name(format!("vq{}", start.index))
            .spawn(move || run(start, waiter, &mut proc_))?;
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
fn run<P: Processor>(start: QueueStart, mut waiter: ReadySet, p: &mut P) -> Queue {
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
        let more = pending && drain(index, &mut queue, &mem, &notify, p);
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

/// Passes over the ring one drain takes at most before the worker looks at its exit eventfd.
const DRAIN_ROUNDS: usize = 16;

/// Processes the ring until it runs dry (true: not dry yet after [`DRAIN_ROUNDS`] passes;
/// call again).
fn drain<P: Processor>(
    index: usize,
    q: &mut Queue,
    mem: &crate::vhost_user::GuestMem,
    notify: &Notify,
    p: &mut P,
) -> bool {
    // One memory snapshot per wakeup: segment pointers stay valid while it is held.
    let m = mem.memory();
    for _ in 0..DRAIN_ROUNDS {
        let _ = q.disable_notification(&*m);
        let n = p.process(q, &m, notify);
        if let Err(e) = publish_avail_event(q, &m) {
            guest_warn!("vq{index}: avail_event: {e}");
        }
        match q.enable_notification(&*m) {
            Ok(true) if n > 0 => continue,
            Ok(true) => {
                // More is announced but nothing could be popped: a broken avail ring.
                guest_warn!("vq{index}: available ring is inconsistent; waiting for the next kick");
                return false;
            }
            Ok(false) => return false,
            Err(e) => {
                guest_warn!("vq{index}: enable_notification: {e}");
                return false;
            }
        }
    }
    true
}
