//! Command line of the `dpacc-backend` binary.

use std::num::ParseIntError;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use dpacc_backend::crypto::{CryptoBackendConfig, MAX_QUEUE_SIZE};
use dpacc_backend::net::{NetBackendConfig, UplinkError, UplinkSpec};
use dpacc_hw::{DriverSpec, SelectError};

/// Why a command-line value or the configuration it describes is not usable.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A `--port` item that is neither `name=`, `socket=` nor `uplink=`.
    #[error(
        "bad --port item '{0}': expected name=NAME, socket=PATH, uplink=tap:NAME or uplink=vhost:SOCKET"
    )]
    VnfItem(String),
    /// A `--port` without `socket=`.
    #[error("--port needs socket=PATH")]
    VnfSocket,
    /// `tap:` with an empty or too long name.
    #[error("a TAP name has 1 to 15 characters")]
    TapName,
    /// `vhost:` without a path.
    #[error("vhost: needs a socket path")]
    VhostPath,
    /// Neither `tap:` nor `vhost:`.
    #[error("unknown uplink '{0}': expected tap:NAME or vhost:SOCKET")]
    Uplink(String),
    /// Not six colon-separated hex bytes.
    #[error("bad MAC address '{0}'")]
    Mac(String),
    /// Not a number.
    #[error("{0}")]
    Number(#[from] ParseIntError),
    /// A ring size that is not a power of two up to the largest.
    #[error("{0} is not a power of two in 1..=32768")]
    QueueSize(u32),
    /// A socket path or TAP name given twice (named as "socket PATH" or "TAP NAME").
    #[error("{0} is used twice")]
    UsedTwice(String),
    /// The accelerator driver could not be opened.
    #[error(transparent)]
    Driver(#[from] SelectError),
}

/// dpacc vhost-user backend: serves virtio devices backed by host accelerators.
///
/// Signals: SIGTERM or SIGINT stop it cleanly (frontends disconnected, sockets removed, exit
/// status 0); SIGHUP is logged and ignored (there is no configuration file to reload: change
/// vNFs and policies through --api-socket).
#[derive(Debug, Parser)]
#[command(name = "dpacc-backend", version, about, long_about)]
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
    /// Serve a virtio-net port (virtio device ID 1) per vNF, each with its own flow processor
    /// in front of its uplinks: TAP interfaces or vhost-user virtio-net ports (the inline fast
    /// path).
    Net(NetArgs),
}

