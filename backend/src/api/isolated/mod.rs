//! `dpacc-backend net --isolate`: one process per vNF (this binary, serving that one vNF),
//! restarted when it dies, under a [`Supervisor`] that serves the management API
//! (ADR 0011, ADR 0018).
//!
//! With `--api-socket`, each vNF process serves the API of its own one-vNF daemon on a
//! private socket (`PRIVATE/ID.sock`, in a directory of mode 0700 next to the API socket,
//! removed with the supervisor); the supervisor keeps the registry (names, sockets, TAPs,
//! the limits of [`super::vnfs`]), forwards a vNF's policy and statistics requests to its
//! process, and gathers the processes' metrics into one exposition ([`super::merge`]).
//!
//! Policy is never lost: the supervisor records the policy each vNF process last accepted
//! (`PRIVATE/ID.policy.json`, written before the operator's `PUT` is answered) and starts
//! every process with it (`--start-policy`): the process reads it before it serves its API
//! and sets it on the flow processor before any worker runs, so a restarted vNF forwards no
//! frame without it. A per-vNF lock orders the two: a policy request holds it while it is
//! forwarded and recorded, a restart waits for it.

mod errors;
mod files;
mod lifecycle;
mod metrics;
mod peek;
mod process;
mod routes;
mod supervisor;
mod watch;

pub use errors::IsolatedError;
pub use routes::routes;
pub use supervisor::{Supervisor, SupervisorConfig};
