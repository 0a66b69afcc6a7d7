//! software driver
