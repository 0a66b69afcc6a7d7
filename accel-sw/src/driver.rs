//! [`SwDriver`]: the always-available software [`CryptoDriver`].

use std::sync::Arc;

use dpacc_spec::{
    Capabilities, CryptoDriver, CryptoError, CryptoQueue, SessionHandle, SessionParams,
};

use crate::queue::SwQueue;
use crate::session::SwSession;

/// The software crypto driver (name `sw`): everything in [`Capabilities::software`], computed
/// synchronously on the calling thread.
#[derive(Clone, Copy, Debug, Default)]
pub struct SwDriver;

impl SwDriver {
    /// A software driver.
    pub fn new() -> Self {
        Self
    }
}

impl CryptoDriver for SwDriver {
    fn name(&self) -> &str {
        "sw"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::software()
    }

    fn create_session(&self, params: &SessionParams<'_>) -> Result<SessionHandle, CryptoError> {
        if !self.capabilities().supports(params) {
            return Err(CryptoError::Unsupported);
        }
        Ok(Arc::new(SwSession::new(params)?))
    }

    fn open_queue(&self, depth: usize) -> Result<Box<dyn CryptoQueue>, CryptoError> {
        Ok(Box::new(SwQueue::new(depth)?))
    }
}
