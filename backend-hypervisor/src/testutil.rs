//! Shared helpers of the unit tests: a manager over hmm-core's `TestMm`.

extern crate std;

use core::cell::Cell;
use std::boxed::Box;
use std::vec::Vec;

use hmm_core::doubles::TestMm;
use hmm_core::IntervalNotifier;

use crate::{Config, GuestMemory, Mapping, PageSize, StaticPool, TlbFlush};
use hmm_core::Env;

pub const M2: u64 = 2 << 20;
pub const G1: u64 = 1 << 30;

/// A TLB hook that counts range flushes (`.0`) and logs upgrade flushes
/// and publications apart.
#[derive(Default)]
pub struct CountTlb(
    pub Cell<u32>,
    pub std::cell::RefCell<Vec<(u64, PageSize)>>,
    pub Cell<u32>,
);
impl CountTlb {
    /// Upgrade flushes so far.
    pub fn upgrades(&self) -> Vec<(u64, PageSize)> {
        self.1.borrow().clone()
    }
    /// Publications so far.
    pub fn publishes(&self) -> u32 {
        self.2.get()
    }
}
impl TlbFlush for CountTlb {
    fn flush_range(&self, _: u64, _: u64) {
        self.0.set(self.0.get() + 1);
    }
    fn flush_upgrade(&self, gpa: u64, size: PageSize) {
        self.1.borrow_mut().push((gpa, size));
    }
    fn publish(&self) {
        self.2.set(self.2.get() + 1);
    }
}

/// A notifier over a `TestMm` whose final `read_retry` can be made to fail
/// once (an invalidation racing between the range fault and the map).
pub struct Flaky<'a> {
    pub mm: &'a TestMm,
    pub fail_next: Cell<bool>,
}
impl IntervalNotifier for Flaky<'_> {
    fn read_begin(&self) -> u64 {
        self.mm.read_begin()
    }
    fn check_retry(&self, seq: u64) -> bool {
        self.mm.check_retry(seq)
    }
    fn read_retry(&self, seq: u64) -> bool {
        self.fail_next.replace(false) || self.mm.check_retry(seq)
    }
}

pub type Pool = StaticPool<64>;
pub type Vm<'h, F, N> =
    GuestMemory<'h, F, &'h Pool, &'h CountTlb, Env<'h, TestMm, TestMm, TestMm, TestMm>, N, 4, 2>;

pub fn pool() -> Box<Pool> {
    Box::default()
}

pub fn vm<'h, F: crate::Format, N: IntervalNotifier + ?Sized>(
    mm: &'h TestMm,
    pool: &'h Pool,
    tlb: &'h CountTlb,
    config: Config,
) -> Vm<'h, F, N> {
    let host = Env::new(mm, mm).with_signals(mm).with_clock(mm);
    GuestMemory::new(host, pool, tlb, config).unwrap()
}

pub fn leaves<F: crate::Format, N: IntervalNotifier + ?Sized>(vm: &Vm<'_, F, N>) -> Vec<Mapping> {
    let mut v = Vec::new();
    vm.for_each_mapping(|m| v.push(m));
    v
}
