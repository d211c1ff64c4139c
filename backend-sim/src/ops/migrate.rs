//! Page migration between system frames (`mm/migrate.c`): migration
//! entries installed under an invalidation, the copy without the mmap lock,
//! and the wait for migration entries to go.

use std::sync::atomic::Ordering;

use super::store;
use crate::frame::FrameKind;
use crate::mm::Mm;
use crate::notifier::{Event, InvalidateRange};
use crate::pagetable::{Pte, Slot, PTE_SHIFT};
use crate::task::Task;
use crate::Errno;

impl Mm {
    pub(super) fn wait_no_migration(&self, start: u64, end: u64) {
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
}
