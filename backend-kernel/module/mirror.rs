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
//!   per pass, and go on. The bounce buffer holds at most [`BOUNCE_PAGES`]
//!   pages: the transfer moves through it chunk by chunk;
//! * `READ_UNLOCKED` (nr 0x09) is `READ` faulting through
//!   `range_fault_owning_lock`, whose faults may drop the mmap lock
//!   (userfaultfd), with the retry budget of the module parameter
//!   `unlocked_timeout_ms` (0: none);
//! * `SNAPSHOT` encodes each page of a no-fault range walk as one byte
//!   (`HMM_DMIRROR_PROT_*`);
//! * `MIGRATE_TO_DEV` / `MIGRATE_TO_SYS` move pages to and from the
//!   device's private memory ([`crate::devmem`]); `MIGRATE_TO_DEV`, like
//!   `EXCLUSIVE`, then reads the range back through the device page table
//!   (`-ENOENT` at the first page the device does not map);
//! * `EXCLUSIVE` makes the range exclusive to the device
//!   (`make_device_exclusive_range`, after splitting PMD-mapped THPs, which
//!   it would otherwise refuse) and maps it atomic; `CHECK_EXCLUSIVE` is
//!   `-EPERM` while any entry of the range is still atomic; `RELEASE`
//!   evicts the device's memory and frees its chunks;
//! * `FLAGS` stores the flags word (`HMM_DMIRROR_FLAG_FAIL_ALLOC`: the next
//!   device page allocation fails);
//! * `mmap` of the device file maps zeroed pages into a `VM_MIXEDMAP` VMA.
//!
//! # Hostile input
//!
//! Every field of the command is user-controlled. Address arithmetic is
//! checked (with `RUST_OVERFLOW_CHECKS` an overflow would be a kernel
//! `BUG()`), and the answers are test_hmm's where test_hmm has a sane one:
//! `-EINVAL` for an unaligned address or a range that is empty or wraps,
//! `-EINVAL` (READ, WRITE) and `-EOVERFLOW` (SNAPSHOT) for a range whose
//! first 64-page chunk ends beyond 2^64 (test_hmm's chunk end wraps there and
//! `walk_page_range` resp. `mmu_interval_notifier_insert` reject it),
//! `-ENOMEM` for a READ or WRITE larger than a kernel buffer can be
//! (test_hmm's `vmalloc` of the whole transfer fails). Where we differ, on
//! purpose: an unknown command is `-ENOTTY` (test_hmm: `-EINVAL`, after
//! copying the argument in); a `npages` whose byte size does not fit in 64
//! bits is `-EINVAL` (test_hmm shifts it and goes on with the truncated
//! size); the long loops stop with `-EINTR` on a fatal signal; a failed READ
//! or WRITE may have copied the chunks before the failing one (test_hmm
//! copies all or nothing); `mmap` maps at most [`MMAP_MAX_PAGES`] pages.

use core::ffi::{c_int, c_long, c_uint, c_ulong};

use kernel::alloc::{KVVec, VVec};
use kernel::error::code::{EBUSY, EFAULT, EINTR, EINVAL, ENOMEM, ENOTTY, EPERM};
use kernel::prelude::*;
use kernel::uaccess::UserSlice;

use crate::devmem::{self, DevPage};
use crate::ffi::{self, RawMirror, VmAreaStruct};
use crate::hmm_core::{
    self as core_, Clock, Env, HmmPfn, IntervalNotifier, MmapLock, Options, PfnFlags, Policy,
    Range, Signals, Stats, PAGE_SHIFT, PAGE_SIZE,
};
use crate::kmm::{MirrorNotifier, MmWithUser};

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
/// `HMM_DMIRROR_MIGRATE_TO_DEV`.
const HMM_DMIRROR_MIGRATE_TO_DEV: u32 = iowr(0x02);
/// `HMM_DMIRROR_MIGRATE_TO_SYS`.
const HMM_DMIRROR_MIGRATE_TO_SYS: u32 = iowr(0x03);
/// `HMM_DMIRROR_EXCLUSIVE`.
const HMM_DMIRROR_EXCLUSIVE: u32 = iowr(0x05);
/// `HMM_DMIRROR_CHECK_EXCLUSIVE`.
const HMM_DMIRROR_CHECK_EXCLUSIVE: u32 = iowr(0x06);
/// `HMM_DMIRROR_RELEASE`.
const HMM_DMIRROR_RELEASE: u32 = iowr(0x07);
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
const PROT_DEV_PRIVATE_LOCAL: u8 = 0x20;
const PROT_DEV_PRIVATE_REMOTE: u8 = 0x30;
const PROT_DEV_COHERENT_LOCAL: u8 = 0x40;
const PROT_DEV_COHERENT_REMOTE: u8 = 0x50;

