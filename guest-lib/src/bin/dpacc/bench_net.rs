//! `dpacc bench-net`: frames per second through a `dpacc-backend net` port's data path (TX
//! ring → flow processor, flow hit → RX ring): the vNF installs a hairpin flow (in_port 0 →
//! output 0), sends batches of frames and counts them coming back.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use dpacc_guest::net::{FlowTable, FrameIo, NetOptions, VirtioNetPort};
use dpacc_spec::fastpath::flow::{Action, FlowSpec, Match};
use dpacc_spec::fastpath::PortId;

use crate::{usage, Fail};

/// Runs the benchmark and prints the figures.
pub fn run(socket: PathBuf, size: usize, batch: usize, seconds: f64) -> Result<(), Fail> {
    if !(60..=1514).contains(&size) || batch == 0 || batch > 128 {
        return Err(usage("--size must be 60..1514 and --batch 1..128"));
    }
    let port = VirtioNetPort::connect(&socket, NetOptions::default())?;
    let mac = port.mac();
    let mut ft = FlowTable::new(port, mac);
    let cookie = 0xbe7c;
    ft.add_flow(FlowSpec {
        table: 0,
        priority: 65535,
        cookie,
        m: Match {
            in_port: Some(0),
            eth_type: Some(0x0800),
            ..Match::default()
        },
        actions: vec![Action::Output(PortId(0))],
        idle_timeout_ns: 0,
        hard_timeout_ns: 0,
        notify_expiry: false,
    })?;
    let mut frame = vec![0u8; size];
    frame[0..6].copy_from_slice(&mac);
    frame[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    frame[14] = 0x45;
    frame[23] = 17;
    let frames: Vec<&[u8]> = (0..batch).map(|_| &frame[..]).collect();
    let mut buf = vec![0u8; 2048];
    let io = ft.io();
    let (mut sent, mut got) = (0u64, 0u64);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds.max(0.1));
    while Instant::now() < end {
        sent += io.send_batch(&frames)? as u64;
        while got < sent {
            match io.recv(&mut buf, Some(Duration::from_millis(200)))? {
                Some(_) => got += 1,
                None => break, // dropped (RX ring full); go on
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let stats = ft.stats(cookie)?;
    println!(
        "net       {got} of {sent} frames of {size} B back in {secs:.2} s: {:.3} Mpps, {:.1} Mbit/s (flow hits {})",
        got as f64 / secs / 1e6,
        got as f64 * size as f64 * 8.0 / secs / 1e6,
        stats.packets
    );
    Ok(())
}
