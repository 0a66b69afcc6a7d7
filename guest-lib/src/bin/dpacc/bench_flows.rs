//! `dpacc bench flows`: connection setup through a `dpacc-backend net` port's exception path.
//! This command is the traffic generator on the port's two vhost-user uplinks and the vNF on
//! the port itself, in one thread (an event loop). The generator sends the first packet of a
//! new UDP 5-tuple on uplink 1 (keeping `--window` connections in setup); the backend misses
//! it and hands it to the vNF as a PACKET_IN; the vNF answers with two FLOW_ADDs (both
//! directions) and a PACKET_OUT of the packet to uplink 2, where the generator receives it.
//!
//! A connection is *set up* when both its FLOW_ADDs completed OK; its latency is from the
//! generator sending its first packet on uplink 1 to that packet (PACKET_OUT after both
//! FLOW_ADDs, which the backend runs in order) arriving on uplink 2. Printed as p50, p99,
//! p99.9 and the maximum: the benchmark is closed-loop (at most `--window` connections in
//! setup), so a stall of the backend delays only the window's connections and hides below
//! p99; it shows in p99.9 and the maximum.
//!
//! Modes, run one after the other in the same process against the same backend:
//! `blocking` (one request at a time: each FLOW_ADD waits for its OK), `pipelined-v1`
//! (requests in flight, one per frame) and `pipelined` (in flight and batched, protocol
//! version 2); each figure is printed with its same-run ratio to `blocking`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use dpacc_guest::net::{Event, FlowTable, FrameIo, NetOptions, Reply, VirtioNetPort};
use dpacc_spec::fastpath::flow::{Action, FlowSpec, Match, Prefix};
use dpacc_spec::fastpath::PortId;

use crate::{usage, CliError};

/// How the vNF programs the flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// One request at a time (the blocking `FlowTable` calls).
    Blocking,
    /// Many requests in flight, one per frame (protocol version 1).
    #[value(name = "pipelined-v1")]
    PipelinedV1,
    /// Many requests in flight, several per frame (BATCH, protocol version 2).
    Pipelined,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Blocking => "blocking",
            Mode::PipelinedV1 => "pipelined-v1",
            Mode::Pipelined => "pipelined",
        }
    }
}

/// Options of `dpacc bench flows`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// vhost-user socket of the vNF port (`dpacc-backend net --socket`).
    #[arg(long)]
    socket: PathBuf,
    /// The port's two vhost-user uplink sockets (`--uplink vhost:SOCKET`, ports 1 and 2):
    /// first packets go in on the first and come out of the second.
    #[arg(long = "uplink", value_name = "SOCKET", num_args = 1, required = true)]
    uplinks: Vec<PathBuf>,
    /// Modes to run (a list; the first figure of each is compared with `blocking`).
    #[arg(long, value_enum, value_delimiter = ',', num_args = 1.., default_value = "blocking,pipelined-v1,pipelined")]
    mode: Vec<Mode>,
    /// Connections in setup at once (first packets sent, not yet out of uplink 2).
    #[arg(long, default_value_t = 128)]
    window: usize,
    /// Seconds per mode (less if the flow quota is reached first: at most quota / 2
    /// connections per mode, their flows deleted after it).
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Longest control frame the vNF sends (64..2036 on virtio-user).
    #[arg(long, default_value_t = 2036)]
    max_frame: usize,
    /// Idle timeout of every flow installed, in seconds (0: none). What a firewall or NAT
    /// vNF does; the backend's expiry then has every flow to look after.
    #[arg(long, default_value_t = 0.0, value_name = "SECS")]
    idle_timeout: f64,
}

const COOKIE: u64 = 0xf10e_5e70_0000;
/// Connections whose send time is remembered (a power of two above any window).
const SLOTS: usize = 1 << 16;
const SIZE: usize = 64;

/// The first packet of connection `c`: UDP 10.a.b.c:sport -> 10.255.0.1:80 with `c` in its
/// payload.
fn first_packet(c: u32, f: &mut [u8; SIZE]) {
    f.fill(0);
    f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f[14] = 0x45;
    f[16..18].copy_from_slice(&((SIZE - 14) as u16).to_be_bytes());
    f[22] = 64;
    f[23] = 17;
    f[26..30].copy_from_slice(&[10, (c >> 16) as u8, (c >> 8) as u8, c as u8]);
    f[30..34].copy_from_slice(&[10, 255, 0, 1]);
    f[34..36].copy_from_slice(&(1024 + (c >> 24) as u16).to_be_bytes());
    f[36..38].copy_from_slice(&80u16.to_be_bytes());
    f[38..40].copy_from_slice(&((SIZE - 34) as u16).to_be_bytes());
    f[42..46].copy_from_slice(&c.to_be_bytes());
}

