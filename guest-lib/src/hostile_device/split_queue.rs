//! The used ring under a misbehaving device: every bad entry is an `Error::Protocol`, the
//! queue stays broken (sticky), and nothing a failed reap saw is handed out or recycled.

use super::FakeDevice;
use crate::error::Error;
use crate::mem::SharedMemory;
use crate::transport::setup_split_queue;
use crate::virtq::{RawDesc, RingLayout, SplitQueue};
use std::sync::Arc;

/// A queue of `size` entries over a fake device's memory (polled: no notifications needed).
fn queue(size: u16) -> (FakeDevice, Arc<SharedMemory>, SplitQueue) {
    let dev = FakeDevice::new(1, Vec::new(), crate::transport::VIRTIO_RING_F_EVENT_IDX);
    let mut t = dev.transport();
    let mem = t.setup_memory(RingLayout::new(size).total).unwrap();
    // SAFETY: the fresh region holds exactly this ring, and `mem` is returned beside the queue
    // (every test keeps it alive as long as the queue).
    let (vq, _n) = unsafe { setup_split_queue(&mut *t, &mem, 0, 0, size, false) }.unwrap();
    (dev, mem, vq)
}

const CHAIN: [RawDesc; 3] = [
    RawDesc {
        addr: 0x100,
        len: 16,
        flags: 0,
    },
    RawDesc {
        addr: 0x200,
        len: 64,
        flags: crate::virtq::VIRTQ_DESC_F_WRITE,
    },
    RawDesc {
        addr: 0x300,
        len: 1,
        flags: crate::virtq::VIRTQ_DESC_F_WRITE,
    },
];

/// Adds `n` chains (tokens 0..n), publishes them, and has the device take them off the ring;
/// returns their heads.
fn in_flight(dev: &FakeDevice, vq: &mut SplitQueue, n: u64) -> Vec<u16> {
    let heads: Vec<u16> = (0..n).map(|t| vq.add(&CHAIN, t).unwrap()).collect();
    vq.publish();
    dev.with_ring(0, |r| {
        for &h in &heads {
            assert_eq!(r.pop().unwrap().head, h);
        }
    });
    heads
}

/// The queue is broken: the error comes back on every reap, even after the device rewrote
/// the entry into a valid one, and nothing was recycled.
fn assert_broken(dev: &FakeDevice, vq: &mut SplitQueue, free: u16, fix: Option<(u32, u32)>) {
    assert!(vq.is_broken());
    if let Some((id, len)) = fix {
        dev.with_ring(0, |r| r.write_used_entry(0, id, len));
    }
    for _ in 0..3 {
        assert!(matches!(vq.reap(), Err(Error::Protocol(_))));
    }
    assert_eq!(vq.num_free(), free, "a failed reap recycles nothing");
}

#[test]
fn a_used_id_out_of_range_breaks_the_queue() {
    for bad in [8u32, 9, 0xffff, 0x1_0000, u32::MAX] {
        let (dev, _mem, mut vq) = queue(8);
        let heads = in_flight(&dev, &mut vq, 2);
        dev.with_ring(0, |r| r.push_used(bad, 1));
        let e = vq.reap().unwrap_err();
        assert_eq!(
            e.to_string(),
            "device protocol violation: used id is not a chain in flight"
        );
        assert_broken(&dev, &mut vq, 2, Some((u32::from(heads[0]), 1)));
    }
}

#[test]
fn a_used_id_of_an_idle_descriptor_breaks_the_queue() {
    let (dev, _mem, mut vq) = queue(8);
    let heads = in_flight(&dev, &mut vq, 2);
    // Descriptor 1 is the middle of the first chain (not a head), 7 was never used.
    for bad in [1u32, 7] {
        let (dev, _mem, mut vq) = queue(8);
        in_flight(&dev, &mut vq, 2);
        dev.with_ring(0, |r| r.push_used(bad, 0));
        assert!(matches!(vq.reap(), Err(Error::Protocol(_))));
        assert_broken(&dev, &mut vq, 2, None);
    }
    // A head that was in flight, reaped, and is idle again.
    dev.with_ring(0, |r| r.push_used(u32::from(heads[0]), 65));
    assert_eq!(vq.reap().unwrap().unwrap().token, 0);
    dev.with_ring(0, |r| r.push_used(u32::from(heads[0]), 65));
    assert!(matches!(vq.reap(), Err(Error::Protocol(_))));
    assert_broken(&dev, &mut vq, 5, Some((u32::from(heads[1]), 0)));
}

