//! Fault injection: allocation failures, a bounded userfaultfd wait (a
//! handler that is dead or never answers) and refused non-blockable
//! notifier callbacks, all driven by deterministic seeds. Invalidation
//! storms, which drive the mm, are in [`storm`](crate::storm).
//!
//! Fatal signals are injected with [`Task::kill`](crate::task::Task::kill),
//! or at a chosen wait with
//! [`Task::kill_at_wait`](crate::task::Task::kill_at_wait); slow handlers
//! are ordinary handler threads that take their time.
//!
//! # Enumerating injection points
//!
//! A [`PointCounter`] counts the times a kind of injection point is reached
//! (an allocation attempt, a non-blockable notifier callback, a wait of a
//! task) and can fire at exactly one chosen ordinal. A sweep runs a
//! scenario once to count its points `n`, then runs it again `n` times,
//! firing at point `k` in run `k`: every point is injected once, in a
//! deterministic order.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// SplitMix64: a small deterministic generator for seeds.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }
    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// A value in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// Counts the times an injection point is reached and fires at one chosen
/// ordinal (see the module docs).
#[derive(Debug)]
pub struct PointCounter {
    reached: AtomicU64,
    fire_at: AtomicU64,
}

impl Default for PointCounter {
    fn default() -> Self {
        PointCounter {
            reached: AtomicU64::new(0),
            fire_at: AtomicU64::new(u64::MAX),
        }
    }
}

impl PointCounter {
    /// Points reached so far.
    pub fn reached(&self) -> u64 {
        self.reached.load(Ordering::SeqCst)
    }

    /// Fire at the `k`-th point reached from now on (`0`: the next one),
    /// once. Arm it while no point can be reached concurrently.
    pub fn fire_at(&self, k: u64) {
        let at = self.reached().saturating_add(k);
        self.fire_at.store(at, Ordering::SeqCst);
    }

    /// Fire at no point.
    pub fn disarm(&self) {
        self.fire_at.store(u64::MAX, Ordering::SeqCst);
    }

    /// Reach a point: count it, and return true if it is the one to fire.
    pub fn reach(&self) -> bool {
        let n = self.reached.fetch_add(1, Ordering::SeqCst);
        n == self.fire_at.load(Ordering::SeqCst)
    }
}

/// Injection switches of one machine.
#[derive(Debug)]
pub struct Inject {
    /// Fail this many of the next allocations.
    fail_next: AtomicU64,
    /// Fail each allocation with probability 1 / `fail_one_in` (0: never).
    fail_one_in: AtomicU64,
    rng: Mutex<SplitMix64>,
    /// Bound on a userfaultfd wait, in nanoseconds (0: unbounded).
    uffd_wait_bound_ns: AtomicU64,
    failed: AtomicU64,
    /// Allocation attempts, and the one to fail.
    alloc_points: PointCounter,
    /// Non-blockable invalidate callbacks of device mirrors, and the one
    /// whose driver-lock trylock fails.
    nonblock_points: PointCounter,
}

impl Default for Inject {
    fn default() -> Self {
        Inject {
            fail_next: AtomicU64::new(0),
            fail_one_in: AtomicU64::new(0),
            rng: Mutex::new(SplitMix64::new(0)),
            uffd_wait_bound_ns: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            alloc_points: PointCounter::default(),
            nonblock_points: PointCounter::default(),
        }
    }
}

impl Inject {
    /// Make the next `n` page allocations fail (`-ENOMEM` from faults).
    pub fn fail_next_allocs(&self, n: u64) {
        self.fail_next.store(n, Ordering::SeqCst);
    }

    /// Fail allocations at random, one in `n` on average, from `seed`
    /// (`n == 0` turns it off).
    pub fn fail_allocs_randomly(&self, n: u64, seed: u64) {
        *self.rng.lock().unwrap_or_else(|e| e.into_inner()) = SplitMix64::new(seed);
        self.fail_one_in.store(n, Ordering::SeqCst);
    }

