//! The PCI function in sysfs: its config space file, its driver binding, its uio node, and the
//! helpers that hand it to `uio_pci_generic` and back (what `dpacc pci bind|unbind` run).

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::caps;
use super::{PciAddress, PciError};

/// Where sysfs keeps PCI devices and drivers.
pub const SYSFS_PCI: &str = "/sys/bus/pci";
/// The driver that lets this library own a device (interrupts through `/dev/uioN`).
pub const UIO_DRIVER: &str = "uio_pci_generic";

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PciError + '_ {
    move |source| PciError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The device's sysfs directory.
pub fn device_dir(addr: &PciAddress) -> PathBuf {
    Path::new(SYSFS_PCI).join("devices").join(addr.to_string())
}

/// The device's sysfs directory, checked to exist.
pub(crate) fn existing_device_dir(addr: &PciAddress) -> Result<PathBuf, PciError> {
    let d = device_dir(addr);
    if !d.exists() {
        return Err(PciError::NotFound(*addr));
    }
    Ok(d)
}

/// The kernel driver the device is bound to, if any.
pub fn driver(addr: &PciAddress) -> Option<String> {
    let link = fs::read_link(device_dir(addr).join("driver")).ok()?;
    Some(link.file_name()?.to_string_lossy().into_owned())
}

/// Reads the device's config space (as much as sysfs gives: 256 bytes or more as root, 64 for
/// others).
pub(crate) fn read_config(file: &File, path: &Path) -> Result<Vec<u8>, PciError> {
    let mut buf = vec![0u8; 256];
    let mut n = 0;
    while n < buf.len() {
        let r = file.read_at(&mut buf[n..], n as u64).map_err(io(path))?;
        if r == 0 {
            break;
        }
        n += r;
    }
    buf.truncate(n);
    Ok(buf)
}

/// Sets `bits` in the command register (read-modify-write of the config space file).
pub(crate) fn set_command_bits(file: &File, path: &Path, bits: u16) -> Result<(), PciError> {
    let mut b = [0u8; 2];
    file.read_exact_at(&mut b, caps::PCI_COMMAND as u64)
        .map_err(io(path))?;
    let cmd = u16::from_le_bytes(b) | bits;
    file.write_all_at(&cmd.to_le_bytes(), caps::PCI_COMMAND as u64)
        .map_err(io(path))
}

/// `/dev/uioN` of a device bound to `uio_pci_generic`.
pub(crate) fn uio_node(addr: &PciAddress) -> Option<PathBuf> {
    let dir = device_dir(addr).join("uio");
    let name = fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("uio"))?;
    Some(Path::new("/dev").join(name))
}

/// Opens the config space file read-write.
pub(crate) fn open_config(addr: &PciAddress) -> Result<(File, PathBuf), PciError> {
    let path = existing_device_dir(addr)?.join("config");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&path)
        .map_err(io(&path))?;
    Ok((f, path))
}

fn write_sysfs(path: &Path, value: &str) -> Result<(), PciError> {
    fs::write(path, value).map_err(io(path))
}

/// Hands the device to `uio_pci_generic` so that this library can drive it: unbinds it from
/// its kernel driver (e.g. `virtio-pci`) and binds it through `driver_override`, which affects
/// this device only (unlike `new_id`). Needs root and the `uio_pci_generic` module loaded.
pub fn bind_uio(addr: &PciAddress) -> Result<(), PciError> {
    let dir = existing_device_dir(addr)?;
    if driver(addr).as_deref() == Some(UIO_DRIVER) {
        return Ok(());
    }
    if !Path::new(SYSFS_PCI)
        .join("drivers")
        .join(UIO_DRIVER)
        .exists()
    {
        return Err(PciError::NoUioDriver);
    }
    write_sysfs(&dir.join("driver_override"), UIO_DRIVER)?;
    if let Some(d) = driver(addr) {
        let unbind = Path::new(SYSFS_PCI).join("drivers").join(d).join("unbind");
        write_sysfs(&unbind, &addr.to_string())?;
    }
    write_sysfs(
        &Path::new(SYSFS_PCI).join("drivers_probe"),
        &addr.to_string(),
    )?;
    match driver(addr) {
        Some(d) if d == UIO_DRIVER => Ok(()),
        other => Err(PciError::BindFailed {
            addr: *addr,
            driver: other.unwrap_or_else(|| "none".into()),
        }),
    }
}

/// Gives the device back to the kernel: clears `driver_override`, unbinds it from
/// `uio_pci_generic` and lets the kernel probe its own driver again.
pub fn unbind_uio(addr: &PciAddress) -> Result<Option<String>, PciError> {
    let dir = existing_device_dir(addr)?;
    write_sysfs(&dir.join("driver_override"), "\n")?;
    if driver(addr).as_deref() == Some(UIO_DRIVER) {
        let unbind = Path::new(SYSFS_PCI)
            .join("drivers")
            .join(UIO_DRIVER)
            .join("unbind");
        write_sysfs(&unbind, &addr.to_string())?;
    }
    write_sysfs(
        &Path::new(SYSFS_PCI).join("drivers_probe"),
        &addr.to_string(),
    )?;
    Ok(driver(addr))
}

/// One virtio PCI function, as `dpacc pci list` prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtioFunction {
    /// Its address.
    pub addr: PciAddress,
    /// virtio device ID (1 = net, 20 = crypto, ...).
    pub virtio_id: u16,
    /// PCI device ID.
    pub pci_device: u16,
    /// Its kernel driver, if bound.
    pub driver: Option<String>,
}

/// Every virtio PCI function in sysfs, sorted by address.
pub fn list_virtio() -> Result<Vec<VirtioFunction>, PciError> {
    let dir = Path::new(SYSFS_PCI).join("devices");
    let mut out = Vec::new();
    for e in fs::read_dir(&dir).map_err(io(&dir))? {
        let Ok(e) = e else { continue };
        let Ok(addr) = e.file_name().to_string_lossy().parse::<PciAddress>() else {
            continue;
        };
        let mut cfg = [0u8; 48];
        let ok = File::open(e.path().join("config"))
            .and_then(|mut f| f.read_exact(&mut cfg))
            .is_ok();
        let Some(virtio_id) = ok.then(|| caps::virtio_device_id(&cfg)).flatten() else {
            continue;
        };
        out.push(VirtioFunction {
            addr,
            virtio_id,
            pci_device: u16::from_le_bytes([cfg[2], cfg[3]]),
            driver: driver(&addr),
        });
    }
    out.sort_by_key(|f| f.addr);
    Ok(out)
}

/// (total, free) 2 MiB hugepages of the system, if the kernel has hugetlbfs.
pub fn hugepages() -> Option<(usize, usize)> {
    let d = Path::new("/sys/kernel/mm/hugepages/hugepages-2048kB");
    let read =
        |f: &str| -> Option<usize> { fs::read_to_string(d.join(f)).ok()?.trim().parse().ok() };
    Some((read("nr_hugepages")?, read("free_hugepages")?))
}
