//! # dpacc-hw: hardware crypto drivers
//!
//! - [`plugin`]: the vendor plug-in loader (C ABI in `accel-hw/include/dpacc_vendor.h`,
//!   a worked example in `accel-hw/sample-plugin/`, guide in `docs/vendor-drivers.md`).
//! - [`fallback`]: per-algorithm fallback to the software driver.
//! - [`select`]: `--driver sw|afalg|plugin:PATH`.

#![deny(missing_docs)]

pub mod fallback;
pub mod plugin;
pub mod select;

pub use fallback::FallbackDriver;
pub use plugin::{PluginDriver, PluginError};
pub use select::{open_driver, DriverSpec, SelectError, DRIVER_HELP};

use std::sync::Arc;

use dpacc_spec::CryptoDriver;

/// The AF_ALG driver, when this build has one.
fn afalg_driver() -> Result<Arc<dyn CryptoDriver>, String> {
    Err("the AF_ALG driver is not part of this build yet".into())
}
