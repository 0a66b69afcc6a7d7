//! The vendor plug-in loader: a shared object speaking the C ABI of
//! `accel-hw/include/dpacc_vendor.h`, wrapped as a [`CryptoDriver`].

pub mod ffi;
mod queue;

use std::any::Any;
use std::ffi::{c_void, CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dpacc_spec::error::status_to_result;
use dpacc_spec::{
    Capabilities, CryptoDriver, CryptoError, CryptoQueue, Direction, DriverSession, SessionHandle,
    SessionInfo, SessionParams,
};

pub use queue::PluginQueue;

/// Why a plug-in could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// dlopen failed.
    #[error("cannot load plug-in {path}: {msg}")]
    Open {
        /// The file.
        path: PathBuf,
        /// dlerror's text.
        msg: String,
    },
    /// A required symbol is missing.
    #[error("{path} is not a dpacc vendor plug-in: it does not export `{symbol}`")]
    NotAPlugin {
        /// The file.
        path: PathBuf,
        /// The missing symbol.
        symbol: &'static str,
    },
    /// The plug-in speaks another ABI version.
    #[error(
        "plug-in {path} speaks dpacc vendor ABI {major}.{minor}, this dpacc needs {want_major}.x \
         with x <= {want_minor}: rebuild it against accel-hw/include/dpacc_vendor.h"
    )]
    AbiMismatch {
        /// The file.
        path: PathBuf,
        /// Its major version.
        major: u32,
        /// Its minor version.
        minor: u32,
        /// Ours.
        want_major: u32,
        /// Ours.
        want_minor: u32,
    },
    /// `dpacc_vendor_init` failed or filled the table wrongly.
    #[error("plug-in {path} failed to initialise: {msg}")]
    Init {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        msg: String,
    },
}

/// A loaded library and its operation table. Closed (fini + dlclose) when the last driver,
/// session and queue using it are gone.
pub(crate) struct Lib {
    handle: *mut c_void,
    pub(crate) ops: ffi::VendorOps,
    name: String,
}

// SAFETY: the ABI requires plug-ins to accept calls on the driver/session entry points from
// any thread (see the header's threading rules); queue entry points are only used by the one
// `PluginQueue` that owns the queue. The raw pointers are plug-in handles, not Rust memory.
unsafe impl Send for Lib {}
// SAFETY: as above.
unsafe impl Sync for Lib {}

impl Drop for Lib {
    fn drop(&mut self) {
        if let Some(fini) = self.ops.fini {
            // SAFETY: every session and queue holds an Arc<Lib>, so none is left; fini is
            // called exactly once, with the plug-in's own context.
            unsafe { fini(self.ops.ctx) };
        }
        // SAFETY: the handle came from dlopen and nothing of the library is used any more.
        unsafe { libc::dlclose(self.handle) };
    }
}

fn dlerror() -> String {
    // SAFETY: dlerror returns null or a NUL-terminated string valid until the next dl* call
    // on this thread; it is copied at once.
    unsafe {
        let e = libc::dlerror();
        if e.is_null() {
            "unknown error".into()
        } else {
            CStr::from_ptr(e).to_string_lossy().into_owned()
        }
    }
}

/// A vendor plug-in as a dpacc crypto driver.
pub struct PluginDriver {
    lib: Arc<Lib>,
    caps: Capabilities,
    name: String,
}

impl std::fmt::Debug for PluginDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginDriver")
            .field("name", &self.name)
            .field("caps", &self.caps)
            .finish()
    }
}

