//! Populated address spaces in backend-sim, and the snapshot walks timed over
//! them.
//!
//! [`SimRange::build`] maps a range of a [`Layout`] into a fresh simulated
//! process and populates it through the simulator's own CPU fault path, so
//! the page tables are exactly what a process that touched the memory would
//! have. [`SimRange::walk_snapshot`] runs hmm-core's pure walker over it
//! with the mmap read lock held; [`SimRange::range_fault_snapshot`] runs
//! the whole Linux-compatible entry point (`read_begin`, lock,
//! `range_fault` with no fault requested, `read_retry`), the device
//! driver's SNAPSHOT path.

use std::sync::Arc;

use backend_sim::mm::Mm;
use backend_sim::notifier::{IntervalOps, IntervalSub, InvalidateRange};
use backend_sim::ops::{HUGE_1G, HUGE_2M};
use backend_sim::task::Task;
use backend_sim::Machine;
use std::ops::ControlFlow;

use hmm_core::{
    range_fault, walk, Env, Error, IntervalNotifier, Leaf, MmView, Range, Stats, VmFlags, Vma,
    WalkCounters, WalkStop, PAGE_SIZE,
};

/// Read and write.
pub const RW: VmFlags = VmFlags::READ.union(VmFlags::WRITE);

/// What the walked range looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layout {
    /// Every page present as a 4 KiB PTE (no THP), populated in address
    /// order: neighbouring PTEs map consecutive frames, which the
    /// simulator reports as PTE runs (as the kernel batches a folio's PTEs).
    Small,
    /// Every page present as a 4 KiB PTE, populated even pages first, then
    /// odd ones: no two neighbouring PTEs map consecutive frames, so every
    /// PTE is its own leaf (the walker's per-PTE worst case).
    Scattered,
    /// Every 2 MiB present as a THP PMD leaf (`MADV_HUGEPAGE`).
    Thp,
    /// One 1 GiB hugetlb page per GiB (a PUD leaf).
    Huge1G,
    /// Mapped but never touched: no page tables below the top level.
    Holes,
    /// Populated with 4 KiB pages, then zapped (`MADV_DONTNEED`): every PTE
    /// table is present and every entry is none.
    Zapped,
    /// One 4 KiB page present in each 2 MiB (one in 512); the rest none
    /// PTEs of the same tables.
    Sparse,
}

impl Layout {
    /// Every layout, in report order.
    pub const ALL: [Layout; 7] = [
        Layout::Small,
        Layout::Scattered,
        Layout::Thp,
        Layout::Huge1G,
        Layout::Holes,
        Layout::Zapped,
        Layout::Sparse,
    ];

    /// Short name used in bench ids and the report.
    pub fn name(self) -> &'static str {
        match self {
            Layout::Small => "4k",
            Layout::Scattered => "4k-scattered",
            Layout::Thp => "thp",
            Layout::Huge1G => "1g",
            Layout::Holes => "holes",
            Layout::Zapped => "zapped",
            Layout::Sparse => "sparse",
        }
    }

    /// Pages of a `len`-byte range of this layout the snapshot reports
    /// valid.
    pub fn valid_pages(self, len: u64) -> u64 {
        match self {
            Layout::Small | Layout::Scattered | Layout::Thp | Layout::Huge1G => len / PAGE_SIZE,
            Layout::Holes | Layout::Zapped => 0,
            Layout::Sparse => len / HUGE_2M,
        }
    }

    /// Alignment (and size granule) the layout needs.
    pub fn granule(self) -> u64 {
        match self {
            Layout::Huge1G => HUGE_1G,
            _ => HUGE_2M,
        }
    }
}

/// The driver side of an interval subscription whose invalidate callback
/// only moves the sequence (a mirror without device mappings of its own).
pub struct SeqOnly;

impl IntervalOps for SeqOnly {
    fn invalidate(&self, sub: &IntervalSub, _range: &InvalidateRange, cur_seq: u64) -> bool {
        sub.set_seq(cur_seq);
        true
    }
}

/// A populated range in a simulated process, with an interval notifier
/// over it.
pub struct SimRange {
    /// The process's address space.
    pub mm: Arc<Mm>,
    /// The task on whose behalf the walks run.
    pub task: Task,
    /// First address.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// The layout built.
    pub layout: Layout,
    notifier: Arc<IntervalSub>,
}

