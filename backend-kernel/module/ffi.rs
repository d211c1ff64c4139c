// SPDX-License-Identifier: GPL-2.0

//! The C ABI of the shim (`shim.h`): opaque kernel types, the `#[repr(C)]`
//! twins of its structs, its constants and its functions.
//!
//! Every function here is implemented in the C shim (`shim_*.c`) except
//! the callbacks at the end of `shim.h`, which `mirror.rs` and `devmem.rs`
//! define for the C side to call.

use core::ffi::{c_int, c_void};

/// `struct mm_struct` (opaque).
#[repr(C)]
pub(crate) struct MmStruct {
    _private: [u8; 0],
}

/// `struct vm_area_struct` (opaque).
#[repr(C)]
pub(crate) struct VmAreaStruct {
    _private: [u8; 0],
}

/// `struct hmm_rs_mirror` (opaque): the per-open kernel objects.
#[repr(C)]
pub(crate) struct RawMirror {
    _private: [u8; 0],
}

impl Default for RawVma {
    fn default() -> Self {
        RawVma {
            vma: core::ptr::null_mut(),
            start: 0,
            end: 0,
            flags: 0,
            hugetlb_order: 0,
        }
    }
}

/// `struct hmm_rs_vma`.
#[repr(C)]
pub(crate) struct RawVma {
    pub(crate) vma: *mut VmAreaStruct,
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) flags: u64,
    pub(crate) hugetlb_order: u8,
}

/// `struct hmm_rs_leaf`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
pub(crate) struct RawLeaf {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) pfn: u64,
    pub(crate) owner: u64,
    pub(crate) kind: u32,
    pub(crate) flags: u32,
    pub(crate) order: u32,
    pub(crate) pad: u32,
}

/// `struct hmm_rs_table`: what one `hmm_rs_walk_table` call reported
/// besides its PTE words.
#[repr(C)]
#[derive(Default)]
pub(crate) struct RawTable {
    pub(crate) owners: [u64; PTE_OWNERS],
    pub(crate) leaf: RawLeaf,
    pub(crate) next: u64,
    pub(crate) nwords: u32,
    pub(crate) nowners: u32,
    pub(crate) nleaves: u32,
    pub(crate) pad: u32,
}

/// `struct hmm_rs_migrate`: the fields of a `struct migrate_vma`.
#[repr(C)]
pub(crate) struct RawMigrate {
    pub(crate) vma: *mut VmAreaStruct,
    pub(crate) src: *mut u64,
    pub(crate) dst: *mut u64,
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) owner: u64,
    pub(crate) fault_pfn: u64,
    pub(crate) npages: u64,
    pub(crate) cpages: u64,
    pub(crate) flags: u32,
    pub(crate) pad: u32,
}

pub(crate) const TAG_READ: u32 = 0;
pub(crate) const TAG_ATOMIC: u32 = 1;
pub(crate) const TAG_WRITE: u32 = 3;

pub(crate) const MIGRATE_PFN_VALID: u64 = 0x1;
pub(crate) const MIGRATE_PFN_MIGRATE: u64 = 0x2;
pub(crate) const MIGRATE_PFN_WRITE: u64 = 0x8;
pub(crate) const MIGRATE_PFN_SHIFT: u32 = 6;
pub(crate) const SELECT_SYSTEM: u32 = 0x1;
pub(crate) const SELECT_DEVICE_PRIVATE: u32 = 0x2;
pub(crate) const SELECT_DEVICE_COHERENT: u32 = 0x4;

pub(crate) const DEVMEM_PRIVATE: u32 = 1;
pub(crate) const DEVMEM_COHERENT: u32 = 2;

pub(crate) const EXCLUSIVE_BATCH: usize = 64;

/// `vm_flags` bits.
pub(crate) const VM_READ: u64 = 0x1;
pub(crate) const VM_WRITE: u64 = 0x2;

pub(crate) const LEAF_NONE: u32 = 0;
pub(crate) const LEAF_PRESENT: u32 = 1;
pub(crate) const LEAF_SWAP: u32 = 2;
pub(crate) const LEAF_DEVICE_PRIVATE: u32 = 3;
pub(crate) const LEAF_DEVICE_EXCLUSIVE: u32 = 4;
pub(crate) const LEAF_MIGRATION: u32 = 5;
pub(crate) const LEAF_HWPOISON: u32 = 6;

pub(crate) const PTE_PLAIN: u64 = 1 << 63;
pub(crate) const PTE_WRITE: u64 = 1 << 62;
pub(crate) const PTE_PFN_MASK: u64 = (1 << 52) - 1;
pub(crate) const PTE_FLAGS_SHIFT: u32 = 52;
pub(crate) const PTE_KIND_SHIFT: u32 = 56;
pub(crate) const PTE_OWNER_SHIFT: u32 = 60;
pub(crate) const PTE_OWNERS: usize = 8;
pub(crate) const PTE_TABLE: usize = 512;

pub(crate) const LEAF_WRITE: u32 = 0x1;
pub(crate) const LEAF_PROTNONE: u32 = 0x2;
pub(crate) const LEAF_SPECIAL: u32 = 0x4;
pub(crate) const LEAF_ZERO: u32 = 0x8;

pub(crate) const FAULT_DONE: u32 = 0;
pub(crate) const FAULT_RETRY: u32 = 2;
pub(crate) const FAULT_COMPLETED: u32 = 3;
pub(crate) const FAULT_WOULDBLOCK: u32 = 4;

pub(crate) const FAULT_ERR_OOM: u32 = 1;
pub(crate) const FAULT_ERR_SIGSEGV: u32 = 3;
pub(crate) const FAULT_ERR_HWPOISON: u32 = 4;

