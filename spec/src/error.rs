//! The one error type every driver returns, and its mapping to virtio-crypto status bytes.

use crate::virtio_crypto::status;

/// Why a session or an operation failed. `Copy` and allocation-free so the data path can carry
/// it per operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The algorithm, mode or operation is not supported by this driver.
    #[error("algorithm or operation not supported")]
    Unsupported,
    /// The key has a length the algorithm does not accept.
    #[error("invalid key length")]
    InvalidKeyLength,
    /// The IV / nonce has a length the algorithm does not accept.
    #[error("invalid IV length")]
    InvalidIvLength,
    /// The digest or tag length is out of range.
    #[error("invalid digest or tag length")]
    InvalidDigestLength,
    /// The input length is not acceptable (e.g. CBC on a partial block, or ranges outside the
    /// buffer).
    #[error("invalid data length")]
    InvalidDataLength,
    /// The output buffer is smaller than the result.
    #[error("output buffer too small")]
    BufferTooSmall,
    /// The request is malformed (inconsistent lengths, wrong opcode for the session...).
    #[error("malformed request")]
    BadRequest,
    /// The AEAD tag did not verify; no plaintext was released.
    #[error("authentication failed")]
    AuthFailed,
    /// No such session (never created, or already closed).
    #[error("invalid session")]
    InvalidSession,
    /// The session table is full.
    #[error("no free session slot")]
    NoSpace,
    /// The driver's queue is full; retry after dequeuing completions.
    #[error("queue full")]
    Busy,
    /// A driver-internal failure.
    #[error("driver failure: {0}")]
    Internal(&'static str),
}

impl CryptoError {
    /// The virtio-crypto status byte this error is reported as. `BADMSG` is reserved for
    /// verification failures so a guest can tell them from malformed requests (`ERR`).
    pub fn status(self) -> u8 {
        match self {
            Self::Unsupported => status::NOTSUPP,
            Self::AuthFailed => status::BADMSG,
            Self::InvalidSession => status::INVSESS,
            Self::NoSpace => status::NOSPC,
            Self::InvalidKeyLength
            | Self::InvalidIvLength
            | Self::InvalidDigestLength
            | Self::InvalidDataLength
            | Self::BufferTooSmall
            | Self::BadRequest
            | Self::Busy
            | Self::Internal(_) => status::ERR,
        }
    }
}

/// Converts a status byte from a device into a result, for drivers of the device (the guest
/// library). `ERR` and unknown values become [`CryptoError::BadRequest`].
pub fn status_to_result(st: u8) -> Result<(), CryptoError> {
    match st {
        status::OK => Ok(()),
        status::BADMSG => Err(CryptoError::AuthFailed),
        status::NOTSUPP => Err(CryptoError::Unsupported),
        status::INVSESS => Err(CryptoError::InvalidSession),
        status::NOSPC => Err(CryptoError::NoSpace),
        _ => Err(CryptoError::BadRequest),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_failure_is_the_only_badmsg() {
        let all = [
            CryptoError::Unsupported,
            CryptoError::InvalidKeyLength,
            CryptoError::InvalidIvLength,
            CryptoError::InvalidDigestLength,
            CryptoError::InvalidDataLength,
            CryptoError::BufferTooSmall,
            CryptoError::BadRequest,
            CryptoError::AuthFailed,
            CryptoError::InvalidSession,
            CryptoError::NoSpace,
            CryptoError::Busy,
            CryptoError::Internal("x"),
        ];
        for e in all {
            assert_eq!(e.status() == status::BADMSG, e == CryptoError::AuthFailed);
        }
        assert_eq!(
            status_to_result(status::BADMSG),
            Err(CryptoError::AuthFailed)
        );
        assert_eq!(status_to_result(status::OK), Ok(()));
        assert_eq!(status_to_result(0xff), Err(CryptoError::BadRequest));
    }
}
