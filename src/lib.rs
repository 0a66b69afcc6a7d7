//! dpacc umbrella crate: re-exports the member crates so end-to-end tests and benches can use
//! one name. See the README for the architecture.

pub use dpacc_backend as backend;
pub use dpacc_guest as guest;
pub use dpacc_hw as hw;
pub use dpacc_spec as spec;
pub use dpacc_sw as sw;
