//! Counters of a vNF's workers as the host operator reads them: each worker keeps its
//! [`VnfStats`] in plain integers on its own thread and publishes a copy here once per loop
//! (relaxed stores on lines only it writes); readers (the management API) load them
//! without ever stopping or slowing a worker.

use std::sync::atomic::{AtomicU64, Ordering};

use super::vnf_worker::VnfStats;

/// One port's traffic through one worker (queue pair `k` of a virtio port, queue `k` of a
/// TAP).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortCount {
    /// Frames received from the port (its TX ring / the TAP), control frames included.
    pub rx_packets: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// Frames put out on the port (its RX ring / the TAP).
    pub tx_packets: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// Frames for the port dropped because it had no room, no frontend or refused the write.
    pub tx_dropped: u64,
}

impl PortCount {
    pub(crate) fn received(&mut self, n: usize, bytes: u64) {
        self.rx_packets += n as u64;
        self.rx_bytes += bytes;
    }

    pub(crate) fn sent(&mut self, wanted: usize, sent: usize, bytes: u64) {
        self.tx_packets += sent as u64;
        self.tx_bytes += bytes;
        self.tx_dropped += wanted.saturating_sub(sent) as u64;
    }
}

/// What one worker (queue pair) counted, as read by the operator.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerSnapshot {
    /// Control frames the vNF sent that the instance handled.
    pub control: u64,
    /// Frames dropped because a virtio port's RX ring had no room or no frontend.
    pub rx_no_buffer: u64,
    /// Malformed TX chains or oversized frames.
    pub bad_tx: u64,
    /// Non-empty batches taken from virtio TX rings.
    pub batches: u64,
    /// Per port (by port id: 0 the vNF's, uplinks 1..).
    pub ports: Vec<PortCount>,
}

#[repr(align(64))]
#[derive(Default)]
struct PortCell {
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    tx_dropped: AtomicU64,
}

/// A worker's published counters.
#[repr(align(64))]
pub(crate) struct WorkerCounters {
    control: AtomicU64,
    rx_no_buffer: AtomicU64,
    bad_tx: AtomicU64,
    batches: AtomicU64,
    ports: Box<[PortCell]>,
}

impl WorkerCounters {
    /// Counters of a worker of a vNF with `ports` ports.
    pub(crate) fn new(ports: usize) -> Self {
        Self {
            control: AtomicU64::new(0),
            rx_no_buffer: AtomicU64::new(0),
            bad_tx: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            ports: (0..ports).map(|_| PortCell::default()).collect(),
        }
    }

    /// Publishes the worker's own counters (called by that worker only).
    pub(crate) fn publish(&self, s: &VnfStats) {
        let r = Ordering::Relaxed;
        self.control.store(s.control, r);
        self.rx_no_buffer.store(s.rx_no_buffer, r);
        self.bad_tx.store(s.bad_tx, r);
        self.batches.store(s.batches, r);
        for (c, p) in self.ports.iter().zip(&s.ports) {
            c.rx_packets.store(p.rx_packets, r);
            c.rx_bytes.store(p.rx_bytes, r);
            c.tx_packets.store(p.tx_packets, r);
            c.tx_bytes.store(p.tx_bytes, r);
            c.tx_dropped.store(p.tx_dropped, r);
        }
    }

    /// What was last published.
    pub(crate) fn snapshot(&self) -> WorkerSnapshot {
        let r = Ordering::Relaxed;
        WorkerSnapshot {
            control: self.control.load(r),
            rx_no_buffer: self.rx_no_buffer.load(r),
            bad_tx: self.bad_tx.load(r),
            batches: self.batches.load(r),
            ports: self
                .ports
                .iter()
                .map(|c| PortCount {
                    rx_packets: c.rx_packets.load(r),
                    rx_bytes: c.rx_bytes.load(r),
                    tx_packets: c.tx_packets.load(r),
                    tx_bytes: c.tx_bytes.load(r),
                    tx_dropped: c.tx_dropped.load(r),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_is_what_the_worker_published() {
        let w = WorkerCounters::new(2);
        let mut s = VnfStats {
            ports: vec![PortCount::default(); 2],
            ..VnfStats::default()
        };
        s.ports[1].received(3, 180);
        s.ports[0].sent(4, 3, 100);
        s.control = 5;
        w.publish(&s);
        let got = w.snapshot();
        assert_eq!(got.control, 5);
        assert_eq!(got.ports[1].rx_packets, 3);
        assert_eq!(got.ports[1].rx_bytes, 180);
        assert_eq!(
            (
                got.ports[0].tx_packets,
                got.ports[0].tx_dropped,
                got.ports[0].tx_bytes
            ),
            (3, 1, 100)
        );
    }
}
