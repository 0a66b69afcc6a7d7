//! The device's session table, shared by the control queue and QEMU's CREATE/CLOSE requests.
//!
//! Ids are `generation << 32 | slot`: a freed slot gets a new id (its generation moves on), so
//! an id is never reused while a session holds it, and a stale id never reaches a newer
//! session. Generations are in `1..=i32::MAX`, so ids are never 0 and always positive as
//! `i64`, and each table starts from a random generation, so after a backend restart a guest's
//! stale ids are (with overwhelming probability) answered INVSESS instead of reaching a new
//! session.
//!
//! Data-path workers look up all sessions of a batch under one read lock
//! ([`SessionTable::read`]) and clone the handles they need; the lock is not held while
//! operations run.

use std::sync::atomic::Ordering;
use std::sync::{RwLock, RwLockReadGuard};

use dpacc_spec::{CryptoDriver, CryptoError, SessionHandle, SessionParams};

/// Largest generation before wrapping back to 1 (keeps ids positive as `i64`).
const MAX_GEN: u32 = i32::MAX as u32;

/// A random generation in `1..=MAX_GEN` (from the kernel's RNG; the clock if that fails).
fn random_gen() -> u32 {
    let mut b = [0u8; 4];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .is_ok();
    let r = if ok {
        u32::from_ne_bytes(b)
    } else {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() ^ d.as_secs() as u32)
    };
    1 + r % MAX_GEN
}

fn next_gen(gen: u32) -> u32 {
    if gen >= MAX_GEN {
        1
    } else {
        gen + 1
    }
}

#[derive(Default)]
struct Slot {
    gen: u32,
    session: Option<SessionHandle>,
}

/// The table behind the lock.
pub(crate) struct Table {
    /// Generation of a never-used slot: random per table, so ids handed out by an earlier
    /// backend process (or table) are very unlikely to name a session of this one.
    first_gen: u32,
    slots: Vec<Slot>,
    free: Vec<u32>,
    max: usize,
    live: usize,
}

impl Table {
    /// The session with this id, if open.
    pub(crate) fn get(&self, id: u64) -> Option<&SessionHandle> {
        let slot = self.slots.get((id & 0xffff_ffff) as usize)?;
        if u64::from(slot.gen) != id >> 32 {
            return None;
        }
        slot.session.as_ref()
    }
}

/// A bounded id → session table.
pub(crate) struct SessionTable {
    inner: RwLock<Table>,
    counters: super::counters::SessionCounters,
}

impl std::fmt::Debug for SessionTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionTable")
            .field("live", &self.read().live)
            .finish()
    }
}

impl SessionTable {
    /// A table for at most `max` open sessions.
    pub(crate) fn new(max: usize) -> Self {
        Self {
            inner: RwLock::new(Table {
                first_gen: random_gen(),
                slots: Vec::new(),
                free: Vec::new(),
                max,
                live: 0,
            }),
            counters: Default::default(),
        }
    }

    /// A table whose first ids are predictable (`first_gen << 32 | slot`), for fuzzing.
    #[cfg(feature = "fuzzing")]
    pub(crate) fn with_first_gen(max: usize, first_gen: u32) -> Self {
        let t = Self::new(max);
        t.inner.write().unwrap_or_else(|p| p.into_inner()).first_gen = first_gen;
        t
    }

    /// Read access for a batch of lookups.
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, Table> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    /// What the table counted (for the operator).
    pub(crate) fn counts(&self) -> super::counters::SessionCount {
        let t = self.read();
        self.counters.snapshot(t.live as u64, t.max as u64)
    }

