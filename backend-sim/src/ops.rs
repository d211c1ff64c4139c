//! CPU-side operations on an mm, callable from any thread: memory access
//! through the page tables (CPU page faults, COW), mmap, munmap, mprotect,
//! mremap, madvise (DONTNEED, HUGEPAGE), fork, swap-out, page migration
//! (with migration entries), hwpoison and THP split.
//!
//! Every operation that revokes or changes a mapping runs the MMU notifier
//! invalidation around the page-table change, as Linux does, so device
//! mirrors stay coherent.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hmm_core::{FaultFlags, FaultOutcome, VmFaultError, VmFlags, PAGE_SIZE};

use crate::fault::handle_mm_fault;
use crate::frame::{FrameKind, ZERO_PFN};
use crate::mm::{Mm, MmReadGuard};
use crate::notifier::{Event, InvalidateRange};
use crate::pagetable::{Pte, Slot, PMD_SHIFT, PMD_SIZE, PTE_SHIFT, PUD_SIZE};
use crate::task::Task;
use crate::userfaultfd::{contexts, UffdMsg};
use crate::vma::{Backing, File, VmaInfo};
use crate::Errno;

/// A page a migration to device memory moved: `(addr, device pfn,
/// writable)`.
pub type MovedPage = (u64, u64, bool);

/// Lowest address the simulated mmap hands out by default.
pub const MMAP_BASE: u64 = 0x10_0000_0000;
/// Permission bits of `vm_flags` that mprotect changes.
const PROT_MASK: VmFlags = VmFlags::READ.union(VmFlags::WRITE).union(VmFlags::EXEC);

fn store(e: &AtomicU64, p: Pte) {
    e.store(p.encode(), Ordering::Release);
}

fn page_aligned(a: u64) -> bool {
    a % PAGE_SIZE == 0
}

/// How a page of the address space is reached by the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
}

impl Mm {
    // ----------------------------------------------------------------- mmap

    fn mmap_vma(&self, hint: Option<u64>, len: u64, mut v: VmaInfo) -> Result<u64, Errno> {
        let align = if v.is_hugetlb() {
            PAGE_SIZE << v.hugetlb_order
        } else if len >= PMD_SIZE {
            PMD_SIZE
        } else {
            PAGE_SIZE
        };
        if len == 0 || len % align != 0 {
            return Err(Errno::EINVAL);
        }
        // get_unmapped_area: the mapping must end within the user address
        // space.
        let limit = hmm_core::TASK_SIZE;
        if len > limit {
            return Err(Errno::ENOMEM);
        }
        let _w = self.write();
        let mut vmas = self.vmas_mut();
        let start = match hint {
            Some(a) => {
                if a % align != 0 {
                    return Err(Errno::EINVAL);
                }
                if a > limit - len {
                    return Err(Errno::ENOMEM);
                }
                if vmas.overlaps(a, a + len) {
                    return Err(Errno::EEXIST);
                }
                a
            }
            None => vmas.free_area(MMAP_BASE, len, align.max(PMD_SIZE)),
        };
        if start > limit - len {
            return Err(Errno::ENOMEM);
        }
        v.start = start;
        v.end = start + len;
        let backing = v.backing.clone();
        let flags = v.flags;
        vmas.insert(v);
        drop(vmas);
        match backing {
            Backing::Pfnmap { base_pfn } => {
                let _ptl = self.ptl();
                for i in 0..len / PAGE_SIZE {
                    if let Slot::At(e) =
                        self.tables
                            .slot(self.root, start + i * PAGE_SIZE, PTE_SHIFT, true)
                    {
                        let p = Pte::Present {
                            pfn: base_pfn + i,
                            write: flags.contains(VmFlags::WRITE),
                            huge: false,
                            special: true,
                            protnone: false,
                            uffd_wp: false,
                        };
                        store(e, p);
                    }
                }
            }
            Backing::Mixedmap => {
                // The driver inserts a page per address (vm_insert_page).
                let _ptl = self.ptl();
                for i in 0..len / PAGE_SIZE {
                    let pfn = self
                        .machine
                        .alloc(0, FrameKind::System)
                        .ok_or(Errno::ENOMEM)?;
                    if let Slot::At(e) =
                        self.tables
                            .slot(self.root, start + i * PAGE_SIZE, PTE_SHIFT, true)
                    {
                        store(e, Pte::present(pfn, flags.contains(VmFlags::WRITE), false));
                    }
                }
            }
            _ => {}
        }
        Ok(start)
    }

    /// `mmap(MAP_PRIVATE | MAP_ANONYMOUS)` with protection `prot`
    /// (`READ`/`WRITE`/`EXEC`); at `addr` if given (`MAP_FIXED_NOREPLACE`).
    pub fn mmap_anon(&self, addr: Option<u64>, len: u64, prot: VmFlags) -> Result<u64, Errno> {
        self.mmap_vma(addr, len, VmaInfo::anon(0, 0, prot & PROT_MASK))
    }

    /// `mmap(MAP_SHARED | MAP_ANONYMOUS)`: a shmem object.
    pub fn mmap_shared_anon(
        &self,
        addr: Option<u64>,
        len: u64,
        prot: VmFlags,
    ) -> Result<u64, Errno> {
        let file = File::new(self.machine.frames.clone(), len, 0);
        self.mmap_file(addr, len, prot, true, &file, 0)
    }

    /// `mmap` of `file` at byte `offset`, shared or private.
    pub fn mmap_file(
        &self,
        addr: Option<u64>,
        len: u64,
        prot: VmFlags,
        shared: bool,
        file: &Arc<File>,
        offset: u64,
    ) -> Result<u64, Errno> {
        let mut flags = prot & PROT_MASK;
        let mut v = VmaInfo::anon(0, 0, flags);
        if file.order() > 0 {
            flags |= VmFlags::HUGETLB;
            v.hugetlb_order = file.order();
        }
        if shared {
            flags |= VmFlags::SHARED;
        }
        v.flags = flags;
        v.backing = Backing::File {
            file: file.clone(),
            offset,
        };
        self.mmap_vma(addr, len, v)
    }

