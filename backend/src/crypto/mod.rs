//! The virtio-crypto device (virtio device ID 20) served over vhost-user.
//!
//! Queue layout: data queues `0..N`, control queue `N` (`num_queues = N + 1`). QEMU's
//! `cryptodev-vhost-user` sets up only the data queues and sends CREATE/CLOSE_CRYPTO_SESSION
//! (26/27) instead of using the control queue; a virtio-user frontend sets up both. Data queues
//! also take control requests in-band (`dpacc_spec::in_band`), for drivers behind QEMU.

pub(crate) mod control;
pub mod counters;
pub(crate) mod data;
pub(crate) mod sessions;
#[cfg(test)]
mod test_driver;
pub(crate) mod worker;

use std::os::unix::net::UnixListener;
use std::sync::Arc;

use dpacc_spec::vhost_user_crypto::{
    QemuCryptoSession, VHOST_USER_CLOSE_CRYPTO_SESSION, VHOST_USER_CREATE_CRYPTO_SESSION,
};
use dpacc_spec::CryptoDriver;
use tracing::{debug, info};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use virtio_queue::Queue;
use vm_memory::ByteValued;
use vmm_sys_util::eventfd::EventFd;
use zeroize::Zeroize;

use crate::guest_log::guest_warn;
use crate::vhost_user::{self, DeviceError, DeviceReply, QueueStart, VhostUserDevice};
use control::{Control, ControlPath};
use data::DataPath;
use sessions::SessionTable;
use worker::QueueWorker;

/// Largest ring size accepted.
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// How the crypto device is set up.
#[derive(Clone)]
pub struct CryptoBackendConfig {
    /// Number of data queues (N); the control queue is index N.
    pub queues: u16,
    /// Largest ring size a frontend may configure (power of two, at most 32768).
    pub queue_size: u16,
    /// Most sessions open at once.
    pub max_sessions: usize,
    /// The accelerator driver.
    pub driver: Arc<dyn CryptoDriver>,
    /// How long a data-queue worker keeps polling its ring after it runs dry before it sleeps
    /// until a kick (zero: sleep at once). Bounded by [`MAX_BUSY_POLL`].
    pub busy_poll: std::time::Duration,
}

/// Longest accepted [`CryptoBackendConfig::busy_poll`].
pub const MAX_BUSY_POLL: std::time::Duration = std::time::Duration::from_secs(1);

impl std::fmt::Debug for CryptoBackendConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CryptoBackendConfig")
            .field("queues", &self.queues)
            .field("queue_size", &self.queue_size)
            .field("max_sessions", &self.max_sessions)
            .field("driver", &self.driver.name())
            .field("busy_poll", &self.busy_poll)
            .finish()
    }
}

