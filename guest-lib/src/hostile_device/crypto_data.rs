//! Data-queue completions from a misbehaving device: a status byte or used length the spec
//! does not allow fails that operation alone; a used entry that names no operation in flight
//! breaks the queue; no operation completes twice, no buffer comes back twice.

use std::collections::HashSet;

use dpacc_spec::CryptoError;

use super::{crypto, gcm_session, well_behaved_control};
use crate::fake_device::{Chain, FakeDevice};
use crate::{Completion, CryptoDevice, Error, Op, Queue, Session};

/// Pushes `n` AES-GCM operations (user data `first..first + n`) and flushes.
fn push(dev: &CryptoDevice, s: &Session, q: &mut Queue, first: u64, n: u64) {
    for u in first..first + n {
        let src = dev.alloc_from(&[u as u8; 64]).unwrap();
        let dst = dev.alloc(64 + 16).unwrap();
        q.push(Op::aead(s, &[0u8; 12], None, src, dst).with_user_data(u))
            .unwrap();
    }
    q.flush().unwrap();
}

/// The chains the device has been given on queue `index`, in order.
fn take(fake: &FakeDevice, index: u16) -> Vec<Chain> {
    fake.with_ring(index, |r| std::iter::from_fn(|| r.pop()).collect())
        .unwrap()
}

fn poll(q: &mut Queue) -> crate::Result<Vec<Completion>> {
    let mut out = Vec::new();
    q.poll(&mut out).map(|_| out)
}

fn setup(indirect: bool) -> (FakeDevice, CryptoDevice, Session, Queue) {
    let (fake, dev) = crypto(2, indirect, well_behaved_control());
    let s = gcm_session(&dev).unwrap();
    let q = dev.queue(0).unwrap();
    (fake, dev, s, q)
}

const OUTSIDE: &str = "device wrote a status byte outside the virtio-crypto spec";
const SHORT: &str = "device's used length is short of the request's status byte";

#[test]
fn a_status_byte_outside_the_spec_fails_that_operation_only() {
    let (fake, dev, s, mut q) = setup(true);
    push(&dev, &s, &mut q, 0, 6);
    let chains = take(&fake, 0);
    assert_eq!(chains.len(), 6);
    fake.with_ring(0, |r| {
        for (c, st) in chains.iter().zip([0u8, 7, 0x80, 2, 4]) {
            r.complete_with_status(c, st);
        }
        // The last one: a used entry with the whole length but no status written (the byte
        // keeps the driver's "unset" mark).
        r.push_used(u32::from(chains[5].head), chains[5].writable_len());
    });
    let c = poll(&mut q).unwrap();
    let results: Vec<_> = c.iter().map(|c| (c.user_data, c.result)).collect();
    assert_eq!(
        results,
        vec![
            (0, Ok(())),
            (1, Err(CryptoError::Internal(OUTSIDE))),
            (2, Err(CryptoError::Internal(OUTSIDE))),
            (3, Err(CryptoError::AuthFailed)),
            (4, Err(CryptoError::InvalidSession)),
            (5, Err(CryptoError::Internal(OUTSIDE))),
        ]
    );
    assert!(c
        .iter()
        .all(|c| c.bufs.src.is_some() && c.bufs.dst.is_some()));
    // The queue still works.
    push(&dev, &s, &mut q, 6, 1);
    let chains = take(&fake, 0);
    fake.with_ring(0, |r| r.complete_with_status(&chains[0], 0));
    let c = poll(&mut q).unwrap();
    assert_eq!((c[0].user_data, c[0].result), (6, Ok(())));
}

#[test]
fn a_used_length_short_of_the_status_fails_that_operation() {
    let (fake, dev, s, mut q) = setup(true);
    push(&dev, &s, &mut q, 0, 3);
    let chains = take(&fake, 0);
    let wl = chains[0].writable_len();
    assert_eq!(wl, 64 + 16 + 1);
    fake.with_ring(0, |r| {
        for (c, len) in chains.iter().zip([0, 1, wl - 1]) {
            // Status OK written, but a used length that says it was not.
            r.write_writable(c, wl as usize - 1, &[0]);
            r.push_used(u32::from(c.head), len);
        }
    });
    let c = poll(&mut q).unwrap();
    assert_eq!(c.len(), 3);
    for (k, c) in c.iter().enumerate() {
        assert_eq!(c.user_data, k as u64);
        assert_eq!(c.result, Err(CryptoError::Internal(SHORT)));
    }
    assert_eq!(q.in_flight(), 0);
}