/// Pages of test_hmm's range-fault chunk: the unit of migration and
/// exclusive access here too, and the grid of SNAPSHOT's and READ / WRITE's
/// chunks (see [`range_chunk_end`]).
const CHUNK: usize = 64;

/// Bytes of one test_hmm chunk.
const CHUNK_BYTES: u64 = CHUNK as u64 * PAGE_SIZE;

/// Pages per range fault of SNAPSHOT and of READ / WRITE's faults: one PTE
/// table's worth (2 MiB), eight test_hmm chunks. Every range fault costs
/// the same fixed work whatever its size (notifier sequence, mmap lock, VMA
/// lookup, driver mutex, sequence check, copy-out), which at 64 pages was
/// most of a SNAPSHOT of THP-backed memory (see backend-kernel/README.md).
/// The PFN array is allocated once per command.
const RANGE_CHUNK: usize = 512;

/// Bytes of one range-fault chunk.
const RANGE_CHUNK_BYTES: u64 = RANGE_CHUNK as u64 * PAGE_SIZE;

/// Pages of the READ / WRITE bounce buffer (2 MiB): a transfer moves through
/// it chunk by chunk, so no request allocates more.
const BOUNCE_PAGES: u64 = 512;

/// The largest READ / WRITE transfer, in pages: what one kernel buffer can
/// hold (`kvmalloc` refuses more than `INT_MAX` bytes). test_hmm allocates
/// the whole transfer at once and answers `-ENOMEM` when that fails, which
/// it always does beyond this size; so do we, without trying.
const XFER_MAX_PAGES: u64 = (i32::MAX as u64) >> PAGE_SHIFT;

/// The largest `mmap` of the device file, in pages (64 MiB): every page is
/// allocated when the mapping is made.
pub(crate) const MMAP_MAX_PAGES: u64 = 16384;

/// Retry budget of one chunk (`HMM_RANGE_DEFAULT_TIMEOUT`, 1000 ms).
const TIMEOUT_NS: u64 = 1_000_000_000;

/// `-EOVERFLOW` (not among the kernel crate's named codes in 6.12).
fn eoverflow() -> Error {
    Error::from_errno(-(kernel::bindings::EOVERFLOW as i32))
}

/// One open file's mirror.
///
/// # Invariants
///
/// `raw` is the live `struct hmm_rs_mirror` of an open file; the C side
/// only hands it to us from that file's operations and its notifier.
pub(crate) struct Mirror {
    pub(crate) raw: *mut RawMirror,
}

/// The driver mutex, held. The invalidate callback takes the same lock.
pub(crate) struct PtLock<'a> {
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
    /// `range_fault_owning_lock`: owns the lock; faults may drop it.
    Unlocked,
}

