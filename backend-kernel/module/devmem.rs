// SPDX-License-Identifier: GPL-2.0

//! Device-private memory: migration to and from the device, the CPU fault
//! on a device page, and eviction.
//!
//! Each device owns `MEMORY_DEVICE_PRIVATE` pages (the C shim keeps their
//! pagemaps and free list); a device page in use stores its contents in a
//! system "backing" page, as lib/test_hmm.c simulates device memory. This
//! module decides what moves:
//!
//! * `MIGRATE_TO_DEV` ([`to_device`]): `migrate_vma_setup` with
//!   `MIGRATE_VMA_SELECT_SYSTEM` over each chunk of at most 64 pages of one
//!   VMA, a device page for every collected entry (the source copied, or
//!   zeroes for an empty or zero-page entry; writable if the source was, or
//!   if an empty entry's VMA is writable), `migrate_vma_pages`, the device
//!   page table programmed with the backing pages of what migrated, and
//!   `migrate_vma_finalize`;
//! * `MIGRATE_TO_SYS` ([`to_system`]), the CPU fault on a device page
//!   ([`hmm_rs_devmem_fault`], the pagemap's `migrate_to_ram`) and eviction
//!   ([`hmm_rs_devmem_evict`], for `RELEASE`, a closed file and unload) copy
//!   device pages of this device back into fresh system pages
//!   ([`copy_to_system`]).
//!
//! The mirror ignores the `MMU_NOTIFY_MIGRATE` invalidations its own device
//! starts (a migration to the device collects ranges that hold the device's
//! own pages, which stay mapped), as test_hmm does; so a page that leaves
//! the device through `MIGRATE_TO_SYS` or a CPU fault is unmapped from the
//! device page table of the mirror that migrated it, named by its backing
//! page (which holds a reference on that mirror until `page_free`).
//! Eviction unmaps through the rmap walk's `MMU_NOTIFY_CLEAR`.

use core::ffi::c_int;

use kernel::error::code::{EINTR, EINVAL};
use kernel::prelude::*;

use crate::ffi::{self, RawMigrate, VmAreaStruct};
use crate::hmm_core::{MmapLock, Signals, PAGE_SHIFT, PAGE_SIZE};
use crate::kmm::MmWithUser;
use crate::mirror::{chunk_end, Mirror};

/// Pages per migration (the PFN arrays live on the stack, as in test_hmm).
pub(crate) const BATCH: usize = 64;

/// One `struct migrate_vma` with its source and destination arrays.
struct Migration {
    raw: RawMigrate,
    src: [u64; BATCH],
    dst: [u64; BATCH],
}

impl Migration {
    /// A migration of `[start, end)` (at most [`BATCH`] pages, inside
    /// `vma`) selecting `flags` pages of `owner`; `fault_pfn` is the device
    /// page a CPU fault is migrating, or 0.
    fn new(
        vma: *mut VmAreaStruct,
        start: u64,
        end: u64,
        owner: u64,
        flags: u32,
        fault_pfn: u64,
    ) -> Self {
        Migration {
            raw: RawMigrate {
                vma,
                src: core::ptr::null_mut(),
                dst: core::ptr::null_mut(),
                start,
                end,
                owner,
                fault_pfn,
                npages: 0,
                cpages: 0,
                flags,
                pad: 0,
            },
            src: [0; BATCH],
            dst: [0; BATCH],
        }
    }

    /// Pages in the range (at most [`BATCH`]: the callers build it so).
    fn npages(&self) -> usize {
        (((self.raw.end - self.raw.start) >> PAGE_SHIFT) as usize).min(BATCH)
    }

    /// The raw struct with its array pointers into `self` (which `&mut`
    /// keeps in place for the call).
    fn raw(&mut self) -> *mut RawMigrate {
        self.raw.src = self.src.as_mut_ptr();
        self.raw.dst = self.dst.as_mut_ptr();
        &mut self.raw
    }

    /// `migrate_vma_setup`. The caller holds the mmap read lock of the
    /// VMA's mm, which keeps `vma` valid.
    fn setup(&mut self) -> Result {
        // SAFETY: the VMA is valid under the caller's mmap lock; the arrays
        // have room for the range's pages (at most BATCH).
        let r = unsafe { ffi::hmm_rs_migrate_setup(self.raw()) };
        match r {
            0 => Ok(()),
            e => Err(Error::from_errno(e)),
        }
    }

