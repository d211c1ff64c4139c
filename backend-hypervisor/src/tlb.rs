//! The TLB and barrier hook: how the page-table engine asks the caller to
//! drop cached second-stage translations and to make new descriptors
//! visible to the hardware walkers.

use super::descriptor::PageSize;

/// Invalidation of cached second-stage translations and publication of new
/// descriptors, implemented by the caller for its architecture and its set
/// of vCPUs.
///
/// **Removal and downgrade.** The engine calls
/// [`flush_range`](TlbFlush::flush_range) after it removed or weakened
/// mappings and before it reuses or frees anything the old entries pointed
/// at (break-before-make). The call must not return before every CPU that
/// may run the guest has stopped using translations for the range,
/// including cached intermediate (non-leaf) entries:
///
/// * x86: `INVEPT` (single-context for the EPTP) on every CPU that may hold
///   the EPT's translations, e.g. by IPI ([`vmx::Invept`](super::vmx::Invept));
/// * Arm: `DSB ISHST`, `TLBI IPAS2E1IS` for each page (or `TLBI VMALLS12E1IS`
///   for large ranges), `DSB ISH`, then `TLBI VMALLE1IS`, `DSB ISH`, `ISB`
///   (combined stage-1+2 entries are tagged by VA, not IPA).
///
/// **Upgrade.** When a live leaf only gains permissions (same output, same
/// memory type), the engine rewrites it in place and calls
/// [`flush_upgrade`](TlbFlush::flush_upgrade) for that leaf; the guest-fault
/// path also calls it when a fault finds the leaf already allowing the
/// access (the faulting CPU holds a stale, narrower translation). The
/// architectures let a TLB keep a translation that caused a permission
/// fault, so without this the guest could fault again and again on a
/// mapping that is already right. Only the calling CPU needs it: a CPU
/// still holding the narrower translation faults, and its own fault finds
/// the leaf wide and flushes there.
///
/// * Arm (as KVM's `kvm_pgtable_stage2_relax_perms`): `DSB ISHST` (the new
///   descriptor reaches the walkers), `TLBI IPAS2E1` for the leaf's IPA,
///   `DSB NSH`, `TLBI VMALLE1`, `DSB NSH`, `ISB`, in the guest's VMID;
/// * x86: nothing; an EPT violation itself invalidates the cached
///   guest-physical mappings used for the faulting address (Intel SDM
///   Vol. 3C, "Operations that Invalidate Cached Mappings").
///
/// The default is [`flush_range`](TlbFlush::flush_range) over the leaf,
/// which is always correct, only slower.
///
/// **Publication.** After the guest-fault path wrote new descriptors (of a
/// fault's whole batch of leaves) and before the vCPU re-enters the guest,
/// it calls [`publish`](TlbFlush::publish): on Arm a `DSB ISHST`, so that
/// the walker cannot miss the new entries and fault again (KVM ends
/// `kvm_pgtable_stage2_map` with one). x86 needs nothing (stores are seen
/// in order and VM entry serializes); the default does nothing.
pub trait TlbFlush {
    /// Invalidate translations of guest-physical `[start, end)` on every
    /// CPU that may run the guest.
    fn flush_range(&self, start: u64, end: u64);

    /// Drop the calling CPU's cached translations of the one leaf of
    /// `size` at `gpa` whose permissions were widened in place.
    fn flush_upgrade(&self, gpa: u64, size: PageSize) {
        self.flush_range(gpa, gpa + size.bytes())
    }

    /// Make descriptors written so far visible to the hardware walkers.
    fn publish(&self) {}
}

impl<T: TlbFlush + ?Sized> TlbFlush for &T {
    fn flush_range(&self, start: u64, end: u64) {
        (**self).flush_range(start, end)
    }
    fn flush_upgrade(&self, gpa: u64, size: PageSize) {
        (**self).flush_upgrade(gpa, size)
    }
    fn publish(&self) {
        (**self).publish()
    }
}
