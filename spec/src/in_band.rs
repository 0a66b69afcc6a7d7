//! dpacc's in-band session control: control requests on a *data* queue.
//!
//! Under QEMU (`cryptodev-vhost-user` + `virtio-crypto-pci`) the virtio-crypto control queue and
//! the config space are QEMU's own models: QEMU forwards only `CIPHER_CREATE_SESSION` (cipher,
//! or a chain with a plain hash or a MAC) to the backend and answers every other create request
//! `NOTSUPP` itself, and the config space it shows is its own (AES-CBC, SHA-1, HMAC-SHA-1),
//! never the backend's. Only the data queues reach the backend. So a driver that knows about
//! dpacc may put control requests on a data queue instead:
//!
//! - the standard create/destroy requests of every service (`*_CREATE_SESSION`,
//!   `*_DESTROY_SESSION`), with exactly the control queue's layouts: the 72-byte
//!   [`CtrlRequest`](crate::virtio_crypto::CtrlRequest) and the keys (device-readable), then a
//!   16-byte [`SessionInput`](crate::virtio_crypto::SessionInput) (create) or a 1-byte status
//!   (destroy) (device-writable). Control opcodes (`0x?02`/`0x?03`) never collide with data
//!   opcodes (`0x?00`/`0x?01`);
//! - [`GET_CONFIG`]: a 72-byte request with only the opcode set (device-readable), then
//!   [`GET_CONFIG_INPUT_LEN`] device-writable bytes: the backend's real
//!   [`Config`](crate::virtio_crypto::Config) (56 bytes), then a status byte;
//! - [`CLOSE_ALL_SESSIONS`]: a 72-byte request with only the opcode set, then a 1-byte status:
//!   closes every session of the device (a driver that takes a device over after a reset, e.g.
//!   after the previous owner crashed, starts from a clean table).
//!
//! Every in-band request has its status as the last device-writable byte (the session input's
//! `status` field for a create), so a backend that does not know the extension, which treats
//! it as a data request with an unknown opcode and writes `NOTSUPP` into the last writable byte,
//! is told apart by [`GET_CONFIG`]: a driver sends it first and uses the extension only when
//! the status is `OK`.

use crate::virtio_crypto::{self as vc, opcode};

/// dpacc's private service number. Standard services are bit numbers of the 32-bit
/// `crypto_services` mask (0..=31), so this one can never collide with a future standard one.
pub const SERVICE_DPACC: u32 = 0xDA;
/// In-band request: the backend's real config space.
pub const GET_CONFIG: u32 = opcode(SERVICE_DPACC, 0x00);
/// In-band request: close every session.
pub const CLOSE_ALL_SESSIONS: u32 = opcode(SERVICE_DPACC, 0x01);
/// Device-writable bytes of a [`GET_CONFIG`] request: the config space, then the status.
pub const GET_CONFIG_INPUT_LEN: usize = core::mem::size_of::<vc::Config>() + 1;

/// Whether a request with this opcode is a control request (standard or dpacc) rather than a
/// data request.
pub fn is_control(op: u32) -> bool {
    matches!(
        op,
        vc::CIPHER_CREATE_SESSION
            | vc::CIPHER_DESTROY_SESSION
            | vc::HASH_CREATE_SESSION
            | vc::HASH_DESTROY_SESSION
            | vc::MAC_CREATE_SESSION
            | vc::MAC_DESTROY_SESSION
            | vc::AEAD_CREATE_SESSION
            | vc::AEAD_DESTROY_SESSION
            | GET_CONFIG
            | CLOSE_ALL_SESSIONS
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_and_data_opcodes_do_not_collide() {
        for data in [
            vc::CIPHER_ENCRYPT,
            vc::CIPHER_DECRYPT,
            vc::HASH,
            vc::MAC,
            vc::AEAD_ENCRYPT,
            vc::AEAD_DECRYPT,
        ] {
            assert!(!is_control(data), "{data:#x}");
        }
        assert!(is_control(vc::AEAD_CREATE_SESSION));
        assert_eq!((GET_CONFIG, CLOSE_ALL_SESSIONS), (0xda00, 0xda01));
        assert_eq!(GET_CONFIG_INPUT_LEN, 57);
    }
}
