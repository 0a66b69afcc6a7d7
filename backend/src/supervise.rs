//! `dpacc-backend net --isolate`: one child process per vNF port, each this same binary
//! serving that one port, restarted when it dies; the parent only watches (ADR 0011).
//!
//! A child gets the parent's arguments with `--isolate` and every other `--port` removed (so
//! `--queue-pairs`, the quotas and the rest apply to each child as they would in one process), and
//! the MAC its port would have had in a shared process (`--mac` + its index), so what a vNF
//! sees does not depend on the mode.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use tracing::{error, info, warn};
use vmm_sys_util::eventfd::EventFd;

/// A child that ran at least this long is restarted at once; one that died sooner waits
/// twice as long as the last time (up to [`MAX_BACKOFF`]).
const STABLE: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long children get to exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Why supervising failed.
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    /// The binary or a child could not be started.
    #[error("starting a vNF port process: {0}")]
    Spawn(std::io::Error),
}

/// The command line of the child serving port `index` (of `ports`, in order) with `mac`.
pub fn child_args(args: &[OsString], index: usize, mac: [u8; 6]) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut port = 0;
    let mut it = args.iter().peekable();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--isolate" {
            continue;
        }
        let (flag, inline) = match s.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (s.to_string(), None),
        };
        if flag == "--port" || flag == "--mac" {
            let value = match inline {
                Some(v) => OsString::from(v),
                None => it.next().cloned().unwrap_or_default(),
            };
            if flag == "--port" {
                if port == index {
                    out.push("--port".into());
                    out.push(value);
                }
                port += 1;
            }
            continue;
        }
        out.push(a.clone());
    }
    let mac = mac.map(|b| format!("{b:02x}")).join(":");
    out.push("--mac".into());
    out.push(mac.into());
    out
}

struct Port {
    args: Vec<OsString>,
    child: Option<Child>,
    started: Instant,
    backoff: Duration,
    restart_at: Option<Instant>,
}

/// Runs one child per entry of `ports` (their argument lists) until `shutdown` fires.
pub fn supervise(ports: Vec<Vec<OsString>>, shutdown: &EventFd) -> Result<(), SuperviseError> {
    let exe = std::env::current_exe().map_err(SuperviseError::Spawn)?;
    let spawn = |args: &[OsString]| {
        let mut c = Command::new(&exe);
        c.args(args);
        // SAFETY: prctl is async-signal-safe and touches nothing of the parent's; the child
        // then stops with its supervisor even if the supervisor is killed outright.
        unsafe {
            c.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            })
        };
        c.spawn()
    };
    let mut ports: Vec<Port> = ports
        .into_iter()
        .map(|args| Port {
            args,
            child: None,
            started: Instant::now(),
            backoff: FIRST_BACKOFF,
            restart_at: Some(Instant::now()),
        })
        .collect();
    loop {
        for (i, p) in ports.iter_mut().enumerate() {
            if p.restart_at.is_some_and(|t| Instant::now() >= t) {
                let c = spawn(&p.args).map_err(SuperviseError::Spawn)?;
                info!("vNF port {i}: process {} started", c.id());
                p.child = Some(c);
                p.started = Instant::now();
                p.restart_at = None;
            }
            let Some(c) = p.child.as_mut() else {
                continue;
            };
            let Ok(Some(status)) = c.try_wait() else {
                continue;
            };
            let pid = c.id();
            p.child = None;
            if p.started.elapsed() >= STABLE {
                p.backoff = FIRST_BACKOFF;
            } else {
                p.backoff = (p.backoff * 2).min(MAX_BACKOFF);
            }
            error!(
                "vNF port {i}: process {pid} ended ({status}); restarting in {} ms \
                 (the other ports are not affected)",
                p.backoff.as_millis()
            );
            p.restart_at = Some(Instant::now() + p.backoff);
        }
        if wait_readable(shutdown, 100) {
            break;
        }
    }
    info!("stopping {} vNF port process(es)", ports.len());
    for c in ports.iter_mut().filter_map(|p| p.child.as_mut()) {
        // SAFETY: signalling a child we started (and have not reaped).
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    }
    let t = Instant::now();
    for c in ports.iter_mut().filter_map(|p| p.child.as_mut()) {
        while matches!(c.try_wait(), Ok(None)) && t.elapsed() < STOP_GRACE {
            std::thread::sleep(Duration::from_millis(20));
        }
        if matches!(c.try_wait(), Ok(None)) {
            warn!("process {} did not stop; killing it", c.id());
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    Ok(())
}

fn wait_readable(fd: &EventFd, ms: i32) -> bool {
    use std::os::fd::AsRawFd;
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one live pollfd.
    unsafe { libc::poll(&mut p, 1, ms) == 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_keeps_its_own_port_and_options() {
        let args: Vec<OsString> = [
            "net",
            "--isolate",
            "--max-flows",
            "8",
            "--port",
            "socket=/a,uplink=tap:x",
            "--port=socket=/b",
            "--mac=02:00:00:00:00:10",
            "--busy-poll-us",
            "0",
            "--queue-pairs",
            "2",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let c = child_args(&args, 1, [2, 0, 0, 0, 0, 0x11]);
        assert_eq!(
            c,
            [
                "net",
                "--max-flows",
                "8",
                "--port",
                "socket=/b",
                "--busy-poll-us",
                "0",
                "--queue-pairs",
                "2",
                "--mac",
                "02:00:00:00:00:11"
            ]
            .map(OsString::from)
        );
    }
}
