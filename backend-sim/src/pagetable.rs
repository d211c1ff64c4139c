//! Four-level, 512-entry page tables with PMD and PUD leaves, and the entry
//! encodings of every kind of leaf HMM can meet.
//!
//! A table is 512 atomic 64-bit words ([`Table`]). Tables live in a per-mm
//! arena ([`Tables`]) and are named by a 32-bit id, so an upper-level entry
//! refers to its child by id rather than by pointer. Readers (the HMM walk,
//! the device's coherence check) load entries without any lock, as Linux's
//! `pmdp_get_lockless` / `pte_offset_map` do; every writer holds the mm's
//! page-table lock (and the mmap lock for read or write). A table is freed
//! only under the mmap write lock, so a reader holding the read lock never
//! sees its tables go away; even a stale id would only read a recycled
//! table, never freed memory.
//!
//! Entry word ([`Pte`]):
//!
//! ```text
//! present:      bit 0 = 1, bit 1 WRITE, bit 2 HUGE (PMD/PUD leaf),
//!               bit 3 SPECIAL, bit 4 PROTNONE, bit 5 UFFD_WP, PFN << 12
//! table:        bit 0 = 1, HUGE clear, at the PGD/PUD/PMD level: id << 12
//! non-present:  bit 0 = 0, type in bits 1..=4, bit 5 WRITE, payload << 12
//!               (swap slot, PFN, or marker bits)
//! none:         0
//! ```

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use hmm_core::{Leaf, LeafSink, PfnFlags, Present, PteFormat, PAGE_SHIFT};

use crate::frame::{FrameKind, Frames, ZERO_PFN};

/// Entries per table.
pub const ENTRIES: usize = 512;
/// Shift of a PTE (4 KiB).
pub const PTE_SHIFT: u32 = 12;
/// Shift of a PMD entry (2 MiB).
pub const PMD_SHIFT: u32 = 21;
/// Shift of a PUD entry (1 GiB).
pub const PUD_SHIFT: u32 = 30;
/// Shift of a PGD entry (512 GiB).
pub const PGD_SHIFT: u32 = 39;
/// Size of a PMD leaf.
pub const PMD_SIZE: u64 = 1 << PMD_SHIFT;
/// Size of a PUD leaf.
pub const PUD_SIZE: u64 = 1 << PUD_SHIFT;

const TABLES_PER_CHUNK: u32 = 64;
const MAX_TABLE_CHUNKS: usize = 1 << 14;

const P_PRESENT: u64 = 1 << 0;
const P_WRITE: u64 = 1 << 1;
const P_HUGE: u64 = 1 << 2;
const P_SPECIAL: u64 = 1 << 3;
const P_PROTNONE: u64 = 1 << 4;
const P_UFFD_WP: u64 = 1 << 5;
const NP_TYPE_SHIFT: u32 = 1;
const NP_TYPE_MASK: u64 = 0xf;
const NP_WRITE: u64 = 1 << 5;
const PAYLOAD_SHIFT: u32 = 12;

const T_SWAP: u64 = 1;
const T_MIGRATION: u64 = 2;
const T_DEVICE_PRIVATE: u64 = 3;
const T_DEVICE_EXCLUSIVE: u64 = 4;
const T_HWPOISON: u64 = 5;
const T_MARKER: u64 = 6;

/// PTE marker: userfaultfd write-protect marker on a none PTE.
pub const MARKER_UFFD_WP: u64 = 1;
/// PTE marker: poisoned (`UFFDIO_POISON`).
pub const MARKER_POISON: u64 = 2;
/// PTE marker: guard region (`MADV_GUARD_INSTALL`).
pub const MARKER_GUARD: u64 = 4;

