//! Test doubles for every trait: a small in-memory address space.
//!
//! [`TestMm`] is a fixed-capacity, allocation-free address space used by this
//! crate's tests and documentation examples. It is deliberately simple: a few
//! VMAs, a few mappings, a sequence counter, a pending-signal flag and a
//! manual clock, all in `Cell`s. It implements [`MmapLock`] (its guard
//! implements [`MmView`]), [`FaultHandler`], [`IntervalNotifier`],
//! [`Signals`] and [`Clock`]. Each VMA has a [`FaultMode`] that decides what
//! its faults do, including a userfaultfd-like mode that drops the lock.
//!
//! It is not a model of Linux mm (the simulator backend is); it exists so
//! the walker and the driver can be tested without one. Like the rest of
//! the crate it never panics: any input (an inverted VMA, a mapping at the
//! top of the address space, a huge PFN) gives some answer, and what
//! cannot be represented is refused (`add_vma` and `map` return false).

use core::cell::Cell;
use core::ops::ControlFlow;

use super::clock::Clock;
use super::error::Error;
use super::fault::{FaultFlags, FaultHandler, FaultOutcome, VmFaultError};
use super::leaf::{Leaf, Present};
use super::mm::{MmView, MmapLock};
use super::notifier::IntervalNotifier;
use super::pfn::{PAGE_SIZE, PUD_ORDER};
use super::signal::Signals;
use super::vma::{VmFlags, Vma};

/// VMA capacity of [`TestMm`].
pub const MAX_VMAS: usize = 8;
/// Mapping capacity of [`TestMm`].
pub const MAX_MAPPINGS: usize = 48;
/// Capacity of the fault log.
pub const FAULT_LOG: usize = 32;

/// What a fault in a VMA does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultMode {
    /// Map a fresh page (or a huge page in a hugetlb VMA); a write fault on
    /// a read-only page replaces it with a writable copy (COW).
    Populate,
    /// userfaultfd MISSING: without `ALLOW_RETRY` fail with `SIGBUS`; with
    /// `RETRY_NOWAIT` return `WouldBlock`; otherwise drop the lock, let the
    /// "handler" populate the page if `resolve`, and return `Retry`.
    Userfault {
        /// Whether the handler answers (false: a dead handler that only wakes
        /// the faulter).
        resolve: bool,
    },
    /// Drop the lock, populate, and return `Completed`.
    Completed,
    /// Fail with this error.
    Fail(VmFaultError),
}

#[derive(Debug, Clone, Copy)]
struct VmaSlot {
    start: u64,
    end: u64,
    flags: VmFlags,
    hugetlb_order: u8,
    mode: FaultMode,
}

/// A run of `pages` pages starting at `start` mapped by one leaf kind. For an
/// order-0 leaf the run is that many separate PTEs (PFNs increasing); for a
/// huge leaf it is one leaf.
#[derive(Debug, Clone, Copy)]
struct Mapping {
    start: u64,
    pages: u64,
    leaf: Leaf,
}

/// One logged fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoggedFault {
    /// Faulting address.
    pub addr: u64,
    /// Flags it was issued with.
    pub flags: u32,
}

/// A tiny in-memory address space implementing every trait of this crate.
#[derive(Debug)]
pub struct TestMm {
    vmas: Cell<[Option<VmaSlot>; MAX_VMAS]>,
    maps: Cell<[Option<Mapping>; MAX_MAPPINGS]>,
    seq: Cell<u64>,
    fatal: Cell<bool>,
    now: Cell<u64>,
    next_pfn: Cell<u64>,
    readers: Cell<u32>,
    /// Bump the sequence on every lock drop (a concurrent invalidation while
    /// the faulter sleeps), this many more times.
    invalidate_on_drop: Cell<u32>,
    /// Raise a fatal signal on the next lock drop.
    signal_on_drop: Cell<bool>,
    /// Raise a fatal signal during the next migration wait.
    signal_on_migration: Cell<bool>,
    /// Nanoseconds the clock advances per fault.
    fault_cost_ns: Cell<u64>,
    /// Migration entries resolve into this many-page mapping on wait.
    log: Cell<[LoggedFault; FAULT_LOG]>,
    /// Pages whose `Userfault` faults are served without dropping the lock
    /// (a page-cache hit).
    cached: Cell<[u64; 8]>,
    nlog: Cell<usize>,
    migration_waits: Cell<u32>,
}

impl Default for TestMm {
    fn default() -> Self {
        Self::new()
    }
}

