//! Faults inside guest memory end one connection, never the daemon.
//!
//! A frontend's memory regions are files it shares with us. The size is checked when the table
//! is mapped ([`super::memory`]), but an unsealed file (hugetlbfs, or a memfd without
//! `F_SEAL_SHRINK`) can still be truncated afterwards, and hugetlbfs pages we map with
//! `MAP_NORESERVE` may be missing when first touched: either way the next access raises
//! `SIGBUS`, whose default action kills the whole daemon (every tenant).
//!
//! So every mapped region is registered here, with the page size of its mapping and the
//! eventfd of the vhost-user server loop that owns it. A process-wide `SIGBUS` handler looks
//! the faulting address up: inside a registered region, it maps an anonymous zero page over the
//! faulting page (`MAP_FIXED`, so the access completes harmlessly), counts the fault on the
//! region and writes the server loop's eventfd; the loop then closes that connection. A fault
//! anywhere else goes to the previous handler (Rust's stack-overflow reporter, or the default
//! action), exactly as if we were not here. See `docs/decisions/0010-guest-memory-faults.md`.
//!
//! The handler only uses atomics and the `mmap`/`write`/`sigaction` system calls (no locks, no
//! allocation). The registry is a fixed array of slots guarded by per-slot sequence counters.
//! A slot is unregistered only once nothing can access its region any more and before the
//! region is unmapped (see [`super::tables`]), so an address is never attributed to a region
//! that is gone.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{fence, AtomicBool, AtomicI32, AtomicU32, AtomicUsize, Ordering};
use std::sync::Once;

/// Regions registered at once in the whole process (8 per memory table at most; a table is
/// held by one connection, plus tables being retired).
pub(crate) const MAX_REGIONS: usize = 4096;

/// One registered region.
struct Slot {
    /// Taken (allocation flag, set by [`register`]).
    taken: AtomicBool,
    /// Sequence counter: odd while the fields below are being written.
    seq: AtomicU32,
    start: AtomicUsize,
    end: AtomicUsize,
    /// Granularity of the replacement mapping (the page size of the region's mapping).
    page: AtomicUsize,
    /// The eventfd to signal on a fault.
    wake: AtomicI32,
    /// Faults handled in this region.
    faults: AtomicU32,
}

impl Slot {
    const fn new() -> Self {
        Self {
            taken: AtomicBool::new(false),
            seq: AtomicU32::new(0),
            start: AtomicUsize::new(0),
            end: AtomicUsize::new(0),
            page: AtomicUsize::new(0),
            wake: AtomicI32::new(-1),
            faults: AtomicU32::new(0),
        }
    }

    /// A consistent (start, end, page, wake) snapshot.
    fn read(&self) -> (usize, usize, usize, RawFd) {
        loop {
            let s1 = self.seq.load(Ordering::Acquire);
            if s1 % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let v = (
                self.start.load(Ordering::Relaxed),
                self.end.load(Ordering::Relaxed),
                self.page.load(Ordering::Relaxed),
                self.wake.load(Ordering::Relaxed),
            );
            fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) == s1 {
                return v;
            }
        }
    }

    fn write(&self, start: usize, end: usize, page: usize, wake: RawFd) {
        self.seq.fetch_add(1, Ordering::AcqRel);
        fence(Ordering::Release);
        self.start.store(start, Ordering::Relaxed);
        self.end.store(end, Ordering::Relaxed);
        self.page.store(page, Ordering::Relaxed);
        self.wake.store(wake, Ordering::Relaxed);
        self.seq.fetch_add(1, Ordering::Release);
    }
}

static SLOTS: [Slot; MAX_REGIONS] = [const { Slot::new() }; MAX_REGIONS];
/// Slots `0..HIGH` may be in use (the handler scans no further).
static HIGH: AtomicUsize = AtomicUsize::new(0);
/// The `SIGBUS` action before ours (an `sa_sigaction` value and its flags).
static PREV_ACTION: AtomicUsize = AtomicUsize::new(libc::SIG_DFL);
static PREV_FLAGS: AtomicI32 = AtomicI32::new(0);
static INSTALL: Once = Once::new();
/// Faults handled since start (all regions).
static TOTAL_FAULTS: AtomicU32 = AtomicU32::new(0);

/// The registry is full.
#[derive(Debug, thiserror::Error)]
#[error("too many guest memory regions mapped in this daemon (at most {MAX_REGIONS})")]
pub(crate) struct RegistryFull;

/// A region: host address range and the page size of its mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HostRange {
    /// First byte.
    pub(crate) start: usize,
    /// Length in bytes.
    pub(crate) len: usize,
    /// Page size of the mapping (4 KiB, or the huge page size on hugetlbfs).
    pub(crate) page: usize,
}

/// Registered regions (slot numbers). Must be given back with [`unregister`] before the
/// regions are unmapped; dropping it without doing so leaves the slots registered (safe: a
/// leak, never a dangling entry).
#[derive(Debug, Default)]
pub(crate) struct Registration {
    slots: Vec<usize>,
}

impl Registration {
    /// Faults handled in these regions so far.
    pub(crate) fn faults(&self) -> u32 {
        self.slots
            .iter()
            .map(|&i| SLOTS[i].faults.load(Ordering::Acquire))
            .sum()
    }
}

/// Registers `ranges`, whose faults signal `wake` (which must stay open until
/// [`unregister`]). Installs the handler on first use.
pub(crate) fn register(
    ranges: &[HostRange],
    wake: &impl AsRawFd,
) -> Result<Registration, RegistryFull> {
    INSTALL.call_once(install);
    let mut reg = Registration::default();
    for r in ranges {
        let Some(i) = (0..MAX_REGIONS).find(|&i| {
            SLOTS[i]
                .taken
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        }) else {
            unregister(reg);
            return Err(RegistryFull);
        };
        let s = &SLOTS[i];
        s.faults.store(0, Ordering::Relaxed);
        s.write(
            r.start,
            r.start.saturating_add(r.len),
            r.page.max(4096),
            wake.as_raw_fd(),
        );
        HIGH.fetch_max(i + 1, Ordering::AcqRel);
        reg.slots.push(i);
    }
    Ok(reg)
}

