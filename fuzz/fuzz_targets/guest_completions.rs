//! The guest library facing a hostile device: what a device writes into the library's rings
//! (used ids, indices, lengths, status bytes, RX buffers) and the fast-path control frames it
//! sends, driven through the library's public API over `dpacc_guest::fake_device`.
//!
//! Oracles beyond "no crash, no leak, no hang": every operation or request completes at most
//! once, with its own buffers (crypto) or its own request kind (flow table); completions name
//! only what was submitted; an error from the rings is `Error::Protocol` and the queue or port
//! stays broken after it; a received frame fits the caller's buffer.
//!
//! Input: `mode u8` (0 crypto data queue, 1 flow table, 2 net port), then commands of
//! `op u8 | args` until the input ends (at most 256).

#![no_main]

use std::collections::HashMap;
use std::time::Duration;

use dpacc_fuzz::Reader;
use dpacc_guest::fake_device::{Chain, FakeDevice};
use dpacc_guest::net::{FlowTable, FrameIo, NetOptions, Request, VirtioNetPort};
use dpacc_guest::{CompletionMode, CryptoDevice, Error, Op, Options, Queue, Session};
use dpacc_spec::fastpath::proto::{self, BACKEND_MAC};
use dpacc_spec::fastpath::PortId;
use dpacc_spec::{AeadAlg, Direction, SessionParams};
use libfuzzer_sys::fuzz_target;

const MAX_COMMANDS: usize = 256;

/// The device side of one ring as the fuzzer drives it: chains taken off the avail ring, and
/// used entries, indices, lengths and bytes of the input's choosing.
fn device_command(fake: &FakeDevice, index: u16, popped: &mut Vec<Chain>, op: u8, r: &mut Reader) {
    let pick = |popped: &[Chain], b: u8| popped.get(usize::from(b) % popped.len().max(1)).cloned();
    match op {
        // Take what the driver made available.
        0 => {
            fake.with_ring(index, |ring| {
                popped.extend(std::iter::from_fn(|| ring.pop()))
            });
        }
        // A used entry (not published): a popped chain's head or any id, a length near its
        // writable one or any.
        1 => {
            let (ahead, sel, raw_id, delta) = (r.u8(), r.u8(), r.u32(), r.u16() as i16);
            let c = pick(popped, sel);
            let id = match (&c, sel & 0x80) {
                (Some(c), 0) => u32::from(c.head),
                _ => raw_id,
            };
            let wl = c.as_ref().map_or(0, Chain::writable_len);
            let len = if delta == i16::MIN {
                r.u32()
            } else {
                wl.wrapping_add(delta as i32 as u32)
            };
            fake.with_ring(index, |ring| {
                ring.write_used_entry(u16::from(ahead % 4), id, len)
            });
        }
        // Publish a used index: a step from the current one (forwards or back).
        2 => {
            let step = r.u16();
            fake.with_ring(index, |ring| {
                ring.set_used_idx(ring.used_idx().wrapping_add(step))
            });
        }
        // Bytes into a popped chain's writable part (status bytes, headers, answers).
        3 => {
            let (sel, at) = (r.u8(), r.u16());
            let bytes = r.chunk();
            if let Some(c) = pick(popped, sel) {
                fake.with_ring(index, |ring| {
                    ring.write_writable(&c, usize::from(at), bytes)
                });
            }
        }
        // Complete a popped chain the way the spec says, with any status byte.
        _ => {
            let (sel, status) = (r.u8(), r.u8());
            if let Some(c) = pick(popped, sel) {
                fake.with_ring(index, |ring| ring.complete_with_status(&c, status));
            }
        }
    }
}

// ---------------------------------------------------------------- crypto data queue

/// A control queue that answers every create with a fresh id and every destroy OK.
fn control_handler() -> dpacc_guest::fake_device::Handler {
    let mut next = 0u64;
    Box::new(move |ring, c| {
        next += 1;
        let wl = c.writable_len();
        if wl >= 16 {
            let mut si = [0u8; 16];
            si[..8].copy_from_slice(&next.to_le_bytes());
            ring.write_writable(&c, 0, &si);
            ring.push_used(u32::from(c.head), wl);
        } else {
            ring.complete_with_status(&c, 0);
        }
    })
}

struct CryptoRun {
    dev: CryptoDevice,
    session: Session,
    q: Queue,
    /// user data → (src, dst) guest addresses of operations in flight.
    in_flight: HashMap<u64, (u64, u64)>,
    next: u64,
    broken: bool,
}

