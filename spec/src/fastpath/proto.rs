//! The inline control protocol (frames with EtherType [`ETHERTYPE`]); filled in by the inline
//! issue. See `spec/fastpath.md`.

/// IEEE 802 local experimental EtherType 1, used for dpacc control frames.
pub const ETHERTYPE: u16 = 0x88B5;
