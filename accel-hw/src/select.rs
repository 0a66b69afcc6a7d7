//! Driver selection: `--driver sw|afalg|plugin:PATH`.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use dpacc_spec::CryptoDriver;

use crate::afalg::{AfAlgDriver, AfAlgError};
use crate::fallback::FallbackDriver;
use crate::plugin::{PluginDriver, PluginError};

/// A driver named on a command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DriverSpec {
    /// dpacc's software driver.
    Sw,
    /// The Linux kernel crypto API (AF_ALG).
    AfAlg,
    /// A vendor plug-in (shared object).
    Plugin(PathBuf),
}

/// Help text for the values [`DriverSpec`] accepts.
pub const DRIVER_HELP: &str = "sw (software, always available), afalg (Linux kernel crypto \
    API via AF_ALG), or plugin:PATH (a vendor plug-in .so, see docs/vendor-drivers.md); for \
    afalg and plugin, algorithms the driver lacks run on the software driver";

/// Why a driver name was not understood.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DriverSpecError {
    /// `plugin:` without a path.
    #[error("plugin: needs a path, e.g. plugin:/usr/lib/libvendor.so")]
    PluginPath,
    /// Not a driver name.
    #[error("unknown driver '{0}': expected sw, afalg or plugin:PATH")]
    Unknown(String),
}

impl FromStr for DriverSpec {
    type Err = DriverSpecError;
    fn from_str(s: &str) -> Result<Self, DriverSpecError> {
        match s {
            "sw" => Ok(Self::Sw),
            "afalg" => Ok(Self::AfAlg),
            _ => match s.strip_prefix("plugin:") {
                Some("") => Err(DriverSpecError::PluginPath),
                Some(p) => Ok(Self::Plugin(PathBuf::from(p))),
                None => Err(DriverSpecError::Unknown(s.to_string())),
            },
        }
    }
}

impl std::fmt::Display for DriverSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sw => f.write_str("sw"),
            Self::AfAlg => f.write_str("afalg"),
            Self::Plugin(p) => write!(f, "plugin:{}", p.display()),
        }
    }
}

/// Why a driver could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    /// Loading the plug-in failed.
    #[error(transparent)]
    Plugin(#[from] PluginError),
    /// The AF_ALG driver could not start.
    #[error("afalg: {0}")]
    AfAlg(#[from] AfAlgError),
}

/// Opens the driver `spec` names. `sw` is dpacc's software driver, passed in by the caller so
/// this crate needs no dependency on it; every other driver is wrapped in a
/// [`FallbackDriver`] over `sw`.
pub fn open_driver(
    spec: &DriverSpec,
    sw: Arc<dyn CryptoDriver>,
) -> Result<Arc<dyn CryptoDriver>, SelectError> {
    let primary: Arc<dyn CryptoDriver> = match spec {
        DriverSpec::Sw => return Ok(sw),
        DriverSpec::Plugin(path) => Arc::new(PluginDriver::load(path)?),
        DriverSpec::AfAlg => Arc::new(AfAlgDriver::open()?),
    };
    Ok(Arc::new(FallbackDriver::new(primary, sw)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_with_clear_errors() {
        assert_eq!("sw".parse::<DriverSpec>(), Ok(DriverSpec::Sw));
        assert_eq!("afalg".parse::<DriverSpec>(), Ok(DriverSpec::AfAlg));
        assert_eq!(
            "plugin:/x/libv.so".parse::<DriverSpec>(),
            Ok(DriverSpec::Plugin("/x/libv.so".into()))
        );
        assert!("plugin:"
            .parse::<DriverSpec>()
            .unwrap_err()
            .to_string()
            .contains("needs a path"));
        assert!("qat"
            .parse::<DriverSpec>()
            .unwrap_err()
            .to_string()
            .contains("unknown driver 'qat'"));
    }

    #[test]
    fn missing_plugin_file_is_a_clear_error() {
        let e = open_driver(
            &DriverSpec::Plugin("/nonexistent/libnothing.so".into()),
            Arc::new(dpacc_sw::SwDriver::new()),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            e.contains("cannot load plug-in /nonexistent/libnothing.so"),
            "{e}"
        );
    }
}
