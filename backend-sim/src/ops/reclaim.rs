//! Reclaim (`mm/vmscan.c`'s swap-out of anonymous pages) and the OOM
//! reaper (`mm/oom_kill.c`'s non-blockable zap of a dying process).

use std::sync::atomic::Ordering;

use super::store;
use crate::frame::FrameKind;
use crate::mm::Mm;
use crate::notifier::{Event, InvalidateRange};
use crate::pagetable::{Pte, PTE_SHIFT};
use crate::task::Task;
use crate::vma::VmaInfo;
use crate::Errno;

impl Mm {
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
}