    /// `migrate_vma_pages`.
    fn pages(&mut self) {
        // SAFETY: `setup` succeeded on this migration, under the same lock.
        unsafe { ffi::hmm_rs_migrate_pages(self.raw()) }
    }

    /// `migrate_vma_finalize`.
    fn finalize(&mut self) {
        // SAFETY: `setup` succeeded on this migration, under the same lock.
        unsafe { ffi::hmm_rs_migrate_finalize(self.raw()) }
    }
}

/// The PFN of a `MIGRATE_PFN_*` word with `MIGRATE_PFN_VALID`.
fn mpfn_page(w: u64) -> Option<u64> {
    (w & ffi::MIGRATE_PFN_VALID != 0).then_some(w >> ffi::MIGRATE_PFN_SHIFT)
}

/// The `MIGRATE_PFN_*` word of a page.
fn migrate_pfn(pfn: u64, write: bool) -> u64 {
    let w = (pfn << ffi::MIGRATE_PFN_SHIFT) | ffi::MIGRATE_PFN_VALID;
    if write {
        w | ffi::MIGRATE_PFN_WRITE
    } else {
        w
    }
}

/// What a page is, as far as device memory goes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum DevPage {
    /// System memory (or no valid page).
    System,
    /// Device-private memory of the device whose owner token this is.
    Private(u64),
    /// Device-coherent memory of the device whose owner token this is.
    Coherent(u64),
}

/// What the page `pfn` is.
pub(crate) fn devmem(pfn: u64) -> DevPage {
    let mut owner = 0u64;
    // SAFETY: no preconditions; the shim checks `pfn_valid`; `owner` is a
    // valid out-pointer.
    match unsafe { ffi::hmm_rs_pfn_devmem(pfn, &mut owner) } {
        ffi::DEVMEM_PRIVATE => DevPage::Private(owner),
        ffi::DEVMEM_COHERENT => DevPage::Coherent(owner),
        _ => DevPage::System,
    }
}

/// The PFN span of all device memory, read once for a batch of pages: a
/// PFN outside it is system memory, known without a call into the shim.
/// A page seen mapped before [`DevmemSpan::get`] is inside the span if it
/// is device memory (the shim publishes a chunk's bounds before its pages).
#[derive(Clone, Copy)]
pub(crate) struct DevmemSpan {
    lo: u64,
    hi: u64,
}

impl DevmemSpan {
    /// The current span.
    pub(crate) fn get() -> Self {
        let (mut lo, mut hi) = (0u64, 0u64);
        // SAFETY: valid out-pointers.
        unsafe { ffi::hmm_rs_devmem_pfn_bounds(&mut lo, &mut hi) };
        DevmemSpan { lo, hi }
    }

    /// [`devmem`], without the call for PFNs outside the span.
    pub(crate) fn devmem(self, pfn: u64) -> DevPage {
        if pfn < self.lo || pfn >= self.hi {
            DevPage::System
        } else {
            devmem(pfn)
        }
    }
}

/// The backing page of the device page `dpfn`, which is in use (mapped or
/// being migrated, so its backing page stays until `page_free`).
pub(crate) fn backing_pfn(dpfn: u64) -> u64 {
    // SAFETY: `dpfn` is a device page in use (caller).
    unsafe { ffi::hmm_rs_devmem_backing_pfn(dpfn) }
}

/// For each collected device page of `src`, a fresh system page holding
/// its contents in `dst` (writable if the source was). `vma` is where the
/// pages are mapped (`alloc_page_vma`), or null for eviction (any node,
/// `__GFP_NOFAIL`). A page whose allocation fails stays on the device.
fn copy_to_system(src: &[u64], dst: &mut [u64], vma: *mut VmAreaStruct, start: u64) {
    let mut addr = start;
    for (s, d) in src.iter().zip(dst.iter_mut()) {
        let here = addr;
        addr = addr.wrapping_add(PAGE_SIZE);
        if s & ffi::MIGRATE_PFN_MIGRATE == 0 {
            continue;
        }
        let Some(spfn) = mpfn_page(*s) else { continue };
        // Only device pages are selected; anything else is left.
        if devmem(spfn) == DevPage::System {
            continue;
        }
        // SAFETY: `vma` is null or valid under the caller's mmap lock.
        let dpfn = unsafe { ffi::hmm_rs_alloc_sys_page(vma, here) };
        if dpfn == 0 {
            continue;
        }
        // SAFETY: `dpfn` is our fresh page; `spfn` is a collected (so
        // referenced and locked) device page, whose backing page lives.
        unsafe { ffi::hmm_rs_copy_page(dpfn, backing_pfn(spfn)) };
        if !vma.is_null() {
            // SAFETY: as above; the page's mirror lives while it does.
            unsafe { ffi::hmm_rs_devmem_unmap(spfn, here) };
        }
        *d = migrate_pfn(dpfn, s & ffi::MIGRATE_PFN_WRITE != 0);
    }
}

