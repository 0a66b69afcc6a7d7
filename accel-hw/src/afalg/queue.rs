//! The AF_ALG queue: one operation socket per request in flight, request data sent with
//! `sendmsg`, results read with AIO `preadv` submitted in one `io_submit` per batch and reaped
//! through an eventfd (`IOCB_FLAG_RESFD`), so the backend's worker keeps going while the
//! kernel (or its hardware) computes.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use dpacc_spec::{
    sg_len, CipherAlg, Completion, CryptoError, CryptoOp, CryptoQueue, Direction, Seg,
};

use super::sys::{self, AioCtx, Control, IoEvent, Iocb};
use super::{AfAlgSession, Kind, MAX_OP};

/// What to do when a request completes.
#[derive(Clone, Copy, Debug)]
enum Post {
    /// Nothing: the kernel wrote the results in place.
    None,
    /// Copy the first `n` bytes of the slot's digest scratch to `digest` (truncated digests).
    Digest(usize),
    /// AEAD decryption: on an authentication failure, wipe `dst`.
    AeadDecrypt,
}

/// One request in flight.
struct Slot {
    op: Option<OwnedFd>,
    iocb: Iocb,
    iov: Vec<libc::iovec>,
    /// Room for the AAD that AF_ALG copies in front of an AEAD result.
    head: Vec<u8>,
    tail: [u8; 64],
    user_data: u64,
    post: Post,
    dst: Vec<(usize, usize)>,
    digest: Vec<(usize, usize)>,
}

/// A queue of the AF_ALG driver for one worker thread.
pub struct AfAlgQueue {
    // Dropped first: io_destroy waits for requests still in flight, whose buffers live below.
    aio: AioCtx,
    efd: OwnedFd,
    slots: Box<[Slot]>,
    free: Vec<usize>,
    ready: VecDeque<Completion>,
    submit: Vec<*mut Iocb>,
    events: Box<[IoEvent]>,
    send_iov: Vec<libc::iovec>,
}

// SAFETY: the raw pointers point into this queue's own slots (or guest memory under the
// enqueue contract); the queue is used from one thread at a time through `&mut self`.
unsafe impl Send for AfAlgQueue {}

fn iov(s: &Seg<'_>) -> libc::iovec {
    libc::iovec {
        iov_base: s.ptr().cast(),
        iov_len: s.len(),
    }
}

