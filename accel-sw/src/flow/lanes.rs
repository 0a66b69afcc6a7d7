//! [`LaneLock`]: the state the lanes of an instance share (its tables, groups, SAs), read by
//! every lane without writing any shared cache line, changed by control requests while no lane
//! is inside a batch.
//!
//! A big-reader lock: each lane has its own flag, on its own cache line, raised for the span
//! of one batch (a store, a fence and a load of a line that only a writer ever writes); a
//! writer (a control request, expiry) raises the shared `writing` flag and waits until every
//! lane has left its batch. Lanes never wait on each other, and a writer waits at most one
//! batch per lane. Readers and the writer order their flags with sequentially consistent
//! fences (Dekker's pattern), so either the lane sees the writer's flag and steps back, or
//! the writer sees the lane's and waits.

use std::cell::UnsafeCell;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

/// A flag on a cache line of its own.
#[repr(align(128))]
#[derive(Default)]
struct Flag(AtomicBool);

/// Shared state: read by lanes (one batch at a time), written by one writer at a time.
pub(crate) struct LaneLock<T> {
    data: UnsafeCell<T>,
    writing: Flag,
    writer: Mutex<()>,
    readers: Box<[Flag]>,
    claimed: Box<[AtomicBool]>,
}

// SAFETY: lanes on several threads get `&T` at once (so `T: Sync`), and the writer gets
// `&mut T` on any thread (so `T: Send`); the protocol above keeps the two apart.
unsafe impl<T: Send + Sync> Sync for LaneLock<T> {}
// SAFETY: as above; moving the lock moves `T`.
unsafe impl<T: Send> Send for LaneLock<T> {}

/// The right to read as lane `i`: one per lane (see [`LaneLock::claim`]), so no two threads
/// ever share a lane's flag.
#[derive(Debug)]
pub(crate) struct LaneToken(usize);

impl LaneToken {
    /// The lane's index.
    pub(crate) fn index(&self) -> usize {
        self.0
    }
}

