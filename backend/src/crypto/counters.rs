//! Counters of the crypto device as the host operator reads them: per data queue (written by
//! its worker only, a load and a store per batch) and for the session table.

use std::sync::atomic::{AtomicU64, Ordering};

/// One data queue's counters, on a cache line of its own.
#[repr(align(64))]
#[derive(Debug, Default)]
pub(crate) struct QueueCounters {
    ok: AtomicU64,
    errors: AtomicU64,
    bytes: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

impl QueueCounters {
    /// Counts a batch: `ok` requests completed with status OK, `errors` with another status
    /// (or none), `bytes` of their buffers. Only the queue's worker calls this.
    pub(crate) fn count(&self, ok: u64, errors: u64, bytes: u64) {
        bump(&self.ok, ok);
        bump(&self.errors, errors);
        bump(&self.bytes, bytes);
    }

    fn snapshot(&self) -> QueueCount {
        let r = Ordering::Relaxed;
        QueueCount {
            operations: self.ok.load(r),
            errors: self.errors.load(r),
            bytes: self.bytes.load(r),
        }
    }
}

/// What one data queue did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueCount {
    /// Requests completed with status OK.
    pub operations: u64,
    /// Requests completed with an error status (bad request, unknown session, driver error).
    pub errors: u64,
    /// Bytes of the requests' buffers (readable and writable).
    pub bytes: u64,
}

/// Session-table counters (any thread; atomic adds).
#[derive(Debug, Default)]
pub(crate) struct SessionCounters {
    pub(crate) created: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) closed: AtomicU64,
    pub(crate) fallbacks: AtomicU64,
}

/// What the session table did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionCount {
    /// Open now.
    pub open: u64,
    /// Most that may be open.
    pub max: u64,
    /// Created since start.
    pub created: u64,
    /// Creations refused (quota, bad parameters, driver).
    pub failed: u64,
    /// Closed (by the frontend, or when it went away).
    pub closed: u64,
    /// Created on the software fallback because the accelerator driver lacks the algorithm.
    pub fallbacks: u64,
}

impl SessionCounters {
    pub(crate) fn snapshot(&self, open: u64, max: u64) -> SessionCount {
        let r = Ordering::Relaxed;
        SessionCount {
            open,
            max,
            created: self.created.load(r),
            failed: self.failed.load(r),
            closed: self.closed.load(r),
            fallbacks: self.fallbacks.load(r),
        }
    }
}

/// The device's counters: per data queue.
#[derive(Debug)]
pub(crate) struct CryptoCounters {
    pub(crate) queues: Box<[QueueCounters]>,
}

impl CryptoCounters {
    pub(crate) fn new(queues: usize) -> Self {
        Self {
            queues: (0..queues).map(|_| QueueCounters::default()).collect(),
        }
    }

    pub(crate) fn queues(&self) -> Vec<QueueCount> {
        self.queues.iter().map(QueueCounters::snapshot).collect()
    }
}
