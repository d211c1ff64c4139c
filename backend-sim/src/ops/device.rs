//! Device memory (`mm/migrate_device.c`, `mm/rmap.c`'s
//! `make_device_exclusive`): migration into device-private memory and
//! back (whole THPs as device THPs, with the small-page fallback), and
//! device-exclusive entries.

use std::sync::atomic::Ordering;

use hmm_core::{FaultFlags, FaultOutcome, VmFlags, PAGE_SIZE};

use super::{store, MovedPage};
use crate::fault::handle_mm_fault;
use crate::frame::{FrameKind, HUGE_ZERO_PFN, ZERO_PFN};
use crate::mm::{Mm, MmReadGuard};
use crate::notifier::{Event, InvalidateRange};
use crate::pagetable::{Pte, Slot, PMD_SHIFT, PMD_SIZE, PTE_SHIFT};
use crate::vma::VmaInfo;
use crate::Errno;

impl Mm {
    /// The VMA a device migration of `[start, end)` works in, with
    /// `migrate_vma_setup`'s checks: the range lies inside one VMA, which is
    /// neither hugetlb nor `VM_PFNMAP` / `VM_IO` / `VM_MIXEDMAP`
    /// (`VM_SPECIAL`); otherwise `-EINVAL`.
    fn migrate_vma(&self, start: u64, end: u64) -> Result<VmaInfo, Errno> {
        let v = self
            .vmas()
            .lookup(start)
            .filter(|v| start < end && end <= v.end)
            .cloned()
            .ok_or(Errno::EINVAL)?;
        let special = VmFlags::PFNMAP | VmFlags::IO | VmFlags::MIXEDMAP;
        if v.is_hugetlb() || v.flags.intersects(special) {
            return Err(Errno::EINVAL);
        }
        Ok(v)
    }