impl<T> LaneLock<T> {
    /// `data`, read by `lanes` lanes.
    pub(crate) fn new(data: T, lanes: usize) -> Self {
        Self {
            data: UnsafeCell::new(data),
            writing: Flag::default(),
            writer: Mutex::new(()),
            readers: (0..lanes).map(|_| Flag::default()).collect(),
            claimed: (0..lanes).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    /// Number of lanes.
    pub(crate) fn lanes(&self) -> usize {
        self.readers.len()
    }

    /// The token of lane `i`, once (None if `i` is out of range or already claimed).
    pub(crate) fn claim(&self, i: usize) -> Option<LaneToken> {
        let c = self.claimed.get(i)?;
        (!c.swap(true, Ordering::AcqRel)).then_some(LaneToken(i))
    }

    /// Gives a lane's token back (its lane may be claimed again).
    pub(crate) fn release(&self, t: LaneToken) {
        self.claimed[t.0].store(false, Ordering::Release);
    }

    /// Reads as lane `t` until the guard drops (one batch). Waits only while a writer is
    /// inside. Never call [`write`](Self::write) while holding it (it would wait for itself).
    #[cfg(test)]
    pub(crate) fn read<'a>(&'a self, t: &'a LaneToken) -> ReadGuard<'a, T> {
        self.enter(t);
        ReadGuard {
            lock: self,
            flag: &self.readers[t.0].0,
        }
    }

    /// Enters lane `t`'s read section without a guard (for a section that spans calls: a
    /// batch and the finishing of its pending packets). Leave with [`leave`](Self::leave);
    /// read with [`get`](Self::get) in between.
    #[inline]
    pub(crate) fn enter(&self, t: &LaneToken) {
        let flag = &self.readers[t.0].0;
        loop {
            flag.store(true, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            if !self.writing.0.load(Ordering::Acquire) {
                break;
            }
            flag.store(false, Ordering::Release);
            let mut spins = 0u32;
            while self.writing.0.load(Ordering::Acquire) {
                spins += 1;
                if spins < 1000 {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
        }
    }

    /// Leaves lane `t`'s read section.
    #[inline]
    pub(crate) fn leave(&self, t: &LaneToken) {
        self.readers[t.0].0.store(false, Ordering::Release);
    }

    /// The data, inside lane `t`'s read section.
    ///
    /// # Safety
    /// The caller entered with `t` ([`enter`](Self::enter)) and has not left; the reference
    /// must not outlive the section.
    #[inline]
    pub(crate) unsafe fn get(&self, t: &LaneToken) -> &T {
        debug_assert!(self.readers[t.0].0.load(Ordering::Relaxed));
        // SAFETY: the caller is inside its read section: no writer is inside.
        unsafe { &*self.data.get() }
    }

    /// Exclusive access, once every lane has left its batch.
    pub(crate) fn write(&self) -> WriteGuard<'_, T> {
        let g = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        self.writing.0.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        for r in &*self.readers {
            let mut spins = 0u32;
            while r.0.load(Ordering::Acquire) {
                spins += 1;
                if spins < 1000 {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
        }
        WriteGuard { lock: self, _g: g }
    }
}

/// A lane's read access (one batch).
#[cfg(test)]
pub(crate) struct ReadGuard<'a, T> {
    lock: &'a LaneLock<T>,
    flag: &'a AtomicBool,
}

#[cfg(test)]
impl<T> Deref for ReadGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the lane's flag is up and no writer is inside (checked after the fence):
        // a writer waits for the flag to drop before it takes `&mut T`.
        unsafe { &*self.lock.data.get() }
    }
}

#[cfg(test)]
impl<T> Drop for ReadGuard<'_, T> {
    fn drop(&mut self) {
        self.flag.store(false, Ordering::Release);
    }
}

/// Exclusive access (a control request).
pub(crate) struct WriteGuard<'a, T> {
    lock: &'a LaneLock<T>,
    _g: MutexGuard<'a, ()>,
}

impl<T> Deref for WriteGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: exclusive: the writer mutex is held and every lane flag was seen down after
        // `writing` went up (lanes that come later step back).
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> DerefMut for WriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T> Drop for WriteGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.writing.0.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Writers keep two words equal; lanes reading concurrently never see them differ, and
    /// every write lands.
    #[test]
    fn lanes_never_see_a_half_done_write() {
        let lock = Arc::new(LaneLock::new((0u64, 0u64), 2));
        let stop = Arc::new(AtomicBool::new(false));
        // Reads per lane: the writer goes on until each lane has read many times (on a loaded
        // machine one lane thread may start late).
        let reads: Arc<[std::sync::atomic::AtomicU64; 2]> = Arc::new(Default::default());
        let lanes: Vec<_> = (0..2)
            .map(|i| {
                let (lock, stop, reads) = (lock.clone(), stop.clone(), reads.clone());
                std::thread::spawn(move || {
                    let t = lock.claim(i).unwrap();
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let g = lock.read(&t);
                        let (a, b) = *g;
                        assert_eq!(a, b, "a torn write");
                        n += 1;
                        reads[i].fetch_add(1, Ordering::Relaxed);
                    }
                    n
                })
            })
            .collect();
        let mut writes = 0;
        while writes < 2000 || reads.iter().any(|r| r.load(Ordering::Relaxed) < 10_000) {
            let mut g = lock.write();
            g.0 += 1;
            std::hint::spin_loop();
            g.1 += 1;
            writes += 1;
        }
        stop.store(true, Ordering::Relaxed);
        for l in lanes {
            assert!(l.join().unwrap() > 0);
        }
        assert_eq!(*lock.write(), (writes, writes));
        assert!(lock.claim(0).is_none() && lock.claim(2).is_none());
    }

    #[test]
    fn a_panicking_lane_leaves_its_flag_down() {
        let lock = Arc::new(LaneLock::new(1u32, 1));
        let l2 = lock.clone();
        let r = std::thread::spawn(move || {
            let t = l2.claim(0).unwrap();
            let _g = l2.read(&t);
            panic!("a bug inside a batch");
        })
        .join();
        assert!(r.is_err());
        *lock.write() += 1;
        assert_eq!(*lock.write(), 2);
    }
}
