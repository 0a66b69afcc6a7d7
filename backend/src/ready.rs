//! [`ReadySet`]: blocking until one of a few descriptors (eventfds, sockets) is readable, on
//! `vmm-sys-util`'s epoll wrapper. Control paths use it (the vhost-user accept and message loop,
//! the crypto queue workers); the net worker's hot loop polls its changing ring set itself.

use std::io;
use std::os::fd::AsRawFd;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

/// Most descriptors one set reports per wait (more stay pending for the next wait).
const MAX_EVENTS: usize = 4;

/// Descriptors registered with a token each (0..64); [`wait`](Self::wait) returns the tokens
/// of the readable ones.
pub(crate) struct ReadySet {
    epoll: Epoll,
    events: [EpollEvent; MAX_EVENTS],
}

impl ReadySet {
    /// An empty set.
    pub(crate) fn new() -> io::Result<Self> {
        Ok(Self {
            epoll: Epoll::new()?,
            events: [EpollEvent::default(); MAX_EVENTS],
        })
    }

    /// Watches `fd` for readability under `token` (< 64).
    pub(crate) fn add(&self, fd: &impl AsRawFd, token: u32) -> io::Result<()> {
        debug_assert!(token < 64);
        self.epoll.ctl(
            ControlOperation::Add,
            fd.as_raw_fd(),
            EpollEvent::new(EventSet::IN, u64::from(token)),
        )
    }

    /// Stops watching `fd` (before it is closed).
    pub(crate) fn remove(&self, fd: &impl AsRawFd) -> io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Delete,
            fd.as_raw_fd(),
            EpollEvent::default(),
        )
    }

    /// Blocks until at least one watched descriptor is readable (or hung up, or in error:
    /// reading it tells which), retrying after signals. Returns the ready tokens as a bit set
    /// (`1 << token`).
    pub(crate) fn wait(&mut self) -> io::Result<u64> {
        self.wait_for(-1)
    }

    /// Like [`wait`](Self::wait) without blocking: the tokens ready now (maybe none).
    pub(crate) fn poll(&mut self) -> io::Result<u64> {
        self.wait_for(0)
    }

    fn wait_for(&mut self, timeout_ms: i32) -> io::Result<u64> {
        loop {
            match self.epoll.wait(timeout_ms, &mut self.events) {
                Ok(n) => {
                    return Ok(self.events[..n]
                        .iter()
                        .fold(0, |set, e| set | 1u64 << (e.data() & 63)))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Whether `token` is in a set [`ReadySet::wait`] returned.
pub(crate) fn has(set: u64, token: u32) -> bool {
    set & (1u64 << token) != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    #[test]
    fn reports_the_readable_descriptors() {
        let (a, b) = (
            EventFd::new(EFD_NONBLOCK).unwrap(),
            EventFd::new(EFD_NONBLOCK).unwrap(),
        );
        let mut set = ReadySet::new().unwrap();
        set.add(&a, 0).unwrap();
        set.add(&b, 5).unwrap();
        b.write(1).unwrap();
        let r = set.wait().unwrap();
        assert!(!has(r, 0) && has(r, 5));
        a.write(1).unwrap();
        let r = set.wait().unwrap();
        assert!(
            has(r, 0) && has(r, 5),
            "level-triggered: b is still readable"
        );
        b.read().unwrap();
        set.remove(&a).unwrap();
        b.write(1).unwrap();
        assert_eq!(set.wait().unwrap(), 1 << 5);
    }
}
