//! `dpacc bench net`: frames per second through a `dpacc-backend net` port's fast path, on a
//! flow hit: a hairpin on the vNF port (TX ring → flow → RX ring), or forwarding between the
//! port's two vhost-user uplinks with this command as the traffic generator on both. With
//! `--esp` the flow also encapsulates every frame in ESP (AES-128-GCM, tunnel mode), and the
//! raw software AES-128-GCM figure for the same payload size is printed beside it.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use dpacc_guest::net::{FlowTable, FrameIo, NetOptions, VirtioNetPort};
use dpacc_spec::fastpath::flow::{Action, FlowSpec, Match};
use dpacc_spec::fastpath::proto::{SaDirection, SaSpec};
use dpacc_spec::fastpath::PortId;

use crate::{usage, CliError};

/// Options of `dpacc bench net`.
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("port").required(true).args(["socket", "pci"])))]
pub struct Args {
    /// vhost-user socket of the vNF port (`dpacc-backend net --socket`).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// The VM's virtio-net PCI function (DDDD:BB:DD.F), driven from userspace (hairpin only).
    #[arg(long, value_name = "BDF", conflicts_with = "uplinks")]
    pci: Option<String>,
    /// The port's vhost-user uplink sockets (`--uplink vhost:SOCKET`), twice: frames go in on
    /// the first (port 1) and out of the second (port 2). Without: a hairpin on the vNF port.
    #[arg(long = "uplink", value_name = "SOCKET")]
    uplinks: Vec<PathBuf>,
    /// Frame size in bytes (60..1514).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Frames per batch (one kick per batch).
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Duration in seconds.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Encapsulate in ESP (AES-128-GCM) on the way.
    #[arg(long)]
    esp: bool,
}

const COOKIE: u64 = 0xbe7c;
const SPI: u32 = 0xbe7c_0001;

/// An Ethernet/IPv4/UDP frame of `size` bytes (valid lengths, checksums left zero).
fn frame(size: usize, dst_mac: [u8; 6]) -> Vec<u8> {
    let mut f = vec![0u8; size];
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f[14] = 0x45;
    f[16..18].copy_from_slice(&((size - 14) as u16).to_be_bytes());
    f[22] = 64;
    f[23] = 17;
    f[26..30].copy_from_slice(&[10, 0, 0, 1]);
    f[30..34].copy_from_slice(&[10, 0, 0, 2]);
    f[34..36].copy_from_slice(&1234u16.to_be_bytes());
    f[36..38].copy_from_slice(&5678u16.to_be_bytes());
    f[38..40].copy_from_slice(&((size - 34) as u16).to_be_bytes());
    f
}

/// Runs the benchmark and prints the figures.
pub fn run(a: Args) -> Result<(), CliError> {
    if !(60..=1514).contains(&a.size) || a.batch == 0 || a.batch > 128 {
        return Err(usage("--size must be 60..1514 and --batch 1..128"));
    }
    if !matches!(a.uplinks.len(), 0 | 2) {
        return Err(usage("give --uplink twice (ports 1 and 2) or not at all"));
    }
    let port = crate::flow::open_port(&crate::endpoint(a.socket.as_ref(), a.pci.as_deref()))?;
    let mac = port.mac();
    let mut ft = FlowTable::new(port, mac);
    let (in_port, out_port) = if a.uplinks.is_empty() { (0, 0) } else { (1, 2) };
    let _ = ft.delete_flows(COOKIE); // a run that was interrupted may have left its flow
    let mut actions = vec![];
    if a.esp {
        ft.add_sa(SaSpec {
            spi: SPI,
            key: vec![0x42; 16],
            salt: [1, 2, 3, 4],
            dir: SaDirection::Outbound {
                src: Ipv4Addr::new(192, 0, 2, 1),
                dst: Ipv4Addr::new(192, 0, 2, 2),
            },
        })?;
        actions.push(Action::EspEncap(SPI));
    }
    actions.push(Action::Output(PortId(out_port)));
    ft.add_flow(FlowSpec {
        table: 0,
        priority: 65535,
        cookie: COOKIE,
        m: Match {
            in_port: Some(in_port),
            eth_type: Some(0x0800),
            ..Match::default()
        },
        actions,
        idle_timeout_ns: 0,
        hard_timeout_ns: 0,
        notify_expiry: false,
    })?;
    let f = frame(a.size, mac);
    let frames: Vec<&[u8]> = (0..a.batch).map(|_| &f[..]).collect();
    let dur = Duration::from_secs_f64(a.seconds.max(0.1));
    let (sent, got, secs) = if a.uplinks.is_empty() {
        drive(ft.io(), None, &frames, dur)?
    } else {
        let mut tx = VirtioNetPort::connect(&a.uplinks[0], NetOptions::default())?;
        let mut rx = VirtioNetPort::connect(&a.uplinks[1], NetOptions::default())?;
        drive(&mut tx, Some(&mut rx), &frames, dur)?
    };
    let stats = ft.stats(COOKIE)?;
    // Leave the instance as it was (the quota slot, and the next run's counters).
    ft.delete_flows(COOKIE)?;
    let path = match (a.uplinks.is_empty(), a.esp) {
        (true, false) => "hairpin on the vNF port",
        (true, true) => "hairpin on the vNF port, ESP encap",
        (false, false) => "uplink 1 -> uplink 2",
        (false, true) => "uplink 1 -> uplink 2, ESP encap",
    };
    println!(
        "net       {got} of {sent} frames of {} B back in {secs:.2} s: {:.3} Mpps, {:.1} Mbit/s (flow hits {}; {path})",
        a.size,
        got as f64 / secs / 1e6,
        got as f64 * a.size as f64 * 8.0 / secs / 1e6,
        stats.packets
    );
    if a.esp {
        // The ESP payload is the inner IP packet (frame minus its Ethernet header).
        let ops = crate::bench::software_gcm128(a.size - 14, a.batch, dur)?;
        println!(
            "raw       software AES-128-GCM on {} B: {:.3} M ops/s, {:.1} Mbit/s; ESP path {:.2}x",
            a.size - 14,
            ops / 1e6,
            ops * (a.size - 14) as f64 * 8.0 / 1e6,
            got as f64 / secs / ops
        );
    }
    Ok(())
}

/// Sends batches on `tx` and counts frames coming back on `rx` (or `tx`) until `dur` has
/// passed (a frame missing for 200 ms counts as dropped). Returns (sent, received, seconds).
fn drive(
    tx: &mut VirtioNetPort,
    mut rx: Option<&mut VirtioNetPort>,
    frames: &[&[u8]],
    dur: Duration,
) -> Result<(u64, u64, f64), CliError> {
    let mut buf = vec![0u8; 2048];
    let (mut sent, mut got) = (0u64, 0u64);
    let start = Instant::now();
    while start.elapsed() < dur {
        sent += tx.send_batch(frames)? as u64;
        while got < sent {
            let wait = Some(Duration::from_millis(200));
            let r = match rx.as_deref_mut() {
                Some(rx) => rx.recv(&mut buf, wait)?,
                None => tx.recv(&mut buf, wait)?,
            };
            match r {
                Some(_) => got += 1,
                None => break, // dropped (RX ring full); go on
            }
        }
    }
    Ok((sent, got, start.elapsed().as_secs_f64()))
}
