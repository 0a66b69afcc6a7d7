//! `dpacc`: crypto through a dpacc virtio-crypto backend, and flow programming of a dpacc
//! virtio-net port, from the command line.

mod bench;
mod bench_flows;
mod bench_net;
mod flow;
mod pci;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use dpacc_guest::{CryptoDevice, CryptoError, Error, Options, SessionControl};
use dpacc_spec::{
    AeadAlg, ChainAuth, ChainOrder, CipherAlg, Direction, HashAlg, MacAlg, SessionParams,
};

/// Offload to host accelerators through dpacc: crypto through a virtio-crypto backend, and the
/// flow processor of a fast-path virtio-net port.
///
/// Every device is reached either through the backend's vhost-user socket (`--socket`: the host
/// or a container) or, inside a VM, through the VM's virtio PCI function driven from userspace
/// (`--pci BDF`: bind it with `dpacc pci bind BDF`, reserve 2 MiB hugepages, run as root).
#[derive(Parser, Debug)]
#[command(name = "dpacc", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Which crypto device: the backend's socket, or a virtio-crypto PCI function of this VM.
#[derive(clap::Args, Debug, Clone)]
#[group(required = true, multiple = false)]
pub struct DeviceArg {
    /// vhost-user socket of the backend (virtio-user: on the host or in a container).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// The VM's virtio-crypto PCI function (DDDD:BB:DD.F), driven from userspace: bound to
    /// uio_pci_generic (`dpacc pci bind`), with free 2 MiB hugepages, as root.
    #[arg(long, value_name = "BDF")]
    pci: Option<String>,
}

impl DeviceArg {
    /// The library's endpoint string (`vhost-user:PATH` or `pci:BDF`).
    pub fn endpoint(&self) -> String {
        endpoint(self.socket.as_ref(), self.pci.as_deref())
    }
}

/// `vhost-user:PATH` or `pci:BDF` (socket first; callers make sure one is given).
pub fn endpoint(socket: Option<&PathBuf>, pci: Option<&str>) -> String {
    match (socket, pci) {
        (Some(s), _) => format!("vhost-user:{}", s.display()),
        (None, Some(p)) => format!("pci:{p}"),
        (None, None) => String::new(),
    }
}

/// Where session requests go (`--sessions`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Sessions {
    /// The control queue; inside a VM in-band on a data queue when the backend offers it.
    #[default]
    Auto,
    /// Always the device's control queue (inside a VM: QEMU's, which creates AES-CBC and
    /// cipher+MAC chain sessions only).
    ControlQueue,
    /// Always in-band on a data queue (dpacc's extension).
    InBand,
}

