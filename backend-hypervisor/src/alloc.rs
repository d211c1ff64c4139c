//! Table-page allocation: the [`TableAlloc`] trait the page-table engine
//! draws 4 KiB table pages from, and [`StaticPool`], an allocation-free pool
//! for firmware (and tests).
//!
//! A table page is seen by the engine as 512 [`AtomicU64`] descriptors, so
//! every descriptor update is a single-copy-atomic 64-bit store, as the
//! hardware walker requires, and the engine needs no `unsafe` of its own.
//! What the engine cannot check is that the physical address it writes into
//! a table descriptor really is the page it was given: that is the
//! allocator's promise, which is why [`TableAlloc`] is an `unsafe trait`.
//!
//! An Arm stage 2 whose start level concatenates tables needs its root as
//! up to 16 physically contiguous pages aligned to their total size
//! ([`TableAlloc::alloc_tables`]); both pools provide that.

use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use super::descriptor::{ENTRIES, TABLE_SIZE};

/// One table page: 512 descriptors, 4 KiB aligned.
#[repr(C, align(4096))]
#[derive(Debug)]
pub struct TablePage(pub [AtomicU64; ENTRIES]);

const _: () = assert!(core::mem::size_of::<TablePage>() == TABLE_SIZE as usize);
const _: () = assert!(core::mem::align_of::<TablePage>() == TABLE_SIZE as usize);

impl TablePage {
    /// A zeroed page (every descriptor invalid in both formats).
    #[allow(clippy::declare_interior_mutable_const)]
    pub const ZERO: TablePage = {
        #[allow(clippy::declare_interior_mutable_const)]
        const Z: AtomicU64 = AtomicU64::new(0);
        TablePage([Z; ENTRIES])
    };

    /// Set every descriptor to 0.
    pub fn zero(&self) {
        for d in &self.0 {
            d.store(0, Ordering::Relaxed);
        }
    }
}

/// A source of 4 KiB second-stage table pages.
///
/// # Safety
///
/// Implementations promise, for every `pa` returned by
/// [`alloc_table`](TableAlloc::alloc_table) and not yet passed to
/// [`free_table`](TableAlloc::free_table):
///
/// * `pa` is 4 KiB aligned and is the physical address at which the
///   hardware page-table walker finds exactly the memory that
///   [`table`](TableAlloc::table)`(pa)` returns;
/// * that page is zeroed when handed out and used by nothing but the page
///   table it was handed to until it is freed;
/// * `pa` fits the formats' output-address fields (below 2^48).
///
/// The same holds for every page of a run returned by
/// [`alloc_tables`](TableAlloc::alloc_tables): page `k` of the run is at
/// `pa + k * 4096`, is its own table page for
/// [`table`](TableAlloc::table) and is given back on its own with
/// [`free_table`](TableAlloc::free_table).
///
/// Breaking this lets a guest's second-stage walk reach memory it must not.
pub unsafe trait TableAlloc {
    /// A zeroed table page, by physical address, or `None` when exhausted.
    fn alloc_table(&self) -> Option<u64>;

    /// `n` zeroed table pages at consecutive physical addresses, the first
    /// aligned to `n * 4096` (`n` a power of two up to 16), or `None`. The
    /// default serves `n == 1` only.
    fn alloc_tables(&self, n: usize) -> Option<u64> {
        if n == 1 {
            self.alloc_table()
        } else {
            None
        }
    }

    /// Give back a page obtained from `alloc_table`. The engine calls this
    /// only after the TLB flush that removed every hardware reference to it.
    fn free_table(&self, pa: u64);

    /// The memory of the table page at `pa`, or `None` if `pa` is not a
    /// page of this allocator.
    fn table(&self, pa: u64) -> Option<&TablePage>;
}

/// The bookkeeping shared by [`StaticPool`] and [`SlicePool`].
#[derive(Debug)]
struct PoolState {
    hint: AtomicUsize,
    in_use: AtomicUsize,
    phys_offset: u64,
}

impl PoolState {
    const fn new(phys_offset: u64) -> Self {
        PoolState {
            hint: AtomicUsize::new(0),
            in_use: AtomicUsize::new(0),
            phys_offset,
        }
    }

    fn base(&self, pages: &[TablePage]) -> u64 {
        (pages.as_ptr() as u64).wrapping_sub(self.phys_offset)
    }

    fn index(&self, pages: &[TablePage], pa: u64) -> Option<usize> {
        let off = pa.checked_sub(self.base(pages))?;
        if off % TABLE_SIZE != 0 {
            return None;
        }
        let i = usize::try_from(off / TABLE_SIZE).ok()?;
        (i < pages.len()).then_some(i)
    }