impl TestMm {
    /// An empty address space. Fresh pages get PFNs from 0x1000 upward.
    pub const fn new() -> Self {
        TestMm {
            vmas: Cell::new([None; MAX_VMAS]),
            maps: Cell::new([None; MAX_MAPPINGS]),
            seq: Cell::new(0),
            fatal: Cell::new(false),
            now: Cell::new(0),
            next_pfn: Cell::new(0x1000),
            readers: Cell::new(0),
            invalidate_on_drop: Cell::new(0),
            signal_on_drop: Cell::new(false),
            signal_on_migration: Cell::new(false),
            fault_cost_ns: Cell::new(0),
            log: Cell::new([LoggedFault { addr: 0, flags: 0 }; FAULT_LOG]),
            cached: Cell::new([u64::MAX; 8]),
            nlog: Cell::new(0),
            migration_waits: Cell::new(0),
        }
    }

    /// Add a VMA. Returns false if full, overlapping, empty or inverted, or
    /// if `hugetlb_order` is above [`PUD_ORDER`].
    pub fn add_vma(
        &self,
        start: u64,
        end: u64,
        flags: VmFlags,
        hugetlb_order: u8,
        mode: FaultMode,
    ) -> bool {
        if start >= end || hugetlb_order > PUD_ORDER {
            return false;
        }
        let mut v = self.vmas.get();
        if v.iter().flatten().any(|s| s.start < end && start < s.end) {
            return false;
        }
        let Some(slot) = v.iter_mut().find(|s| s.is_none()) else {
            return false;
        };
        *slot = Some(VmaSlot {
            start,
            end,
            flags,
            hugetlb_order,
            mode,
        });
        self.vmas.set(v);
        true
    }

    /// Map `leaf` over `pages` pages at `start` (an order-0 leaf: that many PTEs),
    /// replacing nothing: the caller keeps mappings disjoint. Returns false
    /// if full.
    pub fn map(&self, start: u64, pages: u64, leaf: Leaf) -> bool {
        let mut m = self.maps.get();
        let Some(slot) = m.iter_mut().find(|s| s.is_none()) else {
            return false;
        };
        *slot = Some(Mapping { start, pages, leaf });
        self.maps.set(m);
        true
    }

    /// Remove every mapping overlapping `[start, end)` (whole mappings).
    pub fn unmap(&self, start: u64, end: u64) {
        let mut m = self.maps.get();
        for s in m.iter_mut() {
            if let Some(x) = s {
                let xe = x.start.saturating_add(x.pages.saturating_mul(PAGE_SIZE));
                if x.start < end && start < xe {
                    *s = None;
                }
            }
        }
        self.maps.set(m);
    }

    /// Invalidate: bump the notifier sequence (as an invalidation would).
    pub fn invalidate(&self) {
        self.seq.set(self.seq.get().wrapping_add(2));
    }

    /// Set or clear the pending fatal signal.
    pub fn set_fatal(&self, v: bool) {
        self.fatal.set(v);
    }

    /// Bump the sequence on the next `n` lock drops.
    pub fn invalidate_on_drop(&self, n: u32) {
        self.invalidate_on_drop.set(n);
    }

    /// Raise a fatal signal at the next lock drop.
    pub fn signal_on_drop(&self) {
        self.signal_on_drop.set(true);
    }

    /// Raise a fatal signal during the next migration wait.
    pub fn signal_on_migration_wait(&self) {
        self.signal_on_migration.set(true);
    }

    /// Advance the clock by `ns` on every fault.
    pub fn set_fault_cost_ns(&self, ns: u64) {
        self.fault_cost_ns.set(ns);
    }

    /// Serve `Userfault` faults of the page at `addr` without dropping the
    /// lock, as a page-cache hit would be. Returns false if full.
    pub fn cache_page(&self, addr: u64) -> bool {
        let mut c = self.cached.get();
        let Some(slot) = c.iter_mut().find(|a| **a == u64::MAX) else {
            return false;
        };
        *slot = addr;
        self.cached.set(c);
        true
    }

    /// Number of read guards currently held.
    pub fn readers(&self) -> u32 {
        self.readers.get()
    }

    /// Migration waits served.
    pub fn migration_waits(&self) -> u32 {
        self.migration_waits.get()
    }

    /// The logged faults (the first [`FAULT_LOG`]) and the total count.
    pub fn faults(&self) -> ([LoggedFault; FAULT_LOG], usize) {
        (self.log.get(), self.nlog.get())
    }

    fn vma_at(&self, addr: u64) -> Option<VmaSlot> {
        self.vmas
            .get()
            .into_iter()
            .flatten()
            .find(|v| v.start <= addr && addr < v.end)
    }

    fn mapping_at(&self, addr: u64) -> Option<Mapping> {
        self.maps.get().into_iter().flatten().find(|m| {
            m.start <= addr && addr < m.start.saturating_add(m.pages.saturating_mul(PAGE_SIZE))
        })
    }

    fn next_mapping_start(&self, addr: u64) -> u64 {
        self.maps
            .get()
            .into_iter()
            .flatten()
            .map(|m| m.start)
            .filter(|&s| s > addr)
            .min()
            .unwrap_or(u64::MAX)
    }