/// An id completed twice, or an idle one: the queue breaks; each operation comes back at most
/// once with its buffers; later pushes are refused with the operation handed back.
#[test]
fn a_repeated_or_idle_id_breaks_the_queue_without_completing_twice() {
    for indirect in [true, false] {
        for idle in [false, true] {
            let (fake, dev, s, mut q) = setup(indirect);
            push(&dev, &s, &mut q, 0, 2);
            let chains = take(&fake, 0);
            fake.with_ring(0, |r| {
                r.complete_with_status(&chains[0], 0);
                if idle {
                    // A descriptor that heads no chain in flight.
                    r.push_used(7, 1);
                } else {
                    r.complete_with_status(&chains[0], 0);
                }
            });
            let mut seen = Vec::new();
            let e = q.poll_with(|c| seen.push(c.user_data)).unwrap_err();
            assert!(matches!(e, Error::Protocol(_)), "{e}");
            assert_eq!(seen, vec![0]);
            // Broken for good: polling again, or after the device "fixes" things, fails.
            fake.with_ring(0, |r| r.complete_with_status(&chains[1], 0));
            assert!(matches!(poll(&mut q), Err(Error::Protocol(_))));
            let src = dev.alloc(64).unwrap();
            let dst = dev.alloc(80).unwrap();
            let (sg, dg) = (src.gpa(), dst.gpa());
            let r = q
                .push(Op::aead(&s, &[0u8; 12], None, src, dst))
                .unwrap_err();
            assert!(matches!(r.error, Error::Protocol(_)));
            let b = r.op.into_bufs();
            assert_eq!((b.src.unwrap().gpa(), b.dst.unwrap().gpa()), (sg, dg));
        }
    }
}

#[test]
fn a_used_index_that_jumps_or_a_length_past_the_chain_breaks_the_queue() {
    for case in 0..3 {
        let (fake, dev, s, mut q) = setup(true);
        push(&dev, &s, &mut q, 0, 2);
        let chains = take(&fake, 0);
        fake.with_ring(0, |r| match case {
            0 => r.set_used_idx(3),
            1 => r.set_used_idx(0xffff),
            _ => r.push_used(u32::from(chains[0].head), chains[0].writable_len() + 1),
        });
        let mut n = 0;
        assert!(matches!(q.poll_with(|_| n += 1), Err(Error::Protocol(_))));
        assert_eq!(n, 0);
        assert_eq!(q.in_flight(), 2);
    }
}

/// A completion on queue 1 naming a request of queue 0: queue 1 (which has no such request)
/// breaks, queue 0 is not disturbed.
#[test]
fn a_completion_on_another_queue_breaks_only_that_queue() {
    let (fake, dev, s, mut q0) = setup(true);
    let mut q1 = dev.queue(1).unwrap();
    push(&dev, &s, &mut q0, 0, 2);
    push(&dev, &s, &mut q1, 10, 1);
    let c0 = take(&fake, 0);
    let c1 = take(&fake, 1);
    assert_eq!(c0[0].head, c1[0].head);
    fake.with_ring(1, |r| r.complete_with_status(&c0[1], 0));
    assert!(matches!(poll(&mut q1), Err(Error::Protocol(_))));
    fake.with_ring(0, |r| {
        r.complete_with_status(&c0[1], 0);
        r.complete_with_status(&c0[0], 0);
    });
    let c = poll(&mut q0).unwrap();
    let ids: Vec<_> = c.iter().map(|c| (c.user_data, c.result)).collect();
    assert_eq!(ids, vec![(1, Ok(())), (0, Ok(()))]);
}

/// A device that never answers: `wait` gives up after the configured timeout, the operation
/// stays in flight, and a late answer still completes it (once).
#[test]
fn no_answer_times_out_and_a_late_one_completes_once() {
    let (fake, dev, s, mut q) = setup(true);
    push(&dev, &s, &mut q, 0, 1);
    let t = std::time::Instant::now();
    let mut out = Vec::new();
    assert!(matches!(q.wait(&mut out), Err(Error::Timeout)));
    assert!(t.elapsed() >= std::time::Duration::from_millis(200));
    assert_eq!(q.in_flight(), 1);
    let chains = take(&fake, 0);
    fake.with_ring(0, |r| r.complete_with_status(&chains[0], 0));
    q.wait(&mut out).unwrap();
    assert_eq!((out.len(), out[0].user_data), (1, 0));
    assert!(poll(&mut q).unwrap().is_empty());
}

/// Many operations, completed in a scrambled order with a few statuses outside the spec: each
/// comes back exactly once with its own buffers.
#[test]
fn every_operation_comes_back_once_with_its_own_buffers() {
    for indirect in [true, false] {
        let (fake, dev, s, mut q) = setup(indirect);
        let mut gpas = std::collections::HashMap::new();
        let mut seen = HashSet::new();
        let mut next = 0u64;
        for round in 0..200usize {
            while q.free_slots() > 0 {
                let src = dev.alloc_from(&[1u8; 64]).unwrap();
                let dst = dev.alloc(80).unwrap();
                gpas.insert(next, (src.gpa(), dst.gpa()));
                q.push(Op::aead(&s, &[0u8; 12], None, src, dst).with_user_data(next))
                    .unwrap();
                next += 1;
            }
            q.flush().unwrap();
            let mut chains = take(&fake, 0);
            let n = chains.len();
            chains.rotate_left(round % n);
            fake.with_ring(0, |r| {
                for (k, c) in chains.iter().enumerate() {
                    r.complete_with_status(c, if k % 5 == 4 { 0x42 } else { 0 });
                }
            });
            q.poll_with(|c| {
                assert!(seen.insert(c.user_data), "{} twice", c.user_data);
                let want = gpas[&c.user_data];
                let got = (
                    c.bufs.src.as_ref().unwrap().gpa(),
                    c.bufs.dst.as_ref().unwrap().gpa(),
                );
                assert_eq!(got, want);
            })
            .unwrap();
        }
        assert_eq!(seen.len() as u64, next);
    }
}
