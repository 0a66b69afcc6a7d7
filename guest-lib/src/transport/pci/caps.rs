//! The parts of a virtio PCI function's configuration space the driver needs (virtio 1.2
//! §4.1.4): identification and the vendor capabilities that say where the common, notify,
//! ISR and device-specific structures live. Pure parsing over the config bytes, so a hostile
//! or odd device is an error, never a panic.

use super::PciError;

/// PCI vendor ID of virtio devices.
pub const VENDOR_VIRTIO: u16 = 0x1af4;
/// PCI device ID of a modern virtio device is this plus the virtio device ID.
pub const DEVICE_ID_MODERN_BASE: u16 = 0x1040;
/// virtio device ID of a network card.
pub const VIRTIO_ID_NET: u16 = 1;
/// virtio device ID of a crypto device.
pub const VIRTIO_ID_CRYPTO: u16 = 20;

/// Config space: command register.
pub const PCI_COMMAND: usize = 0x04;
/// Command register: memory space enable.
pub const PCI_COMMAND_MEMORY: u16 = 1 << 1;
/// Command register: bus master enable (the device may DMA).
pub const PCI_COMMAND_MASTER: u16 = 1 << 2;
const PCI_STATUS: usize = 0x06;
const PCI_STATUS_CAP_LIST: u16 = 1 << 4;
const PCI_CAPABILITY_LIST: usize = 0x34;
const PCI_SUBSYSTEM_ID: usize = 0x2e;
const PCI_CAP_ID_VNDR: u8 = 0x09;

/// `virtio_pci_cap.cfg_type`: common configuration.
const CAP_COMMON: u8 = 1;
/// Notifications.
const CAP_NOTIFY: u8 = 2;
/// ISR status.
const CAP_ISR: u8 = 3;
/// Device-specific configuration.
const CAP_DEVICE: u8 = 4;

/// Where one structure lives: a BAR, an offset in it, a length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// BAR index (0..=5).
    pub bar: u8,
    /// Offset in the BAR.
    pub offset: u32,
    /// Length in bytes.
    pub length: u32,
}

/// The virtio structures of a modern virtio PCI function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioCaps {
    /// `struct virtio_pci_common_cfg`.
    pub common: Region,
    /// The notification area.
    pub notify: Region,
    /// Bytes between the notification addresses of consecutive `queue_notify_off` values.
    pub notify_off_multiplier: u32,
    /// The ISR status byte.
    pub isr: Region,
    /// The device-specific configuration (absent for devices without one).
    pub device: Option<Region>,
}

fn u16_at(c: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(c.get(off..off + 2)?.try_into().ok()?))
}

fn u32_at(c: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(c.get(off..off + 4)?.try_into().ok()?))
}

/// (vendor, device, subsystem device) IDs.
pub fn ids(cfg: &[u8]) -> Option<(u16, u16, u16)> {
    Some((
        u16_at(cfg, 0)?,
        u16_at(cfg, 2)?,
        u16_at(cfg, PCI_SUBSYSTEM_ID)?,
    ))
}

/// The virtio device ID of a virtio PCI function (modern `0x1040 + id`, or transitional
/// `0x1000..=0x103f` with the ID in the subsystem device ID), if it is one.
pub fn virtio_device_id(cfg: &[u8]) -> Option<u16> {
    let (vendor, device, subsys) = ids(cfg)?;
    if vendor != VENDOR_VIRTIO {
        return None;
    }
    match device {
        0x1000..=0x103f => Some(subsys),
        0x1040..=0x107f => Some(device - DEVICE_ID_MODERN_BASE),
        _ => None,
    }
}