    fn alloc_pfns(&self, n: u64) -> u64 {
        // Align huge allocations so the PFN is order aligned.
        let p = self.next_pfn.get();
        let n = n.max(1);
        let p = p.div_ceil(n).saturating_mul(n);
        self.next_pfn.set(p.saturating_add(n));
        p
    }

    fn populate(&self, v: &VmaSlot, addr: u64, write: bool) {
        let writable = write || v.flags.contains(VmFlags::WRITE);
        if v.flags.contains(VmFlags::HUGETLB) {
            // add_vma keeps the order at most PUD_ORDER: no overflow.
            let order = v.hugetlb_order.min(PUD_ORDER);
            let size = PAGE_SIZE << order;
            let base = addr & !(size - 1);
            self.unmap(base, base.saturating_add(size));
            let pages = 1u64 << order;
            let leaf = Leaf::Present(Present {
                pfn: self.alloc_pfns(pages),
                order,
                write: writable,
                ..Present::default()
            });
            self.map(base, pages, leaf);
        } else {
            self.unmap(addr, addr.saturating_add(PAGE_SIZE));
            let leaf = Leaf::Present(Present {
                pfn: self.alloc_pfns(1),
                write: writable,
                ..Present::default()
            });
            self.map(addr, 1, leaf);
        }
    }

    fn log_fault(&self, addr: u64, flags: FaultFlags) {
        let n = self.nlog.get();
        let mut log = self.log.get();
        if let Some(slot) = log.get_mut(n) {
            *slot = LoggedFault {
                addr,
                flags: flags.bits(),
            };
            self.log.set(log);
        }
        self.nlog.set(n.saturating_add(1));
        self.now
            .set(self.now.get().saturating_add(self.fault_cost_ns.get()));
    }

    fn on_drop(&self) {
        let n = self.invalidate_on_drop.get();
        if n > 0 {
            self.invalidate_on_drop.set(n - 1);
            self.invalidate();
        }
        if self.signal_on_drop.get() {
            self.fatal.set(true);
        }
    }
}

/// A read guard on a [`TestMm`].
#[derive(Debug)]
pub struct TestGuard<'a> {
    mm: &'a TestMm,
}

impl Drop for TestGuard<'_> {
    fn drop(&mut self) {
        self.mm.readers.set(self.mm.readers.get().saturating_sub(1));
    }
}

impl MmapLock for TestMm {
    type Guard<'a> = TestGuard<'a>;

    fn read(&self) -> TestGuard<'_> {
        self.readers.set(self.readers.get().saturating_add(1));
        TestGuard { mm: self }
    }

    fn read_killable(&self) -> Result<TestGuard<'_>, Error> {
        if self.fatal.get() {
            return Err(Error::Intr);
        }
        Ok(self.read())
    }
}

impl MmView for TestGuard<'_> {
    fn find_vma(&self, addr: u64) -> Option<Vma<'_>> {
        self.mm
            .vmas
            .get()
            .into_iter()
            .flatten()
            .filter(|v| v.end > addr)
            .min_by_key(|v| v.start)
            .map(|v| Vma::new(v.start, v.end, v.flags, v.hugetlb_order))
    }

    fn walk_leaves<F>(&self, _vma: &Vma<'_>, start: u64, end: u64, mut f: F)
    where
        F: FnMut(u64, u64, Leaf) -> ControlFlow<()>,
    {
        let mut a = start;
        while a < end {
            let (b, leaf) = match self.mm.mapping_at(a) {
                Some(m) => {
                    let off = (a - m.start) / PAGE_SIZE;
                    let mend = m.start.saturating_add(m.pages.saturating_mul(PAGE_SIZE));
                    // Past the end of the address space the span ends at
                    // `end` (the caller's bound), so the loop still ends.
                    let next = a.saturating_add(PAGE_SIZE);
                    let (b, leaf) = match m.leaf {
                        Leaf::Present(p) => {
                            let b = if p.order == 0 { next } else { mend };
                            (
                                b,
                                Leaf::Present(Present {
                                    pfn: p.pfn.wrapping_add(off),
                                    ..p
                                }),
                            )
                        }
                        Leaf::DevicePrivate {
                            owner,
                            pfn,
                            write,
                            order,
                        } => {
                            let b = if order == 0 { next } else { mend };
                            (
                                b,
                                Leaf::DevicePrivate {
                                    owner,
                                    pfn: pfn.wrapping_add(off),
                                    write,
                                    order,
                                },
                            )
                        }
                        other => (next, other),
                    };
                    (b.min(end), leaf)
                }
                None => {
                    // A none PTE is one page; model empty PMDs as 2 MiB holes.
                    let pmd_end = (a | ((PAGE_SIZE << 9) - 1)).saturating_add(1);
                    let b = self.mm.next_mapping_start(a).min(pmd_end).min(end);
                    (b, Leaf::Hole)
                }
            };
            if f(a, b, leaf).is_break() {
                return;
            }
            a = b;
        }
    }
}