    fn alloc(&self, pages: &[TablePage], used: &[AtomicBool]) -> Option<u64> {
        let n = pages.len().min(used.len());
        if n == 0 {
            return None;
        }
        let start = self.hint.load(Ordering::Relaxed) % n;
        for k in 0..n {
            let i = (start + k) % n;
            if used[i]
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                self.hint.store(i + 1, Ordering::Relaxed);
                self.in_use.fetch_add(1, Ordering::Relaxed);
                pages[i].zero();
                return Some(self.base(pages) + i as u64 * TABLE_SIZE);
            }
        }
        None
    }

    /// `n` free pages at an index whose physical address is aligned to
    /// `n` pages, claimed together (a page lost to a racing allocation
    /// releases the ones already claimed and moves on).
    fn alloc_run(&self, pages: &[TablePage], used: &[AtomicBool], n: usize) -> Option<u64> {
        if n == 1 {
            return self.alloc(pages, used);
        }
        let total = pages.len().min(used.len());
        if !n.is_power_of_two() || n > total {
            return None;
        }
        let align = n as u64 * TABLE_SIZE;
        let base = self.base(pages);
        let mut i = 0;
        while i + n <= total {
            let pa = base + i as u64 * TABLE_SIZE;
            if !pa.is_multiple_of(align) {
                i += 1;
                continue;
            }
            let mut claimed = 0;
            while claimed < n
                && used[i + claimed]
                    .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                claimed += 1;
            }
            if claimed == n {
                self.in_use.fetch_add(n, Ordering::Relaxed);
                for p in &pages[i..i + n] {
                    p.zero();
                }
                return Some(pa);
            }
            for flag in &used[i..i + claimed] {
                flag.store(false, Ordering::Release);
            }
            i += claimed + 1;
        }
        None
    }

    fn free(&self, pages: &[TablePage], used: &[AtomicBool], pa: u64) {
        let Some(flag) = self.index(pages, pa).and_then(|i| used.get(i)) else {
            debug_assert!(false, "freeing {pa:#x}, not a page of this pool");
            return;
        };
        if flag.swap(false, Ordering::Release) {
            self.in_use.fetch_sub(1, Ordering::Relaxed);
        } else {
            debug_assert!(false, "double free of table page {pa:#x}");
        }
    }
}

/// A fixed pool of `N` table pages with no allocation, usable as a
/// `static`. Physical addresses are the pages' addresses minus a fixed
/// offset (0 for identity-mapped firmware).
#[derive(Debug)]
pub struct StaticPool<const N: usize> {
    pages: [TablePage; N],
    used: [AtomicBool; N],
    state: PoolState,
}

impl<const N: usize> Default for StaticPool<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> StaticPool<N> {
    /// A pool whose physical addresses equal its virtual addresses.
    pub const fn new() -> Self {
        Self::with_phys_offset(0)
    }

    /// A pool in memory mapped at `virtual = physical + phys_offset`.
    pub const fn with_phys_offset(phys_offset: u64) -> Self {
        #[allow(clippy::declare_interior_mutable_const)]
        const F: AtomicBool = AtomicBool::new(false);
        StaticPool {
            pages: [TablePage::ZERO; N],
            used: [F; N],
            state: PoolState::new(phys_offset),
        }
    }

    /// Pages currently handed out.
    pub fn in_use(&self) -> usize {
        self.state.in_use.load(Ordering::Relaxed)
    }

    /// Capacity in pages.
    pub const fn capacity(&self) -> usize {
        N
    }
}

// SAFETY: every page is a 4 KiB-aligned field of the pool, used only by the
// holder of its `used` flag; the physical address handed out is the page's
// address minus the offset the pool was built with (the caller's mapping
// promise); pages are zeroed before being handed out.
unsafe impl<const N: usize> TableAlloc for StaticPool<N> {
    fn alloc_table(&self) -> Option<u64> {
        self.state.alloc(&self.pages, &self.used)
    }
    fn alloc_tables(&self, n: usize) -> Option<u64> {
        self.state.alloc_run(&self.pages, &self.used, n)
    }
    fn free_table(&self, pa: u64) {
        self.state.free(&self.pages, &self.used, pa)
    }
    fn table(&self, pa: u64) -> Option<&TablePage> {
        self.state.index(&self.pages, pa).map(|i| &self.pages[i])
    }
}

/// A pool over table pages and flags the caller provides (a large pool
/// built on the heap of a host, or memory firmware carved out at boot).
/// Physical addresses are the pages' addresses minus a fixed offset.
#[derive(Debug)]
pub struct SlicePool<'a> {
    pages: &'a [TablePage],
    used: &'a [AtomicBool],
    state: PoolState,
}

impl<'a> SlicePool<'a> {
    /// A pool of `pages`, with one `used` flag per page (all false; extra
    /// pages or flags are ignored), at `virtual = physical + phys_offset`.
    pub fn new(pages: &'a [TablePage], used: &'a [AtomicBool], phys_offset: u64) -> Self {
        let n = pages.len().min(used.len());
        SlicePool {
            pages: &pages[..n],
            used: &used[..n],
            state: PoolState::new(phys_offset),
        }
    }

    /// Pages currently handed out.
    pub fn in_use(&self) -> usize {
        self.state.in_use.load(Ordering::Relaxed)
    }

    /// Capacity in pages.
    pub fn capacity(&self) -> usize {
        self.pages.len()
    }
}

