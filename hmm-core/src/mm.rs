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

    /// Report `[start, end)` inside `vma` to `sink`, in address order and
    /// without gaps, as [`walk_leaves`](MmView::walk_leaves) does, but
    /// free to hand over a PTE table's words in one call
    /// ([`LeafSink::ptes`]) instead of a leaf per PTE. Stop as soon as the
    /// sink returns [`ControlFlow::Break`]. The walker calls this method;
    /// the default reports every span through [`LeafSink::leaf`].
    fn walk_batched<S: LeafSink>(&self, vma: &Vma<'_>, start: u64, end: u64, sink: &mut S) {
        self.walk_leaves(vma, start, end, |a, b, leaf| sink.leaf(a, b, leaf));
    }
}

/// How a backend's PTEs read: the classifier of the walker's per-PTE fast
/// path ([`LeafSink::ptes`]).
///
/// A backend that stores its page tables as words of its own format hands
/// the walker a slice of them and this classifier; the walker keeps its
/// per-page state in registers and calls [`PteFormat::read`] and
/// [`PteFormat::plain`] inline for each entry, asking [`PteFormat::leaf`]
/// only for the others.
///
/// ```
/// use hmm_core::{HmmPfn, Leaf, PfnFlags, Present, PteFormat};
///
/// /// PTEs as plain words: bit 0 present, bit 1 writable, PFN above bit 12.
/// struct Words;
///
/// impl PteFormat for Words {
///     type Pte = u64;
///     fn read(&self, pte: &u64) -> u64 {
///         *pte
///     }
///     fn plain(&self, w: u64) -> Option<u64> {
///         match w {
///             0 => Some(0),
///             // The write bit moves to `PfnFlags::WRITE` (bit 62).
///             _ if w & 1 != 0 => Some((w >> 12) | ((w & 2) << 61) | PfnFlags::VALID.bits()),
///             _ => None,
///         }
///     }
///     fn leaf(&self, w: u64) -> Leaf {
///         match self.plain(w) {
///             Some(0) | None => Leaf::Hole,
///             Some(out) => Leaf::Present(Present {
///                 pfn: HmmPfn(out).pfn(),
///                 write: HmmPfn(out).is_writable(),
///                 ..Present::default()
///             }),
///         }
///     }
/// }
///
/// assert_eq!(Words.plain(0x1234_003), Some(0x1234 | (1 << 62) | (1 << 63)));
/// assert_eq!(Words.plain(0), Some(0));
/// assert_eq!(Words.plain(0x1234_000), None);
/// ```
pub trait PteFormat {
    /// One PTE as the backend stores it (`u64`, `AtomicU64`, ...).
    type Pte;

    /// Read one PTE (a relaxed load, as the kernel's `ptep_get`).
    fn read(&self, pte: &Self::Pte) -> u64;

    /// The walker's output for an ordinary PTE, whose need is
    /// [`Request::need_fault`](super::need::Request::need_fault) of the
    /// output word: `Some(pfn | VALID [| WRITE])` for a present PTE that is
    /// not `PROT_NONE` and not special (the zero page may be answered
    /// either way: its output is the same), `Some(0)` for a none PTE.
    /// `None` for every other word. The walker keeps only the PFN, `VALID`
    /// and `WRITE` bits of the answer.
    ///
    /// Answering `None` is always correct (the walker then uses
    /// [`PteFormat::leaf`]); answering `Some` with another output than
    /// `leaf` implies is a wrong output.
    fn plain(&self, pte: u64) -> Option<u64>;

    /// The leaf of one PTE word of any kind, as
    /// [`MmView::walk_leaves`] would report that page alone.
    fn leaf(&self, pte: u64) -> Leaf;
}

/// What a batched page-table walk reports to ([`MmView::walk_batched`]).
/// The walker implements it.
pub trait LeafSink {
    /// One span `[start, end)`, as [`MmView::walk_leaves`] reports it.
    fn leaf(&mut self, start: u64, end: u64, leaf: Leaf) -> ControlFlow<()>;

    /// Consecutive PTEs from `start` on, one page each, in the backend's
    /// `format`: the same as reporting each alone through
    /// [`LeafSink::leaf`] as `format.leaf(format.read(pte))`, only faster.
    /// A batch does not cross the end of the requested window.
    fn ptes<F: PteFormat>(&mut self, start: u64, ptes: &[F::Pte], format: &F) -> ControlFlow<()>;
}