/// Appends `segs` to `out`, limited to `limit` bytes in all.
fn push_limited(out: &mut Vec<libc::iovec>, segs: &[Seg<'_>], mut limit: usize) {
    for s in segs {
        if limit == 0 {
            break;
        }
        let n = s.len().min(limit);
        out.push(libc::iovec {
            iov_base: s.ptr().cast(),
            iov_len: n,
        });
        limit -= n;
    }
}

impl AfAlgQueue {
    pub(crate) fn new(depth: usize) -> Result<Self, CryptoError> {
        let depth = depth.clamp(1, 1024);
        let aio = AioCtx::new(depth).map_err(|_| CryptoError::Internal("io_setup failed"))?;
        // SAFETY: plain syscall; checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(CryptoError::Internal("eventfd failed"));
        }
        // SAFETY: a fresh descriptor owned by nobody else.
        let efd = unsafe { OwnedFd::from_raw_fd(fd) };
        let slots = (0..depth)
            .map(|_| Slot {
                op: None,
                iocb: Iocb::default(),
                iov: Vec::with_capacity(8),
                head: Vec::new(),
                tail: [0; 64],
                user_data: 0,
                post: Post::None,
                dst: Vec::with_capacity(4),
                digest: Vec::with_capacity(2),
            })
            .collect();
        Ok(Self {
            aio,
            efd,
            slots,
            free: (0..depth).rev().collect(),
            ready: VecDeque::with_capacity(depth),
            submit: Vec::with_capacity(depth),
            events: vec![IoEvent::default(); depth.min(256)].into_boxed_slice(),
            send_iov: Vec::with_capacity(16),
        })
    }

    /// Prepares slot `i` for `op`: sends the request data and fills the iocb.
    fn prepare(
        &mut self,
        i: usize,
        s: &AfAlgSession,
        op: &CryptoOp<'_>,
    ) -> Result<(), CryptoError> {
        let src_len = sg_len(op.src);
        if src_len > MAX_OP {
            return Err(CryptoError::InvalidDataLength);
        }
        let slot = &mut self.slots[i];
        slot.iov.clear();
        slot.dst.clear();
        slot.digest.clear();
        slot.post = Post::None;
        self.send_iov.clear();
        let iv = op.iv.as_slice();
        let mut ctl = match s.kind {
            Kind::Cipher { alg, dir } => {
                if iv.len() != 16 {
                    return Err(CryptoError::InvalidIvLength);
                }
                if alg == CipherAlg::AesCbc && src_len % 16 != 0 {
                    return Err(CryptoError::InvalidDataLength);
                }
                if sg_len(op.dst) < src_len {
                    return Err(CryptoError::BufferTooSmall);
                }
                self.send_iov.extend(op.src.iter().map(iov));
                push_limited(&mut slot.iov, op.dst, src_len);
                let o = if dir == Direction::Encrypt {
                    sys::OP_ENCRYPT
                } else {
                    sys::OP_DECRYPT
                };
                Control::new(Some(o), Some(iv), None)
            }
            Kind::Aead { dir, tag } => {
                if iv.len() != 12 {
                    return Err(CryptoError::InvalidIvLength);
                }
                let aad_len = sg_len(op.aad);
                if sg_len(op.dst) < src_len {
                    return Err(CryptoError::BufferTooSmall);
                }
                slot.head.resize(aad_len, 0);
                self.send_iov.extend(op.aad.iter().map(iov));
                self.send_iov.extend(op.src.iter().map(iov));
                if aad_len > 0 {
                    slot.iov.push(libc::iovec {
                        iov_base: slot.head.as_mut_ptr().cast(),
                        iov_len: aad_len,
                    });
                }
                push_limited(&mut slot.iov, op.dst, src_len);
                let o = match dir {
                    Direction::Encrypt => {
                        if sg_len(op.digest) < tag {
                            return Err(CryptoError::BufferTooSmall);
                        }
                        push_limited(&mut slot.iov, op.digest, tag);
                        sys::OP_ENCRYPT
                    }
                    Direction::Decrypt => {
                        if sg_len(op.digest) != tag {
                            return Err(CryptoError::InvalidDigestLength);
                        }
                        self.send_iov.extend(op.digest.iter().map(iov));
                        slot.post = Post::AeadDecrypt;
                        slot.dst
                            .extend(op.dst.iter().map(|s| (s.ptr() as usize, s.len())));
                        sys::OP_DECRYPT
                    }
                };
                Control::new(Some(o), Some(iv), Some(aad_len as u32))
            }
            Kind::Digest { len, full } => {
                if sg_len(op.digest) < len {
                    return Err(CryptoError::BufferTooSmall);
                }
                self.send_iov.extend(op.src.iter().map(iov));
                slot.iov.push(libc::iovec {
                    iov_base: slot.tail.as_mut_ptr().cast(),
                    iov_len: full,
                });
                slot.post = Post::Digest(len);
                slot.digest
                    .extend(op.digest.iter().map(|s| (s.ptr() as usize, s.len())));
                Control::new(None, None, None)
            }
        };
        let opfd =
            sys::accept_op(&s.tfm).map_err(|_| CryptoError::Internal("AF_ALG accept failed"))?;
        let big = MAX_OP as libc::c_int * 2;
        // SAFETY: setting an int socket option from a live value (FORCE needs CAP_NET_ADMIN;
        // without it the plain option, capped by wmem_max, is the fallback).
        unsafe {
            let p = (&big as *const libc::c_int).cast();
            let l = std::mem::size_of::<libc::c_int>() as u32;
            if libc::setsockopt(
                opfd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUFFORCE,
                p,
                l,
            ) < 0
            {
                libc::setsockopt(opfd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF, p, l);
            }
        }
        let total: usize = self.send_iov.iter().map(|v| v.iov_len).sum();
        if total > 0 || !matches!(s.kind, Kind::Digest { .. }) {
            let sent = sys::send(opfd.as_raw_fd(), &mut ctl, &self.send_iov)
                .map_err(|_| CryptoError::InvalidDataLength)?;
            if sent != total {
                return Err(CryptoError::InvalidDataLength);
            }
        }
        slot.iocb = Iocb {
            aio_data: i as u64,
            aio_lio_opcode: sys::IOCB_CMD_PREADV,
            aio_fildes: opfd.as_raw_fd() as u32,
            aio_buf: slot.iov.as_ptr() as u64,
            aio_nbytes: slot.iov.len() as u64,
            aio_flags: sys::IOCB_FLAG_RESFD,
            aio_resfd: self.efd.as_raw_fd() as u32,
            ..Iocb::default()
        };
        slot.op = Some(opfd);
        slot.user_data = op.user_data;
        Ok(())
    }

    fn finish(&mut self, i: usize, res: i64) -> Completion {
        let slot = &mut self.slots[i];
        slot.op = None;
        let result = if res >= 0 {
            if let Post::Digest(n) = slot.post {
                let mut from = &slot.tail[..n];
                for &(p, l) in &slot.digest {
                    let k = l.min(from.len());
                    // SAFETY: the digest segment is valid and writable until this completion
                    // is dequeued (the enqueue contract); `from` is our scratch.
                    unsafe { std::ptr::copy_nonoverlapping(from.as_ptr(), p as *mut u8, k) };
                    from = &from[k..];
                }
            }
            Ok(())
        } else if res == -(libc::EBADMSG as i64) {
            if let Post::AeadDecrypt = slot.post {
                for &(p, l) in &slot.dst {
                    // SAFETY: as above: the destination is ours until the completion.
                    unsafe { std::ptr::write_bytes(p as *mut u8, 0, l) };
                }
            }
            Err(CryptoError::AuthFailed)
        } else if res == -(libc::EINVAL as i64) {
            Err(CryptoError::InvalidDataLength)
        } else {
            Err(CryptoError::Internal("AF_ALG request failed"))
        };
        slot.tail.fill(0);
        Completion {
            user_data: slot.user_data,
            result,
        }
    }
}

