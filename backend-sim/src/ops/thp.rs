//! Splitting huge PMD mappings (`mm/huge_memory.c`'s `split_huge_pmd`)
//! and the hugetlb alignment checks that operations on part of a huge
//! mapping run first.

use std::sync::atomic::Ordering;

use hmm_core::PAGE_SIZE;

use super::store;
use crate::frame::{is_zero_frame, HUGE_ZERO_PFN, ZERO_PFN};
use crate::mm::Mm;
use crate::notifier::{Event, InvalidateRange};
use crate::pagetable::{Pte, Slot, PMD_SHIFT, PMD_SIZE};
use crate::task::Task;
use crate::Errno;

impl Mm {
    /// `split_huge_pmd`: replace a THP PMD leaf mapping `addr` by a table of
    /// 512 PTEs with the same permissions. A huge zero page becomes 512
    /// read-only mappings of the zero page (`__split_huge_zero_page_pmd`);
    /// a device-private PMD becomes 512 device-private PTEs, the device
    /// folio split with it when mapped only here. Caller holds the mmap
    /// lock.
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
        let (pfn, sub): (u64, Box<dyn Fn(u64) -> Pte>) = match Pte::decode(w, true) {
            Pte::Present { pfn, .. } if pfn == HUGE_ZERO_PFN => {
                (pfn, Box::new(|_| Pte::present(ZERO_PFN, false, false)))
            }
            Pte::Present {
                pfn,
                write,
                uffd_wp,
                protnone,
                ..
            } => (
                pfn,
                Box::new(move |i| Pte::Present {
                    pfn: pfn + i,
                    write,
                    huge: false,
                    special: false,
                    protnone,
                    uffd_wp,
                }),
            ),
            Pte::DevicePrivate { pfn, write } => (
                pfn,
                Box::new(move |i| Pte::DevicePrivate {
                    pfn: pfn + i,
                    write,
                }),
            ),
            _ => return,
        };
        let id = self.tables.alloc();
        let t = self.tables.get(id);
        for (i, e) in t.0.iter().enumerate() {
            store(e, sub(i as u64));
        }
        let frames = &self.machine.frames;
        if is_zero_frame(pfn) {
            // The zero pages are never referenced.
        } else if frames.refcount(pfn) == 1 {
            // Mapped only here: split the folio too, each subpage keeping
            // the reference of its own entry.
            frames.split(pfn, |_| 1);
        } else {
            frames.get_many(pfn, 511);
        }
        store(pmd, Pte::Table(id));
    }

    /// Whether the PMD entry mapping `addr` is a huge leaf `split_pmd`
    /// splits: a present THP (the huge zero page included) or a
    /// device-private THP.
    pub(super) fn pmd_is_thp_leaf(&self, addr: u64) -> bool {
        match self.tables.slot(self.root, addr, PMD_SHIFT, false) {
            Slot::At(e) => matches!(
                Pte::decode(e.load(Ordering::Acquire), true),
                Pte::Present { huge: true, .. } | Pte::DevicePrivate { .. }
            ),
            _ => false,
        }
    }

    /// Split THP leaves that straddle `start` or `end`.
    pub(super) fn split_edges(&self, start: u64, end: u64) {
        for a in [start, end] {
            if a % PMD_SIZE != 0 && self.pmd_is_thp_leaf(a) {
                self.split_pmd(a);
            }
        }
    }

    /// Split every THP leaf in `[start, end)`.
    pub(crate) fn split_all(&self, start: u64, end: u64) {
        let mut a = start & !(PMD_SIZE - 1);
        while a < end {
            if self.pmd_is_thp_leaf(a) {
                self.split_pmd(a);
            }
            a += PMD_SIZE;
        }
    }

    pub(super) fn check_hugetlb_alignment(&self, start: u64, end: u64) -> Result<(), Errno> {
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
}