    /// `mmap(MAP_HUGETLB)` with huge pages of `order` (9: 2 MiB, 18: 1 GiB);
    /// private, or shared through a hugetlbfs file.
    pub fn mmap_hugetlb(
        &self,
        addr: Option<u64>,
        len: u64,
        prot: VmFlags,
        order: u8,
        shared: bool,
    ) -> Result<u64, Errno> {
        if order != 9 && order != 18 {
            return Err(Errno::EINVAL);
        }
        if shared {
            let file = File::new(self.machine.frames.clone(), len, order);
            return self.mmap_file(addr, len, prot, true, &file, 0);
        }
        let mut v = VmaInfo::anon(0, 0, (prot & PROT_MASK) | VmFlags::HUGETLB);
        v.hugetlb_order = order;
        self.mmap_vma(addr, len, v)
    }

    /// `remap_pfn_range`: raw PFNs (`VM_PFNMAP`, plus `VM_IO` if `io`).
    pub fn mmap_pfnmap(
        &self,
        addr: Option<u64>,
        len: u64,
        prot: VmFlags,
        base_pfn: u64,
        io: bool,
    ) -> Result<u64, Errno> {
        let mut flags = (prot & PROT_MASK) | VmFlags::PFNMAP | VmFlags::SHARED;
        if io {
            flags |= VmFlags::IO;
        }
        let mut v = VmaInfo::anon(0, 0, flags);
        v.backing = Backing::Pfnmap { base_pfn };
        self.mmap_vma(addr, len, v)
    }

    /// A device's `VM_MIXEDMAP` mapping with a page inserted per address
    /// (what mmap of `/dev/hmm_dmirror` does).
    pub fn mmap_mixedmap(&self, addr: Option<u64>, len: u64, prot: VmFlags) -> Result<u64, Errno> {
        let mut v = VmaInfo::anon(0, 0, (prot & PROT_MASK) | VmFlags::MIXEDMAP);
        v.backing = Backing::Mixedmap;
        self.mmap_vma(addr, len, v)
    }

    /// The VMAs (copies), for inspection.
    pub fn vma_list(&self) -> Vec<VmaInfo> {
        self.vmas().iter().cloned().collect()
    }

    // --------------------------------------------------------- zap & split

    /// Drop what one entry referenced (`zap_pte_range`'s accounting).
    fn release_entry(&self, p: Pte) {
        let frames = &self.machine.frames;
        match p {
            Pte::Present { pfn, special, .. } => {
                if !special {
                    frames.put(pfn);
                }
            }
            Pte::Swap { slot, .. } => self.machine.swap_free(slot),
            Pte::Migration { pfn, .. }
            | Pte::DevicePrivate { pfn, .. }
            | Pte::DeviceExclusive { pfn, .. } => frames.put(pfn),
            Pte::HwPoison { .. } | Pte::Marker(_) | Pte::None | Pte::Table(_) => {}
        }
    }

    /// Clear every entry in `[start, end)` (huge leaves must lie inside).
    /// Caller holds the mmap lock and an invalidation of the range.
    fn zap(&self, start: u64, end: u64) {
        let _ptl = self.ptl();
        self.tables
            .for_each_leaf(self.root, start, end, &mut |_, shift, e| {
                let p = Pte::decode(e.swap(0, Ordering::AcqRel), shift != PTE_SHIFT);
                self.release_entry(p);
            });
    }

    /// `split_huge_pmd`: replace a THP PMD leaf mapping `addr` by a table of
    /// 512 PTEs with the same permissions. Caller holds the mmap lock.
    pub(crate) fn split_pmd(&self, addr: u64) {
        let base = addr & !(PMD_SIZE - 1);
        let is_thp = self.vmas().lookup(addr).is_some_and(|v| !v.is_hugetlb());
        if !is_thp {
            return;
        }
        let _inv = self.notifiers.invalidate_range_start(&InvalidateRange::new(
            base,
            base + PMD_SIZE,
            Event::Clear,
        ));
        let _ptl = self.ptl();
        let Slot::At(pmd) = self.tables.slot(self.root, base, PMD_SHIFT, false) else {
            return;
        };
        let w = pmd.load(Ordering::Acquire);
        match Pte::decode(w, true) {
            Pte::Present {
                pfn,
                write,
                uffd_wp,
                protnone,
                ..
            } => {
                let id = self.tables.alloc();
                let t = self.tables.get(id);
                for (i, e) in t.0.iter().enumerate() {
                    let p = Pte::Present {
                        pfn: pfn + i as u64,
                        write,
                        huge: false,
                        special: false,
                        protnone,
                        uffd_wp,
                    };
                    store(e, p);
                }
                let frames = &self.machine.frames;
                if frames.refcount(pfn) == 1 {
                    // Mapped only here: split the folio too, each subpage
                    // keeping the reference of its own PTE.
                    frames.split(pfn, |_| 1);
                } else {
                    frames.get_many(pfn, 511);
                }
                store(pmd, Pte::Table(id));
            }
            Pte::Migration { .. } | Pte::DevicePrivate { .. } => {}
            _ => {}
        }
    }

    fn pmd_is_thp_leaf(&self, addr: u64) -> bool {
        match self.tables.slot(self.root, addr, PMD_SHIFT, false) {
            Slot::At(e) => matches!(
                Pte::decode(e.load(Ordering::Acquire), true),
                Pte::Present { huge: true, .. }
            ),
            _ => false,
        }
    }

    /// Split THP leaves that straddle `start` or `end`.
    fn split_edges(&self, start: u64, end: u64) {
        for a in [start, end] {
            if a % PMD_SIZE != 0 && self.pmd_is_thp_leaf(a) {
                self.split_pmd(a);
            }
        }
    }

    /// Split every THP leaf in `[start, end)`.
    fn split_all(&self, start: u64, end: u64) {
        let mut a = start & !(PMD_SIZE - 1);
        while a < end {
            if self.pmd_is_thp_leaf(a) {
                self.split_pmd(a);
            }
            a += PMD_SIZE;
        }
    }

    fn check_hugetlb_alignment(&self, start: u64, end: u64) -> Result<(), Errno> {
        for v in self.vmas().overlapping(start, end) {
            if v.is_hugetlb() {
                let size = PAGE_SIZE << v.hugetlb_order;
                if start.max(v.start) % size != 0 || end.min(v.end) % size != 0 {
                    return Err(Errno::EINVAL);
                }
            }
        }
        Ok(())
    }

