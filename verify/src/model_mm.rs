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
    Clock, Error, FaultFlags, FaultHandler, FaultOutcome, IntervalNotifier, Leaf, LeafSink, MmView,
    MmapLock, PfnFlags, Present, PteFormat, Signals, VmFaultError, VmFlags, Vma, PAGE_SIZE,
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

/// How [`ModelMm`]'s view reports PTE-level spans to the walker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PteMode {
    /// One span per page-table unit (one leaf per PTE).
    Spans,
    /// Runs of PTEs as one span (see [`ModelMm::set_pte_batching`]).
    Runs,
    /// PTE words in batches through [`LeafSink::ptes`], with the model's
    /// own [`PteFormat`] ([`ModelPtes`]). The seed chooses the batch
    /// boundaries (whole tables, or random splits with some PTEs reported
    /// alone through [`LeafSink::leaf`]) and whether the format answers
    /// the zero page, or anything at all, through its `plain` fast path.
    Batched(u64),
}

/// Counts of what [`PteMode::Batched`] handed to the walker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Batches (`LeafSink::ptes` calls).
    pub batches: u64,
    /// Words in them.
    pub words: u64,
    /// Words that are neither none nor an ordinary present PTE.
    pub other_words: u64,
    /// Batches of more than one word.
    pub long_batches: u64,
    /// PTEs reported alone through `LeafSink::leaf`.
    pub single_ptes: u64,
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
    /// How PTEs are reported (see [`PteMode`]).
    pte_mode: Cell<PteMode>,
    /// What [`PteMode::Batched`] handed over so far.
    batch_stats: Cell<BatchStats>,
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
            pte_mode: Cell::new(PteMode::Spans),
            batch_stats: Cell::new(BatchStats::default()),
        }
    }

    /// Report runs of PTEs as one span, as a batching backend may: order-0
    /// present PTEs mapping consecutive PFNs with identical flags as one
    /// `Leaf::Present`, and consecutive empty PTE slots as one
    /// `Leaf::EmptyPtes`. Outputs must not change.
    pub fn set_pte_batching(&self, on: bool) {
        self.pte_mode
            .set(if on { PteMode::Runs } else { PteMode::Spans });
    }

    /// Report PTEs as [`PteMode`] says. Outputs must not change.
    pub fn set_pte_mode(&self, mode: PteMode) {
        self.pte_mode.set(mode);
    }

    /// What the view handed over in [`PteMode::Batched`] so far.
    pub fn batch_stats(&self) -> BatchStats {
        self.batch_stats.get()
    }

    /// The current [`PteMode`].
    pub fn pte_mode(&self) -> PteMode {
        self.pte_mode.get()
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
        let batch = self.mm.pte_mode.get() == PteMode::Runs && !v.flags.contains(VmFlags::HUGETLB);
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

    fn walk_batched<S: LeafSink>(&self, vma: &Vma<'_>, start: u64, end: u64, sink: &mut S) {
        let PteMode::Batched(seed) = self.mm.pte_mode.get() else {
            return self.walk_leaves(vma, start, end, |a, b, leaf| sink.leaf(a, b, leaf));
        };
        let s = self.mm.space.borrow();
        let Some(v) = s.vma_at(vma.start()).copied() else {
            return;
        };
        let hugetlb = v.flags.contains(VmFlags::HUGETLB);
        let mut rng = SplitMix(seed ^ start.rotate_left(23));
        // A third of the walks hand whole tables (clipped to the window);
        // the others split batches at random and report some PTEs alone.
        let whole_tables = rng.below(3) == 0;
        let plain = match rng.below(8) {
            0 => PlainAnswers::Never,
            1..=3 => PlainAnswers::NotZeroPage,
            _ => PlainAnswers::ZeroPageToo,
        };
        // The pending batch: its first address, words and side table.
        let mut first = start;
        let mut words: Vec<u64> = Vec::new();
        let mut others: Vec<Leaf> = Vec::new();
        let flush = |first: u64, words: &mut Vec<u64>, others: &mut Vec<Leaf>, sink: &mut S| {
            if words.is_empty() {
                return ControlFlow::Continue(());
            }
            let mut st = self.mm.batch_stats.get();
            st.batches += 1;
            st.words += words.len() as u64;
            st.other_words += words
                .iter()
                .filter(|&&w| w & (PTE_OTHER | PTE_PROTNONE | PTE_SPECIAL) != 0)
                .count() as u64;
            st.long_batches += u64::from(words.len() > 1);
            self.mm.batch_stats.set(st);
            let fmt = ModelPtes {
                others: &others[..],
                plain,
            };
            let flow = sink.ptes(first, &words[..], &fmt);
            words.clear();
            others.clear();
            flow
        };
        let mut a = start;
        while a < end {
            let (us, ue, leaf) = s.unit_at(&v, a);
            let b = ue.min(end);
            let leaf = leaf_from(leaf, us, a);
            if !hugetlb && ue - us == PAGE_SIZE {
                if !whole_tables && rng.below(8) == 0 {
                    // This PTE alone, as a backend may report it.
                    let mut st = self.mm.batch_stats.get();
                    st.single_ptes += 1;
                    self.mm.batch_stats.set(st);
                    if flush(first, &mut words, &mut others, sink).is_break()
                        || sink.leaf(a, b, leaf).is_break()
                    {
                        return;
                    }
                } else {
                    if words.is_empty() {
                        first = a;
                    }
                    words.push(ModelPtes::encode(leaf, &mut others));
                    let table_end = b.is_multiple_of(PAGE_SIZE * crate::space::PMD_PAGES);
                    let split = !whole_tables && rng.below(12) == 0;
                    if (table_end || split)
                        && flush(first, &mut words, &mut others, sink).is_break()
                    {
                        return;
                    }
                }
                a = b;
                continue;
            }
            if flush(first, &mut words, &mut others, sink).is_break()
                || sink.leaf(a, b, leaf).is_break()
            {
                return;
            }
            a = b;
        }
        let _ = flush(first, &mut words, &mut others, sink);
    }
}

