// SPDX-License-Identifier: GPL-2.0

//! The device mirror: lib/test_hmm.c's ioctl ABI over hmm-core.
//!
//! One [`Mirror`] per open file of `/dev/hmm_dmirror{0,1}`. Its kernel
//! objects (an MMU interval notifier over the opener's whole address space,
//! the driver mutex, the device page table) live in the C shim; this module
//! decides everything:
//!
//! * the invalidate callback ([`hmm_rs_mirror_invalidate`]) takes the mutex
//!   (trylock for non-blockable ranges), moves the notifier sequence and
//!   erases the device page-table entries of the range;
//! * `READ` / `WRITE` copy between a bounce buffer and the mirrored pages
//!   under the mutex; at the first page not mirrored (not mirrored writable,
//!   for `WRITE`) they fault the rest of the range through hmm-core with the
//!   caller pattern of `Documentation/mm/hmm.rst` (read_begin, range fault,
//!   mutex, read_retry, program the device page table), count one `faults`
//!   per pass, and go on;
//! * `READ_UNLOCKED` (nr 0x09) is `READ` faulting through
//!   `range_fault_unlocked`, whose faults may drop the mmap lock
//!   (userfaultfd);
//! * `SNAPSHOT` encodes each page of a no-fault range walk as one byte
//!   (`HMM_DMIRROR_PROT_*`);
//! * `FLAGS` stores the flags word (only meaningful to device-memory
//!   migration, which this driver does not implement);
//! * `mmap` of the device file maps zeroed pages into a `VM_MIXEDMAP` VMA.

use core::ffi::{c_int, c_long, c_uint, c_ulong, c_void};

use kernel::alloc::KVVec;
use kernel::error::code::{EFAULT, EINVAL, ENOMEM};
use kernel::prelude::*;
use kernel::uaccess::UserSlice;

use crate::ffi::{self, RawMirror, VmAreaStruct};
use crate::hmm_core::{
    self as core_, Clock, Env, HmmPfn, IntervalNotifier, MmapLock, Options, PfnFlags, Policy,
    Range, Stats, PAGE_SHIFT, PAGE_SIZE,
};
use crate::kmm::KernelMm;

/// `struct hmm_dmirror_cmd`.
#[derive(Default)]
struct Cmd {
    addr: u64,
    ptr: u64,
    npages: u64,
    cpages: u64,
    faults: u64,
}

const CMD_SIZE: usize = 40;

impl Cmd {
    fn decode(b: &[u8; CMD_SIZE]) -> Self {
        let w = |i: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[i * 8..i * 8 + 8]);
            u64::from_ne_bytes(x)
        };
        Cmd {
            addr: w(0),
            ptr: w(1),
            npages: w(2),
            cpages: w(3),
            faults: w(4),
        }
    }

    fn encode(&self) -> [u8; CMD_SIZE] {
        let mut b = [0u8; CMD_SIZE];
        for (i, v) in [self.addr, self.ptr, self.npages, self.cpages, self.faults]
            .iter()
            .enumerate()
        {
            b[i * 8..i * 8 + 8].copy_from_slice(&v.to_ne_bytes());
        }
        b
    }
}

/// `_IOWR('H', nr, struct hmm_dmirror_cmd)`.
const fn iowr(nr: u32) -> u32 {
    kernel::ioctl::_IOWR::<[u8; CMD_SIZE]>(b'H' as u32, nr)
}

/// `HMM_DMIRROR_READ`.
const HMM_DMIRROR_READ: u32 = iowr(0x00);
/// `HMM_DMIRROR_WRITE`.
const HMM_DMIRROR_WRITE: u32 = iowr(0x01);
/// `HMM_DMIRROR_SNAPSHOT`.
const HMM_DMIRROR_SNAPSHOT: u32 = iowr(0x04);
/// `HMM_DMIRROR_FLAGS`.
const HMM_DMIRROR_FLAGS: u32 = iowr(0x08);
/// `HMM_DMIRROR_READ_UNLOCKED`: READ through the lock-dropping entry point.
const HMM_DMIRROR_READ_UNLOCKED: u32 = iowr(0x09);