impl CryptoRun {
    fn push(&mut self, len: usize) {
        let (Ok(src), Ok(dst)) = (self.dev.alloc(len), self.dev.alloc(len + 16)) else {
            return;
        };
        let gpas = (src.gpa(), dst.gpa());
        let op = Op::aead(&self.session, &[0u8; 12], None, src, dst).with_user_data(self.next);
        match self.q.push(op) {
            Ok(()) => {
                assert!(!self.broken, "a broken queue took an operation");
                self.in_flight.insert(self.next, gpas);
                self.next += 1;
            }
            Err(rej) => {
                if self.broken {
                    assert!(matches!(rej.error, Error::Protocol(_)), "{}", rej.error);
                }
                // The operation comes back whole.
                let b = rej.op.into_bufs();
                let back = (b.src.map(|s| s.gpa()), b.dst.map(|d| d.gpa()));
                assert_eq!(back, (Some(gpas.0), Some(gpas.1)));
            }
        }
        let _ = self.q.flush();
    }

    fn poll(&mut self) {
        let in_flight = &mut self.in_flight;
        let r = self.q.poll_with(|c| {
            let want = in_flight.remove(&c.user_data).unwrap_or_else(|| {
                panic!("operation {} completed twice or never pushed", c.user_data)
            });
            let got = (
                c.bufs.src.as_ref().map(|b| b.gpa()),
                c.bufs.dst.as_ref().map(|b| b.gpa()),
            );
            assert_eq!(
                got,
                (Some(want.0), Some(want.1)),
                "another operation's buffers"
            );
        });
        match r {
            Ok(_) => {
                assert!(!self.broken, "a broken queue polled clean");
                assert_eq!(self.q.in_flight(), self.in_flight.len());
            }
            Err(e) => {
                assert!(matches!(e, Error::Protocol(_)), "{e}");
                self.broken = true;
            }
        }
    }
}

fn crypto(r: &mut Reader) {
    let flags = r.u8();
    let fake = FakeDevice::crypto(1);
    fake.set_handler(1, control_handler());
    let opts = Options {
        queue_size: 8,
        completion: CompletionMode::Poll,
        arena_size: 64 << 10,
        timeout: Duration::from_millis(10),
        indirect: flags & 1 != 0,
        ..Options::default()
    };
    let dev = CryptoDevice::with_transport(fake.transport(), opts).expect("bring-up");
    let session = dev
        .create_session(&SessionParams::Aead {
            alg: AeadAlg::AesGcm,
            key: &[1u8; 16],
            tag_len: 0,
            dir: Direction::Encrypt,
        })
        .expect("session");
    let q = dev.queue(0).expect("queue");
    let mut run = CryptoRun {
        dev,
        session,
        q,
        in_flight: HashMap::new(),
        next: 0,
        broken: false,
    };
    let mut popped = Vec::new();
    for _ in 0..MAX_COMMANDS {
        if r.is_empty() {
            break;
        }
        match r.u8() {
            0..=31 => {
                let len = 16 + usize::from(r.u8());
                run.push(len);
            }
            32..=63 => run.poll(),
            op => device_command(&fake, 0, &mut popped, op % 5, r),
        }
    }
    run.poll();
}

// ---------------------------------------------------------------- flow table

/// Frames the device sends, in order; what the table sends is dropped.
#[derive(Default)]
struct Frames(std::collections::VecDeque<Vec<u8>>);

impl FrameIo for Frames {
    fn send(&mut self, _frame: &[u8]) -> dpacc_guest::Result<()> {
        Ok(())
    }
    fn recv(&mut self, buf: &mut [u8], _t: Option<Duration>) -> dpacc_guest::Result<Option<usize>> {
        Ok(self.0.pop_front().map(|f| {
            let n = f.len().min(buf.len());
            buf[..n].copy_from_slice(&f[..n]);
            n
        }))
    }
}

