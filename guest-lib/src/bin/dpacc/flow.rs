//! `dpacc flow`: program a vNF port's flow processor by hand, over virtio-user (`--socket`), the
//! VM's virtio-net PCI function driven from userspace (`--pci`), or an AF_PACKET socket on the
//! port's interface inside a VM (`--iface`).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Subcommand;
use dpacc_guest::net::{AfPacket, Event, FlowTable, FrameIo, NetOptions, VirtioNetPort};
use dpacc_spec::fastpath::flow::{Action, Bucket, FlowSpec, Match, Prefix};
use dpacc_spec::fastpath::proto::{SaDirection, SaSpec, ETHERTYPE};
use dpacc_spec::fastpath::PortId;

use crate::{usage, CliError};

/// Operations.
#[derive(Subcommand, Debug)]
pub enum FlowOp {
    /// Install (or replace) a flow.
    Add {
        /// The flow's cookie (its name for del/stats/events).
        #[arg(long)]
        cookie: u64,
        /// Table 0..7.
        #[arg(long, default_value_t = 0)]
        table: u8,
        /// Priority (higher wins).
        #[arg(long, default_value_t = 100)]
        priority: u16,
        /// Match, comma-separated: in_port=N, eth_type=0xHHHH|ip|ipv6|arp, vlan=N,
        /// nw_src=ADDR[/LEN], nw_dst=ADDR[/LEN], proto=N|tcp|udp|esp, tp_src=N, tp_dst=N,
        /// spi=N. Empty: everything.
        #[arg(long = "match", default_value = "")]
        matches: String,
        /// Actions, comma-separated, in order: output:N, drop, set_eth_src:MAC, set_eth_dst:MAC,
        /// set_nw_src:IPV4, set_nw_dst:IPV4, set_tp_src:N, set_tp_dst:N, esp_encap:SPI,
        /// esp_decap, group:N, goto:TABLE.
        #[arg(long)]
        actions: String,
        /// Idle timeout in seconds (0: none).
        #[arg(long, default_value_t = 0.0)]
        idle_timeout: f64,
        /// Hard timeout in seconds (0: none).
        #[arg(long, default_value_t = 0.0)]
        hard_timeout: f64,
        /// Ask for an expiry event.
        #[arg(long)]
        notify: bool,
    },
    /// Remove the flows with a cookie.
    Del {
        /// Cookie.
        #[arg(long)]
        cookie: u64,
    },
    /// Print the packet and byte counters of the flows with a cookie.
    Stats {
        /// Cookie.
        #[arg(long)]
        cookie: u64,
    },
    /// Install an ESP SA (AES-GCM, RFC 4106; tunnel mode) for esp_encap:SPI / esp_decap.
    Sa {
        /// SPI (decimal or 0x hex).
        #[arg(long)]
        spi: String,
        /// AES key, hex (16 or 32 bytes).
        #[arg(long)]
        key: String,
        /// Salt, hex (4 bytes).
        #[arg(long)]
        salt: String,
        /// Outbound (encapsulation) with these outer addresses, `SRC,DST` (IPv4); without it
        /// the SA is inbound (decapsulation).
        #[arg(long, value_name = "SRC,DST")]
        tunnel: Option<String>,
    },
    /// Install (or replace) a select group for group:ID: each bucket `WEIGHT=ACTIONS`, the
    /// actions as in `add --actions` separated by `;` (e.g. `2=set_nw_dst:10.0.0.2;output:1`).
    Group {
        /// Group id.
        #[arg(long)]
        id: u32,
        /// A bucket (repeatable).
        #[arg(long = "bucket", required = true, value_name = "WEIGHT=ACTIONS")]
        buckets: Vec<String>,
    },
    /// List every installed flow with its counters.
    List,
    /// Print the instance's tables, quotas, what it holds and its memory.
    Info,
    /// Print events (PACKET_IN, FLOW_EXPIRED) for a while.
    Events {
        /// How long to listen.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
    },
}

fn num<T: std::str::FromStr>(what: &str, v: &str) -> Result<T, CliError> {
    let r = if let Some(h) = v.strip_prefix("0x") {
        u64::from_str_radix(h, 16)
            .ok()
            .and_then(|x| x.to_string().parse().ok())
    } else {
        v.parse().ok()
    };
    r.ok_or_else(|| usage(format!("bad {what} '{v}'")))
}

fn prefix(v: &str) -> Result<Prefix, CliError> {
    let (a, l) = v.split_once('/').unwrap_or((v, ""));
    let addr: IpAddr = a.parse().map_err(|_| usage(format!("bad address '{a}'")))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = if l.is_empty() {
        max
    } else {
        num("prefix length", l)?
    };
    if len > max {
        return Err(usage(format!("prefix /{len} longer than the address")));
    }
    Ok(Prefix { addr, len })
}