#[test]
fn the_same_id_completed_twice_is_reaped_once() {
    let (dev, _mem, mut vq) = queue(8);
    let heads = in_flight(&dev, &mut vq, 2);
    dev.with_ring(0, |r| {
        r.push_used(u32::from(heads[1]), 10);
        r.push_used(u32::from(heads[1]), 10);
    });
    let u = vq.reap().unwrap().unwrap();
    assert_eq!((u.head, u.token, u.len, u.writable), (heads[1], 1, 10, 65));
    assert!(matches!(vq.reap(), Err(Error::Protocol(_))));
    assert_broken(&dev, &mut vq, 5, None);
    assert_eq!(vq.in_flight(), 1);
}

#[test]
fn a_used_index_that_jumps_or_goes_back_breaks_the_queue() {
    // Ahead of what is in flight, ahead by more than the ring, and backwards.
    for ahead in [3u16, 9, 0xffff, 0x8000] {
        let (dev, _mem, mut vq) = queue(8);
        let heads = in_flight(&dev, &mut vq, 2);
        dev.with_ring(0, |r| {
            for k in 0..8 {
                r.write_used_entry(k, u32::from(heads[0]), 0);
            }
            r.set_used_idx(ahead);
        });
        let e = vq.reap().unwrap_err();
        assert!(e.to_string().contains("used index"), "{e}");
        assert_broken(&dev, &mut vq, 2, None);
    }
    // Backwards after some progress.
    let (dev, _mem, mut vq) = queue(8);
    let heads = in_flight(&dev, &mut vq, 2);
    dev.with_ring(0, |r| r.push_used(u32::from(heads[0]), 0));
    vq.reap().unwrap().unwrap();
    dev.with_ring(0, |r| r.set_used_idx(0));
    assert!(matches!(vq.reap(), Err(Error::Protocol(_))));
    assert_broken(&dev, &mut vq, 5, None);
}

#[test]
fn a_used_length_beyond_the_writable_bytes_breaks_the_queue() {
    for bad in [66u32, 1 << 20, u32::MAX] {
        let (dev, _mem, mut vq) = queue(4);
        let heads = in_flight(&dev, &mut vq, 1);
        dev.with_ring(0, |r| r.push_used(u32::from(heads[0]), bad));
        let e = vq.reap().unwrap_err();
        assert!(e.to_string().contains("used length"), "{e}");
        assert_broken(&dev, &mut vq, 1, Some((u32::from(heads[0]), 65)));
    }
    // Exactly the writable bytes is fine.
    let (dev, _mem, mut vq) = queue(4);
    let heads = in_flight(&dev, &mut vq, 1);
    dev.with_ring(0, |r| r.push_used(u32::from(heads[0]), 65));
    assert_eq!(vq.reap().unwrap().unwrap().len, 65);
    assert_eq!(vq.num_free(), 4);
}

/// A completion naming a chain of another queue: on this queue the id is idle (nothing in
/// flight here has it), so this queue breaks, and the other one is not disturbed.
#[test]
fn a_completion_on_the_wrong_queue_breaks_only_that_queue() {
    let (dev_a, _ma, mut a) = queue(8);
    let (dev_b, _mb, mut b) = queue(8);
    let ha = in_flight(&dev_a, &mut a, 2);
    // Queue b has its own chain in flight, at a's first head, not at a's second.
    let hb = in_flight(&dev_b, &mut b, 1);
    assert_eq!(ha[0], hb[0]);
    dev_b.with_ring(0, |r| r.push_used(u32::from(ha[1]), 0));
    assert!(matches!(b.reap(), Err(Error::Protocol(_))));
    assert!(b.is_broken());
    dev_a.with_ring(0, |r| r.push_used(u32::from(ha[1]), 3));
    let u = a.reap().unwrap().unwrap();
    assert_eq!((u.token, u.len), (1, 3));
    assert!(!a.is_broken());
}

/// Every token added is reaped at most once, whatever order and lengths the device picks,
/// across index wrap-around.
#[test]
fn tokens_come_back_once_across_wraparound() {
    let (dev, _mem, mut vq) = queue(4);
    let mut seen = std::collections::HashSet::new();
    let mut next = 0u64;
    // Two chains per round: the 16-bit indices wrap after 32768 rounds.
    for round in 0..40_000u32 {
        while vq.num_free() >= 2 {
            vq.add(&CHAIN[1..], next).unwrap();
            next += 1;
        }
        vq.publish();
        let chains: Vec<_> = dev
            .with_ring(0, |r| std::iter::from_fn(|| r.pop()).collect())
            .unwrap();
        dev.with_ring(0, |r| {
            for c in chains.iter().rev() {
                r.push_used(u32::from(c.head), round % 66);
            }
        });
        while let Some(u) = vq.reap().unwrap() {
            assert!(seen.insert(u.token), "token {} twice", u.token);
        }
    }
    assert_eq!(seen.len() as u64, next);
    assert_eq!(vq.num_free(), 4);
}