    /// Split THPs in `[start, start + len)` (`split_huge_pmd` on each).
    pub fn split_huge(&self, task: &Task, start: u64, len: u64) -> Result<(), Errno> {
        let _g = self.read(task);
        self.split_all(start, start + len);
        Ok(())
    }

    // --------------------------------------------------------------- munmap

    /// `munmap`. Delivers `UFFD_EVENT_UNMAP` after the unmap, when
    /// requested by a registered userfaultfd.
    pub fn munmap(&self, task: &Task, start: u64, len: u64) -> Result<(), Errno> {
        let end = start.checked_add(len).ok_or(Errno::EINVAL)?;
        if !page_aligned(start) || !page_aligned(len) || len == 0 {
            return Err(Errno::EINVAL);
        }
        let ctxs = {
            let _w = self.write();
            self.check_hugetlb_alignment(start, end)?;
            self.split_edges(start, end);
            let _inv = self.notifiers.invalidate_range_start(&InvalidateRange::new(
                start,
                end,
                Event::Unmap,
            ));
            self.zap(start, end);
            let gone = self.vmas_mut().remove_range(start, end);
            self.tables.free_range(self.root, start, end);
            contexts(&gone)
        };
        self.uffd_event(task, &ctxs, UffdMsg::Unmap { start, end });
        Ok(())
    }

    // ------------------------------------------------------------- mprotect

    /// `mprotect`: set the permission bits of `[start, start + len)`.
    /// Removing a permission write-protects the mapped entries (and
    /// invalidates); adding one changes no entry (the next fault upgrades).
    pub fn mprotect(&self, start: u64, len: u64, prot: VmFlags) -> Result<(), Errno> {
        let end = start.checked_add(len).ok_or(Errno::EINVAL)?;
        if !page_aligned(start) || !page_aligned(len) {
            return Err(Errno::EINVAL);
        }
        let _w = self.write();
        {
            let vmas = self.vmas();
            let mut a = start;
            for v in vmas.overlapping(start, end) {
                if v.start > a {
                    return Err(Errno::ENOMEM);
                }
                a = v.end;
            }
            if a < end {
                return Err(Errno::ENOMEM);
            }
        }
        self.check_hugetlb_alignment(start, end)?;
        let prot = prot & PROT_MASK;
        let mut revoke = false;
        for v in self.vmas_mut().range_mut(start, end) {
            if !(v.flags & PROT_MASK & !prot).is_empty() {
                revoke = true;
            }
            v.flags = (v.flags & !PROT_MASK) | prot;
        }
        if revoke {
            self.split_edges(start, end);
            let _inv = self.notifiers.invalidate_range_start(&InvalidateRange::new(
                start,
                end,
                Event::ProtectionVma,
            ));
            let writable = prot.contains(VmFlags::WRITE);
            let _ptl = self.ptl();
            self.tables
                .for_each_leaf(self.root, start, end, &mut |_, shift, e| {
                    let p = Pte::decode(e.load(Ordering::Acquire), shift != PTE_SHIFT);
                    let np = match p {
                        Pte::Present {
                            pfn,
                            write,
                            huge,
                            special,
                            protnone,
                            uffd_wp,
                        } => Pte::Present {
                            pfn,
                            write: write && writable,
                            huge,
                            special,
                            protnone,
                            uffd_wp,
                        },
                        Pte::DevicePrivate { pfn, write } => Pte::DevicePrivate {
                            pfn,
                            write: write && writable,
                        },
                        Pte::DeviceExclusive { pfn, write } => Pte::DeviceExclusive {
                            pfn,
                            write: write && writable,
                        },
                        Pte::Swap { slot, write } => Pte::Swap {
                            slot,
                            write: write && writable,
                        },
                        other => other,
                    };
                    store(e, np);
                });
        }
        Ok(())
    }

    // -------------------------------------------------------------- madvise

    /// `madvise(MADV_DONTNEED)`: zap `[start, start + len)`. A registered
    /// userfaultfd with `EVENT_REMOVE` gets `UFFD_EVENT_REMOVE` first (with
    /// the mmap lock dropped while it is delivered, as Linux does).
    pub fn madvise_dontneed(&self, task: &Task, start: u64, len: u64) -> Result<(), Errno> {
        let end = start.checked_add(len).ok_or(Errno::EINVAL)?;
        if !page_aligned(start) || !page_aligned(len) {
            return Err(Errno::EINVAL);
        }
        let ctxs = {
            let _g = self.read_killable(task)?;
            let vmas = self.vmas().overlapping(start, end);
            if vmas.is_empty() {
                return Err(Errno::ENOMEM);
            }
            contexts(&vmas)
        };
        self.uffd_event(task, &ctxs, UffdMsg::Remove { start, end });
        let _g = self.read_killable(task)?;
        let vmas = self.vmas().overlapping(start, end);
        if vmas.iter().any(|v| {
            v.flags
                .intersects(VmFlags::PFNMAP | VmFlags::IO | VmFlags::MIXEDMAP)
        }) {
            return Err(Errno::EINVAL);
        }
        self.check_hugetlb_alignment(start, end)?;
        self.split_edges(start, end);
        let _inv =
            self.notifiers
                .invalidate_range_start(&InvalidateRange::new(start, end, Event::Clear));
        for v in vmas {
            self.zap(start.max(v.start), end.min(v.end));
        }
        Ok(())
    }

    /// `madvise(MADV_HUGEPAGE)`: allow THP in `[start, start + len)`.
    pub fn madvise_hugepage(&self, start: u64, len: u64) -> Result<(), Errno> {
        let _w = self.write();
        for v in self.vmas_mut().range_mut(start, start + len) {
            v.flags |= VmFlags::HUGEPAGE;
        }
        Ok(())
    }

    // --------------------------------------------------------------- mremap