fn mac(v: &str) -> Result<[u8; 6], CliError> {
    let b: Vec<u8> = v
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .map_err(|_| usage(format!("bad MAC '{v}'")))?;
    b.try_into().map_err(|_| usage(format!("bad MAC '{v}'")))
}

/// Parses the `--match` syntax.
pub fn parse_match(s: &str) -> Result<Match, CliError> {
    let mut m = Match::default();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (k, v) = item.split_once('=').unwrap_or((item, ""));
        match (k, v) {
            ("ip", "") => m.eth_type = Some(0x0800),
            ("ipv6", "") => m.eth_type = Some(0x86dd),
            ("arp", "") => m.eth_type = Some(0x0806),
            ("tcp", "") => m.proto = Some(6),
            ("udp", "") => m.proto = Some(17),
            ("esp", "") => m.proto = Some(50),
            ("in_port", v) => m.in_port = Some(num("in_port", v)?),
            ("eth_type", v) => m.eth_type = Some(num("eth_type", v)?),
            ("vlan", v) => m.vlan = Some(num("vlan", v)?),
            ("nw_src", v) => m.src = Some(prefix(v)?),
            ("nw_dst", v) => m.dst = Some(prefix(v)?),
            ("proto", v) => m.proto = Some(num("proto", v)?),
            ("tp_src", v) => m.sport = Some(num("tp_src", v)?),
            ("tp_dst", v) => m.dport = Some(num("tp_dst", v)?),
            ("spi", v) => m.spi = Some(num("spi", v)?),
            _ => return Err(usage(format!("unknown match field '{item}'"))),
        }
    }
    Ok(m)
}

/// Parses the `--actions` syntax.
pub fn parse_actions(s: &str) -> Result<Vec<Action>, CliError> {
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (k, v) = item.split_once(':').unwrap_or((item, ""));
        let ip4 = |v: &str| {
            v.parse()
                .map_err(|_| usage(format!("bad IPv4 address '{v}'")))
        };
        out.push(match k {
            "output" => Action::Output(PortId(num("port", v)?)),
            "drop" => Action::Drop,
            "set_eth_src" => Action::SetEthSrc(mac(v)?),
            "set_eth_dst" => Action::SetEthDst(mac(v)?),
            "set_nw_src" => Action::SetIpv4Src(ip4(v)?),
            "set_nw_dst" => Action::SetIpv4Dst(ip4(v)?),
            "set_tp_src" => Action::SetL4Src(num("port", v)?),
            "set_tp_dst" => Action::SetL4Dst(num("port", v)?),
            "esp_encap" => Action::EspEncap(num("SPI", v)?),
            "esp_decap" => Action::EspDecap,
            "group" => Action::Group(num("group", v)?),
            "goto" => Action::Goto(num("table", v)?),
            _ => return Err(usage(format!("unknown action '{item}'"))),
        });
    }
    if out.is_empty() {
        return Err(usage("--actions needs at least one action"));
    }
    Ok(out)
}

fn secs_ns(s: f64) -> Result<u64, CliError> {
    if !(0.0..=1e9).contains(&s) {
        return Err(usage(format!("bad timeout {s}")));
    }
    Ok((s * 1e9) as u64)
}

