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

pub use fallback::FallbackDriver;
pub use plugin::{PluginDriver, PluginError};
pub use select::{open_driver, DriverSpec, DriverSpecError, SelectError, DRIVER_HELP};
