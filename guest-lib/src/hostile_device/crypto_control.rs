//! Session answers from a misbehaving control queue: statuses outside the spec, session ids
//! already open, answers to requests never made, answers that never come (or come late).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dpacc_spec::CryptoError;

use super::{answer_ctrl, control, crypto, gcm_session, is_create, Answer};
use crate::fake_device::Chain;
use crate::Error;

/// Control queue index of a device with two data queues.
const CTRL: u16 = 2;

fn protocol(e: Error) -> &'static str {
    match e {
        Error::Protocol(m) => m,
        e => panic!("not a protocol error: {e}"),
    }
}

#[test]
fn create_statuses_map_to_errors_and_unknown_ones_are_violations() {
    for (status, want) in [
        (3u32, Some(CryptoError::Unsupported)),
        (5, Some(CryptoError::NoSpace)),
        (1, Some(CryptoError::BadRequest)),
        (7, None),
        (0xff, None),
        (0x100, None),
        (u32::MAX, None),
    ] {
        let (_fake, dev) = crypto(
            2,
            true,
            control(Arc::default(), move |_| {
                Some(Answer {
                    status,
                    ..Answer::ok(9)
                })
            }),
        );
        let e = gcm_session(&dev).unwrap_err();
        match want {
            Some(c) => assert_eq!(e.crypto(), Some(c), "status {status}"),
            None => assert_eq!(
                protocol(e),
                "create session: a status outside the virtio-crypto spec"
            ),
        }
    }
}

#[test]
fn a_destroy_status_outside_the_spec_is_a_violation() {
    let mut next = 0;
    let (_fake, dev) = crypto(
        2,
        true,
        control(Arc::default(), move |op| {
            next += 1;
            Some(if is_create(op) {
                Answer::ok(next)
            } else {
                Answer {
                    status: 0x33,
                    ..Answer::ok(0)
                }
            })
        }),
    );
    let s = gcm_session(&dev).unwrap();
    assert_eq!(
        protocol(s.close().unwrap_err()),
        "destroy session: a status outside the virtio-crypto spec"
    );
}

/// Ids are never reused while their session is open: a create answered with the id of an
/// open session fails (two `Session`s would destroy each other's), one closed may come back.
#[test]
fn a_session_id_already_open_is_a_violation() {
    let (_fake, dev) = crypto(2, true, control(Arc::default(), |_| Some(Answer::ok(42))));
    let a = gcm_session(&dev).unwrap();
    assert_eq!(a.id(), 42);
    assert_eq!(
        protocol(gcm_session(&dev).unwrap_err()),
        "create session: the device returned the id of a session already open"
    );
    drop(a);
    assert_eq!(gcm_session(&dev).unwrap().id(), 42);
}

#[test]
fn a_short_session_input_is_a_violation() {
    let (_fake, dev) = crypto(
        2,
        true,
        control(Arc::default(), |_| {
            Some(Answer {
                used: Some(11),
                ..Answer::ok(1)
            })
        }),
    );
    assert_eq!(
        protocol(gcm_session(&dev).unwrap_err()),
        "create session: device wrote no session input"
    );
}

/// An answer naming a control chain that is not in flight breaks the control queue: every
/// later request fails the same way.
#[test]
fn an_answer_to_a_request_never_made_breaks_the_control_queue() {
    for bad in [5u32, 64, u32::MAX] {
        let (_fake, dev) = crypto(
            2,
            true,
            control(Arc::default(), move |_| {
                Some(Answer {
                    used_id: Some(bad),
                    ..Answer::ok(1)
                })
            }),
        );
        assert_eq!(
            protocol(gcm_session(&dev).unwrap_err()),
            "used id is not a chain in flight"
        );
        assert!(matches!(gcm_session(&dev), Err(Error::Protocol(_))));
    }
}

