//! `fork` (`kernel/fork.c`'s `dup_mmap`, `mm/memory.c`'s
//! `copy_page_range`): the child's VMAs and copy-on-write sharing of
//! private pages.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::store;
use crate::mm::Mm;
use crate::notifier::{Event, InvalidateRange};
use crate::pagetable::{Pte, Slot, MARKER_UFFD_WP, PTE_SHIFT};
use crate::task::Task;
use crate::userfaultfd::{UffdCtx, UffdMsg};
use crate::vma::{Backing, UffdReg, VmaInfo};

impl Mm {
    /// `fork`: a child mm with copies of the VMAs. Private mappings share
    /// their pages copy-on-write (both sides write-protected, the parent's
    /// change invalidated); device-exclusive entries are restored first;
    /// device-private entries become read-only in both; swap entries are
    /// duplicated. Shared file mappings are refaulted by the child. The
    /// child has no notifiers. Its VMAs keep their userfaultfd registration
    /// only for a context with `UFFD_FEATURE_EVENT_FORK` (`dup_userfaultfd`):
    /// the child then gets a new context of its own, with the same features
    /// and modes, announced to the parent's handler by `UFFD_EVENT_FORK`
    /// once the fork is done (the fork waits until the handler read it);
    /// the userfaultfd write-protect bits survive only there.
    pub fn fork(&self, task: &Task) -> Arc<Mm> {
        let child = Mm::new(&self.machine);
        let forked = self.fork_locked(&child);
        for (parent, ctx) in forked {
            let ufd = parent.add_forked(ctx);
            self.uffd_event(task, &[parent], UffdMsg::Fork { ufd });
        }
        child
    }

    /// The part of [`Mm::fork`] under the mmap write lock: returns the
    /// (parent, child) contexts of `dup_userfaultfd`.
    fn fork_locked(&self, child: &Arc<Mm>) -> Vec<(Arc<UffdCtx>, Arc<UffdCtx>)> {
        let mut forked: Vec<(Arc<UffdCtx>, Arc<UffdCtx>)> = Vec::new();
        let _w = self.write();
        self.wait_no_migration(0, hmm_core::TASK_SIZE);
        let vmas: Vec<VmaInfo> = self.vmas().iter().cloned().collect();
        let frames = &self.machine.frames;
        for v in &vmas {
            let mut cv = v.clone();
            cv.uffd = v
                .uffd
                .as_ref()
                .filter(|r| r.ctx.features().event_fork)
                .map(|r| {
                    let ctx = match forked.iter().find(|(p, _)| Arc::ptr_eq(p, &r.ctx)) {
                        Some((_, c)) => c.clone(),
                        None => {
                            let c = child.userfaultfd(r.ctx.features());
                            forked.push((r.ctx.clone(), c.clone()));
                            c
                        }
                    };
                    UffdReg { ctx, ..r.clone() }
                });
            let keep_wp = cv.uffd.is_some();
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
                            uffd_wp,
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
                                uffd_wp,
                            };
                            if cow {
                                store(e, np);
                            }
                            Pte::Present {
                                pfn,
                                write: write && !cow,
                                huge,
                                special,
                                protnone,
                                uffd_wp: uffd_wp && keep_wp,
                            }
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
                        Pte::HwPoison { .. } => p,
                        Pte::Marker(m) => {
                            let m = if keep_wp { m } else { m & !MARKER_UFFD_WP };
                            if m == 0 {
                                Pte::None
                            } else {
                                Pte::Marker(m)
                            }
                        }
                        _ => Pte::None,
                    };
                    if cp != Pte::None {
                        if let Slot::At(ce) = child.tables.slot(child.root, a, shift, true) {
                            store(ce, cp);
                        }
                    }
                });
        }
        forked
    }
}
