//! [`ModelMm`]: a single-threaded address space over a [`Space`],
//! implementing every `hmm_core` trait, written independently of
//! `hmm_core::doubles`.
//!
//! The read guard counts readers, so tests can check that an entry point
//! returns with the lock in the state its contract says. Faults follow each
//! VMA's [`FaultKind`]; the changes that Linux makes under an MMU
//! notifier invalidation (breaking COW of the zero page, migrating device
//! memory back) bump the interval sequence, and so do the invalidations a
//! case asks for at lock drops.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::ops::ControlFlow;

use hmm_core::{
    Clock, Error, FaultFlags, FaultHandler, FaultOutcome, IntervalNotifier, Leaf, MmView, MmapLock,
    Present, Signals, VmFaultError, VmFlags, Vma, PAGE_SIZE,
};

use crate::space::{leaf_from, Entry, FaultKind, Space, VmaDesc};

/// PFN of the shared zero page in the model.
pub const ZERO_PFN: u64 = 0x7;

/// One logged fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// Address.
    pub addr: u64,
    /// Flags.
    pub flags: FaultFlags,
}

/// A single-threaded model address space.
#[derive(Debug)]
pub struct ModelMm {
    space: RefCell<Space>,
    cached: RefCell<BTreeSet<u64>>,
    seq: Cell<u64>,
    readers: Cell<u32>,
    next_pfn: Cell<u64>,
    invalidate_on_drop: Cell<u8>,
    log: RefCell<Vec<Fault>>,
    /// The address space after every change since the last invalidation.
    epoch: RefCell<Vec<Space>>,
    /// Report runs of PTEs as one span (see [`ModelMm::set_pte_batching`]).
    batch_ptes: Cell<bool>,
}

impl ModelMm {
    /// A model over `space`; `cached` are the page-cache pages of file VMAs;
    /// the first `invalidate_on_drop` lock drops each invalidate the interval.
    pub fn new(space: Space, cached: BTreeSet<u64>, invalidate_on_drop: u8) -> Self {
        ModelMm {
            epoch: RefCell::new(vec![space.clone()]),
            space: RefCell::new(space),
            cached: RefCell::new(cached),
            seq: Cell::new(0),
            readers: Cell::new(0),
            next_pfn: Cell::new(1 << 41),
            invalidate_on_drop: Cell::new(invalidate_on_drop),
            log: RefCell::new(Vec::new()),
            batch_ptes: Cell::new(false),
        }
    }

    /// Report runs of PTEs as one span, as a batching backend may: order-0
    /// present PTEs mapping consecutive PFNs with identical flags as one
    /// `Leaf::Present`, and consecutive empty PTE slots as one
    /// `Leaf::EmptyPtes`. Outputs must not change.
    pub fn set_pte_batching(&self, on: bool) {
        self.batch_ptes.set(on);
    }

    /// A copy of the current address space.
    pub fn space(&self) -> Space {
        self.space.borrow().clone()
    }

    /// Read guards currently held.
    pub fn readers(&self) -> u32 {
        self.readers.get()
    }

    /// Every fault so far.
    pub fn faults(&self) -> Vec<Fault> {
        self.log.borrow().clone()
    }

    /// Invalidate the interval (bump the sequence).
    pub fn invalidate(&self) {
        self.invalidate_for_change();
        self.record();
    }

    /// Invalidate ahead of a change of mapped PFNs: the state before the
    /// change is not part of the new epoch.
    fn invalidate_for_change(&self) {
        self.seq.set(self.seq.get() + 2);
        self.epoch.borrow_mut().clear();
    }

    /// The address space as it was after each change since the last
    /// invalidation (the current state last). Within one such epoch
    /// mappings only gain permissions (none to present, read-only to
    /// writable), which is why Linux needs no invalidation for them.
    pub fn epoch(&self) -> Vec<Space> {
        self.epoch.borrow().clone()
    }