/// Errors of [`serve`].
#[derive(Debug, thiserror::Error)]
pub enum CryptoServeError {
    /// The configuration is not usable.
    #[error("invalid configuration: {0}")]
    Config(&'static str),
    /// The server failed.
    #[error(transparent)]
    Serve(#[from] vhost_user::ServeError),
}

/// Opens the accelerator driver `spec` names for the device; every driver but the software
/// one falls back to the software driver per algorithm.
pub fn open_driver(
    spec: &dpacc_hw::DriverSpec,
) -> Result<Arc<dyn CryptoDriver>, dpacc_hw::SelectError> {
    dpacc_hw::open_driver(spec, Arc::new(dpacc_sw::SwDriver::new()))
}

/// Serves the crypto device on `listener` (one frontend at a time) until `shutdown` is
/// signalled. Workers are stopped before returning.
pub fn serve(
    listener: &UnixListener,
    config: CryptoBackendConfig,
    shutdown: &EventFd,
) -> Result<(), CryptoServeError> {
    serve_observed(listener, config, shutdown, |_| {})
}

/// [`serve`], handing `started` a [`CryptoView`] of the device (its counters) before any
/// frontend is served.
pub fn serve_observed(
    listener: &UnixListener,
    config: CryptoBackendConfig,
    shutdown: &EventFd,
    started: impl FnOnce(CryptoView),
) -> Result<(), CryptoServeError> {
    let mut dev = CryptoDevice::new(config)?;
    started(CryptoView {
        sessions: dev.sessions.clone(),
        counters: dev.counters.clone(),
        driver: dev.cfg.driver.name().to_string(),
    });
    info!(
        "serving virtio-crypto: {} data queue(s), driver {}",
        dev.cfg.queues,
        dev.cfg.driver.name()
    );
    let r = vhost_user::serve(listener, &mut dev, shutdown);
    dev.stop_all();
    r.map_err(Into::into)
}

/// The host operator's view of a crypto device: its counters.
#[derive(Clone)]
pub struct CryptoView {
    sessions: Arc<SessionTable>,
    counters: Arc<counters::CryptoCounters>,
    driver: String,
}

impl CryptoView {
    /// Per data queue.
    pub fn queues(&self) -> Vec<counters::OpCount> {
        self.counters.queues()
    }

    /// The session table's.
    pub fn sessions(&self) -> counters::SessionCount {
        self.sessions.counts()
    }

    /// The open sessions with their counters (the first `limit` listed, all counted).
    pub fn open_sessions(&self, limit: usize) -> counters::SessionList {
        self.sessions.list(limit)
    }

    /// The driver's name (`sw`, `afalg+sw`, ...).
    pub fn driver(&self) -> &str {
        &self.driver
    }
}

/// The crypto device model.
pub(crate) struct CryptoDevice {
    counters: Arc<counters::CryptoCounters>,
    cfg: CryptoBackendConfig,
    /// The config space (also what in-band `GET_CONFIG` returns).
    config: dpacc_spec::virtio_crypto::Config,
    pub(crate) sessions: Arc<SessionTable>,
    workers: Vec<Option<QueueWorker>>,
}

impl CryptoDevice {
    /// A device with no frontend yet.
    pub(crate) fn new(cfg: CryptoBackendConfig) -> Result<Self, CryptoServeError> {
        if cfg.queues == 0 || cfg.queues >= 0x7fff {
            return Err(CryptoServeError::Config("queues must be 1..32766"));
        }
        if !cfg.queue_size.is_power_of_two() || cfg.queue_size > MAX_QUEUE_SIZE {
            return Err(CryptoServeError::Config(
                "queue size must be a power of two up to 32768",
            ));
        }
        if cfg.busy_poll > MAX_BUSY_POLL {
            return Err(CryptoServeError::Config("busy poll longer than a second"));
        }
        let config = cfg.driver.capabilities().to_config(u32::from(cfg.queues));
        Ok(Self {
            config,
            sessions: Arc::new(SessionTable::new(cfg.max_sessions)),
            counters: Arc::new(counters::CryptoCounters::new(usize::from(cfg.queues))),
            workers: (0..=cfg.queues).map(|_| None).collect(),
            cfg,
        })
    }

    pub(crate) fn stop_all(&mut self) {
        for w in &mut self.workers {
            if let Some(w) = w.take() {
                w.stop();
            }
        }
    }

    fn control(&self) -> Control {
        Control::new(self.cfg.driver.clone(), self.sessions.clone(), self.config)
    }

    pub(crate) fn create_qemu_session(&self, payload: &[u8], reply: &mut Vec<u8>) {
        let mut s = QemuCryptoSession::default();
        let n = payload.len().min(std::mem::size_of::<QemuCryptoSession>());
        s.as_mut_slice()[..n].copy_from_slice(&payload[..n]);
        let id = if payload.len() != std::mem::size_of::<QemuCryptoSession>() {
            guest_warn!("CREATE_CRYPTO_SESSION: payload of {} bytes", payload.len());
            -1
        } else {
            match s
                .session_params()
                .and_then(|p| self.sessions.create(&*self.cfg.driver, &p))
            {
                Ok(id) => {
                    debug!("CREATE_CRYPTO_SESSION: session {id:#x}");
                    id as i64
                }
                Err(e) => {
                    guest_warn!("CREATE_CRYPTO_SESSION failed: {e}");
                    -1
                }
            }
        };
        // Never echo anything the request carried beyond its opcode (key material: the sym
        // arm's keys, and the asym arm's key, which spans most of the union); QEMU reads only
        // the session id.
        s.as_mut_slice().zeroize();
        let reply_s = QemuCryptoSession {
            op_code: u64::from_ne_bytes(
                payload
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .unwrap_or([0; 8]),
            ),
            session_id: id,
            ..QemuCryptoSession::default()
        };
        reply.extend_from_slice(reply_s.as_slice());
    }
}

impl VhostUserDevice for CryptoDevice {
    fn num_queues(&self) -> usize {
        usize::from(self.cfg.queues) + 1
    }

    fn max_queue_size(&self) -> u16 {
        self.cfg.queue_size
    }

    fn features(&self) -> u64 {
        0
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CRYPTO_SESSION
    }

    fn read_config(&self, offset: usize, buf: &mut [u8]) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = offset
                .checked_add(i)
                .and_then(|o| self.config.as_slice().get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    fn start_queue(&mut self, q: QueueStart) -> Result<(), DeviceError> {
        let i = q.index;
        if i >= self.workers.len() {
            return Err(DeviceError::NoSuchQueue(i));
        }
        if let Some(w) = self.workers[i].take() {
            w.stop();
        }
        let started = if i < usize::from(self.cfg.queues) {
            let dq = self
                .cfg
                .driver
                .open_queue(usize::from(self.cfg.queue_size))
                .map_err(|e| DeviceError::Start(i, e.into()))?;
            // Data queues also take in-band control requests (dpacc_spec::in_band): QEMU keeps
            // the control queue and forwards only some session types.
            let path = DataPath::new(dq, self.sessions.clone())
                .with_in_band_control(self.control())
                .with_counters(self.counters.clone(), i);
            QueueWorker::spawn(q, path, self.cfg.busy_poll)
        } else {
            // The control queue sleeps at once: session requests are rare.
            QueueWorker::spawn(
                q,
                ControlPath::new(self.control()),
                std::time::Duration::ZERO,
            )
        };
        self.workers[i] = Some(started.map_err(|e| DeviceError::Start(i, e.into()))?);
        Ok(())
    }

    fn stop_queue(&mut self, index: usize) -> Option<Queue> {
        self.workers.get_mut(index)?.take()?.stop()
    }

    fn connected(&mut self) {
        self.sessions.begin_connection();
    }

    fn handle_request(&mut self, request: u32, payload: &[u8], reply: &mut Vec<u8>) -> DeviceReply {
        match request {
            VHOST_USER_CREATE_CRYPTO_SESSION => {
                self.create_qemu_session(payload, reply);
                DeviceReply::Reply
            }
            VHOST_USER_CLOSE_CRYPTO_SESSION => {
                let Ok(b) = <[u8; 8]>::try_from(payload) else {
                    guest_warn!("CLOSE_CRYPTO_SESSION: payload of {} bytes", payload.len());
                    return DeviceReply::Ack(false);
                };
                let id = u64::from_ne_bytes(b);
                match self.sessions.close(id) {
                    Ok(()) => DeviceReply::Ack(true),
                    Err(e) => {
                        guest_warn!("CLOSE_CRYPTO_SESSION {id:#x}: {e}");
                        DeviceReply::Ack(false)
                    }
                }
            }
            _ => DeviceReply::Unknown,
        }
    }

    fn reset(&mut self) {
        self.stop_all();
        self.sessions.clear();
    }
}
