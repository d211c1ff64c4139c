//! The page-table engine: one second-stage table with the 4 KiB granule,
//! generic over the descriptor [`Format`] and laid out by a
//! [`TableConfig`] (input size, start level, concatenated root tables,
//! leaf sizes and execute-only leaves the hardware supports).
//!
//! * [`PageTable::map`] installs a 4 KiB, 2 MiB or 1 GiB leaf, allocating
//!   intermediate tables on the way down and splitting a larger block that
//!   covers the address. It refuses leaf sizes, permissions and addresses
//!   the configuration does not allow.
//! * [`PageTable::unmap`] removes every leaf in a range. A block the range
//!   covers only partly is split (a table of the next level maps the rest);
//!   if no table page is available the whole block is unmapped instead, so
//!   an unmap never fails and never leaves the range reachable. Tables
//!   whose extent the range covers are detached and freed after the flush.
//! * [`PageTable::translate`] and [`PageTable::for_each_leaf`] read the
//!   table back.
//!
//! The root is the start level's table: one page, or up to 16 physically
//! contiguous pages (concatenated tables) indexed as one table, so page `k`
//! of the root covers input addresses `[k * span, (k + 1) * span)` with
//! `span` = 512 entries of the start level.
//!
//! Updates follow break-before-make: a live entry whose output address,
//! memory type or size changes is first made invalid, the TLB is flushed
//! through the caller's [`TlbFlush`] hook, and only then is the new entry
//! written. A permission change of a live leaf is written in place (the
//! architectures allow that without break-before-make): a downgrade is
//! followed by [`TlbFlush::flush_range`], a pure upgrade by
//! [`TlbFlush::flush_upgrade`]. Table pages are freed only after the flush
//! that removed the last hardware reference to them.
//!
//! Every descriptor update is a single 64-bit store. That is only sound
//! because hardware access/dirty-flag updates stay off (EPTP bit 6 clear,
//! VTCR_EL2.HA and HD clear; see [`vmx`](super::vmx) and
//! [`vtcr`](super::vtcr)): with them on, a flag the walker set between the
//! engine's read and its store would be lost.
//!
//! The engine is not internally locked: mutation takes `&mut self`, and the
//! owner serializes it (the guest-memory manager holds it in a spin lock).

use core::marker::PhantomData;
use core::sync::atomic::Ordering;

use super::alloc::{TableAlloc, TablePage};
use super::descriptor::{
    level_index, level_shift, level_size, Attrs, Descriptor, Format, PageSize, Perm, ENTRIES,
    TABLE_SIZE,
};
use super::layout::TableConfig;
use super::tlb::TlbFlush;

/// Why a mapping could not be installed (or a table created).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MapError {
    /// No table page was available.
    NoMemory,
    /// The guest or output address is not aligned to the mapping size.
    Unaligned,
    /// The guest range lies beyond the table's input size, or the output
    /// range beyond its output size.
    OutOfRange,
    /// Write permission without read permission (not encodable in EPT).
    BadPermissions,
    /// Execute-only permission on hardware without execute-only leaves.
    ExecOnlyUnsupported,
    /// A leaf size the hardware or the table's start level does not have.
    SizeUnsupported,
    /// A layout the format cannot walk (EPT translates 48 bits from
    /// level 0 only).
    LayoutUnsupported,
    /// A table descriptor points at memory that is not a table page of the
    /// allocator (table memory was corrupted).
    Corrupt,
}

/// What [`PageTable::map`] did to the leaf slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Installed {
    /// The slot (or a covering block) already held exactly this mapping;
    /// nothing was written.
    Unchanged,
    /// Written into an empty slot.
    New,
    /// Same output and memory type, permissions only widened, written in
    /// place; [`TlbFlush::flush_upgrade`] was called.
    Upgraded,
    /// Anything else (a downgrade written in place and flushed, or a
    /// replacement done break-before-make).
    Replaced,
}

impl Installed {
    /// Whether a descriptor was written (the caller publishes it with
    /// [`TlbFlush::publish`] before the guest runs).
    pub const fn wrote(self) -> bool {
        !matches!(self, Installed::Unchanged)
    }
}

/// One leaf of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// Guest-physical address of the leaf.
    pub gpa: u64,
    /// Output (host-physical) address.
    pub pa: u64,
    /// Leaf size.
    pub size: PageSize,
    /// Attributes.
    pub attrs: Attrs,
}

impl Mapping {
    /// The output address of `gpa`, which must lie inside the leaf.
    pub const fn pa_of(&self, gpa: u64) -> u64 {
        self.pa + (gpa - self.gpa)
    }
}

/// What an unmap did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UnmapStats {
    /// Leaves removed (whole blocks count once).
    pub leaves: u64,
    /// Blocks split because the range covered them only in part.
    pub splits: u64,
    /// Partly covered blocks unmapped whole because no table page was free.
    pub split_fallbacks: u64,
    /// Table pages freed.
    pub tables_freed: u64,
    /// Calls to the TLB-flush hook.
    pub flushes: u64,
}

/// A second-stage page table in format `F`.
#[derive(Debug)]
pub struct PageTable<F: Format> {
    root: u64,
    cfg: TableConfig,
    _format: PhantomData<fn() -> F>,
}

fn page<A: TableAlloc + ?Sized>(alloc: &A, pa: u64) -> Result<&TablePage, MapError> {
    alloc.table(pa).ok_or(MapError::Corrupt)
}

/// One past the highest output address a table of format `F` laid out by
/// `cfg` may point at.
fn oa_limit<F: Format>(cfg: &TableConfig) -> u64 {
    1 << (cfg.oa_bits() as u32).min(F::OA_BITS)
}

