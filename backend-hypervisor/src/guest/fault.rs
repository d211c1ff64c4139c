//! The guest-fault path: a vCPU exits on a second-stage fault at a GPA, and
//! this maps the memory behind it.
//!
//! 1. Find the region containing the GPA ([`FaultError::NoRegion`] if none)
//!    and check the access against its permissions
//!    ([`FaultError::Permission`]).
//! 2. Fault the 2 MiB-aligned window around the GPA (clipped to the region)
//!    through hmm-core's owning entry point
//!    [`hmm_core::range_fault_owning_lock`], which takes
//!    the host mmap lock and the notifier sequence itself and survives host
//!    faults that drop the lock (userfaultfd). Every page is requested
//!    present; write is requested only for a write access (the region
//!    allowing it was checked in step 1), so a read never breaks COW
//!    sharing. If the window fails (part of it unmapped on the host, say),
//!    the single faulting page is tried alone so the error is the page's own.
//! 3. Take the region lock and check `read_retry` on the sequence: if the
//!    host invalidated anything in the region meanwhile, map nothing and
//!    return [`GuestFault::Retry`].
//! 4. Map each page with the largest leaf that the host mapping order
//!    reported by hmm-core and the GPA / host-address alignment allow: a
//!    1 GiB block for a 1 GiB host leaf whose whole extent lies in the
//!    region at matching alignment, else a 2 MiB block likewise, else 4 KiB,
//!    using only the leaf sizes the table's
//!    [`TableConfig`](crate::layout::TableConfig) allows (the
//!    hardware's capabilities and the walk's start level): a 1 GiB host
//!    leaf becomes 2 MiB blocks where 1 GiB leaves are unsupported, 4 KiB
//!    pages where 2 MiB ones are too. A leaf is writable only if the region
//!    is and the host entry is (`HMM_PFN_WRITE`); executable if the region
//!    is.
//! 5. If anything was written, [`TlbFlush::publish`] makes it visible to
//!    the hardware walkers (Arm: `DSB ISHST`) before the vCPU re-enters the
//!    guest. A leaf that only gained permissions in place was followed by
//!    [`TlbFlush::flush_upgrade`] (by the engine); if the faulting GPA's leaf
//!    already allowed the access, the fault came from a stale translation
//!    cached by the faulting CPU and [`TlbFlush::flush_upgrade`] drops it
//!    (as KVM's `kvm_pgtable_stage2_relax_perms` flushes even when it
//!    finds nothing to change).
//!
//! Mapping a 1 GiB host leaf beyond the faulted window is sound: the
//! window's entries show the host mapped the whole leaf when it was walked,
//! and the region's notifier sequence, unchanged under the region lock,
//! shows it has not changed since.

use core::sync::atomic::AtomicU64;

use hmm_core::{
    range_fault_owning_lock, Error, HmmPfn, IntervalNotifier, Options, PfnFlags, Range, Stats,
    PAGE_SIZE,
};

pub use super::outcome::{Access, FaultError, GuestFault};
use super::{bump, GuestMemory};
use crate::alloc::TableAlloc;
use crate::descriptor::{Attrs, Format, PageSize, Perm};
use crate::pagetable::{Installed, MapError, PageTable};
use crate::region::{Region, RegionId, Regions};
use crate::tlb::TlbFlush;
use hmm_core::Host;

/// Size of the window one guest fault maps (`PTRS_PER_PMD` pages, as mshv).
pub const WINDOW: u64 = 2 << 20;
/// Pages in a window.
pub const WINDOW_PAGES: usize = (WINDOW / PAGE_SIZE) as usize;

/// The result of one window fault before async handling.
pub(crate) enum WindowOutcome {
    Done(GuestFault),
    WouldBlock { id: RegionId, window: u64 },
}

