//! Notifications of a virtio PCI device: kicks through the notify BAR, and used-buffer
//! interrupts through `uio_pci_generic` (legacy INTx, shared by all queues). The kernel masks
//! INTx (command register bit 10) when it fires and wakes `/dev/uioN`; the driver
//! acknowledges the device by reading its ISR byte and unmasks INTx through the config space
//! (`uio_pci_generic` has no `irqcontrol`, so writing to `/dev/uioN` would not).

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::mmio::{Bar, Mmio};
use super::PciError;
use crate::error::{Error, Result};
use crate::virtq::Notifier;

/// Longest single sleep on the shared interrupt: another queue's waiter may have taken the
/// interrupt meant for this one, so a waiter re-checks its ring at least this often.
const IRQ_SLICE: Duration = Duration::from_millis(2);
/// Sleep between ring checks when the device has no interrupt line for us.
const POLL_SLICE: Duration = Duration::from_micros(50);

/// Command register bit: INTx disabled (set by `uio_pci_generic` when the line fires).
const PCI_COMMAND_INTX_DISABLE: u16 = 1 << 10;

/// The device's interrupt through `/dev/uioN`.
#[derive(Debug)]
pub(crate) struct UioIrq {
    file: File,
    isr: Mmio,
    /// The function's config space (to unmask INTx).
    config: File,
}

impl UioIrq {
    /// Opens `node` and acknowledges anything pending (a previous owner may have left the
    /// line masked); `config` is the function's sysfs config space file.
    pub(crate) fn open(node: &Path, isr: Mmio, config: File) -> Result<Self, PciError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(node)
            .map_err(|source| PciError::Io {
                path: node.to_path_buf(),
                source,
            })?;
        let irq = Self { file, isr, config };
        irq.ack();
        Ok(irq)
    }

    /// Clears the device's interrupt (reading the ISR deasserts INTx) and unmasks the line.
    /// The line is masked while this runs (the kernel masked it), so the read-modify-write of
    /// the command register races with nothing.
    fn ack(&self) {
        let _ = self.isr.r8(0);
        let mut b = [0u8; 2];
        if self.config.read_exact_at(&mut b, 4).is_ok() {
            let cmd = u16::from_le_bytes(b);
            if cmd & PCI_COMMAND_INTX_DISABLE != 0 {
                let cmd = cmd & !PCI_COMMAND_INTX_DISABLE;
                let _ = self.config.write_all_at(&cmd.to_le_bytes(), 4);
            }
        }
    }

    /// Waits at most `t` for an interrupt; `Ok(true)` if one came.
    fn wait(&self, t: Duration) -> Result<bool> {
        let mut pfd = libc::pollfd {
            fd: self.file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = t.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd, count 1.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(Error::Io("poll /dev/uio", e));
        }
        if r == 0 {
            return Ok(false);
        }
        // The event count; EAGAIN when another waiter read it first (and acknowledged).
        let mut count = [0u8; 4];
        if (&self.file).read(&mut count).is_ok() {
            self.ack();
        }
        Ok(true)
    }
}

/// Kick (and wait) for one queue of a virtio PCI device.
pub(crate) struct PciNotifier {
    /// The queue's notification address inside the notify BAR.
    addr: *mut u16,
    /// Keeps the BAR mapped while `addr` is used.
    _bar: Arc<Bar>,
    index: u16,
    irq: Option<Arc<UioIrq>>,
}

// SAFETY: `addr` points into a mapping `_bar` keeps alive; it is only written with volatile
// stores, which the device model serialises.
unsafe impl Send for PciNotifier {}

impl PciNotifier {
    /// A notifier writing queue `index` at `notify` offset `at`.
    pub(crate) fn new(
        notify: &Mmio,
        at: usize,
        index: u16,
        irq: Option<Arc<UioIrq>>,
    ) -> Result<Self, PciError> {
        let (bar, p) = notify.reg_ptr(at, 2).ok_or(PciError::Capabilities(
            "a queue's notification address is outside the notify area",
        ))?;
        Ok(Self {
            addr: p.cast(),
            _bar: bar,
            index,
            irq,
        })
    }
}

impl Notifier for PciNotifier {
    fn kick(&self) -> Result<()> {
        // SAFETY: `addr` is a 2-aligned register inside the mapped notify area (checked in
        // `new`); without VIRTIO_F_NOTIFICATION_DATA the driver writes the queue index.
        unsafe { std::ptr::write_volatile(self.addr, self.index.to_le()) };
        Ok(())
    }

    fn wait(&self, timeout: Option<Duration>) -> Result<bool> {
        match &self.irq {
            Some(irq) => irq.wait(timeout.map_or(IRQ_SLICE, |t| t.min(IRQ_SLICE))),
            None => {
                std::thread::sleep(timeout.map_or(POLL_SLICE, |t| t.min(POLL_SLICE)));
                Ok(true)
            }
        }
    }
}
