//! The vhost-user server's state machine: sequences of messages (with file descriptors)
//! against a crypto or net device, the rings they start running over guest memory the
//! frontend writes, kicks, and memory that shrinks under the workers.
//!
//! Input: `device u8` (bit 0: net), then operations `op u8 | chunk` (see
//! `dpacc_fuzz::session_op`), at most 64.

#![no_main]

use dpacc_backend::fuzzing::{self, Device, Fd, SessionOp};
use dpacc_fuzz::{session_op, Reader};
use libfuzzer_sys::fuzz_target;

fn op(code: u8, data: &[u8]) -> Option<SessionOp> {
    let mut r = Reader::new(data);
    Some(match code % 4 {
        session_op::MSG => {
            let request = u32::from(r.u8());
            let flags = u32::from(r.u8());
            let n = r.u8() % 9;
            let fds = (0..n)
                .map(|_| match r.u8() % 3 {
                    0 => Fd::Memory,
                    1 => Fd::Event,
                    _ => Fd::Pipe,
                })
                .collect();
            SessionOp::Msg {
                request,
                flags,
                payload: r.rest().to_vec(),
                fds,
            }
        }
        session_op::WRITE => SessionOp::Write {
            offset: r.u32() as usize % fuzzing::SESSION_MEM,
            data: r.rest().to_vec(),
        },
        session_op::KICK => SessionOp::Kick(r.u8()),
        _ => SessionOp::Shrink(r.u32() as usize),
    })
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let device = if r.u8() & 1 != 0 {
        Device::Net
    } else {
        Device::Crypto
    };
    let mut ops = Vec::new();
    while !r.is_empty() && ops.len() < 64 {
        let code = r.u8();
        let chunk = r.chunk();
        ops.extend(op(code, chunk));
    }
    fuzzing::vhost_user_session(device, &ops);
});
