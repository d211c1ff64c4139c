//! The walk: a pure state machine from page tables to PFN words.
//!
//! [`walk`] fills `range.pfns` from a cursor address to the range end using
//! only an [`MmView`] (VMA lookup and the leaf reader). It never faults and
//! never sleeps; it stops with a [`WalkStop`]:
//!
//! * [`WalkStop::Done`]: every entry from the cursor on holds its output;
//! * [`WalkStop::NeedFault`]: entries below `addr` hold output, entries from
//!   `addr` on still hold their input, and the pages `[addr, end)` must be
//!   faulted (as a write fault if `write`) before walking again from `addr`;
//! * [`WalkStop::WaitMigration`]: the same split at `addr`, which is under
//!   migration; wait for it and walk again from `addr`;
//!
//! or with an error (`-EFAULT` for a requested page that cannot be made
//! valid, `-EPERM` for a write request on a VMA without `VM_WRITE`). This is
//! the kernel's partial-output contract, which is what makes resuming from
//! the stop address sound.
//!
//! The output rules are Linux's (`mm/hmm.c`), per leaf kind:
//!
//! | leaf | fault needed | no fault needed |
//! |---|---|---|
//! | no VMA (gap) | `-EFAULT` | `ERROR` |
//! | `VM_IO` / `VM_PFNMAP` / no `VM_READ` | `-EFAULT` | `ERROR` |
//! | none / marker | fault | 0 |
//! | present | fault | `pfn \| VALID [\| WRITE] \| order` |
//! | present, protnone | fault | `pfn` (no flags) |
//! | present, special (not zero page) | fault if the mapping is lacking, else `-EFAULT` | `ERROR` |
//! | swap, device-exclusive | fault | 0 |
//! | device-private, our owner | never faulted | `pfn \| VALID [\| WRITE] \| order` |
//! | device-private, other owner | fault | 0 (PTE), `ERROR` (PMD) |
//! | migration | wait, re-walk | 0 |
//! | hwpoison | `-EFAULT` | 0 |
//! | bad / unknown huge entry | `-EFAULT` | `ERROR` |
//!
//! "Fault needed" is [`Request::need_fault_range`](super::need::Request::need_fault_range) over the span's entries;
//! a write fault on a VMA without `VM_WRITE` is `-EPERM`. Hugetlb leaves
//! report the VMA's huge page order. Two deliberate differences from the
//! kernel, both for hugetlb: the need is computed over every entry of the
//! huge page rather than only its first (the kernel's quirk can return a
//! requested entry without `VALID`); and a non-present hugetlb entry with no
//! fault requested is 0, where the kernel writes the entry's junk PFN bits
//! and the hstate order without `VALID` (see [the `pfn` module](super::pfn#entries-without-valid)).

use core::ops::ControlFlow;

use super::error::Error;
use super::leaf::{Leaf, Present};
use super::mm::{LeafSink, MmView, PteFormat};
use super::need::{NeedFault, Request};
use super::pfn::{HmmPfn, PfnFlags, PAGE_SIZE, PFN_MASK};
use super::range::Range;
use super::vma::{VmFlags, Vma};

/// Where a walk stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalkStop {
    /// The range is filled from the cursor to its end.
    Done,
    /// Fault `[addr, end)` (page aligned), then walk again from `addr`.
    NeedFault {
        /// First page to fault.
        addr: u64,
        /// End of the span that needs the fault.
        end: u64,
        /// Whether a write fault is needed.
        write: bool,
    },
    /// Wait for the migration entry at `addr`, then walk again from `addr`.
    WaitMigration {
        /// The page under migration.
        addr: u64,
    },
}

/// Counters a walk adds to; they saturate at `u64::MAX`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalkCounters {
    /// Pages whose entry received output.
    pub pages_filled: u64,
    /// Leaves (spans) visited.
    pub leaves: u64,
}