    /// Creates a session through `driver` and returns its new id.
    pub(crate) fn create(
        &self,
        driver: &dyn CryptoDriver,
        params: &SessionParams<'_>,
    ) -> Result<u64, CryptoError> {
        let c = &self.counters;
        let r = self.create_inner(driver, params);
        match &r {
            Ok(id) => {
                c.created.fetch_add(1, Ordering::Relaxed);
                let t = self.read();
                if t.get(*id).and_then(dpacc_hw::fallback::runs_on_primary) == Some(false) {
                    c.fallbacks.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(_) => {
                c.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        r
    }

    fn create_inner(
        &self,
        driver: &dyn CryptoDriver,
        params: &SessionParams<'_>,
    ) -> Result<u64, CryptoError> {
        {
            let t = self.read();
            if t.live >= t.max {
                return Err(CryptoError::NoSpace);
            }
        }
        // Create outside the lock (key schedules can take a while); insert afterwards.
        let handle = driver.create_session(params)?;
        let mut t = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if t.live >= t.max {
            return Err(CryptoError::NoSpace);
        }
        let idx = match t.free.pop() {
            Some(i) => i as usize,
            None => {
                if t.slots.len() > u32::MAX as usize {
                    return Err(CryptoError::NoSpace);
                }
                let gen = t.first_gen;
                t.slots.push(Slot { gen, session: None });
                t.slots.len() - 1
            }
        };
        let slot = &mut t.slots[idx];
        slot.session = Some(handle);
        let id = (u64::from(slot.gen) << 32) | idx as u64;
        t.live += 1;
        Ok(id)
    }

    /// Closes a session; the driver session is dropped once no in-flight operation holds it.
    pub(crate) fn close(&self, id: u64) -> Result<(), CryptoError> {
        let removed = {
            let mut t = self.inner.write().unwrap_or_else(|p| p.into_inner());
            let idx = (id & 0xffff_ffff) as usize;
            let Some(slot) = t.slots.get_mut(idx) else {
                return Err(CryptoError::InvalidSession);
            };
            if u64::from(slot.gen) != id >> 32 || slot.session.is_none() {
                return Err(CryptoError::InvalidSession);
            }
            let s = slot.session.take();
            slot.gen = next_gen(slot.gen);
            t.free.push(idx as u32);
            t.live -= 1;
            s
        };
        // Dropped outside the lock (zeroizing keys is the driver's Drop).
        drop(removed);
        self.counters.closed.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Closes every session (frontend disconnect). Slots keep their generations moving, so an
    /// id a previous frontend held never names a session of the next one.
    pub(crate) fn clear(&self) {
        let old: Vec<SessionHandle> = {
            let mut t = self.inner.write().unwrap_or_else(|p| p.into_inner());
            let Table {
                slots, free, live, ..
            } = &mut *t;
            let mut old = Vec::with_capacity(*live);
            for (i, slot) in slots.iter_mut().enumerate() {
                if let Some(s) = slot.session.take() {
                    old.push(s);
                    slot.gen = next_gen(slot.gen);
                    free.push(i as u32);
                }
            }
            *live = 0;
            old
        };
        self.counters
            .closed
            .fetch_add(old.len() as u64, Ordering::Relaxed);
        // Dropped outside the lock (zeroizing keys is the driver's Drop).
        drop(old);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::test_driver::XorDriver;
    use dpacc_spec::{CipherAlg, Direction};

    #[test]
    fn ids_are_not_reused_after_close_or_clear() {
        let t = SessionTable::new(2);
        let d = XorDriver;
        let p = SessionParams::Cipher {
            alg: CipherAlg::AesCtr,
            key: &[1; 16],
            dir: Direction::Encrypt,
        };
        let a = t.create(&d, &p).unwrap();
        let b = t.create(&d, &p).unwrap();
        assert_eq!(t.create(&d, &p), Err(CryptoError::NoSpace));
        t.close(a).unwrap();
        assert_eq!(t.close(a), Err(CryptoError::InvalidSession));
        let c = t.create(&d, &p).unwrap();
        assert_ne!(c, a);
        t.clear();
        assert_eq!(t.read().live, 0);
        assert!(t.read().get(b).is_none() && t.read().get(c).is_none());
        let e = t.create(&d, &p).unwrap();
        let f = t.create(&d, &p).unwrap();
        assert!(![a, b, c].contains(&e) && ![a, b, c].contains(&f));
        assert!(t.read().get(e).is_some());
    }
}

#[cfg(test)]
mod epoch_tests {
    use super::*;
    use crate::crypto::test_driver::XorDriver;
    use dpacc_spec::{CipherAlg, Direction};

    #[test]
    fn two_tables_hand_out_different_first_ids() {
        let p = SessionParams::Cipher {
            alg: CipherAlg::AesCtr,
            key: &[1; 16],
            dir: Direction::Encrypt,
        };
        let firsts: Vec<u64> = (0..4)
            .map(|_| SessionTable::new(4).create(&XorDriver, &p).unwrap())
            .collect();
        // Four random 31-bit generations: equal only with negligible probability.
        assert!(firsts.windows(2).any(|w| w[0] != w[1]), "{firsts:x?}");
        assert!(firsts.iter().all(|&id| id > 0 && (id as i64) > 0));
    }
}
