//! The home thread's watch loop: ended processes reaped and restarted after their back-off.

use std::time::Instant;

use tracing::{error, info};
use vmm_sys_util::eventfd::EventFd;

use super::files::files;
use super::process::{State, FIRST_BACKOFF, MAX_BACKOFF, STABLE};
use super::supervisor::Supervisor;

impl Supervisor {
    /// Reaps ended processes and restarts those whose back-off is over.
    pub fn tick(&self) {
        let mut inner = self.lock();
        let now = Instant::now();
        let names: Vec<String> = inner.vnfs.keys().cloned().collect();
        for name in names {
            let Some(p) = inner.vnfs.get_mut(&name) else {
                continue;
            };
            if p.state == State::Starting {
                // A `PUT`'s vNF: its first process (the `PUT` watches it).
                if p.child.is_none() && p.spawn_failed.is_none() && p.restart_at.is_some() {
                    p.restart_at = None;
                    match self.spawn(&name, p, false) {
                        Ok(c) => {
                            info!("vNF {name}: process {} started", c.id());
                            p.child = Some(c);
                        }
                        Err(e) => p.spawn_failed = Some(e.to_string()),
                    }
                }
                continue;
            }
            if let Some(c) = p.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    let pid = c.id();
                    p.child = None;
                    p.backoff = if p.started.elapsed() >= STABLE {
                        FIRST_BACKOFF
                    } else {
                        (p.backoff * 2).min(MAX_BACKOFF)
                    };
                    error!(
                        "vNF {name}: process {pid} ended ({status}); restarting in {} ms \
                         (the other vNFs are not affected)",
                        p.backoff.as_millis()
                    );
                    p.state = State::Restarting;
                    p.restart_at = Some(now + p.backoff);
                }
            }
            if p.child.is_some() || p.restart_at.is_some_and(|t| now < t) {
                continue;
            }
            // A policy request in flight is answered (and recorded) first.
            let lock = p.policy.clone();
            let Ok(_g) = lock.try_lock() else {
                continue;
            };
            let with_policy = self
                .cfg
                .private
                .as_deref()
                .is_some_and(|d| files(d, p.id).policy.exists());
            match self.spawn(&name, p, with_policy) {
                Ok(c) => {
                    info!(
                        "vNF {name}: process {} started{}",
                        c.id(),
                        if with_policy {
                            " with its operator policy"
                        } else {
                            ""
                        }
                    );
                    p.child = Some(c);
                    p.started = Instant::now();
                    p.restart_at = None;
                    p.restarts += 1;
                    p.state = State::Running;
                }
                Err(e) => {
                    p.backoff = (p.backoff * 2).min(MAX_BACKOFF);
                    error!("vNF {name}: starting its process: {e}; trying again later");
                    p.restart_at = Some(now + p.backoff);
                }
            }
        }
    }

    /// Watches the processes until `shutdown` fires.
    pub fn run(&self, shutdown: &EventFd) {
        loop {
            self.tick();
            match wait_readable([shutdown, &self.wake], 100) {
                [true, _] => return,
                [false, true] => {
                    let _ = self.wake.read();
                }
                _ => {}
            }
        }
    }
}

/// Which of `fds` are readable after waiting at most `ms` for one.
fn wait_readable(fds: [&EventFd; 2], ms: i32) -> [bool; 2] {
    use std::os::fd::AsRawFd;
    let mut p = fds.map(|fd| libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    });
    // SAFETY: two live pollfds, the count passed.
    if unsafe { libc::poll(p.as_mut_ptr(), 2, ms) } <= 0 {
        return [false; 2];
    }
    p.map(|p| p.revents & libc::POLLIN != 0)
}
