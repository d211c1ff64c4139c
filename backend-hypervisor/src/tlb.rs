//! The TLB-flush hook: how the page-table engine asks the caller to drop
//! cached second-stage translations.

/// Invalidation of cached second-stage translations, implemented by the
/// caller for its architecture and its set of vCPUs.
///
/// The engine calls [`flush_range`](TlbFlush::flush_range) after it removed
/// or weakened mappings and before it reuses or frees anything the old
/// entries pointed at (break-before-make). The call must not return before
/// every CPU that may run the guest has stopped using translations for the
/// range, including cached intermediate (non-leaf) entries:
///
/// * x86: `INVEPT` (single-context for the EPTP) on every CPU that may hold
///   the EPT's translations, e.g. by IPI;
/// * Arm: `DSB ISHST`, `TLBI IPAS2E1IS` for each page (or `TLBI VMALLS12E1IS`
///   for large ranges), `DSB ISH`, then `TLBI VMALLE1IS`, `DSB ISH`, `ISB`
///   (combined stage-1+2 entries are tagged by VA, not IPA).
pub trait TlbFlush {
    /// Invalidate translations of guest-physical `[start, end)`.
    fn flush_range(&self, start: u64, end: u64);
}

impl<T: TlbFlush + ?Sized> TlbFlush for &T {
    fn flush_range(&self, start: u64, end: u64) {
        (**self).flush_range(start, end)
    }
}
