//! MMU interval notifiers with the kernel's sequence semantics.
//!
//! Each mm has one [`Subscriptions`] holding its interval subscriptions and
//! an mm-wide invalidation sequence. An invalidation of `[start, end)`:
//!
//! 1. [`Subscriptions::invalidate_range_start`] makes the mm sequence odd
//!    (if any interval overlaps), counts itself active, and calls every
//!    overlapping interval's [`IntervalOps::invalidate`] with the odd
//!    sequence; each callback takes its driver lock (or trylocks it when the
//!    range is not blockable, failing with `false`), stores the sequence with
//!    [`IntervalSub::set_seq`] and tears down its device mappings;
//! 2. the caller changes the page tables;
//! 3. dropping the returned [`Invalidation`] ends it: when the last active
//!    invalidation ends the mm sequence becomes even again and every
//!    `read_begin` sleeping on it wakes.
//!
//! [`IntervalSub`] implements [`hmm_core::IntervalNotifier`]: `read_begin`
//! sleeps while an invalidation that covers the interval is in progress and
//! returns the interval's sequence; `check_retry` / `read_retry` compare it
//! with the current one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::task::WaitQueue;

/// Why a mapping is being invalidated (`enum mmu_notifier_event`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// munmap / mremap.
    Unmap,
    /// Page-table entries cleared or replaced (zap, COW, split, swap-out).
    Clear,
    /// mprotect.
    ProtectionVma,
    /// Write protection of single pages (fork COW, uffd write-protect).
    ProtectionPage,
    /// Page migration; `owner` tells whose device memory is involved.
    Migrate,
    /// Device-exclusive access taken or given back.
    Exclusive,
    /// The mm is going away.
    Release,
}

/// An invalidation range (`struct mmu_notifier_range`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidateRange {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// The reason.
    pub event: Event,
    /// The device-memory owner of a migration or exclusive event, 0 if none.
    pub owner: u64,
    /// Whether callbacks may sleep (`mmu_notifier_range_blockable`).
    pub blockable: bool,
}

impl InvalidateRange {
    /// A blockable range without owner.
    pub fn new(start: u64, end: u64, event: Event) -> Self {
        InvalidateRange {
            start,
            end,
            event,
            owner: 0,
            blockable: true,
        }
    }
    /// Set the owner.
    pub fn with_owner(mut self, owner: u64) -> Self {
        self.owner = owner;
        self
    }
}

/// The driver side of an interval subscription.
pub trait IntervalOps: Send + Sync {
    /// Called at the start of an invalidation overlapping the interval, with
    /// the odd sequence `cur_seq`. Must call `sub.set_seq(cur_seq)` under the
    /// driver's update lock and remove device mappings of the range. Returns
    /// false only if the range is not blockable and the lock is contended.
    fn invalidate(&self, sub: &IntervalSub, range: &InvalidateRange, cur_seq: u64) -> bool;
}

#[derive(Debug, Default)]
struct InvState {
    seq: u64,
    active: u32,
}

/// The notifier state of one mm (`struct mmu_notifier_subscriptions`).
pub struct Subscriptions {
    state: Arc<WaitQueue<InvState>>,
    list: Mutex<Vec<Arc<IntervalSub>>>,
    invalidations: AtomicU64,
}

impl std::fmt::Debug for Subscriptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriptions")
            .field("seq", &self.state.lock().seq)
            .finish()
    }
}

/// The invalidation failed: a non-blockable range met a contended driver
/// lock (`-EAGAIN`). The invalidation has already been ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WouldBlock;

/// An invalidation in progress; dropping it ends it
/// (`mmu_notifier_invalidate_range_end`).
#[must_use = "the invalidation ends when this is dropped"]
#[derive(Debug)]
pub struct Invalidation<'a> {
    subs: &'a Subscriptions,
}

impl Drop for Invalidation<'_> {
    fn drop(&mut self) {
        self.subs.inv_end();
    }
}

/// One interval subscription (`struct mmu_interval_notifier`).
pub struct IntervalSub {
    start: u64,
    end: u64,
    seq: AtomicU64,
    subs: Arc<Subscriptions>,
    ops: Box<dyn IntervalOps>,
}

impl std::fmt::Debug for IntervalSub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntervalSub")
            .field("start", &self.start)
            .field("end", &self.end)
            .field("seq", &self.seq)
            .finish()
    }
}

impl Subscriptions {
    /// Empty, with the mm sequence at 2 (even: no invalidation).
    pub fn new() -> Arc<Self> {
        Arc::new(Subscriptions {
            state: Arc::new(WaitQueue::new(InvState { seq: 2, active: 0 })),
            list: Mutex::new(Vec::new()),
            invalidations: AtomicU64::new(0),
        })
    }

    /// Number of invalidations started so far.
    pub fn invalidations(&self) -> u64 {
        self.invalidations.load(Ordering::Relaxed)
    }

    /// Subscribe `[start, end)` (`mmu_interval_notifier_insert`).
    pub fn insert(
        self: &Arc<Self>,
        start: u64,
        end: u64,
        ops: Box<dyn IntervalOps>,
    ) -> Arc<IntervalSub> {
        let seq = self.state.lock().seq & !1;
        let sub = Arc::new(IntervalSub {
            start,
            end,
            seq: AtomicU64::new(seq.wrapping_sub(2)),
            subs: self.clone(),
            ops,
        });
        self.list
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(sub.clone());
        sub
    }