impl<'h, F, A, T, H, N, const R: usize, const P: usize> GuestMemory<'h, F, A, T, H, N, R, P>
where
    F: Format,
    A: TableAlloc,
    T: TlbFlush,
    H: Host,
    N: IntervalNotifier + ?Sized,
{
    /// Handle a second-stage fault at `gpa` for `access`, blocking in the
    /// host fault handler as long as it needs (e.g. for a userfaultfd
    /// handler to supply the page). Returns [`GuestFault::Mapped`],
    /// [`GuestFault::Retry`] or [`GuestFault::Error`], never `Pending`.
    pub fn handle_fault(&self, gpa: u64, access: Access) -> GuestFault {
        bump(&self.counters.faults, 1);
        let out = match self.fault_window(gpa, access, false) {
            WindowOutcome::Done(out) => out,
            // Without nowait hmm-core never reports would-block.
            WindowOutcome::WouldBlock { .. } => GuestFault::Retry,
        };
        self.count(out);
        out
    }

    pub(crate) fn count(&self, out: GuestFault) {
        let c = match out {
            GuestFault::Mapped { .. } => &self.counters.mapped,
            GuestFault::Retry => &self.counters.retries,
            GuestFault::Pending(_) => &self.counters.pending,
            GuestFault::Error(_) => &self.counters.errors,
        };
        bump(c, 1);
    }

    /// Steps 1-4 of the module docs. With `nowait`, a host fault that would
    /// block is reported instead of waited for.
    pub(crate) fn fault_window(&self, gpa: u64, access: Access, nowait: bool) -> WindowOutcome {
        let Some(region) = self.regions.find_gpa(gpa) else {
            return WindowOutcome::Done(GuestFault::Error(FaultError::NoRegion));
        };
        let spec = region.spec;
        let access = if access.is_empty() { Perm::R } else { access };
        if !spec.perm.contains(access) {
            return WindowOutcome::Done(GuestFault::Error(FaultError::Permission {
                allowed: spec.perm,
                access,
            }));
        }
        let chunk = gpa & !(WINDOW - 1);
        let ws = chunk.max(spec.gpa);
        let we = (chunk + WINDOW).min(spec.gpa_end());
        let mut pfns = [0u64; WINDOW_PAGES];
        let mut req = PfnFlags::REQ_FAULT;
        if access.contains(Perm::W) {
            req |= PfnFlags::REQ_WRITE;
        }
        let opts = Options {
            policy: self.config.policy,
            timeout_ns: self.config.fault_timeout_ns,
            nowait,
        };
        let mut span = (ws, we);
        let seq = loop {
            let n = ((span.1 - span.0) / PAGE_SIZE) as usize;
            let mut range = Range::new(spec.hva_of(span.0), spec.hva_of(span.1), &mut pfns[..n])
                .with_default_flags(req.bits())
                .with_notifier(region.notifier);
            let mut st = Stats::default();
            let r = range_fault_owning_lock(&self.host.env(), &mut range, &opts, &mut st);
            bump(&self.counters.host_faults, st.faults);
            bump(&self.counters.host_lock_drops, st.lock_drops);
            bump(&self.counters.host_resumes, st.resumes);
            bump(&self.counters.host_restarts, st.restarts);
            match r {
                Ok(()) => break range.notifier_seq,
                Err(Error::Again) if nowait => {
                    return WindowOutcome::WouldBlock {
                        id: region.id,
                        window: ws,
                    }
                }
                Err(Error::Busy) => return WindowOutcome::Done(GuestFault::Retry),
                Err(Error::Intr) => {
                    return WindowOutcome::Done(GuestFault::Error(FaultError::Host(Error::Intr)))
                }
                Err(e) => {
                    let page = gpa & !(PAGE_SIZE - 1);
                    if span == (page, page + PAGE_SIZE) {
                        return WindowOutcome::Done(GuestFault::Error(FaultError::Host(e)));
                    }
                    bump(&self.counters.single_page_fallbacks, 1);
                    span = (page, page + PAGE_SIZE);
                }
            }
        };
        let n = ((span.1 - span.0) / PAGE_SIZE) as usize;
        let Some(lock) = self.regions.lock_slot(region.id) else {
            return WindowOutcome::Done(GuestFault::Retry);
        };
        if !Regions::<N, R>::is_live(region.id, &lock) || region.notifier.read_retry(seq) {
            return WindowOutcome::Done(GuestFault::Retry);
        }
        let mut table = self.table.lock();
        let out = self.install(&mut table, &region, span.0, &pfns[..n], gpa);
        drop(table);
        drop(lock);
        WindowOutcome::Done(out)
    }

    /// Map the faulted entries `pfns` (window starting at `ws`) with the
    /// largest leaves allowed. Called under the region lock and the table
    /// lock. New descriptors are published before returning; a faulting
    /// leaf found already as wanted gets the faulting CPU's stale
    /// translation flushed (step 5 of the module docs).
    fn install(
        &self,
        table: &mut PageTable<F>,
        region: &Region<'h, N>,
        ws: u64,
        pfns: &[u64],
        gpa: u64,
    ) -> GuestFault {
        let spec = region.spec;
        let mut leaves = 0u32;
        let mut wrote = false;
        let mut at_gpa = None;
        let mut failed = None;
        let mut i = 0usize;
        while i < pfns.len() {
            let g = ws + i as u64 * PAGE_SIZE;
            let e = HmmPfn(pfns[i]);
            if !e.is_valid() || e.is_error() {
                i += 1;
                continue;
            }
            let mut perm = spec.perm & (Perm::R | Perm::X);
            if spec.perm.contains(Perm::W) && e.is_writable() {
                perm |= Perm::W;
            }
            let size = self.leaf_size(region, ws, pfns, i);
            let base = g & !(size.bytes() - 1);
            let first_pfn = e.pfn() - (g - base) / PAGE_SIZE;
            let pa = first_pfn << 12;
            if pa
                .checked_add(size.bytes())
                .is_none_or(|end| end > self.oa_limit())
            {
                failed = Some(FaultError::AddressTooWide);
                break;
            }
            let done = match table.map(&self.alloc, &self.tlb, base, pa, size, Attrs::ram(perm)) {
                Ok(done) => done,
                Err(MapError::NoMemory) => {
                    failed = Some(FaultError::NoTableMemory);
                    break;
                }
                Err(e) => {
                    failed = Some(FaultError::Table(e));
                    break;
                }
            };
            wrote |= done.wrote();
            if done == Installed::Upgraded {
                bump(&self.counters.upgrades, 1);
            }
            leaves += 1;
            bump(self.leaf_counter(size), 1);
            if base <= gpa && gpa < base + size.bytes() {
                at_gpa = Some((base, size, done));
            }
            // Skip the entries this leaf covered.
            let next = base + size.bytes();
            i = usize::try_from((next - ws) / PAGE_SIZE).unwrap_or(usize::MAX);
        }
        if wrote {
            // Whatever was written reaches the walkers before the vCPU
            // re-enters the guest (also when a later leaf failed).
            self.tlb.publish();
            bump(&self.counters.published, 1);
        }
        if let Some(e) = failed {
            return GuestFault::Error(e);
        }
        match at_gpa {
            Some((base, size, done)) => {
                if done == Installed::Unchanged {
                    // The guest faulted on a leaf that already allows the
                    // access: this CPU holds a stale translation (the
                    // architectures may cache one that faulted).
                    self.tlb.flush_upgrade(base, size);
                    bump(&self.counters.stale_flushes, 1);
                }
                GuestFault::Mapped { size, leaves }
            }
            // The faulting page itself was not valid: cannot happen with
            // REQ_FAULT on every page, but never report it mapped.
            None => GuestFault::Retry,
        }
    }

    /// One past the highest output address the table may point at.
    fn oa_limit(&self) -> u64 {
        1 << u32::from(self.config.table.oa_bits()).min(F::OA_BITS)
    }

    fn leaf_counter(&self, size: PageSize) -> &AtomicU64 {
        match size {
            PageSize::Size4K => &self.counters.leaves_4k,
            PageSize::Size2M => &self.counters.leaves_2m,
            PageSize::Size1G => &self.counters.leaves_1g,
        }
    }

    /// The largest leaf for entry `i` of the window at `ws`.
    fn leaf_size(&self, region: &Region<'h, N>, ws: u64, pfns: &[u64], i: usize) -> PageSize {
        let spec = region.spec;
        let g = ws + i as u64 * PAGE_SIZE;
        let e = HmmPfn(pfns[i]);
        for size in [PageSize::Size1G, PageSize::Size2M] {
            if e.order() < size.order() || !self.config.table.allows_size(size) {
                continue;
            }
            let bytes = size.bytes();
            let base = g & !(bytes - 1);
            // The block lies in the region, its host range is aligned like
            // the host leaf, and the host leaf's frames are aligned.
            if base < spec.gpa || base + bytes > spec.gpa_end() {
                continue;
            }
            if !spec.hva_of(base).is_multiple_of(bytes) {
                continue;
            }
            let back = (g - base) / PAGE_SIZE;
            if e.pfn() < back || !(e.pfn() - back).is_multiple_of(bytes / PAGE_SIZE) {
                continue;
            }
            // Every window entry inside the block agrees (same leaf).
            let lo = base.max(ws);
            let hi = (base + bytes).min(ws + pfns.len() as u64 * PAGE_SIZE);
            let first = (lo - ws) / PAGE_SIZE;
            let agree = (first..(hi - ws) / PAGE_SIZE).all(|k| {
                let x = HmmPfn(pfns[k as usize]);
                x.is_valid()
                    && !x.is_error()
                    && x.is_writable() == e.is_writable()
                    && x.order() >= size.order()
                    && x.pfn() == e.pfn() - back + (ws + k * PAGE_SIZE - base) / PAGE_SIZE
            });
            if agree {
                return size;
            }
        }
        PageSize::Size4K
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::descriptor::MemType;
    use crate::ept::Ept;
    use crate::region::RegionSpec;
    use crate::stage2::Stage2;
    use crate::testutil::*;
    use crate::Config;
    use core::cell::Cell;
    use hmm_core::doubles::{FaultMode, TestMm};
    use hmm_core::{VmFaultError, VmFlags};

    const HVA: u64 = 0x7f00_0000_0000;
    const RW: VmFlags = VmFlags::READ.union(VmFlags::WRITE);

    fn spec(gpa: u64, size: u64, hva: u64, perm: Perm) -> RegionSpec {
        RegionSpec {
            gpa,
            size,
            hva,
            perm,
        }
    }

    fn small_window_maps_every_page<F: Format>() {
        let mm = TestMm::new();
        mm.add_vma(HVA, HVA + 16 * 4096, RW, 0, FaultMode::Populate);
        let (pool, tlb) = (pool(), CountTlb::default());
        let vm: Vm<'_, F, TestMm> = vm(&mm, &pool, &tlb, Config::default());
        vm.add_region(
            spec(0x8000_0000, 16 * 4096, HVA, Perm::R | Perm::W | Perm::X),
            &mm,
        )
        .unwrap();
        let out = vm.handle_fault(0x8000_5000, Perm::R);
        assert_eq!(
            out,
            GuestFault::Mapped {
                size: PageSize::Size4K,
                leaves: 16
            }
        );
        let all = leaves(&vm);
        assert_eq!(all.len(), 16);
        for m in &all {
            // Anonymous read faults in TestMm map writable pages (VM_WRITE).
            assert_eq!(m.attrs, Attrs::ram(Perm::R | Perm::W | Perm::X));
        }
        assert_eq!(vm.audit(), Ok(16));
        let st = vm.stats();
        assert_eq!(
            (st.faults, st.mapped, st.leaves_4k, st.host_faults),
            (1, 1, 16, 16)
        );
    }

    #[test]
    fn small_window_maps_every_page_ept() {
        small_window_maps_every_page::<Ept>();
    }
    #[test]
    fn small_window_maps_every_page_stage2() {
        small_window_maps_every_page::<Stage2>();
    }

    #[test]
    fn region_permissions_are_enforced_and_capped() {
        let mm = TestMm::new();
        mm.add_vma(HVA, HVA + 4 * 4096, RW, 0, FaultMode::Populate);
        let (pool, tlb) = (pool(), CountTlb::default());
        let vm: Vm<'_, Stage2, TestMm> = vm(&mm, &pool, &tlb, Config::default());
        vm.add_region(spec(0, 4 * 4096, HVA, Perm::R), &mm).unwrap();
        for access in [Perm::W, Perm::X, Perm::R | Perm::W] {
            assert_eq!(
                vm.handle_fault(0x1000, access),
                GuestFault::Error(FaultError::Permission {
                    allowed: Perm::R,
                    access
                })
            );
        }
        assert!(leaves(&vm).is_empty(), "a refused access maps nothing");
        assert!(matches!(
            vm.handle_fault(0x1000, Perm::R),
            GuestFault::Mapped { .. }
        ));
        // The host page is writable, the region is not: read-only, no exec.
        assert_eq!(vm.translate(0x1000).unwrap().attrs, Attrs::ram(Perm::R));
        assert_eq!(vm.audit(), Ok(4));
        assert_eq!(
            vm.handle_fault(0x4000, Perm::R),
            GuestFault::Error(FaultError::NoRegion)
        );
    }

    #[test]
    fn read_only_host_pages_map_read_only_until_a_write_fault() {
        let mm = TestMm::new();
        mm.add_vma(HVA, HVA + 0x2000, RW, 0, FaultMode::Populate);
        // A COW-shared page: present, read-only, in a writable VMA.
        let shared = hmm_core::Leaf::Present(hmm_core::Present {
            pfn: 0x777,
            ..Default::default()
        });
        mm.map(HVA, 1, shared);
        let (pool, tlb) = (pool(), CountTlb::default());
        let vm: Vm<'_, Ept, TestMm> = vm(&mm, &pool, &tlb, Config::default());
        vm.add_region(spec(0, 0x2000, HVA, Perm::R | Perm::W), &mm)
            .unwrap();
        assert!(matches!(
            vm.handle_fault(0, Perm::R),
            GuestFault::Mapped { .. }
        ));
        let m = vm.translate(0).unwrap();
        assert_eq!((m.pa, m.attrs.perm), (0x777 << 12, Perm::R));
        assert_eq!(vm.audit(), Ok(2));
        // The write fault breaks COW on the host and maps the copy writable.
        assert!(matches!(
            vm.handle_fault(0, Perm::W),
            GuestFault::Mapped { .. }
        ));
        let m = vm.translate(0).unwrap();
        assert_ne!(m.pa, 0x777 << 12);
        assert_eq!(m.attrs.perm, Perm::R | Perm::W);
        assert_eq!(vm.audit(), Ok(2));
    }

    /// The host makes a read-only page writable in place (Linux reuses an
    /// exclusive anonymous page on a write fault, with no invalidation):
    /// the guest's write fault widens the stage-2 leaf in place, flushes
    /// that leaf, and publishes it. A repeated fault on the now-writable
    /// leaf writes nothing but flushes the faulting CPU's stale entry.
    #[test]
    fn in_place_upgrade_is_flushed_and_a_stale_fault_flushes_again() {
        let mm = TestMm::new();
        mm.add_vma(HVA, HVA + 0x1000, RW, 0, FaultMode::Populate);
        let ro = hmm_core::Present {
            pfn: 0x777,
            ..Default::default()
        };
        mm.map(HVA, 1, hmm_core::Leaf::Present(ro));
        let (pool, tlb) = (pool(), CountTlb::default());
        let vm: Vm<'_, Stage2, TestMm> = vm(&mm, &pool, &tlb, Config::default());
        vm.add_region(spec(0x4000, 0x1000, HVA, Perm::R | Perm::W), &mm)
            .unwrap();
        assert!(matches!(
            vm.handle_fault(0x4000, Perm::R),
            GuestFault::Mapped { .. }
        ));
        assert_eq!(vm.translate(0x4000).unwrap().attrs.perm, Perm::R);
        assert_eq!((tlb.publishes(), tlb.upgrades().len()), (1, 0));
        let flushes = tlb.0.get();
        // The host entry becomes writable, same frame.
        let rw = hmm_core::Present { write: true, ..ro };
        mm.unmap(HVA, HVA + 0x1000);
        mm.map(HVA, 1, hmm_core::Leaf::Present(rw));
        assert!(matches!(
            vm.handle_fault(0x4000, Perm::W),
            GuestFault::Mapped { .. }
        ));
        let m = vm.translate(0x4000).unwrap();
        assert_eq!((m.pa, m.attrs.perm), (0x777 << 12, Perm::R | Perm::W));
        assert_eq!(tlb.upgrades(), [(0x4000, PageSize::Size4K)]);
        assert_eq!(tlb.0.get(), flushes, "an upgrade needs no broadcast flush");
        assert_eq!(tlb.publishes(), 2);
        let st = vm.stats();
        assert_eq!((st.upgrades, st.stale_flushes, st.published), (1, 0, 2));
        // The guest faults again although the leaf allows the write.
        assert!(matches!(
            vm.handle_fault(0x4000, Perm::W),
            GuestFault::Mapped { .. }
        ));
        assert_eq!(tlb.upgrades().len(), 2, "the stale translation is flushed");
        assert_eq!(tlb.publishes(), 2, "nothing new to publish");
        let st = vm.stats();
        assert_eq!((st.upgrades, st.stale_flushes, st.published), (1, 1, 2));
        assert_eq!(vm.audit(), Ok(1));
    }

    /// A 1 GiB host leaf is mapped with the largest leaf the table allows.
    #[test]
    fn leaf_sizes_fall_back_to_what_the_hardware_has() {
        use crate::layout::{LeafSizes, TableConfig};
        let h1 = 0x7e00_0000_0000;
        let cases = [
            (LeafSizes::all(), PageSize::Size1G, 1),
            (LeafSizes::SIZE_2M, PageSize::Size2M, 1),
            (LeafSizes::empty(), PageSize::Size4K, 512),
        ];
        for (sizes, want, leaves_n) in cases {
            let mm = TestMm::new();
            mm.add_vma(h1, h1 + G1, RW | VmFlags::HUGETLB, 18, FaultMode::Populate);
            let (pool, tlb) = (pool(), CountTlb::default());
            let config = Config {
                table: TableConfig::FULL.with_leaf_sizes(sizes),
                ..Config::default()
            };
            let vm: Vm<'_, Ept, TestMm> = vm(&mm, &pool, &tlb, config);
            vm.add_region(spec(G1, G1, h1, Perm::R | Perm::W), &mm)
                .unwrap();
            assert_eq!(
                vm.handle_fault(G1 + 0x1234_5000, Perm::R),
                GuestFault::Mapped {
                    size: want,
                    leaves: leaves_n
                },
                "{sizes:?}"
            );
            let all = leaves(&vm);
            assert!(all.iter().all(|m| m.size == want), "{sizes:?}");
            assert_eq!(vm.audit(), Ok(all.len() as u64 * (want.bytes() >> 12)));
        }
    }

    /// A stage 2 starting at level 2 (32-bit IPA) has no 1 GiB blocks, and
    /// regions must lie below its input size.
    #[test]
    fn small_ipa_layouts_limit_regions_and_blocks() {
        use crate::layout::TableConfig;
        let h1 = 0x7e00_0000_0000;
        let mm = TestMm::new();
        mm.add_vma(h1, h1 + G1, RW | VmFlags::HUGETLB, 18, FaultMode::Populate);
        let (pool, tlb) = (pool(), CountTlb::default());
        let config = Config {
            table: TableConfig::new(32, 2).unwrap(),
            ..Config::default()
        };
        let vm: Vm<'_, Stage2, TestMm> = vm(&mm, &pool, &tlb, config);
        assert_eq!(
            vm.add_region(spec(4 * G1 - M2, 2 * M2, h1, Perm::R), &mm),
            Err(crate::RegionError::OutOfRange)
        );
        vm.add_region(spec(G1, G1, h1, Perm::R | Perm::W), &mm)
            .unwrap();
        assert_eq!(
            vm.handle_fault(2 * G1 - 8, Perm::W),
            GuestFault::Mapped {
                size: PageSize::Size2M,
                leaves: 1
            }
        );
        assert_eq!(vm.audit(), Ok(512));
    }

    #[test]
    fn hugetlb_2m_and_1g_become_blocks() {
        let mm = TestMm::new();
        let h2 = HVA;
        let h1 = 0x7e00_0000_0000;
        mm.add_vma(
            h2,
            h2 + 2 * M2,
            RW | VmFlags::HUGETLB,
            9,
            FaultMode::Populate,
        );
        mm.add_vma(h1, h1 + G1, RW | VmFlags::HUGETLB, 18, FaultMode::Populate);
        let (pool, tlb) = (pool(), CountTlb::default());
        let vm: Vm<'_, Ept, TestMm> = vm(&mm, &pool, &tlb, Config::default());
        vm.add_region(spec(4 * G1, 2 * M2, h2, Perm::R | Perm::W), &mm)
            .unwrap();
        vm.add_region(spec(G1, G1, h1, Perm::R | Perm::W), &mm)
            .unwrap();
        assert_eq!(
            vm.handle_fault(4 * G1 + M2 + 0x3000, Perm::W),
            GuestFault::Mapped {
                size: PageSize::Size2M,
                leaves: 1
            }
        );
        assert_eq!(
            vm.handle_fault(G1 + 0x1234_5000, Perm::R),
            GuestFault::Mapped {
                size: PageSize::Size1G,
                leaves: 1
            }
        );
        let all = leaves(&vm);
        assert_eq!(all.len(), 2);
        assert_eq!((all[0].gpa, all[0].size), (G1, PageSize::Size1G));
        assert_eq!((all[1].gpa, all[1].size), (4 * G1 + M2, PageSize::Size2M));
        assert_eq!(all[0].pa % G1, 0);
        assert_eq!(all[0].attrs.mem, MemType::WriteBack);
        assert_eq!(vm.audit(), Ok(512 + (1 << 18)));
        let st = vm.stats();
        assert_eq!((st.leaves_2m, st.leaves_1g, st.leaves_4k), (1, 1, 0));
    }

    #[test]
    fn misaligned_gpa_maps_huge_host_pages_with_small_leaves() {
        let mm = TestMm::new();
        mm.add_vma(HVA, HVA + M2, RW | VmFlags::HUGETLB, 9, FaultMode::Populate);
        let (pool, tlb) = (pool(), CountTlb::default());
        let vm: Vm<'_, Ept, TestMm> = vm(&mm, &pool, &tlb, Config::default());
        // GPA 4 KiB off 2 MiB alignment relative to the host address.
        vm.add_region(spec(M2 + 0x1000, M2, HVA, Perm::R | Perm::W), &mm)
            .unwrap();
        let out = vm.handle_fault(M2 + 0x1000, Perm::R);
        assert_eq!(
            out,
            GuestFault::Mapped {
                size: PageSize::Size4K,
                leaves: 511
            }
        );
        assert!(leaves(&vm).iter().all(|m| m.size == PageSize::Size4K));
        assert_eq!(vm.audit(), Ok(511));
    }

    #[test]
    fn userfault_region_is_mapped_through_the_lock_dropping_path() {
        let mm = TestMm::new();
        mm.add_vma(
            HVA,
            HVA + 8 * 4096,
            RW,
            0,
            FaultMode::Userfault { resolve: true },
        );
        let (pool, tlb) = (pool(), CountTlb::default());
        let vm: Vm<'_, Ept, TestMm> = vm(&mm, &pool, &tlb, Config::default());
        vm.add_region(spec(0, 8 * 4096, HVA, Perm::R | Perm::W), &mm)
            .unwrap();
        assert!(matches!(
            vm.handle_fault(0x2000, Perm::W),
            GuestFault::Mapped { .. }
        ));
        assert_eq!(leaves(&vm).len(), 8);
        assert_eq!(vm.stats().host_lock_drops, 8);
        assert_eq!((vm.stats().host_resumes, vm.stats().host_restarts), (8, 0));
        assert_eq!(vm.audit(), Ok(8));
    }

    #[test]
    fn host_errors_reach_the_vcpu() {
        let mm = TestMm::new();
        mm.add_vma(HVA, HVA + 0x4000, RW, 0, FaultMode::Fail(VmFaultError::Oom));
        mm.add_vma(
            HVA + 0x4000,
            HVA + 0x8000,
            RW,
            0,
            FaultMode::Fail(VmFaultError::Sigbus),
        );
        let (pool, tlb) = (pool(), CountTlb::default());
        let vm: Vm<'_, Ept, TestMm> = vm(&mm, &pool, &tlb, Config::default());
        vm.add_region(spec(0, 0x4000, HVA, Perm::R | Perm::W), &mm)
            .unwrap();
        vm.add_region(spec(0x4000, 0x4000, HVA + 0x4000, Perm::R | Perm::W), &mm)
            .unwrap();
        assert_eq!(
            vm.handle_fault(0, Perm::R),
            GuestFault::Error(FaultError::Host(Error::NoMem))
        );
        assert_eq!(
            vm.handle_fault(0x5000, Perm::R),
            GuestFault::Error(FaultError::Host(Error::Fault))
        );
        assert_eq!(vm.stats().errors, 2);
    }

    #[test]
    fn window_failure_falls_back_to_the_faulting_page() {
        let mm = TestMm::new();
        // Only the first 4 pages of the region's host range have a VMA.
        mm.add_vma(HVA, HVA + 0x4000, RW, 0, FaultMode::Populate);
        let (pool, tlb) = (pool(), CountTlb::default());
        let vm: Vm<'_, Ept, TestMm> = vm(&mm, &pool, &tlb, Config::default());
        vm.add_region(spec(0, 0x8000, HVA, Perm::R | Perm::W), &mm)
            .unwrap();
        assert_eq!(
            vm.handle_fault(0x1000, Perm::R),
            GuestFault::Mapped {
                size: PageSize::Size4K,
                leaves: 1
            }
        );
        assert_eq!(vm.stats().single_page_fallbacks, 1);
        assert_eq!(
            vm.handle_fault(0x6000, Perm::R),
            GuestFault::Error(FaultError::Host(Error::Fault))
        );
        assert_eq!(vm.audit(), Ok(1));
    }

    #[test]
    fn moved_sequence_maps_nothing() {
        let mm = TestMm::new();
        mm.add_vma(HVA, HVA + 0x4000, RW, 0, FaultMode::Populate);
        let flaky = Flaky {
            mm: &mm,
            fail_next: Cell::new(true),
        };
        let (pool, tlb) = (pool(), CountTlb::default());
        let vm: Vm<'_, Ept, Flaky<'_>> = vm(&mm, &pool, &tlb, Config::default());
        vm.add_region(spec(0, 0x4000, HVA, Perm::R | Perm::W), &flaky)
            .unwrap();
        assert_eq!(vm.handle_fault(0, Perm::R), GuestFault::Retry);
        assert!(leaves(&vm).is_empty());
        assert!(matches!(
            vm.handle_fault(0, Perm::R),
            GuestFault::Mapped { .. }
        ));
        assert_eq!(vm.stats().retries, 1);
    }

    #[test]
    fn budget_expiry_is_retry_and_fatal_signal_is_an_error() {
        let mm = TestMm::new();
        mm.add_vma(
            HVA,
            HVA + 0x4000,
            RW,
            0,
            FaultMode::Userfault { resolve: false },
        );
        mm.set_fault_cost_ns(10);
        let (pool, tlb) = (pool(), CountTlb::default());
        let cfg = Config {
            fault_timeout_ns: 100,
            ..Config::default()
        };
        let vm: Vm<'_, Ept, TestMm> = vm(&mm, &pool, &tlb, cfg);
        vm.add_region(spec(0, 0x4000, HVA, Perm::R | Perm::W), &mm)
            .unwrap();
        assert_eq!(vm.handle_fault(0, Perm::R), GuestFault::Retry);
        mm.signal_on_drop();
        assert_eq!(
            vm.handle_fault(0, Perm::R),
            GuestFault::Error(FaultError::Host(Error::Intr))
        );
        assert!(leaves(&vm).is_empty());
    }

    #[test]
    fn exhausted_table_pool_is_an_error() {
        let mm = TestMm::new();
        mm.add_vma(HVA, HVA + 0x1000, RW, 0, FaultMode::Populate);
        let pool = Box::<crate::StaticPool<64>>::default();
        // Leave only the root free for the manager.
        for _ in 0..63 {
            crate::TableAlloc::alloc_table(&*pool).unwrap();
        }
        let tlb = CountTlb::default();
        let vm: Vm<'_, Ept, TestMm> = vm(&mm, &pool, &tlb, Config::default());
        vm.add_region(spec(0, 0x1000, HVA, Perm::R), &mm).unwrap();
        assert_eq!(
            vm.handle_fault(0, Perm::R),
            GuestFault::Error(FaultError::NoTableMemory)
        );
    }

    extern crate std;
    use std::boxed::Box;
}
