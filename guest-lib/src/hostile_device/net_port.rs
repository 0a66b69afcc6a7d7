//! RX buffers of the fast-path port from a misbehaving device: buffer counts the header
//! claims but the ring does not hold, lengths past the buffer, headers shorter than a virtio
//! net header. A clear error and a broken port, or the frame as the buffers hold it; never a
//! read past a buffer.

use std::time::Duration;

use super::FakeDevice;
use crate::fake_device::Chain;
use crate::net::{FrameIo, NetOptions, VirtioNetPort};
use crate::Error;

const MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x42];

fn port(mrg: bool) -> (FakeDevice, VirtioNetPort) {
    let fake = FakeDevice::net(MAC, mrg);
    let opts = NetOptions {
        queue_size: 8,
        rx_buf: 2048,
        mrg_rxbuf: mrg,
    };
    let p = VirtioNetPort::with_transport(fake.transport(), opts).unwrap();
    assert_eq!(p.mac(), MAC);
    assert_eq!(p.mrg_rxbuf(), mrg);
    (fake, p)
}

/// Writes a 12-byte net header claiming `num_buffers` and `body` into RX chain `c`; completes
/// it with `len` (`None`: what was written).
fn rx(fake: &FakeDevice, c: &Chain, num_buffers: u16, body: &[u8], len: Option<u32>) {
    let mut b = vec![0u8; 12];
    b[10..12].copy_from_slice(&num_buffers.to_le_bytes());
    b.extend_from_slice(body);
    fake.with_ring(0, |r| {
        let n = r.write_writable(c, 0, &b);
        r.push_used(u32::from(c.head), len.unwrap_or(n as u32));
    });
}

fn rx_chains(fake: &FakeDevice) -> Vec<Chain> {
    fake.with_ring(0, |r| std::iter::from_fn(|| r.pop()).collect())
        .unwrap()
}

fn recv(p: &mut VirtioNetPort) -> crate::Result<Option<Vec<u8>>> {
    let mut buf = [0u8; 4096];
    Ok(p.recv(&mut buf, Some(Duration::ZERO))?
        .map(|n| buf[..n].to_vec()))
}

#[test]
fn more_buffers_claimed_than_used_breaks_the_port() {
    let (fake, mut p) = port(true);
    let chains = rx_chains(&fake);
    assert_eq!(chains.len(), 8);
    rx(&fake, &chains[0], 3, &[1; 60], None);
    let e = recv(&mut p).unwrap_err();
    assert!(matches!(
        e,
        Error::Protocol("num_buffers larger than the buffers used")
    ));
    // The rest of the frame comes later: too late, the port stays broken.
    rx(&fake, &chains[1], 0, &[2; 60], None);
    for _ in 0..3 {
        assert!(matches!(recv(&mut p), Err(Error::Protocol(_))));
    }
}

/// Without MRG_RXBUF a frame is one buffer, whatever count the header claims: the next
/// buffers are frames of their own.
#[test]
fn without_mrg_the_buffer_count_is_ignored() {
    let (fake, mut p) = port(false);
    let chains = rx_chains(&fake);
    rx(&fake, &chains[0], 5, &[1; 60], None);
    rx(&fake, &chains[1], 0xffff, &[2; 70], None);
    assert_eq!(recv(&mut p).unwrap().unwrap(), vec![1; 60]);
    assert_eq!(recv(&mut p).unwrap().unwrap(), vec![2; 70]);
    assert_eq!(recv(&mut p).unwrap(), None);
}

#[test]
fn a_used_length_past_the_buffer_breaks_the_port() {
    let (fake, mut p) = port(true);
    let chains = rx_chains(&fake);
    rx(&fake, &chains[0], 1, &[1; 60], Some(2049));
    assert!(matches!(recv(&mut p), Err(Error::Protocol(_))));
    assert!(matches!(recv(&mut p), Err(Error::Protocol(_))));
}

/// A completion shorter than a net header carries no frame: the buffer goes back to the
/// device and the next frame is received.
#[test]
fn a_used_length_shorter_than_the_header_is_skipped() {
    let (fake, mut p) = port(true);
    let chains = rx_chains(&fake);
    rx(&fake, &chains[0], 1, &[], Some(5));
    rx(&fake, &chains[1], 1, &[7; 64], None);
    assert_eq!(recv(&mut p).unwrap().unwrap(), vec![7; 64]);
    // The skipped buffer was posted again.
    assert_eq!(rx_chains(&fake).len(), 2);
}

/// A frame over several buffers, longer than the caller's buffer: truncated to it.
#[test]
fn a_merged_frame_longer_than_the_callers_buffer_is_truncated() {
    let (fake, mut p) = port(true);
    let chains = rx_chains(&fake);
    rx(&fake, &chains[0], 3, &[1; 2036], None);
    fake.with_ring(0, |r| {
        for c in &chains[1..3] {
            r.write_writable(c, 0, &[2; 2048]);
            r.push_used(u32::from(c.head), 2048);
        }
    });
    let mut buf = [0u8; 3000];
    let n = p.recv(&mut buf, Some(Duration::ZERO)).unwrap().unwrap();
    assert_eq!(n, 3000);
    assert!(buf[..2036].iter().all(|&b| b == 1) && buf[2036..].iter().all(|&b| b == 2));
}

#[test]
fn no_frame_times_out() {
    let (_fake, mut p) = port(true);
    let t = std::time::Instant::now();
    let mut buf = [0u8; 64];
    assert_eq!(
        p.recv(&mut buf, Some(Duration::from_millis(30))).unwrap(),
        None
    );
    assert!(t.elapsed() >= Duration::from_millis(30));
}
