//! Fault-in of a fresh anonymous range through hmm-core, in the simulator.
//!
//! [`FreshRange::map`] maps an untouched anonymous range (4 KiB pages, or
//! THP-eligible with `MADV_HUGEPAGE`); [`FreshRange::fault_in`] requests
//! every page present (and writable for a write fault) with Linux's
//! `hmm_range_fault` semantics ([`hmm_core::range_fault`]): the walker stops
//! at each hole and the simulator's `handle_mm_fault` fills it, with the
//! mmap read lock held throughout. Dropping the range unmaps it.

use std::sync::Arc;

use backend_sim::mm::Mm;
use backend_sim::task::Task;
use backend_sim::Machine;
use hmm_core::{
    range_fault, Env, Error, HmmPfn, IntervalNotifier, PfnFlags, Range, Stats, PAGE_SIZE,
};

use crate::sim::RW;

/// An untouched anonymous range in a simulated process.
pub struct FreshRange {
    /// The process.
    pub mm: Arc<Mm>,
    /// Its task.
    pub task: Task,
    /// First address.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

impl FreshRange {
    /// Map `len` bytes (a multiple of 2 MiB); THP-eligible if `thp`.
    pub fn map(machine: &Arc<Machine>, len: u64, thp: bool) -> Result<FreshRange, String> {
        let mm = Mm::new(machine);
        let start = mm
            .mmap_anon(None, len, RW)
            .map_err(|e| format!("mmap: {e}"))?;
        if thp {
            mm.madvise_hugepage(start, len)
                .map_err(|e| format!("madvise: {e}"))?;
        }
        Ok(FreshRange {
            mm,
            task: Task::new(),
            start,
            len,
        })
    }

    /// Number of pages.
    pub fn pages(&self) -> usize {
        (self.len / PAGE_SIZE) as usize
    }

    /// Fault every page in (writable if `write`) with `range_fault`, the
    /// output in `pfns`; checks every entry came back valid (and writable
    /// for a write fault).
    pub fn fault_in(&self, write: bool, pfns: &mut [u64]) -> Result<Stats, Error> {
        let h = self.mm.handle(&self.task);
        let notifier = self.mm.notifiers().insert(
            self.start,
            self.start + self.len,
            Box::new(crate::sim::SeqOnly),
        );
        let env = Env::new(&h, &h);
        let mut flags = PfnFlags::REQ_FAULT;
        if write {
            flags |= PfnFlags::REQ_WRITE;
        }
        let mut stats = Stats::default();
        let mut range = Range::new(self.start, self.start + self.len, pfns)
            .with_default_flags(flags.bits())
            .with_notifier(&*notifier);
        range.notifier_seq = notifier.read_begin();
        let g = self.mm.read(&self.task);
        let out = range_fault(&env, &mut range, g, &mut stats);
        drop(out.guard);
        // Nothing else touches this mm, so the sequence cannot move.
        let moved = notifier.read_retry(range.notifier_seq);
        notifier.remove();
        out.result?;
        if moved {
            return Err(Error::Busy);
        }
        let ok = range
            .pfns
            .iter()
            .all(|&p| HmmPfn(p).is_valid() && (!write || HmmPfn(p).is_writable()));
        if !ok {
            return Err(Error::Fault);
        }
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_and_write_fault_in_map_every_page() {
        let m = Machine::new();
        for thp in [false, true] {
            for write in [false, true] {
                let r = FreshRange::map(&m, 2 << 21, thp).expect("map");
                let mut pfns = vec![0u64; r.pages()];
                let s = r.fault_in(write, &mut pfns).expect("fault-in");
                // One handler call per leaf: per 2 MiB with THP, per page
                // without.
                let leaves = if thp { r.pages() / 512 } else { r.pages() };
                assert_eq!(s.faults, leaves as u64, "thp {thp} write {write}");
                let order = HmmPfn(pfns[0]).order();
                assert_eq!(order, if thp { 9 } else { 0 }, "thp {thp} write {write}");
                if !thp && !write {
                    // A read fault of fresh anonymous memory maps the zero page.
                    assert!(pfns.iter().all(|&p| !HmmPfn(p).is_writable()));
                }
            }
        }
    }
}
