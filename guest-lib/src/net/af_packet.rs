//! [`FrameIo`] over an AF_PACKET socket bound to a network interface: how a vNF inside a VM
//! reaches its flow-processor instance through the stock virtio-net interface.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use super::FrameIo;
use crate::{Error, Result};

/// A raw socket on one interface, receiving frames of one EtherType.
#[derive(Debug)]
pub struct AfPacket {
    fd: OwnedFd,
    ifindex: i32,
    mac: [u8; 6],
}

fn os(what: &'static str) -> Error {
    Error::Io(what, std::io::Error::last_os_error())
}

impl AfPacket {
    /// Opens a socket on interface `ifname` receiving frames of `ethertype` (e.g.
    /// `dpacc_spec::fastpath::proto::ETHERTYPE`). Needs CAP_NET_RAW.
    pub fn open(ifname: &str, ethertype: u16) -> Result<Self> {
        let name = CString::new(ifname).map_err(|_| Error::InvalidArgument("interface name"))?;
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
        if ifindex == 0 {
            return Err(os("if_nametoindex"));
        }
        let proto = ethertype.to_be();
        // SAFETY: plain syscall; checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(proto),
            )
        };
        if fd < 0 {
            return Err(os("socket(AF_PACKET)"));
        }
        // SAFETY: a fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain data; all-zero is valid.
        let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sa.sll_family = libc::AF_PACKET as u16;
        sa.sll_protocol = proto;
        sa.sll_ifindex = ifindex;
        // SAFETY: a live sockaddr_ll of the size passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc < 0 {
            return Err(os("bind(AF_PACKET)"));
        }
        // SAFETY: ifreq is plain data; the name fits (checked by if_nametoindex's success and
        // IFNAMSIZ); SIOCGIFHWADDR fills ifr_hwaddr.
        let mac = unsafe {
            let mut ifr: libc::ifreq = std::mem::zeroed();
            for (d, s) in ifr.ifr_name.iter_mut().zip(name.as_bytes().iter().take(15)) {
                *d = *s as libc::c_char;
            }
            if libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFHWADDR, &mut ifr) < 0 {
                return Err(os("SIOCGIFHWADDR"));
            }
            let d = ifr.ifr_ifru.ifru_hwaddr.sa_data;
            [
                d[0] as u8, d[1] as u8, d[2] as u8, d[3] as u8, d[4] as u8, d[5] as u8,
            ]
        };
        Ok(Self { fd, ifindex, mac })
    }

    /// The interface's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The interface index.
    pub fn ifindex(&self) -> i32 {
        self.ifindex
    }
}

impl FrameIo for AfPacket {
    fn send(&mut self, frame: &[u8]) -> Result<()> {
        // SAFETY: sending from a live buffer on a bound socket.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            return Err(os("send(AF_PACKET)"));
        }
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8], timeout: Option<Duration>) -> Result<Option<usize>> {
        let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
        let mut p = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        if r < 0 {
            return Err(os("poll"));
        }
        if r == 0 {
            return Ok(None);
        }
        // SAFETY: receiving into a live buffer of the given length.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(os("recv(AF_PACKET)"));
        }
        Ok(Some(n as usize))
    }
}