    /// `mremap(old, len, len, MREMAP_MAYMOVE | MREMAP_FIXED [|
    /// MREMAP_DONTUNMAP], new)`: move a mapping (its pages move with it).
    /// `[new, new + len)` is unmapped first. The old range must lie inside
    /// one VMA.
    pub fn mremap(
        &self,
        task: &Task,
        old: u64,
        len: u64,
        new: u64,
        dontunmap: bool,
    ) -> Result<u64, Errno> {
        if !page_aligned(old) || !page_aligned(len) || !page_aligned(new) || len == 0 {
            return Err(Errno::EINVAL);
        }
        if old < new + len && new < old + len {
            return Err(Errno::EINVAL);
        }
        let vma = {
            let _g = self.read(task);
            self.vmas().lookup(old).cloned().ok_or(Errno::EFAULT)?
        };
        if vma.end < old + len || vma.is_hugetlb() {
            return Err(Errno::EFAULT);
        }
        if self.vmas().overlaps(new, new + len) {
            self.munmap(task, new, len)?;
        }
        let _w = self.write();
        self.split_all(old, old + len);
        let _inv = self.notifiers.invalidate_range_start(&InvalidateRange::new(
            old,
            old + len,
            Event::Unmap,
        ));
        let mut moved = VmaInfo {
            start: new,
            end: new + len,
            ..vma.clone()
        };
        if let Backing::File { offset, .. } = &mut moved.backing {
            *offset += old - vma.start;
        }
        {
            let _ptl = self.ptl();
            let mut entries = Vec::new();
            self.tables
                .for_each_leaf(self.root, old, old + len, &mut |a, _, e| {
                    entries.push((a, e.swap(0, Ordering::AcqRel)));
                });
            for (a, w) in entries {
                if let Slot::At(e) = self.tables.slot(self.root, a - old + new, PTE_SHIFT, true) {
                    e.store(w, Ordering::Release);
                }
            }
        }
        let mut vmas = self.vmas_mut();
        let removed = vmas.remove_range(old, old + len);
        if dontunmap {
            for mut v in removed {
                v.uffd = None;
                vmas.insert(v);
            }
        }
        vmas.insert(moved);
        drop(vmas);
        if !dontunmap {
            self.tables.free_range(self.root, old, old + len);
        }
        Ok(new)
    }

    // ----------------------------------------------------------------- fork

    /// `fork`: a child mm with copies of the VMAs. Private mappings share
    /// their pages copy-on-write (both sides write-protected, the parent's
    /// change invalidated); device-exclusive entries are restored first;
    /// device-private entries become read-only in both; swap entries are
    /// duplicated. Shared file mappings are refaulted by the child. The
    /// child has no userfaultfd registrations and no notifiers.
    pub fn fork(&self, task: &Task) -> Arc<Mm> {
        let child = Mm::new(&self.machine);
        let _w = self.write();
        self.wait_no_migration(0, hmm_core::TASK_SIZE);
        let vmas: Vec<VmaInfo> = self.vmas().iter().cloned().collect();
        let frames = &self.machine.frames;
        for v in &vmas {
            let mut cv = v.clone();
            cv.uffd = None;
            child.vmas_mut().insert(cv);
            let copy_shared = matches!(v.backing, Backing::Pfnmap { .. } | Backing::Mixedmap);
            if !v.is_cow() && !copy_shared {
                continue;
            }
            let _inv = if v.is_cow() {
                self.notifiers
                    .invalidate_range_start(&InvalidateRange::new(
                        v.start,
                        v.end,
                        Event::ProtectionPage,
                    ))
                    .ok()
            } else {
                None
            };
            let _ptl = self.ptl();
            let _cptl = child.ptl();
            self.tables
                .for_each_leaf(self.root, v.start, v.end, &mut |a, shift, e| {
                    let p = Pte::decode(e.load(Ordering::Acquire), shift != PTE_SHIFT);
                    let cp = match p {
                        Pte::Present {
                            pfn,
                            write,
                            huge,
                            special,
                            protnone,
                            ..
                        } => {
                            if !special {
                                frames.get(pfn);
                            }
                            let cow = v.is_cow();
                            let np = Pte::Present {
                                pfn,
                                write: write && !cow,
                                huge,
                                special,
                                protnone,
                                uffd_wp: false,
                            };
                            if cow {
                                store(e, np);
                            }
                            np
                        }
                        Pte::DeviceExclusive { pfn, write } => {
                            frames.get(pfn);
                            let np = Pte::present(pfn, false, false);
                            let _ = write;
                            store(e, np);
                            np
                        }
                        Pte::DevicePrivate { pfn, .. } => {
                            frames.get(pfn);
                            let np = Pte::DevicePrivate { pfn, write: false };
                            store(e, np);
                            np
                        }
                        Pte::Swap { slot, write } => Pte::Swap {
                            slot: self.machine.swap_dup(slot),
                            write,
                        },
                        Pte::HwPoison { .. } | Pte::Marker(_) => p,
                        _ => Pte::None,
                    };
                    if cp != Pte::None {
                        if let Slot::At(ce) = child.tables.slot(child.root, a, shift, true) {
                            store(ce, cp);
                        }
                    }
                });
        }
        let _ = task;
        child
    }

    fn wait_no_migration(&self, start: u64, end: u64) {
        loop {
            let mut any = false;
            {
                let _ptl = self.ptl();
                self.tables
                    .for_each_leaf(self.root, start, end, &mut |_, shift, e| {
                        any |= matches!(
                            Pte::decode(e.load(Ordering::Acquire), shift != PTE_SHIFT),
                            Pte::Migration { .. }
                        );
                    });
            }
            if !any {
                return;
            }
            let g = self.migration_wq.lock();
            let gen = *g;
            drop(self.migration_wq.wait(g, |s| *s != gen));
        }
    }

    // ---------------------------------------------------- swap & migration

