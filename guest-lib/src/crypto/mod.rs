//! The look-aside side of the library: a driver for a virtio-crypto device.
//!
//! - `device`: how to connect ([`Options`]), bring-up, the [`CryptoDevice`] handle.
//! - `layout`: the per-request slots and the control scratch area in the shared region.
//! - `control`: session create and destroy (control queue, or in-band on a data queue).
//! - `session`: [`Session`] and its synchronous conveniences.
//! - `op`: operations ([`Op`], [`OpBufs`], [`Completion`]), their checks and encoding.
//! - [`request`]: the bytes of a data request for a session's operation.
//! - `queue`: a data queue ([`Queue`]: push, flush, poll, wait).
//! - `raw` (feature `testing`): descriptor-level access (`RawQueue`).

mod control;
mod device;
mod layout;
mod op;
mod pacing;
mod queue;
#[cfg(feature = "testing")]
mod raw;
pub mod request;
mod session;

pub use device::{CryptoDevice, Options, SessionControl};
pub use op::{ct_eq, Completion, Op, OpBufs};
pub use queue::{Queue, Rejected};
#[cfg(feature = "testing")]
pub use raw::RawQueue;
pub use session::Session;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DmaBuf;

    #[test]
    fn constant_time_compare() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
        assert!(ct_eq(b"", b""));
    }

    #[test]
    fn shared_memory_type_is_send_sync() {
        fn ok<T: Send + Sync>() {}
        ok::<crate::mem::SharedMemory>();
        ok::<CryptoDevice>();
        ok::<Session>();
        fn send<T: Send>() {}
        send::<Queue>();
        send::<DmaBuf>();
    }
}