/// Options of the net device.
#[derive(Debug, clap::Args)]
pub struct NetArgs {
    /// Path of the vhost-user unix socket of the (single) vNF port (a stale socket file is
    /// replaced). Use --port instead to serve several vNF ports from one backend. The vNF is
    /// named after the socket file's stem (`/run/dpacc/blue.sock`: `blue`) in the API.
    #[arg(long, required_unless_present_any = ["ports", "api_socket"], conflicts_with = "ports")]
    pub socket: Option<PathBuf>,
    /// An uplink of that port: `tap:NAME` (a TAP interface, created if missing; configure it,
    /// or move it to a network namespace, yourself) or `vhost:SOCKET` (a virtio-net port served
    /// on another vhost-user socket, for a second VM, a container or a packet generator).
    /// Repeatable: uplinks are ports 1, 2, ... of the flow processor; port 0 is the vNF.
    #[arg(long = "uplink", value_name = "tap:NAME|vhost:SOCKET", value_parser = parse_uplink, conflicts_with = "ports")]
    pub uplinks: Vec<UplinkSpec>,
    /// A vNF port, `[name=NAME,]socket=PATH[,uplink=tap:NAME|vhost:SOCKET...]`. Repeatable:
    /// each port has its own flow processor, reachable only from that port, and its own
    /// uplinks. NAME (its name in the management API) defaults to the socket file's stem.
    #[arg(long = "port", id = "ports", value_name = "[name=NAME,]socket=PATH,uplink=...", value_parser = parse_vnf)]
    pub vnfs: Vec<VnfArg>,
    /// Serve the management API (HTTP/1.1 + JSON, spec/api.md) on a unix socket at PATH,
    /// created with mode 0600 and removed on exit (a stale socket file is replaced; a live
    /// one makes the daemon refuse to start): list, create and delete vNFs at run time, set
    /// each vNF's operator policy, read statistics and Prometheus metrics (GET /metrics).
    /// With it, the daemon may start with no vNF at all. With --isolate the same API
    /// creates and deletes vNF processes and reaches each vNF in its process (spec/api.md);
    /// their private sockets live in `PATH.d/`, so PATH may then have at most 79 bytes.
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<PathBuf>,
    /// (Used by --isolate for its vNF processes.) An operator policy (the JSON of PUT
    /// /vnfs/{name}/policy) in force on every vNF of the command line from its first frame.
    #[arg(long, value_name = "FILE", hide = true)]
    pub start_policy: Option<PathBuf>,
    /// (Used by --isolate for its vNF processes.) Where to write why the daemon failed:
    /// an HTTP status line, then the message.
    #[arg(long, value_name = "FILE", hide = true)]
    pub error_file: Option<PathBuf>,
    /// Most flows each vNF may install (all tables).
    #[arg(long, default_value_t = 65536, value_parser = clap::value_parser!(u64).range(1..=(1 << 24)))]
    pub max_flows: u64,
    /// Most select groups each vNF may install.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(0..=(1 << 20)))]
    pub max_groups: u64,
    /// Most buckets each vNF's groups may hold together.
    #[arg(long, default_value_t = 16384, value_parser = clap::value_parser!(u64).range(0..=(1 << 24)))]
    pub max_buckets: u64,
    /// Most ESP SAs (inbound and outbound together) each vNF may install; each holds a crypto
    /// session.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(0..=(1 << 20)))]
    pub max_sas: u64,
    /// Most actions in one action list (a flow's or a bucket's).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=255))]
    pub max_actions: u64,
    /// Seconds a vNF's flows, groups and SAs keep forwarding after the vNF disconnects; if it
    /// has not reconnected by then they are removed and their memory freed.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(0..=(1 << 32)))]
    pub keep_detached_secs: u64,
    /// Largest ring size a frontend may use (a power of two, at most 32768).
    #[arg(long, default_value_t = 1024, value_parser = parse_queue_size)]
    pub queue_size: u16,
    /// Microseconds each vNF's worker keeps polling its rings after they run dry before it
    /// sleeps until a kick (0: sleep at once; more: lower latency, more CPU).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub busy_poll_us: u64,
    /// Serve each vNF port from a process of its own (this binary, one `--port` each),
    /// restarted if it dies; this process only supervises them. Costs about 0.4 MiB of
    /// proportional memory per port (see docs/decisions/0011-blast-radius.md). With
    /// --api-socket, the API's vNFs get a process each too, and a restarted process has its
    /// vNF's operator policy in force before any frame (docs/decisions/0018-isolated-api.md).
    #[arg(long)]
    pub isolate: bool,
    /// Queue pairs of every virtio-net device of a vNF port (its own and its vhost-user
    /// uplinks; VIRTIO_NET_F_MQ when more than one), queues of every TAP uplink
    /// (IFF_MULTI_QUEUE when more than one), and worker threads: one per pair, each with its
    /// own lane of the vNF's flow processor (flows, groups and SAs are shared; counters are
    /// per worker and summed). QEMU: `-netdev vhost-user,...,queues=N` and `-device
    /// virtio-net-pci,mq=on,vectors=2N+2`; the guest enables up to this many.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=i64::from(dpacc_backend::net::MAX_QUEUE_PAIRS)))]
    pub queue_pairs: u16,
    /// MAC address the vNF port reports to its guest (the last byte is incremented per vNF
    /// port, the fifth per vhost-user uplink).
    #[arg(long, default_value = "52:54:00:dc:ac:01", value_parser = parse_mac)]
    pub mac: [u8; 6],
}

/// One `--port`: a vNF instance's socket and uplinks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VnfArg {
    /// Name (None: the socket file's stem).
    pub name: Option<String>,
    /// Socket path.
    pub socket: PathBuf,
    /// Uplinks, ports 1.. in order.
    pub uplinks: Vec<UplinkSpec>,
}

fn parse_vnf(s: &str) -> Result<VnfArg, CliError> {
    let mut socket = None;
    let mut name = None;
    let mut uplinks = Vec::new();
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("name", n)) if !n.is_empty() => name = Some(n.to_string()),
            Some(("socket", p)) if !p.is_empty() => socket = Some(PathBuf::from(p)),
            Some(("uplink", u)) => uplinks.push(parse_uplink(u)?),
            _ => return Err(CliError::VnfItem(part.to_string())),
        }
    }
    let socket = socket.ok_or(CliError::VnfSocket)?;
    Ok(VnfArg {
        name,
        socket,
        uplinks,
    })
}

fn parse_uplink(s: &str) -> Result<UplinkSpec, CliError> {
    s.parse().map_err(|e| match e {
        UplinkError::TapName => CliError::TapName,
        UplinkError::VhostPath => CliError::VhostPath,
        UplinkError::Kind(k) => CliError::Uplink(k),
    })
}

fn parse_mac(s: &str) -> Result<[u8; 6], CliError> {
    let bad = || CliError::Mac(s.to_string());
    let v: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    v.try_into().map_err(|_| bad())
}