/// Walk `range` from `from` (page aligned, inside the range) to its end.
///
/// The range must already be valid ([`Range::validate`]); an invalid range or
/// cursor is `-EINVAL`. A backend that reports spans out of order, with gaps,
/// or outside the requested window is `-EFAULT`: the walker never trusts it
/// with an index. Spans reported after the walker stopped (a backend that
/// ignores [`ControlFlow::Break`]) are ignored: nothing from the stop address
/// on is written. The counters saturate at `u64::MAX`.
pub fn walk<V: MmView + ?Sized, N: ?Sized>(
    view: &V,
    range: &mut Range<'_, N>,
    from: u64,
    counters: &mut WalkCounters,
) -> Result<WalkStop, Error> {
    if range.validate(u64::MAX).is_err()
        || from & (PAGE_SIZE - 1) != 0
        || from < range.start
        || from > range.end
    {
        return Err(Error::Inval);
    }
    let end = range.end;
    let mut addr = from;
    while addr < end {
        let vma = view.find_vma(addr);
        let (chunk_end, vma) = match vma {
            Some(v) if v.end() > addr && v.start() < v.end() => {
                if v.start() > addr {
                    (v.start().min(end), None)
                } else {
                    (v.end().min(end), Some(v))
                }
            }
            Some(_) => return Err(Error::Fault), // backend returned a VMA below addr
            None => (end, None),
        };
        let chunk_end = chunk_end & !(PAGE_SIZE - 1);
        if chunk_end <= addr {
            return Err(Error::Fault);
        }
        match vma {
            None => fill_unmirrorable(range, addr, chunk_end, counters)?,
            Some(v) if !v.is_mirrorable() => fill_unmirrorable(range, addr, chunk_end, counters)?,
            Some(v) => {
                if let Some(stop) = walk_vma(view, &v, range, addr, chunk_end, counters)? {
                    return Ok(stop);
                }
            }
        }
        addr = chunk_end;
    }
    Ok(WalkStop::Done)
}

/// No VMA, or a VMA HMM may not mirror: `-EFAULT` if a fault is requested
/// anywhere in the chunk, `ERROR` otherwise.
fn fill_unmirrorable<N: ?Sized>(
    range: &mut Range<'_, N>,
    start: u64,
    end: u64,
    counters: &mut WalkCounters,
) -> Result<(), Error> {
    let request = range.request;
    let entries = entries_mut(range, start, end)?;
    if !request.need_fault_range(entries, 0).is_empty() {
        return Err(Error::Fault);
    }
    fill(entries, PfnFlags::ERROR.bits(), counters);
    Ok(())
}

fn walk_vma<V: MmView + ?Sized, N: ?Sized>(
    view: &V,
    vma: &Vma<'_>,
    range: &mut Range<'_, N>,
    start: u64,
    end: u64,
    counters: &mut WalkCounters,
) -> Result<Option<WalkStop>, Error> {
    let request = range.request;
    let mut sink = Sink {
        pfns: &mut *range.pfns,
        base: range.start,
        end,
        request,
        snapshot: !request.may_fault() && !vma.is_hugetlb(),
        ptes: !vma.is_hugetlb(),
        cursor: start,
        leaves: 0,
        filled: 0,
        slow: SlowPath {
            vma,
            request,
            owner: range.dev_private_owner,
            counters: WalkCounters::default(),
            result: Ok(None),
        },
    };
    view.walk_batched(vma, start, end, &mut sink);
    // The caller's counters may start anywhere: they saturate.
    counters.leaves = counters
        .leaves
        .saturating_add(sink.leaves.saturating_add(sink.slow.counters.leaves));
    counters.pages_filled = counters
        .pages_filled
        .saturating_add(sink.filled.saturating_add(sink.slow.counters.pages_filled));
    if matches!(sink.slow.result, Ok(None)) && sink.cursor != end {
        // The backend stopped early without covering the window.
        return Err(Error::Fault);
    }
    sink.slow.result
}

/// The walker's side of [`MmView::walk_batched`] over one VMA window
/// `[cursor, end)`: ordinary present PTEs are filled inline, everything
/// else goes to [`SlowPath`].
struct Sink<'p, 'v, 'g> {
    pfns: &'p mut [u64],
    /// The range's first address (index 0 of `pfns`).
    base: u64,
    /// End of the window.
    end: u64,
    request: Request,
    /// A snapshot (nothing may fault) outside hugetlb: present PTEs and
    /// runs of them are filled without computing a need.
    snapshot: bool,
    /// Not hugetlb: PTE batches take the per-PTE fast path.
    ptes: bool,
    /// The next address a span must start at; `u64::MAX` once stopped.
    cursor: u64,
    /// Leaves and pages of the fast paths (the slow path keeps its own).
    leaves: u64,
    filled: u64,
    slow: SlowPath<'v, 'g>,
}

