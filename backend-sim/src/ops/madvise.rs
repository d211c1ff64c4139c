//! `madvise` (`mm/madvise.c`): `MADV_DONTNEED` (with userfaultfd's
//! REMOVE event), `MADV_FREE`, `MADV_HUGEPAGE` / `MADV_NOHUGEPAGE` and
//! `MADV_COLLAPSE`.

use std::sync::atomic::Ordering;

use hmm_core::VmFlags;

use super::{page_aligned, store};
use crate::frame::{FrameKind, ZERO_PFN};
use crate::mm::Mm;
use crate::notifier::{Event, InvalidateRange};
use crate::pagetable::{Pte, Slot, PMD_SHIFT, PMD_SIZE, PTE_SHIFT};
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

    /// `madvise(MADV_NOHUGEPAGE)`: no THP in `[start, start + len)` (the
    /// huge pages already mapped stay).
    pub fn madvise_nohugepage(&self, start: u64, len: u64) -> Result<(), Errno> {
        let _w = self.write();
        for v in self.vmas_mut().range_mut(start, start + len) {
            v.flags.remove(VmFlags::HUGEPAGE);
        }
        Ok(())
    }

    /// `madvise(MADV_FREE)` (`madvise_free_single_vma`): the private
    /// anonymous pages of `[start, start + len)` become lazily freeable.
    /// The simulator has no memory pressure, so their contents stay until
    /// reclaim would take them (which it never does, a valid outcome in
    /// Linux too); swap entries in the range are freed and read back as
    /// zeroes, as Linux drops them at once; device-private entries stay.
    /// The range is invalidated (`MMU_NOTIFY_CLEAR`), so mirrors drop their
    /// entries. `-EINVAL` for an unaligned range or a VMA that is not
    /// private anonymous memory (shared, file, hugetlb, special); `-ENOMEM`
    /// when part of the range is unmapped.
    pub fn madvise_free(&self, task: &Task, start: u64, len: u64) -> Result<(), Errno> {
        let end = start.checked_add(len).ok_or(Errno::EINVAL)?;
        if !page_aligned(start) || !page_aligned(len) {
            return Err(Errno::EINVAL);
        }
        if len == 0 {
            return Ok(());
        }
        let _g = self.read_killable(task)?;
        let vmas = self.vmas().overlapping(start, end);
        let mut a = start;
        for v in &vmas {
            if v.start > a {
                return Err(Errno::ENOMEM);
            }
            if !v.is_anon() || !v.is_cow() || v.is_hugetlb() {
                return Err(Errno::EINVAL);
            }
            a = v.end;
        }
        if a < end {
            return Err(Errno::ENOMEM);
        }
        let _inv =
            self.notifiers
                .invalidate_range_start(&InvalidateRange::new(start, end, Event::Clear));
        let _ptl = self.ptl();
        self.tables
            .for_each_leaf(self.root, start, end, &mut |_, shift, e| {
                if shift != PTE_SHIFT {
                    return;
                }
                if let Pte::Swap { slot, .. } = Pte::decode(e.load(Ordering::Acquire), false) {
                    e.store(0, Ordering::Release);
                    self.machine.swap_free(slot);
                }
            });
        Ok(())
    }

    /// `madvise(MADV_COLLAPSE)`: collapse each PMD-aligned 2 MiB block of
    /// `[start, start + len)` lying in a private anonymous VMA into a THP,
    /// whatever the VMA's THP advice: the block's pages (present pages
    /// mapped only here, the zero page, holes) are copied into a new huge
    /// page mapped by one PMD, writable if the VMA is. A block already
    /// mapped huge is left as it is. `-EINVAL` for an unaligned range or a
    /// VMA that is not private anonymous memory, `-ENOMEM` for an unmapped
    /// range or no huge page, `-EAGAIN` if some block holds a page that
    /// cannot be collapsed (swapped, shared, device, under migration).
    pub fn madvise_collapse(&self, task: &Task, start: u64, len: u64) -> Result<(), Errno> {
        let end = start.checked_add(len).ok_or(Errno::EINVAL)?;
        if !page_aligned(start) || !page_aligned(len) {
            return Err(Errno::EINVAL);
        }
        let _ = task;
        let _w = self.write();
        let vmas = self.vmas().overlapping(start, end);
        if vmas.is_empty() {
            return Err(Errno::ENOMEM);
        }
        if vmas
            .iter()
            .any(|v| !v.is_anon() || !v.is_cow() || v.is_hugetlb())
        {
            return Err(Errno::EINVAL);
        }
        let frames = &self.machine.frames;
        let mut result = Ok(());
        for v in &vmas {
            let mut base = start.max(v.start).next_multiple_of(PMD_SIZE);
            while base + PMD_SIZE <= end.min(v.end) {
                let b = base;
                base += PMD_SIZE;
                let id = match self.tables.slot(self.root, b, PMD_SHIFT, false) {
                    Slot::At(e) => match Pte::decode(e.load(Ordering::Acquire), true) {
                        Pte::Table(id) => id,
                        Pte::None => continue,
                        _ => continue,
                    },
                    _ => continue,
                };
                // Every PTE must be collapsible.
                let t = self.tables.get(id);
                let mut src = Vec::with_capacity(512);
                for e in t.0.iter() {
                    match Pte::decode(e.load(Ordering::Acquire), false) {
                        Pte::None => src.push(None),
                        Pte::Present { pfn, .. } if pfn == ZERO_PFN => src.push(None),
                        Pte::Present {
                            pfn,
                            special: false,
                            ..
                        } if frames.kind(pfn) == FrameKind::System
                            && frames.order(pfn) == 0
                            && frames.refcount(pfn) == 1 =>
                        {
                            src.push(Some(pfn))
                        }
                        _ => break,
                    }
                }
                if src.len() != 512 {
                    result = Err(Errno::EAGAIN);
                    continue;
                }
                let Some(head) = self.machine.alloc(9, FrameKind::System) else {
                    return Err(Errno::ENOMEM);
                };
                for (i, s) in src.iter().enumerate() {
                    if let Some(s) = s {
                        frames.copy_page(*s, head + i as u64);
                    }
                }
                let _inv = self.notifiers.invalidate_range_start(&InvalidateRange::new(
                    b,
                    b + PMD_SIZE,
                    Event::Clear,
                ));
                let _ptl = self.ptl();
                let Slot::At(pmd) = self.tables.slot(self.root, b, PMD_SHIFT, false) else {
                    frames.put(head);
                    continue;
                };
                store(
                    pmd,
                    Pte::present(head, v.flags.contains(VmFlags::WRITE), true),
                );
                for s in src.into_iter().flatten() {
                    frames.put(s);
                }
                self.tables.free(id);
            }
        }
        result
    }
}