/// A decoded page-table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pte {
    /// Empty.
    None,
    /// A pointer to the next-level table.
    Table(u32),
    /// A present mapping (a PTE, or a PMD/PUD leaf when `huge`).
    Present {
        /// Mapped PFN (head PFN of the leaf for huge entries).
        pfn: u64,
        /// Writable.
        write: bool,
        /// PMD or PUD leaf.
        huge: bool,
        /// `pte_special`: no normal page behind it.
        special: bool,
        /// `PROT_NONE` / NUMA hinting.
        protnone: bool,
        /// userfaultfd write-protected.
        uffd_wp: bool,
    },
    /// Swapped out to `slot`.
    Swap {
        /// Swap slot.
        slot: u64,
        /// Map writable on swap-in.
        write: bool,
    },
    /// Under migration from `pfn`.
    Migration {
        /// The old PFN.
        pfn: u64,
        /// Was writable.
        write: bool,
    },
    /// Device-private page `pfn`.
    DevicePrivate {
        /// Device PFN.
        pfn: u64,
        /// Writable.
        write: bool,
    },
    /// Device-exclusive access to `pfn`.
    DeviceExclusive {
        /// The page.
        pfn: u64,
        /// Was writable.
        write: bool,
    },
    /// Hardware-poisoned page `pfn`.
    HwPoison {
        /// The poisoned page.
        pfn: u64,
    },
    /// A PTE marker ([`MARKER_UFFD_WP`], [`MARKER_POISON`], [`MARKER_GUARD`]).
    Marker(u64),
}

impl Pte {
    /// Decode an entry word. `table_level` says whether a present non-huge
    /// entry is a table pointer (PGD, PUD, PMD levels).
    #[inline]
    pub fn decode(w: u64, table_level: bool) -> Pte {
        if w == 0 {
            return Pte::None;
        }
        let payload = w >> PAYLOAD_SHIFT;
        if w & P_PRESENT != 0 {
            if table_level && w & P_HUGE == 0 {
                return Pte::Table(payload as u32);
            }
            return Pte::Present {
                pfn: payload,
                write: w & P_WRITE != 0,
                huge: w & P_HUGE != 0,
                special: w & P_SPECIAL != 0,
                protnone: w & P_PROTNONE != 0,
                uffd_wp: w & P_UFFD_WP != 0,
            };
        }
        let write = w & NP_WRITE != 0;
        match (w >> NP_TYPE_SHIFT) & NP_TYPE_MASK {
            T_SWAP => Pte::Swap {
                slot: payload,
                write,
            },
            T_MIGRATION => Pte::Migration {
                pfn: payload,
                write,
            },
            T_DEVICE_PRIVATE => Pte::DevicePrivate {
                pfn: payload,
                write,
            },
            T_DEVICE_EXCLUSIVE => Pte::DeviceExclusive {
                pfn: payload,
                write,
            },
            T_HWPOISON => Pte::HwPoison { pfn: payload },
            _ => Pte::Marker(payload),
        }
    }

    /// Encode an entry.
    pub fn encode(self) -> u64 {
        let np = |t: u64, payload: u64, write: bool| {
            (t << NP_TYPE_SHIFT) | (payload << PAYLOAD_SHIFT) | if write { NP_WRITE } else { 0 }
        };
        match self {
            Pte::None => 0,
            Pte::Table(id) => P_PRESENT | (u64::from(id) << PAYLOAD_SHIFT),
            Pte::Present {
                pfn,
                write,
                huge,
                special,
                protnone,
                uffd_wp,
            } => {
                let mut w = P_PRESENT | (pfn << PAYLOAD_SHIFT);
                for (b, f) in [
                    (write, P_WRITE),
                    (huge, P_HUGE),
                    (special, P_SPECIAL),
                    (protnone, P_PROTNONE),
                    (uffd_wp, P_UFFD_WP),
                ] {
                    if b {
                        w |= f;
                    }
                }
                w
            }
            Pte::Swap { slot, write } => np(T_SWAP, slot, write),
            Pte::Migration { pfn, write } => np(T_MIGRATION, pfn, write),
            Pte::DevicePrivate { pfn, write } => np(T_DEVICE_PRIVATE, pfn, write),
            Pte::DeviceExclusive { pfn, write } => np(T_DEVICE_EXCLUSIVE, pfn, write),
            Pte::HwPoison { pfn } => np(T_HWPOISON, pfn, false),
            Pte::Marker(m) => np(T_MARKER, m, false),
        }
    }

