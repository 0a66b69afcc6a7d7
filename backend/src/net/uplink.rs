//! The text form of an uplink, `tap:NAME` or `vhost:SOCKET`: one parser for the command line
//! (`--uplink`, `--port ...,uplink=`) and the management API.

use std::path::PathBuf;

use super::UplinkSpec;

/// Why an uplink's text is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UplinkError {
    /// `tap:` with an empty or too long name.
    #[error("a TAP name has 1 to 15 characters")]
    TapName,
    /// `vhost:` without a path.
    #[error("vhost: needs a socket path")]
    VhostPath,
    /// Neither `tap:` nor `vhost:`.
    #[error("unknown uplink '{0}': expected tap:NAME or vhost:SOCKET")]
    Kind(String),
}

impl std::str::FromStr for UplinkSpec {
    type Err = UplinkError;

    fn from_str(s: &str) -> Result<Self, UplinkError> {
        if let Some(n) = s.strip_prefix("tap:") {
            // IFNAMSIZ - 1 bytes, and nothing the kernel would refuse or misread.
            return match n.len() {
                1..=15 if !n.contains(['/', ' ', '\0', ':']) => Ok(UplinkSpec::Tap(n.to_string())),
                _ => Err(UplinkError::TapName),
            };
        }
        if let Some(p) = s.strip_prefix("vhost:") {
            return match p.is_empty() {
                false => Ok(UplinkSpec::Vhost(PathBuf::from(p))),
                true => Err(UplinkError::VhostPath),
            };
        }
        Err(UplinkError::Kind(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_kinds_and_refuses_the_rest() {
        assert_eq!("tap:t0".parse(), Ok(UplinkSpec::Tap("t0".into())));
        assert_eq!("vhost:/a".parse(), Ok(UplinkSpec::Vhost("/a".into())));
        for (bad, e) in [
            ("tap:", UplinkError::TapName),
            ("tap:sixteen-chars-xx", UplinkError::TapName),
            ("tap:a/b", UplinkError::TapName),
            ("vhost:", UplinkError::VhostPath),
            ("veth:x", UplinkError::Kind("veth:x".into())),
        ] {
            assert_eq!(bad.parse::<UplinkSpec>(), Err(e));
        }
    }
}