/// Unregisters the regions (before they are unmapped).
pub(crate) fn unregister(reg: Registration) {
    for i in reg.slots {
        let s = &SLOTS[i];
        s.write(0, 0, 0, -1);
        s.taken.store(false, Ordering::Release);
    }
}

/// Faults handled in guest memory since the daemon started.
pub(crate) fn total_faults() -> u32 {
    TOTAL_FAULTS.load(Ordering::Relaxed)
}

fn install() {
    // SAFETY: plain sigaction calls with initialised structs; the handler only does
    // async-signal-safe work (atomics, mmap, write, sigaction).
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut old) != 0 {
            tracing::error!("sigaction(SIGBUS): {}", std::io::Error::last_os_error());
            return;
        }
        PREV_ACTION.store(old.sa_sigaction, Ordering::Release);
        PREV_FLAGS.store(old.sa_flags, Ordering::Release);
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigbus as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut()) != 0 {
            tracing::error!("sigaction(SIGBUS): {}", std::io::Error::last_os_error());
        }
    }
}

/// The `SIGBUS` handler.
extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    // Only faults raised by an access (si_code > 0), not a SIGBUS someone sent with kill().
    if code > 0 && contain(addr) {
        return;
    }
    let prev = PREV_ACTION.load(Ordering::Acquire);
    let flags = PREV_FLAGS.load(Ordering::Acquire);
    if prev == libc::SIG_DFL || prev == libc::SIG_IGN {
        // SAFETY: restoring the default action; returning re-runs the faulting access, which
        // then takes it (for a fault), as if this handler had never been installed.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut());
        }
        if code <= 0 {
            // SAFETY: re-raising a signal sent to us, now with the default action.
            unsafe { libc::raise(sig) };
        }
        return;
    }
    if flags & libc::SA_SIGINFO != 0 {
        // SAFETY: `prev` is the sa_sigaction of the handler installed before ours, with the
        // three-argument signature SA_SIGINFO promises.
        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { std::mem::transmute(prev) };
        f(sig, info, ctx);
    } else {
        // SAFETY: `prev` is a one-argument sa_handler installed before ours.
        let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(prev) };
        f(sig);
    }
}

/// If `addr` is inside a registered region: replaces the faulting page with an anonymous one,
/// records the fault and wakes the region's server loop. True if the fault was contained.
fn contain(addr: usize) -> bool {
    let high = HIGH.load(Ordering::Acquire).min(MAX_REGIONS);
    for s in &SLOTS[..high] {
        let (start, end, page, wake) = s.read();
        if addr < start || addr >= end {
            continue;
        }
        let base = addr & !(page - 1);
        // SAFETY: [base, base + page) lies inside a guest memory mapping this process made
        // (registered until it is unmapped) and that some thread is accessing right now;
        // replacing those pages with private anonymous memory keeps the range mapped, so the
        // access (and any later one until the connection is closed) reads zeroes instead of
        // faulting. Guest memory is never assumed to hold stable contents anyway.
        let p = unsafe {
            libc::mmap(
                base as *mut libc::c_void,
                page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return false;
        }
        s.faults.fetch_add(1, Ordering::AcqRel);
        TOTAL_FAULTS.fetch_add(1, Ordering::Relaxed);
        let one = 1u64.to_ne_bytes();
        // SAFETY: `wake` is an eventfd kept open while the slot is registered; writing 8
        // bytes from a live buffer.
        unsafe { libc::write(wake, one.as_ptr().cast(), one.len()) };
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    /// A 4-page memfd mapping, truncated to one page: reading page 3 would kill the process.
    #[test]
    fn a_fault_in_a_registered_region_reads_zeroes_and_is_reported() {
        // SAFETY: test code creating, mapping and truncating its own memfd.
        unsafe {
            let fd = libc::memfd_create(c"fault-test".as_ptr(), libc::MFD_CLOEXEC);
            assert!(fd >= 0);
            assert_eq!(libc::ftruncate(fd, 4 * 4096), 0);
            let p = libc::mmap(
                std::ptr::null_mut(),
                4 * 4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            let p = p as *mut u8;
            std::ptr::write_volatile(p.add(3 * 4096), 0xab);
            let wake = EventFd::new(EFD_NONBLOCK).unwrap();
            let reg = register(
                &[HostRange {
                    start: p as usize,
                    len: 4 * 4096,
                    page: 4096,
                }],
                &wake,
            )
            .unwrap();
            assert_eq!(reg.faults(), 0);
            assert_eq!(libc::ftruncate(fd, 4096), 0);
            // Page 0 is still backed by the file; pages 1.. are gone.
            std::ptr::write_volatile(p, 7);
            assert_eq!(std::ptr::read_volatile(p.add(3 * 4096)), 0);
            assert_eq!(reg.faults(), 1);
            assert_eq!(wake.read().unwrap(), 1);
            // The replaced page is ordinary memory now: writes stick, no further fault.
            std::ptr::write_volatile(p.add(3 * 4096 + 1), 5);
            assert_eq!(std::ptr::read_volatile(p.add(3 * 4096 + 1)), 5);
            assert_eq!(std::ptr::read_volatile(p), 7);
            assert_eq!(reg.faults(), 1);
            assert!(total_faults() >= 1);
            unregister(reg);
            libc::munmap(p.cast(), 4 * 4096);
            libc::close(fd);
        }
    }
}
