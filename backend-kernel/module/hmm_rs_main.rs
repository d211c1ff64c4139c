// SPDX-License-Identifier: GPL-2.0

//! hmm_rs: hmm-core in the Linux kernel.
//!
//! A Rust-for-Linux module that compiles hmm-core's sources (no registry
//! crates), implements its traits over the real mm ([`kmm`]) and exposes a
//! device mirror with the ioctl ABI of lib/test_hmm.c ([`mirror`]) on
//! `/dev/hmm_dmirror0` and `/dev/hmm_dmirror1`, so that the kernel's
//! `hmm-tests` selftest runs against it unmodified. Its extra ioctl
//! `HMM_DMIRROR_READ_UNLOCKED` (0x09) faults through hmm-core's
//! lock-dropping entry point, so userfaultfd-backed ranges can be mirrored.
//!
//! The C shim wraps the kernel's inline functions (`shim_mm.c`), reads page
//! tables (`shim_walk.c`) and owns the kernel objects (`shim_mirror.c`,
//! `shim_devmem.c`); `ffi` declares its ABI (`shim.h`).

use kernel::prelude::*;

mod devmem;
mod ffi;
#[allow(unreachable_pub, dead_code, missing_docs)]
mod hmm_core;
mod kmm;
mod mirror;

module! {
    type: HmmRs,
    name: "hmm_rs",
    author: "hmm-rs",
    description: "HMM device mirror over hmm-core (test_hmm ioctl ABI)",
    license: "GPL",
}

struct HmmRs;

impl kernel::Module for HmmRs {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        // SAFETY: called once at module init; the devices are unregistered
        // in `drop`.
        let r = unsafe { ffi::hmm_rs_register() };
        if r != 0 {
            return Err(Error::from_errno(r));
        }
        pr_info!("devices registered\n");
        Ok(HmmRs)
    }
}

impl Drop for HmmRs {
    fn drop(&mut self) {
        // SAFETY: module exit; no file of the devices is open (each holds a
        // module reference through fops.owner).
        unsafe { ffi::hmm_rs_unregister() };
    }
}
