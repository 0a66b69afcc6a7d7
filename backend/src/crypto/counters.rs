//! Counters of the crypto device as the host operator reads them: per data queue (written by
//! its worker only, a load and a store per batch), per open session (added to once per batch
//! by each worker whose batch used it), and for the session table.

use std::sync::atomic::{AtomicU64, Ordering};

use dpacc_spec::{AeadAlg, ChainAuth, CipherAlg, Direction, HashAlg, MacAlg, SessionParams};

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

    fn snapshot(&self) -> OpCount {
        let r = Ordering::Relaxed;
        OpCount {
            operations: self.ok.load(r),
            errors: self.errors.load(r),
            bytes: self.bytes.load(r),
        }
    }
}

/// What one data queue, or one session, did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpCount {
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

    pub(crate) fn queues(&self) -> Vec<OpCount> {
        self.queues.iter().map(QueueCounters::snapshot).collect()
    }
}

/// One open session's counters, on a cache line of their own. Several queues may run the same
/// session, so they are added to atomically, but once per batch that used the session (the
/// worker sums the batch's requests first), never per request.
#[repr(align(64))]
#[derive(Debug, Default)]
pub(crate) struct SessionOpCounters {
    ok: AtomicU64,
    errors: AtomicU64,
    bytes: AtomicU64,
}

impl SessionOpCounters {
    /// Adds a batch's requests on this session (as [`QueueCounters::count`]).
    pub(crate) fn add(&self, ok: u64, errors: u64, bytes: u64) {
        let r = Ordering::Relaxed;
        if ok != 0 {
            self.ok.fetch_add(ok, r);
        }
        if errors != 0 {
            self.errors.fetch_add(errors, r);
        }
        self.bytes.fetch_add(bytes, r);
    }

    pub(crate) fn snapshot(&self) -> OpCount {
        let r = Ordering::Relaxed;
        OpCount {
            operations: self.ok.load(r),
            errors: self.errors.load(r),
            bytes: self.bytes.load(r),
        }
    }
}

/// What tells an operator which open session a series is (no key material).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionLabels {
    /// The frontend connection that created it: 1 for the daemon's first, counting up.
    pub connection: u64,
    /// The session id the frontend uses.
    pub id: u64,
    /// The algorithm, as `dpacc bench --alg` names it (`aes-256-gcm`, `hmac-sha256`,
    /// `aes-128-cbc+hmac-sha1`, ...).
    pub alg: String,
    /// `encrypt`, `decrypt`, `hash` or `mac`.
    pub op: &'static str,
    /// Runs on the software fallback because the accelerator driver lacks the algorithm.
    pub fallback: bool,
}

/// An open session and what it did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionStat {
    /// Which session.
    pub labels: SessionLabels,
    /// Requests on it completed since it was created.
    pub count: OpCount,
}

/// Open sessions, the first of them listed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionList {
    /// Sessions open in all.
    pub total: u64,
    /// The first of them, by slot.
    pub sessions: Vec<SessionStat>,
}

fn hash_name(h: HashAlg) -> &'static str {
    match h {
        HashAlg::Sha1 => "sha1",
        HashAlg::Sha256 => "sha256",
        HashAlg::Sha384 => "sha384",
        HashAlg::Sha512 => "sha512",
    }
}

fn mac_name(m: MacAlg) -> String {
    match m {
        MacAlg::Hmac(h) => format!("hmac-{}", hash_name(h)),
    }
}

fn cipher_name(c: CipherAlg, key_len: usize) -> String {
    let mode = match c {
        CipherAlg::AesCbc => "cbc",
        CipherAlg::AesCtr => "ctr",
    };
    format!("aes-{}-{mode}", key_len * 8)
}

fn dir_name(d: Direction) -> &'static str {
    match d {
        Direction::Encrypt => "encrypt",
        Direction::Decrypt => "decrypt",
    }
}

/// The algorithm name and operation of a session (the `alg` and `op` of [`SessionLabels`]).
pub(crate) fn describe(p: &SessionParams<'_>) -> (String, &'static str) {
    match *p {
        SessionParams::Cipher { alg, key, dir } => (cipher_name(alg, key.len()), dir_name(dir)),
        SessionParams::Hash { alg, .. } => (hash_name(alg).into(), "hash"),
        SessionParams::Mac { alg, .. } => (mac_name(alg), "mac"),
        SessionParams::Aead { alg, key, dir, .. } => (
            match alg {
                AeadAlg::AesGcm => format!("aes-{}-gcm", key.len() * 8),
                AeadAlg::ChaCha20Poly1305 => "chacha20-poly1305".into(),
            },
            dir_name(dir),
        ),
        SessionParams::Chain {
            cipher,
            cipher_key,
            dir,
            auth,
            ..
        } => {
            let auth = match auth {
                ChainAuth::Hash(h) => hash_name(h).into(),
                ChainAuth::Mac(m) => mac_name(m),
            };
            (
                format!("{}+{auth}", cipher_name(cipher, cipher_key.len())),
                dir_name(dir),
            )
        }
    }
}
