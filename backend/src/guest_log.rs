//! Log lines a guest or frontend can trigger, rate-limited per call site.
//!
//! A hostile frontend can repeat whatever makes the daemon log (a malformed request, a broken
//! ring, a reconnect) as fast as it likes; unlimited, that floods the host's logs and costs
//! every tenant CPU. [`guest_log!`] (and [`guest_warn!`], [`guest_info!`]) let each call site
//! log at most [`BURST`] lines per [`WINDOW_SECS`]-second window; the rest are counted, and
//! the next line that call site logs carries `suppressed = N` (how many were dropped since the
//! last one). [`suppressed_total`] counts all of them for the daemon's exit summary.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// Lines a call site may log per window.
pub(crate) const BURST: u64 = 10;
/// Window length in seconds.
pub(crate) const WINDOW_SECS: u64 = 10;

static SUPPRESSED: AtomicU64 = AtomicU64::new(0);

/// Guest-triggered lines suppressed since start, all call sites together.
pub(crate) fn suppressed_total() -> u64 {
    SUPPRESSED.load(Ordering::Relaxed)
}

fn window_now() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs() / WINDOW_SECS
}

/// The limiter of one call site (a `static`, so no allocation and no lock).
#[derive(Debug)]
pub(crate) struct RateLimit {
    window: AtomicU64,
    lines: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimit {
    /// A limiter with nothing logged yet.
    pub(crate) const fn new() -> Self {
        Self {
            window: AtomicU64::new(0),
            lines: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether a line may be logged now: `Some(n)` with the lines suppressed since the last
    /// one that was, or `None` (counted as suppressed).
    pub(crate) fn admit(&self) -> Option<u64> {
        self.admit_at(window_now())
    }

    fn admit_at(&self, w: u64) -> Option<u64> {
        let cur = self.window.load(Ordering::Relaxed);
        if w != cur
            && self
                .window
                .compare_exchange(cur, w, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.lines.store(0, Ordering::Relaxed);
        }
        if self.lines.fetch_add(1, Ordering::Relaxed) < BURST {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            SUPPRESSED.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// Logs at `level` (a `tracing::Level`), rate-limited per call site. Use it for every line a
/// guest or frontend can trigger.
macro_rules! guest_log {
    ($lvl:expr, $($arg:tt)+) => {{
        static LIMIT: $crate::guest_log::RateLimit = $crate::guest_log::RateLimit::new();
        match LIMIT.admit() {
            Some(0) => ::tracing::event!($lvl, $($arg)+),
            Some(n) => ::tracing::event!($lvl, suppressed = n, $($arg)+),
            None => {}
        }
    }};
}

/// [`guest_log!`] at WARN.
macro_rules! guest_warn {
    ($($arg:tt)+) => { $crate::guest_log::guest_log!(::tracing::Level::WARN, $($arg)+) };
}

/// [`guest_log!`] at INFO (connects, disconnects, ring starts: a frontend can repeat them).
macro_rules! guest_info {
    ($($arg:tt)+) => { $crate::guest_log::guest_log!(::tracing::Level::INFO, $($arg)+) };
}

pub(crate) use {guest_info, guest_log, guest_warn};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_per_window_then_the_count_of_what_was_dropped() {
        let l = RateLimit::new();
        let before = suppressed_total();
        for _ in 0..BURST {
            assert_eq!(l.admit_at(5), Some(0));
        }
        for _ in 0..25 {
            assert_eq!(l.admit_at(5), None);
        }
        assert!(suppressed_total() >= before + 25);
        // Next window: the first line reports the 25 dropped ones, then counting restarts.
        assert_eq!(l.admit_at(6), Some(25));
        assert_eq!(l.admit_at(6), Some(0));
    }

    #[test]
    fn the_macros_log_and_limit() {
        for i in 0..3 * BURST {
            guest_warn!("test line {i}");
        }
        guest_info!(code = 3, "with a field");
    }
}
