//! The page-fault handler (`handle_mm_fault`), implementing
//! [`hmm_core::FaultHandler`].
//!
//! The handler runs with only the mmap read lock held. It finds the VMA,
//! takes the page-table lock to inspect and change entries, and drops the
//! page-table lock around anything that sleeps or calls notifiers (COW
//! breaks, device-private migration back to RAM, device-exclusive
//! restoration), re-checking the entry before changing it. It handles:
//! anonymous, file (page cache), THP and hugetlb faults; COW (including
//! private file pages and huge pages); swap-in; migration-entry waits;
//! device-private pages (`migrate_to_ram` through the owner's pagemap);
//! device-exclusive entries; hwpoison and PTE markers; and userfaultfd
//! MISSING / WP / MINOR faults, which may drop the mmap lock (see
//! [`userfaultfd`](crate::userfaultfd)).

use std::sync::atomic::Ordering;

use hmm_core::{FaultFlags, FaultHandler, FaultOutcome, VmFaultError, VmFlags, PAGE_SIZE};

use crate::frame::{FrameKind, HUGE_ZERO_PFN, ZERO_PFN};
use crate::mm::{Mm, MmHandle, MmReadGuard};
use crate::notifier::{Event, InvalidateRange};
use crate::pagetable::{
    Pte, Slot, MARKER_GUARD, MARKER_POISON, MARKER_UFFD_WP, PMD_SHIFT, PMD_SIZE, PTE_SHIFT,
};
use crate::userfaultfd::{handle_userfault, Reason};
use crate::vma::{Backing, VmaInfo};

/// What one pass of the fault logic decided.
enum Step {
    Done,
    Error(VmFaultError),
    /// The entry changed under us: evaluate again.
    Again,
    Userfault(Reason),
    WaitMigration,
}

impl<'h> FaultHandler<MmHandle<'h>> for MmHandle<'h> {
    fn fault<'a>(
        &self,
        guard: MmReadGuard<'a>,
        addr: u64,
        flags: FaultFlags,
    ) -> FaultOutcome<MmReadGuard<'a>>
    where
        MmHandle<'h>: 'a,
    {
        handle_mm_fault(guard, addr, flags)
    }

    fn migration_wait(&self, guard: &MmReadGuard<'_>, addr: u64) {
        guard.task().wait_point();
        guard.mm().migration_entry_wait(addr);
    }
}

/// `handle_mm_fault`: fault the page at `addr` with `flags`, holding the
/// mmap read lock `g`. The outcome gives the guard back unless a
/// userfaultfd wait dropped the lock.
pub fn handle_mm_fault(
    g: MmReadGuard<'_>,
    addr: u64,
    flags: FaultFlags,
) -> FaultOutcome<MmReadGuard<'_>> {
    let mm = g.mm();
    mm.stats.faults.fetch_add(1, Ordering::Relaxed);
    let addr = addr & !(PAGE_SIZE - 1);
    let Some(vma) = mm.vmas().lookup(addr).cloned() else {
        return FaultOutcome::Error(g, VmFaultError::Sigsegv);
    };
    let write = flags.contains(FaultFlags::WRITE);
    if (write && !vma.flags.contains(VmFlags::WRITE))
        || !vma
            .flags
            .intersects(VmFlags::READ | VmFlags::WRITE | VmFlags::EXEC)
    {
        return FaultOutcome::Error(g, VmFaultError::Sigsegv);
    }
    if vma.flags.intersects(VmFlags::PFNMAP | VmFlags::IO) {
        return FaultOutcome::Error(g, VmFaultError::Sigbus);
    }
    loop {
        let step = if vma.is_hugetlb() {
            hugetlb_fault(mm, &vma, addr, write)
        } else {
            fault_once(mm, &vma, addr, write)
        };
        match step {
            Step::Done => return FaultOutcome::Done(g),
            Step::Error(e) => return FaultOutcome::Error(g, e),
            Step::Again => continue,
            Step::Userfault(reason) => return handle_userfault(g, &vma, addr, flags, reason),
            Step::WaitMigration => {
                g.task().wait_point();
                mm.migration_entry_wait(addr);
                return FaultOutcome::Done(g);
            }
        }
    }
}

fn uffd_missing(vma: &VmaInfo) -> bool {
    vma.uffd.as_ref().is_some_and(|r| r.missing)
}

