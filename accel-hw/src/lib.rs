//! dpacc-hw (stub; filled by later issues).
