//! `madvise` (`mm/madvise.c`): `MADV_DONTNEED` (with userfaultfd's
//! REMOVE event) and `MADV_HUGEPAGE`.

use hmm_core::VmFlags;

use super::page_aligned;
use crate::mm::Mm;
use crate::notifier::{Event, InvalidateRange};
use crate::task::Task;
use crate::userfaultfd::{contexts, UffdMsg};
use crate::Errno;

impl Mm {
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
}
