//! The private directory of a supervisor with the API and its vNF processes' files in it
//! (API sockets, recorded policies, error files).

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::errors::IsolatedError;

/// Longest unix socket path (`sun_path` less its NUL).
const SOCKET_PATH_MAX: usize = 107;
/// Longest private socket name with its separator: `/` + a u64 id + `.sock`.
const PRIVATE_NAME_MAX: usize = 1 + 20 + 5;

/// A vNF process's private files.
pub(super) struct Files {
    pub(super) api: PathBuf,
    pub(super) policy: PathBuf,
    pub(super) error: PathBuf,
}

pub(super) fn files(dir: &Path, id: u64) -> Files {
    Files {
        api: dir.join(format!("{id}.sock")),
        policy: dir.join(format!("{id}.policy.json")),
        error: dir.join(format!("{id}.error")),
    }
}

/// Creates the private directory `dir` (mode 0700; a stale one is replaced), refused if the
/// longest private socket path in it would not fit a unix socket address.
pub(super) fn create_private_dir(dir: &Path) -> Result<(), IsolatedError> {
    let err = |e| IsolatedError::Dir(dir.to_path_buf(), e);
    // The longest private socket path (`DIR/ID.sock`, a u64 id) must fit a unix
    // socket address: refused here, not at the first vNF's start.
    if dir.as_os_str().len() + PRIVATE_NAME_MAX > SOCKET_PATH_MAX {
        return Err(err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "too long for the vNF processes' API sockets in it: the API socket's \
                 path may have at most {} bytes",
                SOCKET_PATH_MAX - PRIVATE_NAME_MAX - 2
            ),
        )));
    }
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(dir).map_err(err)?,
        Ok(_) => {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists and is not a directory",
            )))
        }
        Err(_) => {}
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(err)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    Ok(())
}

/// Writes `data` to `path` (mode 0600) through a temporary file and a rename: a reader sees
/// the old contents or the new, never a part.
pub(super) fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::isolated::{Supervisor, SupervisorConfig};

    #[test]
    fn an_api_socket_path_too_long_for_the_private_sockets_is_refused_at_start() {
        let cfg = |dir: PathBuf| SupervisorConfig {
            exe: "/nonexistent/dpacc-backend".into(),
            base_args: vec!["net".into()],
            default_max_flows: 64,
            mac: [2, 0, 0, 0, 0, 1],
            queue_pairs: 1,
            private: Some(dir),
            reserved: vec![],
        };
        let base = std::env::temp_dir().join(format!("dpacc-iso-long-{}", std::process::id()));
        let long = PathBuf::from(format!(
            "{}{}.d",
            base.display(),
            "x".repeat(SOCKET_PATH_MAX - PRIVATE_NAME_MAX - base.as_os_str().len() - 1)
        ));
        let e = Supervisor::new(cfg(long.clone())).err().expect("refused");
        assert!(e.to_string().contains("at most 79 bytes"), "{e}");
        assert!(!long.exists(), "nothing created");
        // One byte shorter: the longest private socket path fits.
        let fits = PathBuf::from(format!(
            "{}{}.d",
            base.display(),
            "x".repeat(SOCKET_PATH_MAX - PRIVATE_NAME_MAX - base.as_os_str().len() - 2)
        ));
        assert_eq!(fits.as_os_str().len() + PRIVATE_NAME_MAX, SOCKET_PATH_MAX);
        let sup = Supervisor::new(cfg(fits.clone())).expect("fits");
        drop(sup);
        let _ = std::fs::remove_dir_all(&fits);
    }
}
