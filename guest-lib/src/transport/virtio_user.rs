//! virtio-user: this process is the vhost-user *frontend* of a backend daemon on a unix socket,
//! exactly as QEMU would be, with a memfd of its own as "guest memory", sealed against
//! shrinking and growing: on 4 KiB pages, or on 2 MiB hugepages when asked ([`Hugepages`], as
//! DPDK's virtio-user does).

use std::path::Path;
use std::sync::Arc;

use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserHeaderFlag};
use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{QueueSetup, Transport, VIRTIO_F_VERSION_1};
use super::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use crate::error::{Error, Result};
use crate::mem::{Hugepages, SharedMemory};
use crate::virtq::{EventFdNotifier, Notifier};

/// Guest address of the first byte of our memory (any value works; a non-zero one catches a
/// backend that confuses guest addresses with offsets).
pub const GPA_BASE: u64 = 0x1_0000_0000;

/// The vhost-user frontend connection.
pub struct VirtioUser {
    fe: Frontend,
    features: u64,
    protocol: VhostUserProtocolFeatures,
    num_queues: u16,
    mem: Option<Arc<SharedMemory>>,
    hugepages: Hugepages,
    enabled: Vec<u16>,
}

impl std::fmt::Debug for VirtioUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioUser")
            .field("features", &format_args!("{:#x}", self.features))
            .field("protocol", &self.protocol)
            .field("num_queues", &self.num_queues)
            .field("hugepages", &self.hugepages)
            .finish()
    }
}

impl VirtioUser {
    /// Connects and negotiates: `SET_OWNER`, features (VERSION_1, EVENT_IDX and INDIRECT_DESC
    /// when offered and asked for, PROTOCOL_FEATURES), protocol features (MQ, CONFIG and
    /// REPLY_ACK required), `GET_QUEUE_NUM`.
    pub fn connect(path: &Path, want_event_idx: bool, want_indirect: bool) -> Result<Self> {
        Self::connect_with(path, 0, want_event_idx, want_indirect)
    }