impl Mirror {
    pub(crate) fn lock(&self) -> PtLock<'_> {
        // SAFETY: `raw` is live (type invariant).
        unsafe { ffi::hmm_rs_mutex_lock(self.raw) };
        PtLock { m: self }
    }

    pub(crate) fn owner(&self) -> u64 {
        // SAFETY: `raw` is live (type invariant).
        unsafe { ffi::hmm_rs_mirror_owner(self.raw) }
    }

    /// Fault `[start, end)` into the device page table, [`RANGE_CHUNK`]
    /// pages at a time (test_hmm's `dmirror_fault`, which takes 64).
    /// `-EINTR` on a fatal signal between chunks.
    fn fault(&self, start: u64, end: u64, write: bool, path: Path) -> Result {
        // SAFETY: `raw` is live for the whole ioctl.
        let mm = unsafe { MmWithUser::get(self.raw) }.ok_or(EFAULT)?;
        let mut pfns = KVVec::from_elem(0u64, RANGE_CHUNK, GFP_KERNEL).map_err(|_| ENOMEM)?;
        let mut addr = start;
        while addr < end {
            if mm.fatal_signal_pending() {
                return Err(EINTR);
            }
            let next = range_chunk_end(addr, end).ok_or(EINVAL)?;
            let n = pages(addr, next);
            self.fault_chunk(&mm, addr, next, &mut pfns[..n], write, path)?;
            addr = next;
        }
        Ok(())
    }

    /// The caller pattern for one chunk: read_begin, range fault, mutex,
    /// read_retry, program the device page table.
    fn fault_chunk(
        &self,
        mm: &MmWithUser,
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
        let timeout_ns = match path {
            Path::Locked => TIMEOUT_NS,
            // SAFETY: no preconditions.
            Path::Unlocked => unsafe { ffi::hmm_rs_unlocked_timeout_ns() },
        };
        let deadline = match timeout_ns {
            0 => u64::MAX,
            t => mm.now_ns().saturating_add(t),
        };
        // SAFETY: `raw` is live for the whole ioctl.
        let notifier = unsafe { MirrorNotifier::new(self.raw) };
        let mut stats = Stats::default();
        loop {
            if mm.now_ns() > deadline {
                return Err(errno(core_::Error::Busy));
            }
            pfns.fill(0);
            let mut range = Range::new(start, end, pfns)
                .with_default_flags(req.bits())
                .with_owner(self.owner())
                .with_notifier(&notifier);
            let res = match path {
                Path::Locked => {
                    let env = Env::new(mm, mm);
                    range.notifier_seq = notifier.read_begin();
                    let out = core_::range_fault(&env, &mut range, mm.read(), &mut stats);
                    drop(out.guard);
                    out.result
                }
                Path::Unlocked => {
                    let env = Env::new(mm, mm).with_signals(mm).with_clock(mm);
                    let opts = Options {
                        policy: Policy::Resume,
                        timeout_ns,
                        nowait: false,
                    };
                    core_::range_fault_owning_lock(&env, &mut range, &opts, &mut stats)
                }
            };
            match res {
                Ok(()) => {}
                Err(core_::Error::Busy) => continue,
                Err(e) => return Err(errno(e)),
            }
            let seq = range.notifier_seq;
            let _pt = self.lock();
            if notifier.read_retry(seq) {
                continue;
            }
            let first = start >> PAGE_SHIFT;
            let span = devmem::DevmemSpan::get();
            for (vpfn, &w) in (first..).zip(range.pfns.iter()) {
                let p = HmmPfn(w);
                // A successful fault request leaves every entry valid (and
                // writable if asked); anything else is a core bug.
                if !p.is_valid() || p.is_error() || (write && !p.is_writable()) {
                    return Err(EFAULT);
                }
                // This device's own pages come back unfaulted: the device
                // reads their backing pages.
                // Coherent memory (any device's) is CPU memory: the device
                // reads it in place.
                let pfn = match span.devmem(p.pfn()) {
                    DevPage::System | DevPage::Coherent(_) => p.pfn(),
                    DevPage::Private(o) if o == self.owner() => devmem::backing_pfn(p.pfn()),
                    DevPage::Private(_) => return Err(EFAULT),
                };
                let tag = if p.is_writable() {
                    ffi::TAG_WRITE
                } else {
                    ffi::TAG_READ
                };
                // SAFETY: the mutex is held (`_pt`); the PFN was just
                // reported valid under a sequence that `read_retry` confirmed
                // under the mutex, so its page is mapped and stays so until
                // the invalidate callback (which needs the mutex) erases it.
                let r = unsafe { ffi::hmm_rs_pt_store(self.raw, vpfn, pfn, tag) };
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
    /// `[that page, fault_end)` is faulted in through `path` (one more
    /// `cmd.faults`, as test_hmm faults the rest of the whole transfer) and
    /// the copy goes on from that page. `start` and `end` are page aligned
    /// with `end - start` at most [`BOUNCE_PAGES`] pages.
    #[allow(clippy::too_many_arguments)]
    fn each_page(
        &self,
        cmd: &mut Cmd,
        start: u64,
        end: u64,
        fault_end: u64,
        write: bool,
        path: Path,
        mut page: impl FnMut(u64, usize) -> c_int,
    ) -> Result {
        let first = start >> PAGE_SHIFT;
        let last = end >> PAGE_SHIFT;
        let mut vpfn = first;
        loop {
            {
                let _pt = self.lock();
                while vpfn < last {
                    // At most BOUNCE_PAGES pages from `first`: fits.
                    let off = ((vpfn - first) << PAGE_SHIFT) as usize;
                    if page(vpfn, off) != 0 {
                        break;
                    }
                    vpfn += 1;
                }
            }
            if vpfn == last {
                return Ok(());
            }
            self.fault(vpfn << PAGE_SHIFT, fault_end, write, path)?;
            cmd.faults = cmd.faults.saturating_add(1);
        }
    }

    /// Move `[start, end)` through a bounce buffer of at most
    /// [`BOUNCE_PAGES`] pages, one chunk at a time: `chunk(cmd, bounce, at,
    /// until, uoff)` copies the chunk `[at, until)`, whose bytes are
    /// `bounce` and whose user-buffer offset is `uoff`.
    fn transfer(
        &self,
        cmd: &mut Cmd,
        mut chunk: impl FnMut(&Self, &mut Cmd, &mut [u8], u64, u64, usize) -> Result,
    ) -> Result {
        let (start, end) = span(cmd)?;
        if cmd.npages > XFER_MAX_PAGES {
            return Err(ENOMEM);
        }
        // At most BOUNCE_PAGES pages: fits in usize. Always vmalloc'd, as
        // test_hmm's buffer is: with kvmalloc the 2 MiB buffer was
        // sometimes one physically contiguous kmalloc block and sometimes
        // vmalloc'd, and READ times under QEMU's emulation were bimodal
        // with it (backend-kernel/README.md).
        let cap = (cmd.npages.min(BOUNCE_PAGES) << PAGE_SHIFT) as usize;
        let mut buf = VVec::from_elem(0u8, cap, GFP_KERNEL).map_err(|_| ENOMEM)?;
        let mut at = start;
        while at < end {
            let until = end.min(at.saturating_add(BOUNCE_PAGES << PAGE_SHIFT));
            // At most `cap` bytes; below XFER_MAX_PAGES pages from `start`.
            let len = (until - at) as usize;
            let uoff = (at - start) as usize;
            let bounce = buf.get_mut(..len).ok_or(EINVAL)?;
            chunk(self, cmd, bounce, at, until, uoff)?;
            cmd.cpages = cmd.cpages.saturating_add(pages(at, until) as u64);
            at = until;
        }
        Ok(())
    }

    /// `READ` / `READ_UNLOCKED`: mirror `[addr, addr + npages)` and copy it to
    /// the user buffer `ptr`.
    fn read(&self, cmd: &mut Cmd, path: Path) -> Result {
        let (_, end) = span(cmd)?;
        self.transfer(cmd, |this, cmd, bounce, at, until, uoff| {
            let dst = bounce.as_mut_ptr();
            this.each_page(cmd, at, until, end, false, path, |vpfn, off| {
                // SAFETY: mutex held; `dst + off` has PAGE_SIZE bytes of
                // the bounce chunk (`off < bounce.len()`, a page multiple).
                unsafe { ffi::hmm_rs_pt_read_page(this.raw, vpfn, dst.add(off).cast()) }
            })?;
            UserSlice::new(user_ptr(cmd.ptr, uoff)?, bounce.len())
                .writer()
                .write_slice(bounce)
        })
    }

    /// `WRITE`: copy the user buffer `ptr` into `[addr, addr + npages)`
    /// through the device's writable mirror.
    fn write(&self, cmd: &mut Cmd) -> Result {
        let (_, end) = span(cmd)?;
        self.transfer(cmd, |this, cmd, bounce, at, until, uoff| {
            UserSlice::new(user_ptr(cmd.ptr, uoff)?, bounce.len())
                .reader()
                .read_slice(bounce)?;
            let src = bounce.as_ptr();
            this.each_page(cmd, at, until, end, true, Path::Locked, |vpfn, off| {
                // SAFETY: mutex held; `src + off` has PAGE_SIZE bytes of
                // the bounce chunk (`off < bounce.len()`, a page multiple).
                unsafe { ffi::hmm_rs_pt_write_page(this.raw, vpfn, src.add(off).cast()) }
            })
        })
    }

    /// Copy `[addr, addr + npages)` to the user buffer `ptr` through the
    /// device page table, without faulting: `-ENOENT` at the first page the
    /// device does not map (test_hmm's read-back after `MIGRATE_TO_DEV` and
    /// `EXCLUSIVE`).
    fn read_back(&self, cmd: &mut Cmd) -> Result {
        cmd.cpages = 0;
        self.transfer(cmd, |this, cmd, bounce, at, until, uoff| {
            let dst = bounce.as_mut_ptr();
            let first = at >> PAGE_SHIFT;
            {
                let _pt = this.lock();
                for vpfn in first..until >> PAGE_SHIFT {
                    // At most BOUNCE_PAGES pages from `first`: fits.
                    let off = ((vpfn - first) << PAGE_SHIFT) as usize;
                    // SAFETY: mutex held; `dst + off` has PAGE_SIZE bytes
                    // of the bounce chunk (`off < bounce.len()`).
                    let r =
                        unsafe { ffi::hmm_rs_pt_read_page(this.raw, vpfn, dst.add(off).cast()) };
                    if r != 0 {
                        return Err(Error::from_errno(r));
                    }
                }
            }
            UserSlice::new(user_ptr(cmd.ptr, uoff)?, bounce.len())
                .writer()
                .write_slice(bounce)
        })
    }

    /// `MIGRATE_TO_DEV`, then the read-back.
    fn migrate_to_dev(&self, cmd: &mut Cmd) -> Result {
        let (start, end) = span(cmd)?;
        {
            // SAFETY: `raw` is live for the whole ioctl.
            let mm = unsafe { MmWithUser::get(self.raw) }.ok_or(EINVAL)?;
            devmem::to_device(self, &mm, start, end)?;
        }
        self.read_back(cmd)
    }

    /// `MIGRATE_TO_SYS`.
    fn migrate_to_sys(&self, cmd: &mut Cmd) -> Result {
        let (start, end) = span(cmd)?;
        // SAFETY: `raw` is live for the whole ioctl.
        let mm = unsafe { MmWithUser::get(self.raw) }.ok_or(EINVAL)?;
        cmd.cpages = 0;
        devmem::to_system(self, &mm, start, end, &mut cmd.cpages)
    }

    /// `EXCLUSIVE`: make `[addr, addr + npages)` exclusive to the device,
    /// 64 pages at a time, map every page atomic, then read it back.
    /// `-EBUSY` if some page could not be made exclusive.
    fn exclusive(&self, cmd: &mut Cmd) -> Result {
        let (start, end) = span(cmd)?;
        {
            // SAFETY: `raw` is live for the whole ioctl.
            let mm = unsafe { MmWithUser::get(self.raw) }.ok_or(EINVAL)?;
            let guard = mm.read();
            let mut addr = start;
            while addr < end {
                if mm.fatal_signal_pending() {
                    return Err(EINTR);
                }
                let next = chunk_end(addr, end).ok_or(EINVAL)?;
                if has_pmd_thp(&guard, addr, next) {
                    if let Some(vma) = guard.vma_lookup(addr) {
                        devmem::split_huge(vma.vma, addr, next.min(vma.end), self.owner())?;
                    }
                }
                self.exclusive_chunk(&mm, addr, next)?;
                addr = next;
            }
        }
        self.read_back(cmd)
    }

    /// One chunk of [`Mirror::exclusive`] (at most 64 pages), with the
    /// mmap read lock held.
    fn exclusive_chunk(&self, mm: &MmWithUser, start: u64, end: u64) -> Result {
        let n = pages(start, end);
        let mut pfns = [0u64; ffi::EXCLUSIVE_BATCH];
        // SAFETY: the mmap read lock of the pinned mm is held (caller);
        // `[start, end)` has at most EXCLUSIVE_BATCH pages, `pfns` as many.
        let got = unsafe { ffi::hmm_rs_make_exclusive(mm.raw(), start, end, pfns.as_mut_ptr()) };
        // An error (no VMA, a page GUP cannot take) is "no page made
        // exclusive": -EBUSY below, test_hmm's answer.
        let got = usize::try_from(got).unwrap_or(0).min(ffi::EXCLUSIVE_BATCH);
        let mut mapped = 0;
        let mut res = Ok(());
        if got == n {
            // Mapped while the pages are still locked: a CPU fault that
            // restores one (and invalidates this entry) must wait for us.
            let _pt = self.lock();
            let first = start >> PAGE_SHIFT;
            for (vpfn, &pfn) in (first..).zip(pfns[..n].iter()) {
                if pfn == 0 {
                    continue;
                }
                // SAFETY: mutex held; `pfn` is locked and referenced by the
                // exclusive entry until an invalidation erases this entry.
                let r = unsafe { ffi::hmm_rs_pt_store(self.raw, vpfn, pfn, ffi::TAG_ATOMIC) };
                if r != 0 {
                    res = Err(Error::from_errno(r));
                    break;
                }
                mapped += 1;
            }
        }
        // SAFETY: `pfns[..got]` are what hmm_rs_make_exclusive returned.
        unsafe { ffi::hmm_rs_exclusive_done(pfns.as_ptr(), got as u32) };
        res?;
        if mapped < n {
            return Err(EBUSY);
        }
        Ok(())
    }

    /// `CHECK_EXCLUSIVE`: `-EPERM` while any mapped page of the range is
    /// still atomic (only existing entries are looked at).
    fn check_exclusive(&self, cmd: &Cmd) -> Result {
        let (start, end) = span(cmd)?;
        let _pt = self.lock();
        // SAFETY: the mutex is held (`_pt`).
        if unsafe {
            ffi::hmm_rs_pt_any_atomic(self.raw, start >> PAGE_SHIFT, (end - 1) >> PAGE_SHIFT)
        } {
            return Err(EPERM);
        }
        Ok(())
    }

    /// `SNAPSHOT`: one `HMM_DMIRROR_PROT_*` byte per page, without faulting.
    fn snapshot(&self, cmd: &mut Cmd) -> Result {
        let (start, end) = span(cmd)?;
        // SAFETY: `raw` is live for the whole ioctl.
        let mm = unsafe { MmWithUser::get(self.raw) }.ok_or(EINVAL)?;
        let env = Env::new(&mm, &mm);
        // SAFETY: `raw` is live for the whole ioctl.
        let notifier = unsafe { MirrorNotifier::new(self.raw) };
        // SAFETY: no preconditions.
        let zero_pfn = unsafe { ffi::hmm_rs_zero_pfn() };
        let mut pfns = KVVec::from_elem(0u64, RANGE_CHUNK, GFP_KERNEL).map_err(|_| ENOMEM)?;
        let mut perm = [0u8; RANGE_CHUNK];
        let mut stats = Stats::default();
        let mut addr = start;
        while addr < end {
            if mm.fatal_signal_pending() {
                return Err(EINTR);
            }
            let next = range_chunk_end(addr, end).ok_or_else(eoverflow)?;
            let n = pages(addr, next);
            let deadline = mm.now_ns().saturating_add(TIMEOUT_NS);
            loop {
                if mm.now_ns() > deadline {
                    return Err(errno(core_::Error::Busy));
                }
                pfns[..n].fill(0);
                let mut range = Range::new(addr, next, &mut pfns[..n])
                    .with_owner(self.owner())
                    .with_notifier(&notifier);
                range.notifier_seq = notifier.read_begin();
                let out = core_::range_fault(&env, &mut range, mm.read(), &mut stats);
                drop(out.guard);
                match out.result {
                    Ok(()) => {}
                    Err(core_::Error::Busy) => continue,
                    Err(e) => return Err(errno(e)),
                }
                let seq = range.notifier_seq;
                let _pt = self.lock();
                if notifier.read_retry(seq) {
                    continue;
                }
                let span = devmem::DevmemSpan::get();
                let owner = self.owner();
                for (p, &w) in perm[..n].iter_mut().zip(range.pfns.iter()) {
                    *p = prot(HmmPfn(w), zero_pfn, owner, span);
                }
                break;
            }
            // `cpages` pages are written already: the next byte goes there.
            let uoff = usize::try_from(cmd.cpages).map_err(|_| EFAULT)?;
            UserSlice::new(user_ptr(cmd.ptr, uoff)?, n)
                .writer()
                .write_slice(&perm[..n])?;
            cmd.cpages = cmd.cpages.saturating_add(n as u64);
            addr = next;
        }
        Ok(())
    }

    fn ioctl(&self, command: u32, arg: usize) -> Result {
        // Unknown commands are refused before the argument is touched.
        if !matches!(
            command,
            HMM_DMIRROR_READ
                | HMM_DMIRROR_READ_UNLOCKED
                | HMM_DMIRROR_WRITE
                | HMM_DMIRROR_MIGRATE_TO_DEV
                | HMM_DMIRROR_MIGRATE_TO_SYS
                | HMM_DMIRROR_SNAPSHOT
                | HMM_DMIRROR_EXCLUSIVE
                | HMM_DMIRROR_CHECK_EXCLUSIVE
                | HMM_DMIRROR_RELEASE
                | HMM_DMIRROR_FLAGS
        ) {
            return Err(ENOTTY);
        }
        let mut raw = [0u8; CMD_SIZE];
        let (mut reader, mut writer) = UserSlice::new(arg, CMD_SIZE).reader_writer();
        reader.read_slice(&mut raw)?;
        let mut cmd = Cmd::decode(&raw);
        cmd.cpages = 0;
        cmd.faults = 0;
        // test_hmm checks the range of every command, FLAGS included.
        span(&cmd)?;
        match command {
            HMM_DMIRROR_READ => self.read(&mut cmd, Path::Locked)?,
            HMM_DMIRROR_READ_UNLOCKED => self.read(&mut cmd, Path::Unlocked)?,
            HMM_DMIRROR_WRITE => self.write(&mut cmd)?,
            HMM_DMIRROR_MIGRATE_TO_DEV => self.migrate_to_dev(&mut cmd)?,
            HMM_DMIRROR_MIGRATE_TO_SYS => self.migrate_to_sys(&mut cmd)?,
            HMM_DMIRROR_SNAPSHOT => self.snapshot(&mut cmd)?,
            HMM_DMIRROR_EXCLUSIVE => self.exclusive(&mut cmd)?,
            HMM_DMIRROR_CHECK_EXCLUSIVE => self.check_exclusive(&cmd)?,
            // SAFETY: `raw` is live (type invariant); no lock is held.
            HMM_DMIRROR_RELEASE => unsafe { ffi::hmm_rs_mirror_release_devmem(self.raw) },
            _ => {
                // HMM_DMIRROR_FLAGS.
                // SAFETY: `raw` is live (type invariant).
                unsafe { ffi::hmm_rs_mirror_set_flags(self.raw, cmd.npages) }
            }
        }
        writer.write_slice(&cmd.encode())
    }
}

/// Check a command's range like test_hmm (page-aligned `addr`, at least one
/// page, no wrap) and return `(start, end)`; `-EINVAL` otherwise. A `npages`
/// whose byte size does not fit in 64 bits is `-EINVAL` too.
fn span(cmd: &Cmd) -> Result<(u64, u64)> {
    if cmd.addr & (PAGE_SIZE - 1) != 0 {
        return Err(EINVAL);
    }
    let bytes = cmd.npages.checked_mul(PAGE_SIZE).ok_or(EINVAL)?;
    let end = cmd.addr.checked_add(bytes).ok_or(EINVAL)?;
    if end <= cmd.addr {
        return Err(EINVAL);
    }
    Ok((cmd.addr, end))
}

/// The end of the range-fault chunk that starts at `addr`: 64 pages on, or
/// `end`. `None` where `addr + 64 pages` is beyond 2^64: test_hmm computes
/// that end with wrapping arithmetic and fails the chunk (`-EINVAL` from
/// `walk_page_range` for READ and WRITE, `-EOVERFLOW` from
/// `mmu_interval_notifier_insert` for SNAPSHOT); the callers give the same
/// answers.
pub(crate) fn chunk_end(addr: u64, end: u64) -> Option<u64> {
    addr.checked_add(CHUNK_BYTES).map(|e| e.min(end))
}

/// The end of the SNAPSHOT or READ / WRITE range-fault chunk that starts at
/// `addr`: [`RANGE_CHUNK`] pages on, or `end`. The chunks start on
/// test_hmm's 64-page grid from the command's address; where a whole chunk
/// would end beyond 2^64 they fall back to test_hmm's 64 pages, so the
/// error of [`chunk_end`] comes at the chunk where test_hmm's comes, after
/// the same pages.
fn range_chunk_end(addr: u64, end: u64) -> Option<u64> {
    let small = chunk_end(addr, end)?;
    Some(
        addr.checked_add(RANGE_CHUNK_BYTES)
            .map_or(small, |e| e.min(end)),
    )
}

/// Pages in `[start, end)`, page-aligned with `start <= end` and at most
/// [`BOUNCE_PAGES`] pages apart (a range-fault or bounce chunk).
fn pages(start: u64, end: u64) -> usize {
    ((end - start) >> PAGE_SHIFT) as usize
}

/// Whether `[start, end)` maps any part of a PMD-sized transparent huge
/// page (a present leaf of order > 0 outside hugetlb).
fn has_pmd_thp(guard: &crate::kmm::MmapReadGuard<'_>, start: u64, end: u64) -> bool {
    use crate::hmm_core::{Leaf, MmView};
    let Some(vma) = guard.find_vma(start) else {
        return false;
    };
    if vma.start() > start || vma.hugetlb_order() != 0 {
        return false;
    }
    let mut found = false;
    guard.walk_leaves(&vma, start, end.min(vma.end()), |_, _, leaf| {
        if let Leaf::Present(p) = leaf {
            if p.order > 0 {
                found = true;
                return core::ops::ControlFlow::Break(());
            }
        }
        core::ops::ControlFlow::Continue(())
    });
    found
}

/// The user address `ptr + off`; `-EFAULT` if it is beyond the address
/// space (the access itself is checked by `UserSlice`).
fn user_ptr(ptr: u64, off: usize) -> Result<usize> {
    usize::try_from(ptr)
        .ok()
        .and_then(|p| p.checked_add(off))
        .ok_or(EFAULT)
}

/// test_hmm's `dmirror_mkentry` for a device-private device `owner`.
fn prot(p: HmmPfn, zero_pfn: u64, owner: u64, span: devmem::DevmemSpan) -> u8 {
    if p.is_error() {
        return PROT_ERROR;
    }
    if !p.is_valid() {
        return PROT_NONE;
    }
    let mut b = match span.devmem(p.pfn()) {
        DevPage::System if p.pfn() == zero_pfn => PROT_ZERO,
        DevPage::System => PROT_NONE,
        DevPage::Private(o) if o == owner => PROT_DEV_PRIVATE_LOCAL,
        DevPage::Private(_) => PROT_DEV_PRIVATE_REMOTE,
        DevPage::Coherent(o) if o == owner => PROT_DEV_COHERENT_LOCAL,
        DevPage::Coherent(_) => PROT_DEV_COHERENT_REMOTE,
    };
    b |= if p.is_writable() {
        PROT_WRITE
    } else {
        PROT_READ
    };
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
    migrate_owner: u64,
) -> bool {
    // This device's own migrations keep the device page table as it is,
    // as test_hmm does: a migration to the device collects the range with
    // the device's pages in it (they stay and stay mapped), and every page
    // that leaves the device is unmapped by `devmem` itself.
    // SAFETY: `m` is live (caller).
    if migrate_owner != 0 && migrate_owner == unsafe { ffi::hmm_rs_mirror_owner(m) } {
        return true;
    }
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
pub(crate) unsafe extern "C" fn hmm_rs_mirror_ioctl(
    m: *mut RawMirror,
    cmd: c_uint,
    arg: c_ulong,
) -> c_long {
    let mirror = Mirror { raw: m };
    match mirror.ioctl(cmd, arg as usize) {
        Ok(()) => 0,
        Err(e) => e.to_errno() as c_long,
    }
}

/// `mmap` of the device file (called by the shim): zeroed pages inserted
/// with `vm_insert_page`, which makes the VMA `VM_MIXEDMAP`. At most
/// [`MMAP_MAX_PAGES`] pages (`-ENOMEM` beyond); the pages are charged to the
/// caller's memory cgroup, and a fatal signal stops the loop (`-EINTR`).
///
/// # Safety
///
/// `vma` must be the VMA being set up by this `mmap` call.
#[no_mangle]
pub(crate) unsafe extern "C" fn hmm_rs_mirror_mmap(
    _m: *mut RawMirror,
    vma: *mut VmAreaStruct,
) -> c_int {
    let (mut start, mut end) = (0u64, 0u64);
    // SAFETY: `vma` is valid (caller); the out-pointers are valid.
    unsafe { ffi::hmm_rs_vma_bounds(vma, &mut start, &mut end) };
    if end.saturating_sub(start) > MMAP_MAX_PAGES << PAGE_SHIFT {
        return ENOMEM.to_errno();
    }
    let mut addr = start;
    while addr < end {
        // SAFETY: no preconditions; reads `current`'s signal state.
        if unsafe { ffi::hmm_rs_fatal_signal_pending() } {
            return EINTR.to_errno();
        }
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
