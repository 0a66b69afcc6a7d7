//! A TAP interface (the kernel side of an uplink), non-blocking, without packet information.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::rings::OutFrame;

/// An open TAP device.
#[derive(Debug)]
pub(crate) struct Tap {
    fd: OwnedFd,
    name: String,
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

impl Tap {
    /// Creates (or attaches to) the TAP interface `name` and brings nothing up: the operator
    /// (or test) configures it, possibly in another network namespace. With `multi_queue`
    /// (IFF_MULTI_QUEUE) every open attaches one more queue of the same interface: one per
    /// worker, and the kernel spreads the frames it sends over the queues by flow.
    pub(crate) fn open(name: &str, multi_queue: bool) -> io::Result<Self> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "TAP name must be 1..15 bytes",
            ));
        }
        // SAFETY: plain syscall on a constant path; checked.
        let fd = unsafe {
            libc::open(
                c"/dev/net/tun".as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: ifreq is plain data; the name fits (checked above); TUNSETIFF reads it.
        unsafe {
            let mut ifr: libc::ifreq = std::mem::zeroed();
            for (d, s) in ifr.ifr_name.iter_mut().zip(name.as_bytes()) {
                *d = *s as libc::c_char;
            }
            let mq = if multi_queue {
                libc::IFF_MULTI_QUEUE
            } else {
                0
            };
            ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | mq) as libc::c_short;
            if libc::ioctl(fd.as_raw_fd(), TUNSETIFF as _, &mut ifr) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(Self {
            fd,
            name: name.to_string(),
        })
    }

    /// The interface name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Reads one frame; `Ok(None)` when none is waiting.
    pub(crate) fn read(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        // SAFETY: reading into a live buffer of the given length.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::WouldBlock {
                Ok(None)
            } else {
                Err(e)
            };
        }
        Ok(Some(n as usize))
    }

    /// Writes one frame (dropped by the kernel if the interface is down): its first bytes
    /// from host memory, the rest (if any) straight from where it is (a guest's TX buffer:
    /// the kernel copies it, no copy of ours).
    pub(crate) fn write(&self, frame: OutFrame<'_>) -> io::Result<()> {
        let (rest, rest_len) = frame.rest();
        let tail = frame.tail();
        let iov = [
            libc::iovec {
                iov_base: frame.head().as_ptr() as *mut libc::c_void,
                iov_len: frame.head().len(),
            },
            libc::iovec {
                iov_base: rest as *mut libc::c_void,
                iov_len: rest_len,
            },
            libc::iovec {
                iov_base: tail.as_ptr() as *mut libc::c_void,
                iov_len: tail.len(),
            },
        ];
        let cnt = if tail.is_empty() {
            if rest_len == 0 {
                1
            } else {
                2
            }
        } else {
            3
        };
        // SAFETY: both buffers are readable for their lengths (the rest by `OutFrame`'s
        // contract); the kernel only reads them.
        let n = unsafe { libc::writev(self.fd.as_raw_fd(), iov.as_ptr(), cnt) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The descriptor, for polling.
    pub(crate) fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