impl Sessions {
    fn control(self) -> SessionControl {
        match self {
            Sessions::Auto => SessionControl::Auto,
            Sessions::ControlQueue => SessionControl::ControlQueue,
            Sessions::InBand => SessionControl::InBand,
        }
    }
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Program a vNF port's flow processor (the inline fast path) over its control protocol.
    Flow {
        /// vhost-user socket of `dpacc-backend net` (virtio-user, containers and tests).
        #[arg(long, global = true)]
        socket: Option<PathBuf>,
        /// The VM's virtio-net PCI function (DDDD:BB:DD.F), driven from userspace (see
        /// `dpacc pci bind`).
        #[arg(long, global = true, value_name = "BDF")]
        pci: Option<String>,
        /// The port's network interface inside a VM (AF_PACKET on the kernel's virtio-net;
        /// needs CAP_NET_RAW).
        #[arg(long, global = true)]
        iface: Option<String>,
        #[command(subcommand)]
        op: flow::FlowOp,
    },
    /// Prepare the VM's virtio PCI functions for `--pci` (bind them to uio_pci_generic), or
    /// give them back to the kernel.
    Pci {
        #[command(subcommand)]
        op: pci::PciOp,
    },
    /// Encrypt or decrypt stdin to stdout (no padding: CBC input must be a multiple of 16).
    ///
    /// AEAD encrypt writes ciphertext||tag and decrypt expects it. With --auth-alg the cipher is
    /// chained encrypt-then-MAC (IPsec style): encrypt writes ciphertext||mac, decrypt verifies
    /// the trailing mac before writing the plaintext. An authentication failure prints an error
    /// and exits 1 with nothing on stdout; bad key/IV lengths exit 2.
    Crypto {
        #[command(flatten)]
        dev: DeviceArg,
        /// Where session requests go.
        #[arg(long, value_enum, default_value_t)]
        sessions: Sessions,
        /// Algorithm.
        #[arg(long, value_enum)]
        alg: Alg,
        /// Key, hex.
        #[arg(long)]
        key: String,
        /// IV / nonce, hex (16 bytes for CBC/CTR, 12 for GCM/ChaCha20-Poly1305).
        #[arg(long)]
        iv: Option<String>,
        /// Additional authenticated data, hex (AEAD and chained modes).
        #[arg(long)]
        aad: Option<String>,
        /// MAC for chained encrypt-then-MAC (needs --auth-key).
        #[arg(long, value_enum)]
        auth_alg: Option<AuthAlg>,
        /// MAC key, hex.
        #[arg(long)]
        auth_key: Option<String>,
        /// Direction.
        #[arg(value_enum)]
        op: Op,
    },
    /// Print the hex digest (or HMAC) of stdin.
    Digest {
        #[command(flatten)]
        dev: DeviceArg,
        /// Where session requests go.
        #[arg(long, value_enum, default_value_t)]
        sessions: Sessions,
        /// Hash or HMAC.
        #[arg(long, value_enum)]
        alg: DigestAlg,
        /// HMAC key, hex (HMAC only).
        #[arg(long)]
        key: Option<String>,
    },
    /// Measure ops/s through the backend beside the same driver called in-process (the raw
    /// figure, run just before and just after the device run, each for --seconds, and counted
    /// as one), with their same-run ratio, for every case of a sweep: each --size × --mode ×
    /// --queues (lists separated by commas). With --latency: the round trip of one operation
    /// at a time (p50/p99). `dpacc bench net ...`: frames per second through a net port's
    /// fast path; `dpacc bench flows ...`: connection setup through its exception path.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Bench {
        #[command(subcommand)]
        net: Option<BenchNet>,
        /// vhost-user socket of the backend.
        #[arg(long, conflicts_with = "pci")]
        socket: Option<PathBuf>,
        /// The VM's virtio-crypto PCI function (DDDD:BB:DD.F), driven from userspace.
        #[arg(long, value_name = "BDF")]
        pci: Option<String>,
        /// Where session requests go.
        #[arg(long, value_enum, default_value_t)]
        sessions: Sessions,
        /// Algorithm: a cipher/AEAD name (encrypt), or a digest name.
        #[arg(long, required = true)]
        alg: Option<String>,
        /// Bytes per operation (a list: one case each, e.g. 64,1024,16384).
        #[arg(long, required = true, value_delimiter = ',', num_args = 1..)]
        size: Vec<usize>,
        /// Operations pushed with one kick (and, polled, reaped per wakeup; with interrupts a
        /// thread sleeps until --wake-after operations completed).
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// Operations kept in flight per queue [default: 4 batches]. The raw figure cycles
        /// through as many buffers (the same working set).
        #[arg(long)]
        in_flight: Option<usize>,
        /// With interrupts: completions a thread sleeps for before it reaps and refills (the
        /// device is asked, through EVENT_IDX, to interrupt only then; capped at --in-flight)
        /// [default: half of --in-flight, at least a batch]. Fewer wake-ups cost the device's
        /// worker less, but the device must not run dry before the thread is back.
        #[arg(long)]
        wake_after: Option<usize>,
        /// With interrupts: microseconds a wait looks at the used ring (after a timed sleep
        /// when the device's pace is known) before it arms the interrupt and sleeps on it; 0:
        /// sleep on the interrupt at once [default: the library's, 50].
        #[arg(long)]
        wait_poll_us: Option<u64>,
        /// Data queues, one client thread each (a list: one case each, e.g. 1,2).
        #[arg(long, default_value = "1", value_delimiter = ',', num_args = 1..)]
        queues: Vec<u16>,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// How completions are noticed (a list: one case each, e.g. interrupt,poll).
        #[arg(long, value_enum, default_value = "interrupt", value_delimiter = ',', num_args = 1..)]
        mode: Vec<bench::Mode>,
        /// Busy-poll the used ring instead of sleeping on interrupts (same as --mode poll).
        #[arg(long, conflicts_with = "mode")]
        poll: bool,
        /// Measure the round trip of one operation at a time (p50/p90/p99/p99.9/max), one
        /// queue, instead of throughput.
        #[arg(long)]
        latency: bool,
        /// Pages of the memory shared with the backend (virtio-user): off (4 KiB pages, the
        /// library's default), auto (2 MiB hugepages when free, else 4 KiB pages), on
        /// (hugepages or an error saying how to reserve them). Inside a VM (--pci) always
        /// hugepages.
        #[arg(long, value_enum, default_value = "off")]
        hugepages: bench::Pages,
        /// Put the raw peer's buffers on 2 MiB hugepages too (default: its own heap, 4 KiB
        /// pages); fails without free hugepages.
        #[arg(long)]
        raw_hugepages: bool,
    },
}