extern "C" {
    pub(crate) fn hmm_rs_mmap_read_lock(mm: *mut MmStruct, killable: bool) -> c_int;
    pub(crate) fn hmm_rs_mmap_read_unlock(mm: *mut MmStruct);
    pub(crate) fn hmm_rs_mmget_not_zero(mm: *mut MmStruct) -> bool;
    pub(crate) fn hmm_rs_mmput(mm: *mut MmStruct);
    pub(crate) fn hmm_rs_find_vma(mm: *mut MmStruct, addr: u64, out: *mut RawVma) -> bool;
    pub(crate) fn hmm_rs_fatal_signal_pending() -> bool;
    pub(crate) fn hmm_rs_ktime_get_coarse_ns() -> u64;
    pub(crate) fn hmm_rs_zero_pfn() -> u64;
    pub(crate) fn hmm_rs_unlocked_timeout_ns() -> u64;
    pub(crate) fn hmm_rs_fault(mm: *mut MmStruct, addr: u64, flags: u32, error: *mut u32) -> u32;
    pub(crate) fn hmm_rs_migration_wait(mm: *mut MmStruct, addr: u64);
    pub(crate) fn hmm_rs_walk(
        mm: *mut MmStruct,
        vma: *mut VmAreaStruct,
        start: u64,
        end: u64,
        out: *mut RawLeaf,
        cap: u32,
        next: *mut u64,
    ) -> c_int;
    pub(crate) fn hmm_rs_walk_table(
        mm: *mut MmStruct,
        vma: *mut VmAreaStruct,
        start: u64,
        end: u64,
        words: *mut u64,
        cap: u32,
        table: *mut RawTable,
    ) -> c_int;
    pub(crate) fn hmm_rs_mirror_mm(m: *mut RawMirror) -> *mut MmStruct;
    pub(crate) fn hmm_rs_mirror_owner(m: *mut RawMirror) -> u64;
    pub(crate) fn hmm_rs_mirror_set_flags(m: *mut RawMirror, flags: u64);
    pub(crate) fn hmm_rs_read_begin(m: *mut RawMirror) -> u64;
    pub(crate) fn hmm_rs_check_retry(m: *mut RawMirror, seq: u64) -> bool;
    pub(crate) fn hmm_rs_read_retry(m: *mut RawMirror, seq: u64) -> bool;
    pub(crate) fn hmm_rs_set_seq(m: *mut RawMirror, seq: u64);
    pub(crate) fn hmm_rs_mutex_lock(m: *mut RawMirror);
    pub(crate) fn hmm_rs_mutex_trylock(m: *mut RawMirror) -> bool;
    pub(crate) fn hmm_rs_mutex_unlock(m: *mut RawMirror);
    pub(crate) fn hmm_rs_pt_store(m: *mut RawMirror, vpfn: u64, pfn: u64, tag: u32) -> c_int;
    pub(crate) fn hmm_rs_pt_any_atomic(m: *mut RawMirror, vpfn_start: u64, vpfn_last: u64) -> bool;
    pub(crate) fn hmm_rs_pt_erase(m: *mut RawMirror, vpfn_start: u64, vpfn_last: u64);
    pub(crate) fn hmm_rs_pt_read_page(m: *mut RawMirror, vpfn: u64, dst: *mut c_void) -> c_int;
    pub(crate) fn hmm_rs_pt_write_page(m: *mut RawMirror, vpfn: u64, src: *const c_void) -> c_int;
    pub(crate) fn hmm_rs_vma_insert_zeroed_page(vma: *mut VmAreaStruct, addr: u64) -> c_int;
    pub(crate) fn hmm_rs_vma_bounds(vma: *mut VmAreaStruct, start: *mut u64, end: *mut u64);
    pub(crate) fn hmm_rs_devmem_alloc(m: *mut RawMirror) -> u64;
    pub(crate) fn hmm_rs_pfn_devmem(pfn: u64, owner: *mut u64) -> u32;
    pub(crate) fn hmm_rs_mirror_coherent(m: *mut RawMirror) -> bool;
    pub(crate) fn hmm_rs_devmem_pfn_bounds(lo: *mut u64, hi: *mut u64);
    pub(crate) fn hmm_rs_devmem_backing_pfn(dpfn: u64) -> u64;
    pub(crate) fn hmm_rs_devmem_unmap(dpfn: u64, addr: u64);
    pub(crate) fn hmm_rs_copy_page(dst_pfn: u64, src_pfn: u64);
    pub(crate) fn hmm_rs_alloc_sys_page(vma: *mut VmAreaStruct, addr: u64) -> u64;
    pub(crate) fn hmm_rs_migrate_setup(m: *mut RawMigrate) -> c_int;
    pub(crate) fn hmm_rs_migrate_pages(m: *mut RawMigrate);
    pub(crate) fn hmm_rs_migrate_finalize(m: *mut RawMigrate);
    pub(crate) fn hmm_rs_migrate_device_range(src: *mut u64, start_pfn: u64, npages: u64) -> c_int;
    pub(crate) fn hmm_rs_migrate_device_pages(src: *mut u64, dst: *mut u64, npages: u64);
    pub(crate) fn hmm_rs_migrate_device_finalize(src: *mut u64, dst: *mut u64, npages: u64);
    pub(crate) fn hmm_rs_mirror_release_devmem(m: *mut RawMirror);
    pub(crate) fn hmm_rs_make_exclusive(
        mm: *mut MmStruct,
        start: u64,
        end: u64,
        pfns: *mut u64,
    ) -> c_int;
    pub(crate) fn hmm_rs_exclusive_done(pfns: *const u64, n: u32);
    pub(crate) fn hmm_rs_register() -> c_int;
    pub(crate) fn hmm_rs_unregister();
}