fn uffd_wp(vma: &VmaInfo) -> bool {
    vma.uffd.as_ref().is_some_and(|r| r.wp)
}

fn store(e: &std::sync::atomic::AtomicU64, p: Pte) {
    e.store(p.encode(), Ordering::Release);
}

/// The first checks of a fault on a present entry (writable `pw`,
/// userfaultfd-write-protected `wp`): nothing to do unless a `write` finds
/// it read-only, and a write to a page write-protected under a `WP`
/// registration goes to userfaultfd. `None`: the write fault goes on.
fn present_first(vma: &VmaInfo, write: bool, pw: bool, wp: bool) -> Option<Step> {
    if !write || pw {
        return Some(Step::Done);
    }
    if wp && uffd_wp(vma) {
        return Some(Step::Userfault(Reason::Wp));
    }
    None
}

/// The end of a COW break, entered with the page-table lock dropped and
/// `new` holding the copy of `old`: invalidate `[start, start + size)`,
/// retake the page-table lock and, unless `e` changed from `w` meanwhile
/// (then `new` is freed and the fault evaluated again), install `new`
/// writable (`huge` for a PMD-level leaf) and release `old`.
#[allow(clippy::too_many_arguments)]
fn cow_install(
    mm: &Mm,
    e: &std::sync::atomic::AtomicU64,
    w: u64,
    old: u64,
    new: u64,
    start: u64,
    size: u64,
    huge: bool,
) -> Step {
    let frames = &mm.machine.frames;
    let _inv = mm.notifiers.invalidate_range_start(&InvalidateRange::new(
        start,
        start + size,
        Event::Clear,
    ));
    let _ptl = mm.ptl();
    if e.load(Ordering::Acquire) != w {
        frames.put(new);
        return Step::Again;
    }
    store(e, Pte::present(new, true, huge));
    frames.put(old);
    mm.stats.cow.fetch_add(1, Ordering::Relaxed);
    Step::Done
}

