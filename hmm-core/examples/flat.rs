//! A minimal backend: one VMA over a flat array of page-table entries.
//!
//! What a backend implements: [`MmapLock`] (read guards), [`MmView`] on the
//! guard (VMA lookup, the leaf reader), a [`FaultHandler`] and an
//! [`IntervalNotifier`]. Single-threaded, so the "lock" is a counter.
//!
//! `cargo run -p hmm-core --example flat`

use core::cell::Cell;
use core::ops::ControlFlow;

use hmm_core::*;

const BASE: u64 = 0x10_0000;
const PAGES: usize = 8;

/// The address space: a PFN (or nothing) per page, a reader count, a sequence.
struct FlatMm {
    ptes: [Cell<Option<u64>>; PAGES],
    readers: Cell<u32>,
    seq: Cell<u64>,
}

/// A held read lock; dropping it releases the lock.
struct Guard<'a>(&'a FlatMm);

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        self.0.readers.set(self.0.readers.get() - 1);
    }
}

impl MmapLock for FlatMm {
    type Guard<'a> = Guard<'a>;
    fn read(&self) -> Guard<'_> {
        self.readers.set(self.readers.get() + 1);
        Guard(self)
    }
    fn read_killable(&self) -> Result<Guard<'_>, Error> {
        Ok(self.read())
    }
}

impl MmView for Guard<'_> {
    fn find_vma(&self, addr: u64) -> Option<Vma<'_>> {
        let end = BASE + PAGES as u64 * PAGE_SIZE;
        (addr < end).then(|| Vma::new(BASE, end, VmFlags::READ | VmFlags::WRITE, 0))
    }
    fn walk_leaves<F>(&self, _vma: &Vma<'_>, start: u64, end: u64, mut f: F)
    where
        F: FnMut(u64, u64, Leaf) -> ControlFlow<()>,
    {
        for addr in (start..end).step_by(PAGE_SIZE as usize) {
            let leaf = match self.0.ptes[((addr - BASE) / PAGE_SIZE) as usize].get() {
                Some(pfn) => Leaf::Present(Present {
                    pfn,
                    write: true,
                    ..Present::default()
                }),
                None => Leaf::EmptyPtes,
            };
            if f(addr, addr + PAGE_SIZE, leaf).is_break() {
                return;
            }
        }
    }
}

impl FaultHandler<FlatMm> for FlatMm {
    fn fault<'a>(&self, g: Guard<'a>, addr: u64, _: FaultFlags) -> FaultOutcome<Guard<'a>>
    where
        FlatMm: 'a,
    {
        let i = ((addr - BASE) / PAGE_SIZE) as usize;
        self.ptes[i].set(Some(0x8000 + i as u64)); // "allocate" a frame
        FaultOutcome::Done(g)
    }
    fn migration_wait(&self, _: &Guard<'_>, _: u64) {}
}

impl IntervalNotifier for FlatMm {
    fn read_begin(&self) -> u64 {
        self.seq.get()
    }
    fn check_retry(&self, seq: u64) -> bool {
        self.seq.get() != seq
    }
}

fn main() -> Result<(), Error> {
    let mm = FlatMm {
        ptes: Default::default(),
        readers: Cell::new(0),
        seq: Cell::new(0),
    };
    mm.ptes[2].set(Some(0x4242)); // one page already mapped
    let mut pfns = [0u64; PAGES];
    let end = BASE + PAGES as u64 * PAGE_SIZE;
    let req = (PfnFlags::REQ_FAULT | PfnFlags::REQ_WRITE).bits();
    let mut range = Range::new(BASE, end, &mut pfns)
        .with_default_flags(req)
        .with_notifier(&mm);
    let mut stats = Stats::default();
    range_fault_owning_lock(
        &Env::new(&mm, &mm),
        &mut range,
        &Options::default(),
        &mut stats,
    )?;
    assert!(!mm.read_retry(range.notifier_seq) && mm.readers.get() == 0);
    for (i, &w) in pfns.iter().enumerate() {
        println!(
            "page {i}: pfn {:#x} writable {}",
            HmmPfn(w).pfn(),
            HmmPfn(w).is_writable()
        );
    }
    println!("{} faults, {} walks", stats.faults, stats.walks);
    Ok(())
}