/// A table page from `alloc`, refused (and given back) if the hardware
/// could not reach it through a descriptor.
fn alloc_table<F: Format, A: TableAlloc + ?Sized>(
    alloc: &A,
    cfg: &TableConfig,
) -> Result<u64, MapError> {
    let pa = alloc.alloc_table().ok_or(MapError::NoMemory)?;
    if pa + TABLE_SIZE > oa_limit::<F>(cfg) {
        alloc.free_table(pa);
        return Err(MapError::NoMemory);
    }
    Ok(pa)
}

impl<F: Format> PageTable<F> {
    /// An empty table laid out by [`TableConfig::default`] (48 bits from
    /// level 0) with a freshly allocated root.
    pub fn new<A: TableAlloc + ?Sized>(alloc: &A) -> Result<Self, MapError> {
        Self::with_config(alloc, TableConfig::default())
    }

    /// An empty table laid out by `cfg`; its root is
    /// [`TableConfig::root_tables`] contiguous pages from `alloc`.
    pub fn with_config<A: TableAlloc + ?Sized>(
        alloc: &A,
        cfg: TableConfig,
    ) -> Result<Self, MapError> {
        if !F::supports_layout(&cfg) {
            return Err(MapError::LayoutUnsupported);
        }
        let n = cfg.root_tables();
        let root = alloc.alloc_tables(n).ok_or(MapError::NoMemory)?;
        let bytes = n as u64 * TABLE_SIZE;
        if root % bytes != 0 || root + bytes > oa_limit::<F>(&cfg) {
            for k in 0..n as u64 {
                alloc.free_table(root + k * TABLE_SIZE);
            }
            return Err(MapError::NoMemory);
        }
        Ok(PageTable {
            root,
            cfg,
            _format: PhantomData,
        })
    }

    /// Physical address of the root table (the EPTP address field, or the
    /// VTTBR_EL2 base address: the first of the concatenated tables).
    pub const fn root(&self) -> u64 {
        self.root
    }

    /// The layout.
    pub const fn config(&self) -> &TableConfig {
        &self.cfg
    }

    /// The root page holding `gpa`'s start-level entry.
    fn root_page(&self, gpa: u64) -> u64 {
        let k = (gpa >> (level_shift(self.cfg.start_level()) + 9))
            & (self.cfg.root_tables() as u64 - 1);
        self.root + k * TABLE_SIZE
    }

    /// Map `size` bytes at `gpa` to `pa` with `attrs`, replacing whatever
    /// was mapped there (splitting a covering larger block, or freeing the
    /// smaller mappings a new block replaces).
    pub fn map<A, T>(
        &mut self,
        alloc: &A,
        tlb: &T,
        gpa: u64,
        pa: u64,
        size: PageSize,
        attrs: Attrs,
    ) -> Result<Installed, MapError>
    where
        A: TableAlloc + ?Sized,
        T: TlbFlush + ?Sized,
    {
        let bytes = size.bytes();
        if !gpa.is_multiple_of(bytes) || !pa.is_multiple_of(bytes) {
            return Err(MapError::Unaligned);
        }
        if gpa
            .checked_add(bytes)
            .is_none_or(|e| e > self.cfg.ia_limit())
            || pa
                .checked_add(bytes)
                .is_none_or(|e| e > oa_limit::<F>(&self.cfg))
        {
            return Err(MapError::OutOfRange);
        }
        if attrs.perm.contains(Perm::W) && !attrs.perm.contains(Perm::R) {
            return Err(MapError::BadPermissions);
        }
        if !self.cfg.allows_perm(attrs.perm) {
            return Err(MapError::ExecOnlyUnsupported);
        }
        if !self.cfg.allows_size(size) {
            return Err(MapError::SizeUnsupported);
        }
        let target = size.level();
        let start = self.cfg.start_level();
        let mut table = self.root_page(gpa);
        for level in start..target {
            let t = page(alloc, table)?;
            let slot = &t.0[level_index(gpa, level)];
            table = match F::decode(level, slot.load(Ordering::Acquire)) {
                Descriptor::Table(next) => next,
                Descriptor::Invalid => {
                    let next = alloc_table::<F, A>(alloc, &self.cfg)?;
                    slot.store(F::table(next), Ordering::Release);
                    next
                }
                Descriptor::Leaf {
                    pa: bpa,
                    attrs: battrs,
                } => {
                    let bsize = level_size(level);
                    let base = gpa & !(bsize - 1);
                    if battrs == attrs && bpa + (gpa - base) == pa {
                        // The covering block already maps exactly this.
                        return Ok(Installed::Unchanged);
                    }
                    let next = Self::split_block(&self.cfg, alloc, level, bpa, battrs, None)?;
                    slot.store(F::INVALID, Ordering::Release);
                    tlb.flush_range(base, base + bsize);
                    slot.store(F::table(next), Ordering::Release);
                    next
                }
            };
        }
        let t = page(alloc, table)?;
        let slot = &t.0[level_index(gpa, target)];
        let new = F::leaf(target, pa, attrs);
        let done = match F::decode(target, slot.load(Ordering::Acquire)) {
            Descriptor::Invalid => {
                slot.store(new, Ordering::Release);
                Installed::New
            }
            Descriptor::Leaf {
                pa: old_pa,
                attrs: old,
            } if old_pa == pa && old.mem == attrs.mem => {
                if old == attrs {
                    Installed::Unchanged
                } else if (old.perm - attrs.perm).is_empty() {
                    // Only gains: in place, then drop the narrower cached
                    // translation.
                    slot.store(new, Ordering::Release);
                    tlb.flush_upgrade(gpa, size);
                    Installed::Upgraded
                } else {
                    slot.store(new, Ordering::Release);
                    tlb.flush_range(gpa, gpa + bytes);
                    Installed::Replaced
                }
            }
            Descriptor::Leaf { .. } => {
                slot.store(F::INVALID, Ordering::Release);
                tlb.flush_range(gpa, gpa + bytes);
                slot.store(new, Ordering::Release);
                Installed::Replaced
            }
            Descriptor::Table(sub) => {
                slot.store(F::INVALID, Ordering::Release);
                tlb.flush_range(gpa, gpa + bytes);
                Self::free_tree(alloc, sub, target + 1);
                slot.store(new, Ordering::Release);
                Installed::Replaced
            }
        };
        Ok(done)
    }