fn fault_once(mm: &Mm, vma: &VmaInfo, addr: u64, write: bool) -> Step {
    let frames = &mm.machine.frames;
    let vm_write = vma.flags.contains(VmFlags::WRITE);
    let ptl = mm.ptl();
    let pmd = match mm.tables.slot(mm.root, addr, PMD_SHIFT, true) {
        Slot::At(e) => e,
        _ => return Step::Error(VmFaultError::Sigbus),
    };
    let w = pmd.load(Ordering::Acquire);
    match Pte::decode(w, true) {
        Pte::None => {
            if vma.thp_eligible(addr) {
                if uffd_missing(vma) {
                    return Step::Userfault(Reason::Missing);
                }
                if !write {
                    // do_huge_pmd_anonymous_page with use_zero_page: a
                    // read maps the huge zero page.
                    store(pmd, Pte::present(HUGE_ZERO_PFN, false, true));
                    return Step::Done;
                }
                if let Some(head) = mm.machine.alloc(9, FrameKind::System) {
                    store(pmd, Pte::present(head, vm_write, true));
                    return Step::Done;
                }
                // No huge page: fall back to small pages, as Linux does.
            }
            // pte_alloc: the page-table page is an allocation too.
            if mm.machine.inject.should_fail_alloc() {
                return Step::Error(VmFaultError::Oom);
            }
            let id = mm.tables.alloc();
            store(pmd, Pte::Table(id));
        }
        Pte::Table(_) => {}
        Pte::Present {
            pfn,
            write: pw,
            uffd_wp: wp,
            ..
        } => {
            if let Some(step) = present_first(vma, write, pw, wp) {
                return step;
            }
            if pfn != HUGE_ZERO_PFN && frames.refcount(pfn) == 1 {
                store(pmd, Pte::present(pfn, true, true));
                return Step::Done;
            }
            drop(ptl);
            // Shared THP or the huge zero page: split the mapping and
            // break COW on the small page.
            mm.split_pmd(addr);
            return Step::Again;
        }
        Pte::Migration { .. } => return Step::WaitMigration,
        Pte::DevicePrivate { pfn, write: dw } => {
            drop(ptl);
            return match mm.migrate_to_ram_huge(pmd, w, addr, pfn, dw && vm_write) {
                Ok(()) => Step::Done,
                Err(e) => Step::Error(e),
            };
        }
        _ => return Step::Error(VmFaultError::Sigbus),
    }
    let Slot::At(pte) = mm.tables.slot(mm.root, addr, PTE_SHIFT, true) else {
        return Step::Again;
    };
    let w = pte.load(Ordering::Acquire);
    match Pte::decode(w, false) {
        p @ (Pte::None | Pte::Marker(_)) => {
            if let Pte::Marker(m) = p {
                if m & MARKER_POISON != 0 {
                    return Step::Error(VmFaultError::HwPoison);
                }
                if m & MARKER_GUARD != 0 {
                    return Step::Error(VmFaultError::Sigsegv);
                }
                if m & MARKER_UFFD_WP != 0 && write && uffd_wp(vma) {
                    return Step::Userfault(Reason::Wp);
                }
            }
            // shmem_get_folio: a cached page goes to a MINOR registration,
            // a missing one to a MISSING registration.
            let cached = match &vma.backing {
                Backing::File { file, .. } => file.lookup(vma.file_offset(addr)).is_some(),
                _ => false,
            };
            if cached && vma.uffd_minor() {
                return Step::Userfault(Reason::Minor);
            }
            if !cached && uffd_missing(vma) {
                return Step::Userfault(Reason::Missing);
            }
            match &vma.backing {
                Backing::Anon => {
                    if !write {
                        store(pte, Pte::present(ZERO_PFN, false, false));
                    } else {
                        let Some(p) = mm.machine.alloc(0, FrameKind::System) else {
                            return Step::Error(VmFaultError::Oom);
                        };
                        store(pte, Pte::present(p, true, false));
                    }
                }
                Backing::File { file, .. } => {
                    let off = vma.file_offset(addr);
                    let psize = PAGE_SIZE << file.order();
                    let Some(head) = file.find_or_create(off) else {
                        return Step::Error(VmFaultError::Oom);
                    };
                    let pfn = head + (off % psize) / PAGE_SIZE;
                    if !vma.is_cow() {
                        frames.get(pfn);
                        store(pte, Pte::present(pfn, vm_write, false));
                    } else if !write {
                        frames.get(pfn);
                        store(pte, Pte::present(pfn, false, false));
                    } else {
                        let Some(p) = mm.machine.alloc(0, FrameKind::System) else {
                            return Step::Error(VmFaultError::Oom);
                        };
                        frames.copy_page(pfn, p);
                        store(pte, Pte::present(p, true, false));
                    }
                }
                Backing::Pfnmap { .. } | Backing::Mixedmap => {
                    return Step::Error(VmFaultError::Sigbus)
                }
            }
            Step::Done
        }
        Pte::Present {
            pfn,
            write: pw,
            uffd_wp: wp,
            special,
            ..
        } => {
            if let Some(step) = present_first(vma, write, pw, wp) {
                return step;
            }
            if !vma.is_cow() {
                store(pte, Pte::present(pfn, true, false));
                return Step::Done;
            }
            let exclusive = pfn != ZERO_PFN
                && !special
                && frames.refcount(pfn) == 1
                && frames.kind(pfn) == FrameKind::System;
            if exclusive {
                store(pte, Pte::present(pfn, true, false));
                return Step::Done;
            }
            drop(ptl);
            let Some(new) = mm.machine.alloc(0, FrameKind::System) else {
                return Step::Error(VmFaultError::Oom);
            };
            if pfn != ZERO_PFN {
                frames.copy_page(pfn, new);
            }
            cow_install(mm, pte, w, pfn, new, addr, PAGE_SIZE, false)
        }
        Pte::Swap { slot, write: sw } => {
            drop(ptl);
            let Some(new) = mm.machine.alloc(0, FrameKind::System) else {
                return Step::Error(VmFaultError::Oom);
            };
            mm.machine.swap_in(slot, new);
            let _ptl = mm.ptl();
            if pte.load(Ordering::Acquire) != w {
                frames.put(new);
                return Step::Again;
            }
            store(pte, Pte::present(new, sw && vm_write, false));
            mm.machine.swap_free(slot);
            Step::Done
        }
        Pte::Migration { .. } => Step::WaitMigration,
        Pte::DevicePrivate { pfn, write: dw } => {
            drop(ptl);
            match mm.migrate_to_ram_one(pte, w, addr, pfn, dw && vm_write) {
                Ok(()) => Step::Done,
                Err(e) => Step::Error(e),
            }
        }
        Pte::DeviceExclusive { pfn, write: ew } => {
            drop(ptl);
            let _inv = mm.notifiers.invalidate_range_start(&InvalidateRange::new(
                addr,
                addr + PAGE_SIZE,
                Event::Exclusive,
            ));
            let _ptl = mm.ptl();
            if pte.load(Ordering::Acquire) == w {
                store(pte, Pte::present(pfn, ew, false));
            }
            Step::Again
        }
        Pte::HwPoison { .. } => Step::Error(VmFaultError::HwPoison),
        Pte::Table(_) => Step::Error(VmFaultError::Sigbus),
    }
}

