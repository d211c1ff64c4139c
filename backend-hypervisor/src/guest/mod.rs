//! The guest-memory manager: one VM's second-stage table, its regions, its
//! pending asynchronous faults and its counters.
//!
//! [`GuestMemory`] ties the parts together, one concern per file:
//!
//! * [`fault`]: the guest-fault path;
//! * [`async_pf`]: the no-wait path (faults deferred to a worker);
//! * [`invalidate`]: the host's invalidate callback;
//! * `stats`: the counters and their snapshot, [`GuestStats`];
//! * `outcome`: what a guest fault returns to the vCPU
//!   ([`GuestFault`](fault::GuestFault), re-exported by [`fault`] and
//!   [`async_pf`]).
//!
//! Each is an `impl GuestMemory` block over the fields defined here (or
//! plain types). The imports between them go one way: the no-wait path
//! uses the fault path's window fault, both use `outcome`, and nothing
//! uses the no-wait path but this module (for its slots).
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

pub mod async_pf;
pub mod fault;
pub mod invalidate;
mod outcome;
mod stats;

use hmm_core::{IntervalNotifier, Policy};

use self::async_pf::AsyncSlot;
pub use self::stats::GuestStats;
pub(crate) use self::stats::{bump, Counters};
use crate::alloc::TableAlloc;
use crate::descriptor::Format;
use crate::layout::TableConfig;
use crate::pagetable::{MapError, Mapping, PageTable};
use crate::region::{RegionError, RegionId, RegionSpec, Regions};
use crate::tlb::TlbFlush;
use hmm_core::Host;

/// Tunables of the fault path and the layout of the second-stage table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Config {
    /// Retry budget of one host range fault in the host clock's
    /// nanoseconds; 0 is unbounded (as mshv). Expiry makes the guest fault
    /// return [`GuestFault::Retry`](self::fault::GuestFault::Retry).
    pub fault_timeout_ns: u64,
    /// What hmm-core does after a host fault dropped the mmap lock.
    pub policy: Policy,
    /// The table's layout and the leaf sizes / execute-only leaves the
    /// hardware supports: from [`Stage2Vtcr::table`](crate::vtcr::Stage2Vtcr::table)
    /// on Arm, [`EptCaps::table_config`](crate::vmx::EptCaps::table_config)
    /// on x86. The default ([`TableConfig::FULL`]) suits EPT only on a CPU
    /// with every EPT capability, and an Arm stage 2 only with 48 PA bits.
    pub table: TableConfig,
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
///
/// `N` is not folded into `H`: the notifier belongs to each region (it
/// travels in the [`Range`](hmm_core::Range) of a window fault), not to the
/// host, and hosts pair with more than one notifier type (the unit tests
/// pair `TestMm` with a notifier whose final check fails on demand). Nor
/// does a `&dyn IntervalNotifier` remove it: the manager must be `Sync` for
/// the host's invalidate callback to reach it from another thread, and a
/// `dyn IntervalNotifier + Sync` would shut out single-threaded hosts such
/// as hmm-core's `Cell`-based `TestMm`.
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
    /// [`EptCaps::eptp`](crate::vmx::EptCaps::eptp)), or the VTTBR_EL2 base
    /// address, aligned to the concatenated root's size, for the VTCR_EL2
    /// that chose `config.table` (T0SZ = 64 - IPA bits, SL0 for the start
    /// level, TG0 = 4 KiB: see [`Stage2Vtcr`](crate::vtcr::Stage2Vtcr)).
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

    /// Unmap everything and free every table page (the VM is going away).
    pub fn destroy(self) {
        let GuestMemory {
            alloc, tlb, table, ..
        } = self;
        table.into_inner().destroy(&alloc, &tlb);
    }
}