    /// Allocations failed by injection so far.
    pub fn failed_allocs(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Allocation attempts so far, failed or not: every
    /// [`Machine::alloc`](crate::Machine::alloc) and every page-table page
    /// a page fault allocates (`pte_alloc`).
    pub fn alloc_points(&self) -> u64 {
        self.alloc_points.reached()
    }

    /// Fail exactly the `k`-th allocation attempt from now (`0`: the next).
    pub fn fail_alloc_at(&self, k: u64) {
        self.alloc_points.fire_at(k);
    }

    /// Non-blockable invalidate callbacks of device mirrors so far.
    pub fn nonblock_points(&self) -> u64 {
        self.nonblock_points.reached()
    }

    /// Make the `k`-th non-blockable invalidate callback of a device mirror
    /// from now (`0`: the next) find its driver lock contended, so it
    /// refuses the invalidation (`-EAGAIN` to the invalidator).
    pub fn refuse_nonblock_at(&self, k: u64) {
        self.nonblock_points.fire_at(k);
    }

    /// A device mirror's non-blockable invalidate callback is about to
    /// trylock its driver lock: true if the trylock must fail.
    pub(crate) fn should_refuse_nonblock(&self) -> bool {
        self.nonblock_points.reach()
    }

    pub(crate) fn should_fail_alloc(&self) -> bool {
        let at = self.alloc_points.reach();
        let next = self
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        let fail = at
            || next
            || match self.fail_one_in.load(Ordering::Relaxed) {
                0 => false,
                n => self.rng.lock().unwrap_or_else(|e| e.into_inner()).below(n) == 0,
            };
        if fail {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        fail
    }

    /// Bound every userfaultfd wait: a faulter whose handler does not answer
    /// within `bound` is woken anyway and returns `VM_FAULT_RETRY`, as after
    /// a spurious `UFFDIO_WAKE`. Models a dead handler without hanging the
    /// faulter forever; `None` restores unbounded waits.
    pub fn set_uffd_wait_bound(&self, bound: Option<Duration>) {
        let ns = bound.map_or(0, |b| {
            u64::try_from(b.as_nanos()).unwrap_or(u64::MAX).max(1)
        });
        self.uffd_wait_bound_ns.store(ns, Ordering::SeqCst);
    }

    pub(crate) fn uffd_wait_bound(&self) -> Option<Duration> {
        match self.uffd_wait_bound_ns.load(Ordering::SeqCst) {
            0 => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_are_deterministic() {
        let mut a = SplitMix64::new(42);
        let mut b = SplitMix64::new(42);
        let va: Vec<u64> = (0..8).map(|_| a.next_u64()).collect();
        let vb: Vec<u64> = (0..8).map(|_| b.next_u64()).collect();
        assert_eq!(va, vb);
        assert_ne!(SplitMix64::new(43).next_u64(), va[0]);
    }

    #[test]
    fn point_counter_fires_once_at_the_chosen_point() {
        let c = PointCounter::default();
        assert!(!c.reach());
        c.fire_at(2);
        let fired: Vec<bool> = (0..5).map(|_| c.reach()).collect();
        assert_eq!(fired, [false, false, true, false, false]);
        assert_eq!(c.reached(), 6);
        c.fire_at(0);
        c.disarm();
        assert!(!c.reach());
    }

    #[test]
    fn fail_alloc_at_fails_exactly_one_attempt() {
        let i = Inject::default();
        assert!(!i.should_fail_alloc());
        i.fail_alloc_at(1);
        let fails: Vec<bool> = (0..3).map(|_| i.should_fail_alloc()).collect();
        assert_eq!(fails, [false, true, false]);
        assert_eq!((i.alloc_points(), i.failed_allocs()), (4, 1));
    }

    #[test]
    fn refuse_nonblock_at_refuses_one_callback() {
        let i = Inject::default();
        i.refuse_nonblock_at(0);
        assert!(i.should_refuse_nonblock());
        assert!(!i.should_refuse_nonblock());
        assert_eq!(i.nonblock_points(), 2);
    }

    #[test]
    fn fail_next_counts_down() {
        let i = Inject::default();
        i.fail_next_allocs(2);
        assert!(i.should_fail_alloc());
        assert!(i.should_fail_alloc());
        assert!(!i.should_fail_alloc());
        assert_eq!(i.failed_allocs(), 2);
    }
}
