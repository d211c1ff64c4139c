//! MMU interval notifiers of the host address space, with Linux's sequence
//! protocol (`mm/mmu_notifier.c`, interval part):
//!
//! * the mm has one `invalidate_seq`, odd while any invalidation runs;
//! * each subscription has its own `invalidate_seq`; an invalidation of an
//!   overlapping range calls the subscriber's callback, which sets the
//!   subscription's sequence to the mm's current (odd) one under the
//!   subscriber's lock (`mmu_interval_set_seq`);
//! * `read_begin` waits while the subscription's sequence equals the mm's
//!   odd one (an invalidation of it is in flight) and returns it;
//!   `check_retry(seq)` is "the subscription's sequence moved".

use core::sync::atomic::{AtomicU64, Ordering};

use hmm_core::IntervalNotifier;

use crate::sysreg::{sev, wfe};

/// The subscriber's side: what an invalidation of the interval does.
pub trait IntervalOps: Sync {
    /// Invalidate `[start, end)` (host addresses) of `sub`. Must call
    /// `sub.set_seq(cur_seq)` under the lock that also guards the
    /// subscriber's `read_retry` check.
    fn invalidate(&self, sub: &Subscription, start: u64, end: u64, cur_seq: u64);
}

/// One interval subscription (`struct mmu_interval_notifier`).
pub struct Subscription {
    start: u64,
    end: u64,
    seq: AtomicU64,
    mm_seq: &'static MmSeq,
    ops: spin::Once<&'static dyn IntervalOps>,
}

impl Subscription {
    /// A subscription over host `[start, end)` of the mm whose sequence is
    /// `mm_seq`; it receives invalidations once registered with
    /// [`Notifiers::insert`].
    pub const fn new(mm_seq: &'static MmSeq, start: u64, end: u64) -> Self {
        Subscription {
            start,
            end,
            seq: AtomicU64::new(0),
            mm_seq,
            ops: spin::Once::new(),
        }
    }

    /// `mmu_interval_set_seq`.
    pub fn set_seq(&self, cur_seq: u64) {
        self.seq.store(cur_seq, Ordering::Release);
    }

    /// The interval `[start, end)`.
    pub fn interval(&self) -> (u64, u64) {
        (self.start, self.end)
    }
}

impl IntervalNotifier for Subscription {
    fn read_begin(&self) -> u64 {
        loop {
            let seq = self.seq.load(Ordering::Acquire);
            if seq & 1 == 0 || seq != self.mm_seq.seq.load(Ordering::Acquire) {
                return seq;
            }
            // An invalidation of this interval is in flight (on the other
            // CPU): wait for its end.
            wfe();
        }
    }

    fn check_retry(&self, seq: u64) -> bool {
        self.seq.load(Ordering::Acquire) != seq
    }

    fn read_retry(&self, seq: u64) -> bool {
        self.seq.load(Ordering::Acquire) != seq
    }
}

/// The mm-wide invalidation sequence.
#[derive(Default)]
pub struct MmSeq {
    seq: AtomicU64,
    active: spin::Mutex<u64>,
}

impl MmSeq {
    /// Sequence 0, nothing active.
    pub const fn new() -> Self {
        MmSeq {
            seq: AtomicU64::new(0),
            active: spin::Mutex::new(0),
        }
    }
}

/// The mm's list of subscriptions.
pub struct Notifiers {
    mm_seq: &'static MmSeq,
    subs: spin::Mutex<[Option<&'static Subscription>; 8]>,
    invalidations: AtomicU64,
}

impl Notifiers {
    /// An empty list over the mm sequence `mm_seq`.
    pub const fn new(mm_seq: &'static MmSeq) -> Self {
        Notifiers {
            mm_seq,
            subs: spin::Mutex::new([None; 8]),
            invalidations: AtomicU64::new(0),
        }
    }

    /// `mmu_interval_notifier_insert`: start delivering invalidations of
    /// `sub` to `ops`.
    pub fn insert(&self, sub: &'static Subscription, ops: &'static dyn IntervalOps) -> bool {
        sub.ops.call_once(|| ops);
        sub.seq.store(
            self.mm_seq.seq.load(Ordering::Acquire) & !1,
            Ordering::Release,
        );
        let mut subs = self.subs.lock();
        match subs.iter_mut().find(|s| s.is_none()) {
            Some(slot) => {
                *slot = Some(sub);
                true
            }
            None => false,
        }
    }

    /// `mmu_notifier_invalidate_range_start`: every subscription
    /// overlapping `[start, end)` is invalidated (its callback runs) before
    /// this returns. Must be paired with [`end`](Self::end).
    pub fn start(&self, start: u64, end: u64) {
        let cur = {
            let mut active = self.mm_seq.active.lock();
            if *active == 0 {
                self.mm_seq.seq.fetch_add(1, Ordering::AcqRel);
            }
            *active += 1;
            self.mm_seq.seq.load(Ordering::Acquire)
        };
        self.invalidations.fetch_add(1, Ordering::Relaxed);
        let subs = *self.subs.lock();
        for sub in subs.iter().flatten() {
            if sub.start < end && start < sub.end {
                if let Some(ops) = sub.ops.get() {
                    ops.invalidate(sub, start.max(sub.start), end.min(sub.end), cur);
                }
            }
        }
    }

    /// `mmu_notifier_invalidate_range_end`.
    pub fn end(&self) {
        let mut active = self.mm_seq.active.lock();
        *active -= 1;
        if *active == 0 {
            self.mm_seq.seq.fetch_add(1, Ordering::AcqRel);
            sev();
        }
    }

    /// Invalidations started so far.
    pub fn count(&self) -> u64 {
        self.invalidations.load(Ordering::Relaxed)
    }
}