/// A lost answer times out; while that request may still be answered the scratch area it
/// points at is not reused (a late answer would be read as the next request's); once the
/// late answer comes, the next request goes through and reads its own answer.
#[test]
fn a_lost_answer_times_out_and_blocks_reuse_until_it_comes() {
    let lost = Arc::new(Mutex::new(Vec::<Chain>::new()));
    let mut n = 0;
    let (fake, dev) = crypto(
        2,
        true,
        control(lost.clone(), move |_| {
            n += 1;
            (n > 1).then(|| Answer::ok(100 + n))
        }),
    );
    let t = Instant::now();
    assert!(matches!(gcm_session(&dev), Err(Error::Timeout)));
    assert!(t.elapsed() >= Duration::from_millis(200));
    assert_eq!(
        protocol(gcm_session(&dev).unwrap_err()),
        "an earlier control request is still unanswered (it timed out)"
    );
    assert_eq!(
        fake.kicks(CTRL),
        1,
        "nothing was posted for the refused request"
    );
    // The late answer comes (a session the library no longer waits for).
    let c = lost.lock().unwrap().pop().unwrap();
    fake.with_ring(CTRL, |r| answer_ctrl(r, &c, Answer::ok(77)));
    let s = gcm_session(&dev).unwrap();
    assert_eq!(s.id(), 102);
}

/// In-band session control on a data queue the caller holds: a queue with no descriptors
/// left refuses the request (`QueueFull`) and stays usable; it is not marked broken.
#[test]
fn in_band_on_a_full_held_queue_is_refused_not_broken() {
    use dpacc_spec::in_band::{CLOSE_ALL_SESSIONS, GET_CONFIG};

    use crate::fake_device::{crypto_config, FakeDevice};
    use crate::{CryptoDevice, Op, Options, SessionControl};

    let fake = FakeDevice::crypto(1);
    let data = Arc::new(Mutex::new(Vec::<Chain>::new()));
    let stash = data.clone();
    let mut next = 0;
    fake.set_handler(
        0,
        Box::new(move |r, c| {
            let req = r.read_readable(&c);
            match u32::from_le_bytes(req[..4].try_into().unwrap()) {
                GET_CONFIG => {
                    let mut a = crypto_config(1);
                    a.push(0);
                    r.write_writable(&c, 0, &a);
                    r.push_used(u32::from(c.head), c.writable_len());
                }
                CLOSE_ALL_SESSIONS => r.complete_with_status(&c, 0),
                op if is_create(op) || op & 0xff == 0x03 => {
                    next += 1;
                    answer_ctrl(r, &c, Answer::ok(next));
                }
                _ => stash.lock().unwrap().push(c),
            }
        }),
    );
    let opts = Options {
        session_control: SessionControl::InBand,
        ..super::options(false)
    };
    let dev = CryptoDevice::with_transport(fake.transport(), opts).unwrap();
    assert!(dev.uses_in_band_sessions());
    let mut q = dev.queue(0).unwrap();
    let params = dpacc_spec::SessionParams::Aead {
        alg: dpacc_spec::AeadAlg::AesGcm,
        key: &[1u8; 16],
        tag_len: 0,
        dir: dpacc_spec::Direction::Encrypt,
    };
    let s = q.create_session(&params).unwrap();
    // Two operations of four descriptors each fill the eight-entry ring.
    for u in 0..2 {
        let src = dev.alloc(64).unwrap();
        let dst = dev.alloc(80).unwrap();
        q.push(Op::aead(&s, &[0u8; 12], None, src, dst).with_user_data(u))
            .unwrap();
    }
    q.flush().unwrap();
    assert!(matches!(q.create_session(&params), Err(Error::QueueFull)));
    let chains = std::mem::take(&mut *data.lock().unwrap());
    assert_eq!(chains.len(), 2);
    fake.with_ring(0, |r| {
        chains.iter().for_each(|c| r.complete_with_status(c, 0))
    });
    let mut out = Vec::new();
    q.poll(&mut out).unwrap();
    assert_eq!(out.len(), 2);
    assert!(out.iter().all(|c| c.result.is_ok()));
    // Still usable, for operations and for sessions.
    let s2 = q.create_session(&params).unwrap();
    assert_ne!(s2.id(), s.id());
}
