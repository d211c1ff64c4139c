//! The invalidate path: the host's MMU interval-notifier callback for a
//! region's host range.
//!
//! The host calls it before it changes or releases the mappings of a host
//! range (munmap, mprotect, migration, swap-out, THP split, userfaultfd
//! zap...). Under the region lock it moves the notifier sequence (through
//! the caller's `set_seq`, Linux's `mmu_interval_set_seq`), then unmaps the
//! guest range backed by the invalidated host range, splitting any block it
//! covers only partly, and flushes the TLB before returning. A guest fault
//! racing with it either installed its mappings before the lock was taken
//! (and they are removed here) or checks `read_retry` after, sees the moved
//! sequence and maps nothing. So once the callback returns, nothing the
//! guest can reach maps a frame the host is about to release.

use hmm_core::IntervalNotifier;

use super::{bump, GuestMemory};
use crate::alloc::TableAlloc;
use crate::descriptor::Format;
use crate::region::{RegionId, Regions};
use crate::tlb::TlbFlush;
use hmm_core::Host;

impl<'h, F, A, T, H, N, const R: usize, const P: usize> GuestMemory<'h, F, A, T, H, N, R, P>
where
    F: Format,
    A: TableAlloc,
    T: TlbFlush,
    H: Host,
    N: IntervalNotifier + ?Sized,
{
    /// The invalidate callback of region `id`'s interval notifier for host
    /// range `[hva_start, hva_end)`.
    ///
    /// `set_seq` runs first under the region lock and must move the
    /// notifier sequence. With `blockable == false` (a notifier range that
    /// may not sleep) the region lock is only tried, and `false` is returned
    /// if it is busy, as Linux's callbacks do; otherwise it returns `true`.
    pub fn invalidate<S: FnOnce()>(
        &self,
        id: RegionId,
        hva_start: u64,
        hva_end: u64,
        blockable: bool,
        set_seq: S,
    ) -> bool {
        let lock = if blockable {
            self.regions.lock_slot(id)
        } else {
            match self.regions.try_lock_slot(id) {
                Some(Some(g)) => Some(g),
                Some(None) => return false,
                None => None,
            }
        };
        set_seq();
        let Some(lock) = lock else { return true };
        if !Regions::<N, R>::is_live(id, &lock) {
            return true;
        }
        let Some(region) = self.regions.get(id) else {
            return true;
        };
        let spec = region.spec;
        let s = hva_start.max(spec.hva);
        let e = hva_end.min(spec.hva_end());
        if s >= e {
            return true;
        }
        let st = self
            .table
            .lock()
            .unmap(&self.alloc, &self.tlb, spec.gpa_of(s), spec.gpa_of(e));
        drop(lock);
        bump(&self.counters.invalidations, 1);
        bump(&self.counters.splits, st.splits);
        bump(&self.counters.split_fallbacks, st.split_fallbacks);
        true
    }

    /// The invalidate callback for a host whose one notifier covers every
    /// region: invalidates each region whose host range overlaps
    /// `[hva_start, hva_end)`, calling `set_seq(id)` for each under its
    /// region lock.
    pub fn invalidate_hva<S: FnMut(RegionId)>(
        &self,
        hva_start: u64,
        hva_end: u64,
        blockable: bool,
        mut set_seq: S,
    ) -> bool {
        let mut ok = true;
        for r in self
            .regions
            .overlapping_hva(hva_start, hva_end)
            .into_iter()
            .flatten()
        {
            ok &= self.invalidate(r.id, hva_start, hva_end, blockable, || set_seq(r.id));
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use crate::ept::Ept;
    use crate::region::RegionSpec;
    use crate::stage2::Stage2;
    use crate::testutil::*;
    use crate::{Config, GuestFault, PageSize, Perm};
    use core::cell::Cell;
    use hmm_core::doubles::{FaultMode, TestMm};
    use hmm_core::VmFlags;

    const HVA: u64 = 0x7f00_0000_0000;
    const RW: VmFlags = VmFlags::READ.union(VmFlags::WRITE);

    fn spec(gpa: u64, size: u64, hva: u64) -> RegionSpec {
        RegionSpec {
            gpa,
            size,
            hva,
            perm: Perm::R | Perm::W,
        }
    }

    #[test]
    fn invalidation_unmaps_exactly_the_host_range() {
        let mm = TestMm::new();
        mm.add_vma(HVA, HVA + 0x8000, RW, 0, FaultMode::Populate);
        let (pool, tlb) = (pool(), CountTlb::default());
        let vm: Vm<'_, Ept, TestMm> = vm(&mm, &pool, &tlb, Config::default());
        let id = vm.add_region(spec(0x10_0000, 0x8000, HVA), &mm).unwrap();
        vm.handle_fault(0x10_0000, Perm::W);
        assert_eq!(leaves(&vm).len(), 8);
        let flushes = tlb.0.get();
        let seq_moved = Cell::new(false);
        // The host is about to unmap pages 2..5 (and something outside).
        assert!(vm.invalidate(id, HVA + 0x2000, HVA + 0x5000, true, || {
            mm.invalidate();
            seq_moved.set(true);
        }));
        mm.unmap(HVA + 0x2000, HVA + 0x5000);
        assert!(seq_moved.get());
        assert!(tlb.0.get() > flushes, "the TLB was flushed");
        let gpas: std::vec::Vec<u64> = leaves(&vm).iter().map(|m| m.gpa).collect();
        assert_eq!(
            gpas,
            [0x10_0000, 0x10_1000, 0x10_5000, 0x10_6000, 0x10_7000]
        );
        assert_eq!(vm.audit(), Ok(5));
        // The guest touches the hole again: a fresh page is faulted in.
        assert!(matches!(
            vm.handle_fault(0x10_3000, Perm::R),
            GuestFault::Mapped { .. }
        ));
        assert_eq!(vm.audit(), Ok(8));
    }

    #[test]
    fn invalidating_part_of_a_huge_mapping_splits_it() {
        let mm = TestMm::new();
        mm.add_vma(
            HVA,
            HVA + G1,
            RW | VmFlags::HUGETLB,
            18,
            FaultMode::Populate,
        );
        let (pool, tlb) = (pool(), CountTlb::default());
        let vm: Vm<'_, Stage2, TestMm> = vm(&mm, &pool, &tlb, Config::default());
        let id = vm.add_region(spec(G1, G1, HVA), &mm).unwrap();
        assert_eq!(
            vm.handle_fault(G1, Perm::R),
            GuestFault::Mapped {
                size: PageSize::Size1G,
                leaves: 1
            }
        );
        let before = vm.translate(G1).unwrap();
        assert!(
            vm.invalidate(id, HVA + M2 + 0x1000, HVA + M2 + 0x2000, true, || {
                mm.invalidate()
            })
        );
        let all = leaves(&vm);
        assert_eq!(
            all.iter().filter(|m| m.size == PageSize::Size2M).count(),
            511
        );
        assert_eq!(
            all.iter().filter(|m| m.size == PageSize::Size4K).count(),
            511
        );
        assert!(vm.translate(G1 + M2 + 0x1000).is_none());
        for m in &all {
            assert_eq!(m.pa, before.pa_of(m.gpa), "the rest keeps its frames");
        }
        assert_eq!(vm.stats().splits, 2);
        // The host did not change its 1 GiB page here, so the rest agrees.
        assert_eq!(vm.audit(), Ok((1 << 18) - 1));
    }

    #[test]
    fn unrelated_and_nonblocking_invalidations() {
        let mm = TestMm::new();
        mm.add_vma(HVA, HVA + 0x2000, RW, 0, FaultMode::Populate);
        let (pool, tlb) = (pool(), CountTlb::default());
        let vm: Vm<'_, Ept, TestMm> = vm(&mm, &pool, &tlb, Config::default());
        let id = vm.add_region(spec(0, 0x2000, HVA), &mm).unwrap();
        vm.handle_fault(0, Perm::R);
        // Outside the region's host range: nothing to do, still acknowledged.
        assert!(vm.invalidate_hva(HVA + 0x10_0000, HVA + 0x20_0000, true, |_| mm.invalidate()));
        assert_eq!(leaves(&vm).len(), 2);
        // A non-blockable invalidation while a fault holds the region lock.
        {
            let _held = vm.regions.lock_slot(id).unwrap();
            assert!(!vm.invalidate(id, HVA, HVA + 0x1000, false, || mm.invalidate()));
        }
        assert!(vm.invalidate_hva(HVA, HVA + 0x1000, false, |r| {
            assert_eq!(r, id);
            mm.invalidate()
        }));
        assert_eq!(leaves(&vm).len(), 1);
    }

    #[test]
    fn removing_a_region_unmaps_it() {
        let mm = TestMm::new();
        mm.add_vma(HVA, HVA + 0x2000, RW, 0, FaultMode::Populate);
        let (pool, tlb) = (pool(), CountTlb::default());
        let vm: Vm<'_, Ept, TestMm> = vm(&mm, &pool, &tlb, Config::default());
        let id = vm.add_region(spec(0, 0x2000, HVA), &mm).unwrap();
        vm.handle_fault(0, Perm::R);
        assert_eq!(vm.remove_region(id).unwrap().gpa, 0);
        assert!(leaves(&vm).is_empty());
        assert_eq!(pool.in_use(), 1, "only the root table is left");
        assert_eq!(
            vm.handle_fault(0, Perm::R),
            GuestFault::Error(crate::FaultError::NoRegion)
        );
        // A stale id invalidation is acknowledged and does nothing.
        assert!(vm.invalidate(id, HVA, HVA + 0x2000, true, || {}));
    }

    extern crate std;
}