    /// A new table at `level + 1` replicating the block `bpa`/`attrs` at
    /// `level`, leaving out the children entirely inside `hole`.
    fn split_block<A: TableAlloc + ?Sized>(
        cfg: &TableConfig,
        alloc: &A,
        level: u8,
        bpa: u64,
        attrs: Attrs,
        hole: Option<(u64, u64, u64)>,
    ) -> Result<u64, MapError> {
        let next = alloc_table::<F, A>(alloc, cfg)?;
        let t = page(alloc, next)?;
        let child = level + 1;
        let csize = level_size(child);
        for (i, slot) in t.0.iter().enumerate() {
            let off = i as u64 * csize;
            if let Some((base, hs, he)) = hole {
                let cs = base + off;
                if hs <= cs && cs + csize <= he {
                    continue;
                }
            }
            slot.store(F::leaf(child, bpa + off, attrs), Ordering::Relaxed);
        }
        Ok(next)
    }

    /// Free the table at `pa` (at `level`) and every table below it.
    /// Returns the tables freed and the leaves they held.
    fn free_tree<A: TableAlloc + ?Sized>(alloc: &A, pa: u64, level: u8) -> (u64, u64) {
        let (mut tables, mut leaves) = (1, 0);
        if let Some(t) = alloc.table(pa) {
            for slot in &t.0 {
                match F::decode(level, slot.load(Ordering::Relaxed)) {
                    Descriptor::Table(sub) if level < 3 => {
                        let (t, l) = Self::free_tree(alloc, sub, level + 1);
                        tables += t;
                        leaves += l;
                    }
                    Descriptor::Leaf { .. } => leaves += 1,
                    _ => {}
                }
            }
        }
        alloc.free_table(pa);
        (tables, leaves)
    }

    /// The root pages with the input range each covers.
    fn root_pages(&self) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        let span = self.cfg.root_span();
        (0..self.cfg.root_tables() as u64).map(move |k| {
            let lo = k * span;
            (self.root + k * TABLE_SIZE, lo, lo + span)
        })
    }

    /// Unmap every leaf in guest-physical `[start, end)` (rounded out to
    /// 4 KiB), splitting partly covered blocks, and flush the TLB before
    /// returning. Never fails: when a split cannot get a table page the
    /// whole block is unmapped.
    pub fn unmap<A, T>(&mut self, alloc: &A, tlb: &T, start: u64, end: u64) -> UnmapStats
    where
        A: TableAlloc + ?Sized,
        T: TlbFlush + ?Sized,
    {
        let start = start & !0xfff;
        let end = end.saturating_add(0xfff).min(self.cfg.ia_limit()) & !0xfff;
        let mut u = Unmapper::<F, A, T> {
            cfg: self.cfg,
            alloc,
            tlb,
            lo: u64::MAX,
            hi: 0,
            deferred: [(0, 0); DEFERRED],
            ndeferred: 0,
            stats: UnmapStats::default(),
            _f: PhantomData,
        };
        if start < end {
            for (page, lo, hi) in self.root_pages() {
                let (s, e) = (start.max(lo), end.min(hi));
                if s < e {
                    u.range(page, self.cfg.start_level(), s, e);
                }
            }
        }
        u.finish();
        if u.stats.splits > 0 {
            // The split blocks' replacement tables went in after the
            // flush; let the walkers see them.
            tlb.publish();
        }
        u.stats
    }

    /// The leaf mapping `gpa`, if any.
    pub fn translate<A: TableAlloc + ?Sized>(&self, alloc: &A, gpa: u64) -> Option<Mapping> {
        if gpa >= self.cfg.ia_limit() {
            return None;
        }
        let mut table = self.root_page(gpa);
        for level in self.cfg.start_level()..4 {
            let t = alloc.table(table)?;
            match F::decode(level, t.0[level_index(gpa, level)].load(Ordering::Acquire)) {
                Descriptor::Invalid => return None,
                Descriptor::Table(next) => table = next,
                Descriptor::Leaf { pa, attrs } => {
                    let size = PageSize::at_level(level)?;
                    return Some(Mapping {
                        gpa: gpa & !(size.bytes() - 1),
                        pa,
                        size,
                        attrs,
                    });
                }
            }
        }
        None
    }

    /// Call `f` for every leaf, in guest-physical order.
    pub fn for_each_leaf<A, G>(&self, alloc: &A, mut f: G)
    where
        A: TableAlloc + ?Sized,
        G: FnMut(Mapping),
    {
        let limit = self.cfg.ia_limit();
        for (page, lo, _) in self.root_pages() {
            Self::leaves(alloc, page, self.cfg.start_level(), lo, limit, &mut f);
        }
    }

    fn leaves<A, G>(alloc: &A, table: u64, level: u8, base: u64, limit: u64, f: &mut G)
    where
        A: TableAlloc + ?Sized,
        G: FnMut(Mapping),
    {
        let Some(t) = alloc.table(table) else { return };
        let size = level_size(level);
        for (i, slot) in t.0.iter().enumerate() {
            let gpa = base + i as u64 * size;
            if gpa >= limit {
                break;
            }
            match F::decode(level, slot.load(Ordering::Acquire)) {
                Descriptor::Invalid => {}
                Descriptor::Table(next) if level < 3 => {
                    Self::leaves(alloc, next, level + 1, gpa, limit, f)
                }
                Descriptor::Table(_) => {}
                Descriptor::Leaf { pa, attrs } => {
                    if let Some(size) = PageSize::at_level(level) {
                        f(Mapping {
                            gpa,
                            pa,
                            size,
                            attrs,
                        });
                    }
                }
            }
        }
    }

    /// Unmap everything, flush, and free every table page including the
    /// root pages.
    pub fn destroy<A, T>(mut self, alloc: &A, tlb: &T)
    where
        A: TableAlloc + ?Sized,
        T: TlbFlush + ?Sized,
    {
        self.unmap(alloc, tlb, 0, self.cfg.ia_limit());
        for (page, _, _) in self.root_pages() {
            Self::free_tree(alloc, page, self.cfg.start_level());
        }
    }
}