/// What [`ModelPtes::plain`] answers `Some` for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PlainAnswers {
    /// Nothing: every word goes through [`PteFormat::leaf`] (always correct).
    Never,
    /// None PTEs and ordinary present PTEs, not the zero page.
    NotZeroPage,
    /// Those and the zero page, whose output is the same either way.
    ZeroPageToo,
}

/// The model's PTE words, as [`PteMode::Batched`] hands them over: 0 is a
/// none PTE; bit 0 a present PTE (bit 1 writable, bit 2 `PROT_NONE`, bit 3
/// special, bit 4 the zero page, the PFN from bit 12); bit 5 any other
/// leaf, `others[word >> 12]`.
#[derive(Debug)]
pub struct ModelPtes<'a> {
    others: &'a [Leaf],
    plain: PlainAnswers,
}

const PTE_P: u64 = 1;
const PTE_W: u64 = 2;
const PTE_PROTNONE: u64 = 4;
const PTE_SPECIAL: u64 = 8;
const PTE_ZERO: u64 = 16;
const PTE_OTHER: u64 = 32;

impl ModelPtes<'_> {
    /// The word of one PTE-level leaf; leaves the word cannot hold go to
    /// `others`.
    fn encode(leaf: Leaf, others: &mut Vec<Leaf>) -> u64 {
        match leaf {
            Leaf::Hole | Leaf::EmptyPtes => 0,
            Leaf::Present(p) if p.order == 0 && p.pfn < 1 << 52 => {
                (p.pfn << 12)
                    | PTE_P
                    | if p.write { PTE_W } else { 0 }
                    | if p.protnone { PTE_PROTNONE } else { 0 }
                    | if p.special { PTE_SPECIAL } else { 0 }
                    | if p.zero { PTE_ZERO } else { 0 }
            }
            other => {
                others.push(other);
                ((others.len() as u64 - 1) << 12) | PTE_OTHER
            }
        }
    }
}

impl PteFormat for ModelPtes<'_> {
    type Pte = u64;

    fn read(&self, pte: &u64) -> u64 {
        *pte
    }

    fn plain(&self, w: u64) -> Option<u64> {
        if self.plain == PlainAnswers::Never {
            return None;
        }
        if w == 0 {
            return Some(0);
        }
        if w & PTE_OTHER != 0 || w & PTE_PROTNONE != 0 {
            return None;
        }
        let zero = w & PTE_ZERO != 0 && self.plain == PlainAnswers::ZeroPageToo;
        if w & PTE_SPECIAL != 0 && !zero {
            return None;
        }
        let write = if w & PTE_W != 0 {
            PfnFlags::WRITE.bits()
        } else {
            0
        };
        Some((w >> 12) | PfnFlags::VALID.bits() | write)
    }

    fn leaf(&self, w: u64) -> Leaf {
        if w == 0 {
            return Leaf::Hole;
        }
        if w & PTE_OTHER != 0 {
            return self.others[(w >> 12) as usize];
        }
        Leaf::Present(Present {
            pfn: w >> 12,
            order: 0,
            write: w & PTE_W != 0,
            protnone: w & PTE_PROTNONE != 0,
            special: w & PTE_SPECIAL != 0,
            zero: w & PTE_ZERO != 0,
        })
    }
}

/// SplitMix64: the batch boundaries of [`PteMode::Batched`].
struct SplitMix(u64);

impl SplitMix {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n
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
