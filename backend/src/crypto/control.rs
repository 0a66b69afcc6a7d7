//! The control queue (virtio-user frontends only; QEMU keeps it and sends requests 26/27).
//!
//! Create: readable `CtrlRequest` (72 bytes) + key bytes, writable `SessionInput` (16 bytes).
//! Destroy: readable `CtrlRequest`, writable 1-byte status.

use std::sync::Arc;

use dpacc_spec::algo::{MAX_AUTH_KEY_LEN, MAX_CIPHER_KEY_LEN};
use dpacc_spec::ctrl::{self, CtrlOp};
use dpacc_spec::virtio_crypto::{self as vc, status, CtrlRequest, SessionInput, CTRL_REQ_SIZE};
use dpacc_spec::{CryptoDriver, CryptoError};
use tracing::debug;
use virtio_queue::{Queue, QueueT};
use vm_memory::{ByteValued, GuestMemoryMmap};
use zeroize::Zeroize;

use super::sessions::SessionTable;
use super::worker::{Notify, Processor};
use crate::guest_log::guest_warn;
use crate::virtq::ChainBufs;

/// Control queue processing state.
pub(crate) struct ControlPath {
    driver: Arc<dyn CryptoDriver>,
    sessions: Arc<SessionTable>,
    chain: ChainBufs,
    keys: Box<[u8; MAX_CIPHER_KEY_LEN + MAX_AUTH_KEY_LEN]>,
}

impl ControlPath {
    /// A control path creating sessions through `driver` into `sessions`.
    pub(crate) fn new(driver: Arc<dyn CryptoDriver>, sessions: Arc<SessionTable>) -> Self {
        Self {
            driver,
            sessions,
            chain: ChainBufs::new(),
            keys: Box::new([0; MAX_CIPHER_KEY_LEN + MAX_AUTH_KEY_LEN]),
        }
    }

    /// Handles the walked chain; returns the used length (0 when nothing could be written).
    fn handle(&mut self) -> u32 {
        let c = &self.chain;
        let wl = c.writable_len();
        let mut req = CtrlRequest::default();
        let readable_ok =
            c.readable_len() >= CTRL_REQ_SIZE && c.read(0, req.as_mut_slice()).is_ok();
        let op = req.header.opcode.to_native();
        let is_create = matches!(
            op,
            vc::CIPHER_CREATE_SESSION
                | vc::HASH_CREATE_SESSION
                | vc::MAC_CREATE_SESSION
                | vc::AEAD_CREATE_SESSION
        );
        if readable_ok && is_create {
            let n = std::mem::size_of::<SessionInput>();
            if wl < n {
                // No way to report an id: do not create a session the guest cannot close.
                debug!("control: no room for the session input");
                return 0;
            }
            let (id, st) = match self.create(&req) {
                Ok(id) => (id, status::OK),
                Err(e) => {
                    debug!("control: create session failed: {e}");
                    (0, e.status())
                }
            };
            let out = SessionInput {
                session_id: id.into(),
                status: u32::from(st).into(),
                padding: 0.into(),
            };
            if self.chain.write(0, out.as_slice()).is_err() {
                debug!("control: no room for the session input");
                return 0;
            }
            return n as u32;
        }
        // Destroy, unknown opcode, or a short request: a 1-byte status.
        let st = if !readable_ok {
            status::ERR
        } else {
            match ctrl::decode(&req, &[]) {
                Ok(CtrlOp::Destroy(id)) => match self.sessions.close(id) {
                    Ok(()) => status::OK,
                    Err(_) => status::ERR,
                },
                Ok(CtrlOp::Create(_)) => status::ERR,
                Err(e) => e.status(),
            }
        };
        if wl == 0 || self.chain.write(0, &[st]).is_err() {
            return 0;
        }
        1
    }

    fn create(&mut self, req: &CtrlRequest) -> Result<u64, CryptoError> {
        let need = ctrl::key_bytes_after(req)?;
        if need > self.keys.len() {
            return Err(CryptoError::InvalidKeyLength);
        }
        if CTRL_REQ_SIZE + need > self.chain.readable_len() {
            return Err(CryptoError::BadRequest);
        }
        let keys = &mut self.keys[..need];
        let r = match self.chain.read(CTRL_REQ_SIZE, keys) {
            Ok(()) => match ctrl::decode(req, keys) {
                Ok(CtrlOp::Create(p)) => self.sessions.create(&*self.driver, &p),
                Ok(CtrlOp::Destroy(_)) => Err(CryptoError::BadRequest),
                Err(e) => Err(e),
            },
            Err(_) => Err(CryptoError::BadRequest),
        };
        keys.zeroize();
        r
    }
}