impl LeafSink for Sink<'_, '_, '_> {
    #[inline]
    fn leaf(&mut self, a: u64, b: u64, leaf: Leaf) -> ControlFlow<()> {
        // Fast path: ordinary present PTEs (one or a run) in a snapshot.
        if let Leaf::Present(p) = leaf {
            if self.snapshot
                && p.order == 0
                && !p.protnone
                && !p.special
                && a == self.cursor
                && b > a
                && b <= self.end
                && b & (PAGE_SIZE - 1) == 0
            {
                let cpu = HmmPfn::cpu_flags(p.write, 0);
                let i = range_index(self.base, a);
                let n = range_index(a, b);
                if let Some(entries) = self.pfns.get_mut(i..i.wrapping_add(n)) {
                    let mut pfn = p.pfn;
                    for e in entries.iter_mut() {
                        *e = HmmPfn::sticky_update(*e, (pfn & PFN_MASK) | cpu);
                        pfn = pfn.wrapping_add(1);
                    }
                    self.leaves = self.leaves.wrapping_add(1);
                    self.filled = self.filled.wrapping_add(n as u64);
                    self.cursor = b;
                    return ControlFlow::Continue(());
                }
            }
        }
        match self
            .slow
            .visit(self.pfns, self.base, self.cursor, self.end, a, b, leaf)
        {
            Some(next) => {
                self.cursor = next;
                ControlFlow::Continue(())
            }
            None => {
                // Stopped. A backend that calls again anyway must not write
                // past the stop: no span can start at `u64::MAX` and end
                // above it, so the fast paths never match again, and
                // `visit` ignores every call once its result is set.
                self.cursor = u64::MAX;
                ControlFlow::Break(())
            }
        }
    }

    #[inline]
    fn ptes<F: PteFormat>(&mut self, start: u64, ptes: &[F::Pte], format: &F) -> ControlFlow<()> {
        let mut rest = ptes;
        let mut addr = start;
        if self.ptes && addr == self.cursor {
            let stop = range_index(self.base, self.end);
            loop {
                let i = range_index(self.base, addr);
                let Some(out) = self.pfns.get_mut(i..stop) else {
                    break;
                };
                let (n, word) = if self.snapshot {
                    plain_ptes::<F, false>(out, rest, format, self.request)
                } else {
                    plain_ptes::<F, true>(out, rest, format, self.request)
                };
                self.leaves = self.leaves.wrapping_add(n as u64);
                self.filled = self.filled.wrapping_add(n as u64);
                addr = addr.wrapping_add((n as u64) << super::pfn::PAGE_SHIFT);
                self.cursor = addr;
                rest = rest.get(n..).unwrap_or(&[]);
                let (Some(w), Some((_, tail))) = (word, rest.split_first()) else {
                    break;
                };
                // Any other PTE, or a plain one that needs a fault: on its
                // own (the word as the loop read it), as if the backend had
                // reported it alone.
                self.leaf(addr, addr.wrapping_add(PAGE_SIZE), format.leaf(w))?;
                addr = addr.wrapping_add(PAGE_SIZE);
                rest = tail;
            }
        }
        // Hugetlb, a batch that does not start at the cursor, or PTEs left
        // past the window's end: one leaf per PTE, which `visit` checks.
        for pte in rest {
            let Some(b) = addr.checked_add(PAGE_SIZE) else {
                return self.leaf(addr, addr, Leaf::Bad);
            };
            self.leaf(addr, b, format.leaf(format.read(pte)))?;
            addr = b;
        }
        ControlFlow::Continue(())
    }
}

/// Fill `out` from `ptes` while they are plain (present and ordinary, or
/// none; see [`PteFormat::plain`]) and, when `FAULT`, need no fault under
/// `request`. Returns how many were filled and the word that stopped the
/// loop, read once (`None` when `out` or `ptes` ran out). The loop the
/// batched interface exists for: one index, its state in registers.
#[inline(always)]
fn plain_ptes<F: PteFormat, const FAULT: bool>(
    out: &mut [u64],
    ptes: &[F::Pte],
    format: &F,
    request: Request,
) -> (usize, Option<u64>) {
    const MASK: u64 = PFN_MASK | PfnFlags::VALID.bits() | PfnFlags::WRITE.bits();
    let n = out.len().min(ptes.len());
    let (out, ptes) = (&mut out[..n], &ptes[..n]);
    for i in 0..n {
        let pte = format.read(&ptes[i]);
        let Some(word) = format.plain(pte) else {
            return (i, Some(pte));
        };
        let word = word & MASK;
        if FAULT && !request.need_fault(out[i], word).is_empty() {
            return (i, Some(pte));
        }
        out[i] = HmmPfn::sticky_update(out[i], word);
    }
    (n, None)
}