impl NetArgs {
    /// The quotas of every vNF.
    fn quotas(&self) -> dpacc_spec::fastpath::Quotas {
        dpacc_spec::fastpath::Quotas {
            flows: self.max_flows as usize,
            groups: self.max_groups as usize,
            buckets: self.max_buckets as usize,
            sas: self.max_sas as usize,
            actions: self.max_actions as usize,
        }
    }

    fn vnf_args(&self) -> Vec<VnfArg> {
        match &self.socket {
            Some(s) => vec![VnfArg {
                name: None,
                socket: s.clone(),
                uplinks: self.uplinks.clone(),
            }],
            None => self.vnfs.clone(),
        }
    }

    /// The vNFs of the command line with their names (given, or the socket file's stem), in
    /// order; a name given twice is refused.
    pub fn named_vnfs(&self) -> Result<Vec<(String, VnfArg)>, CliError> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for v in self.vnf_args() {
            let name = v.name.clone().unwrap_or_else(|| {
                v.socket
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default()
            });
            if !seen.insert(name.clone()) {
                return Err(CliError::UsedTwice(format!("vNF name {name}")));
            }
            out.push((name, v));
        }
        Ok(out)
    }

    /// What every vNF of the daemon shares (the API creates its vNFs with it too).
    pub fn template(&self) -> dpacc_backend::api::vnfs::VnfTemplate {
        dpacc_backend::api::vnfs::VnfTemplate {
            quotas: self.quotas(),
            keep_detached: std::time::Duration::from_secs(self.keep_detached_secs),
            queue_size: self.queue_size,
            mac: self.mac,
            fastpath: Arc::new(dpacc_sw::flow::SwFastPath::new(Arc::new(
                dpacc_sw::SwDriver::new(),
            ))),
            busy_poll: std::time::Duration::from_micros(self.busy_poll_us),
            queue_pairs: self.queue_pairs,
        }
    }

    /// The vNF instances these options describe (socket, configuration), on the software fast
    /// path. Fails if a socket path or TAP name is used twice (a second bind would silently
    /// take over the first socket).
    pub fn to_vnfs(&self) -> Result<Vec<(PathBuf, NetBackendConfig)>, CliError> {
        let vnfs = self.vnf_args();
        let mut seen = std::collections::HashSet::new();
        for p in &vnfs {
            let names = std::iter::once(format!("socket {}", p.socket.display())).chain(
                p.uplinks.iter().map(|u| match u {
                    UplinkSpec::Tap(n) => format!("TAP {n}"),
                    UplinkSpec::Vhost(s) => format!("socket {}", s.display()),
                }),
            );
            for n in names {
                if !seen.insert(n.clone()) {
                    return Err(CliError::UsedTwice(n));
                }
            }
        }
        let fastpath: Arc<dyn dpacc_spec::fastpath::FastPathDriver> = Arc::new(
            dpacc_sw::flow::SwFastPath::new(Arc::new(dpacc_sw::SwDriver::new())),
        );
        Ok(vnfs
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                let mut mac = self.mac;
                mac[5] = mac[5].wrapping_add(i as u8);
                (
                    p.socket,
                    NetBackendConfig {
                        uplinks: p.uplinks,
                        quotas: self.quotas(),
                        keep_detached: std::time::Duration::from_secs(self.keep_detached_secs),
                        queue_size: self.queue_size,
                        mac,
                        fastpath: fastpath.clone(),
                        busy_poll: std::time::Duration::from_micros(self.busy_poll_us),
                        queue_pairs: self.queue_pairs,
                    },
                )
            })
            .collect())
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
    /// Microseconds each data-queue worker keeps polling its ring after it runs dry before it
    /// sleeps until a kick (0: sleep at once; more: lower latency and no kicks while requests
    /// keep coming, more CPU).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub busy_poll_us: u64,
    /// Serve the management API (HTTP/1.1 + JSON, spec/api.md) on a unix socket at PATH,
    /// created with mode 0600 and removed on exit: GET /metrics (Prometheus) and GET /stats
    /// (queues and sessions).
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<PathBuf>,
}

fn parse_queue_size(s: &str) -> Result<u16, CliError> {
    let v: u32 = s.parse()?;
    if v == 0 || v > u32::from(MAX_QUEUE_SIZE) || !v.is_power_of_two() {
        return Err(CliError::QueueSize(v));
    }
    Ok(v as u16)
}

