//! # dpacc-hw: hardware crypto drivers
//!
//! - [`afalg`]: the Linux kernel crypto API (AF_ALG) with asynchronous submission (AIO).
//! - [`plugin`]: the vendor plug-in loader (C ABI in `accel-hw/include/dpacc_vendor.h`,
//!   a worked example in `accel-hw/sample-plugin/`, guide in `docs/vendor-drivers.md`).
//! - [`fallback`]: per-algorithm fallback to the software driver.
//! - [`select`]: `--driver sw|afalg|plugin:PATH`.

#![deny(missing_docs)]

pub mod afalg;
pub mod fallback;
pub mod plugin;
pub mod select;

/// Moves completions decided without the hardware (refused at submission, bad session) from
/// `ready` into the front of `out`, oldest first; returns how many. Both hardware queues answer
/// these before they reap the hardware's own.
pub(crate) fn take_ready(
    ready: &mut std::collections::VecDeque<dpacc_spec::Completion>,
    out: &mut [dpacc_spec::Completion],
) -> usize {
    let n = out.len().min(ready.len());
    for (o, c) in out.iter_mut().zip(ready.drain(..n)) {
        *o = c;
    }
    n
}

pub use fallback::FallbackDriver;
pub use plugin::{PluginDriver, PluginError};
pub use select::{open_driver, DriverSpec, DriverSpecError, SelectError, DRIVER_HELP};

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use dpacc_spec::{Completion, CryptoError};

    use super::take_ready;

    fn c(user_data: u64) -> Completion {
        Completion {
            user_data,
            result: Err(CryptoError::InvalidSession),
        }
    }

    #[test]
    fn ready_completions_leave_oldest_first_and_only_as_many_as_fit() {
        let mut ready: VecDeque<_> = [c(1), c(2), c(3)].into();
        let mut out = [Completion::default(); 2];
        assert_eq!(take_ready(&mut ready, &mut out), 2);
        assert_eq!([out[0].user_data, out[1].user_data], [1, 2]);
        assert_eq!(take_ready(&mut ready, &mut out), 1);
        assert_eq!(out[0].user_data, 3);
        assert_eq!(take_ready(&mut ready, &mut out), 0);
    }
}