impl FaultHandler<TestMm> for TestMm {
    fn fault<'a>(
        &self,
        guard: TestGuard<'a>,
        addr: u64,
        flags: FaultFlags,
    ) -> FaultOutcome<TestGuard<'a>>
    where
        TestMm: 'a,
    {
        self.log_fault(addr, flags);
        let Some(v) = self.vma_at(addr) else {
            return FaultOutcome::Error(guard, VmFaultError::Sigsegv);
        };
        let write = flags.contains(FaultFlags::WRITE);
        match v.mode {
            FaultMode::Populate => {
                self.populate(&v, addr, write);
                FaultOutcome::Done(guard)
            }
            FaultMode::Fail(e) => FaultOutcome::Error(guard, e),
            FaultMode::Userfault { resolve } => {
                if self.cached.get().contains(&addr) {
                    self.populate(&v, addr, write);
                    return FaultOutcome::Done(guard);
                }
                if !flags.contains(FaultFlags::ALLOW_RETRY) {
                    return FaultOutcome::Error(guard, VmFaultError::Sigbus);
                }
                if flags.contains(FaultFlags::RETRY_NOWAIT) {
                    return FaultOutcome::WouldBlock(guard);
                }
                drop(guard);
                self.on_drop();
                if resolve {
                    self.populate(&v, addr, write);
                }
                FaultOutcome::Retry
            }
            FaultMode::Completed => {
                if !flags.contains(FaultFlags::ALLOW_RETRY) {
                    self.populate(&v, addr, write);
                    return FaultOutcome::Done(guard);
                }
                drop(guard);
                self.on_drop();
                self.populate(&v, addr, write);
                FaultOutcome::Completed
            }
        }
    }

    fn migration_wait(&self, _guard: &TestGuard<'_>, addr: u64) {
        self.migration_waits
            .set(self.migration_waits.get().saturating_add(1));
        if self.signal_on_migration.replace(false) {
            self.fatal.set(true);
        }
        // The migration finishes: the entry becomes a present page.
        if let Some(m) = self.mapping_at(addr) {
            if m.leaf == Leaf::Migration {
                self.unmap(
                    m.start,
                    m.start.saturating_add(m.pages.saturating_mul(PAGE_SIZE)),
                );
                let leaf = Leaf::Present(Present {
                    pfn: self.alloc_pfns(1),
                    write: true,
                    ..Present::default()
                });
                self.map(addr, 1, leaf);
            }
        }
    }
}

impl IntervalNotifier for TestMm {
    fn read_begin(&self) -> u64 {
        self.seq.get()
    }
    fn check_retry(&self, seq: u64) -> bool {
        self.seq.get() != seq
    }
}

impl Signals for TestMm {
    fn fatal_signal_pending(&self) -> bool {
        self.fatal.get()
    }
}

impl Clock for TestMm {
    fn now_ns(&self) -> u64 {
        self.now.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_inputs_are_refused_or_answered_without_panicking() {
        let mm = TestMm::new();
        let rw = VmFlags::READ | VmFlags::WRITE;
        assert!(!mm.add_vma(0x2000, 0x1000, rw, 0, FaultMode::Populate));
        assert!(!mm.add_vma(0x1000, 0x1000, rw, 0, FaultMode::Populate));
        let huge = rw | VmFlags::HUGETLB;
        assert!(!mm.add_vma(0, 1 << 40, huge, 64, FaultMode::Populate));
        // A VMA and mappings at the very top of the address space, with
        // PFNs that would overflow when offset.
        let top = u64::MAX - 4 * PAGE_SIZE + 1;
        assert!(mm.add_vma(top, u64::MAX, huge, PUD_ORDER, FaultMode::Populate));
        let p = Present {
            pfn: u64::MAX,
            order: 9,
            ..Present::default()
        };
        assert!(mm.map(top, u64::MAX, Leaf::Present(p)));
        assert!(mm.map(0, 3, Leaf::Migration));
        let g = mm.read();
        let vma = Vma::new(top, u64::MAX, huge, PUD_ORDER);
        let mut spans = 0;
        g.walk_leaves(&vma, top, !(PAGE_SIZE - 1), |_, _, _| {
            spans += 1;
            ControlFlow::Continue(())
        });
        assert!(spans > 0);
        let flags = FaultFlags::WRITE;
        assert!(matches!(mm.fault(g, top, flags), FaultOutcome::Done(_)));
        mm.migration_wait(&mm.read(), 0);
        assert_eq!(mm.migration_waits(), 1);
    }
}
