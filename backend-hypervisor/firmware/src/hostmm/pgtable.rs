//! The host address space's page tables: four levels of 512 entries in the
//! Arm VMSAv8-64 stage-1 descriptor format (4 KiB granule), walked in
//! software.
//!
//! ```text
//! table        next-table PA | 0b11                       (levels 0-2)
//! page         PA | AF | AP[2] (read-only) | 0b11         (level 3)
//! block        PA | AF | AP[2] (read-only) | 0b01         (levels 1, 2)
//! migration    old PA | SW_MIGRATION, valid bit clear     (level 3)
//! ```
//!
//! Table pages come from a [`StaticPool`] (512 atomic descriptors each), so
//! every update is one single-copy-atomic store and readers walk without the
//! page-table lock, as Linux's lockless walkers do; updates are serialized
//! by the caller's page-table lock.

use core::ops::ControlFlow;
use core::sync::atomic::{AtomicU64, Ordering};

use backend_hypervisor::{StaticPool, TableAlloc};
use hmm_core::{Leaf, Present};

use crate::frames::zero_page_pa;

const VALID: u64 = 1 << 0;
const TABLE_OR_PAGE: u64 = 1 << 1;
const AP_RO: u64 = 1 << 7;
const AF: u64 = 1 << 10;
/// Software bit of a non-present migration entry.
const SW_MIGRATION: u64 = 1 << 58;
const OA_MASK: u64 = 0x0000_ffff_ffff_f000;

/// Host table pages.
pub type HostTablePool = StaticPool<64>;

/// What one host descriptor holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// Nothing.
    None,
    /// Pointer to the next-level table.
    Table(u64),
    /// A present leaf.
    Leaf {
        /// Frame address.
        pa: u64,
        /// Writable.
        write: bool,
    },
    /// A migration entry for the frame at `pa`.
    Migration(u64),
}

/// Bytes mapped by one entry at `level`.
pub const fn level_size(level: u8) -> u64 {
    1 << (12 + 9 * (3 - level as u32))
}

fn index(addr: u64, level: u8) -> usize {
    ((addr >> (12 + 9 * (3 - level as u32))) & 0x1ff) as usize
}

/// Decode a descriptor found at `level`.
pub fn decode(level: u8, d: u64) -> Entry {
    if d & VALID == 0 {
        if d & SW_MIGRATION != 0 {
            return Entry::Migration(d & OA_MASK);
        }
        return Entry::None;
    }
    let bit1 = d & TABLE_OR_PAGE != 0;
    if level < 3 && bit1 {
        return Entry::Table(d & OA_MASK);
    }
    Entry::Leaf {
        pa: d & OA_MASK & !(level_size(level) - 1),
        write: d & AP_RO == 0,
    }
}

/// A leaf descriptor at `level`.
pub fn leaf(level: u8, pa: u64, write: bool) -> u64 {
    let mut d = (pa & OA_MASK) | VALID | AF;
    if level == 3 {
        d |= TABLE_OR_PAGE;
    }
    if !write {
        d |= AP_RO;
    }
    d
}

/// A migration entry for the frame at `pa`.
pub fn migration(pa: u64) -> u64 {
    (pa & OA_MASK) | SW_MIGRATION
}

/// One host page table.
pub struct HostPageTable {
    pool: &'static HostTablePool,
    root: AtomicU64,
}

impl HostPageTable {
    /// A table drawing pages from `pool`; [`init`](Self::init) allocates the
    /// root.
    pub const fn new(pool: &'static HostTablePool) -> Self {
        HostPageTable {
            pool,
            root: AtomicU64::new(0),
        }
    }

    /// Allocate the root table.
    pub fn init(&self) -> bool {
        match self.pool.alloc_table() {
            Some(pa) => {
                self.root.store(pa, Ordering::Release);
                true
            }
            None => false,
        }
    }

    /// The slot for `addr` at `level`, allocating missing tables above it if
    /// `create`. `None` if a leaf above `level` covers `addr`, or no table
    /// page is free. Callers that store into it hold the page-table lock.
    pub fn slot(&self, addr: u64, level: u8, create: bool) -> Option<&AtomicU64> {
        let mut table = self.root.load(Ordering::Acquire);
        for l in 0..level {
            let slot = &self.pool.table(table)?.0[index(addr, l)];
            table = match decode(l, slot.load(Ordering::Acquire)) {
                Entry::Table(next) => next,
                Entry::None if create => {
                    let next = self.pool.alloc_table()?;
                    slot.store(next | VALID | TABLE_OR_PAGE, Ordering::Release);
                    next
                }
                _ => return None,
            };
        }
        Some(&self.pool.table(table)?.0[index(addr, level)])
    }

    /// The leaf covering `addr`: (level, entry).
    pub fn lookup(&self, addr: u64) -> (u8, Entry) {
        let mut table = self.root.load(Ordering::Acquire);
        for level in 0..4u8 {
            let Some(t) = self.pool.table(table) else {
                return (level, Entry::None);
            };
            match decode(level, t.0[index(addr, level)].load(Ordering::Acquire)) {
                Entry::Table(next) if level < 3 => table = next,
                e => return (level, e),
            }
        }
        (3, Entry::None)
    }

    /// Report the leaves of `[start, end)` in address order without gaps,
    /// as hmm-core's `MmView::walk_leaves` wants: each table is scanned
    /// linearly, none entries cover their level's extent, spans are clipped
    /// to the range.
    pub fn walk<F>(&self, start: u64, end: u64, f: &mut F) -> ControlFlow<()>
    where
        F: FnMut(u64, u64, Leaf) -> ControlFlow<()>,
    {
        self.walk_table(self.root.load(Ordering::Acquire), 0, start, end, f)
    }

    fn walk_table<F>(
        &self,
        table: u64,
        level: u8,
        start: u64,
        end: u64,
        f: &mut F,
    ) -> ControlFlow<()>
    where
        F: FnMut(u64, u64, Leaf) -> ControlFlow<()>,
    {
        let Some(t) = self.pool.table(table) else {
            return f(start, end, Leaf::Bad);
        };
        let size = level_size(level);
        let mut a = start;
        while a < end {
            let es = a & !(size - 1);
            let b = (es + size).min(end);
            let d = t.0[index(a, level)].load(Ordering::Acquire);
            match decode(level, d) {
                Entry::None => f(a, b, Leaf::Hole)?,
                Entry::Table(next) => self.walk_table(next, level + 1, a, b, f)?,
                Entry::Migration(_) => f(a, b, Leaf::Migration)?,
                Entry::Leaf { pa, write } => {
                    let order = 9 * (3 - level);
                    let present = Present {
                        pfn: (pa + (a - es)) >> 12,
                        order,
                        write,
                        zero: level == 3 && pa == zero_page_pa(),
                        ..Present::default()
                    };
                    f(a, b, Leaf::Present(present))?
                }
            }
            a = b;
        }
        ControlFlow::Continue(())
    }

    /// Table pages in use.
    pub fn tables(&self) -> usize {
        self.pool.in_use()
    }
}