/// `MIGRATE_TO_DEV` of `[start, end)`: migrate what can move to this
/// device and map it in the device page table. `-EINVAL` where the range
/// leaves the VMAs or meets one without `VM_READ` (test_hmm's answers);
/// `-EINTR` on a fatal signal between chunks. The caller reads the result
/// back through the device page table.
pub(crate) fn to_device(m: &Mirror, mm: &MmWithUser, start: u64, end: u64) -> Result {
    let guard = mm.read();
    let owner = m.owner();
    let mut addr = start;
    while addr < end {
        if mm.fatal_signal_pending() {
            return Err(EINTR);
        }
        let vma = guard
            .vma_lookup(addr)
            .filter(|v| v.flags & ffi::VM_READ != 0)
            .ok_or(EINVAL)?;
        let next = chunk_end(addr, end).ok_or(EINVAL)?.min(vma.end);
        let mut mig = Migration::new(vma.vma, addr, next, owner, ffi::SELECT_SYSTEM, 0);
        mig.setup()?;
        let n = mig.npages();
        let vma_write = vma.flags & ffi::VM_WRITE != 0;
        for (s, d) in mig.src[..n].iter().zip(mig.dst[..n].iter_mut()) {
            if s & ffi::MIGRATE_PFN_MIGRATE == 0 {
                continue;
            }
            // None: an empty or zero-page entry, migrated as zeroes.
            let spfn = mpfn_page(*s);
            if spfn.is_some_and(|p| devmem(p) != DevPage::System) {
                continue;
            }
            // SAFETY: `m.raw` is live for the ioctl (Mirror invariant).
            let dpfn = unsafe { ffi::hmm_rs_devmem_alloc(m.raw) };
            if dpfn == 0 {
                continue;
            }
            if let Some(p) = spfn {
                // SAFETY: `dpfn` is our fresh device page (its backing page
                // is ours); `p` is a collected, locked system page.
                unsafe { ffi::hmm_rs_copy_page(backing_pfn(dpfn), p) };
            }
            let write = s & ffi::MIGRATE_PFN_WRITE != 0 || (spfn.is_none() && vma_write);
            *d = migrate_pfn(dpfn, write);
        }
        mig.pages();
        let mapped = map_migrated(m, &mig, addr);
        mig.finalize();
        mapped?;
        addr = next;
    }
    Ok(())
}

/// Program the device page table with the backing pages of the entries of
/// `mig` that migrated (test_hmm's `dmirror_migrate_finalize_and_map`).
fn map_migrated(m: &Mirror, mig: &Migration, start: u64) -> Result {
    let n = mig.npages();
    let _pt = m.lock();
    let first = start >> PAGE_SHIFT;
    for (vpfn, (s, d)) in (first..).zip(mig.src[..n].iter().zip(mig.dst[..n].iter())) {
        if s & ffi::MIGRATE_PFN_MIGRATE == 0 {
            continue;
        }
        let Some(dpfn) = mpfn_page(*d) else { continue };
        let tag = if d & ffi::MIGRATE_PFN_WRITE != 0 {
            ffi::TAG_WRITE
        } else {
            ffi::TAG_READ
        };
        // SAFETY: the mutex is held (`_pt`); `dpfn` migrated, so it is
        // mapped and in use until an invalidation (which needs the mutex)
        // erases this entry.
        let r = unsafe { ffi::hmm_rs_pt_store(m.raw, vpfn, backing_pfn(dpfn), tag) };
        if r != 0 {
            return Err(Error::from_errno(r));
        }
    }
    Ok(())
}

