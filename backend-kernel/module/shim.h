/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The C ABI between hmm_rs's Rust code and its C shim (shim_*.c). Every
 * struct here has a #[repr(C)] twin in ffi.rs; keep them in sync.
 */
#ifndef HMM_RS_SHIM_H
#define HMM_RS_SHIM_H

#include <linux/types.h>

/* Two device-private devices, and two device-coherent ones if configured. */
#define HMM_RS_MAX_DEVICES 4

/* hmm_rs_pfn_devmem() results. */
#define HMM_RS_DEVMEM_NONE	0
#define HMM_RS_DEVMEM_PRIVATE	1
#define HMM_RS_DEVMEM_COHERENT	2

/* Device page-table entry tags (xarray pointer tags, as lib/test_hmm.c). */
#define HMM_RS_TAG_READ		0
#define HMM_RS_TAG_ATOMIC	1
#define HMM_RS_TAG_WRITE	3

/* HMM_DMIRROR_FLAGS: the next device page allocation fails. */
#define HMM_RS_FLAG_FAIL_ALLOC	0x1

/* include/linux/migrate.h's values, restated for Rust (checked in shim_devmem.c). */
#define HMM_RS_MIGRATE_PFN_VALID	0x1
#define HMM_RS_MIGRATE_PFN_MIGRATE	0x2
#define HMM_RS_MIGRATE_PFN_WRITE	0x8
#define HMM_RS_MIGRATE_PFN_SHIFT	6
#define HMM_RS_SELECT_SYSTEM		0x1
#define HMM_RS_SELECT_DEVICE_PRIVATE	0x2
#define HMM_RS_SELECT_DEVICE_COHERENT	0x4

/* Pages per make_device_exclusive_range call. */
#define HMM_RS_EXCLUSIVE_BATCH	64

struct mm_struct;
struct vm_area_struct;
struct hmm_rs_mirror;

/* A VMA as the walker sees it. */
struct hmm_rs_vma {
	struct vm_area_struct *vma;	/* valid while the mmap lock is held */
	u64 start, end, flags;
	u8 hugetlb_order;
};

/* Leaf kinds. */
enum {
	HMM_RS_LEAF_NONE = 0,
	HMM_RS_LEAF_PRESENT = 1,
	HMM_RS_LEAF_SWAP = 2,
	HMM_RS_LEAF_DEVICE_PRIVATE = 3,
	HMM_RS_LEAF_DEVICE_EXCLUSIVE = 4,
	HMM_RS_LEAF_MIGRATION = 5,
	HMM_RS_LEAF_HWPOISON = 6,
	HMM_RS_LEAF_BAD = 7,
};

/* Leaf flags. */
#define HMM_RS_LEAF_WRITE	0x1
#define HMM_RS_LEAF_PROTNONE	0x2
#define HMM_RS_LEAF_SPECIAL	0x4
#define HMM_RS_LEAF_ZERO	0x8

/* One page-table leaf covering [start, end). */
struct hmm_rs_leaf {
	u64 start, end;
	u64 pfn;	/* PFN of the page at start */
	u64 owner;	/* device-private: pgmap->owner */
	u32 kind, flags, order, pad;
};

/*
 * hmm_rs_walk_table(): the PTE words of one PTE table. A plain present PTE
 * (present, not PROT_NONE, not special, not devmap, not the zero page) is
 * its hmm_range_fault() output, HMM_RS_PTE_PLAIN | [HMM_RS_PTE_WRITE] | PFN
 * (= HMM_PFN_VALID, HMM_PFN_WRITE); any other PTE is its leaf kind
 * (HMM_RS_LEAF_*; a none PTE or marker is NONE, the word 0), leaf flags
 * (HMM_RS_LEAF_WRITE ...), the index of its device-private owner in
 * owners[] and its PFN (present and device-private entries).
 */
#define HMM_RS_PTE_PLAIN	(1ULL << 63)
#define HMM_RS_PTE_WRITE	(1ULL << 62)
#define HMM_RS_PTE_PFN_MASK	((1ULL << 52) - 1)
#define HMM_RS_PTE_FLAGS_SHIFT	52	/* 4 bits */
#define HMM_RS_PTE_KIND_SHIFT	56	/* 4 bits */
#define HMM_RS_PTE_OWNER_SHIFT	60	/* 3 bits */
#define HMM_RS_PTE_OWNERS	8
/* Words per hmm_rs_walk_table() call: one PTE table. */
#define HMM_RS_PTE_TABLE	512

/* What one hmm_rs_walk_table() call reported besides the words. */
struct hmm_rs_table {
	u64 owners[HMM_RS_PTE_OWNERS];	/* device-private owners named */
	struct hmm_rs_leaf leaf;	/* the leaf, if nleaves is 1 */
	u64 next;			/* end of what was reported */
	u32 nwords, nowners, nleaves, pad;
};

/*
 * The fields of a struct migrate_vma (the shim builds one from this for
 * each call): src and dst have (end - start) >> PAGE_SHIFT entries.
 */
struct hmm_rs_migrate {
	struct vm_area_struct *vma;
	u64 *src, *dst;
	u64 start, end;
	u64 owner;	/* pgmap_owner */
	u64 fault_pfn;	/* the faulting device page, or 0 */
	u64 npages, cpages;
	u32 flags;	/* HMM_RS_SELECT_* */
	u32 pad;
};

/* hmm_rs_fault() results. */
enum {
	HMM_RS_FAULT_DONE = 0,
	HMM_RS_FAULT_ERROR = 1,
	HMM_RS_FAULT_RETRY = 2,		/* lock released */
	HMM_RS_FAULT_COMPLETED = 3,	/* lock released */
	HMM_RS_FAULT_WOULDBLOCK = 4,
};

