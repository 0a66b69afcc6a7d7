//! The software queue: operations complete inside `enqueue`, completions wait in a fixed ring.

use dpacc_spec::{sg_len, Completion, CryptoError, CryptoOp, CryptoQueue};

use crate::aead::AeadScratch;
use crate::session::{Kind, SwSession};

/// Size of the per-queue bounce buffer for scattered AEAD data (and the chunk size of scattered
/// CBC/CTR): the largest request the driver advertises.
pub const DATA_BOUNCE_LEN: usize = 1 << 20;
/// Size of the per-queue bounce buffer for scattered AEAD AAD.
pub const AAD_BOUNCE_LEN: usize = 64 << 10;

/// A queue of the software driver, for one worker thread.
///
/// Everything an operation needs is allocated by [`SwDriver::open_queue`](crate::SwDriver):
/// the completion ring (`depth` entries) and the bounce buffers. `enqueue` stops taking
/// operations when `depth` completions are waiting to be dequeued.
pub struct SwQueue {
    ring: Box<[Completion]>,
    head: usize,
    count: usize,
    data: Box<[u8]>,
    aad: Box<[u8]>,
    /// This queue's id for the sessions' incremental AES-GCM contexts: the first queue to run
    /// a session's operation owns its context (`gcm_stream.rs`).
    owner: u64,
}

impl SwQueue {
    /// A queue holding up to `depth` (≥ 1) completions.
    pub fn new(depth: usize) -> Result<Self, CryptoError> {
        if depth == 0 {
            return Err(CryptoError::BadRequest);
        }
        Ok(Self {
            ring: vec![Completion::default(); depth].into_boxed_slice(),
            head: 0,
            count: 0,
            data: vec![0u8; DATA_BOUNCE_LEN].into_boxed_slice(),
            aad: vec![0u8; AAD_BOUNCE_LEN].into_boxed_slice(),
            owner: crate::gcm_stream::owner_id(),
        })
    }

    /// Runs one operation to its result.
    ///
    /// # Safety
    /// The contract of [`CryptoQueue::enqueue`] for `op`.
    unsafe fn process(&mut self, op: &CryptoOp<'_>) -> Result<(), CryptoError> {
        let s = op
            .session
            .as_any()
            .downcast_ref::<SwSession>()
            .ok_or(CryptoError::InvalidSession)?;
        match &s.kind {
            Kind::Cipher(k) => {
                let len = sg_len(op.src);
                let state = k.check(&op.iv, len)?;
                if sg_len(op.dst) < len {
                    return Err(CryptoError::BufferTooSmall);
                }
                // SAFETY: the enqueue contract gives valid segments; the scratch is ours.
                unsafe { k.run(state, op.src, op.dst, 0, len, &mut self.data) };
                Ok(())
            }
            Kind::Auth { key, digest_len } => {
                if sg_len(op.digest) < *digest_len {
                    return Err(CryptoError::BufferTooSmall);
                }
                // SAFETY: the enqueue contract gives valid segments.
                unsafe { key.run(&[], op.src, 0, sg_len(op.src), op.digest, *digest_len) };
                Ok(())
            }
            Kind::Aead(k) => {
                let scratch = AeadScratch {
                    data: &mut self.data,
                    aad: &mut self.aad,
                    owner: self.owner,
                };
                // SAFETY: the enqueue contract gives valid segments; the scratch is ours.
                unsafe { k.run(&op.iv, op.src, op.dst, op.aad, op.digest, scratch) }
            }
            Kind::Chain(k) => {
                // SAFETY: the enqueue contract gives valid segments; the scratch is ours.
                unsafe {
                    k.run(
                        &op.iv,
                        &op.chain,
                        op.src,
                        op.dst,
                        op.aad,
                        op.digest,
                        &mut self.data,
                    )
                }
            }
        }
    }
}

impl CryptoQueue for SwQueue {
    unsafe fn enqueue(&mut self, ops: &[CryptoOp<'_>]) -> usize {
        let cap = self.ring.len();
        let take = ops.len().min(cap - self.count);
        for op in &ops[..take] {
            // SAFETY: forwarded from our caller.
            let result = unsafe { self.process(op) };
            let tail = (self.head + self.count) % cap;
            self.ring[tail] = Completion {
                user_data: op.user_data,
                result,
            };
            self.count += 1;
        }
        take
    }

    fn dequeue(&mut self, out: &mut [Completion]) -> usize {
        let cap = self.ring.len();
        let n = out.len().min(self.count);
        for slot in &mut out[..n] {
            *slot = self.ring[self.head];
            self.head = (self.head + 1) % cap;
        }
        self.count -= n;
        n
    }

    fn in_flight(&self) -> usize {
        self.count
    }
}
