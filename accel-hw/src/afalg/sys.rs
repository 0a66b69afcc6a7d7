//! Thin, checked wrappers over the AF_ALG socket calls and the Linux AIO syscalls.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// `SOL_ALG`.
const SOL_ALG: libc::c_int = 279;
const ALG_SET_KEY: libc::c_int = 1;
const ALG_SET_IV: libc::c_int = 2;
const ALG_SET_OP: libc::c_int = 3;
const ALG_SET_AEAD_ASSOCLEN: libc::c_int = 4;
const ALG_SET_AEAD_AUTHSIZE: libc::c_int = 5;
/// `ALG_OP_DECRYPT`.
pub const OP_DECRYPT: u32 = 0;
/// `ALG_OP_ENCRYPT`.
pub const OP_ENCRYPT: u32 = 1;

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// A transform socket bound to `(kind, name)`, e.g. `("skcipher", "cbc(aes)")`.
pub fn bind_tfm(kind: &str, name: &str) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the result is checked.
    let fd =
        check(unsafe { libc::socket(libc::AF_ALG, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: a fresh descriptor owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_alg is plain data; all-zero is valid.
    let mut sa: libc::sockaddr_alg = unsafe { std::mem::zeroed() };
    sa.salg_family = libc::AF_ALG as u16;
    if kind.len() >= sa.salg_type.len() || name.len() >= sa.salg_name.len() {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    sa.salg_type[..kind.len()].copy_from_slice(kind.as_bytes());
    sa.salg_name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: a live, initialised sockaddr_alg of the size passed.
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_alg).cast(),
            std::mem::size_of::<libc::sockaddr_alg>() as u32,
        )
    })?;
    Ok(fd)
}

/// Sets the key of a transform socket.
pub fn set_key(tfm: &OwnedFd, key: &[u8]) -> io::Result<()> {
    // SAFETY: the key slice is live for the call; the kernel copies it.
    check(unsafe {
        libc::setsockopt(
            tfm.as_raw_fd(),
            SOL_ALG,
            ALG_SET_KEY,
            key.as_ptr().cast(),
            key.len() as u32,
        )
    })
    .map(drop)
}

/// Sets the AEAD tag length of a transform socket.
pub fn set_authsize(tfm: &OwnedFd, len: usize) -> io::Result<()> {
    // SAFETY: ALG_SET_AEAD_AUTHSIZE takes the size in optlen and no buffer.
    check(unsafe {
        libc::setsockopt(
            tfm.as_raw_fd(),
            SOL_ALG,
            ALG_SET_AEAD_AUTHSIZE,
            std::ptr::null(),
            len as u32,
        )
    })
    .map(drop)
}

