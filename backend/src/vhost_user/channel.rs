//! [`Channel`]: vhost-user message framing over a connected unix stream socket.
//!
//! A message is a 12-byte header (`request: u32`, `flags: u32`, `size: u32`, native endian)
//! followed by `size` payload bytes; file descriptors travel as `SCM_RIGHTS` ancillary data
//! attached to the header bytes. Replies carry `flags = VERSION(1) | REPLY(0x4)`.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

/// Size of the message header.
pub(crate) const HEADER_SIZE: usize = 12;
/// Largest payload accepted (the mem table and the 1072-byte crypto session both fit).
pub(crate) const MAX_PAYLOAD: usize = vhost::vhost_user::message::MAX_MSG_SIZE;
/// Most file descriptors accepted with one message.
pub(crate) const MAX_FDS: usize = vhost::vhost_user::message::MAX_ATTACHED_FD_ENTRIES;

/// Header flag bits.
pub(crate) mod flags {
    /// Protocol version 1 (bits 0..2).
    pub(crate) const VERSION_1: u32 = 0x1;
    /// Version mask.
    pub(crate) const VERSION_MASK: u32 = 0x3;
    /// The message is a reply.
    pub(crate) const REPLY: u32 = 0x4;
    /// The sender wants a reply-ack.
    pub(crate) const NEED_REPLY: u32 = 0x8;
}

/// Why a message could not be read or written. Any of these closes the connection.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ChannelError {
    /// The peer closed the socket (cleanly, between messages).
    #[error("peer closed the connection")]
    Closed,
    /// Socket I/O failed (including a peer that stalls mid-message past the read timeout).
    #[error("socket I/O: {0}")]
    Io(#[from] io::Error),
    /// The header has an unsupported version or reserved flag bits.
    #[error("bad header: request {request}, flags {flags:#x}")]
    BadHeader {
        /// Request code.
        request: u32,
        /// Flags.
        flags: u32,
    },
    /// The declared payload is larger than any valid message.
    #[error("payload of {0} bytes is too large")]
    TooLarge(u32),
    /// The message carried more file descriptors than allowed, or the control data was cut.
    #[error("too many file descriptors attached")]
    TooManyFds,
}

/// One received message. The payload buffer is reused between messages.
#[derive(Debug, Default)]
pub(crate) struct Msg {
    /// Request code (`FrontendReq` value).
    pub(crate) request: u32,
    /// Header flags.
    pub(crate) flags: u32,
    /// Payload bytes (exactly `size` of them).
    pub(crate) payload: Vec<u8>,
    /// Attached file descriptors, owned (closed on drop unless taken).
    pub(crate) fds: Vec<OwnedFd>,
}

impl Msg {
    /// Whether the sender set NEED_REPLY.
    pub(crate) fn need_reply(&self) -> bool {
        self.flags & flags::NEED_REPLY != 0
    }

    /// Takes the first attached fd, if any.
    pub(crate) fn take_fd(&mut self) -> Option<OwnedFd> {
        if self.fds.is_empty() {
            None
        } else {
            Some(self.fds.remove(0))
        }
    }
}

/// The message channel of one vhost-user connection (the backend side).
#[derive(Debug)]
pub(crate) struct Channel {
    stream: UnixStream,
    out: Vec<u8>,
}

impl Channel {
    /// Wraps an accepted stream.
    pub(crate) fn new(stream: UnixStream) -> Self {
        Self {
            stream,
            out: Vec::with_capacity(HEADER_SIZE + 1100),
        }
    }

    /// The underlying socket.
    pub(crate) fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Reads one message into `msg` (payload buffer reused, fds replaced).
    pub(crate) fn recv(&mut self, msg: &mut Msg) -> Result<(), ChannelError> {
        msg.fds.clear();
        let mut hdr = [0u8; HEADER_SIZE];
        let n = recv_with_fds(&self.stream, &mut hdr, &mut msg.fds)?;
        if n == 0 {
            return Err(ChannelError::Closed);
        }
        if n < HEADER_SIZE {
            self.stream.read_exact(&mut hdr[n..])?;
        }
        let word = |i: usize| u32::from_ne_bytes([hdr[i], hdr[i + 1], hdr[i + 2], hdr[i + 3]]);
        msg.request = word(0);
        msg.flags = word(4);
        let size = word(8);
        if msg.flags & flags::VERSION_MASK != flags::VERSION_1 || msg.flags & !0xf != 0 {
            return Err(ChannelError::BadHeader {
                request: msg.request,
                flags: msg.flags,
            });
        }
        if size as usize > MAX_PAYLOAD {
            return Err(ChannelError::TooLarge(size));
        }
        msg.payload.clear();
        msg.payload.resize(size as usize, 0);
        self.stream.read_exact(&mut msg.payload)?;
        Ok(())
    }

