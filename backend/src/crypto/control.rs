//! Control requests: on the control queue (virtio-user frontends only; QEMU keeps the control
//! queue and sends requests 26/27 instead), and in-band on a data queue (dpacc's extension,
//! `dpacc_spec::in_band`, for drivers whose control queue is held by QEMU).
//!
//! Create: readable `CtrlRequest` (72 bytes) + key bytes, writable `SessionInput` (16 bytes).
//! Destroy: readable `CtrlRequest`, writable 1-byte status.
//! In-band `GET_CONFIG`: readable `CtrlRequest`, writable config (56 bytes) + 1-byte status.
//! In-band `CLOSE_ALL_SESSIONS`: readable `CtrlRequest`, writable 1-byte status.

use std::sync::Arc;

use dpacc_spec::algo::{MAX_AUTH_KEY_LEN, MAX_CIPHER_KEY_LEN};
use dpacc_spec::ctrl::{self, CtrlOp};
use dpacc_spec::in_band::{self, GET_CONFIG_INPUT_LEN};
use dpacc_spec::virtio_crypto::{
    self as vc, status, Config, CtrlRequest, SessionInput, CTRL_REQ_SIZE,
};
use dpacc_spec::{CryptoDriver, CryptoError};
use tracing::debug;
use virtio_queue::{Queue, QueueT};
use vm_memory::{ByteValued, GuestMemoryMmap};
use zeroize::Zeroize;

use super::sessions::SessionTable;
use super::worker::{Notify, Processor};
use crate::split_ring::SplitRing;
use crate::virtq::{ChainBufs, FastMem};

/// Runs control requests (create, destroy, and the in-band dpacc requests) against the
/// device's session table.
pub(crate) struct Control {
    driver: Arc<dyn CryptoDriver>,
    sessions: Arc<SessionTable>,
    /// The device's real config space (what in-band `GET_CONFIG` returns).
    config: Config,
    keys: Box<[u8; MAX_CIPHER_KEY_LEN + MAX_AUTH_KEY_LEN]>,
}

impl Control {
    /// Control requests creating sessions through `driver` into `sessions`; `config` is the
    /// device's config space.
    pub(crate) fn new(
        driver: Arc<dyn CryptoDriver>,
        sessions: Arc<SessionTable>,
        config: Config,
    ) -> Self {
        Self {
            driver,
            sessions,
            config,
            keys: Box::new([0; MAX_CIPHER_KEY_LEN + MAX_AUTH_KEY_LEN]),
        }
    }