/// The two flows of the connection whose first packet is `f` (IPv4/UDP, parsed as sent).
fn flows(f: &[u8], cookie: u64, idle_timeout_ns: u64) -> Option<[FlowSpec; 2]> {
    if f.len() < 42 || f[12..14] != [8, 0] || f[23] != 17 {
        return None;
    }
    let ip = |o: usize| std::net::Ipv4Addr::new(f[o], f[o + 1], f[o + 2], f[o + 3]);
    let port = |o: usize| u16::from_be_bytes([f[o], f[o + 1]]);
    let (src, dst, sport, dport) = (ip(26), ip(30), port(34), port(36));
    let one = |in_port: u16, s, d, sp, dp, out: u16| FlowSpec {
        table: 0,
        priority: 100,
        cookie,
        m: Match {
            in_port: Some(in_port),
            eth_type: Some(0x0800),
            src: Some(Prefix {
                addr: std::net::IpAddr::V4(s),
                len: 32,
            }),
            dst: Some(Prefix {
                addr: std::net::IpAddr::V4(d),
                len: 32,
            }),
            proto: Some(17),
            sport: Some(sp),
            dport: Some(dp),
            ..Match::default()
        },
        actions: vec![Action::Output(PortId(out))],
        idle_timeout_ns,
        hard_timeout_ns: 0,
        notify_expiry: false,
    };
    Some([
        one(1, src, dst, sport, dport, 2),
        one(2, dst, src, dport, sport, 1),
    ])
}

/// What one mode measured.
struct Figures {
    /// Connections set up (both flows OK).
    set_up: u64,
    /// First packets out of uplink 2.
    delivered: u64,
    /// Connections given up (no packet out of uplink 2 within a second).
    lost: u64,
    /// FLOW_ADDs refused.
    refused: u64,
    secs: f64,
    /// First-packet latencies, ns.
    lat: Vec<u64>,
}

/// Runs the benchmark and prints the figures.
pub fn run(a: Args) -> Result<(), CliError> {
    if a.uplinks.len() != 2 {
        return Err(usage("give --uplink twice (the port's uplinks 1 and 2)"));
    }
    if a.window == 0 || a.window > 4096 || !(64..=2036).contains(&a.max_frame) {
        return Err(usage("--window must be 1..4096 and --max-frame 64..2036"));
    }
    if !(0.0..=1e9).contains(&a.idle_timeout) {
        return Err(usage("--idle-timeout must be 0..1e9 seconds"));
    }
    let idle_timeout_ns = (a.idle_timeout * 1e9) as u64;
    let opts = NetOptions {
        queue_size: 1024,
        ..NetOptions::default()
    };
    let port = VirtioNetPort::connect(&a.socket, opts).map_err(|source| CliError::Connect {
        device: a.socket.display().to_string(),
        source,
    })?;
    let mac = port.mac();
    let mut ft = FlowTable::new(port, mac);
    ft.set_max_frame(a.max_frame);
    ft.set_max_in_flight(4 * a.window + 64);
    let (_, max_flows) = ft.hello()?;
    let mut tx = VirtioNetPort::connect(&a.uplinks[0], opts)?;
    let mut rx = VirtioNetPort::connect(&a.uplinks[1], opts)?;
    let dur = Duration::from_secs_f64(a.seconds.max(0.1));
    println!(
        "flows     connection setup: first packet of a new UDP 5-tuple on uplink 1 -> PACKET_IN -> 2 FLOW_ADDs + PACKET_OUT to uplink 2; window {}, {:.1} s per mode, flow quota {max_flows}, idle timeout {}",
        a.window,
        dur.as_secs_f64(),
        if idle_timeout_ns == 0 { "none".to_string() } else { format!("{} s", a.idle_timeout) }
    );
    println!(
        "          latency = first packet sent on uplink 1 -> the same packet (PACKET_OUT after both FLOW_ADDs) received on uplink 2"
    );
    let mut next_conn = 0u32;
    let mut base: Option<f64> = None;
    for (i, &mode) in a.mode.iter().enumerate() {
        let cookie = COOKIE + i as u64;
        let _ = ft.delete_flows(cookie);
        ft.set_max_version(if mode == Mode::Pipelined { 2 } else { 1 });
        ft.hello()?;
        // Two flows per connection: stay inside the quota (`dpacc-backend net --max-flows`).
        let limit = (u64::from(max_flows) / 2)
            .saturating_sub(a.window as u64 + 1)
            .max(1);
        let f = drive(
            &mut ft,
            &mut tx,
            &mut rx,
            mode,
            a.window,
            (dur, limit),
            (cookie, idle_timeout_ns),
            &mut next_conn,
        )?;
        // Leave the instance as it was: one FLOW_DELETE for every flow of the run.
        ft.set_max_version(2);
        let _ = ft.delete_flows(cookie);
        let rate = f.set_up as f64 / f.secs;
        let ratio = match (mode, base) {
            (Mode::Blocking, _) => {
                base = Some(rate);
                String::new()
            }
            (_, Some(b)) if b > 0.0 => format!(", {:.2}x blocking", rate / b),
            _ => String::new(),
        };
        if f.set_up == 0 && f.delivered == 0 {
            eprintln!(
                "dpacc: no first packet reached the vNF: does a flow of the instance match them (uplink 1, UDP to 10.255.0.1:80)? `dpacc flow list`"
            );
        }
        let mut lat = f.lat;
        lat.sort_unstable();
        let pct = |p: f64| {
            lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
                .map_or(0.0, |&n| n as f64 / 1e3)
        };
        println!(
            "{:<13} {:>9.0} new connections/s{ratio} ({} set up, {} first packets delivered, {} lost, {} FLOW_ADDs refused in {:.2} s); latency p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us, max {:.1} us",
            mode.name(),
            rate,
            f.set_up,
            f.delivered,
            f.lost,
            f.refused,
            f.secs,
            pct(0.50),
            pct(0.99),
            pct(0.999),
            lat.last().map_or(0.0, |&n| n as f64 / 1e3),
        );
    }
    Ok(())
}

