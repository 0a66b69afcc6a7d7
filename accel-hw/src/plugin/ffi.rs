//! The C ABI of `accel-hw/include/dpacc_vendor.h`, mirrored field for field.

// Field meanings are documented once, in the C header.
#![allow(missing_docs)]

use std::ffi::{c_char, c_void};

/// ABI major version this loader speaks.
pub const ABI_MAJOR: u32 = 1;
/// ABI minor version this loader speaks.
pub const ABI_MINOR: u32 = 0;
/// `DPACC_VENDOR_ABI_VERSION`.
pub const ABI_VERSION: u32 = (ABI_MAJOR << 16) | ABI_MINOR;

/// `DPACC_KIND_CIPHER`.
pub const KIND_CIPHER: u32 = 1;
/// `DPACC_KIND_HASH`.
pub const KIND_HASH: u32 = 2;
/// `DPACC_KIND_MAC`.
pub const KIND_MAC: u32 = 3;
/// `DPACC_KIND_AEAD`.
pub const KIND_AEAD: u32 = 4;

/// `struct dpacc_caps`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Caps {
    pub services: u32,
    pub hash: u32,
    pub cipher: u64,
    pub mac: u64,
    pub aead: u32,
    pub max_cipher_key_len: u32,
    pub max_auth_key_len: u32,
    pub reserved0: u32,
    pub max_size: u64,
    pub reserved: [u64; 4],
}

/// `struct dpacc_session_params`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SessionParams {
    pub kind: u32,
    pub algo: u32,
    pub direction: u32,
    pub digest_len: u32,
    pub key: *const u8,
    pub key_len: u32,
    pub reserved0: u32,
    pub reserved: [u64; 4],
}

/// `struct dpacc_sg`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Sg {
    pub addr: *mut u8,
    pub len: u64,
}

/// `struct dpacc_op`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Op {
    pub session: u64,
    pub tag: u64,
    pub iv: [u8; 16],
    pub iv_len: u32,
    pub n_src: u32,
    pub n_dst: u32,
    pub n_aad: u32,
    pub n_digest: u32,
    pub reserved0: u32,
    pub src: *const Sg,
    pub dst: *const Sg,
    pub aad: *const Sg,
    pub digest: *const Sg,
}

/// `struct dpacc_completion`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Completion {
    pub tag: u64,
    pub status: u32,
    pub reserved0: u32,
}

/// `struct dpacc_vendor_ops`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct VendorOps {
    pub size: u32,
    pub abi_version: u32,
    pub name: *const c_char,
    pub ctx: *mut c_void,
    pub capabilities: Option<unsafe extern "C" fn(*mut c_void, *mut Caps) -> i32>,
    pub session_create:
        Option<unsafe extern "C" fn(*mut c_void, *const SessionParams, *mut u64) -> u32>,
    pub session_close: Option<unsafe extern "C" fn(*mut c_void, u64)>,
    pub queue_open: Option<unsafe extern "C" fn(*mut c_void, u32, i32, *mut *mut c_void) -> i32>,
    pub queue_close: Option<unsafe extern "C" fn(*mut c_void)>,
    pub submit: Option<unsafe extern "C" fn(*mut c_void, *const Op, u32) -> u32>,
    pub poll: Option<unsafe extern "C" fn(*mut c_void, *mut Completion, u32) -> u32>,
    pub fini: Option<unsafe extern "C" fn(*mut c_void)>,
    pub reserved: [*mut c_void; 4],
}

impl VendorOps {
    /// All-null table with `size` preset, as the loader hands it to `dpacc_vendor_init`.
    pub fn empty() -> Self {
        VendorOps {
            size: std::mem::size_of::<Self>() as u32,
            abi_version: 0,
            name: std::ptr::null(),
            ctx: std::ptr::null_mut(),
            capabilities: None,
            session_create: None,
            session_close: None,
            queue_open: None,
            queue_close: None,
            submit: None,
            poll: None,
            fini: None,
            reserved: [std::ptr::null_mut(); 4],
        }
    }
}

/// `dpacc_vendor_abi`.
pub type AbiFn = unsafe extern "C" fn() -> u32;
/// `dpacc_vendor_init`.
pub type InitFn = unsafe extern "C" fn(u32, *mut VendorOps) -> i32;

// The sizes the header asserts for LP64.
const _: () = assert!(std::mem::size_of::<Caps>() == 80);
const _: () = assert!(std::mem::size_of::<SessionParams>() == 64);
const _: () = assert!(std::mem::size_of::<Sg>() == 16);
const _: () = assert!(std::mem::size_of::<Op>() == 88);
const _: () = assert!(std::mem::size_of::<Completion>() == 16);
const _: () = assert!(std::mem::size_of::<VendorOps>() == 120);