    /// As [`connect`](Self::connect), also asking for the device-specific feature bits in
    /// `device_features` (those the device offers are negotiated).
    pub fn connect_with(
        path: &Path,
        device_features: u64,
        want_event_idx: bool,
        want_indirect: bool,
    ) -> Result<Self> {
        let mut fe = Frontend::connect(path, 1).map_err(|source| Error::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        fe.set_owner()?;
        let offered = fe.get_features()?;
        let proto_bit = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if offered & VIRTIO_F_VERSION_1 == 0 {
            return Err(Error::Unsupported("VIRTIO_F_VERSION_1"));
        }
        if offered & proto_bit == 0 {
            return Err(Error::Unsupported("VHOST_USER_F_PROTOCOL_FEATURES"));
        }
        let mut want = VIRTIO_F_VERSION_1 | proto_bit | device_features;
        if want_event_idx {
            want |= VIRTIO_RING_F_EVENT_IDX;
        }
        if want_indirect {
            want |= VIRTIO_RING_F_INDIRECT_DESC;
        }
        let features = offered & want;

        let offered_proto = fe.get_protocol_features()?;
        let need = VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::CONFIG;
        if !offered_proto.contains(need) {
            return Err(Error::Unsupported(
                "vhost-user protocol features MQ and CONFIG",
            ));
        }
        let protocol = offered_proto
            & (need
                | VhostUserProtocolFeatures::REPLY_ACK
                | VhostUserProtocolFeatures::CRYPTO_SESSION);
        fe.set_protocol_features(protocol)?;
        let num_queues = fe.get_queue_num()?;
        if !(2..=u16::MAX as u64).contains(&num_queues) {
            return Err(Error::Protocol(
                "GET_QUEUE_NUM must be at least 2 (data + control)",
            ));
        }
        let mut me = Self {
            fe,
            features,
            protocol,
            num_queues: num_queues as u16,
            mem: None,
            hugepages: Hugepages::Off,
            enabled: Vec::new(),
        };
        me.with_ack(|fe| fe.set_features(features))?;
        Ok(me)
    }

    /// Runs a set-type request asking for a REPLY_ACK (when negotiated), so a backend's refusal
    /// surfaces here instead of as a dropped connection later.
    fn with_ack<T>(&mut self, f: impl FnOnce(&mut Frontend) -> vhost::Result<T>) -> Result<T> {
        let ack = self.protocol.contains(VhostUserProtocolFeatures::REPLY_ACK);
        if ack {
            self.fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        let r = f(&mut self.fe);
        if ack {
            self.fe.set_hdr_flags(VhostUserHeaderFlag::empty());
        }
        Ok(r?)
    }

    /// The negotiated vhost-user protocol features.
    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.protocol
    }
}

impl Transport for VirtioUser {
    fn backend_pid(&self) -> Option<u32> {
        let mut cred = libc::ucred {
            pid: 0,
            uid: 0,
            gid: 0,
        };
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: SO_PEERCRED writes at most `len` bytes into the live `cred`; the fd is the
        // frontend's connected socket, owned by `self.fe` for this call.
        let r = unsafe {
            libc::getsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&self.fe),
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&mut cred as *mut libc::ucred).cast(),
                &mut len,
            )
        };
        match (r, u32::try_from(cred.pid)) {
            (0, Ok(pid)) if pid > 0 => Some(pid),
            _ => None,
        }
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn num_queues(&self) -> u16 {
        self.num_queues
    }

    fn read_config(&mut self, buf: &mut [u8]) -> Result<()> {
        let (_, payload) = self.fe.get_config(
            0,
            buf.len() as u32,
            VhostUserConfigFlags::empty(),
            &vec![0; buf.len()],
        )?;
        if payload.len() != buf.len() {
            return Err(Error::Protocol("GET_CONFIG payload size"));
        }
        buf.copy_from_slice(&payload);
        Ok(())
    }

    fn set_hugepages(&mut self, pages: Hugepages) {
        self.hugepages = pages;
    }

    fn setup_memory(&mut self, size: usize) -> Result<Arc<SharedMemory>> {
        if self.mem.is_some() {
            return Err(Error::InvalidArgument("memory already set up"));
        }
        // One region, one fd, offset 0, its size a multiple of the page size (2 MiB on
        // hugetlbfs, which the backend's mmap of the region needs and gets).
        let mem = Arc::new(SharedMemory::with_pages(size, GPA_BASE, self.hugepages)?);
        let region = VhostUserMemoryRegionInfo {
            guest_phys_addr: mem.gpa_base(),
            memory_size: mem.len() as u64,
            userspace_addr: mem.as_ptr() as u64,
            mmap_offset: 0,
            mmap_handle: mem.fd(),
        };
        self.with_ack(|fe| fe.set_mem_table(&[region]).map(|_| ()))?;
        self.mem = Some(mem.clone());
        Ok(mem)
    }

    fn setup_queue(&mut self, q: &QueueSetup) -> Result<Box<dyn Notifier>> {
        if q.index >= self.num_queues {
            return Err(Error::InvalidArgument("queue index"));
        }
        let i = q.index as usize;
        let kick = EventFd::new(EFD_NONBLOCK).map_err(|e| Error::Io("eventfd", e))?;
        let call = EventFd::new(EFD_NONBLOCK).map_err(|e| Error::Io("eventfd", e))?;
        // vhost-user ring addresses are frontend virtual addresses (as QEMU sends them).
        let cfg = VringConfigData {
            queue_max_size: q.size,
            queue_size: q.size,
            flags: 0,
            desc_table_addr: q.desc.1,
            used_ring_addr: q.used.1,
            avail_ring_addr: q.avail.1,
            log_addr: None,
        };
        self.with_ack(|fe| fe.set_vring_num(i, q.size))?;
        self.with_ack(|fe| fe.set_vring_addr(i, &cfg))?;
        self.with_ack(|fe| fe.set_vring_base(i, 0))?;
        self.with_ack(|fe| fe.set_vring_call(i, &call))?;
        self.with_ack(|fe| fe.set_vring_kick(i, &kick))?;
        self.enabled.push(q.index);
        Ok(Box::new(EventFdNotifier { kick, call }))
    }

    fn activate(&mut self) -> Result<()> {
        for i in std::mem::take(&mut self.enabled) {
            self.with_ack(|fe| fe.set_vring_enable(i as usize, true))?;
        }
        Ok(())
    }
}