/// `dpacc bench net`.
#[derive(Subcommand, Debug)]
enum BenchNet {
    /// Frames per second through a `dpacc-backend net` port's flow processor, on a flow hit.
    ///
    /// Without uplinks: a hairpin on the vNF port (TX ring → flow → RX ring). With two
    /// `--uplink` sockets (the port's vhost-user uplinks 1 and 2): this command is the traffic
    /// generator on both, sending on uplink 1 and counting on uplink 2 (flow in_port 1 →
    /// output 2). With --esp the flow also encapsulates in ESP (AES-128-GCM, tunnel mode).
    Net(bench_net::Args),
    /// New connections per second through a `dpacc-backend net` port's exception path.
    ///
    /// This command is the generator on the port's two vhost-user uplinks and the vNF on the
    /// port: first packets of new UDP 5-tuples go in on uplink 1, the vNF answers each
    /// PACKET_IN with two FLOW_ADDs (both directions) and a PACKET_OUT to uplink 2. Prints
    /// connections/s and the p50/p99/p99.9/max latency (first packet sent on uplink 1 ->
    /// received on uplink 2) per mode (blocking, pipelined-v1, pipelined), with the same-run
    /// ratio to blocking.
    Flows(bench_flows::Args),
}

/// Cipher and AEAD algorithms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Alg {
    /// AES-128-CBC.
    #[value(name = "aes-128-cbc")]
    Aes128Cbc,
    /// AES-192-CBC.
    #[value(name = "aes-192-cbc")]
    Aes192Cbc,
    /// AES-256-CBC.
    #[value(name = "aes-256-cbc")]
    Aes256Cbc,
    /// AES-128-CTR.
    #[value(name = "aes-128-ctr")]
    Aes128Ctr,
    /// AES-192-CTR.
    #[value(name = "aes-192-ctr")]
    Aes192Ctr,
    /// AES-256-CTR.
    #[value(name = "aes-256-ctr")]
    Aes256Ctr,
    /// AES-128-GCM.
    #[value(name = "aes-128-gcm")]
    Aes128Gcm,
    /// AES-256-GCM.
    #[value(name = "aes-256-gcm")]
    Aes256Gcm,
    /// ChaCha20-Poly1305.
    #[value(name = "chacha20-poly1305")]
    Chacha20Poly1305,
}

/// What an [`Alg`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlgKind {
    /// A cipher with its key length.
    Cipher(CipherAlg, usize),
    /// An AEAD with its key length.
    Aead(AeadAlg, usize),
}

impl Alg {
    /// The algorithm and its required key length.
    pub fn kind(self) -> AlgKind {
        use Alg::*;
        match self {
            Aes128Cbc => AlgKind::Cipher(CipherAlg::AesCbc, 16),
            Aes192Cbc => AlgKind::Cipher(CipherAlg::AesCbc, 24),
            Aes256Cbc => AlgKind::Cipher(CipherAlg::AesCbc, 32),
            Aes128Ctr => AlgKind::Cipher(CipherAlg::AesCtr, 16),
            Aes192Ctr => AlgKind::Cipher(CipherAlg::AesCtr, 24),
            Aes256Ctr => AlgKind::Cipher(CipherAlg::AesCtr, 32),
            Aes128Gcm => AlgKind::Aead(AeadAlg::AesGcm, 16),
            Aes256Gcm => AlgKind::Aead(AeadAlg::AesGcm, 32),
            Chacha20Poly1305 => AlgKind::Aead(AeadAlg::ChaCha20Poly1305, 32),
        }
    }
}

/// MACs for chained modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AuthAlg {
    /// HMAC-SHA-1.
    #[value(name = "hmac-sha1")]
    HmacSha1,
    /// HMAC-SHA-256.
    #[value(name = "hmac-sha256")]
    HmacSha256,
    /// HMAC-SHA-384.
    #[value(name = "hmac-sha384")]
    HmacSha384,
    /// HMAC-SHA-512.
    #[value(name = "hmac-sha512")]
    HmacSha512,
}