impl CryptoArgs {
    /// The device configuration these options describe.
    pub fn to_config(&self) -> Result<CryptoBackendConfig, CliError> {
        Ok(CryptoBackendConfig {
            queues: self.queues,
            queue_size: self.queue_size,
            max_sessions: self.max_sessions as usize,
            driver: dpacc_backend::crypto::open_driver(&self.driver)?,
            busy_poll: std::time::Duration::from_micros(self.busy_poll_us),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vnfs_have_names_given_or_from_the_socket_stem() {
        let net = |args: &[&str]| {
            let mut v = vec!["dpacc-backend", "net"];
            v.extend(args);
            match Cli::try_parse_from(v).unwrap().command {
                Command::Net(n) => n,
                Command::Crypto(_) => panic!(),
            }
        };
        let n = net(&[
            "--port",
            "name=blue,socket=/run/a.sock",
            "--port",
            "socket=/run/red.sock,uplink=tap:r0",
        ]);
        let names: Vec<_> = n
            .named_vnfs()
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["blue", "red"]);
        let n = net(&["--port", "socket=/a/x.sock", "--port", "socket=/b/x.sock"]);
        let e = n.named_vnfs().unwrap_err().to_string();
        assert!(e.contains("vNF name x is used twice"), "{e}");
        assert_eq!(
            net(&["--socket", "/run/v.sock"]).named_vnfs().unwrap()[0].0,
            "v"
        );
        // With an API socket the daemon may start with no vNF, isolated or not.
        let n = net(&["--api-socket", "/run/api.sock"]);
        assert!(n.named_vnfs().unwrap().is_empty());
        let n = net(&["--isolate", "--api-socket", "/run/api.sock"]);
        assert!(n.isolate && n.named_vnfs().unwrap().is_empty());
        // What --isolate gives its vNF processes.
        let n = net(&[
            "--port",
            "name=a,socket=/a.sock",
            "--api-socket",
            "/run/api.sock.d/0.sock",
            "--start-policy",
            "/run/api.sock.d/0.policy.json",
            "--error-file",
            "/run/api.sock.d/0.error",
        ]);
        assert_eq!(
            n.start_policy.as_deref(),
            Some(std::path::Path::new("/run/api.sock.d/0.policy.json"))
        );
        assert!(n.error_file.is_some());
        assert!(
            Cli::try_parse_from(["dpacc-backend", "net", "--port", "name=,socket=/a"]).is_err()
        );
    }

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
        let c = Cli::try_parse_from([
            "dpacc-backend",
            "net",
            "--port",
            "socket=/a.sock,uplink=tap:x1,uplink=tap:x2",
            "--port",
            "socket=/b.sock",
        ])
        .unwrap();
        let Command::Net(n) = c.command else { panic!() };
        let ports = n.to_vnfs().unwrap();
        assert_eq!(ports.len(), 2);
        assert_eq!(
            ports[0].1.uplinks,
            [UplinkSpec::Tap("x1".into()), UplinkSpec::Tap("x2".into())]
        );
        let c = Cli::try_parse_from([
            "dpacc-backend",
            "net",
            "--socket",
            "/a.sock",
            "--uplink",
            "vhost:/u.sock",
            "--uplink",
            "tap:t0",
        ])
        .unwrap();
        let Command::Net(n) = c.command else { panic!() };
        assert_eq!(
            n.to_vnfs().unwrap()[0].1.uplinks,
            [
                UplinkSpec::Vhost("/u.sock".into()),
                UplinkSpec::Tap("t0".into())
            ]
        );
        for dup in [
            ["--socket", "/a", "--uplink", "vhost:/a"],
            ["--socket", "/a", "--uplink", "tap:t1"],
        ] {
            let mut args = vec!["dpacc-backend", "net"];
            args.extend(dup);
            if dup[3] == "tap:t1" {
                args.extend(["--uplink", "tap:t1"]);
            }
            let Command::Net(n) = Cli::try_parse_from(args).unwrap().command else {
                panic!()
            };
            let Err(e) = n.to_vnfs() else {
                panic!("{dup:?} accepted")
            };
            assert!(e.to_string().contains("used twice"), "{e}");
        }
        for bad in ["vhost:", "tap:", "veth:x", "tap:sixteen-chars-xx"] {
            let e =
                Cli::try_parse_from(["dpacc-backend", "net", "--socket", "/a", "--uplink", bad])
                    .unwrap_err()
                    .to_string();
            assert!(
                e.contains("uplink") || e.contains("TAP") || e.contains("vhost"),
                "{e}"
            );
        }
        assert_eq!((ports[0].1.mac[5], ports[1].1.mac[5]), (1, 2));
        // The quota defaults are the contract's.
        let Command::Net(n) = Cli::try_parse_from(["dpacc-backend", "net", "--socket", "/a"])
            .unwrap()
            .command
        else {
            panic!()
        };
        let v = n.to_vnfs().unwrap();
        assert_eq!(v[0].1.quotas, dpacc_spec::fastpath::Quotas::default());
        assert_eq!(v[0].1.keep_detached.as_secs(), 300);
        assert!(Cli::try_parse_from(["dpacc-backend", "net", "--port", "uplink=tap:x"]).is_err());
        assert!(Cli::try_parse_from(["dpacc-backend", "net"]).is_err());
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
