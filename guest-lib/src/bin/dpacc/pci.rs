//! `dpacc pci`: list the VM's virtio PCI functions and hand them to `uio_pci_generic` (so that
//! `--pci` can drive them from userspace) or back to the kernel.

use clap::Subcommand;
use dpacc_guest::transport::pci::{self, PciAddress, PciError};

use crate::{usage, CliError};

/// Operations.
#[derive(Subcommand, Debug)]
pub enum PciOp {
    /// List the virtio PCI functions, their drivers, and the free 2 MiB hugepages.
    List,
    /// Hand functions to uio_pci_generic (unbinding them from virtio-pci) so that `--pci` can
    /// drive them. Needs root and the uio_pci_generic module (modprobe uio_pci_generic).
    ///
    /// By hand, per function: echo uio_pci_generic > /sys/bus/pci/devices/BDF/driver_override;
    /// echo BDF > /sys/bus/pci/devices/BDF/driver/unbind; echo BDF >
    /// /sys/bus/pci/drivers_probe.
    Bind {
        /// Functions (DDDD:BB:DD.F).
        #[arg(required = true, value_name = "BDF")]
        bdf: Vec<String>,
    },
    /// Give functions back to their kernel driver (virtio-pci).
    Unbind {
        /// Functions (DDDD:BB:DD.F).
        #[arg(required = true, value_name = "BDF")]
        bdf: Vec<String>,
    },
}

fn kind(id: u16) -> &'static str {
    match id {
        1 => "net",
        2 => "block",
        3 => "console",
        4 => "rng",
        5 => "balloon",
        8 => "scsi",
        9 => "9p",
        16 => "gpu",
        18 => "input",
        19 => "vsock",
        20 => "crypto",
        _ => "other",
    }
}

fn addr(s: &str) -> Result<PciAddress, CliError> {
    s.parse().map_err(|e: PciError| usage(format!("{e}")))
}

fn print_hugepages() {
    match pci::hugepages() {
        Some((total, free)) => {
            println!("2 MiB hugepages: {free} free of {total}");
            if free == 0 {
                println!(
                    "  --pci needs some: echo 64 > /proc/sys/vm/nr_hugepages (or boot with hugepages=64)"
                );
            }
        }
        None => println!("2 MiB hugepages: not available (no hugetlbfs in this kernel)"),
    }
}

/// Runs `dpacc pci`.
pub fn run(op: PciOp) -> Result<(), CliError> {
    let fail = |e: PciError| CliError::Device(e.into());
    match op {
        PciOp::List => {
            let fns = pci::list_virtio().map_err(fail)?;
            for f in &fns {
                println!(
                    "{} virtio-{:<7} {:04x} driver {}",
                    f.addr,
                    kind(f.virtio_id),
                    f.pci_device,
                    f.driver.as_deref().unwrap_or("none")
                );
            }
            if fns.is_empty() {
                println!("no virtio PCI functions");
            }
            print_hugepages();
        }
        PciOp::Bind { bdf } => {
            let addrs = bdf.iter().map(|b| addr(b)).collect::<Result<Vec<_>, _>>()?;
            for a in addrs {
                let was = pci::sysfs::driver(&a);
                pci::bind_uio(&a).map_err(fail)?;
                println!(
                    "{a}: bound to {} (was {})",
                    pci::UIO_DRIVER,
                    was.as_deref().unwrap_or("unbound")
                );
            }
            print_hugepages();
        }
        PciOp::Unbind { bdf } => {
            let addrs = bdf.iter().map(|b| addr(b)).collect::<Result<Vec<_>, _>>()?;
            for a in addrs {
                let now = pci::unbind_uio(&a).map_err(fail)?;
                println!("{a}: driver now {}", now.as_deref().unwrap_or("none"));
            }
        }
    }
    Ok(())
}