impl CryptoQueue for AfAlgQueue {
    unsafe fn enqueue(&mut self, ops: &[CryptoOp<'_>]) -> usize {
        self.submit.clear();
        let mut taken = 0;
        for op in ops {
            if self.ready.len() >= self.slots.len() {
                break;
            }
            let Some(s) = op.session.as_any().downcast_ref::<AfAlgSession>() else {
                self.ready.push_back(Completion {
                    user_data: op.user_data,
                    result: Err(CryptoError::InvalidSession),
                });
                taken += 1;
                continue;
            };
            let Some(i) = self.free.pop() else {
                break;
            };
            match self.prepare(i, s, op) {
                Ok(()) => self.submit.push(&mut self.slots[i].iocb),
                Err(e) => {
                    self.slots[i].op = None;
                    self.free.push(i);
                    self.ready.push_back(Completion {
                        user_data: op.user_data,
                        result: Err(e),
                    });
                }
            }
            taken += 1;
        }
        // SAFETY: the iocbs live in our slots (never moved: a boxed slice) and the buffers they
        // describe are valid until completion (slot scratch, or guest memory per our contract).
        let done = unsafe { self.aio.submit(&mut self.submit) }.unwrap_or(0);
        // Requests the kernel refused to queue fail now.
        for k in done..self.submit.len() {
            // SAFETY: the pointer is to one of our slots' iocb.
            let i = unsafe { (*self.submit[k]).aio_data } as usize;
            let c = self.finish(i, -(libc::EIO as i64));
            self.free.push(i);
            self.ready.push_back(c);
        }
        taken
    }

    fn dequeue(&mut self, out: &mut [Completion]) -> usize {
        let mut n = crate::take_ready(&mut self.ready, out);
        while n < out.len() && self.free.len() < self.slots.len() {
            let max = (out.len() - n).min(self.events.len());
            let got = self.aio.reap(&mut self.events[..max]);
            if got == 0 {
                break;
            }
            for k in 0..got {
                let ev = self.events[k];
                let i = ev.data as usize;
                if i >= self.slots.len() || self.slots[i].op.is_none() {
                    continue;
                }
                out[n] = self.finish(i, ev.res);
                self.free.push(i);
                n += 1;
            }
        }
        n
    }

    fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len() + self.ready.len()
    }

    fn notifier(&self) -> Option<RawFd> {
        Some(self.efd.as_raw_fd())
    }
}
