//! `dpacc-backend`: the vhost-user daemon. Its command line is [`cli`]; the devices and the
//! vhost-user server are the `dpacc_backend` library.

use std::io;
use std::process::ExitCode;

use clap::Parser;
use cli::{Cli, CliError, Command};
use dpacc_backend::api::isolated::{IsolatedError, Supervisor, SupervisorConfig};
use dpacc_backend::api::json::PolicyJson;
use dpacc_backend::api::routes::status_of;
use dpacc_backend::api::vnfs::{live_socket, RegistryError, VnfRegistry};
use dpacc_backend::api::{ApiError, ApiServer, Target};
use dpacc_backend::crypto::CryptoServeError;
use dpacc_backend::net::NetServeError;
use dpacc_backend::net::UplinkSpec;
use dpacc_backend::vhost_user::{bind, BindError};
use dpacc_spec::fastpath::policy::Policy;
use std::os::fd::AsRawFd;
use std::sync::{Arc, OnceLock};
use tracing::{error, info};
use tracing_subscriber::EnvFilter;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

mod cli;
mod supervise;

/// Why the daemon stopped with a failure.
#[derive(Debug, thiserror::Error)]
enum MainError {
    #[error("eventfd: {0}")]
    EventFd(io::Error),
    #[error("pthread_sigmask failed")]
    SignalMask,
    #[error("starting the signal thread: {0}")]
    SignalThread(io::Error),
    #[error(transparent)]
    Cli(#[from] CliError),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error(transparent)]
    Crypto(#[from] CryptoServeError),
    #[error(transparent)]
    Net(#[from] NetServeError),
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("vNF {0}: {1}")]
    Vnf(String, RegistryError),
    #[error(transparent)]
    Supervise(#[from] IsolatedError),
    #[error("vNF {0}: {1}")]
    Isolated(String, IsolatedError),
    #[error("locating this binary: {0}")]
    Exe(io::Error),
    #[error("--start-policy {0}: {1}")]
    StartPolicy(String, String),
}

impl MainError {
    /// The HTTP status the API would give this failure (`--error-file`).
    fn status(&self) -> u16 {
        match self {
            Self::Vnf(_, e) => status_of(e),
            Self::Isolated(_, e) => e.status(),
            _ => 500,
        }
    }

    /// The message the API would give (without the vNF's name, as the API's errors).
    fn api_message(&self) -> String {
        match self {
            Self::Vnf(_, e) => e.to_string(),
            Self::Isolated(_, e) => e.to_string(),
            e => e.to_string(),
        }
    }
}

/// Reads an operator policy (the JSON of `PUT /vnfs/{name}/policy`), checked as the API
/// checks it.
fn read_policy(p: &std::path::Path) -> Result<Policy, MainError> {
    let bad = |e: String| MainError::StartPolicy(p.display().to_string(), e);
    let data = std::fs::read(p).map_err(|e| bad(e.to_string()))?;
    let j: PolicyJson = serde_json::from_slice(&data).map_err(|e| bad(e.to_string()))?;
    let pol = j.to_policy().map_err(|e| bad(e.to_string()))?;
    pol.validate().map_err(|e| bad(e.to_string()))?;
    Ok(pol)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let error_file = match &cli.command {
        Command::Net(a) => a.error_file.clone(),
        Command::Crypto(_) => None,
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            if let Some(f) = error_file {
                let _ = std::fs::write(f, format!("{}\n{}\n", e.status(), e.api_message()));
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), MainError> {
    raise_fd_limit();
    let shutdown = EventFd::new(EFD_NONBLOCK).map_err(MainError::EventFd)?;
    // Block SIGINT/SIGTERM/SIGHUP in every thread (workers inherit the mask) and take them
    // synchronously in one thread: SIGINT/SIGTERM signal the shutdown eventfd, SIGHUP is
    // logged and ignored (nothing to reload: the configuration is the command line and the
    // management API).
    let set = block_signals()?;
    let notifier = shutdown.try_clone().map_err(MainError::EventFd)?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let mut sig = 0;
            // SAFETY: `set` is an initialized signal set and `sig` a live out-parameter.
            unsafe { libc::sigwait(&set, &mut sig) };
            if sig == libc::SIGHUP {
                info!("SIGHUP received: nothing to reload (use the management API); going on");
                continue;
            }
            info!("signal {sig} received, shutting down");
            let _ = notifier.write(1);
            return;
        })
        .map_err(MainError::SignalThread)?;

    match &cli.command {
        Command::Crypto(a) => {
            let config = a.to_config()?;
            let listener = bind(&a.socket)?;
            let view = Arc::new(OnceLock::new());
            let api = match &a.api_socket {
                Some(p) => Some(ApiServer::start(p, Target::Crypto(view.clone()))?),
                None => None,
            };
            info!(
                "try it: echo -n 'attack at dawn' | dpacc crypto --socket {} --alg aes-128-gcm \
                 --key 000102030405060708090a0b0c0d0e0f --iv 000000000000000000000001 encrypt \
                 | od -An -tx1",
                a.socket.display()
            );
            let r = dpacc_backend::crypto::serve_observed(&listener, config, &shutdown, |v| {
                let _ = view.set(v);
                notify_ready();
            });
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
            drop(api);
            drop(listener);
            let _ = std::fs::remove_file(&a.socket);
            Ok(r?)
        }
        Command::Net(a) if a.isolate => {
            let vnfs = a.named_vnfs()?;
            a.to_vnfs()?; // the same checks as before: no socket or TAP used twice
            let args: Vec<_> = std::env::args_os().skip(1).collect();
            let api_path = a.api_socket.as_deref().map(absolute);
            // Before the private directory next to it is replaced: a live API socket is
            // another daemon's, and so is that directory.
            if let Some(p) = api_path.as_deref().filter(|p| live_socket(p)) {
                return Err(ApiError::Live(p.to_path_buf()).into());
            }
            let sup = Arc::new(Supervisor::new(SupervisorConfig {
                exe: std::env::current_exe().map_err(MainError::Exe)?,
                base_args: supervise::base_args(&args),
                default_max_flows: a.max_flows,
                mac: a.mac,
                queue_pairs: a.queue_pairs,
                private: api_path.as_deref().map(supervise::private_dir),
                reserved: api_path.iter().cloned().collect(),
            })?);
            // The command line's vNFs first: once the API answers, they are served.
            for (name, v) in vnfs {
                let uplinks = absolute_uplinks(v.uplinks);
                if let Err(e) = sup.create_parsed(&name, &absolute(&v.socket), uplinks, None) {
                    sup.stop_all();
                    return Err(MainError::Isolated(name, e));
                }
            }
            let api = match &api_path {
                Some(p) => match ApiServer::start(p, Target::Isolated(sup.clone())) {
                    Ok(a) => Some(a),
                    Err(e) => {
                        sup.stop_all();
                        return Err(e.into());
                    }
                },
                None => None,
            };
            notify_ready();
            sup.run(&shutdown);
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
            drop(api);
            sup.stop_all();
            Ok(())
        }
        Command::Net(a) => {
            let vnfs = a.named_vnfs()?;
            // The same checks as before: no socket or TAP used twice.
            a.to_vnfs()?;
            // Read before the API answers (ADR 0018: a supervisor that gets an answer knows
            // this process has read the policy it was started with).
            let policy = match &a.start_policy {
                Some(p) => Some(read_policy(p)?),
                None => None,
            };
            let registry = Arc::new(VnfRegistry::new(a.template()));
            let api = match &a.api_socket {
                Some(p) => {
                    let p = absolute(p);
                    registry.reserve(&p);
                    Some(ApiServer::start(&p, Target::Net(registry.clone()))?)
                }
                None => None,
            };
            for (name, v) in vnfs {
                let uplinks = absolute_uplinks(v.uplinks);
                if let Err(e) = registry.create_parsed(
                    &name,
                    &absolute(&v.socket),
                    uplinks,
                    None,
                    policy.clone(),
                ) {
                    // One vNF failing to start (e.g. a TAP it cannot open) stops them all.
                    registry.stop_all();
                    return Err(MainError::Vnf(name, e));
                }
            }
            if let Some(s) = registry.list().first() {
                info!("try it: dpacc flow --socket {} info", s.info.socket);
            }
            notify_ready();
            wait_readable(&shutdown);
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
            drop(api);
            registry.stop_all();
            Ok(())
        }
    }
}

/// Tells systemd (Type=notify) the sockets are up; nothing without NOTIFY_SOCKET.
fn notify_ready() {
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!("sd_notify READY: {e}");
    }
}

/// `p` made absolute against the working directory (as it was given if that fails).
fn absolute(p: &std::path::Path) -> std::path::PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// A vNF's uplinks with their vhost-user socket paths made absolute.
fn absolute_uplinks(uplinks: Vec<UplinkSpec>) -> Vec<UplinkSpec> {
    uplinks
        .into_iter()
        .map(|u| match u {
            UplinkSpec::Vhost(p) => UplinkSpec::Vhost(absolute(&p)),
            tap => tap,
        })
        .collect()
}

/// Blocks until `fd` is readable.
fn wait_readable(fd: &EventFd) {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: one live pollfd, the length passed.
        let r = unsafe { libc::poll(&mut p, 1, -1) };
        if r > 0 || (r < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted) {
            return;
        }
    }
}

/// Raises the soft limit on open descriptors to the hard one: every frontend holds a few
/// (memory regions, ring eventfds), and running out would refuse connections of every tenant.
fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit with an initialised struct.
    unsafe {
        let mut l: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

fn block_signals() -> Result<libc::sigset_t, MainError> {
    // SAFETY: sigemptyset/sigaddset initialize the set; pthread_sigmask only changes this
    // thread's mask (inherited by threads spawned afterwards).
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(MainError::SignalMask);
        }
        Ok(set)
    }
}