/// One mode: generator, vNF and receiver in one loop.
#[allow(clippy::too_many_arguments)]
fn drive(
    ft: &mut FlowTable<VirtioNetPort>,
    tx: &mut VirtioNetPort,
    rx: &mut VirtioNetPort,
    mode: Mode,
    window: usize,
    (dur, limit): (Duration, u64),
    (cookie, idle_timeout_ns): (u64, u64),
    next_conn: &mut u32,
) -> Result<Figures, CliError> {
    let mut generated = 0u64;
    let mut sent_at = vec![None::<Instant>; SLOTS];
    let mut f = Figures {
        set_up: 0,
        delivered: 0,
        lost: 0,
        refused: 0,
        secs: 0.0,
        lat: Vec::with_capacity(1 << 20),
    };
    let mut in_setup = 0usize;
    let mut flows_ok = 0u64;
    let mut comps = Vec::new();
    let mut frames = [[0u8; SIZE]; 32];
    let mut buf = vec![0u8; 2048];
    let start = Instant::now();
    let mut progress = Instant::now();
    let mut sending = true;
    loop {
        let now = Instant::now();
        if sending && (now.duration_since(start) >= dur || generated >= limit) {
            sending = false;
        }
        if !sending
            && (in_setup == 0 && ft.in_flight() == 0
                || now.duration_since(progress) > Duration::from_secs(1))
        {
            f.lost += in_setup as u64;
            break;
        }
        // Generator: new connections up to the window, a batch per kick.
        if sending && in_setup < window {
            let n = (window - in_setup)
                .min(frames.len())
                .min((limit - generated) as usize);
            for fr in frames.iter_mut().take(n) {
                first_packet(*next_conn, fr);
                sent_at[*next_conn as usize % SLOTS] = Some(now);
                *next_conn = next_conn.wrapping_add(1);
            }
            let refs: Vec<&[u8]> = frames[..n].iter().map(|x| &x[..]).collect();
            let sent = tx.send_batch(&refs)?;
            in_setup += sent;
            generated += n as u64;
            // Unsent ones are forgotten: the next ids go on.
        }
        // vNF: each first packet gets its two flows and goes out of uplink 2.
        while let Some(ev) = ft.next_event(Duration::ZERO)? {
            let Event::PacketIn { frame, .. } = ev else {
                continue;
            };
            let Some([fwd, rev]) = flows(&frame, cookie, idle_timeout_ns) else {
                continue;
            };
            match mode {
                Mode::Blocking => {
                    let a = ft.add_flow(fwd);
                    let b = ft.add_flow(rev);
                    match (a, b) {
                        (Ok(()), Ok(())) => f.set_up += 1,
                        _ => f.refused += 1,
                    }
                    ft.packet_out(PortId(2), false, &frame)?;
                }
                Mode::Pipelined | Mode::PipelinedV1 => {
                    ft.submit_add_flow(fwd)?;
                    ft.submit_add_flow(rev)?;
                    ft.submit_packet_out(PortId(2), false, &frame)?;
                }
            }
        }
        if mode != Mode::Blocking {
            comps.clear();
            ft.poll_completions(&mut comps)?;
            for c in &comps {
                match c.result {
                    Ok(Reply::Ok) => {
                        flows_ok += 1;
                        if flows_ok % 2 == 0 {
                            f.set_up += 1;
                        }
                    }
                    _ => f.refused += 1,
                }
            }
        }
        // Receiver: first packets out of uplink 2.
        while let Some(n) = rx.recv(&mut buf, Some(Duration::ZERO))? {
            if n < 46 {
                continue;
            }
            let c = u32::from_be_bytes([buf[42], buf[43], buf[44], buf[45]]);
            if let Some(t) = sent_at[c as usize % SLOTS].take() {
                f.lat.push(t.elapsed().as_nanos() as u64);
                f.delivered += 1;
                in_setup = in_setup.saturating_sub(1);
                progress = Instant::now();
            }
        }
        if sending && now.duration_since(progress) > Duration::from_secs(1) {
            // Nothing came out for a second: count what is in setup as lost and go on.
            f.lost += in_setup as u64;
            in_setup = 0;
            progress = now;
        }
    }
    f.secs = start.elapsed().as_secs_f64().max(1e-9);
    Ok(f)
}
