//! A vNF process: its record, its command line, how it is started (it dies with its
//! supervisor) and stopped, and the back-off of its restarts.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::warn;

use super::files::files;
use super::supervisor::Supervisor;
use crate::net::UplinkSpec;

/// A process that ran at least this long is restarted at once; one that died sooner waits
/// twice as long as the last time (up to [`MAX_BACKOFF`]).
pub(super) const STABLE: Duration = Duration::from_secs(10);
pub(super) const FIRST_BACKOFF: Duration = Duration::from_millis(500);
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long processes get to exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum State {
    /// Created, not yet serving (a `PUT` waits for it).
    Starting,
    /// Its process runs.
    Running,
    /// Its process ended; restarted at `restart_at`.
    Restarting,
}

pub(super) struct Proc {
    pub(super) id: u64,
    pub(super) socket: PathBuf,
    pub(super) uplinks: Vec<UplinkSpec>,
    pub(super) max_flows: u64,
    pub(super) mac: [u8; 6],
    pub(super) child: Option<Child>,
    pub(super) state: State,
    pub(super) started: Instant,
    pub(super) backoff: Duration,
    pub(super) restart_at: Option<Instant>,
    pub(super) restarts: u64,
    /// Held while a policy change is forwarded and recorded; a restart waits for it.
    pub(super) policy: Arc<Mutex<()>>,
    /// Why its first process could not be started (a `PUT` waiting for it reports it).
    pub(super) spawn_failed: Option<String>,
}

impl Proc {
    /// The private API socket of its process, if that runs and serves the vNF (`private`: the
    /// supervisor's private directory, None without an API).
    pub(super) fn serving_api(&self, private: Option<&Path>) -> Option<PathBuf> {
        match (private, self.state) {
            (Some(d), State::Running) if self.child.is_some() => Some(files(d, self.id).api),
            _ => None,
        }
    }
}

/// The `--port` value of a vNF: `name=NAME,socket=PATH,uplink=...`.
fn port_arg(name: &str, socket: &Path, uplinks: &[UplinkSpec]) -> OsString {
    let mut s = OsString::from(format!("name={name},socket="));
    s.push(socket.as_os_str());
    for u in uplinks {
        s.push(",uplink=");
        match u {
            UplinkSpec::Tap(t) => s.push(format!("tap:{t}")),
            UplinkSpec::Vhost(p) => {
                s.push("vhost:");
                s.push(p.as_os_str());
            }
        }
    }
    s
}

/// The command line of the process serving vNF `name`: the shared options, its one vNF,
/// its quota and MAC; with a private directory its API socket and error file, and the policy
/// to start with if one is recorded.
fn vnf_args(
    base: &[OsString],
    name: &str,
    p: &Proc,
    private: Option<&Path>,
    with_policy: bool,
) -> Vec<OsString> {
    let mut a = base.to_vec();
    a.push("--port".into());
    a.push(port_arg(name, &p.socket, &p.uplinks));
    a.push("--max-flows".into());
    a.push(p.max_flows.to_string().into());
    a.push("--mac".into());
    a.push(p.mac.map(|b| format!("{b:02x}")).join(":").into());
    if let Some(dir) = private {
        let f = files(dir, p.id);
        a.push("--api-socket".into());
        a.push(f.api.into());
        a.push("--error-file".into());
        a.push(f.error.into());
        if with_policy {
            a.push("--start-policy".into());
            a.push(f.policy.into());
        }
    }
    a
}

/// Sends SIGTERM, waits up to [`STOP_GRACE`], then kills.
pub(super) fn stop_child(c: &mut Child) {
    // SAFETY: signalling a child we started and have not reaped (its pid is still ours).
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    let t = Instant::now();
    while matches!(c.try_wait(), Ok(None)) && t.elapsed() < STOP_GRACE {
        std::thread::sleep(Duration::from_millis(20));
    }
    if matches!(c.try_wait(), Ok(None)) {
        warn!("process {} did not stop; killing it", c.id());
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Supervisor {
    pub(super) fn spawn(&self, name: &str, p: &Proc, with_policy: bool) -> std::io::Result<Child> {
        let mut c = Command::new(&self.cfg.exe);
        c.args(vnf_args(
            &self.cfg.base_args,
            name,
            p,
            self.cfg.private.as_deref(),
            with_policy,
        ));
        // SAFETY: getpid cannot fail.
        let parent = unsafe { libc::getpid() };
        // SAFETY: prctl and getppid are async-signal-safe and touch nothing of the parent's;
        // the child then stops with its supervisor even if the supervisor is killed outright
        // (and does not start if it already was, between the fork and the prctl).
        unsafe {
            c.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                if libc::getppid() != parent {
                    return Err(std::io::Error::other("the supervisor is gone"));
                }
                Ok(())
            })
        };
        c.spawn()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc_(id: u64, uplinks: Vec<UplinkSpec>) -> Proc {
        Proc {
            id,
            socket: "/run/dpacc/blue.sock".into(),
            uplinks,
            max_flows: 16,
            mac: [0x52, 0x54, 0, 0xdc, 0xac, 0x03],
            child: None,
            state: State::Running,
            started: Instant::now(),
            backoff: FIRST_BACKOFF,
            restart_at: None,
            restarts: 0,
            policy: Arc::default(),
            spawn_failed: None,
        }
    }

    #[test]
    fn a_vnf_process_gets_its_vnf_quota_mac_api_and_policy() {
        let base: Vec<OsString> = ["net", "--queue-pairs", "2"].map(OsString::from).to_vec();
        let p = proc_(
            7,
            vec![
                UplinkSpec::Tap("b0".into()),
                UplinkSpec::Vhost("/run/dpacc/b-up.sock".into()),
            ],
        );
        let a = vnf_args(&base, "blue", &p, None, false);
        assert_eq!(
            a,
            [
                "net",
                "--queue-pairs",
                "2",
                "--port",
                "name=blue,socket=/run/dpacc/blue.sock,uplink=tap:b0,uplink=vhost:/run/dpacc/b-up.sock",
                "--max-flows",
                "16",
                "--mac",
                "52:54:00:dc:ac:03"
            ]
            .map(OsString::from)
        );
        let dir = Path::new("/run/dpacc/api.sock.d");
        let a = vnf_args(&base, "blue", &p, Some(dir), true);
        assert_eq!(
            a[9..],
            [
                "--api-socket",
                "/run/dpacc/api.sock.d/7.sock",
                "--error-file",
                "/run/dpacc/api.sock.d/7.error",
                "--start-policy",
                "/run/dpacc/api.sock.d/7.policy.json"
            ]
            .map(OsString::from)
        );
        // No policy recorded: none given.
        assert_eq!(vnf_args(&base, "blue", &p, Some(dir), false).len(), 13);
    }
}