// SNAPSHOT byte codes (`HMM_DMIRROR_PROT_*`).
const PROT_ERROR: u8 = 0xff;
const PROT_NONE: u8 = 0x00;
const PROT_READ: u8 = 0x01;
const PROT_WRITE: u8 = 0x02;
const PROT_PMD: u8 = 0x04;
const PROT_PUD: u8 = 0x08;
const PROT_ZERO: u8 = 0x10;

/// Pages per range fault (the PFN array lives on the stack, as in test_hmm).
const CHUNK: usize = 64;

/// Retry budget of one chunk (`HMM_RANGE_DEFAULT_TIMEOUT`, 1000 ms).
const TIMEOUT_NS: u64 = 1_000_000_000;

/// One open file's mirror.
///
/// # Invariants
///
/// `raw` is the live `struct hmm_rs_mirror` of an open file; the C side
/// only hands it to us from that file's operations and its notifier.
struct Mirror {
    raw: *mut RawMirror,
}

/// The driver mutex, held. The invalidate callback takes the same lock.
struct PtLock<'a> {
    m: &'a Mirror,
}

impl Drop for PtLock<'_> {
    fn drop(&mut self) {
        // SAFETY: this guard holds the mutex of the live mirror.
        unsafe { ffi::hmm_rs_mutex_unlock(self.m.raw) };
    }
}

fn errno(e: core_::Error) -> Error {
    Error::from_errno(e.to_errno())
}

/// Which entry point faults the range.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Path {
    /// `range_fault`: Linux `hmm_range_fault`, lock held throughout.
    Locked,
    /// `range_fault_unlocked`: owns the lock; faults may drop it.
    Unlocked,
}

/// A bounce buffer of `len` bytes whose contents are written before use.
fn bounce(len: usize) -> Result<KVVec<u8>> {
    KVVec::with_capacity(len, GFP_KERNEL).map_err(|_| ENOMEM)
}

