//! Invalidation storms: CPU threads running invalidating operations
//! (DONTNEED, swap-out, migration, mprotect, THP split) on random windows
//! of a range, from deterministic seeds, optionally paced by the progress
//! of the threads they disturb.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use hmm_core::PAGE_SIZE;

use crate::inject::SplitMix64;
use crate::mm::Mm;
use crate::task::Task;

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
    debug_assert!(a.is_multiple_of(PAGE_SIZE) && b.is_multiple_of(PAGE_SIZE));
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