impl Drop for SimRange {
    fn drop(&mut self) {
        self.notifier.remove();
    }
}

impl SimRange {
    /// Map `len` bytes (a multiple of [`Layout::granule`]) of `layout` on
    /// `machine` and populate it through CPU faults.
    pub fn build(machine: &Arc<Machine>, layout: Layout, len: u64) -> Result<SimRange, String> {
        if len == 0 || !len.is_multiple_of(layout.granule()) {
            return Err(format!("length {len:#x} is not a multiple of the granule"));
        }
        let mm = Mm::new(machine);
        let task = Task::new();
        let e = |what: &str, e: backend_sim::Errno| format!("{what}: {e}");
        let start = match layout {
            Layout::Huge1G => mm
                .mmap_hugetlb(None, len, RW, 18, false)
                .map_err(|x| e("mmap hugetlb", x))?,
            _ => mm.mmap_anon(None, len, RW).map_err(|x| e("mmap", x))?,
        };
        let step = |stride: u64| -> Result<(), String> {
            let mut a = start;
            while a < start + len {
                mm.touch(&task, a, PAGE_SIZE, true)
                    .map_err(|x| e("touch", x))?;
                a += stride;
            }
            Ok(())
        };
        match layout {
            Layout::Small => step(PAGE_SIZE)?,
            Layout::Scattered => {
                // Even pages first, then odd ones: neighbouring PTEs map
                // frames about len/2 apart whichever way the allocator
                // hands frames out.
                for parity in [0, 1] {
                    let mut a = start + parity * PAGE_SIZE;
                    while a < start + len {
                        mm.touch(&task, a, PAGE_SIZE, true)
                            .map_err(|x| e("touch", x))?;
                        a += 2 * PAGE_SIZE;
                    }
                }
            }
            Layout::Thp => {
                mm.madvise_hugepage(start, len)
                    .map_err(|x| e("madvise", x))?;
                step(HUGE_2M)?;
            }
            Layout::Huge1G => step(HUGE_1G)?,
            Layout::Holes => {}
            Layout::Zapped => {
                step(PAGE_SIZE)?;
                mm.madvise_dontneed(&task, start, len)
                    .map_err(|x| e("madvise", x))?;
            }
            Layout::Sparse => step(HUGE_2M)?,
        }
        let notifier = mm.notifiers().insert(start, start + len, Box::new(SeqOnly));
        Ok(SimRange {
            mm,
            task,
            start,
            len,
            layout,
            notifier,
        })
    }

    /// Number of 4 KiB pages.
    pub fn pages(&self) -> usize {
        (self.len / PAGE_SIZE) as usize
    }

    /// The interval notifier over the range.
    pub fn notifier(&self) -> &Arc<IntervalSub> {
        &self.notifier
    }

    /// hmm-core's walker over the whole range with no fault requested,
    /// under the mmap read lock: the pure walk cost.
    pub fn walk_snapshot(&self, pfns: &mut [u64]) -> Result<WalkCounters, Error> {
        let g = self.mm.read(&self.task);
        let mut range = Range::new(self.start, self.start + self.len, pfns);
        let mut counters = WalkCounters::default();
        match walk(&g, &mut range, self.start, &mut counters)? {
            WalkStop::Done => Ok(counters),
            _ => Err(Error::Fault),
        }
    }

    /// The pure walk as [`SimRange::walk_snapshot`], through a view that
    /// reports PTE runs ([`MmView::walk_leaves`]) instead of handing the
    /// walker whole PTE tables: the favourable path when neighbouring PTEs
    /// map consecutive frames, one leaf per run.
    pub fn walk_snapshot_runs(&self, pfns: &mut [u64]) -> Result<WalkCounters, Error> {
        let g = self.mm.read(&self.task);
        let view = RunsView(&g);
        let mut range = Range::new(self.start, self.start + self.len, pfns);
        let mut counters = WalkCounters::default();
        match walk(&view, &mut range, self.start, &mut counters)? {
            WalkStop::Done => Ok(counters),
            _ => Err(Error::Fault),
        }
    }

