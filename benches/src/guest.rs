//! Guest faults of backend-hypervisor over backend-sim.
//!
//! [`SimGuest::new`] builds what the hypervisor's own host tests build: a
//! simulated VMM process whose anonymous memory backs one guest region, an
//! interval-notifier subscription over it routed to the manager's
//! invalidate path, and a [`GuestMemory`] with EPT second-stage tables. The
//! host memory is populated first (4 KiB pages or THP), so a guest fault
//! measures the 2 MiB-window path itself: hmm-core's owning range fault
//! over the window, notifier validation under the region lock, and the
//! second-stage mapping (512 4 KiB leaves, or one 2 MiB block).
//!
//! The manager borrows its notifier and pool for `'static` (the notifier
//! callback must reach the manager), so each [`SimGuest`] leaks its parts:
//! build a bounded number of them per process.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use backend_hypervisor::{
    Config, Ept, GuestFault, GuestMemory, Perm, RegionId, RegionSpec, SlicePool, TablePage,
    TlbFlush, WINDOW,
};
use backend_sim::mm::{Mm, MmHandle};
use backend_sim::notifier::{IntervalOps, IntervalSub, InvalidateRange};
use backend_sim::ops::HUGE_2M;
use backend_sim::task::{MonoClock, Task};
use backend_sim::Machine;
use hmm_core::{Env, PAGE_SIZE};

use crate::sim::RW;

/// Guest-physical base of the region.
pub const GPA: u64 = 0x1_0000_0000;

/// Counts flushes (the simulated host has no TLB).
#[derive(Default)]
pub struct CountTlb(pub AtomicU64);

impl TlbFlush for CountTlb {
    fn flush_range(&self, _: u64, _: u64) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

type SimHost = Env<'static, MmHandle<'static>, MmHandle<'static>, MmHandle<'static>, MonoClock>;
/// The manager over the simulator.
pub type SimVm = GuestMemory<
    'static,
    Ept,
    &'static SlicePool<'static>,
    &'static CountTlb,
    SimHost,
    IntervalSub,
    4,
    4,
>;

struct Ops {
    vm: &'static SimVm,
    id: Arc<OnceLock<RegionId>>,
}

impl IntervalOps for Ops {
    fn invalidate(&self, sub: &IntervalSub, range: &InvalidateRange, cur_seq: u64) -> bool {
        match self.id.get() {
            Some(&id) => self
                .vm
                .invalidate(id, range.start, range.end, range.blockable, || {
                    sub.set_seq(cur_seq)
                }),
            None => {
                sub.set_seq(cur_seq);
                true
            }
        }
    }
}

fn leak<T>(v: T) -> &'static T {
    Box::leak(Box::new(v))
}

/// A guest whose one region is backed by populated simulated host memory.
pub struct SimGuest {
    /// The manager.
    pub vm: &'static SimVm,
    /// The host process.
    pub mm: &'static Arc<Mm>,
    /// Region size in bytes.
    pub len: u64,
}

impl SimGuest {
    /// A guest of `len` bytes (a multiple of 2 MiB) backed by host memory
    /// populated with 4 KiB pages, or THP if `thp`.
    pub fn new(len: u64, thp: bool) -> Result<SimGuest, String> {
        if len == 0 || !len.is_multiple_of(HUGE_2M) {
            return Err("length must be a multiple of 2 MiB".into());
        }
        let machine = Machine::new();
        let mm: &'static Arc<Mm> = leak(Mm::new(&machine));
        let task: &'static Task = leak(Task::new());
        let hva = mm
            .mmap_anon(None, len, RW)
            .map_err(|e| format!("mmap: {e}"))?;
        let stride = if thp {
            mm.madvise_hugepage(hva, len)
                .map_err(|e| format!("madvise: {e}"))?;
            HUGE_2M
        } else {
            PAGE_SIZE
        };
        let mut a = hva;
        while a < hva + len {
            mm.touch(task, a, PAGE_SIZE, true)
                .map_err(|e| format!("touch: {e}"))?;
            a += stride;
        }
        let handle: &'static MmHandle<'static> = leak(mm.handle(task));
        let clock: &'static MonoClock = leak(MonoClock::new());
        let host = Env::new(handle, handle)
            .with_signals(handle)
            .with_clock(clock);
        // 4 KiB leaves need one table page per 2 MiB, plus the upper levels.
        let pool_pages = (len / HUGE_2M) as usize + 64;
        let pages: &'static [TablePage] = Box::leak(
            (0..pool_pages)
                .map(|_| TablePage::ZERO)
                .collect::<Vec<_>>()
                .into_boxed_slice(),
        );
        let used: &'static [AtomicBool] = Box::leak(
            (0..pool_pages)
                .map(|_| AtomicBool::new(false))
                .collect::<Vec<_>>()
                .into_boxed_slice(),
        );
        let pool: &'static SlicePool<'static> = leak(SlicePool::new(pages, used, 0));
        let tlb: &'static CountTlb = leak(CountTlb::default());
        let vm: &'static SimVm = leak(
            GuestMemory::new(host, pool, tlb, Config::default())
                .map_err(|e| format!("guest memory: {e:?}"))?,
        );
        let cell = Arc::new(OnceLock::new());
        let sub = mm.notifiers().insert(
            hva,
            hva + len,
            Box::new(Ops {
                vm,
                id: cell.clone(),
            }),
        );
        let sub: &'static IntervalSub = leak(sub).as_ref();
        let spec = RegionSpec {
            gpa: GPA,
            size: len,
            hva,
            perm: Perm::R | Perm::W,
        };
        let id = vm
            .add_region(spec, sub)
            .map_err(|e| format!("add_region: {e:?}"))?;
        let _ = cell.set(id);
        Ok(SimGuest { vm, mm, len })
    }

    /// Number of 2 MiB windows.
    pub fn windows(&self) -> u64 {
        self.len / WINDOW
    }

    /// Guest read fault in window `i` (at its first page); the number of
    /// leaves it installed.
    pub fn fault_window(&self, i: u64) -> Result<u32, String> {
        let gpa = GPA + i * WINDOW;
        for _ in 0..1000 {
            match self.vm.handle_fault(gpa, Perm::R) {
                GuestFault::Mapped { leaves, .. } => return Ok(leaves),
                GuestFault::Retry => continue,
                other => return Err(format!("guest fault at {gpa:#x}: {other:?}")),
            }
        }
        Err(format!("guest fault at {gpa:#x} kept retrying"))
    }

    /// Unmap the whole region from the second-stage table (the host is
    /// untouched), so the next faults map it again.
    pub fn zap(&self) {
        let _ = self.vm.zap(GPA, GPA + self.len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backend_hypervisor::PageSize;

    #[test]
    fn window_faults_map_what_the_host_maps() {
        for thp in [false, true] {
            let g = SimGuest::new(4 << 20, thp).expect("guest");
            for i in 0..g.windows() {
                let leaves = g.fault_window(i).expect("fault");
                assert_eq!(leaves, if thp { 1 } else { 512 });
            }
            let m = g.vm.translate(GPA + 0x3000).expect("mapped");
            let size = if thp {
                PageSize::Size2M
            } else {
                PageSize::Size4K
            };
            assert_eq!(m.size, size);
            g.vm.audit().expect("second stage agrees with the host");
            g.zap();
            assert!(g.vm.translate(GPA + 0x3000).is_none());
            assert_eq!(g.fault_window(0).expect("again"), if thp { 1 } else { 512 });
        }
    }
}
