//! `dpacc-backend`: the vhost-user daemon. Its command line is [`cli`]; the devices and the
//! vhost-user server are the `dpacc_backend` library.

use std::io;
use std::process::ExitCode;

use clap::Parser;
use cli::{Cli, CliError, Command};
use dpacc_backend::crypto::CryptoServeError;
use dpacc_backend::net::NetServeError;
use dpacc_backend::vhost_user::{bind, run_together, BindError, Job};
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
    // Block SIGINT/SIGTERM in every thread (workers inherit the mask) and take them
    // synchronously in one thread, which signals the shutdown eventfd.
    let set = block_signals()?;
    let notifier = shutdown.try_clone().map_err(MainError::EventFd)?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut sig = 0;
            // SAFETY: `set` is an initialized signal set and `sig` a live out-parameter.
            unsafe { libc::sigwait(&set, &mut sig) };
            info!("signal {sig} received, shutting down");
            let _ = notifier.write(1);
        })
        .map_err(MainError::SignalThread)?;

    match &cli.command {
        Command::Crypto(a) => {
            let config = a.to_config()?;
            let listener = bind(&a.socket)?;
            info!(
                "try it: echo -n 'attack at dawn' | dpacc crypto --socket {} --alg aes-128-gcm \
                 --key 000102030405060708090a0b0c0d0e0f --iv 000000000000000000000001 encrypt \
                 | od -An -tx1",
                a.socket.display()
            );
            let r = dpacc_backend::crypto::serve(&listener, config, &shutdown);
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
            let (mut listeners, mut sockets, mut cfgs) = (Vec::new(), Vec::new(), Vec::new());
            for (socket, cfg) in a.to_vnfs()? {
                listeners.push(bind(&socket)?);
                sockets.push(socket);
                cfgs.push(cfg);
            }
            if let Some(s) = sockets.first() {
                info!("try it: dpacc flow --socket {} info", s.display());
            }
            let shutdown = &shutdown;
            // One port failing (e.g. a TAP it cannot open) stops them all.
            let jobs: Vec<Job<'_, NetServeError>> = listeners
                .iter()
                .zip(cfgs)
                .map(|(l, cfg)| -> Job<'_, NetServeError> {
                    Box::new(move || dpacc_backend::net::serve(l, cfg, shutdown))
                })
                .collect();
            let r = run_together(jobs, shutdown);
            drop(listeners);
            for socket in &sockets {
                let _ = std::fs::remove_file(socket);
            }
            Ok(r?)
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
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(MainError::SignalMask);
        }
        Ok(set)
    }
}