/// Everything but the snapshot of ordinary present PTEs: out of line, so
/// the per-leaf closure stays small enough for backends' page-table loops
/// to inline it.
struct SlowPath<'v, 'g> {
    vma: &'v Vma<'g>,
    request: Request,
    owner: Option<u64>,
    counters: WalkCounters,
    result: Result<Option<WalkStop>, Error>,
}

impl SlowPath<'_, '_> {
    /// Handle the span `[a, b)`; the cursor after it, or `None` to stop
    /// (with `self.result` set).
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn visit(
        &mut self,
        pfns: &mut [u64],
        base: u64,
        cursor: u64,
        end: u64,
        a: u64,
        b: u64,
        leaf: Leaf,
    ) -> Option<u64> {
        if !matches!(self.result, Ok(None)) {
            return None;
        }
        if a != cursor || b <= a || b > end || b & (PAGE_SIZE - 1) != 0 {
            self.result = Err(Error::Fault);
            return None;
        }
        self.counters.leaves = self.counters.leaves.saturating_add(1);
        let (i, j) = (range_index(base, a), range_index(base, b));
        let out = match pfns.get_mut(i..j) {
            Some(entries) => leaf_span(
                self.vma,
                self.request,
                self.owner,
                entries,
                a,
                leaf,
                &mut self.counters,
            ),
            None => Err(Error::Fault),
        };
        match out {
            Ok(None) => Some(b),
            Ok(Some(stop)) => {
                self.result = Ok(Some(stop));
                None
            }
            Err(e) => {
                self.result = Err(e);
                None
            }
        }
    }
}

/// Turn a need into a stop, checking `VM_WRITE` first (`-EPERM`).
fn fault_stop(vma: &Vma<'_>, a: u64, b: u64, need: NeedFault) -> Result<Option<WalkStop>, Error> {
    let write = need.contains(NeedFault::WRITE);
    if write && !vma.flags().contains(VmFlags::WRITE) {
        return Err(Error::Perm);
    }
    Ok(Some(WalkStop::NeedFault {
        addr: a,
        end: b,
        write,
    }))
}

/// Output for one span `[a, a + entries.len() pages)` reported as `leaf`.
fn leaf_span(
    vma: &Vma<'_>,
    request: Request,
    owner: Option<u64>,
    entries: &mut [u64],
    a: u64,
    leaf: Leaf,
    counters: &mut WalkCounters,
) -> Result<Option<WalkStop>, Error> {
    let b = a.wrapping_add((entries.len() as u64) << super::pfn::PAGE_SHIFT);
    match leaf {
        Leaf::EmptyPtes => return pte_run(vma, request, entries, a, None, 0, false, counters),
        Leaf::Present(p) if p.order == 0 && !vma.is_hugetlb() => {
            let cpu = if p.protnone {
                0
            } else {
                HmmPfn::cpu_flags(p.write, 0)
            };
            let special = p.special && !p.zero;
            return pte_run(
                vma,
                request,
                entries,
                a,
                Some(p.pfn),
                cpu,
                special,
                counters,
            );
        }
        Leaf::Hole | Leaf::Swap | Leaf::DeviceExclusive => {
            let need = request.need_fault_range(entries, 0);
            if !need.is_empty() {
                return fault_stop(vma, a, b, need);
            }
            fill(entries, 0, counters);
        }
        Leaf::Present(p) => return present(vma, request, entries, a, b, p, counters),
        Leaf::DevicePrivate {
            owner: o,
            pfn,
            write,
            order,
        } => {
            if owner == Some(o) {
                fill_pfns(entries, pfn, HmmPfn::cpu_flags(write, order), counters);
            } else {
                let need = request.need_fault_range(entries, 0);
                if !need.is_empty() {
                    return fault_stop(vma, a, b, need);
                }
                let out = if order > 0 { PfnFlags::ERROR.bits() } else { 0 };
                fill(entries, out, counters);
            }
        }
        Leaf::Migration => {
            if !request.need_fault_range(entries, 0).is_empty() {
                return Ok(Some(WalkStop::WaitMigration { addr: a }));
            }
            fill(entries, 0, counters);
        }
        Leaf::HwPoison => {
            if !request.need_fault_range(entries, 0).is_empty() {
                return Err(Error::Fault);
            }
            fill(entries, 0, counters);
        }
        Leaf::Bad => {
            if !request.need_fault_range(entries, 0).is_empty() {
                return Err(Error::Fault);
            }
            fill(entries, PfnFlags::ERROR.bits(), counters);
        }
    }
    Ok(None)
}

