//! Coherence audit: every second-stage leaf must map, page for page, the
//! frame the host page tables map at the backing host address, and may be
//! writable only where the host entry is.
//!
//! This is the invariant the fault and invalidate paths maintain. The audit
//! is a diagnostic for tests and debug builds: it takes the host mmap read
//! lock, then the table lock (the same order as the invalidate callback's
//! region-then-table locks inside a host invalidation), and reads host
//! page tables through hmm-core's [`MmView`]. Run it while the host is
//! quiescent: a host invalidation in flight is correctly blocked by it, but
//! the audit may then see the host mid-change.

use core::ops::ControlFlow;

use hmm_core::{IntervalNotifier, Leaf, MmView, MmapLock, PAGE_SIZE};

use super::alloc::TableAlloc;
use super::descriptor::{Format, Perm};
use super::guest::GuestMemory;
use super::pagetable::Mapping;
use super::tlb::TlbFlush;
use hmm_core::Host;

/// How a second-stage page disagrees with the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mismatch {
    /// The GPA is mapped but lies in no region.
    NoRegion,
    /// No VMA backs the host address.
    NoVma,
    /// The host maps no page (or a non-present entry) there.
    HostNotPresent(Leaf),
    /// The host maps another frame.
    OtherFrame {
        /// The host's PFN.
        host_pfn: u64,
    },
    /// The guest may write but the host entry is read-only.
    WritableOverReadOnly,
}

/// The first disagreement found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disagreement {
    /// The guest page.
    pub gpa: u64,
    /// The second-stage leaf that maps it.
    pub leaf: Mapping,
    /// What is wrong.
    pub what: Mismatch,
}

impl<'h, F, A, T, H, N, const R: usize, const P: usize> GuestMemory<'h, F, A, T, H, N, R, P>
where
    F: Format,
    A: TableAlloc,
    T: TlbFlush,
    H: Host,
    N: IntervalNotifier + ?Sized,
{
    /// Check every second-stage page against the host page tables. Returns
    /// the number of 4 KiB guest pages checked.
    pub fn audit(&self) -> Result<u64, Disagreement> {
        let guard = self.host.env().lock.read();
        let mut result = Ok(0u64);
        self.table.lock().for_each_leaf(&self.alloc, |leaf| {
            if result.is_err() {
                return;
            }
            match self.audit_leaf(&guard, &leaf) {
                Ok(n) => {
                    if let Ok(total) = result.as_mut() {
                        *total += n;
                    }
                }
                Err(d) => result = Err(d),
            }
        });
        result
    }

    fn audit_leaf<G: MmView>(&self, guard: &G, leaf: &Mapping) -> Result<u64, Disagreement> {
        let fail = |gpa, what| Disagreement {
            gpa,
            leaf: *leaf,
            what,
        };
        let end = leaf.gpa + leaf.size.bytes();
        let mut gpa = leaf.gpa;
        while gpa < end {
            let Some(region) = self.regions.find_gpa(gpa) else {
                return Err(fail(gpa, Mismatch::NoRegion));
            };
            let spec = region.spec;
            let stop = end.min(spec.gpa_end());
            let mut hva = spec.hva_of(gpa);
            let hva_end = spec.hva_of(stop);
            while hva < hva_end {
                let Some(vma) = guard.find_vma(hva).filter(|v| v.start() <= hva) else {
                    return Err(fail(spec.gpa_of(hva), Mismatch::NoVma));
                };
                let to = hva_end.min(vma.end());
                let mut bad = None;
                guard.walk_leaves(&vma, hva, to, |a, b, l| {
                    let g = spec.gpa_of(a);
                    let want = (leaf.pa_of(g)) >> 12;
                    let p = match l {
                        Leaf::Present(p) if !p.protnone => p,
                        other => {
                            bad = Some(fail(g, Mismatch::HostNotPresent(other)));
                            return ControlFlow::Break(());
                        }
                    };
                    if p.pfn != want {
                        bad = Some(fail(g, Mismatch::OtherFrame { host_pfn: p.pfn }));
                        return ControlFlow::Break(());
                    }
                    if leaf.attrs.perm.contains(Perm::W) && !p.write {
                        bad = Some(fail(g, Mismatch::WritableOverReadOnly));
                        return ControlFlow::Break(());
                    }
                    let _ = b;
                    ControlFlow::Continue(())
                });
                if let Some(d) = bad {
                    return Err(d);
                }
                hva = to;
            }
            gpa = stop;
        }
        Ok(leaf.size.bytes() / PAGE_SIZE)
    }
}