fn hugetlb_fault(mm: &Mm, vma: &VmaInfo, addr: u64, write: bool) -> Step {
    let frames = &mm.machine.frames;
    let order = vma.hugetlb_order;
    let shift = PTE_SHIFT + u32::from(order);
    let size = 1u64 << shift;
    let base = addr & !(size - 1);
    let vm_write = vma.flags.contains(VmFlags::WRITE);
    let ptl = mm.ptl();
    let e = match mm.tables.slot(mm.root, base, shift, true) {
        Slot::At(e) | Slot::Huge(e, _) => e,
        Slot::Missing(_) => return Step::Again,
    };
    let w = e.load(Ordering::Acquire);
    match Pte::decode(w, true) {
        Pte::Marker(m) if m & MARKER_POISON != 0 => Step::Error(VmFaultError::HwPoison),
        Pte::None => {
            let cached = match &vma.backing {
                Backing::File { file, .. } => file.lookup(vma.file_offset(base)).is_some(),
                _ => false,
            };
            if cached && vma.uffd_minor() {
                return Step::Userfault(Reason::Minor);
            }
            if !cached && uffd_missing(vma) {
                return Step::Userfault(Reason::Missing);
            }
            match &vma.backing {
                Backing::File { file, .. } => {
                    let Some(head) = file.find_or_create(vma.file_offset(base)) else {
                        return Step::Error(VmFaultError::Oom);
                    };
                    frames.get(head);
                    let wr = vm_write && (!vma.is_cow() || write);
                    if vma.is_cow() && write {
                        // Private write fault over a file page: copy now.
                        drop(ptl);
                        frames.put(head);
                        let Some(new) = mm.machine.alloc(order, FrameKind::System) else {
                            return Step::Error(VmFaultError::Oom);
                        };
                        for i in 0..(1u64 << order) {
                            frames.copy_page(head + i, new + i);
                        }
                        let _ptl = mm.ptl();
                        if e.load(Ordering::Acquire) != w {
                            frames.put(new);
                            return Step::Again;
                        }
                        store(e, Pte::present(new, true, true));
                        return Step::Done;
                    }
                    store(e, Pte::present(head, wr, true));
                }
                _ => {
                    let Some(head) = mm.machine.alloc(order, FrameKind::System) else {
                        return Step::Error(VmFaultError::Oom);
                    };
                    store(e, Pte::present(head, vm_write && write, true));
                }
            }
            Step::Done
        }
        Pte::Present {
            pfn,
            write: pw,
            uffd_wp: wp,
            ..
        } => {
            if let Some(step) = present_first(vma, write, pw, wp) {
                return step;
            }
            if !vma.is_cow() || frames.refcount(pfn) == 1 {
                store(e, Pte::present(pfn, true, true));
                return Step::Done;
            }
            drop(ptl);
            let Some(new) = mm.machine.alloc(order, FrameKind::System) else {
                return Step::Error(VmFaultError::Oom);
            };
            for i in 0..(1u64 << order) {
                frames.copy_page(pfn + i, new + i);
            }
            cow_install(mm, e, w, pfn, new, base, size, true)
        }
        Pte::Migration { .. } => Step::WaitMigration,
        _ => Step::Error(VmFaultError::Sigbus),
    }
}