    /// Sends a reply for `request` with `payload`.
    pub(crate) fn reply(&mut self, request: u32, payload: &[u8]) -> Result<(), ChannelError> {
        self.out.clear();
        self.out.extend_from_slice(&request.to_ne_bytes());
        self.out
            .extend_from_slice(&(flags::VERSION_1 | flags::REPLY).to_ne_bytes());
        self.out
            .extend_from_slice(&(payload.len() as u32).to_ne_bytes());
        self.out.extend_from_slice(payload);
        self.stream.write_all(&self.out)?;
        Ok(())
    }

    /// Sends a reply-ack (`u64` 0 on success, 1 on failure).
    pub(crate) fn reply_ack(&mut self, request: u32, ok: bool) -> Result<(), ChannelError> {
        let v: u64 = if ok { 0 } else { 1 };
        self.reply(request, &v.to_ne_bytes())
    }
}

/// `recvmsg` into `buf`, collecting `SCM_RIGHTS` fds into `fds`. Returns the bytes read.
fn recv_with_fds(
    stream: &UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> Result<usize, ChannelError> {
    // Room for MAX_FDS descriptors of control data, u64-aligned.
    let mut cmsg_buf = [0u64; (MAX_FDS * 4 + 64) / 8];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is valid; every pointer set below outlives the call.
    let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
    mh.msg_iov = &mut iov;
    mh.msg_iovlen = 1;
    mh.msg_control = cmsg_buf.as_mut_ptr().cast();
    mh.msg_controllen = std::mem::size_of_val(&cmsg_buf) as _;
    let n = loop {
        // SAFETY: `mh` points at a live iovec over `buf` and a live control buffer of the
        // declared sizes; the kernel writes only within them.
        let r = unsafe { libc::recvmsg(stream.as_raw_fd(), &mut mh, libc::MSG_CMSG_CLOEXEC) };
        if r >= 0 {
            break r as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e.into());
        }
    };
    let mut too_many = mh.msg_flags & libc::MSG_CTRUNC != 0;
    // SAFETY: `mh` was filled by recvmsg; the CMSG_* macros walk only the control buffer it
    // describes.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&mh) };
    while !cmsg.is_null() {
        // SAFETY: `cmsg` is non-null and points inside the control buffer (CMSG_FIRSTHDR /
        // CMSG_NXTHDR guarantee it).
        let c = unsafe { &*cmsg };
        if c.cmsg_level == libc::SOL_SOCKET && c.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN(0) is a pure computation.
            let hdr_len = unsafe { libc::CMSG_LEN(0) } as usize;
            let count = (c.cmsg_len as usize).saturating_sub(hdr_len) / std::mem::size_of::<i32>();
            // SAFETY: CMSG_DATA points at `count` ints inside the control buffer.
            let data = unsafe { libc::CMSG_DATA(cmsg) } as *const i32;
            for i in 0..count {
                // SAFETY: `i < count`, within the control message; unaligned read is used since
                // the data need not be aligned for i32.
                let fd = unsafe { std::ptr::read_unaligned(data.add(i)) };
                if fd >= 0 {
                    // SAFETY: the kernel just installed `fd` for us; nobody else owns it.
                    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                    if fds.len() < MAX_FDS {
                        fds.push(owned);
                    } else {
                        too_many = true;
                    }
                }
            }
        }
        // SAFETY: `mh` and `cmsg` are valid as above.
        cmsg = unsafe { libc::CMSG_NXTHDR(&mh, cmsg) };
    }
    if too_many {
        fds.clear();
        return Err(ChannelError::TooManyFds);
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_and_oversized_headers_are_errors() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut ch = Channel::new(a);
        let mut msg = Msg::default();
        b.write_all(&[0xff; 12]).unwrap();
        assert!(matches!(
            ch.recv(&mut msg),
            Err(ChannelError::BadHeader { .. })
        ));
        let mut hdr = Vec::new();
        hdr.extend_from_slice(&1u32.to_ne_bytes());
        hdr.extend_from_slice(&1u32.to_ne_bytes());
        hdr.extend_from_slice(&100_000u32.to_ne_bytes());
        b.write_all(&hdr).unwrap();
        assert!(matches!(ch.recv(&mut msg), Err(ChannelError::TooLarge(_))));
        drop(b);
        assert!(matches!(ch.recv(&mut msg), Err(ChannelError::Closed)));
    }

    #[test]
    fn short_message_then_close_is_an_io_error() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut ch = Channel::new(a);
        let mut msg = Msg::default();
        let mut hdr = Vec::new();
        hdr.extend_from_slice(&1u32.to_ne_bytes());
        hdr.extend_from_slice(&1u32.to_ne_bytes());
        hdr.extend_from_slice(&8u32.to_ne_bytes());
        hdr.extend_from_slice(&[1, 2, 3]);
        b.write_all(&hdr).unwrap();
        drop(b);
        assert!(matches!(ch.recv(&mut msg), Err(ChannelError::Io(_))));
    }
}
