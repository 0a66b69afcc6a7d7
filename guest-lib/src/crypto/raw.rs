//! Descriptor-level access to the queues (feature `testing`): post any chain and see what the
//! device makes of it.

use std::time::Duration;

use super::device::{lock, CryptoDevice};
use super::queue::{wait_used, Queue, RAW_TOKEN};
use crate::error::{Error, Result};
use crate::virtq::{CompletionMode, Notifier, RawDesc, SplitQueue, UsedElem};

impl CryptoDevice {
    /// Raw access to the control queue (testing API), see [`RawQueue`].
    pub fn with_raw_ctrl<R>(&self, f: impl FnOnce(&mut RawQueue<'_>) -> R) -> R {
        let mut c = lock(&self.inner.ctrl);
        let c = &mut *c;
        let mut raw = RawQueue {
            vq: &mut c.vq,
            notifier: &*c.notifier,
            timeout: self.inner.opts.timeout,
            mode: CompletionMode::Interrupt,
        };
        f(&mut raw)
    }
}

impl Queue {
    /// Raw access to this queue (testing API), see [`RawQueue`]. Fails while crypto operations
    /// are in flight on it.
    pub fn raw(&mut self) -> Result<RawQueue<'_>> {
        if self.in_flight() != 0 {
            return Err(Error::InvalidArgument(
                "raw access with operations in flight",
            ));
        }
        let timeout = self.dev.opts.timeout;
        let mode = self.dev.opts.completion;
        let st = self.st();
        Ok(RawQueue {
            vq: &mut st.vq,
            notifier: &*st.notifier,
            timeout,
            mode,
        })
    }
}

/// Raw descriptor-level access to a queue (**testing API**, feature `testing`): post any chain
/// (bogus addresses, lengths, orders, flags) and see what the device returns. The used-ring
/// checks still apply, so a misbehaving device is reported, not trusted.
pub struct RawQueue<'a> {
    vq: &'a mut SplitQueue,
    notifier: &'a dyn Notifier,
    timeout: Duration,
    mode: CompletionMode,
}

impl RawQueue<'_> {
    /// Adds `descs` as one chain (`NEXT` links are set by the queue), publishes it and kicks.
    /// Returns the head descriptor index.
    ///
    /// # Safety
    /// Writable descriptors make the device write wherever they point: they must point outside
    /// the shared region, or only at memory nobody reads or writes until the chain is used
    /// (e.g. [`DmaBuf`](crate::DmaBuf)s you own and leave alone meanwhile, and never at the rings).
    pub unsafe fn post(&mut self, descs: &[RawDesc]) -> Result<u16> {
        let head = self.vq.add(descs, RAW_TOKEN)?;
        if self.vq.publish() {
            self.notifier.kick()?;
        }
        Ok(head)
    }

    /// Kicks the device unconditionally.
    pub fn kick(&mut self) -> Result<()> {
        self.notifier.kick()
    }

    /// Takes one used entry if there is one.
    pub fn try_reap(&mut self) -> Result<Option<UsedElem>> {
        self.vq.reap()
    }

    /// Waits for the next used entry (within the device's timeout).
    pub fn wait(&mut self) -> Result<UsedElem> {
        loop {
            wait_used(self.vq, self.notifier, self.mode, self.timeout)?;
            if let Some(u) = self.vq.reap()? {
                return Ok(u);
            }
        }
    }

    /// Chains posted and not yet used.
    pub fn in_flight(&self) -> u16 {
        self.vq.in_flight()
    }

    /// Free descriptors.
    pub fn num_free(&self) -> u16 {
        self.vq.num_free()
    }
}