impl AuthAlg {
    fn mac(self) -> MacAlg {
        MacAlg::Hmac(match self {
            AuthAlg::HmacSha1 => HashAlg::Sha1,
            AuthAlg::HmacSha256 => HashAlg::Sha256,
            AuthAlg::HmacSha384 => HashAlg::Sha384,
            AuthAlg::HmacSha512 => HashAlg::Sha512,
        })
    }
}

/// Digest algorithms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DigestAlg {
    /// SHA-1.
    Sha1,
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
    /// HMAC-SHA-1.
    #[value(name = "hmac-sha1")]
    HmacSha1,
    /// HMAC-SHA-256.
    #[value(name = "hmac-sha256")]
    HmacSha256,
    /// HMAC-SHA-384.
    #[value(name = "hmac-sha384")]
    HmacSha384,
    /// HMAC-SHA-512.
    #[value(name = "hmac-sha512")]
    HmacSha512,
}

impl DigestAlg {
    /// (hash, is HMAC).
    pub fn parts(self) -> (HashAlg, bool) {
        use DigestAlg::*;
        match self {
            Sha1 => (HashAlg::Sha1, false),
            Sha256 => (HashAlg::Sha256, false),
            Sha384 => (HashAlg::Sha384, false),
            Sha512 => (HashAlg::Sha512, false),
            HmacSha1 => (HashAlg::Sha1, true),
            HmacSha256 => (HashAlg::Sha256, true),
            HmacSha384 => (HashAlg::Sha384, true),
            HmacSha512 => (HashAlg::Sha512, true),
        }
    }
}

/// Direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Op {
    /// Plaintext in, ciphertext out.
    Encrypt,
    /// Ciphertext in, plaintext out.
    Decrypt,
}

/// Why `dpacc` failed; [`CliError::exit_code`] says how it exits.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A usage mistake: bad arguments or input that cannot be valid.
    #[error("{0}")]
    Usage(String),
    /// Verification failed (AEAD tag or chained MAC); nothing was written to stdout.
    #[error("authentication failed: the data or its tag/MAC was modified (no output written)")]
    AuthFailed,
    /// The device could not be connected to or brought up.
    #[error("cannot use the device {device}: {source}")]
    Connect {
        /// The endpoint (`vhost-user:PATH` or `pci:BDF`).
        device: String,
        /// Why.
        #[source]
        source: Error,
    },
    /// The library or the device refused an operation.
    #[error(transparent)]
    Device(Error),
    /// Reading stdin or writing stdout failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// A worker thread of `dpacc bench` panicked.
    #[error("{0} panicked")]
    Panicked(&'static str),
    /// The in-process software driver accepted none of a batch.
    #[error("software queue refused every operation")]
    SoftwareQueueRefused,
}

impl CliError {
    /// 2 for usage mistakes (bad arguments, key/IV/digest/data lengths), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Device(e) => match e.crypto() {
                Some(
                    CryptoError::InvalidKeyLength
                    | CryptoError::InvalidIvLength
                    | CryptoError::InvalidDigestLength
                    | CryptoError::InvalidDataLength,
                ) => 2,
                _ => 1,
            },
            _ => 1,
        }
    }
}

/// A usage mistake: exit 2.
pub fn usage(msg: impl Into<String>) -> CliError {
    CliError::Usage(msg.into())
}

impl From<Error> for CliError {
    fn from(e: Error) -> Self {
        match e.crypto() {
            Some(CryptoError::AuthFailed) => CliError::AuthFailed,
            _ => CliError::Device(e),
        }
    }
}

impl From<CryptoError> for CliError {
    fn from(e: CryptoError) -> Self {
        Error::Crypto(e).into()
    }
}

fn hex_arg(name: &str, v: &str) -> Result<Vec<u8>, CliError> {
    hex::decode(v.trim()).map_err(|e| usage(format!("--{name}: not valid hex ({e})")))
}

fn read_stdin() -> Result<Vec<u8>, CliError> {
    let mut v = Vec::new();
    std::io::stdin()
        .read_to_end(&mut v)
        .map_err(|source| CliError::Io {
            what: "reading stdin",
            source,
        })?;
    Ok(v)
}

