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
//!
//! Each open session carries its operator counters and labels ([`OpenSession`]); a worker adds
//! a batch's requests to them once per batch through the handle it cloned, so counts of
//! requests that were in flight when the session closed land in the closed session (they stay
//! in the queue totals) and never in a newer one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use dpacc_spec::{CryptoDriver, CryptoError, SessionHandle, SessionParams};

use super::counters::{SessionLabels, SessionList, SessionOpCounters, SessionStat};

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

/// An open session: the driver's handle, what it did, and what identifies it to the operator.
/// The driver session closes (keys zeroized) when the last clone of this drops.
pub(crate) struct OpenSession {
    /// Only workers write these (once per batch).
    pub(crate) counters: SessionOpCounters,
    pub(crate) handle: SessionHandle,
    pub(crate) labels: SessionLabels,
}

#[derive(Default)]
struct Slot {
    gen: u32,
    session: Option<Arc<OpenSession>>,
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
    pub(crate) fn get(&self, id: u64) -> Option<&Arc<OpenSession>> {
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
    /// The frontend connection sessions are created for now (0 before the first).
    connection: AtomicU64,
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
            connection: AtomicU64::new(0),
        }
    }

    /// A new frontend connection begins: sessions created from now on are labelled with the
    /// next connection number (1 for the first).
    pub(crate) fn begin_connection(&self) {
        self.connection.fetch_add(1, Ordering::Relaxed);
    }

    /// The open sessions with their counters: all of them counted, the first `limit` (by slot)
    /// listed. The table's read lock is held only to clone the handles.
    pub(crate) fn list(&self, limit: usize) -> SessionList {
        let (total, open) = {
            let t = self.read();
            let open: Vec<Arc<OpenSession>> = t
                .slots
                .iter()
                .filter_map(|s| s.session.clone())
                .take(limit)
                .collect();
            (t.live as u64, open)
        };
        SessionList {
            total,
            sessions: open
                .iter()
                .map(|s| SessionStat {
                    labels: s.labels.clone(),
                    count: s.counters.snapshot(),
                })
                .collect(),
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
                if t.get(*id).is_some_and(|s| s.labels.fallback) {
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
        let (alg, op) = super::counters::describe(params);
        let fallback = dpacc_hw::fallback::runs_on_primary(&handle) == Some(false);
        let mut open = OpenSession {
            counters: SessionOpCounters::default(),
            handle,
            labels: SessionLabels {
                connection: self.connection.load(Ordering::Relaxed),
                id: 0,
                alg,
                op,
                fallback,
            },
        };
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
        let id = (u64::from(slot.gen) << 32) | idx as u64;
        open.labels.id = id;
        slot.session = Some(Arc::new(open));
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
        let old: Vec<Arc<OpenSession>> = {
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
mod label_tests {
    use super::*;
    use crate::crypto::test_driver::XorDriver;
    use dpacc_spec::{AeadAlg, ChainAuth, ChainOrder, CipherAlg, Direction, HashAlg, MacAlg};

    #[test]
    fn open_sessions_are_listed_with_labels_up_to_a_limit() {
        let t = SessionTable::new(8);
        t.begin_connection();
        t.begin_connection();
        let params = [
            SessionParams::Aead {
                alg: AeadAlg::AesGcm,
                key: &[1; 32],
                tag_len: 16,
                dir: Direction::Encrypt,
            },
            SessionParams::Aead {
                alg: AeadAlg::ChaCha20Poly1305,
                key: &[1; 32],
                tag_len: 16,
                dir: Direction::Decrypt,
            },
            SessionParams::Mac {
                alg: MacAlg::Hmac(HashAlg::Sha256),
                key: &[1; 32],
                digest_len: 32,
            },
            SessionParams::Hash {
                alg: HashAlg::Sha512,
                digest_len: 64,
            },
            SessionParams::Cipher {
                alg: CipherAlg::AesCtr,
                key: &[1; 24],
                dir: Direction::Decrypt,
            },
            SessionParams::Chain {
                order: ChainOrder::CipherThenHash,
                cipher: CipherAlg::AesCbc,
                cipher_key: &[1; 16],
                dir: Direction::Encrypt,
                auth: ChainAuth::Mac(MacAlg::Hmac(HashAlg::Sha1)),
                auth_key: &[2; 20],
                digest_len: 12,
            },
        ];
        let ids: Vec<u64> = params
            .iter()
            .map(|p| t.create(&XorDriver, p).unwrap())
            .collect();
        let list = t.list(usize::MAX);
        let got: Vec<(u64, u64, &str, &str)> = list
            .sessions
            .iter()
            .map(|s| {
                (
                    s.labels.connection,
                    s.labels.id,
                    s.labels.alg.as_str(),
                    s.labels.op,
                )
            })
            .collect();
        let names = [
            ("aes-256-gcm", "encrypt"),
            ("chacha20-poly1305", "decrypt"),
            ("hmac-sha256", "mac"),
            ("sha512", "hash"),
            ("aes-192-ctr", "decrypt"),
            ("aes-128-cbc+hmac-sha1", "encrypt"),
        ];
        let want: Vec<(u64, u64, &str, &str)> = ids
            .iter()
            .zip(names)
            .map(|(&id, (a, o))| (2, id, a, o))
            .collect();
        assert_eq!(got, want);
        assert_eq!(list.total, 6);
        let first = t.list(2);
        assert_eq!((first.total, first.sessions.len()), (6, 2));
        t.clear();
        assert_eq!(t.list(10), Default::default());
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