impl Mm {
    /// `migrate_to_ram` for one device-private PTE: copy the device page to
    /// a new system page, replace the entry, tell the owner, free the device
    /// page.
    fn migrate_to_ram_one(
        &self,
        pte: &std::sync::atomic::AtomicU64,
        w: u64,
        addr: u64,
        dev_pfn: u64,
        write: bool,
    ) -> Result<(), VmFaultError> {
        let frames = &self.machine.frames;
        let owner = match frames.kind(dev_pfn) {
            FrameKind::DevicePrivate(o) => o,
            FrameKind::System => 0,
        };
        let new = self
            .machine
            .alloc(0, FrameKind::System)
            .ok_or(VmFaultError::Oom)?;
        frames.copy_page(dev_pfn, new);
        let _inv = self.notifiers.invalidate_range_start(
            &InvalidateRange::new(addr, addr + PAGE_SIZE, Event::Migrate).with_owner(owner),
        );
        let ptl = self.ptl();
        if pte.load(Ordering::Acquire) != w {
            frames.put(new);
            return Ok(());
        }
        store(pte, Pte::present(new, write, false));
        drop(ptl);
        if let Some(pm) = self.machine.pagemap(owner) {
            pm.migrated_to_ram(self.id(), addr, dev_pfn);
        }
        frames.put(dev_pfn);
        self.stats.migrate_to_ram.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// `migrate_to_ram` for a device-private PMD (a device THP) faulted at
    /// `addr`: the whole folio comes back as a system THP. When the
    /// owner's driver fails the large allocation ([`Pagemap::fail_huge_alloc`],
    /// test_hmm's `HMM_DMIRROR_FLAG_FAIL_ALLOC`) or the machine has no
    /// huge page, the device PMD is split and only the faulting page comes
    /// back, as test_hmm falls back to one small page.
    ///
    /// [`Pagemap::fail_huge_alloc`]: crate::machine::Pagemap::fail_huge_alloc
    fn migrate_to_ram_huge(
        &self,
        pmd: &std::sync::atomic::AtomicU64,
        w: u64,
        addr: u64,
        dev_head: u64,
        write: bool,
    ) -> Result<(), VmFaultError> {
        let frames = &self.machine.frames;
        let base = addr & !(PMD_SIZE - 1);
        let owner = match frames.kind(dev_head) {
            FrameKind::DevicePrivate(o) => o,
            FrameKind::System => 0,
        };
        let pagemap = self.machine.pagemap(owner);
        let fail = pagemap
            .as_ref()
            .is_some_and(|pm| pm.fail_huge_alloc(self.id()));
        let new = if fail {
            None
        } else {
            self.machine.alloc(9, FrameKind::System)
        };
        let Some(new) = new else {
            // Split the device folio; the retried fault moves the page at
            // `addr` alone.
            self.split_pmd(addr);
            return Ok(());
        };
        for i in 0..512 {
            frames.copy_page(dev_head + i, new + i);
        }
        let _inv = self.notifiers.invalidate_range_start(
            &InvalidateRange::new(base, base + PMD_SIZE, Event::Migrate).with_owner(owner),
        );
        let ptl = self.ptl();
        if pmd.load(Ordering::Acquire) != w {
            frames.put(new);
            return Ok(());
        }
        store(pmd, Pte::present(new, write, true));
        drop(ptl);
        if let Some(pm) = &pagemap {
            for i in 0..512 {
                pm.migrated_to_ram(self.id(), base + i * PAGE_SIZE, dev_head + i);
            }
        }
        frames.put(dev_head);
        self.stats.migrate_to_ram.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Whether the entry mapping `addr` is a migration entry.
    pub(crate) fn is_migration_entry(&self, addr: u64) -> bool {
        match self.tables.slot(self.root, addr, PTE_SHIFT, false) {
            Slot::At(e) => matches!(
                Pte::decode(e.load(Ordering::Acquire), false),
                Pte::Migration { .. }
            ),
            Slot::Huge(e, _) => matches!(
                Pte::decode(e.load(Ordering::Acquire), true),
                Pte::Migration { .. }
            ),
            Slot::Missing(_) => false,
        }
    }

    /// `migration_entry_wait`: sleep (holding the mmap read lock) until the
    /// entry at `addr` is no longer a migration entry.
    pub fn migration_entry_wait(&self, addr: u64) {
        self.stats.migration_waits.fetch_add(1, Ordering::Relaxed);
        let g = self.migration_wq.lock();
        drop(
            self.migration_wq
                .wait(g, |_| !self.is_migration_entry(addr)),
        );
    }
}