impl Mirror {
    fn lock(&self) -> PtLock<'_> {
        // SAFETY: `raw` is live (type invariant).
        unsafe { ffi::hmm_rs_mutex_lock(self.raw) };
        PtLock { m: self }
    }

    fn owner(&self) -> u64 {
        // SAFETY: `raw` is live (type invariant).
        unsafe { ffi::hmm_rs_mirror_owner(self.raw) }
    }

    /// Fault `[start, end)` into the device page table, 64 pages at a time
    /// (test_hmm's `dmirror_fault`).
    fn fault(&self, start: u64, end: u64, write: bool, path: Path) -> Result {
        // SAFETY: `raw` is live for the whole ioctl.
        let mm = unsafe { KernelMm::get(self.raw) }.ok_or(EFAULT)?;
        let mut pfns = [0u64; CHUNK];
        let mut addr = start;
        while addr < end {
            let next = end.min(addr + (CHUNK as u64) * PAGE_SIZE);
            let n = ((next - addr) >> PAGE_SHIFT) as usize;
            self.fault_chunk(&mm, addr, next, &mut pfns[..n], write, path)?;
            addr = next;
        }
        Ok(())
    }

    /// The caller pattern for one chunk: read_begin, range fault, mutex,
    /// read_retry, program the device page table.
    fn fault_chunk(
        &self,
        mm: &KernelMm,
        start: u64,
        end: u64,
        pfns: &mut [u64],
        write: bool,
        path: Path,
    ) -> Result {
        let mut req = PfnFlags::REQ_FAULT;
        if write {
            req |= PfnFlags::REQ_WRITE;
        }
        let deadline = mm.now_ns().saturating_add(TIMEOUT_NS);
        let mut stats = Stats::default();
        loop {
            if mm.now_ns() > deadline {
                return Err(errno(core_::Error::Busy));
            }
            pfns.fill(0);
            let mut range = Range::new(start, end, pfns)
                .with_default_flags(req.bits())
                .with_owner(self.owner());
            let res = match path {
                Path::Locked => {
                    let env = Env::new(mm, mm, mm);
                    range.notifier_seq = mm.read_begin();
                    let out = core_::range_fault(&env, &mut range, mm.read(), &mut stats);
                    drop(out.guard);
                    out.result
                }
                Path::Unlocked => {
                    let env = Env::new(mm, mm, mm).with_signals(mm).with_clock(mm);
                    let opts = Options {
                        policy: Policy::Resume,
                        timeout_ns: TIMEOUT_NS,
                        nowait: false,
                    };
                    core_::range_fault_unlocked(&env, &mut range, &opts, &mut stats)
                }
            };
            match res {
                Ok(()) => {}
                Err(core_::Error::Busy) => continue,
                Err(e) => return Err(errno(e)),
            }
            let seq = range.notifier_seq;
            let _pt = self.lock();
            if mm.read_retry(seq) {
                continue;
            }
            let first = start >> PAGE_SHIFT;
            for (i, &w) in range.pfns.iter().enumerate() {
                let p = HmmPfn(w);
                // A successful fault request leaves every entry valid (and
                // writable if asked); anything else is a core bug.
                if !p.is_valid() || p.is_error() || (write && !p.is_writable()) {
                    return Err(EFAULT);
                }
                // SAFETY: the mutex is held (`_pt`); the PFN was just
                // reported valid under a sequence that `read_retry` confirmed
                // under the mutex, so its page is mapped and stays so until
                // the invalidate callback (which needs the mutex) erases it.
                let r = unsafe {
                    ffi::hmm_rs_pt_store(self.raw, first + i as u64, p.pfn(), p.is_writable())
                };
                if r != 0 {
                    return Err(Error::from_errno(r));
                }
            }
            return Ok(());
        }
    }

    /// Copy `[start, end)` page by page through the device page table:
    /// `page(vpfn, off)` runs with the mutex held for each page not yet done
    /// (`off`: the page's byte offset from `start`) and returns nonzero
    /// where the device does not map the page (writably, for `write`). Then
    /// the rest of the range is faulted in through `path` (one more
    /// `cmd.faults`) and the copy goes on from that page. Returns the pages
    /// copied and `Ok` or the fault's error.
    fn each_page(
        &self,
        cmd: &mut Cmd,
        start: u64,
        end: u64,
        write: bool,
        path: Path,
        mut page: impl FnMut(u64, usize) -> c_int,
    ) -> (u64, Result) {
        let first = start >> PAGE_SHIFT;
        let last = end >> PAGE_SHIFT;
        let mut done = 0u64;
        loop {
            let complete = {
                let _pt = self.lock();
                let mut complete = true;
                for vpfn in first + done..last {
                    let off = ((vpfn - first) << PAGE_SHIFT) as usize;
                    if page(vpfn, off) != 0 {
                        complete = false;
                        break;
                    }
                    done += 1;
                }
                complete
            };
            if complete {
                return (done, Ok(()));
            }
            if let Err(e) = self.fault(start + (done << PAGE_SHIFT), end, write, path) {
                return (done, Err(e));
            }
            cmd.faults += 1;
        }
    }

    /// `READ` / `READ_UNLOCKED`: mirror `[addr, addr + npages)` and copy it to
    /// the user buffer `ptr`.
    fn read(&self, cmd: &mut Cmd, path: Path) -> Result {
        let (start, end, size) = span(cmd)?;
        let mut buf = bounce(size)?;
        let dst = buf.spare_capacity_mut().as_mut_ptr().cast::<c_void>();
        let (done, result) = self.each_page(cmd, start, end, false, path, |vpfn, off| {
            // SAFETY: mutex held; `dst + off` has PAGE_SIZE bytes of the
            // bounce buffer's capacity (`off < size`).
            unsafe { ffi::hmm_rs_pt_read_page(self.raw, vpfn, dst.cast::<u8>().add(off).cast()) }
        });
        result?;
        cmd.cpages = done;
        // SAFETY: every page of the buffer was written above.
        unsafe { buf.set_len(size) };
        UserSlice::new(cmd.ptr as usize, size)
            .writer()
            .write_slice(&buf)
    }

    /// `WRITE`: copy the user buffer `ptr` into `[addr, addr + npages)`
    /// through the device's writable mirror.
    fn write(&self, cmd: &mut Cmd) -> Result {
        let (start, end, size) = span(cmd)?;
        let mut buf = bounce(size)?;
        UserSlice::new(cmd.ptr as usize, size)
            .reader()
            .read_raw(&mut buf.spare_capacity_mut()[..size])?;
        // SAFETY: read_raw initialized all `size` bytes.
        unsafe { buf.set_len(size) };
        let src = buf.as_ptr().cast::<c_void>();
        let (done, result) = self.each_page(cmd, start, end, true, Path::Locked, |vpfn, off| {
            // SAFETY: mutex held; `src + off` has PAGE_SIZE initialized
            // bytes (`off < size`).
            unsafe { ffi::hmm_rs_pt_write_page(self.raw, vpfn, src.cast::<u8>().add(off).cast()) }
        });
        cmd.cpages = done;
        result
    }

    /// `SNAPSHOT`: one `HMM_DMIRROR_PROT_*` byte per page, without faulting.
    fn snapshot(&self, cmd: &mut Cmd) -> Result {
        let (start, end, _) = span(cmd)?;
        // SAFETY: `raw` is live for the whole ioctl.
        let mm = unsafe { KernelMm::get(self.raw) }.ok_or(EINVAL)?;
        let env = Env::new(&mm, &mm, &mm);
        // SAFETY: no preconditions.
        let zero_pfn = unsafe { ffi::hmm_rs_zero_pfn() };
        let mut pfns = [0u64; CHUNK];
        let mut perm = [0u8; CHUNK];
        let mut uptr = cmd.ptr;
        let mut stats = Stats::default();
        let mut addr = start;
        while addr < end {
            let next = end.min(addr + (CHUNK as u64) * PAGE_SIZE);
            let n = ((next - addr) >> PAGE_SHIFT) as usize;
            let deadline = mm.now_ns().saturating_add(TIMEOUT_NS);
            loop {
                if mm.now_ns() > deadline {
                    return Err(errno(core_::Error::Busy));
                }
                pfns[..n].fill(0);
                let mut range = Range::new(addr, next, &mut pfns[..n]).with_owner(self.owner());
                range.notifier_seq = mm.read_begin();
                let out = core_::range_fault(&env, &mut range, mm.read(), &mut stats);
                drop(out.guard);
                match out.result {
                    Ok(()) => {}
                    Err(core_::Error::Busy) => continue,
                    Err(e) => return Err(errno(e)),
                }
                let seq = range.notifier_seq;
                let _pt = self.lock();
                if mm.read_retry(seq) {
                    continue;
                }
                for (p, &w) in perm[..n].iter_mut().zip(range.pfns.iter()) {
                    *p = prot(HmmPfn(w), zero_pfn);
                }
                break;
            }
            UserSlice::new(uptr as usize, n)
                .writer()
                .write_slice(&perm[..n])?;
            cmd.cpages += n as u64;
            uptr += n as u64;
            addr = next;
        }
        Ok(())
    }

    fn ioctl(&self, command: u32, arg: usize) -> Result {
        let mut raw = [0u8; CMD_SIZE];
        let (mut reader, mut writer) = UserSlice::new(arg, CMD_SIZE).reader_writer();
        reader.read_slice(&mut raw)?;
        let mut cmd = Cmd::decode(&raw);
        cmd.cpages = 0;
        cmd.faults = 0;
        span(&cmd)?;
        match command {
            HMM_DMIRROR_READ => self.read(&mut cmd, Path::Locked)?,
            HMM_DMIRROR_READ_UNLOCKED => self.read(&mut cmd, Path::Unlocked)?,
            HMM_DMIRROR_WRITE => self.write(&mut cmd)?,
            HMM_DMIRROR_SNAPSHOT => self.snapshot(&mut cmd)?,
            HMM_DMIRROR_FLAGS => {
                // SAFETY: `raw` is live (type invariant).
                unsafe { ffi::hmm_rs_mirror_set_flags(self.raw, cmd.npages) }
            }
            _ => return Err(EINVAL),
        }
        writer.write_slice(&cmd.encode())
    }
}