    /// A present, normal, order-0 or huge mapping.
    pub fn present(pfn: u64, write: bool, huge: bool) -> Pte {
        Pte::Present {
            pfn,
            write,
            huge,
            special: pfn == ZERO_PFN,
            protnone: false,
            uffd_wp: false,
        }
    }

    /// The PFN an entry refers to (present, migration, device, poison).
    pub fn pfn(self) -> Option<u64> {
        match self {
            Pte::Present { pfn, .. }
            | Pte::Migration { pfn, .. }
            | Pte::DevicePrivate { pfn, .. }
            | Pte::DeviceExclusive { pfn, .. }
            | Pte::HwPoison { pfn } => Some(pfn),
            _ => None,
        }
    }
}

/// One page table: 512 entry words.
pub struct Table(pub [AtomicU64; ENTRIES]);

impl Table {
    fn new() -> Self {
        Table(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

/// Index of `addr` in a table of level `shift`.
#[inline]
pub const fn index(addr: u64, shift: u32) -> usize {
    ((addr >> shift) & (ENTRIES as u64 - 1)) as usize
}

/// The arena of one mm's page tables.
pub struct Tables {
    chunks: Box<[OnceLock<Box<[Table]>>]>,
    free: Mutex<Vec<u32>>,
    next: AtomicU32,
}

impl std::fmt::Debug for Tables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tables")
            .field("allocated", &self.next)
            .finish()
    }
}

impl Default for Tables {
    fn default() -> Self {
        Self::new()
    }
}

/// Where a descent for an address ended.
#[derive(Debug)]
pub enum Slot<'t> {
    /// The entry at the requested level.
    At(&'t AtomicU64),
    /// A huge leaf (or a non-present huge entry) above the requested level,
    /// at level `shift`.
    Huge(&'t AtomicU64, u32),
    /// No table at level `shift` (only when not allocating).
    Missing(u32),
}

impl Tables {
    /// An empty arena.
    pub fn new() -> Self {
        Tables {
            chunks: (0..MAX_TABLE_CHUNKS).map(|_| OnceLock::new()).collect(),
            free: Mutex::new(Vec::new()),
            next: AtomicU32::new(0),
        }
    }

    /// The table with this id.
    #[inline]
    pub fn get(&self, id: u32) -> &Table {
        let c = self.chunks[(id / TABLES_PER_CHUNK) as usize]
            .get_or_init(|| (0..TABLES_PER_CHUNK).map(|_| Table::new()).collect());
        &c[(id % TABLES_PER_CHUNK) as usize]
    }

    /// Allocate a zeroed table.
    pub fn alloc(&self) -> u32 {
        if let Some(id) = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return id;
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        assert!(
            (id / TABLES_PER_CHUNK) < MAX_TABLE_CHUNKS as u32,
            "page-table arena exhausted"
        );
        id
    }

    /// Free a table (its entries must already be none or freed children).
    pub fn free(&self, id: u32) {
        for e in &self.get(id).0 {
            e.store(0, Ordering::Relaxed);
        }
        self.free.lock().unwrap_or_else(|e| e.into_inner()).push(id);
    }

    /// Descend from `root` to the entry for `addr` at level `target`
    /// (`PTE_SHIFT`, `PMD_SHIFT` or `PUD_SHIFT`), allocating missing tables
    /// if `alloc`. Caller holds the page-table lock when allocating.
    pub fn slot(&self, root: u32, addr: u64, target: u32, alloc: bool) -> Slot<'_> {
        let mut tid = root;
        let mut shift = PGD_SHIFT;
        loop {
            let e = &self.get(tid).0[index(addr, shift)];
            if shift == target {
                return Slot::At(e);
            }
            let w = e.load(Ordering::Acquire);
            match Pte::decode(w, true) {
                Pte::Table(id) => tid = id,
                Pte::None => {
                    if !alloc {
                        return Slot::Missing(shift);
                    }
                    let id = self.alloc();
                    e.store(Pte::Table(id).encode(), Ordering::Release);
                    tid = id;
                }
                _ => return Slot::Huge(e, shift),
            }
            shift -= 9;
        }
    }

    /// Report the leaves of `[start, end)` in order, without gaps (see
    /// [`hmm_core::leaf`]). One descent per table; each table is scanned
    /// linearly; a none entry at any level is one span. PTEs are reported
    /// as runs (see [`Tables::walk_batched`] for the batched form).
    #[inline]
    pub fn walk_leaves<F>(&self, root: u32, start: u64, end: u64, frames: &Frames, f: &mut F)
    where
        F: FnMut(u64, u64, Leaf) -> ControlFlow<()>,
    {
        let mut sink = Runs(f);
        let _ = self.walk_level(root, PGD_SHIFT, start, end, frames, &mut sink, false);
    }

    /// Report `[start, end)` as [`Tables::walk_leaves`] does, but hand each
    /// PTE table's words for the window to the sink in one
    /// [`LeafSink::ptes`] call with [`SimPteFormat`] as the classifier.
    #[inline]
    pub fn walk_batched<S: LeafSink>(
        &self,
        root: u32,
        start: u64,
        end: u64,
        frames: &Frames,
        sink: &mut S,
    ) {
        let _ = self.walk_level(root, PGD_SHIFT, start, end, frames, sink, true);
    }

    #[allow(clippy::too_many_arguments)]
    fn walk_level<S: LeafSink>(
        &self,
        tid: u32,
        shift: u32,
        start: u64,
        end: u64,
        frames: &Frames,
        sink: &mut S,
        batched: bool,
    ) -> ControlFlow<()> {
        let table = self.get(tid);
        if shift == PTE_SHIFT {
            let first = index(start, PTE_SHIFT);
            let n = ((end - start) >> PAGE_SHIFT) as usize;
            let ptes = &table.0[first..first + n];
            if batched {
                return sink.ptes(start, ptes, &SimPteFormat { frames });
            }
            // Report runs of PTEs as one span, as the kernel batches the
            // PTEs of a folio: present PTEs mapping consecutive PFNs with
            // identical flag bits (each word is the previous one plus one
            // PFN), and consecutive empty PTEs. hmm-core keeps per-PTE
            // semantics for runs.
            let mut i = 0;
            while i < n {
                let w = ptes[i].load(Ordering::Relaxed);
                let mut j = i + 1;
                let leaf = if w == 0 {
                    while j < n && ptes[j].load(Ordering::Relaxed) == 0 {
                        j += 1;
                    }
                    Leaf::EmptyPtes
                } else {
                    if w & P_PRESENT != 0 && w >> PAYLOAD_SHIFT != ZERO_PFN {
                        let step = 1u64 << PAYLOAD_SHIFT;
                        let mut next = w.wrapping_add(step);
                        while j < n && ptes[j].load(Ordering::Relaxed) == next {
                            next = next.wrapping_add(step);
                            j += 1;
                        }
                    }
                    pte_leaf(w, frames)
                };
                let a = start + ((i as u64) << PAGE_SHIFT);
                sink.leaf(a, start + ((j as u64) << PAGE_SHIFT), leaf)?;
                i = j;
            }
            return ControlFlow::Continue(());
        }
        let size = 1u64 << shift;
        let mut a = start;
        while a < end {
            let next = ((a | (size - 1)) + 1).min(end);
            let w = table.0[index(a, shift)].load(Ordering::Acquire);
            match Pte::decode(w, true) {
                Pte::None => upper(sink, a, next, Leaf::Hole)?,
                Pte::Table(id) => self.walk_level(id, shift - 9, a, next, frames, sink, batched)?,
                Pte::Present {
                    pfn,
                    write,
                    protnone,
                    special,
                    ..
                } => {
                    let base = a & !(size - 1);
                    let order = (shift - PAGE_SHIFT) as u8;
                    let p = Present {
                        pfn: pfn + ((a - base) >> PAGE_SHIFT),
                        order,
                        write,
                        protnone,
                        special,
                        zero: false,
                    };
                    upper(sink, a, next, Leaf::Present(p))?
                }
                Pte::Migration { .. } if shift == PMD_SHIFT => {
                    upper(sink, a, next, Leaf::Migration)?
                }
                Pte::DevicePrivate { pfn, write } if shift == PMD_SHIFT => {
                    let base = a & !(size - 1);
                    let owner = match frames.kind(pfn) {
                        FrameKind::DevicePrivate(o) => o,
                        FrameKind::System => 0,
                    };
                    let leaf = Leaf::DevicePrivate {
                        owner,
                        pfn: pfn + ((a - base) >> PAGE_SHIFT),
                        write,
                        order: 9,
                    };
                    upper(sink, a, next, leaf)?
                }
                // A marker (a hugetlb entry poisoned by UFFDIO_POISON) reads
                // as none, as `huge_pte_none_mostly`.
                Pte::Marker(_) => upper(sink, a, next, Leaf::Hole)?,
                // An absent PUD is a hole; anything else absent at the PMD
                // level is a bad entry.
                _ if shift == PUD_SHIFT => upper(sink, a, next, Leaf::Hole)?,
                _ => upper(sink, a, next, Leaf::Bad)?,
            }
            a = next;
        }
        ControlFlow::Continue(())
    }

    /// Visit every non-none leaf entry overlapping `[start, end)` (PTEs and
    /// huge leaves), with the address of the entry's first page and its
    /// level. The visitor may rewrite the entry (caller holds the
    /// page-table lock).
    pub fn for_each_leaf(
        &self,
        root: u32,
        start: u64,
        end: u64,
        f: &mut dyn FnMut(u64, u32, &AtomicU64),
    ) {
        self.visit(root, PGD_SHIFT, start, end, f);
    }

    fn visit(
        &self,
        tid: u32,
        shift: u32,
        start: u64,
        end: u64,
        f: &mut dyn FnMut(u64, u32, &AtomicU64),
    ) {
        let table = self.get(tid);
        let size = 1u64 << shift;
        let mut a = start;
        while a < end {
            let next = ((a | (size - 1)) + 1).min(end);
            let e = &table.0[index(a, shift)];
            let w = e.load(Ordering::Acquire);
            if w != 0 {
                match Pte::decode(w, shift != PTE_SHIFT) {
                    Pte::Table(id) => self.visit(id, shift - 9, a, next, f),
                    _ => f(a & !(size - 1), shift, e),
                }
            }
            a = next;
        }
    }

    /// Free the page tables that map only `[start, end)` (every entry under
    /// them must already be none). Caller holds the mmap write lock.
    pub fn free_range(&self, root: u32, start: u64, end: u64) {
        self.free_level(root, PGD_SHIFT, start, end);
    }

    fn free_level(&self, tid: u32, shift: u32, start: u64, end: u64) {
        if shift == PTE_SHIFT {
            return;
        }
        let table = self.get(tid);
        let size = 1u64 << shift;
        let mut a = start;
        while a < end {
            let base = a & !(size - 1);
            let next = ((a | (size - 1)) + 1).min(end);
            let e = &table.0[index(a, shift)];
            if let Pte::Table(id) = Pte::decode(e.load(Ordering::Acquire), true) {
                self.free_level(id, shift - 9, a, next);
                let covered = base >= start && base + size <= end;
                let empty = self
                    .get(id)
                    .0
                    .iter()
                    .all(|x| x.load(Ordering::Relaxed) == 0);
                if covered && empty {
                    e.store(0, Ordering::Release);
                    self.free(id);
                }
            }
            a = next;
        }
    }
}

/// Report a span found above the PTE level. Kept out of line so that the
/// PTE loop is the only place the walker's callback is called from, which
/// lets the compiler inline the callback there (the per-page path).
#[inline(never)]
fn upper<S: LeafSink>(sink: &mut S, a: u64, b: u64, leaf: Leaf) -> ControlFlow<()> {
    sink.leaf(a, b, leaf)
}

/// [`LeafSink`] over a closure: what [`Tables::walk_leaves`] reports to.
struct Runs<'f, F>(&'f mut F);