/// A run of PTEs (one or more) with per-PTE semantics, as the kernel's
/// `hmm_vma_handle_pte`: each entry's own need decides, and only the first
/// page that needs a fault is faulted. `pfn` is `None` for none PTEs (output
/// 0); `cpu` is the run's CPU flags; `special` marks special PTEs that are
/// not the zero page (output `ERROR`, `-EFAULT` if requested).
#[allow(clippy::too_many_arguments)]
fn pte_run(
    vma: &Vma<'_>,
    request: Request,
    entries: &mut [u64],
    a: u64,
    pfn: Option<u64>,
    cpu: u64,
    special: bool,
    counters: &mut WalkCounters,
) -> Result<Option<WalkStop>, Error> {
    let mut stop: Option<(usize, NeedFault)> = None;
    if request.may_fault() {
        for (i, &e) in entries.iter().enumerate() {
            let need = request.need_fault(e, cpu);
            let special_request = special && !request.need_fault(e, 0).is_empty();
            if !need.is_empty() || special_request {
                stop = Some((i, need));
                break;
            }
        }
    }
    let filled = stop.map_or(entries.len(), |(i, _)| i);
    let (done, _) = entries.split_at_mut(filled);
    match (pfn, special) {
        (_, true) => fill(done, PfnFlags::ERROR.bits(), counters),
        (Some(pfn), false) => fill_pfns(done, pfn, cpu, counters),
        (None, false) => fill(done, 0, counters),
    }
    let Some((i, need)) = stop else {
        return Ok(None);
    };
    let addr = a.wrapping_add((i as u64) << super::pfn::PAGE_SHIFT);
    if need.is_empty() {
        // A special PTE that was asked for.
        return Err(Error::Fault);
    }
    fault_stop(vma, addr, addr.wrapping_add(PAGE_SIZE), need)
}

fn present(
    vma: &Vma<'_>,
    request: Request,
    entries: &mut [u64],
    a: u64,
    b: u64,
    p: Present,
    counters: &mut WalkCounters,
) -> Result<Option<WalkStop>, Error> {
    let order = if vma.is_hugetlb() {
        vma.hugetlb_order()
    } else {
        p.order
    };
    let cpu = if p.protnone {
        0
    } else {
        HmmPfn::cpu_flags(p.write, order)
    };
    let need = request.need_fault_range(entries, cpu);
    if !need.is_empty() {
        return fault_stop(vma, a, b, need);
    }
    if p.special && !p.zero {
        if !request.need_fault_range(entries, 0).is_empty() {
            return Err(Error::Fault);
        }
        fill(entries, PfnFlags::ERROR.bits(), counters);
        return Ok(None);
    }
    fill_pfns(entries, p.pfn, cpu, counters);
    Ok(None)
}

#[inline]
fn range_index(start: u64, addr: u64) -> usize {
    (addr.wrapping_sub(start) >> super::pfn::PAGE_SHIFT) as usize
}

fn entries_mut<'r, N: ?Sized>(
    range: &'r mut Range<'_, N>,
    a: u64,
    b: u64,
) -> Result<&'r mut [u64], Error> {
    let (i, j) = (range.index(a), range.index(b));
    range.pfns.get_mut(i..j).ok_or(Error::Fault)
}

#[inline]
fn fill(entries: &mut [u64], value: u64, counters: &mut WalkCounters) {
    for e in entries.iter_mut() {
        *e = HmmPfn::sticky_update(*e, value);
    }
    counters.pages_filled = counters.pages_filled.saturating_add(entries.len() as u64);
}

#[inline]
fn fill_pfns(entries: &mut [u64], pfn: u64, cpu: u64, counters: &mut WalkCounters) {
    let mut pfn = pfn;
    for e in entries.iter_mut() {
        *e = HmmPfn::sticky_update(*e, (pfn & PFN_MASK) | cpu);
        pfn = pfn.wrapping_add(1);
    }
    counters.pages_filled = counters.pages_filled.saturating_add(entries.len() as u64);
}
