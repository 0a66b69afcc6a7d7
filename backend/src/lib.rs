//! dpacc-backend (stub; filled by later issues).
