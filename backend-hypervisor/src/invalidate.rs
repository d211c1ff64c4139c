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

use super::alloc::TableAlloc;
use super::descriptor::Format;
use super::guest::{bump, GuestMemory};
use super::host::Host;
use super::region::{RegionId, Regions};
use super::tlb::TlbFlush;

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
