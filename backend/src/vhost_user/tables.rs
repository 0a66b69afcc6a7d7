//! [`GuestTables`]: the memory tables one server loop has mapped, from SET_MEM_TABLE until
//! they are unmapped, and their registration with the fault trap ([`super::fault`]).
//!
//! Workers read guest memory through snapshots of a `GuestMemoryAtomic`; a table replaced by a
//! newer one (or left behind by a connection that ended) stays mapped until the last snapshot
//! is dropped. To unregister a table's regions exactly when nothing can touch them any more,
//! and before they are unmapped, this holder keeps one reference to every table it mapped and
//! lets go of a retired table only once it holds the last one.

use std::io;
use std::mem::ManuallyDrop;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{GuestAddressSpace, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::device::GuestMem;
use super::fault::{self, Registration, RegistryFull};
use super::memory::{AddrMap, MappedTable};

/// Retired tables a loop may hold before a new SET_MEM_TABLE is refused (the workers drop
/// their snapshots within one wake-up; this only bites a frontend replacing its table in a
/// tight loop).
const MAX_RETIRED: usize = 16;
/// How long SET_MEM_TABLE waits for workers to let go of retired tables before refusing.
const RETIRE_WAIT: Duration = Duration::from_millis(200);

/// Why a memory table could not be installed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum InstallError {
    /// The process-wide fault registry is full.
    #[error(transparent)]
    Registry(#[from] RegistryFull),
    /// Too many replaced tables are still in use.
    #[error("too many memory tables still in use by workers")]
    TooManyTables,
}

struct Table {
    mem: Arc<GuestMemoryMmap>,
    reg: Registration,
    /// The connection that installed it.
    conn: u64,
}

/// The tables of one vhost-user server loop (one connection at a time).
pub(crate) struct GuestTables {
    /// Written by the fault handler when a fault hits one of our regions. Registered slots
    /// refer to it by number, so it is closed only when none is left (never, if a table could
    /// not be released: see `Drop`).
    wake: ManuallyDrop<EventFd>,
    current: Option<Table>,
    retired: Vec<Table>,
    conn: u64,
}

impl GuestTables {
    /// An empty holder.
    pub(crate) fn new() -> io::Result<Self> {
        Ok(Self {
            wake: ManuallyDrop::new(EventFd::new(EFD_NONBLOCK)?),
            current: None,
            retired: Vec::new(),
            conn: 0,
        })
    }

    /// Readable after a fault in one of this loop's regions.
    pub(crate) fn wake_fd(&self) -> &EventFd {
        &self.wake
    }

    /// A new connection starts; faults are attributed to it from now on.
    pub(crate) fn begin_connection(&mut self) {
        self.conn += 1;
        let _ = self.wake.read();
    }

    /// Whether the current connection's memory faulted (its file shrank under us, or huge
    /// pages were missing). Consumes the wake-up.
    pub(crate) fn faulted(&self) -> bool {
        let _ = self.wake.read();
        self.current
            .iter()
            .chain(&self.retired)
            .any(|t| t.conn == self.conn && t.reg.faults() > 0)
    }

    /// Registers `t`'s regions, makes it the memory `atomic` serves, and retires the table
    /// it replaces. Returns the table's address map.
    pub(crate) fn install(
        &mut self,
        atomic: &GuestMem,
        t: MappedTable,
    ) -> Result<AddrMap, InstallError> {
        self.sweep();
        let deadline = Instant::now() + RETIRE_WAIT;
        while self.retired.len() >= MAX_RETIRED {
            if Instant::now() >= deadline {
                return Err(InstallError::TooManyTables);
            }
            std::thread::sleep(Duration::from_millis(2));
            self.sweep();
        }
        let reg = fault::register(&t.ranges, &*self.wake)?;
        let mem = replace(atomic, t.mem);
        if let Some(old) = self.current.replace(Table {
            mem,
            reg,
            conn: self.conn,
        }) {
            self.retired.push(old);
        }
        self.sweep();
        Ok(t.addr_map)
    }

    /// The connection ended (its rings are stopped): `atomic` serves no memory any more and
    /// its tables are released as soon as nothing uses them.
    pub(crate) fn end_connection(&mut self, atomic: &GuestMem) {
        if let Some(t) = self.current.take() {
            drop(replace(atomic, GuestMemoryMmap::new()));
            self.retired.push(t);
        }
        self.sweep();
    }

    /// Unregisters and unmaps the retired tables nobody else holds.
    pub(crate) fn sweep(&mut self) {
        let mut i = 0;
        while i < self.retired.len() {
            if Arc::strong_count(&self.retired[i].mem) == 1 {
                let t = self.retired.swap_remove(i);
                // Unregister first: once unmapped, the addresses may be reused.
                fault::unregister(t.reg);
                drop(t.mem);
            } else {
                i += 1;
            }
        }
    }
}

impl Drop for GuestTables {
    fn drop(&mut self) {
        if let Some(t) = self.current.take() {
            self.retired.push(t);
        }
        self.sweep();
        if self.retired.is_empty() {
            // SAFETY: no registered slot refers to the eventfd any more; dropped once.
            unsafe { ManuallyDrop::drop(&mut self.wake) };
        } else {
            // Still used somewhere (a worker that did not stop): keep the mappings, their
            // registration and the eventfd for the life of the process rather than let a
            // fault or an unmap hit something else.
            tracing::warn!(
                "{} guest memory table(s) still in use at exit; kept mapped",
                self.retired.len()
            );
            for t in self.retired.drain(..) {
                std::mem::forget(t);
            }
        }
    }
}

/// Makes `mem` what `atomic` serves; returns our own reference to it.
fn replace(atomic: &GuestMem, mem: GuestMemoryMmap) -> Arc<GuestMemoryMmap> {
    let guard = atomic.lock().unwrap_or_else(|p| p.into_inner());
    guard.replace(mem);
    atomic.memory().into_inner()
}
