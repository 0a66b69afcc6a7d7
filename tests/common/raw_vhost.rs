//! A raw vhost-user frontend, as an attacker would write one: messages built byte by byte,
//! file descriptors attached by hand, and shared "guest memory" it can shrink at will.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub const GET_FEATURES: u32 = 1;
pub const SET_FEATURES: u32 = 2;
pub const SET_OWNER: u32 = 3;
pub const SET_MEM_TABLE: u32 = 5;
pub const SET_VRING_NUM: u32 = 8;
pub const SET_VRING_ADDR: u32 = 9;
pub const SET_VRING_BASE: u32 = 10;
pub const GET_VRING_BASE: u32 = 11;
pub const SET_VRING_KICK: u32 = 12;
pub const SET_VRING_CALL: u32 = 13;
pub const GET_PROTOCOL_FEATURES: u32 = 15;
pub const SET_PROTOCOL_FEATURES: u32 = 16;
pub const GET_QUEUE_NUM: u32 = 17;
pub const GET_CONFIG: u32 = 24;
pub const NEED_REPLY: u32 = 0x8;

pub const PF_MQ: u64 = 1 << 0;
pub const PF_REPLY_ACK: u64 = 1 << 3;
pub const PF_CRYPTO: u64 = 1 << 7;
pub const PF_CONFIG: u64 = 1 << 9;

/// What a backend offered in the handshake.
pub struct Offered {
    /// Virtio and vhost-user feature bits.
    pub features: u64,
    /// Protocol feature bits.
    pub protocol_features: u64,
    /// GET_QUEUE_NUM's answer.
    pub queues: u64,
}

/// Ring size the helpers set up.
pub const QSIZE: u16 = 16;

/// One connection to a vhost-user socket.
pub struct Front {
    pub s: UnixStream,
}

impl From<UnixStream> for Front {
    fn from(s: UnixStream) -> Self {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Self { s }
    }
}

impl Front {
    pub fn connect(path: &Path) -> Self {
        UnixStream::connect(path).unwrap().into()
    }

