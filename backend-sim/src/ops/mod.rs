//! CPU-side operations on an mm, callable from any thread, one `impl Mm`
//! file per concern as Linux splits them: [`mmap`], unmapping ([`unmap`]),
//! THP splitting ([`thp`]), [`mprotect`], [`madvise`], [`mremap`],
//! [`fork`], page migration with migration entries ([`migrate`]), swap-out
//! and the OOM reaper ([`reclaim`]), [`hwpoison`], device memory
//! ([`device`]: migration to and from device-private memory,
//! device-exclusive entries) and CPU access through the page tables
//! ([`access`]: CPU page faults, COW, `get_user_pages`).
//!
//! Every operation that revokes or changes a mapping runs the MMU notifier
//! invalidation around the page-table change, as Linux does, so device
//! mirrors stay coherent.

use std::sync::atomic::{AtomicU64, Ordering};

use hmm_core::{VmFlags, PAGE_SIZE};

use crate::pagetable::{Pte, PMD_SIZE, PUD_SIZE};

pub mod access;
pub mod device;
pub mod fork;
pub mod hwpoison;
pub mod madvise;
pub mod migrate;
pub mod mmap;
pub mod mprotect;
pub mod mremap;
pub mod reclaim;
pub mod thp;
pub mod unmap;

#[cfg(test)]
mod tests;

/// A page a migration to device memory moved: `(addr, device pfn,
/// writable)`.
pub type MovedPage = (u64, u64, bool);

/// Lowest address the simulated mmap hands out by default.
pub const MMAP_BASE: u64 = 0x10_0000_0000;
/// Permission bits of `vm_flags` that mprotect changes.
const PROT_MASK: VmFlags = VmFlags::READ.union(VmFlags::WRITE).union(VmFlags::EXEC);

fn store(e: &AtomicU64, p: Pte) {
    e.store(p.encode(), Ordering::Release);
}

fn page_aligned(a: u64) -> bool {
    a.is_multiple_of(PAGE_SIZE)
}

/// Size of a PUD leaf, for callers choosing hugetlb sizes.
pub const HUGE_1G: u64 = PUD_SIZE;
/// Size of a PMD leaf.
pub const HUGE_2M: u64 = PMD_SIZE;