    /// The Linux-compatible entry point as a driver's SNAPSHOT calls it:
    /// `read_begin`, mmap read lock, `range_fault` with no fault
    /// requested, unlock, `read_retry` (retrying on a moved sequence).
    pub fn range_fault_snapshot(&self, pfns: &mut [u64]) -> Result<Stats, Error> {
        let h = self.mm.handle(&self.task);
        let env = Env::new(&h, &h);
        loop {
            let mut stats = Stats::default();
            let mut range = Range::new(self.start, self.start + self.len, &mut *pfns)
                .with_notifier(&*self.notifier);
            range.notifier_seq = self.notifier.read_begin();
            let g = self.mm.read(&self.task);
            let out = range_fault(&env, &mut range, g, &mut stats);
            drop(out.guard);
            match out.result {
                Err(Error::Busy) => continue,
                Err(e) => return Err(e),
                Ok(()) => {}
            }
            if self.notifier.read_retry(range.notifier_seq) {
                continue;
            }
            return Ok(stats);
        }
    }
}

/// A view that only reports leaves and PTE runs: `walk_batched` is left to
/// its default, so the walker never sees a PTE batch.
struct RunsView<'g, V>(&'g V);

impl<V: MmView> MmView for RunsView<'_, V> {
    fn find_vma(&self, addr: u64) -> Option<Vma<'_>> {
        self.0.find_vma(addr)
    }

    #[inline]
    fn walk_leaves<F>(&self, vma: &Vma<'_>, start: u64, end: u64, f: F)
    where
        F: FnMut(u64, u64, Leaf) -> ControlFlow<()>,
    {
        self.0.walk_leaves(vma, start, end, f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hmm_core::HmmPfn;

    fn check(layout: Layout) {
        let m = Machine::new();
        let len = if layout == Layout::Huge1G {
            HUGE_1G
        } else {
            8 * HUGE_2M
        };
        let r = SimRange::build(&m, layout, len).expect("build");
        let mut pfns = vec![0u64; r.pages()];
        let counters = r.walk_snapshot(&mut pfns).expect("walk");
        // The batched walk counts one leaf per PTE; the run-reporting view
        // one leaf per run of consecutive frames (a whole table for the
        // `4k` layout, one PTE for the scattered one). Both fill the same.
        let mut runs = vec![0u64; r.pages()];
        let run_counters = r.walk_snapshot_runs(&mut runs).expect("walk");
        assert_eq!(runs, pfns, "{layout:?}: batched and run walks agree");
        assert_eq!(run_counters.pages_filled, counters.pages_filled);
        match layout {
            Layout::Small | Layout::Scattered | Layout::Zapped | Layout::Sparse => {
                assert_eq!(
                    counters.leaves,
                    len / PAGE_SIZE,
                    "{layout:?}: a leaf per PTE"
                );
            }
            _ => assert_eq!(run_counters.leaves, counters.leaves, "{layout:?}"),
        }
        match layout {
            Layout::Small => assert_eq!(run_counters.leaves, len / HUGE_2M, "a run per table"),
            Layout::Scattered => assert_eq!(run_counters.leaves, len / PAGE_SIZE, "a run per PTE"),
            _ => {}
        }
        let mut pfns2 = vec![0u64; r.pages()];
        r.range_fault_snapshot(&mut pfns2).expect("range_fault");
        assert_eq!(pfns, pfns2, "{layout:?}: the two paths agree");
        let valid = pfns.iter().filter(|&&p| HmmPfn(p).is_valid()).count() as u64;
        assert_eq!(valid, layout.valid_pages(len), "{layout:?}");
        let want_order = match layout {
            Layout::Thp => 9,
            Layout::Huge1G => 18,
            _ => 0,
        };
        for &p in pfns.iter().filter(|&&p| HmmPfn(p).is_valid()) {
            assert_eq!(HmmPfn(p).order(), want_order, "{layout:?}");
            assert!(HmmPfn(p).is_writable(), "{layout:?}");
        }
        if layout == Layout::Sparse {
            for (i, &p) in pfns.iter().enumerate() {
                assert_eq!(HmmPfn(p).is_valid(), i % 512 == 0, "page {i}");
            }
        }
    }

    #[test]
    fn every_layout_snapshots_as_built() {
        for l in Layout::ALL {
            check(l);
        }
    }

    #[test]
    fn misaligned_length_is_refused() {
        let m = Machine::new();
        assert!(SimRange::build(&m, Layout::Small, PAGE_SIZE).is_err());
        assert!(SimRange::build(&m, Layout::Huge1G, HUGE_2M).is_err());
    }
}
