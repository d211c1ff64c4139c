//! Zapping and `munmap` (`mm/memory.c`'s `zap_page_range`, `mm/vma.c`'s
//! `do_vmi_munmap`, `exit_mmap`): clear entries and drop what they
//! referenced, inside an `Unmap` invalidation.

use std::sync::atomic::Ordering;

use hmm_core::PAGE_SIZE;

use super::page_aligned;
use crate::mm::Mm;
use crate::notifier::{Event, InvalidateRange};
use crate::pagetable::{Pte, PTE_SHIFT};
use crate::task::Task;
use crate::userfaultfd::{contexts, UffdMsg};
use crate::Errno;

impl Mm {
    /// Drop what one entry referenced (`zap_pte_range`'s accounting).
    pub(super) fn release_entry(&self, p: Pte) {
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
    pub(super) fn zap(&self, start: u64, end: u64) {
        let _ptl = self.ptl();
        self.tables
            .for_each_leaf(self.root, start, end, &mut |_, shift, e| {
                let p = Pte::decode(e.swap(0, Ordering::AcqRel), shift != PTE_SHIFT);
                self.release_entry(p);
            });
    }

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
