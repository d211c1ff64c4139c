//! The model address space: VMAs and page-table entries as plain data.
//!
//! A [`Space`] is what a page table *contains*, written down without any
//! walking logic: a sorted set of VMAs and a set of disjoint, naturally
//! aligned entries (a PTE covers one page, a PMD leaf 512 pages, a PUD leaf
//! 512 * 512 pages). Every page not covered by an entry is empty; the extent
//! of an empty entry is the largest empty table slot around it (a whole PUD
//! slot, a whole PMD slot, or one PTE), capped in a hugetlb VMA at the huge
//! page size, because the hugetlb walk steps one huge page at a time.
//!
//! The rules that turn this into PFN words live in
//! [`reference`](crate::reference); the [`MmView`](hmm_core::MmView) over it
//! lives in [`model_mm`](crate::model_mm). Both read the same data and
//! nothing else.

use std::collections::BTreeMap;

use hmm_core::{Leaf, VmFaultError, VmFlags, PAGE_SIZE};

/// Pages in a PMD slot.
pub const PMD_PAGES: u64 = 512;
/// Pages in a PUD slot.
pub const PUD_PAGES: u64 = 512 * 512;

/// What a fault in a VMA does (the model's `handle_mm_fault`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// Resolve with the lock held: map a page (the zero page for a read
    /// fault on anonymous memory), swap in, migrate device memory back,
    /// break COW.
    Populate,
    /// userfaultfd MISSING: an empty page needs the user-space handler.
    /// Without `ALLOW_RETRY` that is `SIGBUS`; with `RETRY_NOWAIT` it would
    /// block; otherwise the lock is dropped, the handler resolves the page
    /// and the fault returns `Retry`. Non-empty pages fault like
    /// [`FaultKind::Populate`].
    Userfault,
    /// A file mapping whose page-cache pages may need I/O: a page not yet
    /// cached drops the lock for the read and returns `Retry` (or would
    /// block with `RETRY_NOWAIT`); a cached page, or any page without
    /// `ALLOW_RETRY`, is mapped with the lock held.
    FileIo,
    /// The fault drops the lock and completes (`VM_FAULT_COMPLETED`) when it
    /// may; otherwise it resolves with the lock held.
    Completed,
    /// Every fault fails with this error.
    Fail(VmFaultError),
}

/// One VMA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmaDesc {
    /// First address (page aligned).
    pub start: u64,
    /// One past the last address (page aligned, above `start`).
    pub end: u64,
    /// `vm_flags`.
    pub flags: VmFlags,
    /// Huge page order of a hugetlb VMA (9 or 18), 0 otherwise.
    pub hugetlb_order: u8,
    /// What a fault does here.
    pub fault: FaultKind,
}

impl VmaDesc {
    /// Whether `addr` is inside.
    pub fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }
}

/// One page-table entry: a leaf of `1 << order` pages at an order-aligned
/// base. For multi-page leaves the `pfn` fields of `leaf` are the first
/// page's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// First address, aligned to the entry's size.
    pub base: u64,
    /// 0 (PTE), 9 (PMD) or 18 (PUD).
    pub order: u8,
    /// The leaf as a backend would classify it.
    pub leaf: Leaf,
}

impl Entry {
    /// One past the last address.
    pub fn end(&self) -> u64 {
        self.base + (PAGE_SIZE << self.order)
    }
}

/// VMAs and entries of one address space.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Space {
    vmas: BTreeMap<u64, VmaDesc>,
    entries: BTreeMap<u64, Entry>,
}

/// Size in bytes of a slot of `pages` pages.
const fn slot(pages: u64) -> u64 {
    pages * PAGE_SIZE
}

impl Space {
    /// An empty address space.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a VMA; false (and nothing added) if it is malformed or overlaps.
    pub fn add_vma(&mut self, v: VmaDesc) -> bool {
        let aligned = v.start.is_multiple_of(PAGE_SIZE) && v.end.is_multiple_of(PAGE_SIZE);
        if !aligned
            || v.start >= v.end
            || self
                .vmas
                .values()
                .any(|w| w.start < v.end && v.start < w.end)
        {
            return false;
        }
        self.vmas.insert(v.start, v);
        true
    }

    /// Remove every VMA overlapping `[start, end)` and every entry
    /// overlapping it (a whole-VMA `munmap`).
    pub fn remove_vmas(&mut self, start: u64, end: u64) {
        self.vmas.retain(|_, v| !(v.start < end && start < v.end));
        self.clear(start, end);
    }

    /// Add an entry; false (and nothing added) if it is misaligned or
    /// overlaps another entry.
    pub fn add_entry(&mut self, e: Entry) -> bool {
        if !matches!(e.order, 0 | 9 | 18) || !e.base.is_multiple_of(PAGE_SIZE << e.order) {
            return false;
        }
        if self.overlapping(e.base, e.end()).next().is_some() {
            return false;
        }
        self.entries.insert(e.base, e);
        true
    }

    /// Remove every entry overlapping `[start, end)` (whole entries).
    pub fn clear(&mut self, start: u64, end: u64) {
        let bases: Vec<u64> = self.overlapping(start, end).map(|e| e.base).collect();
        for b in bases {
            self.entries.remove(&b);
        }
    }

    /// Replace whatever covers `[e.base, e.end())` by `e`.
    pub fn replace(&mut self, e: Entry) {
        self.clear(e.base, e.end());
        let added = self.add_entry(e);
        debug_assert!(added);
    }

    /// The entries overlapping `[start, end)`, in address order.
    pub fn overlapping(&self, start: u64, end: u64) -> impl Iterator<Item = &Entry> {
        // An entry starting below `start` can reach into it: look back one
        // PUD slot, the largest entry size.
        let from = start.saturating_sub(slot(PUD_PAGES) - PAGE_SIZE);
        self.entries
            .range(from..end)
            .map(|(_, e)| e)
            .filter(move |e| e.end() > start)
    }