fn write_stdout(b: &[u8]) -> Result<(), CliError> {
    let mut o = std::io::stdout().lock();
    o.write_all(b)
        .and_then(|()| o.flush())
        .map_err(|source| CliError::Io {
            what: "writing stdout",
            source,
        })
}

/// Opens a crypto device, mapping failures to [`CliError::Connect`].
pub fn open(device: &str, opts: Options) -> Result<CryptoDevice, CliError> {
    CryptoDevice::open(device, opts).map_err(|source| CliError::Connect {
        device: device.to_string(),
        source,
    })
}

fn connect(dev: &DeviceArg, sessions: Sessions, data_len: usize) -> Result<CryptoDevice, CliError> {
    let opts = Options {
        queues: Some(1),
        arena_size: data_len.saturating_mul(4).saturating_add(1 << 20),
        session_control: sessions.control(),
        ..Options::default()
    };
    open(&dev.endpoint(), opts)
}

#[allow(clippy::too_many_arguments)]
fn crypto(
    dev: DeviceArg,
    sessions: Sessions,
    alg: Alg,
    key: String,
    iv: Option<String>,
    aad: Option<String>,
    auth_alg: Option<AuthAlg>,
    auth_key: Option<String>,
    op: Op,
) -> Result<(), CliError> {
    let key = hex_arg("key", &key)?;
    let aad = aad
        .map(|a| hex_arg("aad", &a))
        .transpose()?
        .unwrap_or_default();
    let iv = iv.map(|v| hex_arg("iv", &v)).transpose()?;
    let dir = match op {
        Op::Encrypt => Direction::Encrypt,
        Op::Decrypt => Direction::Decrypt,
    };
    let name = alg
        .to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default();
    match alg.kind() {
        AlgKind::Cipher(c, klen) => {
            if key.len() != klen {
                return Err(usage(format!(
                    "--key: {name} needs a {klen}-byte key ({} hex digits), got {} bytes",
                    klen * 2,
                    key.len()
                )));
            }
            let iv = iv.ok_or_else(|| usage(format!("--iv: {name} needs a 16-byte IV")))?;
            if iv.len() != c.iv_len() {
                return Err(usage(format!(
                    "--iv: {name} needs a 16-byte IV, got {} bytes",
                    iv.len()
                )));
            }
            let auth = match (auth_alg, auth_key) {
                (None, None) => None,
                (Some(a), Some(k)) => Some((a, hex_arg("auth-key", &k)?)),
                (Some(_), None) => return Err(usage("--auth-alg needs --auth-key")),
                (None, Some(_)) => return Err(usage("--auth-key needs --auth-alg")),
            };
            if auth.is_none() && !aad.is_empty() {
                return Err(usage("--aad needs an AEAD algorithm or --auth-alg"));
            }
            let input = read_stdin()?;
            let mac_len = auth.as_ref().map_or(0, |(a, _)| a.mac().digest_len());
            let data_len = if dir == Direction::Decrypt {
                input
                    .len()
                    .checked_sub(mac_len)
                    .ok_or(CliError::AuthFailed)?
            } else {
                input.len()
            };
            if c == CipherAlg::AesCbc && data_len % 16 != 0 {
                return Err(usage(format!(
                    "{name}: input must be a multiple of 16 bytes (no padding is applied), got {data_len}"
                )));
            }
            let dev = connect(&dev, sessions, input.len())?;
            let out = match auth {
                None => {
                    let s = dev.create_session(&SessionParams::Cipher {
                        alg: c,
                        key: &key,
                        dir,
                    })?;
                    if dir == Direction::Encrypt {
                        s.encrypt(&iv, &[], &input)?
                    } else {
                        s.decrypt(&iv, &[], &input)?
                    }
                }
                Some((a, akey)) => {
                    let order = match dir {
                        Direction::Encrypt => ChainOrder::CipherThenHash,
                        Direction::Decrypt => ChainOrder::HashThenCipher,
                    };
                    let s = dev.create_session(&SessionParams::Chain {
                        order,
                        cipher: c,
                        cipher_key: &key,
                        dir,
                        auth: ChainAuth::Mac(a.mac()),
                        auth_key: &akey,
                        digest_len: 0,
                    })?;
                    if dir == Direction::Encrypt {
                        let (mut ct, mac) = s.chain(&iv, &aad, &input)?;
                        ct.extend_from_slice(&mac);
                        ct
                    } else {
                        let (ct, mac) = input.split_at(data_len);
                        s.verify_then_decrypt(&iv, &aad, ct, mac)?
                    }
                }
            };
            write_stdout(&out)
        }
        AlgKind::Aead(a, klen) => {
            if key.len() != klen {
                return Err(usage(format!(
                    "--key: {name} needs a {klen}-byte key ({} hex digits), got {} bytes",
                    klen * 2,
                    key.len()
                )));
            }
            if auth_alg.is_some() || auth_key.is_some() {
                return Err(usage(format!(
                    "{name} authenticates itself: drop --auth-alg/--auth-key"
                )));
            }
            let iv = iv.ok_or_else(|| usage(format!("--iv: {name} needs a 12-byte nonce")))?;
            if iv.len() != a.iv_len() {
                return Err(usage(format!(
                    "--iv: {name} needs a 12-byte nonce, got {} bytes",
                    iv.len()
                )));
            }
            let input = read_stdin()?;
            if dir == Direction::Decrypt && input.len() < a.tag_len() {
                return Err(CliError::AuthFailed);
            }
            let dev = connect(&dev, sessions, input.len())?;
            let s = dev.create_session(&SessionParams::Aead {
                alg: a,
                key: &key,
                tag_len: 0,
                dir,
            })?;
            let out = if dir == Direction::Encrypt {
                s.encrypt(&iv, &aad, &input)?
            } else {
                s.decrypt(&iv, &aad, &input)?
            };
            write_stdout(&out)
        }
    }
}