    fn record(&self) {
        let s = self.space.borrow().clone();
        self.epoch.borrow_mut().push(s);
    }

    fn fresh_pfn(&self, order: u8) -> u64 {
        let n = 1u64 << order;
        let p = self.next_pfn.get().div_ceil(n) * n;
        self.next_pfn.set(p + n);
        p
    }

    fn dropped(&self) {
        let n = self.invalidate_on_drop.get();
        if n > 0 {
            self.invalidate_on_drop.set(n - 1);
            self.invalidate();
        }
    }

    /// `handle_mm_fault` with the lock held: make the page at `addr` valid
    /// (and writable for a write fault).
    fn resolve(&self, v: &VmaDesc, addr: u64, write: bool) -> Result<(), VmFaultError> {
        let r = self.resolve_inner(v, addr, write);
        self.record();
        r
    }

    fn resolve_inner(&self, v: &VmaDesc, addr: u64, write: bool) -> Result<(), VmFaultError> {
        let mut s = self.space.borrow_mut();
        let (us, ue, leaf) = s.unit_at(v, addr);
        let fresh = |order: u8, base: u64, w: bool| Entry {
            base,
            order,
            leaf: Leaf::Present(Present {
                pfn: self.fresh_pfn(order),
                order,
                write: w,
                ..Present::default()
            }),
        };
        let order_of = |us: u64, ue: u64| (((ue - us) / PAGE_SIZE).trailing_zeros()) as u8;
        if v.flags.contains(VmFlags::HUGETLB) {
            let size = PAGE_SIZE << v.hugetlb_order;
            let base = addr & !(size - 1);
            match leaf {
                Leaf::Present(p) if !p.protnone && !p.special && (p.write || !write) => {}
                Leaf::Present(p) if !p.protnone && !p.special && us == base => {
                    s.replace(Entry {
                        base,
                        order: order_of(us, ue),
                        leaf: Leaf::Present(Present { write: true, ..p }),
                    });
                }
                Leaf::HwPoison => return Err(VmFaultError::HwPoison),
                Leaf::Bad => return Err(VmFaultError::Sigbus),
                _ => {
                    // Mapped PFNs inside the huge page go away.
                    let mapped = s
                        .overlapping(base, base + size)
                        .any(|e| matches!(e.leaf, Leaf::Present(_) | Leaf::DevicePrivate { .. }));
                    if mapped {
                        drop(s);
                        self.invalidate_for_change();
                        s = self.space.borrow_mut();
                    }
                    s.replace(fresh(v.hugetlb_order, base, write));
                }
            }
            return Ok(());
        }
        match leaf {
            Leaf::Present(p) if p.protnone => s.replace(Entry {
                base: us,
                order: order_of(us, ue),
                leaf: Leaf::Present(Present {
                    protnone: false,
                    write: p.write || write,
                    ..p
                }),
            }),
            Leaf::Present(p) if p.zero => {
                if write {
                    // Break COW of the zero page: the old PFN goes away.
                    drop(s);
                    self.invalidate_for_change();
                    let mut s = self.space.borrow_mut();
                    s.replace(fresh(order_of(us, ue), us, true));
                }
            }
            Leaf::Present(p) => {
                if write && !p.write {
                    s.replace(Entry {
                        base: us,
                        order: order_of(us, ue),
                        leaf: Leaf::Present(Present { write: true, ..p }),
                    });
                }
            }
            Leaf::Hole | Leaf::EmptyPtes => {
                let e = if write || v.flags.contains(VmFlags::SHARED) {
                    fresh(0, addr, write)
                } else {
                    Entry {
                        base: addr,
                        order: 0,
                        leaf: Leaf::Present(Present {
                            pfn: ZERO_PFN,
                            special: true,
                            zero: true,
                            ..Present::default()
                        }),
                    }
                };
                s.replace(e);
            }
            Leaf::Swap | Leaf::DeviceExclusive | Leaf::Migration => {
                s.replace(fresh(order_of(us, ue), us, write));
            }
            Leaf::DevicePrivate { write: w, .. } => {
                // Migrate back to RAM: the device PFN goes away.
                drop(s);
                self.invalidate_for_change();
                let mut s = self.space.borrow_mut();
                s.replace(fresh(order_of(us, ue), us, w || write));
            }
            Leaf::HwPoison => return Err(VmFaultError::HwPoison),
            Leaf::Bad => return Err(VmFaultError::Sigbus),
        }
        Ok(())
    }
}