    pub fn send_fds(&mut self, req: u32, flags: u32, payload: &[u8], fds: &[RawFd]) {
        let mut buf = Vec::new();
        buf.extend_from_slice(&req.to_ne_bytes());
        buf.extend_from_slice(&(1 | flags).to_ne_bytes());
        buf.extend_from_slice(&(payload.len() as u32).to_ne_bytes());
        buf.extend_from_slice(payload);
        if fds.is_empty() {
            self.s.write_all(&buf).unwrap();
            return;
        }
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut cmsg = [0u64; 16];
        // SAFETY: test code building a valid SCM_RIGHTS message over live buffers.
        unsafe {
            let mut mh: libc::msghdr = std::mem::zeroed();
            mh.msg_iov = &mut iov;
            mh.msg_iovlen = 1;
            mh.msg_control = cmsg.as_mut_ptr().cast();
            mh.msg_controllen = libc::CMSG_SPACE((4 * fds.len()) as u32) as _;
            let c = libc::CMSG_FIRSTHDR(&mh);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN((4 * fds.len()) as u32) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c).cast(), fds.len());
            let n = libc::sendmsg(self.s.as_raw_fd(), &mh, 0);
            assert_eq!(n as usize, buf.len());
        }
    }

    pub fn send(&mut self, req: u32, flags: u32, payload: &[u8]) {
        self.send_fds(req, flags, payload, &[]);
    }

    pub fn recv(&mut self, req: u32) -> Vec<u8> {
        let mut hdr = [0u8; 12];
        self.s.read_exact(&mut hdr).unwrap();
        let w = |i: usize| u32::from_ne_bytes(hdr[i..i + 4].try_into().unwrap());
        assert_eq!(w(0), req, "reply to the right request");
        assert_eq!(w(4), 0x5, "version 1 | REPLY");
        let mut p = vec![0u8; w(8) as usize];
        self.s.read_exact(&mut p).unwrap();
        p
    }

    pub fn get_u64(&mut self, req: u32) -> u64 {
        self.send(req, 0, &[]);
        u64::from_ne_bytes(self.recv(req).try_into().unwrap())
    }

    /// Sends with NEED_REPLY; the reply-ack value (0: success).
    pub fn acked(&mut self, req: u32, payload: &[u8]) -> u64 {
        self.acked_fds(req, payload, &[])
    }

    pub fn acked_fds(&mut self, req: u32, payload: &[u8], fds: &[RawFd]) -> u64 {
        self.send_fds(req, NEED_REPLY, payload, fds);
        u64::from_ne_bytes(self.recv(req).try_into().unwrap())
    }

    /// Negotiates features (everything offered) and REPLY_ACK; returns the queue count.
    pub fn handshake(&mut self) -> u64 {
        self.negotiate().queues
    }

    /// The handshake QEMU performs: GET_FEATURES, GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES
    /// (crypto, REPLY_ACK, MQ, CONFIG where offered), GET_QUEUE_NUM, SET_OWNER, SET_FEATURES
    /// (everything offered). What the backend offered.
    pub fn negotiate(&mut self) -> Offered {
        let features = self.get_u64(GET_FEATURES);
        let protocol_features = self.get_u64(GET_PROTOCOL_FEATURES);
        self.send(
            SET_PROTOCOL_FEATURES,
            0,
            &(protocol_features & (PF_CRYPTO | PF_REPLY_ACK | PF_MQ | PF_CONFIG)).to_ne_bytes(),
        );
        let queues = self.get_u64(GET_QUEUE_NUM);
        self.send(SET_OWNER, 0, &[]);
        self.send(SET_FEATURES, 0, &features.to_ne_bytes());
        Offered {
            features,
            protocol_features,
            queues,
        }
    }

    /// SET_MEM_TABLE with one region: guest-physical 0, `size` bytes announced, at `user_addr`,
    /// `mmap_offset` into `fd`. The reply-ack value.
    pub fn mem_table(&mut self, fd: RawFd, size: u64, user_addr: u64, mmap_offset: u64) -> u64 {
        let mut table = Vec::new();
        table.extend_from_slice(&1u32.to_ne_bytes());
        table.extend_from_slice(&0u32.to_ne_bytes());
        for v in [0u64, size, user_addr, mmap_offset] {
            table.extend_from_slice(&v.to_ne_bytes());
        }
        self.acked_fds(SET_MEM_TABLE, &table, &[fd])
    }

    /// SET_VRING_ADDR for ring `i` (frontend virtual addresses, no log). The reply-ack value.
    pub fn vring_addr(&mut self, i: u32, desc: u64, used: u64, avail: u64) -> u64 {
        let mut addr = Vec::new();
        addr.extend_from_slice(&i.to_ne_bytes());
        addr.extend_from_slice(&0u32.to_ne_bytes());
        for v in [desc, used, avail, 0] {
            addr.extend_from_slice(&v.to_ne_bytes());
        }
        self.acked(SET_VRING_ADDR, &addr)
    }

    /// Sets up ring `i` (size [`QSIZE`], descriptor table at guest-physical `i * 0x4000`, avail
    /// ring 0x1000 after it, used ring 0x2000 after it; `va0` is the frontend virtual address
    /// of guest-physical 0) with fresh kick and call eventfds, which it returns.
    pub fn ring(&mut self, i: u32, va0: u64) -> (EventFd, EventFd) {
        let state = |n: u32| [i.to_ne_bytes(), n.to_ne_bytes()].concat();
        assert_eq!(self.acked(SET_VRING_NUM, &state(u32::from(QSIZE))), 0);
        assert_eq!(self.acked(SET_VRING_BASE, &state(0)), 0);
        let base = va0 + u64::from(i) * 0x4000;
        assert_eq!(self.vring_addr(i, base, base + 0x2000, base + 0x1000), 0);
        let kick = EventFd::new(EFD_NONBLOCK).unwrap();
        let call = EventFd::new(EFD_NONBLOCK).unwrap();
        let idx = u64::from(i).to_ne_bytes();
        assert_eq!(self.acked_fds(SET_VRING_CALL, &idx, &[call.as_raw_fd()]), 0);
        assert_eq!(self.acked_fds(SET_VRING_KICK, &idx, &[kick.as_raw_fd()]), 0);
        (kick, call)
    }

    /// Whether the daemon closed this connection within `timeout` (reads EOF or a reset).
    pub fn closed_by_peer(&mut self, timeout: Duration) -> bool {
        self.s.set_read_timeout(Some(timeout)).unwrap();
        let mut b = [0u8; 64];
        loop {
            match self.s.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue, // a late reply
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

/// Frontend-side guest memory: a file (memfd, or a hugetlbfs file) mapped into this process.
pub struct SharedMem {
    pub fd: RawFd,
    pub ptr: *mut u8,
    pub size: usize,
    path: Option<std::path::PathBuf>,
}

impl SharedMem {
    /// A memfd of `size` bytes; `seal` adds F_SEAL_SHRINK (what QEMU's memory-backend-memfd
    /// does).
    pub fn memfd(size: usize, seal: bool) -> Self {
        // SAFETY: test code: create, size and seal a memfd.
        let fd = unsafe {
            let fd = libc::memfd_create(
                c"dpacc-attack".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            );
            assert!(fd >= 0);
            assert_eq!(libc::ftruncate(fd, size as i64), 0);
            if seal {
                assert_eq!(libc::fcntl(fd, libc::F_ADD_SEALS, libc::F_SEAL_SHRINK), 0);
            }
            fd
        };
        Self::map(fd, size, None)
    }

    /// A file of `size` bytes on hugetlbfs (`dir`), as DPDK and OVS users run.
    pub fn hugetlbfs(dir: &Path, size: usize) -> Self {
        let path = dir.join(format!("dpacc-attack-{}", std::process::id()));
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: test code: create and size a file.
        let fd = unsafe {
            let fd = libc::open(
                c.as_ptr(),
                libc::O_CREAT | libc::O_RDWR | libc::O_CLOEXEC,
                0o600,
            );
            assert!(
                fd >= 0,
                "{}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
            assert_eq!(libc::ftruncate(fd, size as i64), 0);
            fd
        };
        Self::map(fd, size, Some(path))
    }

    fn map(fd: RawFd, size: usize, path: Option<std::path::PathBuf>) -> Self {
        // SAFETY: mapping the file we just sized.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED, "{}", std::io::Error::last_os_error());
        Self {
            fd,
            ptr: ptr.cast(),
            size,
            path,
        }
    }

    /// The frontend virtual address of guest-physical 0.
    pub fn va0(&self) -> u64 {
        self.ptr as u64
    }

    /// Truncates the file to `len` bytes (the attack). This process must not touch the
    /// mapping past `len` afterwards. The error, if the file is sealed.
    pub fn shrink(&self, len: usize) -> std::io::Result<()> {
        // SAFETY: ftruncate on our own fd.
        if unsafe { libc::ftruncate(self.fd, len as i64) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

impl Drop for SharedMem {
    fn drop(&mut self) {
        // SAFETY: unmapping and closing what we created.
        unsafe {
            libc::munmap(self.ptr.cast(), self.size);
            libc::close(self.fd);
        }
        if let Some(p) = &self.path {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A mounted hugetlbfs with at least `pages` free huge pages, if there is one.
pub fn hugetlbfs_with(pages: u64) -> Option<std::path::PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    let dir = mounts
        .lines()
        .find(|l| l.split_whitespace().nth(2) == Some("hugetlbfs"))?
        .split_whitespace()
        .nth(1)?
        .to_string();
    let free: u64 = std::fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("HugePages_Free:"))?
        .trim()
        .parse()
        .ok()?;
    (free >= pages).then(|| dir.into())
}