// SAFETY: as for `StaticPool`: the pages are borrowed for the pool's whole
// life, handed out exclusively by their `used` flags, zeroed on allocation,
// and their physical address is their address minus the caller's offset.
unsafe impl TableAlloc for SlicePool<'_> {
    fn alloc_table(&self) -> Option<u64> {
        self.state.alloc(self.pages, self.used)
    }
    fn alloc_tables(&self, n: usize) -> Option<u64> {
        self.state.alloc_run(self.pages, self.used, n)
    }
    fn free_table(&self, pa: u64) {
        self.state.free(self.pages, self.used, pa)
    }
    fn table(&self, pa: u64) -> Option<&TablePage> {
        self.state.index(self.pages, pa).map(|i| &self.pages[i])
    }
}

// SAFETY: forwards to `A`, which upholds the contract.
unsafe impl<A: TableAlloc + ?Sized> TableAlloc for &A {
    fn alloc_table(&self) -> Option<u64> {
        (**self).alloc_table()
    }
    fn alloc_tables(&self, n: usize) -> Option<u64> {
        (**self).alloc_tables(n)
    }
    fn free_table(&self, pa: u64) {
        (**self).free_table(pa)
    }
    fn table(&self, pa: u64) -> Option<&TablePage> {
        (**self).table(pa)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::boxed::Box;

    #[test]
    fn pool_hands_out_distinct_zeroed_aligned_pages() {
        let pool: Box<StaticPool<4>> = Box::default();
        let a = pool.alloc_table().unwrap();
        let b = pool.alloc_table().unwrap();
        assert_ne!(a, b);
        assert_eq!(a % 4096, 0);
        pool.table(a).unwrap().0[5].store(77, Ordering::Relaxed);
        pool.free_table(a);
        let c = pool.alloc_table().unwrap();
        let d = pool.alloc_table().unwrap();
        let e = pool.alloc_table().unwrap();
        assert!(pool.alloc_table().is_none());
        assert_eq!(pool.in_use(), 4);
        for p in [b, c, d, e] {
            assert!(pool
                .table(p)
                .unwrap()
                .0
                .iter()
                .all(|x| x.load(Ordering::Relaxed) == 0));
        }
        assert!(pool.table(a + 8).is_none());
        assert!(pool.table(0).is_none());
    }

    #[test]
    fn slice_pool_over_heap_pages() {
        use std::vec::Vec;
        let pages: Vec<TablePage> = (0..3).map(|_| TablePage::ZERO).collect();
        let used: Vec<AtomicBool> = (0..3).map(|_| AtomicBool::new(false)).collect();
        let pool = SlicePool::new(&pages, &used, 0);
        let got: Vec<u64> = (0..3).map(|_| pool.alloc_table().unwrap()).collect();
        assert!(pool.alloc_table().is_none());
        assert_eq!(pool.in_use(), 3);
        for (k, pa) in got.iter().enumerate() {
            assert_eq!(*pa % 4096, 0);
            assert!(core::ptr::eq(pool.table(*pa).unwrap(), &pages[k]));
        }
        pool.free_table(got[1]);
        assert_eq!(pool.alloc_table(), Some(got[1]));
    }

    #[test]
    fn contiguous_runs_are_aligned_zeroed_and_freed_page_by_page() {
        let pool: Box<StaticPool<16>> = Box::default();
        // Dirty every page, then free them all.
        let all: std::vec::Vec<u64> = (0..16).map(|_| pool.alloc_table().unwrap()).collect();
        for &pa in &all {
            pool.table(pa).unwrap().0[7].store(9, Ordering::Relaxed);
            pool.free_table(pa);
        }
        // One page taken at index 1 breaks the first 2-page run.
        let lone = pool.alloc_table().unwrap();
        let two = pool.alloc_tables(2).unwrap();
        assert_eq!(two % 8192, 0);
        let eight = pool.alloc_tables(8).unwrap();
        assert_eq!(eight % (8 * 4096), 0);
        assert_eq!(pool.in_use(), 11);
        for k in 0..8 {
            let t = pool.table(eight + k * 4096).unwrap();
            assert!(t.0.iter().all(|d| d.load(Ordering::Relaxed) == 0));
            assert!(eight + k * 4096 != lone && !(two..two + 8192).contains(&(eight + k * 4096)));
        }
        // 16 contiguous pages are no longer free.
        assert_eq!(pool.alloc_tables(16), None);
        assert_eq!(pool.alloc_tables(3), None, "not a power of two");
        for k in 0..8 {
            pool.free_table(eight + k * 4096);
        }
        assert_eq!(pool.in_use(), 3);
        assert_eq!(pool.alloc_tables(8), Some(eight));
    }

    #[test]
    fn phys_offset_is_applied() {
        let pool: Box<StaticPool<1>> = Box::new(StaticPool::with_phys_offset(0x1000));
        let pa = pool.alloc_table().unwrap();
        let va = pool.table(pa).unwrap() as *const TablePage as u64;
        assert_eq!(va - pa, 0x1000);
    }
}
