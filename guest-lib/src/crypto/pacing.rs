//! [`Pacing`]: how a wait with interrupts can do without the device's interrupt. Waking a
//! sleeping thread costs the device's worker the signal (on a VM, an IPI to the driver's idle
//! vCPU: ~15 µs of the worker's core each, docs/performance.md "Issue 15, eighth pass"). A
//! queue that knows how fast its device has been completing operations sleeps on a timer of
//! its own core for most of the time the next `min` completions should take, then looks at the
//! used ring for a bounded time (`Options::wait_poll`); meanwhile the interrupt stays
//! suppressed (`used_event` is left behind the used index while the driver is awake). Only a
//! wait that the look does not end arms the interrupt and sleeps on it, as a plain wait does.
//! The timed sleep is a `timerfd` (no timer slack: `nanosleep` and `poll` timeouts of a normal
//! thread fire up to 50 µs late, on top of the ~35 µs an idle vCPU of this VM takes to wake).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// Longest timer sleep a wait takes on an estimate (a device that stalled once must not make
/// the next waits oversleep for long).
const MAX_SLEEP: Duration = Duration::from_millis(1);
/// A timed sleep aims this fraction (1/n) short of the expected time; the look covers the rest.
const SLEEP_SHORT_BY: u64 = 16;
/// The most one timer sleep's overshoot counts for in the estimate.
const MAX_OVERSLEEP: Duration = Duration::from_micros(60);
/// Shortest timer sleep worth taking (below it, the look alone is cheaper than a sleep).
const MIN_SLEEP: Duration = Duration::from_micros(2);

/// One queue's estimates (the device's pace and the timer's overshoot) and its timer.
#[derive(Debug, Default)]
pub(super) struct Pacing {
    /// Nanoseconds per completion seen over recent waits (0: nothing learnt yet).
    ns_per_op: u64,
    /// How much longer than asked a timer sleep took, recently, in nanoseconds (timer slack and
    /// wake-up latency).
    oversleep_ns: u64,
    /// The timer a wait sleeps on (created at the first timed sleep; `None` until then, or
    /// when it could not be created: `std::thread::sleep` then).
    timer: Option<OwnedFd>,
}

impl Pacing {
    /// Whether the device's pace says `needed` completions take longer than `look` (so
    /// looking for them without a timed sleep first would only spin for nothing).
    pub(super) fn longer_than(&self, needed: u16, look: Duration) -> bool {
        let expect = self.ns_per_op.saturating_mul(u64::from(needed));
        self.ns_per_op != 0 && Duration::from_nanos(expect) > look
    }

    /// Sleeps for `d` on this queue's timer.
    pub(super) fn sleep(&mut self, d: Duration) {
        if self.timer.is_none() {
            // SAFETY: plain syscall; the result is checked.
            let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_CLOEXEC) };
            if fd >= 0 {
                // SAFETY: `fd` was just created and is owned by nobody else.
                self.timer = Some(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
        let Some(t) = &self.timer else {
            std::thread::sleep(d);
            return;
        };
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: d.as_secs() as libc::time_t,
                // Below 1e9: fits every `c_long`.
                tv_nsec: d.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: `t` is a live timerfd; `spec` is a valid itimerspec; no old value asked.
        if unsafe { libc::timerfd_settime(t.as_raw_fd(), 0, &spec, std::ptr::null_mut()) } != 0 {
            std::thread::sleep(d);
            return;
        }
        let mut expirations = 0u64;
        // SAFETY: reading the 8-byte expiration count into a live `u64`; blocks until the
        // timer fires (a signal ends it early: the wait then only looks sooner).
        let _ = unsafe {
            libc::read(
                t.as_raw_fd(),
                (&mut expirations as *mut u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }

    /// How long to sleep on a timer before looking for `needed` more completions: fifteen
    /// sixteenths of the time they should take, less the usual overshoot; `None` when that is too short to
    /// be worth a sleep or nothing is known yet.
    pub(super) fn sleep_for(&self, needed: u16) -> Option<Duration> {
        let expect = self.ns_per_op.saturating_mul(u64::from(needed));
        let ns = (expect - expect / SLEEP_SHORT_BY).saturating_sub(self.oversleep_ns);
        let d = Duration::from_nanos(ns).min(MAX_SLEEP);
        (d >= MIN_SLEEP).then_some(d)
    }

    /// Learns from a wait that saw `completed` operations complete in `elapsed` (counted from
    /// its start: a device that ran dry meanwhile only makes the estimate shorter, which is
    /// the safe side).
    pub(super) fn learn(&mut self, elapsed: Duration, completed: u16) {
        if completed == 0 {
            return;
        }
        let sample = clamp_ns(elapsed) / u64::from(completed);
        self.ns_per_op = ewma(self.ns_per_op, sample);
    }

    /// Learns how long a timer sleep of `asked` really took. One late wake-up (a busy core, a
    /// first use) counts as at most [`MAX_OVERSLEEP`], so it cannot stop timed sleeps for good.
    pub(super) fn learn_sleep(&mut self, asked: Duration, took: Duration) {
        let over = clamp_ns(took.saturating_sub(asked)).min(MAX_OVERSLEEP.as_nanos() as u64);
        self.oversleep_ns = ewma(self.oversleep_ns, over);
    }
}

/// An average over the last few samples (weight ¼ on the new one); the first sample stands.
fn ewma(old: u64, sample: u64) -> u64 {
    if old == 0 {
        sample
    } else {
        (3 * old + sample) / 4
    }
}

/// Nanoseconds of `d`, capped at [`MAX_SLEEP`]'s worth times 64 (no overflow in `ewma`).
fn clamp_ns(d: Duration) -> u64 {
    let cap = MAX_SLEEP.as_nanos() as u64 * 64;
    u64::try_from(d.as_nanos()).unwrap_or(cap).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_learnt_means_no_sleep() {
        assert_eq!(Pacing::default().sleep_for(64), None);
    }

    #[test]
    fn sleeps_most_of_the_expected_time_less_the_overshoot() {
        let mut p = Pacing::default();
        p.learn(Duration::from_micros(160), 100); // 1.6 µs per completion
        assert_eq!(p.sleep_for(64), Some(Duration::from_nanos(96_000)));
        p.learn_sleep(Duration::from_micros(10), Duration::from_micros(60)); // 50 µs over
        assert_eq!(p.sleep_for(64), Some(Duration::from_nanos(46_000)));
        // One very late wake-up counts as at most MAX_OVERSLEEP.
        let mut q = Pacing::default();
        q.learn(Duration::from_micros(160), 100);
        q.learn_sleep(Duration::from_micros(10), Duration::from_millis(5));
        assert_eq!(q.sleep_for(64), Some(Duration::from_nanos(36_000)));
        // Too short to be worth a sleep: look instead.
        assert_eq!(p.sleep_for(8), None);
    }

    #[test]
    fn estimates_follow_the_device_and_are_bounded() {
        let mut p = Pacing::default();
        p.learn(Duration::from_micros(100), 100);
        p.learn(Duration::from_micros(500), 100);
        assert_eq!(p.ns_per_op, 2_000);
        // A device that stalled for a second does not make the next wait sleep for long.
        p.learn(Duration::from_secs(1), 1);
        assert_eq!(p.sleep_for(u16::MAX), Some(MAX_SLEEP));
        // No completions: nothing to learn.
        let before = p.ns_per_op;
        p.learn(Duration::from_secs(1), 0);
        assert_eq!(p.ns_per_op, before);
    }
}