enum {
	HMM_RS_FAULT_ERR_OOM = 1,
	HMM_RS_FAULT_ERR_SIGBUS = 2,
	HMM_RS_FAULT_ERR_SIGSEGV = 3,
	HMM_RS_FAULT_ERR_HWPOISON = 4,
};

/* shim_mm.c: the mm wrappers */
int hmm_rs_mmap_read_lock(struct mm_struct *mm, bool killable);
void hmm_rs_mmap_read_unlock(struct mm_struct *mm);
bool hmm_rs_mmget_not_zero(struct mm_struct *mm);
void hmm_rs_mmput(struct mm_struct *mm);
bool hmm_rs_find_vma(struct mm_struct *mm, u64 addr, struct hmm_rs_vma *out);
bool hmm_rs_fatal_signal_pending(void);
u64 hmm_rs_ktime_get_coarse_ns(void);
u32 hmm_rs_fault(struct mm_struct *mm, u64 addr, u32 flags, u32 *error);
void hmm_rs_migration_wait(struct mm_struct *mm, u64 addr);
u64 hmm_rs_zero_pfn(void);
int hmm_rs_vma_insert_zeroed_page(struct vm_area_struct *vma, u64 addr);
void hmm_rs_vma_bounds(struct vm_area_struct *vma, u64 *start, u64 *end);

/* shim_walk.c: the page-table reader */
int hmm_rs_walk(struct mm_struct *mm, struct vm_area_struct *vma, u64 start,
		u64 end, struct hmm_rs_leaf *out, u32 cap, u64 *next);
int hmm_rs_walk_table(struct mm_struct *mm, struct vm_area_struct *vma,
		      u64 start, u64 end, u64 *words, u32 cap,
		      struct hmm_rs_table *table);

/* shim_mirror.c: devices, mirrors, their notifier and device page table */
u64 hmm_rs_unlocked_timeout_ns(void);
struct mm_struct *hmm_rs_mirror_mm(struct hmm_rs_mirror *m);
u64 hmm_rs_mirror_owner(struct hmm_rs_mirror *m);
void hmm_rs_mirror_set_flags(struct hmm_rs_mirror *m, u64 flags);
u64 hmm_rs_read_begin(struct hmm_rs_mirror *m);
bool hmm_rs_check_retry(struct hmm_rs_mirror *m, u64 seq);
bool hmm_rs_read_retry(struct hmm_rs_mirror *m, u64 seq);
void hmm_rs_set_seq(struct hmm_rs_mirror *m, u64 seq);
void hmm_rs_mutex_lock(struct hmm_rs_mirror *m);
bool hmm_rs_mutex_trylock(struct hmm_rs_mirror *m);
void hmm_rs_mutex_unlock(struct hmm_rs_mirror *m);
int hmm_rs_pt_store(struct hmm_rs_mirror *m, u64 vpfn, u64 pfn, u32 tag);
bool hmm_rs_pt_any_atomic(struct hmm_rs_mirror *m, u64 vpfn_start,
			  u64 vpfn_last);
void hmm_rs_pt_erase(struct hmm_rs_mirror *m, u64 vpfn_start, u64 vpfn_last);
int hmm_rs_pt_read_page(struct hmm_rs_mirror *m, u64 vpfn, void *dst);
int hmm_rs_pt_write_page(struct hmm_rs_mirror *m, u64 vpfn, const void *src);
int hmm_rs_register(void);
void hmm_rs_unregister(void);

/* shim_devmem.c: device memory, migration, exclusive access */
struct hmm_rs_device;
u64 hmm_rs_devmem_alloc(struct hmm_rs_mirror *m);
u32 hmm_rs_pfn_devmem(u64 pfn, u64 *owner);
bool hmm_rs_mirror_coherent(struct hmm_rs_mirror *m);
void hmm_rs_devmem_pfn_bounds(u64 *lo, u64 *hi);
u64 hmm_rs_devmem_backing_pfn(u64 dpfn);
void hmm_rs_devmem_unmap(u64 dpfn, u64 addr);
void hmm_rs_copy_page(u64 dst_pfn, u64 src_pfn);
u64 hmm_rs_alloc_sys_page(struct vm_area_struct *vma, u64 addr);
int hmm_rs_migrate_setup(struct hmm_rs_migrate *m);
void hmm_rs_migrate_pages(struct hmm_rs_migrate *m);
void hmm_rs_migrate_finalize(struct hmm_rs_migrate *m);
int hmm_rs_migrate_device_range(u64 *src, u64 start_pfn, u64 npages);
void hmm_rs_migrate_device_pages(u64 *src, u64 *dst, u64 npages);
void hmm_rs_migrate_device_finalize(u64 *src, u64 *dst, u64 npages);
void hmm_rs_devmem_remove(struct hmm_rs_device *d);
void hmm_rs_mirror_release_devmem(struct hmm_rs_mirror *m);
int hmm_rs_make_exclusive(struct mm_struct *mm, u64 start, u64 end,
			  u64 *pfns);
void hmm_rs_exclusive_done(const u64 *pfns, u32 n);

/* Rust (mirror.rs) */
bool hmm_rs_mirror_invalidate(struct hmm_rs_mirror *m, u64 start, u64 end,
			      bool blockable, u64 cur_seq, u64 migrate_owner);
long hmm_rs_mirror_ioctl(struct hmm_rs_mirror *m, unsigned int cmd,
			 unsigned long arg);
int hmm_rs_mirror_mmap(struct hmm_rs_mirror *m, struct vm_area_struct *vma);

/* Rust (devmem.rs) */
void hmm_rs_devmem_evict(u64 start_pfn, u64 npages);
int hmm_rs_devmem_fault(struct vm_area_struct *vma, u64 addr, u64 dpfn,
			u64 owner);

#endif
