//! A guest over backend-sim: the simulated process is the VMM, its address
//! space backs guest memory, and each region's interval-notifier
//! subscription routes invalidations to the manager.

#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use backend_hypervisor::*;
use backend_sim::mm::{Mm, MmHandle};
use backend_sim::notifier::{IntervalOps, IntervalSub, InvalidateRange};
use backend_sim::task::{MonoClock, Task};
use backend_sim::Machine;
use hmm_core::{Env, PAGE_SIZE};

pub const M2: u64 = 2 << 20;
pub const G1: u64 = 1 << 30;

/// Table pages available to one guest.
pub const POOL_PAGES: usize = 2048;

/// Counts flushes (the host has no real TLB to flush).
#[derive(Default)]
pub struct CountTlb(pub AtomicU64);
impl TlbFlush for CountTlb {
    fn flush_range(&self, _: u64, _: u64) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

pub type SimHost = Env<'static, MmHandle<'static>, MmHandle<'static>, MmHandle<'static>, MonoClock>;
pub type SimVm<F> = GuestMemory<
    'static,
    F,
    &'static SlicePool<'static>,
    &'static CountTlb,
    SimHost,
    IntervalSub,
    8,
    8,
>;

/// One VM whose guest memory is backed by a simulated process.
pub struct Guest<F: Format + 'static> {
    pub machine: Arc<Machine>,
    pub mm: &'static Arc<Mm>,
    pub task: &'static Task,
    pub vm: &'static SimVm<F>,
    pub pool: &'static SlicePool<'static>,
    pub tlb: &'static CountTlb,
}

fn leak<T>(v: T) -> &'static T {
    Box::leak(Box::new(v))
}

/// The region's notifier callback: the manager's invalidate path.
struct Ops<F: Format + 'static> {
    vm: &'static SimVm<F>,
    id: Arc<OnceLock<RegionId>>,
}

impl<F: Format + Send + Sync + 'static> IntervalOps for Ops<F> {
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

impl<F: Format + Send + Sync + 'static> Guest<F> {
    /// A new process and a VM over it (leaked for the test's lifetime:
    /// the manager borrows the notifier subscriptions for `'static`).
    pub fn new() -> Self {
        Self::with_pool(POOL_PAGES)
    }

    /// A new process and a VM whose table pool has `pool_pages` pages.
    pub fn with_pool(pool_pages: usize) -> Self {
        let machine = Machine::new();
        let mm: &'static Arc<Mm> = leak(Mm::new(&machine));
        let task: &'static Task = leak(Task::new());
        let handle: &'static MmHandle<'static> = leak(mm.handle(task));
        let clock: &'static MonoClock = leak(MonoClock::new());
        let host = Env::new(handle, handle)
            .with_signals(handle)
            .with_clock(clock);
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
        let vm: &'static SimVm<F> =
            leak(GuestMemory::new(host, pool, tlb, Config::default()).unwrap());
        Guest {
            machine,
            mm,
            task,
            vm,
            pool,
            tlb,
        }
    }

    /// Back guest `[gpa, gpa + size)` with host `[hva, hva + size)`:
    /// subscribe an interval notifier over the host range and add the
    /// region.
    pub fn add_region(&self, gpa: u64, size: u64, hva: u64, perm: Perm) -> RegionId {
        let cell = Arc::new(OnceLock::new());
        let ops = Ops::<F> {
            vm: self.vm,
            id: cell.clone(),
        };
        let sub = self.mm.notifiers().insert(hva, hva + size, Box::new(ops));
        let sub: &'static IntervalSub = leak(sub).as_ref();
        let id = self
            .vm
            .add_region(
                RegionSpec {
                    gpa,
                    size,
                    hva,
                    perm,
                },
                sub,
            )
            .unwrap();
        cell.set(id).unwrap();
        id
    }

    /// What the guest reads at `gpa` through its second-stage mapping
    /// (`None` if unmapped).
    pub fn guest_read(&self, gpa: u64, buf: &mut [u8]) -> Option<()> {
        let m = self.vm.translate(gpa)?;
        let pa = m.pa_of(gpa);
        assert!(buf.len() as u64 <= PAGE_SIZE - (gpa % PAGE_SIZE));
        self.machine
            .frames
            .read(pa / PAGE_SIZE, (pa % PAGE_SIZE) as usize, buf);
        Some(())
    }

    /// The guest's write through its mapping; `false` if not mapped
    /// writable.
    pub fn guest_write(&self, gpa: u64, buf: &[u8]) -> bool {
        let Some(m) = self.vm.translate(gpa) else {
            return false;
        };
        if !m.attrs.perm.contains(Perm::W) {
            return false;
        }
        let pa = m.pa_of(gpa);
        self.machine
            .frames
            .write(pa / PAGE_SIZE, (pa % PAGE_SIZE) as usize, buf);
        true
    }

    /// Fault until mapped (or an error); panics on a livelock.
    pub fn fault_in(&self, gpa: u64, access: Perm) -> GuestFault {
        for _ in 0..1000 {
            match self.vm.handle_fault(gpa, access) {
                GuestFault::Retry => continue,
                out => return out,
            }
        }
        panic!("fault at {gpa:#x} kept retrying");
    }

    /// Second-stage tables agree with the host page tables, and every
    /// mapped guest page reads what the host reads at its address.
    pub fn check_coherent(&self, region_gpa: u64, region_hva: u64, pages: u64) {
        if let Err(d) = self.vm.audit() {
            panic!("stage-2 disagrees with the host: {d:?}");
        }
        let mut g = [0u8; 64];
        let mut h = [0u8; 64];
        for i in 0..pages {
            let gpa = region_gpa + i * PAGE_SIZE;
            if self.guest_read(gpa, &mut g).is_some() {
                self.mm
                    .read_bytes(self.task, region_hva + i * PAGE_SIZE, &mut h)
                    .unwrap();
                assert_eq!(g, h, "guest and host disagree at gpa {gpa:#x}");
            }
        }
    }
}

/// A page whose bytes identify `addr`.
pub fn page_for(addr: u64) -> Vec<u8> {
    (0..PAGE_SIZE)
        .map(|i| ((addr >> 12) as u8) ^ (i as u8).wrapping_mul(31))
        .collect()
}

pub fn leaves<F: Format + Send + Sync + 'static>(g: &Guest<F>) -> Vec<Mapping> {
    let mut v = Vec::new();
    g.vm.for_each_mapping(|m| v.push(m));
    v
}