    /// Swap out the private anonymous pages mapped only here in
    /// `[start, start + len)` (THPs are split first). Returns the pages
    /// swapped.
    pub fn swap_out(&self, task: &Task, start: u64, len: u64) -> Result<u64, Errno> {
        let end = start + len;
        let _g = self.read_killable(task)?;
        let vmas = self.vmas().overlapping(start, end);
        self.split_all(start, end);
        let _inv =
            self.notifiers
                .invalidate_range_start(&InvalidateRange::new(start, end, Event::Clear));
        let frames = &self.machine.frames;
        let mut n = 0;
        for v in vmas.iter().filter(|v| v.is_anon() && !v.is_hugetlb()) {
            let _ptl = self.ptl();
            self.tables.for_each_leaf(
                self.root,
                start.max(v.start),
                end.min(v.end),
                &mut |_, shift, e| {
                    if shift != PTE_SHIFT {
                        return;
                    }
                    if let Pte::Present {
                        pfn,
                        write,
                        special: false,
                        ..
                    } = Pte::decode(e.load(Ordering::Acquire), false)
                    {
                        if frames.kind(pfn) == FrameKind::System
                            && frames.refcount(pfn) == 1
                            && frames.order(pfn) == 0
                        {
                            let slot = self.machine.swap_out(pfn);
                            store(e, Pte::Swap { slot, write });
                            frames.put(pfn);
                            n += 1;
                        }
                    }
                },
            );
        }
        Ok(n)
    }

    /// Migrate the mapped system pages of `[start, start + len)` to new
    /// frames (`move_pages`), in three phases like Linux: install migration
    /// entries (with an invalidation), copy without the mmap lock, then
    /// replace each migration entry by the new page and wake waiters.
    /// `hold` runs between the first and last phase, while the entries are
    /// in place (tests use it to park HMM on them). Returns pages migrated.
    pub fn migrate(
        &self,
        task: &Task,
        start: u64,
        len: u64,
        hold: Option<&dyn Fn()>,
    ) -> Result<u64, Errno> {
        let end = start + len;
        let frames = &self.machine.frames;
        let mut moving: Vec<(u64, u64, bool, u64)> = Vec::new();
        {
            let _g = self.read_killable(task)?;
            self.split_all(start, end);
            let _inv = self.notifiers.invalidate_range_start(&InvalidateRange::new(
                start,
                end,
                Event::Migrate,
            ));
            let _ptl = self.ptl();
            self.tables
                .for_each_leaf(self.root, start, end, &mut |a, shift, e| {
                    if shift != PTE_SHIFT {
                        return;
                    }
                    let w = e.load(Ordering::Acquire);
                    if let Pte::Present {
                        pfn,
                        write,
                        special: false,
                        ..
                    } = Pte::decode(w, false)
                    {
                        if frames.kind(pfn) == FrameKind::System && frames.order(pfn) == 0 {
                            let mw = Pte::Migration { pfn, write }.encode();
                            e.store(mw, Ordering::Release);
                            moving.push((a, pfn, write, mw));
                        }
                    }
                });
        }
        if let Some(h) = hold {
            h();
        }
        let new: Vec<Option<u64>> = moving
            .iter()
            .map(|&(_, old, _, _)| {
                let n = self.machine.alloc(0, FrameKind::System)?;
                frames.copy_page(old, n);
                Some(n)
            })
            .collect();
        let mut done = 0;
        {
            let _g = self.read_nowait_writers(task);
            let _ptl = self.ptl();
            for (&(a, old, write, mw), n) in moving.iter().zip(new) {
                let Slot::At(e) = self.tables.slot(self.root, a, PTE_SHIFT, false) else {
                    if let Some(n) = n {
                        frames.put(n);
                    }
                    continue;
                };
                if e.load(Ordering::Acquire) != mw {
                    // Zapped meanwhile (the zap dropped the old page's ref).
                    if let Some(n) = n {
                        frames.put(n);
                    }
                    continue;
                }
                match n {
                    Some(n) => {
                        store(e, Pte::present(n, write, false));
                        frames.put(old);
                        done += 1;
                    }
                    // No memory: put the old page back (remove_migration_ptes).
                    None => store(e, Pte::present(old, write, false)),
                }
            }
        }
        self.migration_done();
        Ok(done)
    }

    /// `memory_failure` on the page mapped at `addr`: mark the frame
    /// poisoned and replace its mapping by a hwpoison entry. The frame is
    /// never reused.
    pub fn hwpoison(&self, task: &Task, addr: u64) -> Result<(), Errno> {
        let addr = addr & !(PAGE_SIZE - 1);
        let _g = self.read_killable(task)?;
        self.split_all(addr, addr + PAGE_SIZE);
        let _inv = self.notifiers.invalidate_range_start(&InvalidateRange::new(
            addr,
            addr + PAGE_SIZE,
            Event::Clear,
        ));
        let _ptl = self.ptl();
        let Slot::At(e) = self.tables.slot(self.root, addr, PTE_SHIFT, false) else {
            return Err(Errno::EFAULT);
        };
        match Pte::decode(e.load(Ordering::Acquire), false) {
            Pte::Present {
                pfn,
                special: false,
                ..
            } => {
                self.machine.frames.set_poisoned(pfn);
                store(e, Pte::HwPoison { pfn });
                Ok(())
            }
            _ => Err(Errno::EFAULT),
        }
    }

    /// The OOM reaper (`__oom_reap_task_mm`): zap the private anonymous
    /// memory of a dying process with *non-blockable* invalidations. A VMA
    /// whose notifier callbacks would have to sleep (a driver lock is
    /// contended) is skipped, as Linux does, and left for a later pass.
    /// Returns `(vmas reaped, vmas skipped)`.
    pub fn oom_reap(&self, task: &Task) -> Result<(u64, u64), Errno> {
        let _g = self.read_killable(task)?;
        let vmas: Vec<VmaInfo> = self
            .vmas()
            .iter()
            .filter(|v| v.is_anon() && !v.is_hugetlb() && v.is_cow())
            .cloned()
            .collect();
        let (mut reaped, mut skipped) = (0, 0);
        for v in vmas {
            let mut r = InvalidateRange::new(v.start, v.end, Event::Clear);
            r.blockable = false;
            match self.notifiers.invalidate_range_start(&r) {
                Ok(_inv) => {
                    self.split_edges(v.start, v.end);
                    self.zap(v.start, v.end);
                    reaped += 1;
                }
                Err(_) => skipped += 1,
            }
        }
        Ok((reaped, skipped))
    }

