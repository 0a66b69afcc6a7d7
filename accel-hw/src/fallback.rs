//! Per-algorithm fallback: sessions go to the primary driver when it can run them, else to the
//! secondary (dpacc's software driver), so a guest sees the union of both.

use std::any::Any;
use std::mem::ManuallyDrop;
use std::os::fd::RawFd;
use std::sync::Arc;

use dpacc_spec::{
    Capabilities, Completion, CryptoDriver, CryptoError, CryptoOp, CryptoQueue, DriverSession,
    SessionHandle, SessionInfo, SessionParams,
};

/// A primary driver backed by a secondary one for what the primary lacks.
pub struct FallbackDriver {
    primary: Arc<dyn CryptoDriver>,
    secondary: Arc<dyn CryptoDriver>,
    name: String,
}

impl std::fmt::Debug for FallbackDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FallbackDriver")
            .field("name", &self.name)
            .finish()
    }
}

impl FallbackDriver {
    /// `primary` first, `secondary` for every session the primary cannot create.
    pub fn new(primary: Arc<dyn CryptoDriver>, secondary: Arc<dyn CryptoDriver>) -> Self {
        let name = format!("{}+{}", primary.name(), secondary.name());
        Self {
            primary,
            secondary,
            name,
        }
    }
}

/// A session of either driver, remembering which.
struct FallbackSession {
    inner: SessionHandle,
    primary: bool,
}

impl DriverSession for FallbackSession {
    fn info(&self) -> SessionInfo {
        self.inner.info()
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl FallbackSession {
    /// Whether the primary driver holds this session (for tests and logs).
    fn on_primary(&self) -> bool {
        self.primary
    }
}

/// Whether `session` (made by a [`FallbackDriver`]) runs on the primary driver.
pub fn runs_on_primary(session: &SessionHandle) -> Option<bool> {
    session
        .as_any()
        .downcast_ref::<FallbackSession>()
        .map(FallbackSession::on_primary)
}

impl CryptoDriver for FallbackDriver {
    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> Capabilities {
        self.primary
            .capabilities()
            .union(&self.secondary.capabilities())
    }

    fn create_session(&self, params: &SessionParams<'_>) -> Result<SessionHandle, CryptoError> {
        if self.primary.capabilities().supports(params) {
            match self.primary.create_session(params) {
                Ok(inner) => {
                    return Ok(Arc::new(FallbackSession {
                        inner,
                        primary: true,
                    }))
                }
                // The primary lacks this variant (a key size, a chain): try the secondary.
                Err(CryptoError::Unsupported) => {}
                Err(e) => return Err(e),
            }
        }
        let inner = self.secondary.create_session(params)?;
        Ok(Arc::new(FallbackSession {
            inner,
            primary: false,
        }))
    }

    fn open_queue(&self, depth: usize) -> Result<Box<dyn CryptoQueue>, CryptoError> {
        Ok(Box::new(FallbackQueue {
            primary: self.primary.open_queue(depth)?,
            secondary: self.secondary.open_queue(depth)?,
            scratch: Vec::with_capacity(64),
        }))
    }
}

/// Both drivers' queues for one worker.
struct FallbackQueue {
    primary: Box<dyn CryptoQueue>,
    secondary: Box<dyn CryptoQueue>,
    scratch: Vec<CryptoOp<'static>>,
}

/// Reuses an empty op vector's allocation under another lifetime.
fn recycle<'a, 'b>(v: Vec<CryptoOp<'a>>) -> Vec<CryptoOp<'b>> {
    let mut v = ManuallyDrop::new(v);
    v.clear();
    // SAFETY: the vector is empty, and `CryptoOp<'a>` and `CryptoOp<'b>` differ only in a
    // lifetime, so they have the same layout; the allocation is handed over exactly once.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast::<CryptoOp<'b>>(), 0, v.capacity()) }
}

/// Which queue an op belongs to: `Some(primary?)`, or None for a foreign session.
fn route<'a>(op: &CryptoOp<'a>) -> Option<(bool, &'a SessionHandle)> {
    op.session
        .as_any()
        .downcast_ref::<FallbackSession>()
        .map(|s| (s.primary, &s.inner))
}

impl CryptoQueue for FallbackQueue {
    unsafe fn enqueue(&mut self, ops: &[CryptoOp<'_>]) -> usize {
        let mut run = recycle(std::mem::take(&mut self.scratch));
        let mut i = 0;
        while i < ops.len() {
            let target = route(&ops[i]).map(|(p, _)| p);
            run.clear();
            let mut end = i;
            while end < ops.len() && route(&ops[end]).map(|(p, _)| p) == target {
                let op = &ops[end];
                match route(op) {
                    Some((_, inner)) => run.push(CryptoOp {
                        session: inner,
                        ..*op
                    }),
                    // A session from elsewhere: the secondary reports it as invalid.
                    None => run.push(*op),
                }
                end += 1;
            }
            let q = if target == Some(true) {
                &mut self.primary
            } else {
                &mut self.secondary
            };
            // SAFETY: the same operations (with the inner session) under our caller's promise.
            // A count past what was offered is not believed.
            let took = unsafe { q.enqueue(&run) }.min(run.len());
            i += took;
            if took < run.len() {
                break;
            }
        }
        self.scratch = recycle(run);
        i
    }

    fn dequeue(&mut self, out: &mut [Completion]) -> usize {
        // Counts are clamped to the room given: a primary claiming more than `out` holds
        // cannot make us slice past it.
        let n = self.primary.dequeue(out).min(out.len());
        n + self.secondary.dequeue(&mut out[n..]).min(out.len() - n)
    }

    fn in_flight(&self) -> usize {
        self.primary.in_flight() + self.secondary.in_flight()
    }

    fn notifier(&self) -> Option<RawFd> {
        // The secondary is the synchronous software driver: only the primary needs waking.
        self.primary
            .notifier()
            .or_else(|| self.secondary.notifier())
    }
}
