//! The manager's counters: bumped lock-free on the fault, no-wait and
//! invalidate paths, read as a [`GuestStats`] snapshot.

use core::sync::atomic::{AtomicU64, Ordering};

use hmm_core::IntervalNotifier;

use super::GuestMemory;
use crate::alloc::TableAlloc;
use crate::descriptor::Format;
use crate::tlb::TlbFlush;
use hmm_core::Host;

/// Monotonic counters (a snapshot from [`GuestMemory::stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GuestStats {
    /// Guest faults handled (blocking and no-wait).
    pub faults: u64,
    /// Faults that installed mappings.
    pub mapped: u64,
    /// Faults that returned retry (the notifier sequence moved, the host
    /// fault ran out of budget, or the region went away meanwhile).
    pub retries: u64,
    /// Faults that failed.
    pub errors: u64,
    /// No-wait faults deferred to a worker.
    pub pending: u64,
    /// Deferred faults completed by a worker.
    pub async_completed: u64,
    /// No-wait faults refused because every async slot was busy.
    pub async_full: u64,
    /// Window faults that failed and were retried for the single page.
    pub single_page_fallbacks: u64,
    /// 4 KiB leaves installed.
    pub leaves_4k: u64,
    /// 2 MiB leaves installed.
    pub leaves_2m: u64,
    /// 1 GiB leaves installed.
    pub leaves_1g: u64,
    /// Host pages faulted by hmm-core (calls to the host fault handler).
    pub host_faults: u64,
    /// Host faults that dropped the mmap lock.
    pub host_lock_drops: u64,
    /// Host walks resumed after a lock drop, at the address where the last
    /// walk stopped (not restarted from the window start).
    pub host_resumes: u64,
    /// Host walks restarted from the window start (the sequence moved).
    pub host_restarts: u64,
    /// Invalidate callbacks that unmapped something in a live region.
    pub invalidations: u64,
    /// Blocks split by invalidations.
    pub splits: u64,
    /// Blocks unmapped whole because no table page was free for a split.
    pub split_fallbacks: u64,
    /// Leaves whose permissions a fault widened in place (each followed by
    /// [`TlbFlush::flush_upgrade`]).
    pub upgrades: u64,
    /// Faults that found their leaf already allowing the access and
    /// flushed the faulting CPU's stale translation of it
    /// ([`TlbFlush::flush_upgrade`]).
    pub stale_flushes: u64,
    /// Faults that wrote descriptors and published them
    /// ([`TlbFlush::publish`]) before returning.
    pub published: u64,
}

/// The live counters behind [`GuestStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub faults: AtomicU64,
    pub mapped: AtomicU64,
    pub retries: AtomicU64,
    pub errors: AtomicU64,
    pub pending: AtomicU64,
    pub async_completed: AtomicU64,
    pub async_full: AtomicU64,
    pub single_page_fallbacks: AtomicU64,
    pub leaves_4k: AtomicU64,
    pub leaves_2m: AtomicU64,
    pub leaves_1g: AtomicU64,
    pub host_faults: AtomicU64,
    pub host_lock_drops: AtomicU64,
    pub host_resumes: AtomicU64,
    pub host_restarts: AtomicU64,
    pub invalidations: AtomicU64,
    pub splits: AtomicU64,
    pub split_fallbacks: AtomicU64,
    pub upgrades: AtomicU64,
    pub stale_flushes: AtomicU64,
    pub published: AtomicU64,
}

/// Add `n` to a counter.
pub(crate) fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl<F, A, T, H, N, const R: usize, const P: usize> GuestMemory<'_, F, A, T, H, N, R, P>
where
    F: Format,
    A: TableAlloc,
    T: TlbFlush,
    H: Host,
    N: IntervalNotifier + ?Sized,
{
    /// A snapshot of the counters.
    pub fn stats(&self) -> GuestStats {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        GuestStats {
            faults: l(&c.faults),
            mapped: l(&c.mapped),
            retries: l(&c.retries),
            errors: l(&c.errors),
            pending: l(&c.pending),
            async_completed: l(&c.async_completed),
            async_full: l(&c.async_full),
            single_page_fallbacks: l(&c.single_page_fallbacks),
            leaves_4k: l(&c.leaves_4k),
            leaves_2m: l(&c.leaves_2m),
            leaves_1g: l(&c.leaves_1g),
            host_faults: l(&c.host_faults),
            host_lock_drops: l(&c.host_lock_drops),
            host_resumes: l(&c.host_resumes),
            host_restarts: l(&c.host_restarts),
            invalidations: l(&c.invalidations),
            splits: l(&c.splits),
            split_fallbacks: l(&c.split_fallbacks),
            upgrades: l(&c.upgrades),
            stale_flushes: l(&c.stale_flushes),
            published: l(&c.published),
        }
    }
}