/// Check a command's range like test_hmm (page-aligned `addr`, no wrap) and
/// return `(start, end, bytes)`.
fn span(cmd: &Cmd) -> Result<(u64, u64, usize)> {
    if cmd.addr & (PAGE_SIZE - 1) != 0 {
        return Err(EINVAL);
    }
    let bytes = cmd.npages.checked_mul(PAGE_SIZE).ok_or(EINVAL)?;
    let end = cmd.addr.checked_add(bytes).ok_or(EINVAL)?;
    if end <= cmd.addr {
        return Err(EINVAL);
    }
    let size = usize::try_from(bytes).map_err(|_| EINVAL)?;
    Ok((cmd.addr, end, size))
}

/// test_hmm's `dmirror_mkentry` for a driver without device memory.
fn prot(p: HmmPfn, zero_pfn: u64) -> u8 {
    if p.is_error() {
        return PROT_ERROR;
    }
    if !p.is_valid() {
        return PROT_NONE;
    }
    let mut b = if p.pfn() == zero_pfn {
        PROT_ZERO
    } else {
        PROT_NONE
    };
    b |= if p.is_writable() { PROT_WRITE } else { PROT_READ };
    match p.order() {
        core_::PMD_ORDER => b | PROT_PMD,
        core_::PUD_ORDER => b | PROT_PUD,
        _ => b,
    }
}