/// Walks the capability list of `cfg` (the function's config space, at least 64 bytes) and
/// returns the first usable virtio capability of each type.
pub fn parse(cfg: &[u8]) -> Result<VirtioCaps, PciError> {
    let bad = PciError::Capabilities;
    let status = u16_at(cfg, PCI_STATUS).ok_or(bad("config space too short"))?;
    if status & PCI_STATUS_CAP_LIST == 0 {
        return Err(bad("no capability list (not a modern virtio device)"));
    }
    let (mut common, mut notify, mut isr, mut device) = (None, None, None, None);
    let mut mult = 0;
    let mut p = usize::from(
        *cfg.get(PCI_CAPABILITY_LIST)
            .ok_or(bad("no capability pointer"))?,
    );
    // At most 48 capabilities fit in the 192 bytes after the header: more means a loop.
    for _ in 0..48 {
        p &= !3;
        if p == 0 {
            break;
        }
        if p < 0x40 {
            return Err(bad("capability pointer into the header"));
        }
        let id = *cfg
            .get(p)
            .ok_or(bad("capability beyond the config space"))?;
        let next = *cfg
            .get(p + 1)
            .ok_or(bad("capability beyond the config space"))?;
        if id == PCI_CAP_ID_VNDR {
            let len = usize::from(*cfg.get(p + 2).ok_or(bad("truncated capability"))?);
            let cfg_type = *cfg.get(p + 3).ok_or(bad("truncated capability"))?;
            let bar = *cfg.get(p + 4).ok_or(bad("truncated capability"))?;
            let (Some(offset), Some(length)) = (u32_at(cfg, p + 8), u32_at(cfg, p + 12)) else {
                return Err(bad("truncated capability"));
            };
            // BARs 0..=5 only (cfg_type 5, the PCI config access window, has no BAR of its
            // own and is not needed); a capability shorter than its struct is skipped.
            let r = Region {
                bar,
                offset,
                length,
            };
            if bar <= 5 && len >= 16 {
                match cfg_type {
                    CAP_COMMON if common.is_none() => common = Some(r),
                    CAP_NOTIFY if notify.is_none() && len >= 20 => {
                        mult = u32_at(cfg, p + 16).ok_or(bad("truncated notify capability"))?;
                        notify = Some(r);
                    }
                    CAP_ISR if isr.is_none() => isr = Some(r),
                    CAP_DEVICE if device.is_none() => device = Some(r),
                    _ => {}
                }
            }
        }
        p = usize::from(next);
    }
    Ok(VirtioCaps {
        common: common.ok_or(bad("no common configuration capability"))?,
        notify: notify.ok_or(bad("no notification capability"))?,
        notify_off_multiplier: mult,
        isr: isr.ok_or(bad("no ISR capability"))?,
        device,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config space laid out like QEMU's virtio-crypto-pci (BAR 4: common 0x0, ISR 0x1000,
    /// device 0x2000, notify 0x3000 with multiplier 4), plus an MSI-X capability first.
    pub(crate) fn qemu_like() -> Vec<u8> {
        let mut c = vec![0u8; 256];
        c[0..2].copy_from_slice(&VENDOR_VIRTIO.to_le_bytes());
        c[2..4].copy_from_slice(&0x1054u16.to_le_bytes());
        c[PCI_STATUS..PCI_STATUS + 2].copy_from_slice(&PCI_STATUS_CAP_LIST.to_le_bytes());
        c[PCI_SUBSYSTEM_ID..PCI_SUBSYSTEM_ID + 2].copy_from_slice(&20u16.to_le_bytes());
        c[PCI_CAPABILITY_LIST] = 0x98;
        // MSI-X (id 0x11) → 0x84.
        c[0x98] = 0x11;
        c[0x99] = 0x84;
        let mut vndr = |at: usize, next: u8, ty: u8, off: u32, len: u32, extra: Option<u32>| {
            c[at] = PCI_CAP_ID_VNDR;
            c[at + 1] = next;
            c[at + 2] = if extra.is_some() { 20 } else { 16 };
            c[at + 3] = ty;
            c[at + 4] = 4;
            c[at + 8..at + 12].copy_from_slice(&off.to_le_bytes());
            c[at + 12..at + 16].copy_from_slice(&len.to_le_bytes());
            if let Some(m) = extra {
                c[at + 16..at + 20].copy_from_slice(&m.to_le_bytes());
            }
        };
        vndr(0x84, 0x70, CAP_DEVICE, 0x2000, 0x1000, None);
        vndr(0x70, 0x60, CAP_NOTIFY, 0x3000, 0x1000, Some(4));
        vndr(0x60, 0x50, CAP_ISR, 0x1000, 0x1000, None);
        vndr(0x50, 0x40, CAP_COMMON, 0, 0x1000, None);
        // cfg_type 5 (PCI config access) without a usable BAR: ignored.
        c[0x40] = PCI_CAP_ID_VNDR;
        c[0x42] = 20;
        c[0x43] = 5;
        c
    }

    #[test]
    fn finds_the_virtio_structures() {
        let c = qemu_like();
        assert_eq!(virtio_device_id(&c), Some(VIRTIO_ID_CRYPTO));
        let caps = parse(&c).unwrap();
        let r = |offset, length| Region {
            bar: 4,
            offset,
            length,
        };
        assert_eq!(caps.common, r(0, 0x1000));
        assert_eq!(caps.isr, r(0x1000, 0x1000));
        assert_eq!(caps.device, Some(r(0x2000, 0x1000)));
        assert_eq!(caps.notify, r(0x3000, 0x1000));
        assert_eq!(caps.notify_off_multiplier, 4);
    }

    #[test]
    fn transitional_ids_use_the_subsystem_id() {
        let mut c = qemu_like();
        c[2..4].copy_from_slice(&0x1000u16.to_le_bytes());
        c[PCI_SUBSYSTEM_ID..PCI_SUBSYSTEM_ID + 2].copy_from_slice(&1u16.to_le_bytes());
        assert_eq!(virtio_device_id(&c), Some(VIRTIO_ID_NET));
        c[0] = 0x86;
        assert_eq!(virtio_device_id(&c), None);
    }

    #[test]
    fn hostile_lists_are_errors() {
        // A loop (ISR → notify → ISR ...): the walk stops after 48 steps and the structure it
        // never reached is reported.
        let mut c = qemu_like();
        c[0x61] = 0x70;
        assert!(matches!(parse(&c), Err(PciError::Capabilities(_))));
        // A pointer into the header.
        let mut c = qemu_like();
        c[PCI_CAPABILITY_LIST] = 0x10;
        assert!(matches!(parse(&c), Err(PciError::Capabilities(_))));
        // A pointer beyond a 64-byte (unprivileged) config read.
        let c = qemu_like();
        assert!(matches!(parse(&c[..64]), Err(PciError::Capabilities(_))));
        // No capability list at all.
        let mut c = qemu_like();
        c[PCI_STATUS] = 0;
        assert!(matches!(parse(&c), Err(PciError::Capabilities(_))));
        // Truncated: nothing panics on any prefix.
        let c = qemu_like();
        for n in 0..c.len() {
            let _ = parse(&c[..n]);
        }
    }
}
