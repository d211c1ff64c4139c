//! The address space: the mmap lock and what its read guard lets one see.
//!
//! [`MmapLock`] hands out read guards; only a guard implements [`MmView`],
//! the VMA lookup and the page-table reader. Everything the walker learns is
//! borrowed from the guard, so it cannot outlive the lock. A fault handler
//! that may drop the lock takes the guard *by value* (see
//! [`FaultHandler`](super::fault::FaultHandler)) and returns it only if it kept
//! the lock; after a drop the compiler rejects any use of the old view.

use core::ops::ControlFlow;

use super::error::Error;
use super::leaf::Leaf;
use super::vma::Vma;

/// The default user address-space limit: 47-bit x86-64 `TASK_SIZE` with
/// 4-level paging (`(1 << 47) - PAGE_SIZE`).
pub const TASK_SIZE: u64 = (1 << 47) - 4096;

/// The mmap lock of one address space, taken for read.
pub trait MmapLock {
    /// A held read lock. Dropping it releases the lock.
    type Guard<'a>: MmView
    where
        Self: 'a;

    /// Take the lock for read, sleeping uninterruptibly (`mmap_read_lock`).
    fn read(&self) -> Self::Guard<'_>;

    /// Take the lock for read; give up with [`Error::Intr`] if a fatal signal
    /// arrives while waiting (`mmap_read_lock_killable`).
    fn read_killable(&self) -> Result<Self::Guard<'_>, Error>;

    /// One past the highest mappable user address. Ranges ending beyond it
    /// are `-EINVAL`.
    fn address_limit(&self) -> u64 {
        TASK_SIZE
    }
}

/// What a read guard allows: VMA lookup and page-table reading.
pub trait MmView {
    /// The first VMA whose end is above `addr` (`find_vma`), which may start
    /// above `addr` (a gap).
    fn find_vma(&self, addr: u64) -> Option<Vma<'_>>;

    /// Report the leaves covering `[start, end)` inside `vma`, in address
    /// order and without gaps, calling `f(span_start, span_end, leaf)` for
    /// each span (see the [`leaf`](super::leaf) module for span sizes). Stop
    /// as soon as `f` returns [`ControlFlow::Break`].
    ///
    /// `start` and `end` are page aligned and inside `vma`. Implementations
    /// should walk each 512-entry table linearly rather than re-descending
    /// from the root for every page. No lock other than the mmap read lock
    /// may be held when this returns.
    fn walk_leaves<F>(&self, vma: &Vma<'_>, start: u64, end: u64, f: F)
    where
        F: FnMut(u64, u64, Leaf) -> ControlFlow<()>;
}
