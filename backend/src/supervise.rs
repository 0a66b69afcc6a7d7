//! `dpacc-backend net --isolate`: the command line of the vNF processes
//! (`dpacc_backend::api::isolated::Supervisor` starts, restarts and stops them; ADR 0011,
//! ADR 0018).
//!
//! A vNF process gets the parent's arguments without what describes the vNFs, the daemon or
//! its API (`--isolate`, `--port`, `--socket`, `--uplink`, `--mac`, `--max-flows`,
//! `--api-socket` and the hidden `--start-policy`, `--error-file`), so `--queue-pairs`, the
//! other quotas and the rest apply to each process as they would in one; the supervisor adds
//! its one vNF (`--port name=...`), its flow quota and the MAC it would have had in a shared
//! process, so what a vNF sees does not depend on the mode.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Flags left out of a vNF process's command line, and whether each takes a value.
const OWN: [(&str, bool); 9] = [
    ("--isolate", false),
    ("--port", true),
    ("--socket", true),
    ("--uplink", true),
    ("--mac", true),
    ("--max-flows", true),
    ("--api-socket", true),
    ("--start-policy", true),
    ("--error-file", true),
];

/// The arguments (after the program name) every vNF process shares.
pub fn base_args(args: &[OsString]) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        let (flag, inline) = match s.split_once('=') {
            Some((f, _)) if f.starts_with("--") => (f, true),
            _ => (s.as_ref(), false),
        };
        match OWN.iter().find(|(f, _)| *f == flag) {
            Some((_, true)) if !inline => {
                it.next();
            }
            Some(_) => {}
            None => out.push(a.clone()),
        }
    }
    out
}

/// The private directory of the vNF processes' API sockets and policies: next to the API
/// socket, `PATH.d`.
pub fn private_dir(api: &Path) -> PathBuf {
    let mut p = api.as_os_str().to_os_string();
    p.push(".d");
    p.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vnf_process_keeps_the_shared_options_only() {
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
            "--api-socket",
            "/run/api.sock",
            "--queue-pairs",
            "2",
            "--max-sas=4",
            "--socket",
            "/c",
            "--uplink=tap:y",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        assert_eq!(
            base_args(&args),
            [
                "net",
                "--busy-poll-us",
                "0",
                "--queue-pairs",
                "2",
                "--max-sas=4"
            ]
            .map(OsString::from)
        );
        assert_eq!(
            private_dir(Path::new("/run/dpacc/api.sock")),
            Path::new("/run/dpacc/api.sock.d")
        );
    }
}