    /// Unsubscribe (`mmu_interval_notifier_remove`): after this returns no
    /// callback of `sub` runs or will run.
    pub fn remove(&self, sub: &Arc<IntervalSub>) {
        self.list
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|s| !Arc::ptr_eq(s, sub));
        let g = self.state.lock();
        if g.seq & 1 == 1 {
            // An invalidation that may have snapshotted `sub` is running:
            // wait for it (and any overlapping ones) to end.
            let seen = g.seq;
            drop(self.state.wait(g, |s| s.seq != seen));
        }
    }

    /// Begin invalidating `range`: make the sequence odd, run the
    /// overlapping intervals' callbacks, and return the invalidation to drop
    /// after the page tables changed.
    pub fn invalidate_range_start(
        &self,
        range: &InvalidateRange,
    ) -> Result<Invalidation<'_>, WouldBlock> {
        self.invalidations.fetch_add(1, Ordering::Relaxed);
        let hits: Vec<Arc<IntervalSub>> = self
            .list
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|s| s.start < range.end && range.start < s.end)
            .cloned()
            .collect();
        let cur_seq = {
            let mut g = self.state.lock();
            g.active += 1;
            if !hits.is_empty() {
                g.seq |= 1;
            }
            g.seq
        };
        let inv = Invalidation { subs: self };
        for s in &hits {
            if !s.ops.invalidate(s, range, cur_seq) {
                // `inv` is dropped here, ending the invalidation.
                return Err(WouldBlock);
            }
        }
        Ok(inv)
    }

    fn inv_end(&self) {
        let mut g = self.state.lock();
        g.active -= 1;
        if g.active == 0 && g.seq & 1 == 1 {
            g.seq += 1;
            drop(g);
            self.state.notify_all();
        }
    }
}

impl IntervalSub {
    /// First address of the interval.
    pub fn start(&self) -> u64 {
        self.start
    }
    /// One past its last address.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// `mmu_interval_set_seq`: called by the invalidate callback under the
    /// driver's update lock.
    pub fn set_seq(&self, cur_seq: u64) {
        self.seq.store(cur_seq, Ordering::Release);
    }

    /// Remove this subscription from its mm.
    pub fn remove(self: &Arc<Self>) {
        self.subs.remove(self);
    }
}

impl hmm_core::IntervalNotifier for IntervalSub {
    fn read_begin(&self) -> u64 {
        let g = self.subs.state.lock();
        let seq = self.seq.load(Ordering::Acquire);
        if seq == g.seq {
            // An invalidation covering this interval is in progress.
            drop(self.subs.state.wait(g, |s| s.seq != seq));
        }
        seq
    }

    fn check_retry(&self, seq: u64) -> bool {
        self.seq.load(Ordering::Acquire) != seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hmm_core::IntervalNotifier;
    use std::sync::atomic::AtomicBool;

    struct Ops {
        calls: Arc<AtomicU64>,
        fail: AtomicBool,
    }
    impl IntervalOps for Ops {
        fn invalidate(&self, sub: &IntervalSub, r: &InvalidateRange, cur: u64) -> bool {
            if !r.blockable && self.fail.load(Ordering::Relaxed) {
                return false;
            }
            self.calls.fetch_add(1, Ordering::Relaxed);
            sub.set_seq(cur);
            true
        }
    }

    fn sub(s: &Arc<Subscriptions>, a: u64, b: u64) -> (Arc<IntervalSub>, Arc<AtomicU64>) {
        let calls = Arc::new(AtomicU64::new(0));
        let ops = Ops {
            calls: calls.clone(),
            fail: AtomicBool::new(true),
        };
        (s.insert(a, b, Box::new(ops)), calls)
    }

    #[test]
    fn invalidation_moves_only_overlapping_sequences() {
        let s = Subscriptions::new();
        let (a, ca) = sub(&s, 0, 0x1000);
        let (b, cb) = sub(&s, 0x1000, 0x2000);
        let sa = a.read_begin();
        let sb = b.read_begin();
        drop(s.invalidate_range_start(&InvalidateRange::new(0, 0x1000, Event::Clear)));
        assert!(a.read_retry(sa));
        assert!(!b.read_retry(sb));
        assert_eq!(
            (ca.load(Ordering::Relaxed), cb.load(Ordering::Relaxed)),
            (1, 0)
        );
        let sa2 = a.read_begin();
        assert!(!a.check_retry(sa2));
    }

    #[test]
    fn read_begin_waits_for_the_invalidation_to_end() {
        let s = Subscriptions::new();
        let (a, _) = sub(&s, 0, 0x1000);
        let inv = s
            .invalidate_range_start(&InvalidateRange::new(0, 0x1000, Event::Clear))
            .unwrap();
        let ended = Arc::new(AtomicBool::new(false));
        let h = {
            let (a, ended) = (a.clone(), ended.clone());
            std::thread::spawn(move || {
                let seq = a.read_begin();
                // read_begin only returns once the invalidation ended.
                assert!(ended.load(Ordering::SeqCst));
                seq
            })
        };
        ended.store(true, Ordering::SeqCst);
        drop(inv);
        let seq = h.join().unwrap();
        assert!(!a.read_retry(seq));
    }

    #[test]
    fn non_blockable_failure_ends_the_invalidation() {
        let s = Subscriptions::new();
        let (a, _) = sub(&s, 0, 0x1000);
        let mut r = InvalidateRange::new(0, 0x1000, Event::Clear);
        r.blockable = false;
        assert!(s.invalidate_range_start(&r).is_err());
        // Not stuck odd: read_begin returns.
        let seq = a.read_begin();
        assert!(!a.check_retry(seq));
        a.remove();
    }
}