    // ----------------------------------------------------- device memory

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
    /// A page whose device page `alloc_dev` cannot provide stays, and the
    /// next one is still tried. The migrated pages, `(addr, device pfn,
    /// writable)` (a moved page keeps its PTE's write permission, a filled
    /// hole gets the VMA's), go to `map` once their entries are in place,
    /// before the old pages are released, as a driver maps them between
    /// `migrate_vma_pages` and `migrate_vma_finalize`; they are also
    /// returned. The invalidation carries `owner`, so the owner's own
    /// mirror may keep its entries.
    pub fn migrate_to_device(
        &self,
        g: &MmReadGuard<'_>,
        start: u64,
        end: u64,
        owner: u64,
        alloc_dev: &mut dyn FnMut() -> Option<u64>,
        map: &mut dyn FnMut(&[MovedPage]),
    ) -> Result<Vec<MovedPage>, Errno> {
        debug_assert!(std::ptr::eq(g.mm(), self));
        let v = self.migrate_vma(start, end)?;
        let frames = &self.machine.frames;
        // migrate_vma_insert_page: only anonymous memory is populated, and
        // not under a userfaultfd MISSING registration.
        let fill = v.is_anon() && !v.uffd_missing();
        let vm_write = v.flags.contains(VmFlags::WRITE);
        self.split_all(start, end);
        let inv = self.notifiers.invalidate_range_start(
            &InvalidateRange::new(start, end, Event::Migrate).with_owner(owner),
        );
        let mut out = Vec::new();
        let mut old = Vec::new();
        let ptl = self.ptl();
        let mut a = start;
        while a < end {
            let here = a;
            a += PAGE_SIZE;
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
            let Some(dev) = alloc_dev() else { continue };
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
    /// back to system memory, over `[start, end)` inside one VMA (the same
    /// `-EINVAL` checks as [`Mm::migrate_to_device`]): every device-private
    /// entry of `owner` gets a new system page with the device page's
    /// contents, and the owner's pagemap is told (its mirrors drop their
    /// entries) before the device page is released. A page whose system
    /// page cannot be allocated stays on the device (as in Linux, no
    /// error). Returns `(addr, device pfn)` per page moved.
    pub fn migrate_from_device(
        &self,
        g: &MmReadGuard<'_>,
        start: u64,
        end: u64,
        owner: u64,
    ) -> Result<Vec<(u64, u64)>, Errno> {
        debug_assert!(std::ptr::eq(g.mm(), self));
        self.migrate_vma(start, end)?;
        let frames = &self.machine.frames;
        let inv = self.notifiers.invalidate_range_start(
            &InvalidateRange::new(start, end, Event::Migrate).with_owner(owner),
        );
        let mut out = Vec::new();
        let ptl = self.ptl();
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
                    let Some(n) = self.machine.alloc(0, FrameKind::System) else {
                        return;
                    };
                    frames.copy_page(pfn, n);
                    store(e, Pte::present(n, write, false));
                    out.push((a, pfn));
                }
            });
        drop(ptl);
        drop(inv);
        let pagemap = self.machine.pagemap(owner);
        for &(a, dev) in &out {
            if let Some(pm) = &pagemap {
                pm.migrated_to_ram(self.id(), a, dev);
            }
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

    // -------------------------------------------------------- CPU access

    /// One CPU access to the page at `addr`: translate, fault if needed
    /// (`USER | ALLOW_RETRY | KILLABLE`, so userfaultfd waits drop the lock
    /// like a real user access), then run `f(pfn)` under the page-table
    /// lock so the access is atomic with respect to concurrent PTE changes.
    fn access_page(
        &self,
        task: &Task,
        addr: u64,
        how: Access,
        f: &mut dyn FnMut(u64),
    ) -> Result<(), Errno> {
        let write = how == Access::Write;
        let mut flags = FaultFlags::USER | FaultFlags::ALLOW_RETRY | FaultFlags::KILLABLE;
        if write {
            flags |= FaultFlags::WRITE;
        }
        loop {
            let g = self.read_killable(task)?;
            {
                let vmas = self.vmas();
                let Some(v) = vmas.lookup(addr) else {
                    return Err(Errno::EFAULT);
                };
                let need = if write { VmFlags::WRITE } else { VmFlags::READ };
                if !v.flags.contains(need) {
                    return Err(Errno::EFAULT);
                }
            }
            {
                let _ptl = self.ptl();
                if let Some(pfn) = self.translate(addr, write) {
                    f(pfn);
                    return Ok(());
                }
            }
            match handle_mm_fault(g, addr, flags) {
                FaultOutcome::Done(_) => {}
                FaultOutcome::Error(_, e) => {
                    return Err(match e {
                        VmFaultError::Oom => Errno::ENOMEM,
                        VmFaultError::HwPoison => Errno::EHWPOISON,
                        _ => Errno::EFAULT,
                    })
                }
                FaultOutcome::WouldBlock(_) => return Err(Errno::EAGAIN),
                FaultOutcome::Retry | FaultOutcome::Completed => {
                    if task.fatal_signal_pending() {
                        return Err(Errno::EINTR);
                    }
                    flags |= FaultFlags::TRIED;
                }
            }
        }
    }

    /// The PFN mapped at `addr` if the mapping allows the access.
    fn translate(&self, addr: u64, write: bool) -> Option<u64> {
        let (w, shift) = match self.tables.slot(self.root, addr, PTE_SHIFT, false) {
            Slot::At(e) => (e.load(Ordering::Acquire), PTE_SHIFT),
            Slot::Huge(e, s) => (e.load(Ordering::Acquire), s),
            Slot::Missing(_) => return None,
        };
        match Pte::decode(w, shift != PTE_SHIFT) {
            Pte::Present {
                pfn,
                write: pw,
                protnone: false,
                special,
                ..
            } if (pw || !write) && (!special || pfn == ZERO_PFN) => {
                let off = (addr & ((1u64 << shift) - 1)) / PAGE_SIZE;
                Some(pfn + off)
            }
            _ => None,
        }
    }

    /// Read `buf.len()` bytes at `addr` as the CPU would.
    pub fn read_bytes(&self, task: &Task, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let frames = &self.machine.frames;
        let mut done = 0usize;
        while done < buf.len() {
            let a = addr + done as u64;
            let off = (a % PAGE_SIZE) as usize;
            let n = (PAGE_SIZE as usize - off).min(buf.len() - done);
            let chunk = &mut buf[done..done + n];
            self.access_page(task, a & !(PAGE_SIZE - 1), Access::Read, &mut |pfn| {
                frames.read(pfn, off, chunk)
            })?;
            done += n;
        }
        Ok(())
    }

    /// Write `buf` at `addr` as the CPU would (faults, COW breaks).
    pub fn write_bytes(&self, task: &Task, addr: u64, buf: &[u8]) -> Result<(), Errno> {
        let frames = &self.machine.frames;
        let mut done = 0usize;
        while done < buf.len() {
            let a = addr + done as u64;
            let off = (a % PAGE_SIZE) as usize;
            let n = (PAGE_SIZE as usize - off).min(buf.len() - done);
            let chunk = &buf[done..done + n];
            self.access_page(task, a & !(PAGE_SIZE - 1), Access::Write, &mut |pfn| {
                frames.write(pfn, off, chunk)
            })?;
            done += n;
        }
        Ok(())
    }

    /// Read `n` native-endian `i32`s at `addr` (the selftests' `int *ptr`).
    pub fn read_i32s(&self, task: &Task, addr: u64, n: usize) -> Result<Vec<i32>, Errno> {
        let mut b = vec![0u8; n * 4];
        self.read_bytes(task, addr, &mut b)?;
        Ok(b.chunks_exact(4)
            .map(|c| i32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// Write `i32`s at `addr`.
    pub fn write_i32s(&self, task: &Task, addr: u64, v: &[i32]) -> Result<(), Errno> {
        let b: Vec<u8> = v.iter().flat_map(|x| x.to_ne_bytes()).collect();
        self.write_bytes(task, addr, &b)
    }

    /// Touch every page of `[addr, addr + len)` for read or write.
    pub fn touch(&self, task: &Task, addr: u64, len: u64, write: bool) -> Result<(), Errno> {
        let how = if write { Access::Write } else { Access::Read };
        let mut a = addr & !(PAGE_SIZE - 1);
        while a < addr + len {
            self.access_page(task, a, how, &mut |_| {})?;
            a += PAGE_SIZE;
        }
        Ok(())
    }

    /// What the CPU page tables map at `addr`: the decoded leaf entry and
    /// the PFN of the 4 KiB page at `addr` (for huge leaves, the subpage).
    pub fn pte_at(&self, addr: u64) -> (Pte, Option<u64>) {
        let (w, shift) = match self.tables.slot(self.root, addr, PTE_SHIFT, false) {
            Slot::At(e) => (e.load(Ordering::Acquire), PTE_SHIFT),
            Slot::Huge(e, s) => (e.load(Ordering::Acquire), s),
            Slot::Missing(_) => return (Pte::None, None),
        };
        let p = Pte::decode(w, shift != PTE_SHIFT);
        let off = (addr & ((1u64 << shift) - 1)) / PAGE_SIZE;
        (p, p.pfn().map(|x| x + off))
    }

    /// Tear the address space down (`exit_mmap`): drop every page.
    pub(crate) fn exit_mmap(&self) {
        let _ptl = self.ptl();
        self.tables.for_each_leaf(
            self.root,
            0,
            hmm_core::TASK_SIZE + PAGE_SIZE,
            &mut |_, shift, e| {
                let p = Pte::decode(e.swap(0, Ordering::AcqRel), shift != PTE_SHIFT);
                self.release_entry(p);
            },
        );
    }
}

/// Size of a PUD leaf, for callers choosing hugetlb sizes.
pub const HUGE_1G: u64 = PUD_SIZE;
/// Size of a PMD leaf.
pub const HUGE_2M: u64 = PMD_SIZE;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Machine;

    const RW: VmFlags = VmFlags::READ.union(VmFlags::WRITE);

    fn setup() -> (Arc<Machine>, Arc<Mm>, Task) {
        let m = Machine::new();
        let mm = Mm::new(&m);
        (m, mm, Task::new())
    }

    #[test]
    fn read_fault_maps_the_zero_page_and_write_breaks_it() {
        let (_m, mm, t) = setup();
        let a = mm.mmap_anon(None, PAGE_SIZE, RW).unwrap();
        assert_eq!(mm.read_i32s(&t, a, 1).unwrap(), [0]);
        assert_eq!(mm.pte_at(a).1, Some(ZERO_PFN));
        mm.write_i32s(&t, a, &[5]).unwrap();
        let (p, pfn) = mm.pte_at(a);
        assert!(matches!(p, Pte::Present { write: true, .. }));
        assert_ne!(pfn, Some(ZERO_PFN));
        assert_eq!(mm.read_i32s(&t, a, 1).unwrap(), [5]);
    }

    #[test]
    fn mappings_end_within_the_user_address_space() {
        let (_m, mm, _t) = setup();
        let top = hmm_core::TASK_SIZE;
        assert_eq!(
            mm.mmap_anon(Some(top - PAGE_SIZE), PAGE_SIZE, RW),
            Ok(top - PAGE_SIZE)
        );
        assert_eq!(mm.mmap_anon(Some(top), PAGE_SIZE, RW), Err(Errno::ENOMEM));
        assert_eq!(
            mm.mmap_anon(Some(1 << 47), PAGE_SIZE, RW),
            Err(Errno::ENOMEM)
        );
        let last = 0u64.wrapping_sub(PAGE_SIZE);
        assert_eq!(mm.mmap_anon(Some(last), PAGE_SIZE, RW), Err(Errno::ENOMEM));
        assert_eq!(mm.mmap_anon(None, 1 << 48, RW), Err(Errno::ENOMEM));
        assert_eq!(
            mm.mmap_anon(None, (1 << 47) - MMAP_BASE, RW),
            Err(Errno::ENOMEM)
        );
        assert_eq!(mm.vma_list().len(), 1);
    }

    #[test]
    fn fork_shares_copy_on_write() {
        let (m, mm, t) = setup();
        let a = mm.mmap_anon(None, 2 * PAGE_SIZE, RW).unwrap();
        mm.write_i32s(&t, a, &[1]).unwrap();
        let used = m.frames.in_use();
        let child = mm.fork(&t);
        assert_eq!(mm.pte_at(a).1, child.pte_at(a).1, "shared after fork");
        assert!(matches!(mm.pte_at(a).0, Pte::Present { write: false, .. }));
        child.write_i32s(&t, a, &[2]).unwrap();
        assert_ne!(mm.pte_at(a).1, child.pte_at(a).1, "child broke COW");
        assert_eq!(mm.read_i32s(&t, a, 1).unwrap(), [1]);
        assert_eq!(child.read_i32s(&t, a, 1).unwrap(), [2]);
        // The parent is now the only user: it reuses its page in place.
        let before = mm.pte_at(a).1;
        mm.write_i32s(&t, a, &[3]).unwrap();
        assert_eq!(mm.pte_at(a).1, before);
        drop(child);
        assert_eq!(m.frames.in_use(), used);
    }

    #[test]
    fn munmap_frees_pages_and_tables() {
        let (m, mm, t) = setup();
        let a = mm.mmap_anon(None, PMD_SIZE, RW).unwrap();
        mm.touch(&t, a, PMD_SIZE, true).unwrap();
        assert_eq!(m.frames.in_use(), 512);
        mm.munmap(&t, a, PMD_SIZE).unwrap();
        assert_eq!(m.frames.in_use(), 0);
        assert_eq!(mm.pte_at(a).0, Pte::None);
        assert_eq!(mm.read_bytes(&t, a, &mut [0u8; 1]), Err(Errno::EFAULT));
    }

    #[test]
    fn thp_fault_maps_a_pmd_and_partial_dontneed_splits_it() {
        let (_m, mm, t) = setup();
        let a = mm.mmap_anon(None, PMD_SIZE, RW).unwrap();
        mm.madvise_hugepage(a, PMD_SIZE).unwrap();
        mm.write_i32s(&t, a + PAGE_SIZE, &[9]).unwrap();
        assert!(matches!(mm.pte_at(a).0, Pte::Present { huge: true, .. }));
        mm.madvise_dontneed(&t, a, PAGE_SIZE).unwrap();
        assert_eq!(mm.pte_at(a).0, Pte::None);
        assert!(matches!(
            mm.pte_at(a + PAGE_SIZE).0,
            Pte::Present { huge: false, .. }
        ));
        assert_eq!(mm.read_i32s(&t, a + PAGE_SIZE, 1).unwrap(), [9]);
    }

    #[test]
    fn mremap_moves_pages_with_their_data() {
        let (_m, mm, t) = setup();
        let a = mm.mmap_anon(None, 4 * PAGE_SIZE, RW).unwrap();
        mm.write_i32s(&t, a + PAGE_SIZE, &[1, 2, 3]).unwrap();
        let pfn = mm.pte_at(a + PAGE_SIZE).1;
        let b = a + (1 << 30);
        assert_eq!(mm.mremap(&t, a, 4 * PAGE_SIZE, b, false), Ok(b));
        assert_eq!(mm.pte_at(b + PAGE_SIZE).1, pfn);
        assert_eq!(mm.read_i32s(&t, b + PAGE_SIZE, 3).unwrap(), [1, 2, 3]);
        assert_eq!(mm.read_bytes(&t, a, &mut [0u8; 1]), Err(Errno::EFAULT));
    }

    #[test]
    fn mprotect_write_protects_and_refaults_writable() {
        let (_m, mm, t) = setup();
        let a = mm.mmap_anon(None, PAGE_SIZE, RW).unwrap();
        mm.write_i32s(&t, a, &[1]).unwrap();
        mm.mprotect(a, PAGE_SIZE, VmFlags::READ).unwrap();
        assert!(matches!(mm.pte_at(a).0, Pte::Present { write: false, .. }));
        assert_eq!(mm.write_i32s(&t, a, &[2]), Err(Errno::EFAULT));
        mm.mprotect(a, PAGE_SIZE, RW).unwrap();
        mm.write_i32s(&t, a, &[2]).unwrap();
        assert_eq!(mm.read_i32s(&t, a, 1).unwrap(), [2]);
        assert_eq!(mm.vma_list().len(), 1);
    }

    #[test]
    fn swap_out_and_in_round_trips_data() {
        let (m, mm, t) = setup();
        let a = mm.mmap_anon(None, 2 * PAGE_SIZE, RW).unwrap();
        mm.write_i32s(&t, a, &[11]).unwrap();
        assert_eq!(mm.swap_out(&t, a, 2 * PAGE_SIZE), Ok(1));
        assert!(matches!(mm.pte_at(a).0, Pte::Swap { write: true, .. }));
        assert_eq!(m.swap_used(), 1);
        assert_eq!(mm.read_i32s(&t, a, 1).unwrap(), [11]);
        assert_eq!(m.swap_used(), 0);
    }

    #[test]
    fn migration_moves_data_to_new_frames() {
        let (_m, mm, t) = setup();
        let a = mm.mmap_anon(None, 2 * PAGE_SIZE, RW).unwrap();
        mm.write_i32s(&t, a, &[21]).unwrap();
        mm.write_i32s(&t, a + PAGE_SIZE, &[22]).unwrap();
        let old = mm.pte_at(a).1;
        assert_eq!(mm.migrate(&t, a, 2 * PAGE_SIZE, None), Ok(2));
        assert_ne!(mm.pte_at(a).1, old);
        assert_eq!(mm.read_i32s(&t, a, 1).unwrap(), [21]);
        assert_eq!(mm.read_i32s(&t, a + PAGE_SIZE, 1).unwrap(), [22]);
    }

    #[test]
    fn private_file_mapping_copies_on_write() {
        let (m, mm, t) = setup();
        let f = File::new(m.frames.clone(), 0, 0);
        f.pwrite(0, &7i32.to_ne_bytes()).unwrap();
        let a = mm.mmap_file(None, PAGE_SIZE, RW, false, &f, 0).unwrap();
        assert_eq!(mm.read_i32s(&t, a, 1).unwrap(), [7]);
        mm.write_i32s(&t, a, &[8]).unwrap();
        let mut b = [0u8; 4];
        f.pread(0, &mut b);
        assert_eq!(i32::from_ne_bytes(b), 7, "the file is untouched");
        assert_eq!(mm.read_i32s(&t, a, 1).unwrap(), [8]);
    }
}
