//! Shared helpers for the end-to-end tests: a real `dpacc-backend` crypto daemon serving a real
//! unix socket from a thread of the test process, on the software driver.

#![allow(dead_code)]

pub mod api;
pub mod daemon;
pub mod guest;
pub mod netns;
pub mod raw_vhost;
pub mod vhost_net;

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use dpacc::backend::{serve, CryptoBackendConfig};
use dpacc::guest::{CompletionMode, CryptoDevice, Options};
use dpacc::sw::SwDriver;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// A backend daemon on a temporary socket; stopped (and the socket removed) on drop.
pub struct Backend {
    path: PathBuf,
    shutdown: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

impl Backend {
    /// Starts a backend with `queues` data queues and room for `max_sessions` sessions.
    pub fn start(name: &str, queues: u16, max_sessions: usize) -> Self {
        Self::start_with(name, queues, max_sessions, Arc::new(SwDriver::new()))
    }

    /// Starts a backend on `driver`.
    pub fn start_with(
        name: &str,
        queues: u16,
        max_sessions: usize,
        driver: Arc<dyn dpacc::spec::CryptoDriver>,
    ) -> Self {
        let path =
            std::env::temp_dir().join(format!("dpacc-e2e-{}-{name}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).expect("bind backend socket");
        let shutdown = Arc::new(EventFd::new(EFD_NONBLOCK).expect("eventfd"));
        let config = CryptoBackendConfig {
            queues,
            queue_size: 1024,
            max_sessions,
            driver,
            busy_poll: std::time::Duration::from_micros(50),
        };
        let stop = shutdown.clone();
        let thread = std::thread::spawn(move || {
            serve(&listener, config, &stop).expect("backend serve");
        });
        Self {
            path,
            shutdown,
            thread: Some(thread),
        }
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Connects a guest-library client.
    pub fn connect(&self, completion: CompletionMode) -> CryptoDevice {
        CryptoDevice::connect(
            &self.path,
            Options {
                completion,
                queue_size: 256,
                arena_size: 16 << 20,
                timeout: Duration::from_secs(10),
                ..Options::default()
            },
        )
        .expect("connect to backend")
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.shutdown.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Decodes hex (test vectors).
pub fn h(s: &str) -> Vec<u8> {
    hex::decode(s.replace([' ', '\n'], "")).expect("valid hex")
}