impl<F: FnMut(u64, u64, Leaf) -> ControlFlow<()>> LeafSink for Runs<'_, F> {
    #[inline(always)]
    fn leaf(&mut self, start: u64, end: u64, leaf: Leaf) -> ControlFlow<()> {
        (self.0)(start, end, leaf)
    }

    fn ptes<P: PteFormat>(&mut self, start: u64, ptes: &[P::Pte], format: &P) -> ControlFlow<()> {
        let mut a = start;
        for pte in ptes {
            (self.0)(a, a + (1 << PAGE_SHIFT), format.leaf(format.read(pte)))?;
            a += 1 << PAGE_SHIFT;
        }
        ControlFlow::Continue(())
    }
}

/// How the simulator's PTE words read, for hmm-core's batched walk: a
/// present word without `SPECIAL` or `PROTNONE` is plain, and so is a none
/// word.
#[derive(Debug, Clone, Copy)]
pub struct SimPteFormat<'a> {
    /// The machine's frames (the owner of device-private frames).
    pub frames: &'a Frames,
}

impl PteFormat for SimPteFormat<'_> {
    type Pte = AtomicU64;

    #[inline(always)]
    fn read(&self, pte: &AtomicU64) -> u64 {
        // Relaxed, as `ptep_get` under `pte_offset_map`.
        pte.load(Ordering::Relaxed)
    }

    #[inline(always)]
    fn plain(&self, w: u64) -> Option<u64> {
        // The write bit moves from bit 1 to `PfnFlags::WRITE` (bit 62).
        const _: () = assert!(PfnFlags::WRITE.bits() == P_WRITE << 61);
        if w & (P_PRESENT | P_SPECIAL | P_PROTNONE) == P_PRESENT {
            Some((w >> PAYLOAD_SHIFT) | ((w & P_WRITE) << 61) | PfnFlags::VALID.bits())
        } else if w == 0 {
            Some(0)
        } else {
            None
        }
    }

    #[inline]
    fn leaf(&self, w: u64) -> Leaf {
        pte_leaf(w, self.frames)
    }
}

