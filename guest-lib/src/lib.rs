//! dpacc-guest (stub; filled by later issues).
