//! `mremap` (`mm/mremap.c`) with `MREMAP_MAYMOVE | MREMAP_FIXED` and
//! optionally `MREMAP_DONTUNMAP`: the page-table entries move with the
//! mapping.

use std::sync::atomic::Ordering;

use super::page_aligned;
use crate::mm::Mm;
use crate::notifier::{Event, InvalidateRange};
use crate::pagetable::{Pte, Slot, PMD_SIZE, PTE_SHIFT};
use crate::task::Task;
use crate::userfaultfd::UffdMsg;
use crate::vma::{Backing, VmaInfo};
use crate::Errno;

impl Mm {
    /// `mremap(old, len, len, MREMAP_MAYMOVE | MREMAP_FIXED [|
    /// MREMAP_DONTUNMAP], new)`: move a mapping (its pages move with it).
    /// `[new, new + len)` is unmapped first. The old range must lie inside
    /// one VMA. THPs (device-private ones included) move whole when the
    /// displacement is a multiple of 2 MiB, else they are split. A
    /// userfaultfd registration moves with the mapping only for a context
    /// with `UFFD_FEATURE_EVENT_REMAP`, which then gets `UFFD_EVENT_REMAP`
    /// (mremap waits until its handler read it); otherwise the new mapping
    /// is unregistered.
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
        // mremap_userfaultfd_prep: the registration moves only for a
        // context that wants UFFD_EVENT_REMAP.
        let remap_ctx = vma
            .uffd
            .as_ref()
            .filter(|r| r.ctx.features().event_remap)
            .map(|r| r.ctx.clone());
        {
            let _w = self.write();
            // move_huge_pmd: a PMD leaf moves whole when the displacement
            // keeps it aligned.
            let keep_huge = new.wrapping_sub(old).is_multiple_of(PMD_SIZE);
            if keep_huge {
                self.split_edges(old, old + len);
            } else {
                self.split_all(old, old + len);
            }
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
            if remap_ctx.is_none() {
                moved.uffd = None;
            }
            if let Backing::File { offset, .. } = &mut moved.backing {
                *offset += old - vma.start;
            }
            {
                let _ptl = self.ptl();
                let mut entries = Vec::new();
                self.tables
                    .for_each_leaf(self.root, old, old + len, &mut |a, shift, e| {
                        entries.push((a, shift, e.swap(0, Ordering::AcqRel)));
                    });
                for (a, shift, w) in entries {
                    if let Slot::At(e) = self.tables.slot(self.root, a - old + new, shift, true) {
                        if shift != PTE_SHIFT {
                            // The destination was unmapped: at most an
                            // empty table is left there.
                            if let Pte::Table(id) = Pte::decode(e.load(Ordering::Acquire), true) {
                                self.tables.free(id);
                            }
                        }
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
        }
        if let Some(ctx) = remap_ctx {
            self.uffd_event(
                task,
                &[ctx],
                UffdMsg::Remap {
                    from: old,
                    to: new,
                    len,
                },
            );
        }
        Ok(new)
    }
}