fn flow_table(r: &mut Reader) {
    let mac = [2, 0, 0, 0, 0, 1];
    let mut ft = FlowTable::new(Frames::default(), mac);
    ft.timeout = Duration::from_secs(3600);
    ft.set_max_in_flight(64);
    ft.set_max_events(16);
    let mut submitted: HashMap<u32, Request> = HashMap::new();
    let mut order: Vec<u32> = Vec::new();
    let mut out = Vec::new();
    for _ in 0..MAX_COMMANDS {
        if r.is_empty() {
            break;
        }
        let op = r.u8();
        match op % 4 {
            // Submit a request.
            0 => {
                let (kind, arg) = (r.u8(), r.u32());
                let res = match kind % 5 {
                    0 => ft
                        .submit_stats(u64::from(arg))
                        .map(|t| (t, Request::FlowStats)),
                    1 => ft
                        .submit_delete_flows(u64::from(arg))
                        .map(|t| (t, Request::FlowDelete)),
                    2 => ft.submit_list_page(arg).map(|t| (t, Request::FlowList)),
                    3 => ft.submit_hello().map(|t| (t, Request::Hello)),
                    _ => ft
                        .submit_packet_out(PortId(arg as u16), false, &[0u8; 60])
                        .map(|t| (t, Request::PacketOut)),
                };
                if let Ok((txid, req)) = res {
                    assert!(submitted.insert(txid, req).is_none(), "txid {txid} reused");
                    order.push(txid);
                }
            }
            // A frame from the device: a header over any body (the txid of a request or any).
            1 | 2 => {
                let (ty, flags, sel, raw, len) = (r.u8(), r.u8(), r.u8(), r.u32(), r.u16());
                let body = r.chunk();
                let txid = match (sel & 0x80, order.is_empty()) {
                    (0, false) => order[usize::from(sel) % order.len()],
                    _ => raw,
                };
                let version = if ty & 0x80 != 0 { 2 } else { 1 };
                let blen = if len == u16::MAX {
                    body.len() as u32
                } else {
                    u32::from(len)
                };
                let mut f = Vec::with_capacity(26 + body.len());
                f.extend_from_slice(&mac);
                f.extend_from_slice(&BACKEND_MAC);
                f.extend_from_slice(&proto::ETHERTYPE.to_be_bytes());
                f.extend_from_slice(&[version, ty & 0x1f, 0, flags & 1]);
                f.extend_from_slice(&txid.to_be_bytes());
                f.extend_from_slice(&blen.to_be_bytes());
                f.extend_from_slice(body);
                ft.io().0.push_back(f);
            }
            // Raw bytes as a frame.
            _ => {
                let f = r.chunk().to_vec();
                ft.io().0.push_back(f);
            }
        }
        if op & 0x40 != 0 {
            out.clear();
            // The transport never fails, so neither does polling.
            ft.poll_completions(&mut out).expect("poll");
            for c in &out {
                let want = submitted
                    .remove(&c.txid)
                    .unwrap_or_else(|| panic!("txid {} completed twice or never sent", c.txid));
                assert_eq!(c.request, want);
                if want == Request::PacketOut {
                    assert!(matches!(c.result, Err(Error::FlowRejected { .. })));
                }
            }
            let waiting = submitted
                .values()
                .filter(|r| **r != Request::PacketOut)
                .count();
            assert_eq!(ft.in_flight(), waiting);
            assert!(ft.events_dropped() <= u64::from(u32::MAX));
        }
    }
}

// ---------------------------------------------------------------- net port

fn net_port(r: &mut Reader) {
    let flags = r.u8();
    let mrg = flags & 1 != 0;
    let fake = FakeDevice::net([2, 0, 0, 0, 0, 2], mrg);
    let opts = NetOptions {
        queue_size: 8,
        rx_buf: if mrg { 256 } else { 1526 },
        mrg_rxbuf: mrg,
    };
    let mut port = VirtioNetPort::with_transport(fake.transport(), opts).expect("bring-up");
    let mut popped = [Vec::new(), Vec::new()];
    let mut broken = false;
    let mut buf = vec![0u8; 4096];
    for _ in 0..MAX_COMMANDS {
        if r.is_empty() {
            break;
        }
        match r.u8() {
            0..=31 => {
                let n = 1 + usize::from(r.u16()) % buf.len();
                match port.recv(&mut buf[..n], Some(Duration::ZERO)) {
                    Ok(got) => {
                        assert!(!broken, "a broken port received");
                        assert!(got.is_none_or(|len| len <= n));
                    }
                    Err(e) => {
                        assert!(matches!(e, Error::Protocol(_)), "{e}");
                        broken = true;
                    }
                }
            }
            32..=47 => {
                let frame = r.chunk();
                if !frame.is_empty() && frame.len() <= 2036 {
                    // TX completions the device wrote are checked here.
                    if let Err(e) = port.send_batch(&[frame]) {
                        assert!(matches!(e, Error::Protocol(_)), "{e}");
                    }
                }
            }
            op => {
                let q = u16::from(op & 0x80 != 0);
                device_command(&fake, q, &mut popped[usize::from(q)], op % 5, r);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    match r.u8() % 3 {
        0 => crypto(&mut r),
        1 => flow_table(&mut r),
        _ => net_port(&mut r),
    }
});
