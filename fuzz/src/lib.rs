//! Input formats of the fuzz targets, shared by the targets (decoding) and `make_seeds`
//! (encoding the seed corpora in `fuzz/corpus/`). Plain byte layouts rather than `arbitrary`
//! so that seeds can carry exact protocol bytes (valid checksums, ring layouts, messages)
//! for the fuzzer to mutate. All integers little endian; missing bytes read as zero.

/// Reads an input front to back.
pub struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Over `b`.
    pub fn new(b: &'a [u8]) -> Self {
        Self { b }
    }

    /// `n` bytes (fewer at the end).
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (a, rest) = self.b.split_at(n.min(self.b.len()));
        self.b = rest;
        a
    }

    fn int<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        let s = self.take(N);
        a[..s.len()].copy_from_slice(s);
        a
    }

    /// One byte.
    pub fn u8(&mut self) -> u8 {
        self.int::<1>()[0]
    }

    /// A `u16`.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.int())
    }

    /// A `u32`.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.int())
    }

    /// A length-prefixed (`u16`) chunk.
    pub fn chunk(&mut self) -> &'a [u8] {
        let n = usize::from(self.u16());
        self.take(n)
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        self.take(self.b.len())
    }

    /// Nothing left.
    pub fn is_empty(&self) -> bool {
        self.b.is_empty()
    }
}

/// Builds an input.
#[derive(Default)]
pub struct Writer(pub Vec<u8>);

impl Writer {
    /// A byte.
    pub fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }

    /// A `u16`.
    pub fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// A `u32`.
    pub fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Raw bytes.
    pub fn bytes(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }

    /// A length-prefixed (`u16`) chunk.
    pub fn chunk(self, b: &[u8]) -> Self {
        self.u16(b.len() as u16).bytes(b)
    }
}

/// `vhost_user_session` operation codes: each is `op u8 | chunk` (u16 length + data).
pub mod session_op {
    /// A message: `request u8 | flags u8 | fd count u8 | fd kinds (0 memory, 1 eventfd,
    /// 2 pipe) | payload`.
    pub const MSG: u8 = 0;
    /// Write into guest memory: `offset u32 | data`.
    pub const WRITE: u8 = 1;
    /// Signal eventfd number `u8`.
    pub const KICK: u8 = 2;
    /// Truncate guest memory to `u32` bytes.
    pub const SHRINK: u8 = 3;
}

/// The frontend virtual address the session seeds map guest-physical 0 at.
pub const SESSION_UA: u64 = 0x7f00_0000_0000;