impl Processor for ControlPath {
    fn process(&mut self, q: &mut Queue, mem: &GuestMemoryMmap, notify: &Notify) -> usize {
        let mut n = 0;
        // At most a ring's worth per call (the worker paces a ring that never runs dry).
        while n < usize::from(q.size()) {
            let Some(chain) = q.pop_descriptor_chain(mem) else {
                break;
            };
            let used = match self.chain.walk(chain, mem) {
                Ok(()) => self.handle(),
                Err(e) => {
                    debug!("control chain {}: {e}", self.chain.head());
                    0
                }
            };
            if let Err(e) = q.add_used(mem, self.chain.head(), used) {
                guest_warn!("control add_used: {e}");
            }
            n += 1;
        }
        if n > 0 {
            notify.signal(q, mem);
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::test_driver::XorDriver;
    use dpacc_spec::{CipherAlg, Direction, SessionParams};
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    const IN: u64 = 0x10_0000;
    const OUT: u64 = 0x18_0000;

    /// Posts [req ++ keys] readable and `out_len` writable bytes; returns (used len, output).
    fn run(cp: &mut ControlPath, input: &[u8], out_len: u32) -> (u32, Vec<u8>) {
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap();
        m.write_slice(input, GuestAddress(IN)).unwrap();
        let vq = MockSplitQueue::new(&m, 16);
        let raw = [
            RawDescriptor::from(Descriptor::new(IN, input.len() as u32, 1, 1)),
            RawDescriptor::from(Descriptor::new(OUT, out_len, 2, 0)),
        ];
        vq.add_desc_chains(&raw, 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        assert_eq!(cp.process(&mut q, &m, &Notify::new(None)), 1);
        let used = vq.used().ring().ref_at(0).unwrap().load();
        let mut out = vec![0u8; out_len as usize];
        m.read_slice(&mut out, GuestAddress(OUT)).unwrap();
        (used.len(), out)
    }

    fn create_req(key: &[u8]) -> Vec<u8> {
        let mut keys = Vec::new();
        let req = ctrl::encode_create(
            &SessionParams::Cipher {
                alg: CipherAlg::AesCbc,
                key,
                dir: Direction::Encrypt,
            },
            &mut keys,
        );
        let mut v = req.as_slice().to_vec();
        v.extend_from_slice(&keys);
        v
    }

    fn input(out: &[u8]) -> SessionInput {
        let mut s = SessionInput::default();
        s.as_mut_slice().copy_from_slice(out);
        s
    }

    #[test]
    fn create_and_destroy_over_the_control_queue() {
        let sessions = Arc::new(SessionTable::new(1));
        let mut cp = ControlPath::new(Arc::new(XorDriver), sessions.clone());
        let (used, out) = run(&mut cp, &create_req(&[1; 16]), 16);
        let si = input(&out);
        assert_eq!((used, si.status.to_native()), (16, u32::from(status::OK)));
        let id = si.session_id.to_native();
        assert!(sessions.read().get(id).is_some());
        // Table full.
        let (_, out) = run(&mut cp, &create_req(&[1; 16]), 16);
        assert_eq!(input(&out).status.to_native(), u32::from(status::NOSPC));
        // Bad key length → ERR.
        sessions.close(id).unwrap();
        let (_, out) = run(&mut cp, &create_req(&[1; 9]), 16);
        assert_eq!(input(&out).status.to_native(), u32::from(status::ERR));
        // Declared key bytes missing from the chain → ERR.
        let req = create_req(&[1; 16]);
        let (_, out) = run(&mut cp, &req[..CTRL_REQ_SIZE + 4], 16);
        assert_eq!(input(&out).status.to_native(), u32::from(status::ERR));
        // Destroy: OK once, then ERR.
        let (_, out) = run(&mut cp, &create_req(&[1; 16]), 16);
        let id = input(&out).session_id.to_native();
        let destroy = ctrl::encode_destroy(vc::SERVICE_CIPHER, id);
        assert_eq!(run(&mut cp, destroy.as_slice(), 1), (1, vec![status::OK]));
        assert_eq!(run(&mut cp, destroy.as_slice(), 1), (1, vec![status::ERR]));
        // Unknown opcode → NOTSUPP.
        let mut bad = CtrlRequest::default();
        bad.header.opcode = 0x0999.into();
        assert_eq!(run(&mut cp, bad.as_slice(), 1), (1, vec![status::NOTSUPP]));
        // Create answer with no room for the session input: used 0.
        assert_eq!(run(&mut cp, &create_req(&[1; 16]), 4).0, 0);
    }
}