    /// Handles the walked chain; returns the used length (0 when nothing could be written).
    pub(crate) fn handle(&mut self, c: &ChainBufs) -> u32 {
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
            let (id, st) = match self.create(c, &req) {
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
            if c.write(0, out.as_slice()).is_err() {
                debug!("control: no room for the session input");
                return 0;
            }
            return n as u32;
        }
        if readable_ok && op == in_band::GET_CONFIG {
            if wl < GET_CONFIG_INPUT_LEN {
                debug!("control: no room for the config");
                return 0;
            }
            let n = GET_CONFIG_INPUT_LEN - 1;
            if c.write(0, self.config.as_slice()).is_err() || c.write(n, &[status::OK]).is_err() {
                return 0;
            }
            return GET_CONFIG_INPUT_LEN as u32;
        }
        // Destroy, close-all, unknown opcode, or a short request: a 1-byte status.
        let st = if !readable_ok {
            status::ERR
        } else if op == in_band::CLOSE_ALL_SESSIONS {
            self.sessions.clear();
            status::OK
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
        if wl == 0 || c.write(0, &[st]).is_err() {
            return 0;
        }
        1
    }

    fn create(&mut self, c: &ChainBufs, req: &CtrlRequest) -> Result<u64, CryptoError> {
        let need = ctrl::key_bytes_after(req)?;
        if need > self.keys.len() {
            return Err(CryptoError::InvalidKeyLength);
        }
        if CTRL_REQ_SIZE + need > c.readable_len() {
            return Err(CryptoError::BadRequest);
        }
        let keys = &mut self.keys[..need];
        let r = match c.read(CTRL_REQ_SIZE, keys) {
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

/// The control queue's processing state.
pub(crate) struct ControlPath {
    control: Control,
    chain: ChainBufs,
}

impl ControlPath {
    /// A control queue running requests through `control`.
    pub(crate) fn new(control: Control) -> Self {
        Self {
            control,
            chain: ChainBufs::new(),
        }
    }
}

impl Processor for ControlPath {
    fn process(
        &mut self,
        q: &mut Queue,
        mem: &FastMem<'_, GuestMemoryMmap>,
        notify: &Notify,
    ) -> usize {
        // At most a ring's worth per call (the worker paces a ring that never runs dry).
        let max = usize::from(q.size());
        let Some(mut ring) = SplitRing::open(q, mem) else {
            return 0;
        };
        ring.pending();
        let mut n = 0;
        while n < max {
            let Some(head) = ring.pop_head() else {
                break;
            };
            let used = match ring.walk(head, &mut self.chain) {
                Ok(()) => self.control.handle(&self.chain),
                Err(e) => {
                    debug!("control chain {head}: {e}");
                    0
                }
            };
            ring.put_used(head, used);
            n += 1;
        }
        notify.signal(ring.close(q));
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::data::DataPath;
    use crate::crypto::test_driver::XorDriver;
    use dpacc_spec::{CipherAlg, Direction, SessionParams};
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    const IN: u64 = 0x10_0000;
    const OUT: u64 = 0x18_0000;

    /// Posts [req ++ keys] readable and `out_len` writable bytes (filled with 0xee first), has
    /// `process` take the chain (it must take exactly one); returns (used len, output).
    fn post(
        input: &[u8],
        out_len: u32,
        process: impl FnOnce(&mut Queue, &FastMem<GuestMemoryMmap>, &Notify) -> usize,
    ) -> (u32, Vec<u8>) {
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap();
        m.write_slice(input, GuestAddress(IN)).unwrap();
        m.write_slice(&vec![0xee; out_len as usize], GuestAddress(OUT))
            .unwrap();
        let vq = MockSplitQueue::new(&m, 16);
        let raw = [
            RawDescriptor::from(Descriptor::new(IN, input.len() as u32, 1, 1)),
            RawDescriptor::from(Descriptor::new(OUT, out_len, 2, 0)),
        ];
        vq.add_desc_chains(&raw, 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        assert_eq!(process(&mut q, &FastMem::new(&m), &Notify::new(None)), 1);
        let used = vq.used().ring().ref_at(0).unwrap().load();
        let mut out = vec![0u8; out_len as usize];
        m.read_slice(&mut out, GuestAddress(OUT)).unwrap();
        (used.len(), out)
    }

    /// One chain through the control path.
    fn run(cp: &mut ControlPath, input: &[u8], out_len: u32) -> (u32, Vec<u8>) {
        post(input, out_len, |q, m, n| cp.process(q, m, n))
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
        let driver: Arc<dyn CryptoDriver> = Arc::new(XorDriver);
        let config = driver.capabilities().to_config(1);
        let mut cp = ControlPath::new(Control::new(driver, sessions.clone(), config));
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

    /// Posts one chain on a *data* queue served by `dp`; returns (used len, writable bytes).
    /// One chain through the data path.
    fn run_data(dp: &mut DataPath, input: &[u8], out_len: u32) -> (u32, Vec<u8>) {
        post(input, out_len, |q, m, n| dp.process(q, m, n))
    }

    fn bare(opcode: u32) -> Vec<u8> {
        let mut r = CtrlRequest::default();
        r.header.opcode = opcode.into();
        r.as_slice().to_vec()
    }

    fn gcm_req(key: &[u8]) -> Vec<u8> {
        let mut keys = Vec::new();
        let req = ctrl::encode_create(
            &SessionParams::Aead {
                alg: dpacc_spec::AeadAlg::AesGcm,
                key,
                tag_len: 0,
                dir: Direction::Encrypt,
            },
            &mut keys,
        );
        let mut v = req.as_slice().to_vec();
        v.extend_from_slice(&keys);
        v
    }

    /// An AEAD encrypt of 8 bytes with session `sid` (12-byte IV, no AAD).
    fn aead_op(sid: u64) -> Vec<u8> {
        let mut r = vc::DataRequest::default();
        r.header.opcode = vc::AEAD_ENCRYPT.into();
        r.header.session_id = sid.into();
        r.set_body(&vc::AeadDataPara {
            iv_len: 12.into(),
            aad_len: 0.into(),
            src_data_len: 8.into(),
            dst_data_len: 24.into(),
        });
        let mut v = r.as_slice().to_vec();
        v.extend_from_slice(&[0; 12 + 8]);
        v
    }

    #[test]
    fn control_requests_in_band_on_a_data_queue() {
        let driver: Arc<dyn CryptoDriver> = Arc::new(XorDriver);
        let sessions = Arc::new(SessionTable::new(4));
        let config = driver.capabilities().to_config(2);
        let control = Control::new(driver.clone(), sessions.clone(), config);
        let mut dp = DataPath::new(XorDriver.open_queue(64).unwrap(), sessions.clone())
            .with_in_band_control(control);
        // GET_CONFIG: the backend's config space, then the status byte.
        let (used, out) = run_data(&mut dp, &bare(in_band::GET_CONFIG), 57);
        assert_eq!(used, 57);
        assert_eq!(&out[..56], config.as_slice());
        assert_eq!(out[56], status::OK);
        // An AEAD session (QEMU's control queue would answer NOTSUPP), then an operation in it.
        let (used, out) = run_data(&mut dp, &gcm_req(&[5; 16]), 16);
        let si = input(&out);
        assert_eq!((used, si.status.to_native()), (16, u32::from(status::OK)));
        let sid = si.session_id.to_native();
        assert_eq!(run_data(&mut dp, &aead_op(sid), 25).1[24], status::OK);
        // Destroy in-band: OK once, then ERR; the session is gone for the data path.
        let destroy = ctrl::encode_destroy(vc::SERVICE_AEAD, sid);
        assert_eq!(
            run_data(&mut dp, destroy.as_slice(), 1),
            (1, vec![status::OK])
        );
        assert_eq!(
            run_data(&mut dp, destroy.as_slice(), 1),
            (1, vec![status::ERR])
        );
        assert_eq!(run_data(&mut dp, &aead_op(sid), 25).1[24], status::INVSESS);
        // CLOSE_ALL_SESSIONS: every session goes.
        let a = input(&run_data(&mut dp, &gcm_req(&[6; 16]), 16).1)
            .session_id
            .to_native();
        let b = input(&run_data(&mut dp, &gcm_req(&[7; 16]), 16).1)
            .session_id
            .to_native();
        assert_eq!(
            run_data(&mut dp, &bare(in_band::CLOSE_ALL_SESSIONS), 1),
            (1, vec![status::OK])
        );
        assert!(sessions.read().get(a).is_none() && sessions.read().get(b).is_none());
        // Hostile in-band requests: short writable parts write nothing, no panic.
        assert_eq!(run_data(&mut dp, &bare(in_band::GET_CONFIG), 56).0, 0);
        assert_eq!(run_data(&mut dp, &gcm_req(&[5; 16]), 15).0, 0);
        assert_eq!(
            run_data(&mut dp, &gcm_req(&[5; 16])[..80], 16).1[8],
            status::ERR
        );
    }

    #[test]
    fn a_data_path_without_the_extension_answers_notsupp() {
        // What a driver sees from a backend that does not know dpacc's in-band requests: the
        // status (the last writable byte) says NOTSUPP.
        let sessions = Arc::new(SessionTable::new(4));
        let mut dp = DataPath::new(XorDriver.open_queue(64).unwrap(), sessions);
        let (used, out) = run_data(&mut dp, &bare(in_band::GET_CONFIG), 57);
        assert_eq!((used, out[56]), (57, status::NOTSUPP));
    }
}