/// A new operation socket of a transform.
pub fn accept_op(tfm: &OwnedFd) -> io::Result<OwnedFd> {
    // SAFETY: accept on a bound AF_ALG socket with no peer address wanted.
    let fd = check(unsafe {
        libc::accept4(
            tfm.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    })?;
    // SAFETY: a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Control data of one request: operation, IV, AAD length (each optional).
pub struct Control {
    buf: [u64; 16],
    len: usize,
}

impl Control {
    /// Builds the cmsgs.
    pub fn new(op: Option<u32>, iv: Option<&[u8]>, assoclen: Option<u32>) -> Self {
        let mut c = Control {
            buf: [0; 16],
            len: 0,
        };
        if let Some(op) = op {
            c.push(ALG_SET_OP, &op.to_ne_bytes());
        }
        if let Some(iv) = iv {
            let mut v = [0u8; 4 + 16];
            v[..4].copy_from_slice(&(iv.len() as u32).to_ne_bytes());
            v[4..4 + iv.len()].copy_from_slice(iv);
            c.push(ALG_SET_IV, &v[..4 + iv.len()]);
        }
        if let Some(a) = assoclen {
            c.push(ALG_SET_AEAD_ASSOCLEN, &a.to_ne_bytes());
        }
        c
    }

    fn push(&mut self, ty: libc::c_int, data: &[u8]) {
        // SAFETY: CMSG_SPACE/LEN are pure arithmetic.
        let (space, clen) = unsafe {
            (
                libc::CMSG_SPACE(data.len() as u32) as usize,
                libc::CMSG_LEN(data.len() as u32) as usize,
            )
        };
        let bytes = self.len + space;
        assert!(
            bytes <= std::mem::size_of_val(&self.buf),
            "control buffer too small"
        );
        let base = self.buf.as_mut_ptr().cast::<u8>();
        // SAFETY: `self.len..bytes` lies inside `buf` (asserted), which is 8-byte aligned as a
        // cmsghdr needs; the header and the data are written within `space` bytes.
        unsafe {
            let h = base.add(self.len).cast::<libc::cmsghdr>();
            (*h).cmsg_len = clen as _;
            (*h).cmsg_level = SOL_ALG;
            (*h).cmsg_type = ty;
            std::ptr::copy_nonoverlapping(data.as_ptr(), libc::CMSG_DATA(h), data.len());
        }
        self.len = bytes;
    }
}

/// Sends the request data (`iov`) with `ctl` on an operation socket.
pub fn send(op: RawFd, ctl: &mut Control, iov: &[libc::iovec]) -> io::Result<usize> {
    // SAFETY: msghdr is plain data.
    let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
    m.msg_iov = iov.as_ptr() as *mut libc::iovec;
    m.msg_iovlen = iov.len() as _;
    if ctl.len > 0 {
        m.msg_control = ctl.buf.as_mut_ptr().cast();
        m.msg_controllen = ctl.len as _;
    }
    // SAFETY: the iovecs describe memory valid for reading for the call (the enqueue
    // contract); the control buffer is live.
    let n = unsafe { libc::sendmsg(op, &m, 0) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `struct iocb` of linux/aio_abi.h (little-endian layout).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct Iocb {
    pub aio_data: u64,
    pub aio_key: u32,
    pub aio_rw_flags: i32,
    pub aio_lio_opcode: u16,
    pub aio_reqprio: i16,
    pub aio_fildes: u32,
    pub aio_buf: u64,
    pub aio_nbytes: u64,
    pub aio_offset: i64,
    pub aio_reserved2: u64,
    pub aio_flags: u32,
    pub aio_resfd: u32,
}

/// `struct io_event`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct IoEvent {
    pub data: u64,
    pub obj: u64,
    pub res: i64,
    pub res2: i64,
}

/// `IOCB_CMD_PREADV`.
pub const IOCB_CMD_PREADV: u16 = 7;
/// `IOCB_FLAG_RESFD`.
pub const IOCB_FLAG_RESFD: u32 = 1;

/// A Linux AIO context.
pub struct AioCtx(libc::c_ulong);

impl AioCtx {
    /// A context for `n` requests.
    pub fn new(n: usize) -> io::Result<Self> {
        let mut ctx: libc::c_ulong = 0;
        // SAFETY: io_setup writes the context id into the live `ctx`.
        let rc = unsafe { libc::syscall(libc::SYS_io_setup, n as libc::c_long, &mut ctx) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(AioCtx(ctx))
    }

    /// Submits `iocbs`; returns how many were queued.
    ///
    /// # Safety
    /// Every iocb, and the buffers it describes, must stay valid until its event is reaped.
    pub unsafe fn submit(&self, iocbs: &mut [*mut Iocb]) -> io::Result<usize> {
        if iocbs.is_empty() {
            return Ok(0);
        }
        // SAFETY: the caller's promise; the pointer array is live for the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_io_submit,
                self.0,
                iocbs.len() as libc::c_long,
                iocbs.as_mut_ptr(),
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc as usize)
        }
    }

    /// Reaps up to `out.len()` finished events without waiting.
    pub fn reap(&self, out: &mut [IoEvent]) -> usize {
        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a live output array of the length passed and a live timeout.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_io_getevents,
                self.0,
                0 as libc::c_long,
                out.len() as libc::c_long,
                out.as_mut_ptr(),
                &zero,
            )
        };
        if rc < 0 {
            0
        } else {
            rc as usize
        }
    }
}

impl Drop for AioCtx {
    fn drop(&mut self) {
        // SAFETY: destroying our own context (waits for requests still in flight).
        unsafe { libc::syscall(libc::SYS_io_destroy, self.0) };
    }
}