/// A read guard on a [`ModelMm`].
#[derive(Debug)]
pub struct ModelGuard<'a> {
    mm: &'a ModelMm,
}

impl Drop for ModelGuard<'_> {
    fn drop(&mut self) {
        self.mm.readers.set(self.mm.readers.get() - 1);
    }
}

impl MmapLock for ModelMm {
    type Guard<'a> = ModelGuard<'a>;

    fn read(&self) -> ModelGuard<'_> {
        self.readers.set(self.readers.get() + 1);
        ModelGuard { mm: self }
    }

    fn read_killable(&self) -> Result<ModelGuard<'_>, Error> {
        Ok(self.read())
    }
}

impl MmView for ModelGuard<'_> {
    fn find_vma(&self, addr: u64) -> Option<Vma<'_>> {
        let s = self.mm.space.borrow();
        s.find_vma(addr)
            .map(|v| Vma::new(v.start, v.end, v.flags, v.hugetlb_order))
    }

    fn walk_leaves<F>(&self, vma: &Vma<'_>, start: u64, end: u64, mut f: F)
    where
        F: FnMut(u64, u64, Leaf) -> ControlFlow<()>,
    {
        let s = self.mm.space.borrow();
        let Some(v) = s.vma_at(vma.start()).copied() else {
            return;
        };
        let batch = self.mm.batch_ptes.get() && !v.flags.contains(VmFlags::HUGETLB);
        // A pending run of PTE-level spans: (start, end, leaf at start).
        let mut run: Option<(u64, u64, Leaf)> = None;
        let mut a = start;
        while a < end {
            let (us, ue, leaf) = s.unit_at(&v, a);
            let b = ue.min(end);
            let leaf = leaf_from(leaf, us, a);
            if batch && ue - us == PAGE_SIZE {
                let pte = match leaf {
                    Leaf::Hole => Some(Leaf::EmptyPtes),
                    Leaf::Present(p) if p.order == 0 => Some(leaf),
                    _ => None,
                };
                if let Some(pte) = pte {
                    if let Some((rs, re, rl)) = run {
                        if extends(rl, re - rs, pte) {
                            run = Some((rs, b, rl));
                            a = b;
                            continue;
                        }
                        if f(rs, re, rl).is_break() {
                            return;
                        }
                    }
                    run = Some((a, b, pte));
                    a = b;
                    continue;
                }
            }
            if let Some((rs, re, rl)) = run.take() {
                if f(rs, re, rl).is_break() {
                    return;
                }
            }
            if f(a, b, leaf).is_break() {
                return;
            }
            a = b;
        }
        if let Some((rs, re, rl)) = run {
            let _ = f(rs, re, rl);
        }
    }
}

/// Whether a PTE run starting with `first` and `len` bytes long continues
/// with `next`: both empty, or consecutive PFNs with identical flags.
fn extends(first: Leaf, len: u64, next: Leaf) -> bool {
    match (first, next) {
        (Leaf::EmptyPtes, Leaf::EmptyPtes) => true,
        (Leaf::Present(p), Leaf::Present(q)) => {
            q.pfn == p.pfn.wrapping_add(len / PAGE_SIZE) && Present { pfn: p.pfn, ..q } == p
        }
        _ => false,
    }
}