/// The MMU interval notifier's invalidate callback (called by the shim).
///
/// # Safety
///
/// `m` must be a live mirror; called only from its notifier.
#[no_mangle]
pub(crate) unsafe extern "C" fn hmm_rs_mirror_invalidate(
    m: *mut RawMirror,
    start: u64,
    end: u64,
    blockable: bool,
    cur_seq: u64,
) -> bool {
    if blockable {
        // SAFETY: `m` is live (caller).
        unsafe { ffi::hmm_rs_mutex_lock(m) };
    } else {
        // SAFETY: `m` is live (caller).
        if !unsafe { ffi::hmm_rs_mutex_trylock(m) } {
            return false;
        }
    }
    // SAFETY: `m` is live and its mutex is held, as both calls require.
    unsafe {
        ffi::hmm_rs_set_seq(m, cur_seq);
        if end > start {
            ffi::hmm_rs_pt_erase(m, start >> PAGE_SHIFT, (end - 1) >> PAGE_SHIFT);
        }
        ffi::hmm_rs_mutex_unlock(m);
    }
    true
}

/// `unlocked_ioctl` of the device file (called by the shim).
///
/// # Safety
///
/// `m` must be the live mirror of the file the ioctl was issued on.
#[no_mangle]
pub(crate) unsafe extern "C" fn hmm_rs_mirror_ioctl(m: *mut RawMirror, cmd: c_uint, arg: c_ulong) -> c_long {
    let mirror = Mirror { raw: m };
    match mirror.ioctl(cmd, arg as usize) {
        Ok(()) => 0,
        Err(e) => e.to_errno() as c_long,
    }
}

/// `mmap` of the device file (called by the shim): zeroed pages inserted
/// with `vm_insert_page`, which makes the VMA `VM_MIXEDMAP`.
///
/// # Safety
///
/// `vma` must be the VMA being set up by this `mmap` call.
#[no_mangle]
pub(crate) unsafe extern "C" fn hmm_rs_mirror_mmap(_m: *mut RawMirror, vma: *mut VmAreaStruct) -> c_int {
    let (mut start, mut end) = (0u64, 0u64);
    // SAFETY: `vma` is valid (caller); the out-pointers are valid.
    unsafe { ffi::hmm_rs_vma_bounds(vma, &mut start, &mut end) };
    let mut addr = start;
    while addr < end {
        // SAFETY: `vma` is being set up by mmap, with the mmap write lock
        // held, which vm_insert_page requires.
        let r = unsafe { ffi::hmm_rs_vma_insert_zeroed_page(vma, addr) };
        if r != 0 {
            return r;
        }
        addr += PAGE_SIZE;
    }
    0
}