    /// One round of `migrate_vma_setup` (`MIGRATE_VMA_SELECT_SYSTEM`),
    /// `migrate_vma_pages` and `migrate_vma_finalize` into device-private
    /// memory, over `[start, end)` inside one VMA, holding the mmap read
    /// lock `g`. `-EINVAL` where `migrate_vma_setup` refuses: the range is
    /// not inside one VMA, or the VMA is hugetlb or `VM_PFNMAP` / `VM_IO` /
    /// `VM_MIXEDMAP`.
    ///
    /// Which pages move, as in `mm/migrate_device.c`:
    /// * an anonymous page mapped only here, in any VMA: so the
    ///   copy-on-write copies inside a private file mapping move, while
    ///   page-cache pages never do (`migrate_vma_pages` refuses a folio
    ///   with a mapping). The simulator has no reverse map, so a page
    ///   still shared with a forked process stays where Linux would move it
    ///   for both;
    /// * in an anonymous VMA, a hole or the zero page becomes a zero-filled
    ///   device page, unless the VMA is registered for userfaultfd missing
    ///   faults: there `migrate_vma_insert_page` backs off, so the page is
    ///   still missing and the next fault reaches the handler. In a file
    ///   VMA holes and the zero page stay;
    /// * nothing else: device-private, swap, migration, device-exclusive,
    ///   hwpoison and marker entries, special mappings.
    ///
    /// THPs move whole (`MIGRATE_VMA_SELECT_COMPOUND`): a PMD-aligned
    /// block inside `[start, end)` that is a THP mapped only here, the huge
    /// zero page or (in an anonymous THP-eligible VMA, under the same
    /// userfaultfd rule) an empty PMD becomes one device-private PMD over a
    /// device THP, when `alloc_dev(9)` provides one. Otherwise (no device
    /// THP, as with test_hmm's `HMM_DMIRROR_FLAG_FAIL_ALLOC`) the block is
    /// split and migrates page by page, as test_hmm falls back to small
    /// device pages.
    ///
    /// A page whose device page `alloc_dev(0)` cannot provide stays, and
    /// the next one is still tried. The migrated pages, `(addr, device
    /// pfn, writable)` (a moved page keeps its PTE's write permission, a
    /// filled hole gets the VMA's), go to `map` once their entries are in
    /// place, before the old pages are released, as a driver maps them
    /// between `migrate_vma_pages` and `migrate_vma_finalize`; they are
    /// also returned. The invalidation carries `owner`, so the owner's own
    /// mirror may keep its entries.
    pub fn migrate_to_device(
        &self,
        g: &MmReadGuard<'_>,
        start: u64,
        end: u64,
        owner: u64,
        alloc_dev: &mut dyn FnMut(u8) -> Option<u64>,
        map: &mut dyn FnMut(&[MovedPage]),
    ) -> Result<Vec<MovedPage>, Errno> {
        debug_assert!(std::ptr::eq(g.mm(), self));
        let v = self.migrate_vma(start, end)?;
        let frames = &self.machine.frames;
        // migrate_vma_insert_page: only anonymous memory is populated, and
        // not under a userfaultfd MISSING registration.
        let fill = v.is_anon() && !v.uffd_missing();
        let vm_write = v.flags.contains(VmFlags::WRITE);
        // The THPs that move whole: (base, PMD word seen, source head or
        // none for a hole, writable, device head).
        let mut huge: Vec<(u64, u64, Option<u64>, bool, u64)> = Vec::new();
        let mut base = start.next_multiple_of(PMD_SIZE);
        while base >= start && base.checked_add(PMD_SIZE).is_some_and(|e| e <= end) {
            let w = match self.tables.slot(self.root, base, PMD_SHIFT, false) {
                Slot::At(e) => e.load(Ordering::Acquire),
                _ => 0,
            };
            let cand = match Pte::decode(w, true) {
                Pte::None if fill && v.thp_eligible(base) => Some((None, vm_write)),
                Pte::Present { pfn, .. } if pfn == HUGE_ZERO_PFN && fill => Some((None, vm_write)),
                Pte::Present {
                    pfn,
                    write,
                    huge: true,
                    special: false,
                    ..
                } if pfn != HUGE_ZERO_PFN
                    && frames.kind(pfn) == FrameKind::System
                    && frames.order(pfn) == 9
                    && frames.refcount(pfn) == 1 =>
                {
                    Some((Some(pfn), write))
                }
                _ => None,
            };
            if let Some((src, write)) = cand {
                if let Some(dev) = alloc_dev(9) {
                    huge.push((base, w, src, write, dev));
                }
            }
            base += PMD_SIZE;
        }
        // Everything else migrates page by page.
        let mut a = start & !(PMD_SIZE - 1);
        while a < end {
            if !huge.iter().any(|h| h.0 == a) && self.pmd_is_thp_leaf(a) {
                self.split_pmd(a);
            }
            a += PMD_SIZE;
        }
        let inv = self.notifiers.invalidate_range_start(
            &InvalidateRange::new(start, end, Event::Migrate).with_owner(owner),
        );
        let mut out = Vec::new();
        let mut old = Vec::new();
        let ptl = self.ptl();
        for &(base, w, src, write, dev) in &huge {
            let Slot::At(e) = self.tables.slot(self.root, base, PMD_SHIFT, true) else {
                frames.put(dev);
                continue;
            };
            if e.load(Ordering::Acquire) != w {
                // Changed under us: this block stays.
                frames.put(dev);
                continue;
            }
            if let Some(s) = src {
                for i in 0..512 {
                    frames.copy_page(s + i, dev + i);
                }
                old.push(s);
            }
            store(e, Pte::DevicePrivate { pfn: dev, write });
            out.extend((0..512).map(|i| (base + i * PAGE_SIZE, dev + i, write)));
        }
        let mut a = start;
        while a < end {
            let here = a;
            a += PAGE_SIZE;
            if huge.iter().any(|h| here >= h.0 && here < h.0 + PMD_SIZE) {
                continue;
            }
            let cur = match self.tables.slot(self.root, here, PTE_SHIFT, false) {
                Slot::At(e) => Pte::decode(e.load(Ordering::Acquire), false),
                Slot::Missing(_) => Pte::None,
                // A huge leaf that did not split is skipped.
                Slot::Huge(..) => continue,
            };
            let (src, write) = match cur {
                Pte::None => (None, vm_write),
                Pte::Present { pfn, .. } if pfn == ZERO_PFN => (None, vm_write),
                Pte::Present {
                    pfn,
                    write,
                    special: false,
                    ..
                } if frames.kind(pfn) == FrameKind::System
                    && frames.order(pfn) == 0
                    && frames.refcount(pfn) == 1
                    && !v.maps_page_cache(here, pfn) =>
                {
                    (Some(pfn), write)
                }
                _ => continue,
            };
            if src.is_none() && !fill {
                continue;
            }
            let Some(dev) = alloc_dev(0) else { continue };
            let Slot::At(e) = self.tables.slot(self.root, here, PTE_SHIFT, true) else {
                frames.put(dev);
                continue;
            };
            if let Some(s) = src {
                frames.copy_page(s, dev);
                old.push(s);
            }
            store(e, Pte::DevicePrivate { pfn: dev, write });
            out.push((here, dev, write));
        }
        drop(ptl);
        drop(inv);
        map(&out);
        for s in old {
            frames.put(s);
        }
        Ok(out)
    }

