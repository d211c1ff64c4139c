//! The guest-memory manager: one VM's second-stage table, its regions, its
//! pending asynchronous faults and its counters.
//!
//! [`GuestMemory`] ties the parts together; its fault path lives in
//! [`fault`](super::fault), the no-wait path in
//! [`async_pf`](super::async_pf) and the host's invalidate callback in
//! [`invalidate`](super::invalidate).
//!
//! # Locks
//!
//! * the region table (`spin::RwLock`), held only to look regions up;
//! * one *region lock* per region (`spin::Mutex`), under which a fault
//!   checks `read_retry` and installs mappings and the invalidate callback
//!   moves the sequence and unmaps;
//! * the table lock (`spin::Mutex<PageTable>`), always taken inside a
//!   region lock (or alone);
//! * the async-fault slots (`spin::Mutex`), never held with another lock.
//!
//! No lock is held while hmm-core faults the host range (which may sleep
//! and drop the host mmap lock), so the host's invalidate callback, which
//! takes a region lock, cannot deadlock against a faulting vCPU.

use core::sync::atomic::{AtomicU64, Ordering};

use hmm_core::{IntervalNotifier, Policy};

use super::alloc::TableAlloc;
use super::async_pf::AsyncSlot;
use super::descriptor::Format;
use super::host::Host;
use super::layout::TableConfig;
use super::pagetable::{MapError, Mapping, PageTable};
use super::region::{RegionError, RegionId, RegionSpec, Regions};
use super::tlb::TlbFlush;

/// Tunables of the fault path and the layout of the second-stage table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Config {
    /// Retry budget of one host range fault in the host clock's
    /// nanoseconds; 0 is unbounded (as mshv). Expiry makes the guest fault
    /// return [`GuestFault::Retry`](super::fault::GuestFault::Retry).
    pub fault_timeout_ns: u64,
    /// What hmm-core does after a host fault dropped the mmap lock.
    pub policy: Policy,
    /// The table's layout and the leaf sizes / execute-only leaves the
    /// hardware supports: from [`Stage2Vtcr::table`](super::vtcr::Stage2Vtcr::table)
    /// on Arm, [`EptCaps::table_config`](super::vmx::EptCaps::table_config)
    /// on x86. The default ([`TableConfig::FULL`]) suits EPT only on a CPU
    /// with every EPT capability, and an Arm stage 2 only with 48 PA bits.
    pub table: TableConfig,
}

/// Monotonic counters (a snapshot from [`GuestMemory::stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GuestStats {
    /// Guest faults handled (blocking and no-wait).
    pub faults: u64,
    /// Faults that installed mappings.
    pub mapped: u64,
    /// Faults that returned retry (the notifier sequence moved, the host
    /// fault ran out of budget, or the region went away meanwhile).
    pub retries: u64,
    /// Faults that failed.
    pub errors: u64,
    /// No-wait faults deferred to a worker.
    pub pending: u64,
    /// Deferred faults completed by a worker.
    pub async_completed: u64,
    /// No-wait faults refused because every async slot was busy.
    pub async_full: u64,
    /// Window faults that failed and were retried for the single page.
    pub single_page_fallbacks: u64,
    /// 4 KiB leaves installed.
    pub leaves_4k: u64,
    /// 2 MiB leaves installed.
    pub leaves_2m: u64,
    /// 1 GiB leaves installed.
    pub leaves_1g: u64,
    /// Host pages faulted by hmm-core (calls to the host fault handler).
    pub host_faults: u64,
    /// Host faults that dropped the mmap lock.
    pub host_lock_drops: u64,
    /// Host walks resumed after a lock drop, at the address where the last
    /// walk stopped (not restarted from the window start).
    pub host_resumes: u64,
    /// Host walks restarted from the window start (the sequence moved).
    pub host_restarts: u64,
    /// Invalidate callbacks that unmapped something in a live region.
    pub invalidations: u64,
    /// Blocks split by invalidations.
    pub splits: u64,
    /// Blocks unmapped whole because no table page was free for a split.
    pub split_fallbacks: u64,
    /// Leaves whose permissions a fault widened in place (each followed by
    /// [`TlbFlush::flush_upgrade`]).
    pub upgrades: u64,
    /// Faults that found their leaf already allowing the access and
    /// flushed the faulting CPU's stale translation of it
    /// ([`TlbFlush::flush_upgrade`]).
    pub stale_flushes: u64,
    /// Faults that wrote descriptors and published them
    /// ([`TlbFlush::publish`]) before returning.
    pub published: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub faults: AtomicU64,
    pub mapped: AtomicU64,
    pub retries: AtomicU64,
    pub errors: AtomicU64,
    pub pending: AtomicU64,
    pub async_completed: AtomicU64,
    pub async_full: AtomicU64,
    pub single_page_fallbacks: AtomicU64,
    pub leaves_4k: AtomicU64,
    pub leaves_2m: AtomicU64,
    pub leaves_1g: AtomicU64,
    pub host_faults: AtomicU64,
    pub host_lock_drops: AtomicU64,
    pub host_resumes: AtomicU64,
    pub host_restarts: AtomicU64,
    pub invalidations: AtomicU64,
    pub splits: AtomicU64,
    pub split_fallbacks: AtomicU64,
    pub upgrades: AtomicU64,
    pub stale_flushes: AtomicU64,
    pub published: AtomicU64,
}