impl PluginDriver {
    /// Loads the plug-in at `path`, checks its ABI version and initialises it.
    pub fn load(path: &Path) -> Result<Self, PluginError> {
        let pb = || path.to_path_buf();
        let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| PluginError::Open {
            path: pb(),
            msg: "path contains a NUL byte".into(),
        })?;
        // SAFETY: loading a library runs its constructors: that is what the operator asked
        // for with --driver plugin:PATH. The path is a valid C string.
        let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            return Err(PluginError::Open {
                path: pb(),
                msg: dlerror(),
            });
        }
        let close = |e: PluginError| {
            // SAFETY: the handle is from dlopen and nothing from it is kept.
            unsafe { libc::dlclose(handle) };
            Err(e)
        };
        let sym = |name: &'static CStr| {
            // SAFETY: dlsym on a live handle with a NUL-terminated name.
            let p = unsafe { libc::dlsym(handle, name.as_ptr()) };
            (!p.is_null()).then_some(p)
        };
        let Some(abi) = sym(c"dpacc_vendor_abi") else {
            return close(PluginError::NotAPlugin {
                path: pb(),
                symbol: "dpacc_vendor_abi",
            });
        };
        let Some(init) = sym(c"dpacc_vendor_init") else {
            return close(PluginError::NotAPlugin {
                path: pb(),
                symbol: "dpacc_vendor_init",
            });
        };
        // SAFETY: the header declares `uint32_t dpacc_vendor_abi(void)`.
        let abi: ffi::AbiFn = unsafe { std::mem::transmute::<*mut c_void, ffi::AbiFn>(abi) };
        // SAFETY: the header declares `int32_t dpacc_vendor_init(uint32_t, struct ops *)`.
        let init: ffi::InitFn = unsafe { std::mem::transmute::<*mut c_void, ffi::InitFn>(init) };
        // SAFETY: a plain C function without arguments.
        let version = unsafe { abi() };
        let (major, minor) = (version >> 16, version & 0xffff);
        if major != ffi::ABI_MAJOR || minor > ffi::ABI_MINOR {
            return close(PluginError::AbiMismatch {
                path: pb(),
                major,
                minor,
                want_major: ffi::ABI_MAJOR,
                want_minor: ffi::ABI_MINOR,
            });
        }
        let mut ops = ffi::VendorOps::empty();
        // SAFETY: `ops` is a live, correctly sized table that init fills.
        let rc = unsafe { init(ffi::ABI_VERSION, &mut ops) };
        let init_err = |msg: String| PluginError::Init { path: pb(), msg };
        if rc != 0 {
            return close(init_err(format!("dpacc_vendor_init returned {rc}")));
        }
        if ops.abi_version != version {
            return close(init_err(format!(
                "dpacc_vendor_init reports ABI {:#x}, dpacc_vendor_abi {version:#x}",
                ops.abi_version
            )));
        }
        let complete = ops.capabilities.is_some()
            && ops.session_create.is_some()
            && ops.session_close.is_some()
            && ops.queue_open.is_some()
            && ops.queue_close.is_some()
            && ops.submit.is_some()
            && ops.poll.is_some();
        if !complete {
            return close(init_err("the operation table has null entries".into()));
        }
        let name = if ops.name.is_null() {
            "unnamed".to_string()
        } else {
            // SAFETY: the ABI requires a NUL-terminated name in static storage.
            unsafe { CStr::from_ptr(ops.name) }
                .to_string_lossy()
                .into_owned()
        };
        let lib = Arc::new(Lib { handle, ops, name });
        let mut raw = ffi::Caps::default();
        let cap_fn = lib.ops.capabilities.expect("checked above");
        // SAFETY: the plug-in's context and a live output struct.
        let rc = unsafe { cap_fn(lib.ops.ctx, &mut raw) };
        if rc != 0 {
            return Err(init_err(format!("capabilities() returned {rc}")));
        }
        let caps = Capabilities {
            services: raw.services & 0xf,
            cipher: raw.cipher,
            hash: raw.hash,
            mac: raw.mac,
            aead: raw.aead,
            max_cipher_key_len: raw.max_cipher_key_len,
            max_auth_key_len: raw.max_auth_key_len,
            max_size: raw.max_size,
        };
        let name = format!("plugin:{}", lib.name);
        tracing::info!(plugin = %name, path = %path.display(), ?caps, "vendor plug-in loaded");
        Ok(Self { lib, caps, name })
    }
}

/// A session held by a plug-in.
pub struct PluginSession {
    lib: Arc<Lib>,
    pub(crate) handle: u64,
    info: SessionInfo,
}

impl Drop for PluginSession {
    fn drop(&mut self) {
        let close = self.lib.ops.session_close.expect("checked at load");
        // SAFETY: the handle came from session_create of this library and is closed once.
        unsafe { close(self.lib.ops.ctx, self.handle) };
    }
}

impl DriverSession for PluginSession {
    fn info(&self) -> SessionInfo {
        self.info
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl PluginSession {
    pub(crate) fn belongs_to(&self, lib: &Arc<Lib>) -> bool {
        Arc::ptr_eq(&self.lib, lib)
    }
}

fn dir(d: Direction) -> u32 {
    match d {
        Direction::Encrypt => dpacc_spec::virtio_crypto::OP_ENCRYPT,
        Direction::Decrypt => dpacc_spec::virtio_crypto::OP_DECRYPT,
    }
}

impl CryptoDriver for PluginDriver {
    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> Capabilities {
        self.caps
    }

    fn create_session(&self, params: &SessionParams<'_>) -> Result<SessionHandle, CryptoError> {
        let p = params.validated()?;
        if !self.caps.supports(&p) {
            return Err(CryptoError::Unsupported);
        }
        let (kind, algo, direction, digest_len, key): (u32, u32, u32, usize, &[u8]) = match p {
            SessionParams::Cipher { alg, key, dir: d } => {
                (ffi::KIND_CIPHER, alg.to_virtio(), dir(d), 0, key)
            }
            SessionParams::Hash { alg, digest_len } => {
                (ffi::KIND_HASH, alg.to_virtio(), 0, digest_len, &[])
            }
            SessionParams::Mac {
                alg,
                key,
                digest_len,
            } => (ffi::KIND_MAC, alg.to_virtio(), 0, digest_len, key),
            SessionParams::Aead {
                alg,
                key,
                tag_len,
                dir: d,
            } => (ffi::KIND_AEAD, alg.to_virtio(), dir(d), tag_len, key),
            // Not in ABI 1.0: the fallback driver runs chains.
            SessionParams::Chain { .. } => return Err(CryptoError::Unsupported),
        };
        let raw = ffi::SessionParams {
            kind,
            algo,
            direction,
            digest_len: digest_len as u32,
            key: key.as_ptr(),
            key_len: key.len() as u32,
            reserved0: 0,
            reserved: [0; 4],
        };
        let mut handle = 0u64;
        let create = self.lib.ops.session_create.expect("checked at load");
        // SAFETY: live parameter struct (the key outlives the call) and output slot.
        let st = unsafe { create(self.lib.ops.ctx, &raw, &mut handle) };
        status_to_result(u8::try_from(st).unwrap_or(u8::MAX))?;
        Ok(Arc::new(PluginSession {
            lib: self.lib.clone(),
            handle,
            info: p.info(),
        }))
    }

    fn open_queue(&self, depth: usize) -> Result<Box<dyn CryptoQueue>, CryptoError> {
        Ok(Box::new(PluginQueue::open(self.lib.clone(), depth)?))
    }
}