    /// Change the fault behaviour of every VMA with `f`.
    pub fn map_fault_kinds(&mut self, f: impl Fn(FaultKind) -> FaultKind) {
        for v in self.vmas.values_mut() {
            v.fault = f(v.fault);
        }
    }

    /// The VMAs, in address order.
    pub fn vmas(&self) -> impl Iterator<Item = &VmaDesc> {
        self.vmas.values()
    }

    /// The VMA containing `addr`.
    pub fn vma_at(&self, addr: u64) -> Option<&VmaDesc> {
        self.vmas
            .range(..=addr)
            .next_back()
            .map(|(_, v)| v)
            .filter(|v| v.contains(addr))
    }

    /// The first VMA ending above `addr` (`find_vma`).
    pub fn find_vma(&self, addr: u64) -> Option<&VmaDesc> {
        if let Some(v) = self.vma_at(addr) {
            return Some(v);
        }
        self.vmas.range(addr..).next().map(|(_, v)| v)
    }

    /// The entry covering `addr`.
    pub fn entry_at(&self, addr: u64) -> Option<&Entry> {
        self.overlapping(addr, addr + PAGE_SIZE).next()
    }

    /// The page-table unit holding `addr` inside `vma`: the covering entry's
    /// extent and its leaf (PFNs of the extent's first page), or the extent of
    /// the empty slot around it and [`Leaf::Hole`]. Not clipped to the VMA.
    pub fn unit_at(&self, vma: &VmaDesc, addr: u64) -> (u64, u64, Leaf) {
        if let Some(e) = self.entry_at(addr) {
            return (e.base, e.end(), e.leaf);
        }
        let cap = match (vma.flags.contains(VmFlags::HUGETLB), vma.hugetlb_order) {
            (true, 9) => PMD_PAGES,
            _ => PUD_PAGES,
        };
        for pages in [PUD_PAGES, PMD_PAGES, 1] {
            if pages > cap {
                continue;
            }
            let s = addr & !(slot(pages) - 1);
            let e = s + slot(pages);
            if self.overlapping(s, e).next().is_none() {
                return (s, e, Leaf::Hole);
            }
        }
        unreachable!("a page with no entry is an empty PTE slot")
    }
}

/// The leaf as seen from page `addr` of a unit starting at `unit_start`: the
/// PFN fields advanced to that page.
pub fn leaf_from(leaf: Leaf, unit_start: u64, addr: u64) -> Leaf {
    let off = (addr - unit_start) / PAGE_SIZE;
    match leaf {
        Leaf::Present(mut p) => {
            p.pfn = p.pfn.wrapping_add(off);
            Leaf::Present(p)
        }
        Leaf::DevicePrivate {
            owner,
            pfn,
            write,
            order,
        } => Leaf::DevicePrivate {
            owner,
            pfn: pfn.wrapping_add(off),
            write,
            order,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hmm_core::Present;

    fn vma(start: u64, end: u64, flags: VmFlags, order: u8) -> VmaDesc {
        VmaDesc {
            start,
            end,
            flags,
            hugetlb_order: order,
            fault: FaultKind::Populate,
        }
    }

    #[test]
    fn empty_extents_follow_the_table_levels() {
        let g = slot(PUD_PAGES);
        let mut s = Space::new();
        let v = vma(g, 3 * g, VmFlags::READ, 0);
        assert!(s.add_vma(v));
        assert_eq!(s.unit_at(&v, g + 0x5000), (g, 2 * g, Leaf::Hole));
        let pte = Entry {
            base: g + slot(PMD_PAGES) + 0x3000,
            order: 0,
            leaf: Leaf::Swap,
        };
        assert!(s.add_entry(pte));
        // Same PUD slot, other PMD slot: a PMD-sized hole.
        assert_eq!(s.unit_at(&v, g), (g, g + slot(PMD_PAGES), Leaf::Hole));
        // Same PMD slot: one-page holes.
        let a = g + slot(PMD_PAGES);
        assert_eq!(s.unit_at(&v, a), (a, a + PAGE_SIZE, Leaf::Hole));
        assert_eq!(s.unit_at(&v, pte.base), (pte.base, pte.end(), Leaf::Swap));
        // Overlap and misalignment are refused.
        let huge = Entry {
            base: g + slot(PMD_PAGES),
            order: 9,
            leaf: Leaf::Present(Present::default()),
        };
        assert!(!s.add_entry(huge));
        assert!(!s.add_entry(Entry {
            base: g + 0x1000,
            ..huge
        }));
        // A 2 MiB hugetlb VMA never reports holes above its page size.
        let h = vma(2 * g, 3 * g, VmFlags::READ | VmFlags::HUGETLB, 9);
        assert_eq!(s.unit_at(&h, 2 * g + 0x1000).1, 2 * g + slot(PMD_PAGES));
    }

    #[test]
    fn vma_lookup() {
        let mut s = Space::new();
        assert!(s.add_vma(vma(0x10000, 0x20000, VmFlags::READ, 0)));
        assert!(!s.add_vma(vma(0x1f000, 0x30000, VmFlags::READ, 0)));
        assert!(s.add_vma(vma(0x40000, 0x50000, VmFlags::READ, 0)));
        assert_eq!(s.find_vma(0x20000).map(|v| v.start), Some(0x40000));
        assert_eq!(s.find_vma(0x1f000).map(|v| v.start), Some(0x10000));
        assert!(s.vma_at(0x30000).is_none());
        assert!(s.find_vma(0x50000).is_none());
        s.remove_vmas(0x10000, 0x20000);
        assert_eq!(s.vmas().count(), 1);
    }
}