pub(crate) fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// The guest-memory manager of one VM.
///
/// * `F`: the descriptor format ([`Ept`](super::Ept) or
///   [`Stage2`](super::Stage2));
/// * `A`: where table pages come from;
/// * `T`: the TLB-flush hook;
/// * `H`: the host address space;
/// * `N`: the read side of the host interval notifier of each region;
/// * `R`: region capacity; `P`: capacity of pending asynchronous faults.
#[derive(Debug)]
pub struct GuestMemory<'h, F, A, T, H, N, const R: usize = 16, const P: usize = 32>
where
    F: Format,
    A: TableAlloc,
    T: TlbFlush,
    H: Host,
    N: IntervalNotifier + ?Sized,
{
    pub(crate) host: H,
    pub(crate) alloc: A,
    pub(crate) tlb: T,
    pub(crate) table: spin::Mutex<PageTable<F>>,
    pub(crate) regions: Regions<'h, N, R>,
    pub(crate) slots: spin::Mutex<[AsyncSlot; P]>,
    pub(crate) config: Config,
    pub(crate) counters: Counters,
}

impl<'h, F, A, T, H, N, const R: usize, const P: usize> GuestMemory<'h, F, A, T, H, N, R, P>
where
    F: Format,
    A: TableAlloc,
    T: TlbFlush,
    H: Host,
    N: IntervalNotifier + ?Sized,
{
    /// A manager with an empty table laid out by `config.table` (its root
    /// pages come from `alloc`).
    pub fn new(host: H, alloc: A, tlb: T, config: Config) -> Result<Self, MapError> {
        let table = PageTable::with_config(&alloc, config.table)?;
        Ok(GuestMemory {
            host,
            alloc,
            tlb,
            table: spin::Mutex::new(table),
            regions: Regions::new(),
            slots: spin::Mutex::new([AsyncSlot::FREE; P]),
            config,
            counters: Counters::default(),
        })
    }

    /// Physical address of the root table: the EPTP address field (see
    /// [`EptCaps::eptp`](super::vmx::EptCaps::eptp)), or the VTTBR_EL2 base
    /// address, aligned to the concatenated root's size, for the VTCR_EL2
    /// that chose `config.table` (T0SZ = 64 - IPA bits, SL0 for the start
    /// level, TG0 = 4 KiB: see [`Stage2Vtcr`](super::vtcr::Stage2Vtcr)).
    pub fn root(&self) -> u64 {
        self.table.lock().root()
    }

    /// The table's layout (`config.table`).
    pub fn table_config(&self) -> TableConfig {
        self.config.table
    }

    /// The host address space.
    pub fn host(&self) -> &H {
        &self.host
    }

    /// The table-page allocator.
    pub fn allocator(&self) -> &A {
        &self.alloc
    }

    /// Add a region. `notifier` is the read side of an interval notifier
    /// the caller subscribed over the region's host range; the caller routes
    /// that subscription's invalidations to
    /// [`invalidate`](GuestMemory::invalidate). Nothing is mapped until the
    /// guest faults.
    ///
    /// The guest range must lie below the table's input-address limit
    /// ([`RegionError::OutOfRange`] otherwise).
    pub fn add_region(&self, spec: RegionSpec, notifier: &'h N) -> Result<RegionId, RegionError> {
        let fits = spec
            .gpa
            .checked_add(spec.size)
            .is_some_and(|e| e <= self.config.table.ia_limit());
        if !fits {
            return Err(RegionError::OutOfRange);
        }
        self.regions.insert(spec, notifier)
    }

    /// Remove a region and unmap its guest range. Faults in flight on it
    /// return retry (and then "no region").
    pub fn remove_region(&self, id: RegionId) -> Result<RegionSpec, RegionError> {
        let r = self.regions.remove(id)?;
        if let Some(mut g) = self.regions.lock_slot(id) {
            *g = 0;
            self.table
                .lock()
                .unmap(&self.alloc, &self.tlb, r.spec.gpa, r.spec.gpa_end());
        }
        Ok(r.spec)
    }

    /// Unmap guest `[start, end)` from the second-stage table (and flush)
    /// without touching the host: the guest faults it back in on its next
    /// access. For ballooning, dirty-logging restarts and benchmarks.
    pub fn zap(&self, start: u64, end: u64) -> crate::UnmapStats {
        self.table.lock().unmap(&self.alloc, &self.tlb, start, end)
    }

    /// The region containing `gpa`.
    pub fn region_at(&self, gpa: u64) -> Option<(RegionId, RegionSpec)> {
        self.regions.find_gpa(gpa).map(|r| (r.id, r.spec))
    }

    /// The second-stage leaf mapping `gpa`, if any.
    pub fn translate(&self, gpa: u64) -> Option<Mapping> {
        self.table.lock().translate(&self.alloc, gpa)
    }

    /// Call `f` for every second-stage leaf, in guest-physical order, under
    /// the table lock (`f` must not call back into the manager).
    pub fn for_each_mapping<G: FnMut(Mapping)>(&self, f: G) {
        self.table.lock().for_each_leaf(&self.alloc, f)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> GuestStats {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        GuestStats {
            faults: l(&c.faults),
            mapped: l(&c.mapped),
            retries: l(&c.retries),
            errors: l(&c.errors),
            pending: l(&c.pending),
            async_completed: l(&c.async_completed),
            async_full: l(&c.async_full),
            single_page_fallbacks: l(&c.single_page_fallbacks),
            leaves_4k: l(&c.leaves_4k),
            leaves_2m: l(&c.leaves_2m),
            leaves_1g: l(&c.leaves_1g),
            host_faults: l(&c.host_faults),
            host_lock_drops: l(&c.host_lock_drops),
            host_resumes: l(&c.host_resumes),
            host_restarts: l(&c.host_restarts),
            invalidations: l(&c.invalidations),
            splits: l(&c.splits),
            split_fallbacks: l(&c.split_fallbacks),
            upgrades: l(&c.upgrades),
            stale_flushes: l(&c.stale_flushes),
            published: l(&c.published),
        }
    }

    /// Unmap everything and free every table page (the VM is going away).
    pub fn destroy(self) {
        let GuestMemory {
            alloc, tlb, table, ..
        } = self;
        table.into_inner().destroy(&alloc, &tlb);
    }
}