/// Classify a PTE word for the HMM walk.
#[inline(always)]
fn pte_leaf(w: u64, frames: &Frames) -> Leaf {
    if w & P_PRESENT != 0 {
        let pfn = w >> PAYLOAD_SHIFT;
        return Leaf::Present(Present {
            pfn,
            order: 0,
            write: w & P_WRITE != 0,
            protnone: w & P_PROTNONE != 0,
            special: w & P_SPECIAL != 0,
            zero: pfn == ZERO_PFN,
        });
    }
    if w == 0 {
        return Leaf::Hole;
    }
    match Pte::decode(w, false) {
        Pte::Swap { .. } => Leaf::Swap,
        Pte::Migration { .. } => Leaf::Migration,
        Pte::DevicePrivate { pfn, write } => Leaf::DevicePrivate {
            owner: match frames.kind(pfn) {
                FrameKind::DevicePrivate(o) => o,
                FrameKind::System => 0,
            },
            pfn,
            write,
            order: 0,
        },
        Pte::DeviceExclusive { .. } => Leaf::DeviceExclusive,
        Pte::HwPoison { .. } => Leaf::HwPoison,
        Pte::Marker(_) => Leaf::Hole,
        _ => Leaf::Bad,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hmm_core::PAGE_SIZE;

    #[test]
    fn entries_round_trip() {
        let cases = [
            Pte::None,
            Pte::present(0x1234, true, false),
            Pte::present(0x200, false, true),
            Pte::Present {
                pfn: 9,
                write: false,
                huge: false,
                special: true,
                protnone: true,
                uffd_wp: true,
            },
            Pte::Swap {
                slot: 77,
                write: true,
            },
            Pte::Migration {
                pfn: 5,
                write: false,
            },
            Pte::DevicePrivate {
                pfn: 6,
                write: true,
            },
            Pte::DeviceExclusive {
                pfn: 7,
                write: true,
            },
            Pte::HwPoison { pfn: 8 },
            Pte::Marker(MARKER_UFFD_WP | MARKER_POISON),
        ];
        for c in cases {
            assert_eq!(Pte::decode(c.encode(), false), c, "{c:?}");
        }
        assert_eq!(Pte::decode(Pte::Table(42).encode(), true), Pte::Table(42));
    }

    #[test]
    fn walk_reports_none_spans_at_their_level_and_pte_runs() {
        let t = Tables::new();
        let frames = Frames::new();
        let root = t.alloc();
        let base = 0x4000_0000u64; // 1 GiB aligned
                                   // PTEs at 0x3000..0x6000 map consecutive PFNs with equal flags (one
                                   // run); the PTE at 0x6000 breaks it (read-only).
        for (i, (pfn, write)) in [(0x999, true), (0x99a, true), (0x99b, true), (0x99c, false)]
            .into_iter()
            .enumerate()
        {
            let Slot::At(e) = t.slot(root, base + 0x3000 + i as u64 * PAGE_SIZE, PTE_SHIFT, true)
            else {
                panic!()
            };
            e.store(Pte::present(pfn, write, false).encode(), Ordering::Release);
        }
        let Slot::At(h) = t.slot(root, base + PMD_SIZE, PMD_SHIFT, true) else {
            panic!()
        };
        h.store(Pte::present(0x800, false, true).encode(), Ordering::Release);
        let mut spans = Vec::new();
        t.walk_leaves(
            root,
            base + 0x1000,
            base + 3 * PMD_SIZE,
            &frames,
            &mut |a, b, l| {
                spans.push((a - base, b - base, l));
                ControlFlow::Continue(())
            },
        );
        let present = |pfn, write| {
            Leaf::Present(Present {
                pfn,
                write,
                ..Present::default()
            })
        };
        let huge = Leaf::Present(Present {
            pfn: 0x800,
            order: 9,
            ..Present::default()
        });
        assert_eq!(
            spans,
            [
                (0x1000, 0x3000, Leaf::EmptyPtes),
                (0x3000, 0x6000, present(0x999, true)),
                (0x6000, 0x7000, present(0x99c, false)),
                (0x7000, PMD_SIZE, Leaf::EmptyPtes),
                (PMD_SIZE, 2 * PMD_SIZE, huge),
                (2 * PMD_SIZE, 3 * PMD_SIZE, Leaf::Hole),
            ]
        );
    }

    #[test]
    fn free_range_releases_only_covered_empty_tables() {
        let t = Tables::new();
        let root = t.alloc();
        let Slot::At(e) = t.slot(root, 0x20_0000, PTE_SHIFT, true) else {
            panic!()
        };
        e.store(Pte::present(5, true, false).encode(), Ordering::Release);
        t.free_range(root, 0, 0x40_0000);
        assert!(matches!(
            t.slot(root, 0x20_0000, PTE_SHIFT, false),
            Slot::At(_)
        ));
        e.store(0, Ordering::Release);
        t.free_range(root, 0, 0x40_0000);
        assert!(matches!(
            t.slot(root, 0x20_0000, PTE_SHIFT, false),
            Slot::Missing(PMD_SHIFT)
        ));
    }
}