fn run_on<T: FrameIo>(mut ft: FlowTable<T>, op: FlowOp) -> Result<(), CliError> {
    match op {
        FlowOp::Add {
            cookie,
            table,
            priority,
            matches,
            actions,
            idle_timeout,
            hard_timeout,
            notify,
        } => {
            ft.add_flow(FlowSpec {
                table,
                priority,
                cookie,
                m: parse_match(&matches)?,
                actions: parse_actions(&actions)?,
                idle_timeout_ns: secs_ns(idle_timeout)?,
                hard_timeout_ns: secs_ns(hard_timeout)?,
                notify_expiry: notify,
            })?;
            println!("flow {cookie} installed");
        }
        FlowOp::Sa {
            spi,
            key,
            salt,
            tunnel,
        } => {
            let spi: u32 = num("SPI", &spi)?;
            let key = hex::decode(&key).map_err(|_| usage("--key is not hex"))?;
            let salt: [u8; 4] = hex::decode(&salt)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| usage("--salt must be 4 bytes of hex"))?;
            let dir = match tunnel {
                None => SaDirection::Inbound,
                Some(t) => {
                    let (a, b) = t
                        .split_once(',')
                        .ok_or_else(|| usage("--tunnel is SRC,DST"))?;
                    let ip = |v: &str| {
                        v.trim()
                            .parse()
                            .map_err(|_| usage(format!("bad IPv4 address '{v}'")))
                    };
                    SaDirection::Outbound {
                        src: ip(a)?,
                        dst: ip(b)?,
                    }
                }
            };
            let out = matches!(dir, SaDirection::Outbound { .. });
            ft.add_sa(SaSpec {
                spi,
                key,
                salt,
                dir,
            })?;
            println!(
                "{} SA {spi:#x} installed",
                if out { "outbound" } else { "inbound" }
            );
        }
        FlowOp::Group { id, buckets } => {
            let mut bs = Vec::new();
            for b in &buckets {
                let (w, acts) = b
                    .split_once('=')
                    .ok_or_else(|| usage(format!("bad bucket '{b}': WEIGHT=ACTIONS")))?;
                bs.push(Bucket {
                    weight: num("weight", w)?,
                    actions: parse_actions(&acts.replace(';', ","))?,
                });
            }
            ft.add_group(id, bs)?;
            println!("group {id} installed ({} buckets)", buckets.len());
        }
        FlowOp::Del { cookie } => {
            ft.delete_flows(cookie)?;
            println!("flows with cookie {cookie} removed");
        }
        FlowOp::Stats { cookie } => {
            let s = ft.stats(cookie)?;
            println!("cookie {cookie}: {} packets, {} bytes", s.packets, s.bytes);
        }
        FlowOp::List => {
            let flows = ft.list()?;
            println!("{} flows", flows.len());
            for f in flows {
                println!(
                    "cookie {} table {} priority {}: {} packets, {} bytes",
                    f.cookie, f.table, f.priority, f.stats.packets, f.stats.bytes
                );
            }
        }
        FlowOp::Info => {
            let i = ft.info()?;
            println!("{} tables, at most {} flows", i.tables, i.max_flows);
            if let Some(u) = i.usage {
                println!(
                    "flows {}/{}, groups {}/{}, buckets {}/{}, SAs {}/{}, at most {} actions per list",
                    u.flows,
                    i.max_flows,
                    u.groups,
                    u.max_groups,
                    u.buckets,
                    u.max_buckets,
                    u.sas,
                    u.max_sas,
                    u.max_actions
                );
                println!(
                    "memory {} KiB of at most {} KiB",
                    u.memory.div_ceil(1024),
                    u.max_memory.div_ceil(1024)
                );
            }
        }
        FlowOp::Events { seconds } => {
            let end = Instant::now() + Duration::from_secs_f64(seconds.max(0.0));
            while let Some(left) = end.checked_duration_since(Instant::now()) {
                match ft.next_event(left)? {
                    Some(Event::PacketIn {
                        in_port,
                        table,
                        frame,
                    }) => println!(
                        "packet-in port {} table {table}: {} bytes {}",
                        in_port.0,
                        frame.len(),
                        hex::encode(&frame[..frame.len().min(34)])
                    ),
                    Some(Event::FlowExpired(e)) => println!(
                        "flow {} expired ({:?}): {} packets, {} bytes",
                        e.cookie, e.reason, e.stats.packets, e.stats.bytes
                    ),
                    None => break,
                }
            }
        }
    }
    Ok(())
}

/// Runs `dpacc flow`.
pub fn run(
    socket: Option<PathBuf>,
    pci: Option<String>,
    iface: Option<String>,
    op: FlowOp,
) -> Result<(), CliError> {
    match (socket, pci, iface) {
        (Some(s), None, None) => port(&crate::endpoint(Some(&s), None), op),
        (None, Some(p), None) => port(&crate::endpoint(None, Some(&p)), op),
        (None, None, Some(i)) => {
            let io = AfPacket::open(&i, ETHERTYPE)?;
            let mac = io.mac();
            run_on(FlowTable::new(io, mac), op)
        }
        _ => Err(usage(
            "give exactly one of --socket PATH, --pci BDF or --iface NAME",
        )),
    }
}

/// The port at `device` (`vhost-user:PATH` or `pci:BDF`).
fn port(device: &str, op: FlowOp) -> Result<(), CliError> {
    let port = open_port(device)?;
    let mac = port.mac();
    run_on(FlowTable::new(port, mac), op)
}

/// Opens a net port, mapping failures to [`CliError::Connect`].
pub fn open_port(device: &str) -> Result<VirtioNetPort, CliError> {
    VirtioNetPort::open(device, NetOptions::default()).map_err(|source| CliError::Connect {
        device: device.to_string(),
        source,
    })
}
