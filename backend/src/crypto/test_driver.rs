//! A tiny synchronous test driver: an XOR "cipher" and constant digests. Tests only.

use std::any::Any;

use dpacc_spec::{
    sg_len, Capabilities, Completion, CryptoDriver, CryptoError, CryptoOp, CryptoQueue,
    DriverSession, SessionHandle, SessionInfo, SessionParams,
};
use std::sync::Arc;

pub(crate) struct XorDriver;

struct XorSession {
    info: SessionInfo,
    k: u8,
}

impl DriverSession for XorSession {
    fn info(&self) -> SessionInfo {
        self.info
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl CryptoDriver for XorDriver {
    fn name(&self) -> &str {
        "xor"
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::software()
    }
    fn create_session(&self, p: &SessionParams<'_>) -> Result<SessionHandle, CryptoError> {
        let p = p.validated()?;
        let k = match p {
            SessionParams::Cipher { key, .. }
            | SessionParams::Aead { key, .. }
            | SessionParams::Mac { key, .. } => key.first().copied().unwrap_or(0),
            SessionParams::Chain { cipher_key, .. } => cipher_key[0],
            SessionParams::Hash { .. } => 0,
        };
        Ok(Arc::new(XorSession { info: p.info(), k }))
    }
    fn open_queue(&self, depth: usize) -> Result<Box<dyn CryptoQueue>, CryptoError> {
        Ok(Box::new(XorQueue {
            done: Vec::with_capacity(depth),
        }))
    }
}

struct XorQueue {
    done: Vec<Completion>,
}

fn run(op: &CryptoOp<'_>) -> Result<(), CryptoError> {
    let s = op
        .session
        .as_any()
        .downcast_ref::<XorSession>()
        .ok_or(CryptoError::InvalidSession)?;
    let k = s.k ^ op.iv.as_slice().first().copied().unwrap_or(0);
    if !op.dst.is_empty() && sg_len(op.dst) < sg_len(op.src) {
        return Err(CryptoError::BufferTooSmall);
    }
    let mut di = op.dst.iter().flat_map(|d| {
        // SAFETY: test buffers; destinations are writable and not aliased during the op.
        unsafe { d.as_mut_slice() }.iter_mut()
    });
    for sseg in op.src {
        // SAFETY: as above.
        for b in unsafe { sseg.as_slice() } {
            if let Some(d) = di.next() {
                *d = *b ^ k;
            }
        }
    }
    if !matches!(
        s.info,
        SessionInfo::Aead {
            dir: dpacc_spec::Direction::Decrypt,
            ..
        }
    ) {
        for d in op.digest {
            // SAFETY: as above.
            unsafe { d.as_mut_slice() }.fill(0xd1);
        }
    }
    Ok(())
}

impl CryptoQueue for XorQueue {
    unsafe fn enqueue(&mut self, ops: &[CryptoOp<'_>]) -> usize {
        let n = ops.len().min(self.done.capacity() - self.done.len());
        for op in &ops[..n] {
            self.done.push(Completion {
                user_data: op.user_data,
                result: run(op),
            });
        }
        n
    }
    fn dequeue(&mut self, out: &mut [Completion]) -> usize {
        let n = out.len().min(self.done.len());
        for (o, c) in out.iter_mut().zip(self.done.drain(..n)) {
            *o = c;
        }
        n
    }
    fn in_flight(&self) -> usize {
        self.done.len()
    }
}

/// A queue over [`XorDriver`]'s that lies about counts: `enqueue` claims 1000 more operations
/// than it took, every other `dequeue` returns nothing (completions come later, as from an
/// asynchronous driver), and the others hand back one real completion followed by a repeat of
/// it and one nobody asked for, claiming more entries than `out` holds.
pub(crate) struct LyingQueue {
    inner: Box<dyn CryptoQueue>,
    calls: usize,
}

impl LyingQueue {
    pub(crate) fn new() -> Self {
        Self {
            inner: XorDriver.open_queue(64).expect("queue"),
            calls: 0,
        }
    }
}

impl CryptoQueue for LyingQueue {
    unsafe fn enqueue(&mut self, ops: &[CryptoOp<'_>]) -> usize {
        // SAFETY: forwarded from our caller.
        let took = unsafe { self.inner.enqueue(ops) };
        took + 1000
    }
    fn dequeue(&mut self, out: &mut [Completion]) -> usize {
        self.calls += 1;
        if self.calls % 2 == 1 || out.len() < 3 {
            return 0;
        }
        if self.inner.dequeue(&mut out[..1]) == 1 {
            out[1] = out[0];
            out[2] = Completion {
                user_data: 9999,
                result: Ok(()),
            };
        }
        out.len() + 7
    }
    fn in_flight(&self) -> usize {
        self.inner.in_flight()
    }
}