/// Detached tables waiting for a flush before they are freed.
const DEFERRED: usize = 16;

struct Unmapper<'a, F, A: ?Sized, T: ?Sized> {
    cfg: TableConfig,
    alloc: &'a A,
    tlb: &'a T,
    lo: u64,
    hi: u64,
    deferred: [(u64, u8); DEFERRED],
    ndeferred: usize,
    stats: UnmapStats,
    _f: PhantomData<fn() -> F>,
}

impl<F: Format, A: TableAlloc + ?Sized, T: TlbFlush + ?Sized> Unmapper<'_, F, A, T> {
    fn note(&mut self, s: u64, e: u64) {
        self.lo = self.lo.min(s);
        self.hi = self.hi.max(e);
    }

    fn flush_now(&mut self, s: u64, e: u64) {
        self.tlb.flush_range(s, e);
        self.stats.flushes += 1;
    }

    /// Flush what was noted and free the detached tables.
    fn finish(&mut self) {
        if self.lo < self.hi {
            let (lo, hi) = (self.lo, self.hi);
            self.flush_now(lo, hi);
            self.lo = u64::MAX;
            self.hi = 0;
        }
        for i in 0..self.ndeferred {
            let (pa, level) = self.deferred[i];
            let (tables, leaves) = PageTable::<F>::free_tree(self.alloc, pa, level);
            self.stats.tables_freed += tables;
            self.stats.leaves += leaves;
        }
        self.ndeferred = 0;
    }

    fn defer_free(&mut self, pa: u64, level: u8) {
        if self.ndeferred == DEFERRED {
            self.finish();
        }
        self.deferred[self.ndeferred] = (pa, level);
        self.ndeferred += 1;
    }

    fn range(&mut self, table: u64, level: u8, start: u64, end: u64) {
        let Some(t) = self.alloc.table(table) else {
            return;
        };
        let size = level_size(level);
        let mut a = start;
        while a < end {
            let es = a & !(size - 1);
            let ee = es + size;
            let ce = end.min(ee);
            let whole = a == es && ce == ee;
            let slot = &t.0[level_index(a, level)];
            match F::decode(level, slot.load(Ordering::Acquire)) {
                Descriptor::Invalid => {}
                Descriptor::Leaf { pa, attrs } => {
                    self.stats.leaves += 1;
                    if whole {
                        slot.store(F::INVALID, Ordering::Release);
                        self.note(es, ee);
                    } else {
                        let split = PageTable::<F>::split_block(
                            &self.cfg,
                            self.alloc,
                            level,
                            pa,
                            attrs,
                            Some((es, a, ce)),
                        );
                        slot.store(F::INVALID, Ordering::Release);
                        self.flush_now(es, ee);
                        match split {
                            Ok(next) => {
                                self.stats.splits += 1;
                                slot.store(F::table(next), Ordering::Release);
                                // Children only partly inside the range.
                                self.range(next, level + 1, a, ce);
                            }
                            Err(_) => self.stats.split_fallbacks += 1,
                        }
                    }
                }
                Descriptor::Table(next) => {
                    if whole || level == 3 {
                        slot.store(F::INVALID, Ordering::Release);
                        self.note(es, ee);
                        self.defer_free(next, level + 1);
                    } else {
                        self.range(next, level + 1, a, ce);
                        let empty = self.alloc.table(next).is_some_and(|sub| {
                            sub.0.iter().all(|d| {
                                F::decode(level + 1, d.load(Ordering::Relaxed))
                                    == Descriptor::Invalid
                            })
                        });
                        if empty {
                            slot.store(F::INVALID, Ordering::Release);
                            self.note(es, ee);
                            self.defer_free(next, level + 1);
                        }
                    }
                }
            }
            a = ce;
        }
    }
}

