//! Walking scatter-gather lists: the byte range `offset..offset + len` of a `&[Seg]` seen as one
//! logical buffer, piece by piece, with no allocation.
//!
//! Every function here is `unsafe` for the same reason: it dereferences segment pointers, which
//! is only sound while the promise of [`CryptoQueue::enqueue`](dpacc_spec::CryptoQueue::enqueue)
//! holds (every segment valid and not accessed by anyone else). Callers check bounds first; the
//! walkers additionally stop at the end of the list, so a short list never reads out of bounds.

use dpacc_spec::Seg;

/// Calls `f(ptr, len)` for each contiguous piece of `offset..offset + len` in `segs`.
fn for_each_piece(
    segs: &[Seg<'_>],
    mut offset: usize,
    mut len: usize,
    mut f: impl FnMut(*mut u8, usize),
) {
    for s in segs {
        if len == 0 {
            return;
        }
        if offset >= s.len() {
            offset -= s.len();
            continue;
        }
        let n = (s.len() - offset).min(len);
        // `offset < s.len()`, so the pointer stays inside (or one past) the segment.
        f(s.ptr().wrapping_add(offset), n);
        offset = 0;
        len -= n;
    }
}

/// Copies `out.len()` bytes starting at `offset` of `segs` into `out`.
///
/// # Safety
/// Every segment of `segs` must be valid for reads, and none may overlap `out`.
pub(crate) unsafe fn gather(segs: &[Seg<'_>], offset: usize, out: &mut [u8]) {
    let mut at = 0;
    let len = out.len();
    for_each_piece(segs, offset, len, |p, n| {
        // SAFETY: `p..p+n` lies in a segment valid for reads (caller), `out[at..at+n]` is in
        // bounds because the pieces add up to at most `out.len()`, and the two do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(p, out.as_mut_ptr().add(at), n) };
        at += n;
    });
}

/// Copies `data` into `segs` starting at `offset`.
///
/// # Safety
/// Every segment of `segs` must be valid for writes, and none may overlap `data`.
pub(crate) unsafe fn scatter(segs: &[Seg<'_>], offset: usize, data: &[u8]) {
    let mut at = 0;
    for_each_piece(segs, offset, data.len(), |p, n| {
        // SAFETY: `p..p+n` lies in a writable segment (caller), `data[at..at+n]` is in bounds,
        // and the two do not overlap (caller).
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr().add(at), p, n) };
        at += n;
    });
}

/// Hands each contiguous piece of `offset..offset + len` of `segs` to `f` as a slice.
///
/// # Safety
/// Every segment of `segs` must be valid for reads, and nothing may write to them while `f`
/// runs.
pub(crate) unsafe fn for_each_slice(
    segs: &[Seg<'_>],
    offset: usize,
    len: usize,
    mut f: impl FnMut(&[u8]),
) {
    for_each_piece(segs, offset, len, |p, n| {
        // SAFETY: `p..p+n` lies in a segment valid for reads, with no writer (caller).
        f(unsafe { std::slice::from_raw_parts(p, n) })
    });
}

/// Copies `offset..offset + len` of `src` to the same range of `dst`. A no-op where both lists
/// describe the same memory (in place); overlapping pieces are moved, not copied.
///
/// # Safety
/// `src` must be valid for reads and `dst` for writes.
pub(crate) unsafe fn copy(src: &[Seg<'_>], dst: &[Seg<'_>], offset: usize, len: usize) {
    let (mut si, mut soff) = locate(src, offset);
    let (mut di, mut doff) = locate(dst, offset);
    let mut left = len;
    while left > 0 && si < src.len() && di < dst.len() {
        let (s, d) = (&src[si], &dst[di]);
        let n = (s.len() - soff).min(d.len() - doff).min(left);
        let (sp, dp) = (s.ptr().wrapping_add(soff), d.ptr().wrapping_add(doff));
        if sp != dp && n > 0 {
            // SAFETY: both ranges lie inside their segments (n is bounded by both remainders),
            // which are valid for reading/writing (caller); `copy` tolerates overlap.
            unsafe { std::ptr::copy(sp, dp, n) };
        }
        left -= n;
        soff += n;
        doff += n;
        if soff == s.len() {
            si += 1;
            soff = 0;
        }
        if doff == d.len() {
            di += 1;
            doff = 0;
        }
    }
}

/// The index of the segment holding byte `offset`, and the offset inside it (skipping empty
/// segments); `(segs.len(), 0)` past the end.
fn locate(segs: &[Seg<'_>], mut offset: usize) -> (usize, usize) {
    for (i, s) in segs.iter().enumerate() {
        if offset < s.len() {
            return (i, offset);
        }
        offset -= s.len();
    }
    (segs.len(), 0)
}

/// The one non-empty segment of `segs`, if the list (ignoring empty segments) is contiguous in a
/// single segment.
pub(crate) fn single<'a>(segs: &[Seg<'a>]) -> Option<Seg<'a>> {
    let mut it = segs.iter().filter(|s| !s.is_empty());
    match (it.next(), it.next()) {
        (Some(s), None) => Some(*s),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_scatter_across_uneven_segments() {
        let mut a = [0u8; 3];
        let mut b = [0u8; 0];
        let mut c = [0u8; 5];
        let segs = [
            Seg::from_mut(&mut a),
            Seg::from_mut(&mut b),
            Seg::from_mut(&mut c),
        ];
        let data = [1, 2, 3, 4, 5, 6];
        // SAFETY: the segments borrow live local arrays, disjoint from `data`/`out`.
        unsafe { scatter(&segs, 1, &data) };
        let mut out = [0u8; 8];
        // SAFETY: as above.
        unsafe { gather(&segs, 0, &mut out) };
        assert_eq!(out, [0, 1, 2, 3, 4, 5, 6, 0]);
        let mut sum = Vec::new();
        // SAFETY: as above, nothing writes meanwhile.
        unsafe { for_each_slice(&segs, 2, 4, |s| sum.extend_from_slice(s)) };
        assert_eq!(sum, [2, 3, 4, 5]);
        assert!(single(&segs).is_none());
    }
}
