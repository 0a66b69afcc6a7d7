//! A copy whose whole destination cache lines are written with non-temporal stores.
//!
//! A normal store to a line the core does not hold first fetches the line for ownership (a
//! read of memory the copy is about to overwrite whole). A non-temporal ("streaming") store
//! of a whole 64-byte line needs no such read: the write-combining buffer collects the line
//! and sends it to memory. That is what fused ESP wants for a frame's ~22 lines of a guest
//! RX buffer (docs/performance.md, "ESP, pass r"). The price: the lines end up in memory,
//! not in this core's caches, so whoever reads the frame next misses (a guest on another
//! core would miss in our L1/L2 anyway and find it in the shared cache or memory instead).
//!
//! The lines only partly covered (the first and last) are written with normal stores, which
//! keeps bytes of the line outside the range untouched. Non-temporal stores are weakly
//! ordered: [`fence`] must run before anything that publishes the bytes (a used index).

/// Lines at or above this many bytes are worth streaming; shorter copies are plain.
const MIN_STREAM: usize = 256;

/// Copies `n` bytes from `src` to `dst`, the 64-byte lines wholly inside `dst..dst + n` with
/// non-temporal stores (where the CPU has them: SSE2 always on x86-64, AVX where detected),
/// the rest with normal stores. Call [`fence`] before publishing what was copied.
///
/// # Safety
/// `src` readable and `dst` writable for `n` bytes; the two ranges do not overlap.
#[inline]
pub(crate) unsafe fn copy_nt(dst: *mut u8, src: *const u8, n: usize) {
    #[cfg(target_arch = "x86_64")]
    if n >= MIN_STREAM {
        let head = dst.align_offset(64).min(n);
        let lines = (n - head) / 64;
        let tail = head + lines * 64;
        // SAFETY: `0..head` and `tail..n` lie in both ranges (caller), which do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(src, dst, head);
            if std::arch::is_x86_feature_detected!("avx") {
                x86::lines_avx(dst.add(head), src.add(head), lines);
            } else {
                x86::lines_sse2(dst.add(head), src.add(head), lines);
            }
            std::ptr::copy_nonoverlapping(src.add(tail), dst.add(tail), n - tail);
        }
        return;
    }
    // SAFETY: forwarded from the caller.
    unsafe { std::ptr::copy_nonoverlapping(src, dst, n) };
}

/// Orders the non-temporal stores of [`copy_nt`] before every later store (`sfence`): run it
/// before the store that tells another party the bytes are there.
#[inline]
pub(crate) fn fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `sfence` has no operands and touches no memory; SSE is baseline on x86-64.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{
        __m128i, __m256i, _mm256_loadu_si256, _mm256_stream_si256, _mm_loadu_si128,
        _mm_stream_si128,
    };

    /// Streams `lines` 64-byte lines from `src` to `dst` (64-byte aligned), 32 bytes a store.
    ///
    /// # Safety
    /// The CPU has AVX; `dst` 64-byte aligned and writable, `src` readable, for `lines * 64`
    /// bytes; the two do not overlap.
    #[target_feature(enable = "avx")]
    pub(super) unsafe fn lines_avx(dst: *mut u8, src: *const u8, lines: usize) {
        for i in 0..lines {
            // SAFETY: line `i` lies in both ranges (caller); `dst + 64 i` and `+ 32` are
            // 32-byte aligned (the streaming store's requirement); loads may be unaligned.
            unsafe {
                let s = src.add(i * 64);
                let d = dst.add(i * 64);
                let a = _mm256_loadu_si256(s.cast::<__m256i>());
                let b = _mm256_loadu_si256(s.add(32).cast::<__m256i>());
                _mm256_stream_si256(d.cast::<__m256i>(), a);
                _mm256_stream_si256(d.add(32).cast::<__m256i>(), b);
            }
        }
    }

    /// As [`lines_avx`], 16 bytes a store (SSE2, baseline on x86-64).
    ///
    /// # Safety
    /// As [`lines_avx`], without the AVX requirement.
    pub(super) unsafe fn lines_sse2(dst: *mut u8, src: *const u8, lines: usize) {
        for i in 0..lines * 4 {
            // SAFETY: 16-byte piece `i` lies in both ranges (caller); `dst + 16 i` is 16-byte
            // aligned (the streaming store's requirement).
            unsafe {
                let v = _mm_loadu_si128(src.add(i * 16).cast::<__m128i>());
                _mm_stream_si128(dst.add(i * 16).cast::<__m128i>(), v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_like_copy_from_slice_at_every_length_and_alignment() {
        let src: Vec<u8> = (0..2048 + 128).map(|i| (i * 7 + 3) as u8).collect();
        // A 64-byte aligned destination with room for every offset in a line.
        #[repr(C, align(64))]
        struct Buf([u8; 2048 + 128]);
        let mut dst = Box::new(Buf([0; 2048 + 128]));
        let mut want = Box::new(Buf([0; 2048 + 128]));
        for n in 0..=2048 {
            for d_off in 0..64 {
                for s_off in [0usize, 5] {
                    dst.0.fill(0xa5);
                    want.0.fill(0xa5);
                    want.0[d_off..d_off + n].copy_from_slice(&src[s_off..s_off + n]);
                    // SAFETY: both ranges in bounds, distinct buffers.
                    unsafe { copy_nt(dst.0.as_mut_ptr().add(d_off), src.as_ptr().add(s_off), n) };
                    fence();
                    assert!(dst.0[..] == want.0[..], "n {n} dst +{d_off} src +{s_off}");
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_sse2_lines_match_too() {
        let src: Vec<u8> = (0..1024).map(|i| (i * 13 + 1) as u8).collect();
        #[repr(C, align(64))]
        struct Buf([u8; 1024]);
        let mut dst = Box::new(Buf([0; 1024]));
        // SAFETY: 16 aligned lines in both buffers.
        unsafe { x86::lines_sse2(dst.0.as_mut_ptr(), src.as_ptr(), 16) };
        fence();
        assert_eq!(&dst.0[..], &src[..]);
    }
}