const _: () = assert!(ENTRIES == 512);

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::alloc::StaticPool;
    use crate::descriptor::{MemType, GPA_LIMIT};
    use crate::ept::{Ept, EptFlags};
    use crate::stage2::Stage2;
    use std::boxed::Box;
    use std::cell::RefCell;
    use std::vec::Vec;

    const G: u64 = 1 << 30;
    const M2: u64 = 2 << 20;
    const K4: u64 = 4096;

    /// Records every flush with the number of pool pages in use at the time.
    /// Upgrade flushes and publications are logged apart.
    struct Tlb<'p> {
        log: RefCell<Vec<(u64, u64, usize)>>,
        upgrades: RefCell<Vec<(u64, PageSize)>>,
        publishes: RefCell<u32>,
        pool: &'p StaticPool<64>,
    }
    impl TlbFlush for Tlb<'_> {
        fn flush_range(&self, s: u64, e: u64) {
            self.log.borrow_mut().push((s, e, self.pool.in_use()));
        }
        fn flush_upgrade(&self, gpa: u64, size: PageSize) {
            self.upgrades.borrow_mut().push((gpa, size));
        }
        fn publish(&self) {
            *self.publishes.borrow_mut() += 1;
        }
    }

    fn setup() -> Box<StaticPool<64>> {
        Box::default()
    }
    fn tlb(pool: &StaticPool<64>) -> Tlb<'_> {
        Tlb {
            log: RefCell::new(Vec::new()),
            upgrades: RefCell::new(Vec::new()),
            publishes: RefCell::new(0),
            pool,
        }
    }
    fn rw() -> Attrs {
        Attrs::ram(Perm::R | Perm::W)
    }
    fn leaves<F: Format>(pt: &PageTable<F>, pool: &StaticPool<64>) -> Vec<Mapping> {
        let mut v = Vec::new();
        pt.for_each_leaf(pool, |m| v.push(m));
        v
    }
    /// The raw descriptor for `gpa` at `level`, read straight from memory.
    fn raw<F: Format>(pt: &PageTable<F>, pool: &StaticPool<64>, gpa: u64, level: u8) -> u64 {
        let mut t = pt.root();
        for l in 0..level {
            let d = pool.table(t).unwrap().0[level_index(gpa, l)].load(Ordering::Relaxed);
            match F::decode(l, d) {
                Descriptor::Table(n) => t = n,
                other => panic!("level {l}: {other:?}"),
            }
        }
        pool.table(t).unwrap().0[level_index(gpa, level)].load(Ordering::Relaxed)
    }

    fn map_translate_all_sizes<F: Format>() {
        let pool = setup();
        let t = tlb(&pool);
        let mut pt = PageTable::<F>::new(&*pool).unwrap();
        pt.map(&*pool, &t, 0x1000, 0x5_0000_0000, PageSize::Size4K, rw())
            .unwrap();
        pt.map(&*pool, &t, 0x4020_0000, 0x6020_0000, PageSize::Size2M, rw())
            .unwrap();
        pt.map(
            &*pool,
            &t,
            2 * G,
            5 * G,
            PageSize::Size1G,
            Attrs::ram(Perm::R),
        )
        .unwrap();
        let m = pt.translate(&*pool, 0x4020_0000 + 0x12_3456).unwrap();
        assert_eq!(
            (m.gpa, m.pa, m.size),
            (0x4020_0000, 0x6020_0000, PageSize::Size2M)
        );
        assert_eq!(m.pa_of(0x4020_0000 + 0x12_3000), 0x6032_3000);
        let g = pt.translate(&*pool, 2 * G + 0x3fff_f000).unwrap();
        assert_eq!(
            (g.pa, g.size, g.attrs.perm),
            (5 * G, PageSize::Size1G, Perm::R)
        );
        assert!(pt.translate(&*pool, 0x2000).is_none());
        let all = leaves(&pt, &pool);
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].gpa, 0x1000);
        assert!(
            t.log.borrow().is_empty(),
            "mapping into empty slots needs no flush"
        );
        // Root, one L1 table, two L2 tables (0..1G, 1G..2G) and one L3.
        assert_eq!(pool.in_use(), 5);
        // The leaves are real descriptors at the right levels.
        assert_eq!(
            raw(&pt, &pool, 2 * G, 1),
            F::leaf(1, 5 * G, Attrs::ram(Perm::R))
        );
        assert_eq!(
            raw(&pt, &pool, 0x4020_0000, 2),
            F::leaf(2, 0x6020_0000, rw())
        );
        assert_eq!(raw(&pt, &pool, 0x1000, 3), F::leaf(3, 0x5_0000_0000, rw()));
        pt.destroy(&*pool, &t);
        assert_eq!(pool.in_use(), 0);
    }

    #[test]
    fn map_and_translate_ept() {
        map_translate_all_sizes::<Ept>();
    }
    #[test]
    fn map_and_translate_stage2() {
        map_translate_all_sizes::<Stage2>();
    }

    #[test]
    fn ept_block_bits_in_memory() {
        let pool = setup();
        let t = tlb(&pool);
        let mut pt = PageTable::<Ept>::new(&*pool).unwrap();
        pt.map(&*pool, &t, M2, 0x20_0000, PageSize::Size2M, rw())
            .unwrap();
        let pde = raw(&pt, &pool, M2, 2);
        assert_ne!(pde & EptFlags::LARGE.bits(), 0);
        let pml4e = raw(&pt, &pool, M2, 0);
        assert_eq!(pml4e & 0b111, 0b111);
        assert_eq!(pml4e & EptFlags::LARGE.bits(), 0);
    }

    fn partial_unmap_splits<F: Format>() {
        let pool = setup();
        let t = tlb(&pool);
        let mut pt = PageTable::<F>::new(&*pool).unwrap();
        pt.map(&*pool, &t, G, 7 * G, PageSize::Size1G, rw())
            .unwrap();
        // Unmap 3 pages in the middle of the second 2 MiB of the 1 GiB block.
        let hole = (G + M2 + 5 * K4, G + M2 + 8 * K4);
        let st = pt.unmap(&*pool, &t, hole.0, hole.1);
        assert_eq!(st.splits, 2, "1 GiB -> 2 MiB, then 2 MiB -> 4 KiB");
        assert_eq!(st.split_fallbacks, 0);
        let all = leaves(&pt, &pool);
        // 511 2 MiB blocks and 509 4 KiB pages.
        assert_eq!(
            all.iter().filter(|m| m.size == PageSize::Size2M).count(),
            511
        );
        assert_eq!(
            all.iter().filter(|m| m.size == PageSize::Size4K).count(),
            509
        );
        for m in &all {
            assert_eq!(m.pa, 7 * G + (m.gpa - G), "every leaf keeps its frame");
            assert!(m.gpa + m.size.bytes() <= hole.0 || m.gpa >= hole.1);
            assert_eq!(m.attrs, rw());
        }
        for g in [hole.0, hole.0 + K4, hole.1 - K4] {
            assert!(pt.translate(&*pool, g).is_none());
        }
        // The whole 1 GiB and the 2 MiB block were flushed before their
        // replacement tables went in.
        let log = t.log.borrow();
        assert!(log.iter().any(|&(s, e, _)| s <= G && e >= 2 * G));
        assert!(log.iter().any(|&(s, e, _)| s <= G + M2 && e >= G + 2 * M2));
    }

    #[test]
    fn partial_unmap_splits_ept() {
        partial_unmap_splits::<Ept>();
    }
    #[test]
    fn partial_unmap_splits_stage2() {
        partial_unmap_splits::<Stage2>();
    }

    #[test]
    fn split_without_table_memory_unmaps_the_whole_block() {
        let pool = Box::<StaticPool<3>>::default();
        let t = NoFlush;
        let mut pt = PageTable::<Stage2>::new(&*pool).unwrap();
        pt.map(&*pool, &t, M2, 0x4000_0000, PageSize::Size2M, rw())
            .unwrap();
        assert_eq!(pool.in_use(), 3);
        let st = pt.unmap(&*pool, &t, M2, M2 + K4);
        assert_eq!((st.splits, st.split_fallbacks), (0, 1));
        assert!(
            pt.translate(&*pool, M2 + K4).is_none(),
            "the rest is unmapped too"
        );
        assert!(pt.translate(&*pool, M2).is_none());
    }

    struct NoFlush;
    impl TlbFlush for NoFlush {
        fn flush_range(&self, _: u64, _: u64) {}
    }

    #[test]
    fn block_over_small_pages_frees_the_table_after_the_flush() {
        let pool = setup();
        let t = tlb(&pool);
        let mut pt = PageTable::<Ept>::new(&*pool).unwrap();
        for i in 0..4 {
            pt.map(
                &*pool,
                &t,
                M2 + i * K4,
                0x1000_0000 + i * K4,
                PageSize::Size4K,
                rw(),
            )
            .unwrap();
        }
        assert_eq!(pool.in_use(), 4);
        pt.map(&*pool, &t, M2, 0x4000_0000, PageSize::Size2M, rw())
            .unwrap();
        assert_eq!(pool.in_use(), 3);
        let log = t.log.borrow();
        assert_eq!(log.len(), 1);
        assert_eq!(
            log[0],
            (M2, 2 * M2, 4),
            "flushed while the old table was still allocated"
        );
        assert_eq!(leaves(&pt, &pool).len(), 1);
    }

    #[test]
    fn small_page_inside_a_block_splits_it() {
        let pool = setup();
        let t = tlb(&pool);
        let mut pt = PageTable::<Stage2>::new(&*pool).unwrap();
        pt.map(&*pool, &t, 0, 0x4000_0000, PageSize::Size2M, rw())
            .unwrap();
        // Same frame, same attributes: nothing to do.
        pt.map(&*pool, &t, 0x3000, 0x4000_3000, PageSize::Size4K, rw())
            .unwrap();
        assert_eq!(leaves(&pt, &pool).len(), 1);
        // Another frame: split, then replace one page.
        pt.map(&*pool, &t, 0x3000, 0x9000_0000, PageSize::Size4K, rw())
            .unwrap();
        let all = leaves(&pt, &pool);
        assert_eq!(all.len(), 512);
        assert_eq!(pt.translate(&*pool, 0x3000).unwrap().pa, 0x9000_0000);
        assert_eq!(pt.translate(&*pool, 0x4000).unwrap().pa, 0x4000_4000);
        assert!(t.log.borrow().iter().any(|&(s, e, _)| (s, e) == (0, M2)));
    }

    #[test]
    fn permission_upgrades_flush_the_leaf_and_downgrades_flush_the_range() {
        let pool = setup();
        let t = tlb(&pool);
        let mut pt = PageTable::<Ept>::new(&*pool).unwrap();
        let r = Attrs::ram(Perm::R);
        assert_eq!(
            pt.map(&*pool, &t, 0, 0x8000, PageSize::Size4K, r),
            Ok(Installed::New)
        );
        // R -> RW: in place, one upgrade flush of that leaf, nothing else.
        assert_eq!(
            pt.map(&*pool, &t, 0, 0x8000, PageSize::Size4K, rw()),
            Ok(Installed::Upgraded)
        );
        assert_eq!(*t.upgrades.borrow(), [(0, PageSize::Size4K)]);
        assert!(t.log.borrow().is_empty());
        assert_eq!(raw(&pt, &pool, 0, 3), Ept::leaf(3, 0x8000, rw()));
        // The same mapping again: nothing written, nothing flushed.
        assert_eq!(
            pt.map(&*pool, &t, 0, 0x8000, PageSize::Size4K, rw()),
            Ok(Installed::Unchanged)
        );
        assert_eq!(t.upgrades.borrow().len(), 1);
        // RW -> R: in place, flushed on every CPU.
        assert_eq!(
            pt.map(&*pool, &t, 0, 0x8000, PageSize::Size4K, r),
            Ok(Installed::Replaced)
        );
        assert_eq!(*t.log.borrow(), [(0, K4, 4)]);
        // R -> X: loses R, gains X: a downgrade (flushed everywhere).
        let x = Attrs::ram(Perm::X);
        pt.map(&*pool, &t, 0, 0x8000, PageSize::Size4K, x).unwrap();
        assert_eq!(t.log.borrow().len(), 2);
        assert_eq!(t.upgrades.borrow().len(), 1);
        // A new frame is break-before-make.
        pt.map(&*pool, &t, 0, 0x9000, PageSize::Size4K, r).unwrap();
        assert_eq!(t.log.borrow().len(), 3);
        let dev = Attrs {
            perm: Perm::R,
            mem: MemType::Device,
        };
        pt.map(&*pool, &t, 0, 0x9000, PageSize::Size4K, dev)
            .unwrap();
        assert_eq!(t.log.borrow().len(), 4);
        assert_eq!(pt.translate(&*pool, 0).unwrap().attrs, dev);
        assert_eq!(t.upgrades.borrow().len(), 1);
    }

    #[test]
    fn block_upgrade_flushes_the_block_once() {
        let pool = setup();
        let t = tlb(&pool);
        let mut pt = PageTable::<Stage2>::new(&*pool).unwrap();
        let r = Attrs::ram(Perm::R);
        pt.map(&*pool, &t, G, 3 * G, PageSize::Size1G, r).unwrap();
        pt.map(&*pool, &t, 4 * M2, 8 * M2, PageSize::Size2M, r)
            .unwrap();
        assert_eq!(
            pt.map(&*pool, &t, G, 3 * G, PageSize::Size1G, rw()),
            Ok(Installed::Upgraded)
        );
        assert_eq!(
            pt.map(&*pool, &t, 4 * M2, 8 * M2, PageSize::Size2M, rw()),
            Ok(Installed::Upgraded)
        );
        assert_eq!(
            *t.upgrades.borrow(),
            [(G, PageSize::Size1G), (4 * M2, PageSize::Size2M)]
        );
        assert!(t.log.borrow().is_empty());
        // A 4 KiB mapping matching the writable block changes nothing.
        assert_eq!(
            pt.map(&*pool, &t, G + K4, 3 * G + K4, PageSize::Size4K, rw()),
            Ok(Installed::Unchanged)
        );
        assert_eq!(*t.publishes.borrow(), 0, "map itself never publishes");
    }

    /// A stage-2 walk as the architecture defines it, from the VTCR_EL2
    /// and VTTBR_EL2 values alone, reading descriptors by physical address
    /// from the pool (identity mapped): the start level from SL0, the input
    /// size from T0SZ, the start-level index from bits `[ia-1:shift]` (so
    /// concatenated tables are indexed as one), then 9 bits per level.
    /// Returns the output address, or `None` for a fault.
    fn arm_walk<A: TableAlloc>(pool: &A, vtcr: u64, vttbr: u64, ipa: u64) -> Option<u64> {
        let ia = 64 - (vtcr & 0x3f) as u32;
        let start = match (vtcr >> 6) & 3 {
            0b10 => 0u32,
            0b01 => 1,
            0b00 => 2,
            _ => return None,
        };
        if ipa >> ia != 0 {
            return None;
        }
        let read = |pa: u64| {
            pool.table(pa & !0xfff)
                .map(|t| t.0[(pa as usize & 0xfff) / 8].load(Ordering::Relaxed))
        };
        let mut base = vttbr & 0x0000_ffff_ffff_fffe;
        let root_bytes = 8u64 << (ia - (12 + 9 * (3 - start)));
        if !base.is_multiple_of(root_bytes.max(4096)) {
            return None;
        }
        let mut level = start;
        loop {
            let shift = 12 + 9 * (3 - level);
            let bits = if level == start { ia - shift } else { 9 };
            let idx = (ipa >> shift) & ((1 << bits) - 1);
            let d = read(base + idx * 8)?;
            if d & 1 == 0 {
                return None;
            }
            if level < 3 && d & 2 != 0 {
                base = d & 0x0000_ffff_ffff_f000;
                level += 1;
                continue;
            }
            if level == 0 || (level == 3 && d & 2 == 0) {
                return None;
            }
            let mask = (1u64 << shift) - 1;
            return Some((d & 0x0000_ffff_ffff_f000 & !mask) | (ipa & mask));
        }
    }

    /// The pool's pages seen at physical addresses around 1 GiB (the host
    /// heap's addresses are too high for a 32- or 40-bit output size), by
    /// a fixed, 1 MiB-aligned shift.
    struct Low<'a> {
        pool: &'a StaticPool<64>,
        delta: u64,
    }
    impl<'a> Low<'a> {
        fn new(pool: &'a StaticPool<64>) -> Self {
            let probe = pool.alloc_table().unwrap();
            pool.free_table(probe);
            let delta = (probe & !0xf_ffff) - 0x4010_0000;
            Low { pool, delta }
        }
    }
    // SAFETY: a bijection of the pool's addresses by a 1 MiB-aligned
    // constant keeps every promise of the pool (alignment included).
    unsafe impl TableAlloc for Low<'_> {
        fn alloc_table(&self) -> Option<u64> {
            self.pool.alloc_table().map(|pa| pa - self.delta)
        }
        fn alloc_tables(&self, n: usize) -> Option<u64> {
            self.pool.alloc_tables(n).map(|pa| pa - self.delta)
        }
        fn free_table(&self, pa: u64) {
            self.pool.free_table(pa + self.delta)
        }
        fn table(&self, pa: u64) -> Option<&TablePage> {
            self.pool.table(pa.checked_add(self.delta)?)
        }
    }

    /// Every PA range's layout: the engine's tables, walked the way the
    /// hardware walks them under that VTCR_EL2, translate the lowest and
    /// the highest IPA and every block size the layout allows.
    #[test]
    fn stage2_layouts_walk_like_hardware_for_every_pa_range() {
        use crate::vtcr::Stage2Vtcr;
        for pa_bits in [32u8, 36, 40, 42, 44, 48, 52] {
            let v = Stage2Vtcr::for_pa_bits(pa_bits);
            let cfg = v.table();
            let inner = setup();
            let t = tlb(&inner);
            let pool = Low::new(&inner);
            let mut pt = PageTable::<Stage2>::with_config(&pool, cfg).unwrap();
            let n = v.root_tables();
            assert!(pt.root() < 1 << 32);
            assert_eq!(inner.in_use(), n, "PA {pa_bits}: root pages");
            assert_eq!(pt.root() % (n as u64 * 4096), 0, "root alignment");
            let vttbr = Stage2Vtcr::vttbr(pt.root(), 1);
            let top = cfg.ia_limit();
            let mut maps = std::vec![
                (0, 0x4000_0000, PageSize::Size4K),
                (top - K4, 0x4000_1000, PageSize::Size4K),
                (top - 2 * M2, 0x4020_0000, PageSize::Size2M),
            ];
            if cfg.allows_size(PageSize::Size1G) {
                maps.push((top - 2 * G, 0x8000_0000, PageSize::Size1G));
            } else {
                assert_eq!(
                    pt.map(&pool, &t, G, G, PageSize::Size1G, rw()),
                    Err(MapError::SizeUnsupported),
                    "PA {pa_bits}: no 1 GiB blocks without level 1"
                );
            }
            for &(gpa, pa, size) in &maps {
                assert_eq!(pt.map(&pool, &t, gpa, pa, size, rw()), Ok(Installed::New));
            }
            for &(gpa, pa, size) in &maps {
                let last = gpa + size.bytes() - 8;
                assert_eq!(
                    arm_walk(&pool, v.vtcr(), vttbr, gpa),
                    Some(pa),
                    "PA {pa_bits}: {gpa:#x}"
                );
                assert_eq!(
                    arm_walk(&pool, v.vtcr(), vttbr, last),
                    Some(pa + size.bytes() - 8)
                );
                let m = pt.translate(&pool, last).unwrap();
                assert_eq!((m.gpa, m.pa, m.size), (gpa, pa, size));
            }
            assert_eq!(arm_walk(&pool, v.vtcr(), vttbr, K4), None);
            assert_eq!(arm_walk(&pool, v.vtcr(), vttbr, top), None);
            // Leaves come back in GPA order across the root pages.
            let mut all = Vec::new();
            pt.for_each_leaf(&pool, |m| all.push(m));
            let mut want: Vec<_> = maps.iter().map(|&(g, p, s)| (g, p, s)).collect();
            want.sort();
            assert_eq!(
                all.iter()
                    .map(|m| (m.gpa, m.pa, m.size))
                    .collect::<Vec<_>>(),
                want
            );
            assert_eq!(
                pt.map(&pool, &t, top, 0, PageSize::Size4K, rw()),
                Err(MapError::OutOfRange)
            );
            let st = pt.unmap(&pool, &t, 0, u64::MAX);
            assert_eq!(st.leaves, maps.len() as u64);
            assert_eq!(inner.in_use(), n, "PA {pa_bits}: only the root is left");
            assert_eq!(arm_walk(&pool, v.vtcr(), vttbr, 0), None);
            pt.destroy(&pool, &t);
            assert_eq!(inner.in_use(), 0);
        }
    }

    #[test]
    fn ept_walks_only_48_bits_from_level_0() {
        let pool = setup();
        let cfg = TableConfig::new(40, 1).unwrap();
        assert_eq!(
            PageTable::<Ept>::with_config(&*pool, cfg).map(|_| ()),
            Err(MapError::LayoutUnsupported)
        );
        assert_eq!(pool.in_use(), 0);
    }

    #[test]
    fn execute_only_and_output_limits() {
        let inner = setup();
        let t = tlb(&inner);
        let pool = Low::new(&inner);
        let cfg = TableConfig::default()
            .with_exec_only(false)
            .with_oa_bits(40)
            .unwrap();
        let mut pt = PageTable::<Ept>::with_config(&pool, cfg).unwrap();
        let x = Attrs::ram(Perm::X);
        assert_eq!(
            pt.map(&pool, &t, 0, 0x8000, PageSize::Size4K, x),
            Err(MapError::ExecOnlyUnsupported)
        );
        pt.map(
            &pool,
            &t,
            0,
            0x8000,
            PageSize::Size4K,
            Attrs::ram(Perm::R | Perm::X),
        )
        .unwrap();
        assert_eq!(
            pt.map(&pool, &t, K4, (1 << 40) - K4, PageSize::Size4K, rw()),
            Ok(Installed::New)
        );
        assert_eq!(
            pt.map(&pool, &t, 2 * K4, 1 << 40, PageSize::Size4K, rw()),
            Err(MapError::OutOfRange)
        );
    }

    #[test]
    fn a_split_by_unmap_is_published() {
        let pool = setup();
        let t = tlb(&pool);
        let mut pt = PageTable::<Stage2>::new(&*pool).unwrap();
        pt.map(&*pool, &t, M2, 0x4000_0000, PageSize::Size2M, rw())
            .unwrap();
        pt.unmap(&*pool, &t, 0, M2);
        assert_eq!(*t.publishes.borrow(), 0, "no split, nothing new to publish");
        pt.unmap(&*pool, &t, M2, M2 + K4);
        assert_eq!(*t.publishes.borrow(), 1);
        assert!(pt.translate(&*pool, M2 + K4).is_some());
    }

    #[test]
    fn unmap_everything_frees_every_table_but_the_root() {
        let pool = setup();
        let t = tlb(&pool);
        let mut pt = PageTable::<Stage2>::new(&*pool).unwrap();
        for i in 0..8u64 {
            let gpa = i * (G + M2 + K4);
            let gpa = gpa & !(K4 - 1);
            pt.map(&*pool, &t, gpa, gpa + (1 << 40), PageSize::Size4K, rw())
                .unwrap();
        }
        assert!(pool.in_use() > 8);
        let st = pt.unmap(&*pool, &t, 0, GPA_LIMIT);
        assert_eq!(st.leaves, 8);
        assert_eq!(pool.in_use(), 1);
        assert!(leaves(&pt, &pool).is_empty());
        // Tables were freed only after a flush covering them.
        let log = t.log.borrow();
        assert!(log.last().unwrap().2 > 1);
    }

    #[test]
    fn bad_requests_are_errors() {
        let pool = Box::<StaticPool<2>>::default();
        let t = NoFlush;
        let mut pt = PageTable::<Ept>::new(&*pool).unwrap();
        assert_eq!(
            pt.map(&*pool, &t, 0x1000, 0, PageSize::Size2M, rw()),
            Err(MapError::Unaligned)
        );
        assert_eq!(
            pt.map(&*pool, &t, 0, 0x1000, PageSize::Size2M, rw()),
            Err(MapError::Unaligned)
        );
        assert_eq!(
            pt.map(&*pool, &t, GPA_LIMIT, 0, PageSize::Size4K, rw()),
            Err(MapError::OutOfRange)
        );
        assert_eq!(
            pt.map(&*pool, &t, 0, 0, PageSize::Size4K, Attrs::ram(Perm::W)),
            Err(MapError::BadPermissions)
        );
        assert_eq!(
            pt.map(&*pool, &t, 0, 0, PageSize::Size4K, rw()),
            Err(MapError::NoMemory)
        );
        assert!(pt.translate(&*pool, GPA_LIMIT).is_none());
    }
}