impl FaultHandler<ModelMm> for ModelMm {
    fn fault<'a>(
        &self,
        guard: ModelGuard<'a>,
        addr: u64,
        flags: FaultFlags,
    ) -> FaultOutcome<ModelGuard<'a>>
    where
        ModelMm: 'a,
    {
        self.log.borrow_mut().push(Fault { addr, flags });
        let Some(v) = self.space.borrow().vma_at(addr).copied() else {
            return FaultOutcome::Error(guard, VmFaultError::Sigsegv);
        };
        let write = flags.contains(FaultFlags::WRITE);
        let may_drop = flags.contains(FaultFlags::ALLOW_RETRY);
        let nowait = flags.contains(FaultFlags::RETRY_NOWAIT);
        let done = |g: ModelGuard<'a>| match self.resolve(&v, addr, write) {
            Ok(()) => FaultOutcome::Done(g),
            Err(e) => FaultOutcome::Error(g, e),
        };
        match v.fault {
            FaultKind::Fail(e) => FaultOutcome::Error(guard, e),
            FaultKind::Populate => done(guard),
            FaultKind::Userfault => {
                let missing = matches!(self.space.borrow().unit_at(&v, addr).2, Leaf::Hole);
                if !missing {
                    done(guard)
                } else if !may_drop {
                    FaultOutcome::Error(guard, VmFaultError::Sigbus)
                } else if nowait {
                    FaultOutcome::WouldBlock(guard)
                } else {
                    drop(guard);
                    self.dropped();
                    // The user-space handler resolves it (UFFDIO_COPY).
                    let _ = self.resolve(&v, addr, write);
                    FaultOutcome::Retry
                }
            }
            FaultKind::FileIo => {
                // Only a page that is not mapped at all needs the page cache.
                let unmapped = matches!(
                    self.space.borrow().unit_at(&v, addr).2,
                    Leaf::Hole | Leaf::Swap
                );
                if !unmapped || self.cached.borrow().contains(&addr) || !may_drop {
                    done(guard)
                } else if nowait {
                    FaultOutcome::WouldBlock(guard)
                } else {
                    drop(guard);
                    self.dropped();
                    // Read the page in; the retried fault maps it.
                    self.cached.borrow_mut().insert(addr);
                    FaultOutcome::Retry
                }
            }
            FaultKind::Completed => {
                let hopeless = matches!(
                    self.space.borrow().unit_at(&v, addr).2,
                    Leaf::HwPoison | Leaf::Bad
                );
                if !may_drop || nowait || hopeless {
                    done(guard)
                } else {
                    drop(guard);
                    self.dropped();
                    let resolved = self.resolve(&v, addr, write);
                    debug_assert!(resolved.is_ok());
                    FaultOutcome::Completed
                }
            }
        }
    }

    fn migration_wait(&self, _guard: &ModelGuard<'_>, addr: u64) {
        let mut s = self.space.borrow_mut();
        let Some(v) = s.vma_at(addr).copied() else {
            return;
        };
        let (us, ue, leaf) = s.unit_at(&v, addr);
        if leaf == Leaf::Migration {
            let order = ((ue - us) / PAGE_SIZE).trailing_zeros() as u8;
            let pfn = self.fresh_pfn(order);
            s.replace(Entry {
                base: us,
                order,
                leaf: Leaf::Present(Present {
                    pfn,
                    order,
                    write: true,
                    ..Present::default()
                }),
            });
            drop(s);
            self.record();
        }
    }
}

impl IntervalNotifier for ModelMm {
    fn read_begin(&self) -> u64 {
        self.seq.get()
    }
    fn check_retry(&self, seq: u64) -> bool {
        self.seq.get() != seq
    }
}

impl Signals for ModelMm {
    fn fatal_signal_pending(&self) -> bool {
        false
    }
}

impl Clock for ModelMm {
    fn now_ns(&self) -> u64 {
        0
    }
}
