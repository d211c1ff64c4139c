//! Page-table leaves: what a backend's page-table reader reports for each
//! span of the address space.
//!
//! A backend walks its page tables (four levels, 512 entries per table) and
//! reports, in address order, one [`Leaf`] per span:
//!
//! * a PTE covers one page. A backend may report a *run* of PTEs as one
//!   span, the way the kernel batches PTEs of one folio: [`Leaf::Present`]
//!   with order 0 over several pages means consecutive PTEs mapping
//!   consecutive PFNs with identical flags, and [`Leaf::EmptyPtes`] means
//!   consecutive none (or marker) PTEs. Runs keep per-PTE semantics: the
//!   walker decides each entry on its own and faults only the first page
//!   that needs it, exactly as if each PTE had been reported alone;
//! * a PMD or PUD leaf (THP, hugetlb, device-private THP) covers its whole
//!   extent, clipped to the requested range;
//! * an empty entry above the PTE level ([`Leaf::Hole`]) covers that entry's
//!   extent (up to 2 MiB for a none PMD, and so on); a none PTE reported
//!   alone may also use it. As in the kernel, such a hole is the unit of a
//!   hole fault: if any entry in it needs a fault, the whole span is
//!   faulted.
//! * every other kind (swap, migration, device-private PTE, ...) covers one
//!   page, or its PMD extent for the PMD-level kinds.
//!
//! For spans longer than a page the `pfn` fields give the PFN of the span's
//! first page; the page at `start + i * PAGE_SIZE` has `pfn + i`.

/// A present mapping (`pte_present`, `pmd_trans_huge`, `pud_leaf`, or a
/// present hugetlb entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Present {
    /// PFN of the span's first page.
    pub pfn: u64,
    /// Mapping order: 0 for a PTE, 9 for a PMD leaf, 18 for a PUD leaf.
    pub order: u8,
    /// The entry is writable.
    pub write: bool,
    /// `PROT_NONE` (NUMA hinting) entry: present but reported with no flags.
    pub protnone: bool,
    /// Special entry without a normal page (`!vm_normal_page`), e.g. a raw
    /// PFN in a `VM_MIXEDMAP` VMA.
    pub special: bool,
    /// The shared zero page (reported as a normal read-only page).
    pub zero: bool,
}

/// One page-table leaf, as classified by the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leaf {
    /// A hole: no entry (`pmd_none`, `!pud_present`, or a single
    /// `pte_none`), or a single PTE marker (uffd-wp marker, guard region,
    /// poison marker). If any page of the span needs a fault, the whole span
    /// is faulted (see the module docs).
    Hole,
    /// A run of empty (none or marker) PTEs, each decided on its own: only
    /// the first page that needs a fault is faulted. Unlike [`Leaf::Hole`],
    /// never faulted as a whole.
    EmptyPtes,
    /// A present mapping.
    Present(Present),
    /// A swap entry: faultable (swap-in).
    Swap,
    /// A device-private entry. Reported without a fault when `owner` equals
    /// the range's `dev_private_owner`; faulted (migrated to RAM) otherwise.
    DevicePrivate {
        /// The `pgmap->owner` token of the device memory.
        owner: u64,
        /// Device PFN of the span's first page.
        pfn: u64,
        /// Writable device-private entry.
        write: bool,
        /// 0 for a PTE, 9 for a device-private THP PMD.
        order: u8,
    },
    /// A device-exclusive entry: a fault restores the normal PTE.
    DeviceExclusive,
    /// A migration entry (PTE or PMD): a fault waits for the migration to
    /// finish and re-walks.
    Migration,
    /// A hardware-poisoned entry: cannot be faulted.
    HwPoison,
    /// A corrupt or unknown entry (`pmd_bad`, an absent PMD that is neither
    /// migration nor device-private).
    Bad,
}
