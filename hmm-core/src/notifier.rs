//! The MMU interval notifier's read side (`mmu_interval_read_begin`,
//! `mmu_interval_check_retry`, `mmu_interval_read_retry`).
//!
//! The protocol: take `seq = read_begin()` (which waits out an invalidation
//! in progress) *before* the mmap lock, walk and fault, then take the
//! driver's update lock, the same lock the invalidate callback takes, and
//! program the device only if `read_retry(seq)` is false. Any invalidation
//! of the interval between `read_begin` and `read_retry` moves the sequence.
//!
//! This crate uses `check_retry` between passes: a moved sequence means the
//! entries already filled may be stale, so the walk restarts from the range
//! start; an unmoved one lets it *resume* after a lock drop.

/// Read side of one MMU interval notifier subscription.
pub trait IntervalNotifier {
    /// Begin a read section; sleeps while an invalidation of this interval is
    /// in progress. Must be called without the mmap lock held.
    fn read_begin(&self) -> u64;

    /// Lockless early check: true if `seq` is no longer current (an
    /// invalidation began or ended since `read_begin`).
    fn check_retry(&self, seq: u64) -> bool;

    /// The final check, called under the driver's update lock: true if the
    /// caller must retry instead of programming the device.
    fn read_retry(&self, seq: u64) -> bool {
        self.check_retry(seq)
    }
}