/// `MIGRATE_TO_SYS` of `[start, end)`: bring this device's pages back to
/// system memory; `cpages` counts the pages that moved. Errors as
/// [`to_device`].
pub(crate) fn to_system(
    m: &Mirror,
    mm: &MmWithUser,
    start: u64,
    end: u64,
    cpages: &mut u64,
) -> Result {
    let guard = mm.read();
    let owner = m.owner();
    // SAFETY: `m.raw` is live for the ioctl (Mirror invariant).
    let select = if unsafe { ffi::hmm_rs_mirror_coherent(m.raw) } {
        ffi::SELECT_DEVICE_COHERENT
    } else {
        ffi::SELECT_DEVICE_PRIVATE
    };
    let mut addr = start;
    while addr < end {
        if mm.fatal_signal_pending() {
            return Err(EINTR);
        }
        let vma = guard
            .vma_lookup(addr)
            .filter(|v| v.flags & ffi::VM_READ != 0)
            .ok_or(EINVAL)?;
        let next = chunk_end(addr, end).ok_or(EINVAL)?.min(vma.end);
        let mut mig = Migration::new(vma.vma, addr, next, owner, select, 0);
        mig.setup()?;
        let n = mig.npages();
        copy_to_system(&mig.src[..n], &mut mig.dst[..n], vma.vma, addr);
        mig.pages();
        let moved = mig.src[..n]
            .iter()
            .filter(|&&s| s & ffi::MIGRATE_PFN_VALID != 0 && s & ffi::MIGRATE_PFN_MIGRATE != 0)
            .count();
        *cpages = cpages.saturating_add(moved as u64);
        mig.finalize();
        addr = next;
    }
    Ok(())
}

/// Split the PMD-mapped transparent huge pages of `[start, end)` (inside
/// `vma`) into base pages: a `migrate_vma_setup` collection splits each one
/// it meets, and with no destination page nothing moves
/// (`migrate_vma_pages` skips every entry, `migrate_vma_finalize` restores
/// them). `make_device_exclusive_range` needs this: it maps a THP with PTEs
/// and then refuses its tail pages.
pub(crate) fn split_huge(vma: *mut VmAreaStruct, start: u64, end: u64, owner: u64) -> Result {
    let mut mig = Migration::new(vma, start, end, owner, ffi::SELECT_SYSTEM, 0);
    mig.setup()?;
    mig.pages();
    mig.finalize();
    Ok(())
}

/// The pagemap's `migrate_to_ram` (called by the shim with the faulting
/// VMA's mmap lock held and the device page `dpfn` locked): migrate that
/// page to system memory. 0 on success, nonzero for `VM_FAULT_SIGBUS`.
///
/// # Safety
///
/// `vma` must be the faulting VMA, valid under the held mmap lock; `addr`
/// is page aligned inside it and `dpfn` is the device page mapped there.
#[no_mangle]
pub(crate) unsafe extern "C" fn hmm_rs_devmem_fault(
    vma: *mut VmAreaStruct,
    addr: u64,
    dpfn: u64,
    owner: u64,
) -> c_int {
    let mut mig = Migration::new(
        vma,
        addr,
        addr.saturating_add(PAGE_SIZE),
        owner,
        ffi::SELECT_DEVICE_PRIVATE,
        dpfn,
    );
    if mig.setup().is_err() {
        return 1;
    }
    let n = mig.npages();
    copy_to_system(&mig.src[..n], &mut mig.dst[..n], vma, addr);
    mig.pages();
    mig.finalize();
    0
}

/// Evict the device pages `[start_pfn, start_pfn + npages)` to system
/// memory, [`BATCH`] at a time (`migrate_device_range`); pages not in use
/// are skipped. Called by the shim with the device's chunk lock held.
///
/// # Safety
///
/// The range must be device-private pages of a chunk that stays mapped
/// (`memunmap_pages` not yet called) for the call.
#[no_mangle]
pub(crate) unsafe extern "C" fn hmm_rs_devmem_evict(start_pfn: u64, npages: u64) {
    let mut src = [0u64; BATCH];
    let mut dst = [0u64; BATCH];
    let mut done = 0u64;
    while done < npages {
        let n = (npages - done).min(BATCH as u64);
        let k = n as usize;
        src[..k].fill(0);
        dst[..k].fill(0);
        // SAFETY: `[start_pfn + done, + n)` is inside the caller's chunk;
        // the arrays have `n` entries.
        let r = unsafe { ffi::hmm_rs_migrate_device_range(src.as_mut_ptr(), start_pfn + done, n) };
        if r == 0 {
            copy_to_system(&src[..k], &mut dst[..k], core::ptr::null_mut(), 0);
            // SAFETY: `src` was filled by migrate_device_range above.
            unsafe {
                ffi::hmm_rs_migrate_device_pages(src.as_mut_ptr(), dst.as_mut_ptr(), n);
                ffi::hmm_rs_migrate_device_finalize(src.as_mut_ptr(), dst.as_mut_ptr(), n);
            }
        }
        done += n;
    }
}