fn digest(
    dev: DeviceArg,
    sessions: Sessions,
    alg: DigestAlg,
    key: Option<String>,
) -> Result<(), CliError> {
    let (h, hmac) = alg.parts();
    let key = key.map(|k| hex_arg("key", &k)).transpose()?;
    let params = match (hmac, &key) {
        (false, None) => SessionParams::Hash {
            alg: h,
            digest_len: 0,
        },
        (false, Some(_)) => return Err(usage("--key is only for hmac-* algorithms")),
        (true, None) => return Err(usage("hmac-* algorithms need --key")),
        (true, Some(k)) => SessionParams::Mac {
            alg: MacAlg::Hmac(h),
            key: k,
            digest_len: 0,
        },
    };
    let input = read_stdin()?;
    let dev = connect(&dev, sessions, input.len())?;
    let s = dev.create_session(&params)?;
    let d = s.digest(&input)?;
    write_stdout(format!("{}\n", hex::encode(d)).as_bytes())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Crypto {
            dev,
            sessions,
            alg,
            key,
            iv,
            aad,
            auth_alg,
            auth_key,
            op,
        } => crypto(dev, sessions, alg, key, iv, aad, auth_alg, auth_key, op),
        Cmd::Digest {
            dev,
            sessions,
            alg,
            key,
        } => digest(dev, sessions, alg, key),
        Cmd::Flow {
            socket,
            pci,
            iface,
            op,
        } => flow::run(socket, pci, iface, op),
        Cmd::Pci { op } => pci::run(op),
        Cmd::Bench {
            net: Some(BenchNet::Net(a)),
            ..
        } => bench_net::run(a),
        Cmd::Bench {
            net: Some(BenchNet::Flows(a)),
            ..
        } => bench_flows::run(a),
        Cmd::Bench {
            net: None,
            socket,
            pci,
            sessions,
            alg,
            size,
            batch,
            in_flight,
            wake_after,
            wait_poll_us,
            queues,
            seconds,
            mode,
            poll,
            latency,
            hugepages,
            raw_hugepages,
        } => match (endpoint(socket.as_ref(), pci.as_deref()), alg) {
            (device, Some(alg)) if !device.is_empty() && !size.is_empty() => {
                bench::run(bench::Args {
                    device,
                    sessions: sessions.control(),
                    alg,
                    sizes: size,
                    batch,
                    in_flight,
                    wake_after,
                    wait_poll: wait_poll_us.map(std::time::Duration::from_micros),
                    queues,
                    seconds,
                    modes: if poll { vec![bench::Mode::Poll] } else { mode },
                    latency,
                    hugepages: hugepages.into(),
                    raw_hugepages,
                })
            }
            _ => Err(usage(
                "dpacc bench needs --socket or --pci, --alg and --size",
            )),
        },
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dpacc: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