    /// One round of `migrate_vma_*` with `MIGRATE_VMA_SELECT_DEVICE_PRIVATE`
    /// (and `MIGRATE_VMA_SELECT_COMPOUND`) back to system memory, over
    /// `[start, end)` inside one VMA (the same `-EINVAL` checks as
    /// [`Mm::migrate_to_device`]): every device-private entry of `owner`
    /// gets a new system page from `alloc(0)` with the device page's
    /// contents, and a device THP a system THP from `alloc(9)`; when that
    /// fails the device THP is split and its pages move one by one. The
    /// owner's pagemap is told (its mirrors drop their entries) before the
    /// device page is released. A page whose system page cannot be
    /// allocated stays on the device (as in Linux, no error). Returns
    /// `(addr, device pfn)` per page moved.
    pub fn migrate_from_device(
        &self,
        g: &MmReadGuard<'_>,
        start: u64,
        end: u64,
        owner: u64,
        alloc: &mut dyn FnMut(u8) -> Option<u64>,
    ) -> Result<Vec<(u64, u64)>, Errno> {
        debug_assert!(std::ptr::eq(g.mm(), self));
        self.migrate_vma(start, end)?;
        let frames = &self.machine.frames;
        // Device THPs of the owner: (base, device head).
        let mut huge = Vec::new();
        {
            let _ptl = self.ptl();
            self.tables
                .for_each_leaf(self.root, start, end, &mut |a, shift, e| {
                    if shift != PMD_SHIFT {
                        return;
                    }
                    if let Pte::DevicePrivate { pfn, .. } =
                        Pte::decode(e.load(Ordering::Acquire), true)
                    {
                        if frames.kind(pfn) == FrameKind::DevicePrivate(owner) {
                            huge.push((a, pfn));
                        }
                    }
                });
        }
        let mut got = Vec::new();
        for (base, dev) in huge {
            let whole = base >= start && base + PMD_SIZE <= end;
            match whole.then(|| alloc(9)).flatten() {
                Some(n) => got.push((base, dev, n)),
                None => self.split_pmd(base),
            }
        }
        let inv = self.notifiers.invalidate_range_start(
            &InvalidateRange::new(start, end, Event::Migrate).with_owner(owner),
        );
        let mut out = Vec::new();
        let mut release = Vec::new();
        let ptl = self.ptl();
        for (base, dev, n) in got {
            let e = match self.tables.slot(self.root, base, PMD_SHIFT, false) {
                Slot::At(e) => e,
                _ => {
                    frames.put(n);
                    continue;
                }
            };
            let Pte::DevicePrivate { pfn, write } = Pte::decode(e.load(Ordering::Acquire), true)
            else {
                frames.put(n);
                continue;
            };
            if pfn != dev {
                frames.put(n);
                continue;
            }
            for i in 0..512 {
                frames.copy_page(dev + i, n + i);
            }
            store(e, Pte::present(n, write, true));
            out.extend((0..512).map(|i| (base + i * PAGE_SIZE, dev + i)));
            release.push(dev);
        }
        self.tables
            .for_each_leaf(self.root, start, end, &mut |a, shift, e| {
                if shift != PTE_SHIFT {
                    return;
                }
                if let Pte::DevicePrivate { pfn, write } =
                    Pte::decode(e.load(Ordering::Acquire), false)
                {
                    if frames.kind(pfn) != FrameKind::DevicePrivate(owner) {
                        return;
                    }
                    let Some(n) = alloc(0) else {
                        return;
                    };
                    frames.copy_page(pfn, n);
                    store(e, Pte::present(n, write, false));
                    out.push((a, pfn));
                    release.push(pfn);
                }
            });
        drop(ptl);
        drop(inv);
        if let Some(pm) = self.machine.pagemap(owner) {
            for &(a, dev) in &out {
                pm.migrated_to_ram(self.id(), a, dev);
            }
        }
        for dev in release {
            frames.put(dev);
        }
        Ok(out)
    }

    /// `make_device_exclusive`: fault `addr` in for write (as GUP would),
    /// then replace its PTE by a device-exclusive entry. Returns the PFN.
    pub fn make_device_exclusive<'a>(
        &'a self,
        mut g: MmReadGuard<'a>,
        addr: u64,
        owner: u64,
    ) -> (MmReadGuard<'a>, Result<u64, Errno>) {
        loop {
            match handle_mm_fault(g, addr, FaultFlags::WRITE | FaultFlags::REMOTE) {
                FaultOutcome::Done(g2) => g = g2,
                FaultOutcome::Error(g2, e) => return (g2, Err(Errno::from(e.to_error()))),
                FaultOutcome::WouldBlock(g2) => return (g2, Err(Errno::EAGAIN)),
                FaultOutcome::Retry | FaultOutcome::Completed => {
                    unreachable!("fault without ALLOW_RETRY dropped the lock")
                }
            }
            let _inv = self.notifiers.invalidate_range_start(
                &InvalidateRange::new(addr, addr + PAGE_SIZE, Event::Exclusive).with_owner(owner),
            );
            let _ptl = self.ptl();
            let Slot::At(e) = self.tables.slot(self.root, addr, PTE_SHIFT, false) else {
                // A THP: split and try again.
                drop(_ptl);
                drop(_inv);
                self.split_pmd(addr);
                continue;
            };
            match Pte::decode(e.load(Ordering::Acquire), false) {
                Pte::Present {
                    pfn,
                    write: true,
                    special: false,
                    ..
                } => {
                    store(e, Pte::DeviceExclusive { pfn, write: true });
                    return (g, Ok(pfn));
                }
                Pte::DeviceExclusive { pfn, .. } => return (g, Ok(pfn)),
                _ => continue,
            }
        }
    }
}
