//! [`RingSlot`]: hands the ring pair of one vhost-user connection to the vNF worker and back.
//!
//! Every virtio-net device of a vNF (its own, port 0, and its vhost-user uplinks) is served on
//! its own vhost-user server thread, but all of a vNF's ports are processed by one worker
//! thread, which owns the flow processor (no locks on the data path). A slot is the meeting
//! point: the connection thread *offers* the rings once both are started, the worker *takes*
//! them when its wake eventfd fires, and the connection thread *takes them back* (the worker
//! returns them at once) before answering GET_VRING_BASE or on disconnect. The mutex is taken
//! only on these control events, never per packet.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use tracing::warn;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::vhost_user::QueueStart;

/// The two rings of one virtio-net connection: 0 = RX (device → driver), 1 = TX.
#[derive(Debug)]
pub(crate) struct RingPair {
    /// Ring 0: device → driver.
    pub(crate) rx: QueueStart,
    /// Ring 1: driver → device.
    pub(crate) tx: QueueStart,
}

#[derive(Default)]
struct State {
    /// Rings the worker may take (or has given back).
    rings: Option<RingPair>,
    /// The worker holds the rings.
    taken: bool,
    /// The connection thread wants them back.
    want_back: bool,
}

/// The handoff point of one port's rings.
pub(crate) struct RingSlot {
    name: String,
    wake: EventFd,
    state: Mutex<State>,
    returned: Condvar,
}

/// How long a connection thread waits for the worker to give rings back before giving up.
const GIVE_BACK_TIMEOUT: Duration = Duration::from_secs(5);

impl RingSlot {
    /// An empty slot; `name` appears in logs.
    pub(crate) fn new(name: impl Into<String>) -> std::io::Result<Self> {
        Ok(Self {
            name: name.into(),
            wake: EventFd::new(EFD_NONBLOCK)?,
            state: Mutex::new(State::default()),
            returned: Condvar::new(),
        })
    }

    /// The port's name for logs.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The eventfd the worker polls: readable when the slot changed.
    pub(crate) fn wake_fd(&self) -> &EventFd {
        &self.wake
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means another thread panicked while holding it; the state
        // itself is always consistent (plain field stores).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connection side: both rings are started; the worker may take them.
    pub(crate) fn offer(&self, rings: RingPair) {
        let mut s = self.lock();
        s.rings = Some(rings);
        s.want_back = false;
        drop(s);
        let _ = self.wake.write(1);
    }

    /// Connection side: takes the rings back (from the slot, or from the worker, which is
    /// woken and waited for). None if no rings were offered or the worker did not answer.
    pub(crate) fn take_back(&self) -> Option<RingPair> {
        let mut s = self.lock();
        if s.taken {
            s.want_back = true;
            let _ = self.wake.write(1);
            let (g, t) = self
                .returned
                .wait_timeout_while(s, GIVE_BACK_TIMEOUT, |s| s.taken)
                .unwrap_or_else(|e| e.into_inner());
            s = g;
            if t.timed_out() {
                warn!("{}: the vNF worker did not give its rings back", self.name);
                return None;
            }
        }
        s.want_back = false;
        s.rings.take()
    }

    /// Worker side, on a wake-up: gives `held` back if asked to, or takes offered rings.
    /// Returns true when `held` changed.
    pub(crate) fn sync(&self, held: &mut Option<RingPair>) -> bool {
        // Non-blocking: an empty counter is just WouldBlock.
        let _ = self.wake.read();
        let mut s = self.lock();
        if s.want_back {
            let Some(r) = held.take() else {
                return false;
            };
            self.put_back(&mut s, r);
            return true;
        }
        if held.is_none() && !s.taken {
            if let Some(r) = s.rings.take() {
                *held = Some(r);
                s.taken = true;
                return true;
            }
        }
        false
    }

    /// Worker side, when it stops: returns the rings it holds.
    pub(crate) fn give_back(&self, held: Option<RingPair>) {
        if let Some(r) = held {
            self.put_back(&mut self.lock(), r);
        }
    }

    /// Returns rings the worker held and wakes a connection thread waiting for them.
    fn put_back(&self, s: &mut State, r: RingPair) {
        s.rings = Some(r);
        s.taken = false;
        self.returned.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Arc;
    use virtio_queue::{Queue, QueueT};
    use vm_memory::{GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};

    fn rings(next_avail: u16) -> RingPair {
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        let qs = |index| {
            let mut queue = Queue::new(16).unwrap();
            queue.set_next_avail(next_avail);
            QueueStart {
                index,
                queue,
                kick: EventFd::new(EFD_NONBLOCK).unwrap(),
                call: None,
                mem: GuestMemoryAtomic::new(m.clone()),
                features: 0,
            }
        };
        RingPair {
            rx: qs(0),
            tx: qs(1),
        }
    }

    #[test]
    fn the_worker_takes_offered_rings_and_gives_them_back_on_request() {
        let slot = Arc::new(RingSlot::new("t").unwrap());
        slot.offer(rings(5));
        let worker_slot = slot.clone();
        let worker = std::thread::spawn(move || {
            let mut held = None;
            // Take the rings, use them (advance the ring), then answer the give-back request.
            while held.is_none() {
                worker_slot.sync(&mut held);
            }
            held.as_mut().unwrap().tx.queue.set_next_avail(9);
            while held.is_some() {
                std::thread::sleep(std::time::Duration::from_millis(1));
                worker_slot.sync(&mut held);
            }
        });
        std::thread::sleep(std::time::Duration::from_millis(20));
        let back = slot.take_back().expect("rings back from the worker");
        assert_eq!(
            back.tx.queue.next_avail(),
            9,
            "the worker's ring state comes back"
        );
        assert_eq!(back.rx.queue.next_avail(), 5);
        worker.join().unwrap();
        assert!(slot.take_back().is_none());
    }

    #[test]
    fn offer_take_back_without_worker() {
        let s = RingSlot::new("t").unwrap();
        assert!(s.take_back().is_none());
        let mut held = None;
        assert!(!s.sync(&mut held));
        assert!(held.is_none());
        // Offered but never taken: the connection gets its rings straight back.
        s.offer(rings(3));
        assert_eq!(s.take_back().unwrap().tx.queue.next_avail(), 3);
    }
}
