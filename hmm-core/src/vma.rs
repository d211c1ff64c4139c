//! VMAs as the walker sees them: a range, `vm_flags`, and the hugetlb page
//! order.
//!
//! A [`Vma`] is borrowed from a read guard (its lifetime is the guard's), so
//! no VMA survives a fault that drops the mmap lock: the guard is moved into
//! the fault handler and every `Vma` borrowed from it is dead at that point.

use core::marker::PhantomData;

hmm_bitflags! {
    /// The `vm_flags` bits the walker and fault path look at. Values are
    /// Linux's, so a kernel backend can pass `vma->vm_flags` through
    /// [`VmFlags::from_bits_truncate`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct VmFlags: u64 {
        /// `VM_READ`.
        const READ = 0x0000_0001;
        /// `VM_WRITE`.
        const WRITE = 0x0000_0002;
        /// `VM_EXEC`.
        const EXEC = 0x0000_0004;
        /// `VM_SHARED`.
        const SHARED = 0x0000_0008;
        /// `VM_PFNMAP`: raw PFNs, no `struct page`.
        const PFNMAP = 0x0000_0400;
        /// `VM_IO`: memory-mapped I/O.
        const IO = 0x0000_4000;
        /// `VM_HUGETLB`: a hugetlbfs mapping.
        const HUGETLB = 0x0040_0000;
        /// `VM_MIXEDMAP`: struct pages and raw PFNs mixed.
        const MIXEDMAP = 0x1000_0000;
        /// `VM_HUGEPAGE`: `MADV_HUGEPAGE` was applied.
        const HUGEPAGE = 0x2000_0000;
    }
}

/// One VMA, borrowed from the read guard that found it.
///
/// # Invariants
///
/// `start < end`, both page aligned, when made by [`Vma::new`] with valid
/// input; the walker re-checks and treats a violating backend as `-EFAULT`
/// rather than trusting it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vma<'g> {
    start: u64,
    end: u64,
    flags: VmFlags,
    hugetlb_order: u8,
    _guard: PhantomData<&'g ()>,
}

impl<'g> Vma<'g> {
    /// A VMA covering `[start, end)`. `hugetlb_order` is the huge page order
    /// of a `VM_HUGETLB` VMA (9 for 2 MiB, 18 for 1 GiB) and ignored
    /// otherwise.
    pub const fn new(start: u64, end: u64, flags: VmFlags, hugetlb_order: u8) -> Self {
        Vma {
            start,
            end,
            flags,
            hugetlb_order,
            _guard: PhantomData,
        }
    }
    /// First address.
    pub const fn start(&self) -> u64 {
        self.start
    }
    /// One past the last address.
    pub const fn end(&self) -> u64 {
        self.end
    }
    /// The flags.
    pub const fn flags(&self) -> VmFlags {
        self.flags
    }
    /// Whether this is a hugetlb VMA.
    pub const fn is_hugetlb(&self) -> bool {
        self.flags.contains(VmFlags::HUGETLB)
    }
    /// Huge page order of a hugetlb VMA, 0 otherwise.
    pub const fn hugetlb_order(&self) -> u8 {
        if self.is_hugetlb() {
            self.hugetlb_order
        } else {
            0
        }
    }
    /// Whether HMM may mirror it (`hmm_vma_walk_test`): not `VM_IO`, not
    /// `VM_PFNMAP`, and `VM_READ`. `VM_MIXEDMAP` is allowed.
    pub const fn is_mirrorable(&self) -> bool {
        !self.flags.intersects(VmFlags::IO.union(VmFlags::PFNMAP))
            && self.flags.contains(VmFlags::READ)
    }
    /// Whether `addr` lies inside.
    pub const fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrorable_rules() {
        let v = |f| Vma::new(0, 4096, f, 0).is_mirrorable();
        assert!(v(VmFlags::READ));
        assert!(v(VmFlags::READ | VmFlags::WRITE | VmFlags::MIXEDMAP));
        assert!(!v(VmFlags::WRITE));
        assert!(!v(VmFlags::READ | VmFlags::IO));
        assert!(!v(VmFlags::READ | VmFlags::PFNMAP));
    }

    #[test]
    fn hugetlb_order_only_for_hugetlb() {
        assert_eq!(Vma::new(0, 1 << 21, VmFlags::READ, 9).hugetlb_order(), 0);
        let h = Vma::new(0, 1 << 21, VmFlags::READ | VmFlags::HUGETLB, 9);
        assert_eq!(h.hugetlb_order(), 9);
        assert!(h.contains(0) && !h.contains(1 << 21));
    }
}
