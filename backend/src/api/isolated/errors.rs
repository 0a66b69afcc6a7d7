//! Why a vNF could not be created, deleted or reached, and the reply that says it.

use std::path::PathBuf;

use crate::api::routes::Reply;
use crate::api::vnfs::RegistryError;

/// Why a vNF could not be created, deleted or reached.
#[derive(Debug, thiserror::Error)]
pub enum IsolatedError {
    /// As in the one-process daemon.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The command line of a vNF process cannot carry it.
    #[error("'{0}': a socket path or TAP name with ',' cannot be served by an isolated vNF")]
    Comma(String),
    /// Being created.
    #[error("vNF '{0}' is being created; try again")]
    Busy(String),
    /// Its process is down and waits to be restarted, or does not answer.
    #[error("vNF '{0}': {1}")]
    Unavailable(String, String),
    /// Its process refused to start (status and message as the one-process daemon's).
    #[error("{1}")]
    Start(u16, String),
    /// The process could not be started at all.
    #[error("starting a vNF process: {0}")]
    Spawn(std::io::Error),
    /// The private directory.
    #[error("{0}: {1}")]
    Dir(PathBuf, std::io::Error),
}

impl IsolatedError {
    /// Its HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            Self::Registry(e) => crate::api::routes::status_of(e),
            Self::Comma(_) => 400,
            Self::Busy(_) => 409,
            Self::Unavailable(..) => 503,
            Self::Start(s, _) => *s,
            Self::Spawn(_) | Self::Dir(..) => 500,
        }
    }

    pub(super) fn reply(&self) -> Reply {
        match self {
            Self::Registry(e) => registry_error_ref(e),
            e => Reply::error(e.status(), e),
        }
    }
}

fn registry_error_ref(e: &RegistryError) -> Reply {
    Reply::error(crate::api::routes::status_of(e), e)
}
