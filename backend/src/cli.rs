//! Command line of the `dpacc-backend` binary.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use dpacc_hw::DriverSpec;
use dpacc_spec::CryptoDriver;

use crate::crypto::{CryptoBackendConfig, MAX_QUEUE_SIZE};

/// dpacc vhost-user backend: serves virtio devices backed by host accelerators.
#[derive(Debug, Parser)]
#[command(name = "dpacc-backend", version, about)]
pub struct Cli {
    /// The device to serve.
    #[command(subcommand)]
    pub command: Command,
}

/// Devices.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve a virtio-crypto device (virtio device ID 20).
    Crypto(CryptoArgs),
    /// Serve a virtio-net port (virtio device ID 1) for one vNF, with its own flow processor
    /// in front of TAP uplinks (the inline fast path).
    Net(NetArgs),
}

/// Options of the net device.
#[derive(Debug, clap::Args)]
pub struct NetArgs {
    /// Path of the vhost-user unix socket to listen on (a stale socket file is replaced).
    #[arg(long)]
    pub socket: PathBuf,
    /// An uplink, `tap:NAME` (created if missing; configure it, or move it to a network
    /// namespace, yourself). Repeatable: uplinks are ports 1, 2, ... of the flow processor;
    /// port 0 is the vNF.
    #[arg(long = "uplink", value_name = "tap:NAME", value_parser = parse_uplink)]
    pub uplinks: Vec<String>,
    /// Most flows the vNF may install.
    #[arg(long, default_value_t = 65536, value_parser = clap::value_parser!(u64).range(1..=(1 << 24)))]
    pub max_flows: u64,
    /// Largest ring size a frontend may use (a power of two, at most 32768).
    #[arg(long, default_value_t = 1024, value_parser = parse_queue_size)]
    pub queue_size: u16,
    /// MAC address the device reports to the guest.
    #[arg(long, default_value = "52:54:00:dc:ac:01", value_parser = parse_mac)]
    pub mac: [u8; 6],
}

fn parse_uplink(s: &str) -> Result<String, String> {
    match s.strip_prefix("tap:") {
        Some(n) if !n.is_empty() && n.len() < 16 => Ok(n.to_string()),
        Some(_) => Err("a TAP name has 1 to 15 characters".into()),
        None => Err(format!(
            "unknown uplink '{s}': expected tap:NAME (vhost-user uplinks are not supported yet)"
        )),
    }
}

fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let v: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .map_err(|_| format!("bad MAC address '{s}'"))?;
    v.try_into().map_err(|_| format!("bad MAC address '{s}'"))
}

impl NetArgs {
    /// The port configuration these options describe, on the software fast path.
    pub fn to_config(&self) -> crate::net::NetBackendConfig {
        crate::net::NetBackendConfig {
            uplinks: self.uplinks.clone(),
            max_flows: self.max_flows as usize,
            queue_size: self.queue_size,
            mac: self.mac,
            fastpath: Arc::new(dpacc_sw::flow::SwFastPath::new(Arc::new(
                dpacc_sw::SwDriver::new(),
            ))),
        }
    }
}

/// Options of the crypto device.
#[derive(Debug, clap::Args)]
pub struct CryptoArgs {
    /// Path of the vhost-user unix socket to listen on (a stale socket file is replaced).
    #[arg(long)]
    pub socket: PathBuf,
    /// Number of data queues; the control queue comes after them.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=32766))]
    pub queues: u16,
    /// Largest ring size a frontend may use (a power of two, at most 32768).
    #[arg(long, default_value_t = 1024, value_parser = parse_queue_size)]
    pub queue_size: u16,
    /// Accelerator driver behind the device: sw (software, always available), afalg (Linux
    /// kernel crypto API via AF_ALG), or plugin:PATH (a vendor plug-in .so, see
    /// docs/vendor-drivers.md). With afalg or a plug-in, the algorithms it lacks run on the
    /// software driver, and the guest sees the union.
    #[arg(long, default_value = "sw", value_name = "sw|afalg|plugin:PATH")]
    pub driver: DriverSpec,
    /// Most crypto sessions open at once.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=(1 << 24)))]
    pub max_sessions: u64,
}

fn parse_queue_size(s: &str) -> Result<u16, String> {
    let v: u32 = s.parse().map_err(|e| format!("{e}"))?;
    if v == 0 || v > u32::from(MAX_QUEUE_SIZE) || !v.is_power_of_two() {
        return Err(format!("{v} is not a power of two in 1..=32768"));
    }
    Ok(v as u16)
}

/// Instantiates a driver (non-software drivers fall back to the software one per algorithm).
pub fn make_driver(spec: &DriverSpec) -> Result<Arc<dyn CryptoDriver>, String> {
    dpacc_hw::open_driver(spec, Arc::new(dpacc_sw::SwDriver::new())).map_err(|e| e.to_string())
}

impl CryptoArgs {
    /// The device configuration these options describe.
    pub fn to_config(&self) -> Result<CryptoBackendConfig, String> {
        Ok(CryptoBackendConfig {
            queues: self.queues,
            queue_size: self.queue_size,
            max_sessions: self.max_sessions as usize,
            driver: make_driver(&self.driver)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_and_validate() {
        let c = Cli::try_parse_from([
            "dpacc-backend",
            "crypto",
            "--socket",
            "/tmp/x.sock",
            "--queues",
            "2",
            "--queue-size",
            "1024",
        ])
        .unwrap();
        let Command::Crypto(a) = c.command else {
            panic!()
        };
        assert_eq!((a.queues, a.queue_size, a.max_sessions), (2, 1024, 1024));
        assert_eq!(a.driver, DriverSpec::Sw);
        let c = Cli::try_parse_from([
            "dpacc-backend",
            "crypto",
            "--socket",
            "/tmp/x.sock",
            "--driver",
            "plugin:/opt/v/libv.so",
        ])
        .unwrap();
        let Command::Crypto(a) = c.command else {
            panic!()
        };
        assert_eq!(a.driver, DriverSpec::Plugin("/opt/v/libv.so".into()));
        let e = Cli::try_parse_from([
            "dpacc-backend",
            "crypto",
            "--socket",
            "/tmp/x.sock",
            "--driver",
            "qat",
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown driver 'qat'"), "{e}");
        for bad in ["1000", "0", "65536"] {
            assert!(Cli::try_parse_from([
                "dpacc-backend",
                "crypto",
                "--socket",
                "/tmp/x.sock",
                "--queue-size",
                bad
            ])
            .is_err());
        }
    }
}
