//! Fault injection: allocation failures, a bounded userfaultfd wait (a
//! handler that is dead or never answers), and invalidation storms, all
//! driven by deterministic seeds.
//!
//! Fatal signals are injected with [`Task::kill`](crate::task::Task::kill);
//! slow handlers are ordinary handler threads that take their time.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmm_core::PAGE_SIZE;

use crate::mm::Mm;
use crate::task::Task;

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
}

impl Default for Inject {
    fn default() -> Self {
        Inject {
            fail_next: AtomicU64::new(0),
            fail_one_in: AtomicU64::new(0),
            rng: Mutex::new(SplitMix64::new(0)),
            uffd_wait_bound_ns: AtomicU64::new(0),
            failed: AtomicU64::new(0),
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

    pub(crate) fn should_fail_alloc(&self) -> bool {
        let fail = self
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
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

/// What an invalidation storm does to a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StormOp {
    /// `madvise(MADV_DONTNEED)`: zap (userfaultfd ranges refault through
    /// the handler).
    DontNeed,
    /// Swap the window out.
    SwapOut,
    /// Migrate the window's pages to new frames.
    Migrate,
    /// `mprotect` read-only then back to read-write.
    Protect,
    /// Split THPs in the window.
    Split,
}

/// Tickets pacing a storm: each [`Pace::tick`] allows one storm operation.
/// Tying the storm to the progress of the threads it disturbs (one
/// invalidation per completed device fault, say) keeps it concurrent with
/// them without starving them, and without any timing.
#[derive(Debug, Default)]
pub struct Pace {
    tickets: Mutex<u64>,
    cv: std::sync::Condvar,
}

impl Pace {
    /// A pace with no tickets.
    pub fn new() -> Arc<Pace> {
        Arc::new(Pace::default())
    }

    /// Allow one more operation.
    pub fn tick(&self) {
        *self.tickets.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.cv.notify_one();
    }

    /// Take a ticket, waiting for one; false once `stop` is set.
    fn take(&self, stop: &AtomicBool) -> bool {
        let g = self.tickets.lock().unwrap_or_else(|e| e.into_inner());
        let mut g = self
            .cv
            .wait_while(g, |t| *t == 0 && !stop.load(Ordering::SeqCst))
            .unwrap_or_else(|e| e.into_inner());
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        *g -= 1;
        true
    }
}

/// A running invalidation storm: CPU threads invalidating random windows of
/// a range until stopped.
#[derive(Debug)]
pub struct Storm {
    stop: Arc<AtomicBool>,
    pace: Option<Arc<Pace>>,
    threads: Vec<std::thread::JoinHandle<u64>>,
}

impl Storm {
    /// Start `threads` threads, each invalidating random `window`-sized,
    /// window-aligned pieces of `[start, end)` with the given operations,
    /// from `seed`, as fast as they can, or one operation per ticket of
    /// `pace` if given. Operations that fail (e.g. the range was unmapped)
    /// are skipped.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        mm: &Arc<Mm>,
        start: u64,
        end: u64,
        window: u64,
        ops: &[StormOp],
        threads: usize,
        seed: u64,
        pace: Option<Arc<Pace>>,
    ) -> Storm {
        let stop = Arc::new(AtomicBool::new(false));
        let ops: Arc<[StormOp]> = ops.into();
        let threads = (0..threads)
            .map(|t| {
                let (mm, stop, ops) = (mm.clone(), stop.clone(), ops.clone());
                let pace = pace.clone();
                std::thread::spawn(move || {
                    let task = Task::new();
                    let mut rng = SplitMix64::new(seed ^ (t as u64).wrapping_mul(0x9E37));
                    let windows = ((end - start) / window).max(1);
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        if let Some(p) = &pace {
                            if !p.take(&stop) {
                                break;
                            }
                        }
                        let a = start + rng.below(windows) * window;
                        let b = (a + window).min(end);
                        let op = ops[rng.below(ops.len() as u64) as usize];
                        let _ = storm_op(&mm, &task, op, a, b);
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        Storm {
            stop,
            pace,
            threads,
        }
    }

    /// Stop the storm; returns the number of operations performed.
    pub fn stop(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(p) = &self.pace {
            drop(p.tickets.lock().unwrap_or_else(|e| e.into_inner()));
            p.cv.notify_all();
        }
        self.threads
            .into_iter()
            .map(|t| t.join().unwrap_or(0))
            .sum()
    }
}

/// One storm operation on `[a, b)`.
pub fn storm_op(mm: &Mm, task: &Task, op: StormOp, a: u64, b: u64) -> Result<(), crate::Errno> {
    debug_assert!(a % PAGE_SIZE == 0 && b % PAGE_SIZE == 0);
    match op {
        StormOp::DontNeed => mm.madvise_dontneed(task, a, b - a),
        StormOp::SwapOut => mm.swap_out(task, a, b - a).map(|_| ()),
        StormOp::Migrate => mm.migrate(task, a, b - a, None).map(|_| ()),
        StormOp::Protect => {
            use hmm_core::VmFlags;
            mm.mprotect(a, b - a, VmFlags::READ)?;
            mm.mprotect(a, b - a, VmFlags::READ | VmFlags::WRITE)
        }
        StormOp::Split => mm.split_huge(task, a, b - a),
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
    fn fail_next_counts_down() {
        let i = Inject::default();
        i.fail_next_allocs(2);
        assert!(i.should_fail_alloc());
        assert!(i.should_fail_alloc());
        assert!(!i.should_fail_alloc());
        assert_eq!(i.failed_allocs(), 2);
    }
}
