//! `mprotect` (`mm/mprotect.c`): change a range's permission bits;
//! removing a permission write-protects the mapped entries under an
//! invalidation.

use std::sync::atomic::Ordering;

use hmm_core::VmFlags;

use super::{page_aligned, store, PROT_MASK};
use crate::mm::Mm;
use crate::notifier::{Event, InvalidateRange};
use crate::pagetable::{Pte, PTE_SHIFT};
use crate::Errno;

impl Mm {
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
}
