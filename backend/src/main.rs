//! `dpacc-backend`: the vhost-user daemon. Its command line is [`cli`]; the devices and the
//! vhost-user server are the `dpacc_backend` library.

use std::io;
use std::process::ExitCode;

use clap::Parser;
use cli::{Cli, CliError, Command};
use dpacc_backend::api::vnfs::{RegistryError, VnfRegistry};
use dpacc_backend::api::{ApiError, ApiServer, Target};
use dpacc_backend::crypto::CryptoServeError;
use dpacc_backend::net::NetServeError;
use dpacc_backend::net::UplinkSpec;
use dpacc_backend::vhost_user::{bind, BindError};
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
    Supervise(#[from] supervise::SuperviseError),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
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
            let args: Vec<_> = std::env::args_os().skip(1).collect();
            let children = a
                .to_vnfs()?
                .iter()
                .enumerate()
                .map(|(i, (_, cfg))| supervise::child_args(&args, i, cfg.mac))
                .collect();
            Ok(supervise::supervise(children, &shutdown)?)
        }
        Command::Net(a) => {
            let vnfs = a.named_vnfs()?;
            a.to_vnfs()?; // the same checks as before: no socket or TAP used twice
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
                let uplinks = v
                    .uplinks
                    .into_iter()
                    .map(|u| match u {
                        UplinkSpec::Vhost(p) => UplinkSpec::Vhost(absolute(&p)),
                        tap => tap,
                    })
                    .collect();
                if let Err(e) = registry.create_parsed(&name, &absolute(&v.socket), uplinks, None) {
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
