//! [`SlotChunks`]: storage by slab slot that grows without moving what it holds.
//!
//! Everything the flow tables keep per slot (the entries, each lane's counters, the links of
//! the priority order, the classifier and the timer wheel, the timeouts) used to be a `Vec`
//! that doubled as flows were installed. Doubling a vector on the heap copies every element:
//! at a million flows one install paid 15-20 ms (glibc puts big blocks on the heap once an
//! earlier free has raised its mmap threshold, so `realloc` copies instead of remapping).
//! Here the slots live in chunks of [`CHUNK`] elements; growing adds a chunk and never moves
//! an element. Slot `s` is element `s & (CHUNK - 1)` of chunk `s >> CHUNK_SHIFT`: one more
//! dependent load than a vector (the chunk's address, from a directory of a few hundred
//! pointers that stays in cache), and the same one bound check (the directory's: a chunk is a
//! fixed-size array, so the index inside it needs none).
//!
//! The directory itself is a `Vec` of chunk pointers: growing it moves pointers, not
//! elements (at 1 M slots, 245 of them). Readers never see it grow: the tables are changed
//! only under the lanes' write side ([`super::lanes::LaneLock`]), which waits until no lane
//! is inside a batch, exactly as the vectors' doubling did; `&mut self` is needed to grow.
//!
//! Elements not yet asked for hold the fill value given at creation (a new chunk is filled
//! with it), so growing to a slot needs no write beyond the new chunk.

use std::ops::{Index, IndexMut};

/// Log2 of the elements in a chunk. 4096: a chunk of 80-byte entries is 320 KiB and every
/// structure of a slot together adds ~0.6 MB at a chunk boundary (a fraction of a
/// millisecond to fill), and at most 4095 slots per structure are held ahead of use.
pub(crate) const CHUNK_SHIFT: u32 = 12;
/// Elements in a chunk.
pub(crate) const CHUNK: usize = 1 << CHUNK_SHIFT;
const MASK: usize = CHUNK - 1;

/// Elements of type `T` by slot, in chunks of [`CHUNK`].
pub(crate) struct SlotChunks<T> {
    chunks: Vec<Box<[T; CHUNK]>>,
    /// Slots asked for (the highest slot grown to, plus one).
    len: usize,
    /// What a slot holds before it is written.
    fill: fn() -> T,
}

impl<T> std::fmt::Debug for SlotChunks<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotChunks")
            .field("len", &self.len)
            .field("chunks", &self.chunks.len())
            .finish()
    }
}

impl<T> SlotChunks<T> {
    /// Empty (no chunk allocated); slots not yet written hold `fill()`.
    pub(crate) fn new(fill: fn() -> T) -> Self {
        Self {
            chunks: Vec::new(),
            len: 0,
            fill,
        }
    }

    /// Slots asked for ([`grow_to`](Self::grow_to), [`push`](Self::push)).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether no chunk is allocated.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Slots held (whole chunks): every slot below it may be read and written.
    #[inline]
    pub(crate) fn capacity(&self) -> usize {
        self.chunks.len() << CHUNK_SHIFT
    }

    /// Slot `i`, if held.
    #[inline]
    pub(crate) fn get(&self, i: usize) -> Option<&T> {
        self.chunks.get(i >> CHUNK_SHIFT).map(|c| &c[i & MASK])
    }

    /// Slot `i`, if held.
    #[inline]
    pub(crate) fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        self.chunks
            .get_mut(i >> CHUNK_SHIFT)
            .map(|c| &mut c[i & MASK])
    }
}

impl<T: Clone> SlotChunks<T> {
    /// Makes slots `0..n` exist (new ones hold the fill value), adding chunks as needed;
    /// nothing already held moves. A new chunk is one fill value, copied.
    pub(crate) fn grow_to(&mut self, n: usize) {
        while self.capacity() < n {
            let chunk = vec![(self.fill)(); CHUNK].into_boxed_slice();
            match chunk.try_into() {
                Ok(c) => self.chunks.push(c),
                Err(_) => unreachable!("a chunk is CHUNK elements"),
            }
        }
        self.len = self.len.max(n);
    }

    /// Puts `v` in the next slot ([`len`](Self::len)) and returns that slot.
    pub(crate) fn push(&mut self, v: T) -> usize {
        let s = self.len;
        self.grow_to(s + 1);
        self[s] = v;
        s
    }
}

impl<T> Index<usize> for SlotChunks<T> {
    type Output = T;

    /// Slot `i` (panics beyond [`capacity`](SlotChunks::capacity), as a vector's index).
    #[inline(always)]
    fn index(&self, i: usize) -> &T {
        &self.chunks[i >> CHUNK_SHIFT][i & MASK]
    }
}

impl<T> IndexMut<usize> for SlotChunks<T> {
    #[inline(always)]
    fn index_mut(&mut self, i: usize) -> &mut T {
        &mut self.chunks[i >> CHUNK_SHIFT][i & MASK]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Growing across chunk boundaries keeps every element where it was (same address and
    /// value), new slots hold the fill value, and reads beyond what is held are refused.
    #[test]
    fn growth_across_chunks_moves_nothing() {
        let mut v: SlotChunks<u32> = SlotChunks::new(|| u32::MAX);
        assert!(v.is_empty() && v.get(0).is_none());
        let mut firsts = Vec::new();
        for i in 0..(3 * CHUNK + 5) {
            assert_eq!(v.push(i as u32 * 3), i);
            if i % CHUNK == 0 {
                firsts.push(&v[i] as *const u32 as usize);
            }
        }
        assert_eq!(v.len(), 3 * CHUNK + 5);
        assert_eq!(v.capacity(), 4 * CHUNK);
        for (k, &addr) in firsts.iter().enumerate() {
            assert_eq!(
                &v[k * CHUNK] as *const u32 as usize,
                addr,
                "chunk {k} moved"
            );
        }
        for i in 0..v.len() {
            assert_eq!(v[i], i as u32 * 3);
        }
        assert_eq!(
            v.get(3 * CHUNK + 5),
            Some(&u32::MAX),
            "held, not yet written"
        );
        assert_eq!(v.get(4 * CHUNK), None);
        assert!(v.get_mut(4 * CHUNK).is_none());
        // Growing to a slot inside a held chunk allocates nothing; past it, one chunk.
        v.grow_to(4 * CHUNK);
        assert_eq!((v.len(), v.capacity()), (4 * CHUNK, 4 * CHUNK));
        v.grow_to(4 * CHUNK + 1);
        assert_eq!(v.capacity(), 5 * CHUNK);
        assert_eq!(v[4 * CHUNK], u32::MAX);
        // Shrinking requests do nothing.
        v.grow_to(1);
        assert_eq!(v.len(), 4 * CHUNK + 1);
        *v.get_mut(CHUNK - 1).unwrap() = 7;
        v[CHUNK] = 8;
        assert_eq!((v[CHUNK - 1], v[CHUNK]), (7, 8));
    }

    #[test]
    #[should_panic]
    fn an_index_beyond_the_chunks_panics_like_a_vector() {
        let mut v: SlotChunks<u64> = SlotChunks::new(|| 0);
        v.grow_to(1);
        let _ = v[CHUNK];
    }
}
