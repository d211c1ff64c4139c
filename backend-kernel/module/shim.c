// SPDX-License-Identifier: GPL-2.0
/*
 * C shim of the hmm_rs module.
 *
 * Linux 6.12 has no Rust abstractions for mm, MMU notifiers, xarrays or misc
 * devices, and much of what the Rust side needs is a static inline function
 * or macro. This file owns the kernel objects (the two misc devices, and per
 * open file the interval notifier, the driver mutex and the device page
 * table xarray) and exposes small functions with a plain C ABI. Everything
 * that decides something (the range walk and fault loop of hmm-core, the
 * ioctls, the invalidation of the device page table) is Rust, in
 * hmm_rs_main.rs and its modules; the file operations and the notifier
 * callback are trampolines into it.
 *
 * The page-table reader (hmm_rs_walk) inspects page tables the way
 * mm/hmm.c's callbacks do: PMDs are read locklessly, PTE tables are mapped
 * under RCU without the PTE lock, and consistency comes from the caller's
 * interval-notifier sequence. It reports leaf descriptors in batches and
 * holds no lock other than the caller's mmap read lock when it returns.
 */

#include <linux/fs.h>
#include <linux/highmem.h>
#include <linux/kref.h>
#include <linux/hugetlb.h>
#include <linux/memremap.h>
#include <linux/migrate.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/mmu_notifier.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/pgtable.h>
#include <linux/rcupdate.h>
#include <linux/rmap.h>
#include <linux/sched/mm.h>
#include <linux/sched/signal.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/swapops.h>
#include <linux/timekeeping.h>
#include <linux/xarray.h>

#include "shim.h"

/* The device page-table tags must be valid xarray pointer tags. */
static_assert(HMM_RS_TAG_WRITE <= 3 && HMM_RS_TAG_ATOMIC <= 3);

/* The MIGRATE_PFN_* and MIGRATE_VMA_SELECT_* values shim.h restates. */
static_assert(HMM_RS_MIGRATE_PFN_VALID == MIGRATE_PFN_VALID);
static_assert(HMM_RS_MIGRATE_PFN_MIGRATE == MIGRATE_PFN_MIGRATE);
static_assert(HMM_RS_MIGRATE_PFN_WRITE == MIGRATE_PFN_WRITE);
static_assert(HMM_RS_MIGRATE_PFN_SHIFT == MIGRATE_PFN_SHIFT);
static_assert(HMM_RS_SELECT_SYSTEM == MIGRATE_VMA_SELECT_SYSTEM);
static_assert(HMM_RS_SELECT_DEVICE_PRIVATE == MIGRATE_VMA_SELECT_DEVICE_PRIVATE);
static_assert(HMM_RS_SELECT_DEVICE_COHERENT == MIGRATE_VMA_SELECT_DEVICE_COHERENT);
static_assert(sizeof(unsigned long) == sizeof(u64));

/* Device memory is added in chunks of this size, up to this many. */
#define HMM_RS_CHUNK_SIZE	(256UL << 20)
#define HMM_RS_MAX_CHUNKS	16

struct hmm_rs_device;

/* One chunk of device-private memory: a MEMORY_DEVICE_PRIVATE pagemap. */
struct hmm_rs_chunk {
	struct dev_pagemap pagemap;
	struct hmm_rs_device *dev;
	bool remove;			/* being torn down: page_free keeps
					 * its pages off the free list */
};

/*
 * Per-open state: the mirror of one process address space. Freed when its
 * file is closed and no device page it migrated is left (each such page
 * holds a reference, dropped in page_free).
 */
struct hmm_rs_mirror {
	struct kref ref;
	struct mmu_interval_notifier notifier;
	struct mutex mutex;		/* the driver's update lock */
	struct xarray pt;		/* device page table: vpfn -> page */
	struct hmm_rs_device *dev;	/* the device; also the owner token
					 * (dev_private_owner, pgmap->owner) */
	u64 flags;			/* HMM_DMIRROR_FLAGS value */
};

struct hmm_rs_device {
	struct miscdevice misc;
	char name[32];
	bool registered;

	bool coherent;			/* MEMORY_DEVICE_COHERENT at spm_addr */
	u64 spm_addr;
	struct mutex devmem_lock;	/* chunks[], nchunks */
	struct hmm_rs_chunk *chunks[HMM_RS_MAX_CHUNKS];
	unsigned int nchunks;

	spinlock_t lock;		/* free_pages, calloc, cfree */
	struct page *free_pages;	/* linked through zone_device_data */
	u64 calloc, cfree;
};

static struct hmm_rs_device hmm_rs_devices[HMM_RS_MAX_DEVICES];
static int hmm_rs_ndevices;

/*
 * Device-coherent memory, as test_hmm takes it: the physical addresses of
 * two 256 MiB ranges of soft-reserved memory. With both set, devices 2 and
 * 3 use them as MEMORY_DEVICE_COHERENT memory.
 */
static unsigned long spm_addr_dev0, spm_addr_dev1;
module_param(spm_addr_dev0, ulong, 0444);
MODULE_PARM_DESC(spm_addr_dev0, "start of 256 MiB of soft-reserved memory for device 2 (coherent)");
module_param(spm_addr_dev1, ulong, 0444);
MODULE_PARM_DESC(spm_addr_dev1, "start of 256 MiB of soft-reserved memory for device 3 (coherent)");

/*
 * Retry budget of READ_UNLOCKED per 64-page chunk, in milliseconds, reset
 * by progress; 0 means none (only a fatal signal or an error ends a chunk
 * that never completes). Default: HMM_RANGE_DEFAULT_TIMEOUT.
 */
static unsigned int unlocked_timeout_ms = 1000;
module_param(unlocked_timeout_ms, uint, 0644);
MODULE_PARM_DESC(unlocked_timeout_ms,
		 "READ_UNLOCKED retry budget per chunk in ms (0: none)");

/*
 * Device node name prefix: /dev/<devname>0 and 1. Another prefix lets
 * hmm_rs run beside test_hmm (whose nodes are hmm_dmirror*), as the
 * harness's differential test does.
 */
static char *devname = "hmm_dmirror";
module_param(devname, charp, 0444);
MODULE_PARM_DESC(devname, "device node name prefix (default hmm_dmirror)");

u64 hmm_rs_unlocked_timeout_ns(void)
{
	return (u64)READ_ONCE(unlocked_timeout_ms) * NSEC_PER_MSEC;
}

/* ------------------------------------------------------------------ mm */

int hmm_rs_mmap_read_lock(struct mm_struct *mm, bool killable)
{
	if (killable)
		return mmap_read_lock_killable(mm);
	mmap_read_lock(mm);
	return 0;
}

void hmm_rs_mmap_read_unlock(struct mm_struct *mm)
{
	mmap_read_unlock(mm);
}

bool hmm_rs_mmget_not_zero(struct mm_struct *mm)
{
	return mmget_not_zero(mm);
}

void hmm_rs_mmput(struct mm_struct *mm)
{
	mmput(mm);
}

static u8 hmm_rs_hugetlb_order(struct vm_area_struct *vma)
{
	if (!is_vm_hugetlb_page(vma))
		return 0;
	return (u8)(ilog2(vma_kernel_pagesize(vma)) - PAGE_SHIFT);
}

bool hmm_rs_find_vma(struct mm_struct *mm, u64 addr, struct hmm_rs_vma *out)
{
	struct vm_area_struct *vma = find_vma(mm, addr);

	if (!vma)
		return false;
	out->vma = vma;
	out->start = vma->vm_start;
	out->end = vma->vm_end;
	out->flags = vma->vm_flags;
	out->hugetlb_order = hmm_rs_hugetlb_order(vma);
	return true;
}

bool hmm_rs_fatal_signal_pending(void)
{
	return fatal_signal_pending(current);
}

/*
 * The retry budgets are 1 s; the coarse clock (updated every tick) is a
 * memory read, while ktime_get_ns() reads the clocksource, which under
 * emulation is an expensive device access on every call.
 */
u64 hmm_rs_ktime_get_coarse_ns(void)
{
	return ktime_get_coarse_ns();
}

u64 hmm_rs_zero_pfn(void)
{
	return my_zero_pfn(0);
}

/* --------------------------------------------------------------- faults */

static u32 hmm_rs_fault_error(vm_fault_t ret)
{
	if (ret & VM_FAULT_OOM)
		return HMM_RS_FAULT_ERR_OOM;
	if (ret & (VM_FAULT_HWPOISON | VM_FAULT_HWPOISON_LARGE))
		return HMM_RS_FAULT_ERR_HWPOISON;
	if (ret & VM_FAULT_SIGSEGV)
		return HMM_RS_FAULT_ERR_SIGSEGV;
	return HMM_RS_FAULT_ERR_SIGBUS;
}

/*
 * handle_mm_fault() on the page at @addr with @flags (Linux fault-flag
 * values, passed through). Returns what happened to the mmap lock: on
 * HMM_RS_FAULT_RETRY and HMM_RS_FAULT_COMPLETED the handler released it.
 */
u32 hmm_rs_fault(struct mm_struct *mm, u64 addr, u32 flags, u32 *error)
{
	struct vm_area_struct *vma = vma_lookup(mm, addr);
	vm_fault_t ret;

	*error = 0;
	if (!vma) {
		*error = HMM_RS_FAULT_ERR_SIGSEGV;
		return HMM_RS_FAULT_ERROR;
	}
	ret = handle_mm_fault(vma, addr, flags, NULL);
	if (ret & VM_FAULT_COMPLETED)
		return HMM_RS_FAULT_COMPLETED;
	if (ret & VM_FAULT_RETRY)
		return (flags & FAULT_FLAG_RETRY_NOWAIT) ? HMM_RS_FAULT_WOULDBLOCK
							  : HMM_RS_FAULT_RETRY;
	if (ret & VM_FAULT_ERROR) {
		*error = hmm_rs_fault_error(ret);
		return HMM_RS_FAULT_ERROR;
	}
	return HMM_RS_FAULT_DONE;
}

/*
 * Wait for the migration entry at @addr. migration_entry_wait() and
 * pmd_migration_entry_wait() are not exported to modules; handle_mm_fault()
 * calls exactly them when it meets a PTE or PMD migration entry (and
 * hugetlb_fault() does the same for hugetlb), then returns without touching
 * anything else. The caller only waits where it requires a fault anyway, so
 * a read fault there is what it asked for. No ALLOW_RETRY: the mmap lock is
 * held on return.
 */
void hmm_rs_migration_wait(struct mm_struct *mm, u64 addr)
{
	struct vm_area_struct *vma = vma_lookup(mm, addr);

	if (vma)
		handle_mm_fault(vma, addr, FAULT_FLAG_REMOTE, NULL);
}

/* ------------------------------------------------------ page-table walk */

struct hmm_rs_walker {
	struct hmm_rs_leaf *out;
	u32 n, cap;
};

static bool hmm_rs_emit(struct hmm_rs_walker *w, u64 start, u64 end, u32 kind,
			u64 pfn, u32 flags, u32 order, u64 owner)
{
	struct hmm_rs_leaf *l;

	if (w->n >= w->cap)
		return false;
	l = &w->out[w->n++];
	l->start = start;
	l->end = end;
	l->pfn = pfn;
	l->owner = owner;
	l->kind = kind;
	l->flags = flags;
	l->order = order;
	l->pad = 0;
	return true;
}

/* Classify a non-present, non-none PTE (or hugetlb entry). */
static bool hmm_rs_emit_swap(struct hmm_rs_walker *w, u64 start, u64 end,
			     pte_t pte, u32 order)
{
	swp_entry_t entry = pte_to_swp_entry(pte);

	if (is_device_private_entry(entry)) {
		struct page *page = pfn_swap_entry_to_page(entry);
		u32 fl = is_writable_device_private_entry(entry) ?
				 HMM_RS_LEAF_WRITE : 0;

		return hmm_rs_emit(w, start, end, HMM_RS_LEAF_DEVICE_PRIVATE,
				   swp_offset_pfn(entry), fl, order,
				   (u64)(uintptr_t)page->pgmap->owner);
	}
	if (is_device_exclusive_entry(entry))
		return hmm_rs_emit(w, start, end, HMM_RS_LEAF_DEVICE_EXCLUSIVE,
				   0, 0, order, 0);
	if (is_migration_entry(entry))
		return hmm_rs_emit(w, start, end, HMM_RS_LEAF_MIGRATION, 0, 0,
				   order, 0);
	if (non_swap_entry(entry))
		/* hwpoison and unknown entries: not faultable (mm/hmm.c). */
		return hmm_rs_emit(w, start, end, HMM_RS_LEAF_HWPOISON, 0, 0,
				   order, 0);
	return hmm_rs_emit(w, start, end, HMM_RS_LEAF_SWAP, 0, 0, order, 0);
}

/*
 * The PTEs of one PTE table for [addr, end) (end within one PMD), mapped
 * from @pmdval. The caller holds rcu_read_lock() and read @pmdval inside
 * that same read-side section, as __pte_offset_map() (not exported) does:
 * a PTE table that khugepaged retracts (retract_page_tables) is freed with
 * pte_free_defer(), after a grace period, so it stays valid until the
 * caller's rcu_read_unlock(). No PTE lock: consistency comes from the
 * caller's notifier sequence, as in mm/hmm.c. Returns the address reached
 * (end, or less if the batch is full).
 */
static u64 hmm_rs_walk_ptes(struct hmm_rs_walker *w, pmd_t pmdval, u64 addr,
			    u64 end)
{
	pte_t *ptep;

	RCU_LOCKDEP_WARN(!rcu_read_lock_held(),
			 "hmm_rs_walk_ptes() outside an RCU read-side section");
	ptep = pte_offset_kernel(&pmdval, addr);
	for (; addr < end; addr += PAGE_SIZE, ptep++) {
		pte_t pte = ptep_get(ptep);
		u64 next = addr + PAGE_SIZE;
		bool ok;

		if (pte_none(pte) || is_pte_marker(pte)) {
			ok = hmm_rs_emit(w, addr, next, HMM_RS_LEAF_NONE, 0, 0,
					 0, 0);
		} else if (!pte_present(pte)) {
			ok = hmm_rs_emit_swap(w, addr, next, pte, 0);
		} else {
			u64 pfn = pte_pfn(pte);
			u32 fl = 0;

			if (pte_write(pte))
				fl |= HMM_RS_LEAF_WRITE;
			if (pte_protnone(pte))
				fl |= HMM_RS_LEAF_PROTNONE;
			/*
			 * mm/hmm.c refuses a PTE for which vm_normal_page()
			 * finds no page, unless it is devmap (DAX, P2PDMA)
			 * or the zero page. vm_normal_page() is not
			 * exported; with ARCH_HAS_PTE_SPECIAL (x86) it finds
			 * no page for special PTEs (raw PFNs of VM_PFNMAP /
			 * VM_MIXEDMAP, devmap, the zero page) and, after
			 * reporting a bad PTE, for a non-special PTE beyond
			 * the memmap, which a correct kernel never installs.
			 * The zero page is reported on its own.
			 */
			if (is_zero_pfn(pfn))
				fl |= HMM_RS_LEAF_ZERO;
			else if (pte_special(pte) && !pte_devmap(pte))
				fl |= HMM_RS_LEAF_SPECIAL;
			ok = hmm_rs_emit(w, addr, next, HMM_RS_LEAF_PRESENT, pfn,
					 fl, 0, 0);
		}
		if (!ok)
			break;
	}
	return addr;
}

/*
 * One PMD entry's worth of [addr, end). The PMD is read locklessly inside
 * an RCU read-side section that also covers the walk of the PTE table it
 * points to (see hmm_rs_walk_ptes()): the snapshot that is classified is the
 * one whose table is mapped, and that table cannot be freed before the
 * section ends. mm/hmm.c reads the PMD outside RCU and retries it when
 * pte_offset_map() finds the table gone; reading it inside makes the retry
 * unnecessary.
 */
static u64 hmm_rs_walk_pmd(struct hmm_rs_walker *w, pmd_t *pmdp, u64 addr,
			   u64 end)
{
	u32 order = PMD_SHIFT - PAGE_SHIFT;
	u64 reached;
	pmd_t pmd;

	rcu_read_lock();
	pmd = pmdp_get_lockless(pmdp);
	if (pmd_none(pmd)) {
		reached = hmm_rs_emit(w, addr, end, HMM_RS_LEAF_NONE, 0, 0,
				      order, 0) ? end : addr;
	} else if (thp_migration_supported() && is_pmd_migration_entry(pmd)) {
		reached = hmm_rs_emit(w, addr, end, HMM_RS_LEAF_MIGRATION, 0, 0,
				      order, 0) ? end : addr;
	} else if (!pmd_present(pmd)) {
		/* 6.12 has no device-private PMDs: any other absent PMD. */
		reached = hmm_rs_emit(w, addr, end, HMM_RS_LEAF_BAD, 0, 0,
				      order, 0) ? end : addr;
	} else if (pmd_trans_huge(pmd) || pmd_devmap(pmd)) {
		u64 pfn = pmd_pfn(pmd) + ((addr & ~PMD_MASK) >> PAGE_SHIFT);
		u32 fl = 0;

		if (pmd_write(pmd))
			fl |= HMM_RS_LEAF_WRITE;
		if (pmd_protnone(pmd))
			fl |= HMM_RS_LEAF_PROTNONE;
		reached = hmm_rs_emit(w, addr, end, HMM_RS_LEAF_PRESENT, pfn,
				      fl, order, 0) ? end : addr;
	} else if (pmd_bad(pmd)) {
		reached = hmm_rs_emit(w, addr, end, HMM_RS_LEAF_BAD, 0, 0,
				      order, 0) ? end : addr;
	} else {
		reached = hmm_rs_walk_ptes(w, pmd, addr, end);
	}
	rcu_read_unlock();
	return reached;
}

/* One PUD entry's worth of [addr, end). */
static u64 hmm_rs_walk_pud(struct hmm_rs_walker *w, pud_t *pudp, u64 addr,
			   u64 end)
{
	pud_t pud = READ_ONCE(*pudp);
	u32 order = PUD_SHIFT - PAGE_SHIFT;
	pmd_t *pmdp;
	u64 next;

	if (pud_none(pud) || !pud_present(pud))
		return hmm_rs_emit(w, addr, end, HMM_RS_LEAF_NONE, 0, 0, order,
				   0) ? end : addr;
	if (pud_leaf(pud)) {
		u64 pfn = pud_pfn(pud) + ((addr & ~PUD_MASK) >> PAGE_SHIFT);
		u32 fl = pud_write(pud) ? HMM_RS_LEAF_WRITE : 0;

		return hmm_rs_emit(w, addr, end, HMM_RS_LEAF_PRESENT, pfn, fl,
				   order, 0) ? end : addr;
	}
	if (pud_bad(pud))
		return hmm_rs_emit(w, addr, end, HMM_RS_LEAF_BAD, 0, 0, order,
				   0) ? end : addr;
	pmdp = pmd_offset(pudp, addr);
	for (; addr < end; addr = next, pmdp++) {
		u64 reached;

		next = pmd_addr_end(addr, end);
		reached = hmm_rs_walk_pmd(w, pmdp, addr, next);
		if (reached != next)
			return reached;
	}
	return end;
}

/*
 * The semaphore of hugetlb_vma_lock_read() (not exported), as Linux 6.12
 * defines it: for a shareable mapping the VMA's hugetlb_vma_lock, which
 * keeps a shared PMD table from being unshared and freed; for a private
 * mapping that owns its reservations, the rw_sema of its resv_map, which
 * vm_private_data holds with the flag bits HPAGE_RESV_OWNER (bit 0) and
 * HPAGE_RESV_UNMAPPED (bit 1) of mm/hugetlb.c (__vma_private_lock()).
 * NULL where Linux takes no lock.
 */
#define HMM_RS_HPAGE_RESV_OWNER 1UL
#define HMM_RS_HPAGE_RESV_MASK 3UL

static struct rw_semaphore *hmm_rs_hugetlb_vma_sem(struct vm_area_struct *vma)
{
	unsigned long priv = (unsigned long)vma->vm_private_data;

	if (__vma_shareable_lock(vma))
		return &((struct hugetlb_vma_lock *)vma->vm_private_data)->rw_sema;
	if (!(vma->vm_flags & VM_MAYSHARE) && (priv & ~HMM_RS_HPAGE_RESV_MASK) &&
	    (priv & HMM_RS_HPAGE_RESV_OWNER))
		return &((struct resv_map *)(priv & ~HMM_RS_HPAGE_RESV_MASK))->rw_sema;
	return NULL;
}

/*
 * Hugetlb VMA: one entry per huge page, at the PMD or PUD level. The locking
 * of mm/hmm.c's hugetlb walk: the hugetlb VMA lock (read) for the walk, and
 * each entry read under its huge PTE lock.
 */
static u64 hmm_rs_walk_hugetlb(struct hmm_rs_walker *w,
			       struct vm_area_struct *vma, u64 addr, u64 end)
{
	struct mm_struct *mm = vma->vm_mm;
	struct hstate *h = hstate_vma(vma);
	unsigned long sz = huge_page_size(h);
	u32 order = huge_page_order(h);
	struct rw_semaphore *vma_sem = hmm_rs_hugetlb_vma_sem(vma);

	if (vma_sem)
		down_read(vma_sem);
	while (addr < end) {
		u64 next = min_t(u64, (addr & ~(sz - 1)) + sz, end);
		pgd_t *pgd = pgd_offset(mm, addr);
		p4d_t *p4d;
		pud_t *pud;
		pte_t *ptep = NULL;
		pte_t pte;
		bool ok;

		if (!pgd_none(READ_ONCE(*pgd))) {
			p4d = p4d_offset(pgd, addr);
			if (!p4d_none(READ_ONCE(*p4d))) {
				pud = pud_offset(p4d, addr);
				if (sz == PUD_SIZE)
					ptep = (pte_t *)pud;
				else if (pud_present(READ_ONCE(*pud)))
					ptep = (pte_t *)pmd_offset(pud, addr);
			}
		}
		if (ptep) {
			spinlock_t *ptl = huge_pte_lock(h, mm, ptep);

			pte = huge_ptep_get(mm, addr, ptep);
			spin_unlock(ptl);
		} else {
			pte = __pte(0);
		}
		if (pte_none(pte) || is_pte_marker(pte)) {
			ok = hmm_rs_emit(w, addr, next, HMM_RS_LEAF_NONE, 0, 0,
					 order, 0);
		} else if (!pte_present(pte)) {
			ok = hmm_rs_emit_swap(w, addr, next, pte, order);
		} else {
			u64 pfn = pte_pfn(pte) + ((addr & (sz - 1)) >> PAGE_SHIFT);
			u32 fl = 0;

			if (pte_write(pte))
				fl |= HMM_RS_LEAF_WRITE;
			if (pte_protnone(pte))
				fl |= HMM_RS_LEAF_PROTNONE;
			ok = hmm_rs_emit(w, addr, next, HMM_RS_LEAF_PRESENT, pfn,
					 fl, order, 0);
		}
		if (!ok)
			break;
		addr = next;
	}
	if (vma_sem)
		up_read(vma_sem);
	return addr;
}

/*
 * Report the leaves of [start, end) (page aligned, inside one VMA) into
 * out[0..cap), in address order and without gaps. @vma is the VMA found by
 * hmm_rs_find_vma() under the same mmap read lock, or NULL to look it up.
 * Returns the number of leaves, or -EFAULT if [start, end) is not inside
 * that VMA. *next is the end of the last reported leaf (end if the range
 * is complete).
 */
int hmm_rs_walk(struct mm_struct *mm, struct vm_area_struct *vma, u64 start,
		u64 end, struct hmm_rs_leaf *out, u32 cap, u64 *next)
{
	struct hmm_rs_walker w = { .out = out, .n = 0, .cap = cap };
	u64 addr = start;

	mmap_assert_locked(mm);
	*next = start;
	if (!vma)
		vma = vma_lookup(mm, start);
	if (!vma || vma->vm_mm != mm || start < vma->vm_start ||
	    end > vma->vm_end || start >= end)
		return -EFAULT;
	if (is_vm_hugetlb_page(vma)) {
		*next = hmm_rs_walk_hugetlb(&w, vma, start, end);
		return w.n;
	}
	while (addr < end) {
		pgd_t *pgd = pgd_offset(mm, addr);
		u64 pgd_end = pgd_addr_end(addr, end);
		u64 p4d_end;
		p4d_t *p4d;

		if (pgd_none(READ_ONCE(*pgd))) {
			if (!hmm_rs_emit(&w, addr, pgd_end, HMM_RS_LEAF_NONE,
					 0, 0, 0, 0))
				break;
			addr = pgd_end;
			continue;
		}
		p4d = p4d_offset(pgd, addr);
		p4d_end = p4d_addr_end(addr, end);
		if (p4d_none(READ_ONCE(*p4d))) {
			if (!hmm_rs_emit(&w, addr, p4d_end, HMM_RS_LEAF_NONE,
					 0, 0, 0, 0))
				break;
			addr = p4d_end;
			continue;
		}
		{
			pud_t *pudp = pud_offset(p4d, addr);
			u64 pud_end = pud_addr_end(addr, end);
			u64 reached = hmm_rs_walk_pud(&w, pudp, addr, pud_end);

			addr = reached;
			if (reached != pud_end)
				break;
		}
	}
	*next = addr;
	return w.n;
}

/* --------------------------------------------------- mirror primitives */

struct mm_struct *hmm_rs_mirror_mm(struct hmm_rs_mirror *m)
{
	return m->notifier.mm;
}

u64 hmm_rs_mirror_owner(struct hmm_rs_mirror *m)
{
	return (u64)(uintptr_t)m->dev;
}

void hmm_rs_mirror_set_flags(struct hmm_rs_mirror *m, u64 flags)
{
	WRITE_ONCE(m->flags, flags);
}

u64 hmm_rs_read_begin(struct hmm_rs_mirror *m)
{
	return mmu_interval_read_begin(&m->notifier);
}

bool hmm_rs_check_retry(struct hmm_rs_mirror *m, u64 seq)
{
	return mmu_interval_check_retry(&m->notifier, seq);
}

bool hmm_rs_read_retry(struct hmm_rs_mirror *m, u64 seq)
{
	return mmu_interval_read_retry(&m->notifier, seq);
}

void hmm_rs_set_seq(struct hmm_rs_mirror *m, u64 seq)
{
	mmu_interval_set_seq(&m->notifier, seq);
}

void hmm_rs_mutex_lock(struct hmm_rs_mirror *m)
{
	mutex_lock(&m->mutex);
}

bool hmm_rs_mutex_trylock(struct hmm_rs_mirror *m)
{
	return mutex_trylock(&m->mutex);
}

void hmm_rs_mutex_unlock(struct hmm_rs_mirror *m)
{
	mutex_unlock(&m->mutex);
}

/* Device page table. Entries hold no page reference: they are erased by
 * the invalidate callback before the CPU mapping goes away. */
int hmm_rs_pt_store(struct hmm_rs_mirror *m, u64 vpfn, u64 pfn, u32 tag)
{
	void *entry = pfn_to_page(pfn);

	lockdep_assert_held(&m->mutex);
	if (tag == HMM_RS_TAG_WRITE || tag == HMM_RS_TAG_ATOMIC)
		entry = xa_tag_pointer(entry, tag);
	entry = xa_store(&m->pt, vpfn, entry, GFP_ATOMIC);
	return xa_is_err(entry) ? xa_err(entry) : 0;
}

void hmm_rs_pt_erase(struct hmm_rs_mirror *m, u64 vpfn_start, u64 vpfn_last)
{
	unsigned long index;
	void *entry;

	lockdep_assert_held(&m->mutex);
	xa_for_each_range(&m->pt, index, entry, vpfn_start, vpfn_last)
		xa_erase(&m->pt, index);
}

/* Copy one mirrored page to @dst; -ENOENT if not mirrored. */
int hmm_rs_pt_read_page(struct hmm_rs_mirror *m, u64 vpfn, void *dst)
{
	struct page *page = xa_untag_pointer(xa_load(&m->pt, vpfn));

	lockdep_assert_held(&m->mutex);
	if (!page)
		return -ENOENT;
	memcpy_from_page(dst, page, 0, PAGE_SIZE);
	return 0;
}

/* Whether any existing entry of [vpfn_start, vpfn_last] is atomic. */
bool hmm_rs_pt_any_atomic(struct hmm_rs_mirror *m, u64 vpfn_start,
			  u64 vpfn_last)
{
	unsigned long index;
	void *entry;

	lockdep_assert_held(&m->mutex);
	xa_for_each_range(&m->pt, index, entry, vpfn_start, vpfn_last)
		if (xa_pointer_tag(entry) == HMM_RS_TAG_ATOMIC)
			return true;
	return false;
}

/* Copy @src into one page mirrored writable; -ENOENT if not so mirrored. */
int hmm_rs_pt_write_page(struct hmm_rs_mirror *m, u64 vpfn, const void *src)
{
	void *entry = xa_load(&m->pt, vpfn);
	struct page *page = xa_untag_pointer(entry);

	lockdep_assert_held(&m->mutex);
	if (!page || xa_pointer_tag(entry) != HMM_RS_TAG_WRITE)
		return -ENOENT;
	memcpy_to_page(page, 0, src, PAGE_SIZE);
	return 0;
}

/* ---------------------------------------------------- device memory */

/*
 * Device-private memory, as lib/test_hmm.c simulates it: each device owns
 * chunks of MEMORY_DEVICE_PRIVATE struct pages (no CPU-addressable memory
 * behind them) and a free list of those pages. A device page in use holds,
 * in zone_device_data, the system page that stores its contents (the
 * "backing" page). Which pages migrate, and where, is decided in Rust
 * (devmem.rs); this section owns the pagemaps, the free list and the page
 * primitives.
 */

static const struct dev_pagemap_ops hmm_rs_devmem_ops;

/*
 * PFN bounds [lo, hi) of every chunk either device ever had (they only
 * grow): a PFN outside them is not device memory, which callers check
 * without a call per page. Published before the chunk's pages are.
 */
static DEFINE_SPINLOCK(hmm_rs_devmem_bounds_lock);
static u64 hmm_rs_devmem_lo = U64_MAX, hmm_rs_devmem_hi;

void hmm_rs_devmem_pfn_bounds(u64 *lo, u64 *hi)
{
	*lo = smp_load_acquire(&hmm_rs_devmem_lo);
	*hi = smp_load_acquire(&hmm_rs_devmem_hi);
}

static struct hmm_rs_chunk *hmm_rs_page_chunk(struct page *page)
{
	return container_of(page->pgmap, struct hmm_rs_chunk, pagemap);
}

/* Add one chunk to @d's device memory and its pages to the free list. */
static int hmm_rs_devmem_add_chunk(struct hmm_rs_device *d)
{
	struct hmm_rs_chunk *c;
	struct resource *res;
	unsigned long pfn, first, last;
	void *ptr;
	int ret;

	mutex_lock(&d->devmem_lock);
	/* A coherent device has its one range of memory. */
	if (d->nchunks == (d->coherent ? 1 : HMM_RS_MAX_CHUNKS)) {
		ret = -ENOMEM;
		goto out_unlock;
	}
	c = kzalloc(sizeof(*c), GFP_KERNEL);
	if (!c) {
		ret = -ENOMEM;
		goto out_unlock;
	}
	if (d->coherent) {
		res = NULL;
		c->pagemap.type = MEMORY_DEVICE_COHERENT;
		c->pagemap.range.start = d->spm_addr;
		c->pagemap.range.end = d->spm_addr + HMM_RS_CHUNK_SIZE - 1;
	} else {
		res = request_free_mem_region(&iomem_resource,
					      HMM_RS_CHUNK_SIZE, "hmm_rs");
		if (IS_ERR_OR_NULL(res)) {
			ret = res ? PTR_ERR(res) : -ENOMEM;
			goto out_free;
		}
		c->pagemap.type = MEMORY_DEVICE_PRIVATE;
		c->pagemap.range.start = res->start;
		c->pagemap.range.end = res->end;
	}
	c->pagemap.nr_range = 1;
	c->pagemap.ops = &hmm_rs_devmem_ops;
	c->pagemap.owner = d;
	c->dev = d;
	ptr = memremap_pages(&c->pagemap, numa_node_id());
	if (IS_ERR_OR_NULL(ptr)) {
		ret = ptr ? PTR_ERR(ptr) : -EFAULT;
		goto out_release;
	}
	d->chunks[d->nchunks++] = c;
	mutex_unlock(&d->devmem_lock);

	first = c->pagemap.range.start >> PAGE_SHIFT;
	last = first + (range_len(&c->pagemap.range) >> PAGE_SHIFT);
	spin_lock(&hmm_rs_devmem_bounds_lock);
	if (first < hmm_rs_devmem_lo)
		smp_store_release(&hmm_rs_devmem_lo, first);
	if (last > hmm_rs_devmem_hi)
		smp_store_release(&hmm_rs_devmem_hi, last);
	spin_unlock(&hmm_rs_devmem_bounds_lock);
	spin_lock(&d->lock);
	for (pfn = first; pfn < last; pfn++) {
		struct page *page = pfn_to_page(pfn);

		page->zone_device_data = d->free_pages;
		d->free_pages = page;
	}
	spin_unlock(&d->lock);
	return 0;

out_release:
	if (res)
		release_mem_region(res->start, resource_size(res));
out_free:
	kfree(c);
out_unlock:
	mutex_unlock(&d->devmem_lock);
	return ret;
}

static struct page *hmm_rs_devmem_take_free(struct hmm_rs_device *d)
{
	struct page *page;

	spin_lock(&d->lock);
	page = d->free_pages;
	if (page) {
		d->free_pages = page->zone_device_data;
		d->calloc++;
	}
	spin_unlock(&d->lock);
	return page;
}

/*
 * Allocate one device page of @m's device and return its PFN (the page is
 * locked, as migrate_vma_pages expects), or 0: no memory, or
 * HMM_DMIRROR_FLAG_FAIL_ALLOC was set (and is consumed). A device-private
 * page gets a zeroed backing page; a coherent page is its own storage.
 */
u64 hmm_rs_devmem_alloc(struct hmm_rs_mirror *m)
{
	struct hmm_rs_device *d = m->dev;
	struct page *dpage, *rpage = NULL;

	if (READ_ONCE(m->flags) & HMM_RS_FLAG_FAIL_ALLOC) {
		WRITE_ONCE(m->flags, m->flags & ~HMM_RS_FLAG_FAIL_ALLOC);
		return 0;
	}
	if (!d->coherent) {
		rpage = alloc_page(GFP_HIGHUSER | __GFP_ZERO);
		if (!rpage)
			return 0;
	}
	dpage = hmm_rs_devmem_take_free(d);
	if (!dpage && hmm_rs_devmem_add_chunk(d) == 0)
		dpage = hmm_rs_devmem_take_free(d);
	if (!dpage) {
		if (rpage)
			__free_page(rpage);
		return 0;
	}
	zone_device_page_init(dpage);
	/*
	 * The page names the mirror that maps it (a private page through its
	 * backing page), which it holds a reference on until page_free.
	 */
	kref_get(&m->ref);
	if (rpage) {
		dpage->zone_device_data = rpage;
		rpage->zone_device_data = m;
	} else {
		clear_highpage(dpage);
		dpage->zone_device_data = m;
	}
	return page_to_pfn(dpage);
}

/* The mirror a device page in use names (see hmm_rs_devmem_alloc). */
static struct hmm_rs_mirror *hmm_rs_page_mirror(struct page *dpage)
{
	struct page *rpage;

	if (is_device_coherent_page(dpage))
		return dpage->zone_device_data;
	rpage = dpage->zone_device_data;
	return rpage ? rpage->zone_device_data : NULL;
}

static void hmm_rs_mirror_free(struct kref *ref)
{
	struct hmm_rs_mirror *m = container_of(ref, struct hmm_rs_mirror, ref);

	xa_destroy(&m->pt);
	kfree(m);
}

/*
 * Erase the entry for @addr from the device page table of the mirror that
 * migrated the device page @dpfn (which is leaving the device). The
 * mirror's own MMU_NOTIFY_MIGRATE invalidations are ignored, as in
 * test_hmm, so this is how a page that leaves loses its device mapping.
 */
void hmm_rs_devmem_unmap(u64 dpfn, u64 addr)
{
	struct hmm_rs_mirror *m = hmm_rs_page_mirror(pfn_to_page(dpfn));

	if (!m)
		return;
	mutex_lock(&m->mutex);
	xa_erase(&m->pt, addr >> PAGE_SHIFT);
	mutex_unlock(&m->mutex);
}

/*
 * What the page at @pfn is: HMM_RS_DEVMEM_PRIVATE or _COHERENT device
 * memory (with its pgmap->owner in @owner), or HMM_RS_DEVMEM_NONE.
 */
u32 hmm_rs_pfn_devmem(u64 pfn, u64 *owner)
{
	struct page *page;

	*owner = 0;
	if (!pfn_valid(pfn))
		return HMM_RS_DEVMEM_NONE;
	page = pfn_to_page(pfn);
	if (is_device_private_page(page)) {
		*owner = (u64)(uintptr_t)page->pgmap->owner;
		return HMM_RS_DEVMEM_PRIVATE;
	}
	if (is_device_coherent_page(page)) {
		*owner = (u64)(uintptr_t)page->pgmap->owner;
		return HMM_RS_DEVMEM_COHERENT;
	}
	return HMM_RS_DEVMEM_NONE;
}

bool hmm_rs_mirror_coherent(struct hmm_rs_mirror *m)
{
	return m->dev->coherent;
}

/*
 * The page that holds the contents of the device page @dpfn (in use): its
 * backing page, or for coherent memory the page itself.
 */
u64 hmm_rs_devmem_backing_pfn(u64 dpfn)
{
	struct page *rpage = pfn_to_page(dpfn)->zone_device_data;

	if (is_device_coherent_page(pfn_to_page(dpfn)))
		return dpfn;

	return page_to_pfn(rpage);
}

/* Copy the page @src_pfn to the page @dst_pfn. */
void hmm_rs_copy_page(u64 dst_pfn, u64 src_pfn)
{
	copy_highpage(pfn_to_page(dst_pfn), pfn_to_page(src_pfn));
}

/*
 * A locked system page for @addr of @vma (NULL: any node, and the
 * allocation may not fail, for eviction), or 0.
 */
u64 hmm_rs_alloc_sys_page(struct vm_area_struct *vma, u64 addr)
{
	struct page *page;

	if (vma)
		page = alloc_page_vma(GFP_HIGHUSER_MOVABLE, vma, addr);
	else
		page = alloc_page(GFP_HIGHUSER_MOVABLE | __GFP_NOFAIL);
	if (!page)
		return 0;
	lock_page(page);
	return page_to_pfn(page);
}

static void hmm_rs_to_migrate_vma(struct hmm_rs_migrate *m,
				  struct migrate_vma *args)
{
	memset(args, 0, sizeof(*args));
	args->vma = m->vma;
	args->start = m->start;
	args->end = m->end;
	args->src = (unsigned long *)m->src;
	args->dst = (unsigned long *)m->dst;
	args->pgmap_owner = (void *)(uintptr_t)m->owner;
	args->flags = m->flags;
	args->fault_page = m->fault_pfn ? pfn_to_page(m->fault_pfn) : NULL;
	args->npages = m->npages;
	args->cpages = m->cpages;
}

/* migrate_vma_setup / _pages / _finalize over a struct hmm_rs_migrate. */
int hmm_rs_migrate_setup(struct hmm_rs_migrate *m)
{
	struct migrate_vma args;
	int ret;

	hmm_rs_to_migrate_vma(m, &args);
	ret = migrate_vma_setup(&args);
	m->npages = args.npages;
	m->cpages = args.cpages;
	return ret;
}

void hmm_rs_migrate_pages(struct hmm_rs_migrate *m)
{
	struct migrate_vma args;

	hmm_rs_to_migrate_vma(m, &args);
	migrate_vma_pages(&args);
}

void hmm_rs_migrate_finalize(struct hmm_rs_migrate *m)
{
	struct migrate_vma args;

	hmm_rs_to_migrate_vma(m, &args);
	migrate_vma_finalize(&args);
}

/* The device-PFN migration primitives, for eviction. */
int hmm_rs_migrate_device_range(u64 *src, u64 start_pfn, u64 npages)
{
	return migrate_device_range((unsigned long *)src, start_pfn, npages);
}

void hmm_rs_migrate_device_pages(u64 *src, u64 *dst, u64 npages)
{
	migrate_device_pages((unsigned long *)src, (unsigned long *)dst,
			     npages);
}

void hmm_rs_migrate_device_finalize(u64 *src, u64 *dst, u64 npages)
{
	migrate_device_finalize((unsigned long *)src, (unsigned long *)dst,
				npages);
}

/* Evict every page of @d's device memory to system memory. */
static void hmm_rs_devmem_evict_all(struct hmm_rs_device *d)
{
	unsigned int i;

	lockdep_assert_held(&d->devmem_lock);
	for (i = 0; i < d->nchunks; i++) {
		struct range *r = &d->chunks[i]->pagemap.range;

		hmm_rs_devmem_evict(r->start >> PAGE_SHIFT,
				    range_len(r) >> PAGE_SHIFT);
	}
}

/*
 * Tear down @d's device memory (HMM_DMIRROR_RELEASE, module unload): take
 * the chunks' free pages off the free list, evict the pages in use, then
 * unmap and release each chunk. memunmap_pages waits until no reference to
 * a device page is left.
 */
void hmm_rs_devmem_remove(struct hmm_rs_device *d)
{
	unsigned int i;

	mutex_lock(&d->devmem_lock);
	spin_lock(&d->lock);
	for (i = 0; i < d->nchunks; i++)
		d->chunks[i]->remove = true;
	d->free_pages = NULL;
	spin_unlock(&d->lock);
	hmm_rs_devmem_evict_all(d);
	for (i = 0; i < d->nchunks; i++) {
		struct hmm_rs_chunk *c = d->chunks[i];

		memunmap_pages(&c->pagemap);
		if (c->pagemap.type == MEMORY_DEVICE_PRIVATE)
			release_mem_region(c->pagemap.range.start,
					   range_len(&c->pagemap.range));
		kfree(c);
		d->chunks[i] = NULL;
	}
	d->nchunks = 0;
	mutex_unlock(&d->devmem_lock);
}

void hmm_rs_mirror_release_devmem(struct hmm_rs_mirror *m)
{
	hmm_rs_devmem_remove(m->dev);
}

/* dev_pagemap_ops.page_free: the last reference to a device page went. */
static void hmm_rs_devmem_page_free(struct page *page)
{
	struct hmm_rs_chunk *c = hmm_rs_page_chunk(page);
	struct hmm_rs_device *d = c->dev;
	struct hmm_rs_mirror *m = hmm_rs_page_mirror(page);

	if (!is_device_coherent_page(page) && page->zone_device_data) {
		struct page *rpage = page->zone_device_data;

		rpage->zone_device_data = NULL;
		__free_page(rpage);
	}
	page->zone_device_data = NULL;
	spin_lock(&d->lock);
	d->cfree++;
	if (!c->remove) {
		page->zone_device_data = d->free_pages;
		d->free_pages = page;
	}
	spin_unlock(&d->lock);
	if (m)
		kref_put(&m->ref, hmm_rs_mirror_free);
}

/* dev_pagemap_ops.migrate_to_ram: a CPU fault on a device page. */
static vm_fault_t hmm_rs_devmem_migrate_to_ram(struct vm_fault *vmf)
{
	u64 owner = (u64)(uintptr_t)vmf->page->pgmap->owner;

	if (hmm_rs_devmem_fault(vmf->vma, vmf->address & PAGE_MASK,
				page_to_pfn(vmf->page), owner))
		return VM_FAULT_SIGBUS;
	return 0;
}

static const struct dev_pagemap_ops hmm_rs_devmem_ops = {
	.page_free = hmm_rs_devmem_page_free,
	.migrate_to_ram = hmm_rs_devmem_migrate_to_ram,
};

/* ------------------------------------------------------ exclusive */

/*
 * make_device_exclusive_range over [start, end) (at most 64 pages): the
 * PFN of each page made exclusive, 0 where none was, in @pfns. The pages
 * stay locked and referenced until hmm_rs_exclusive_done.
 */
int hmm_rs_make_exclusive(struct mm_struct *mm, u64 start, u64 end,
			  u64 *pfns)
{
	struct page *pages[HMM_RS_EXCLUSIVE_BATCH];
	unsigned long n = (end - start) >> PAGE_SHIFT;
	int ret, i;

	if (n > HMM_RS_EXCLUSIVE_BATCH)
		return -EINVAL;
	ret = make_device_exclusive_range(mm, start, end, pages, NULL);
	if (ret < 0)
		return ret;
	for (i = 0; i < ret; i++)
		pfns[i] = pages[i] ? page_to_pfn(pages[i]) : 0;
	return ret;
}

/* Unlock and release the pages hmm_rs_make_exclusive returned. */
void hmm_rs_exclusive_done(const u64 *pfns, u32 n)
{
	u32 i;

	for (i = 0; i < n; i++) {
		struct page *page;

		if (!pfns[i])
			continue;
		page = pfn_to_page(pfns[i]);
		unlock_page(page);
		put_page(page);
	}
}

/* ------------------------------------------------------------- mmap */

int hmm_rs_vma_insert_zeroed_page(struct vm_area_struct *vma, u64 addr)
{
	/* Charged to the caller's memory cgroup. */
	struct page *page = alloc_page(GFP_KERNEL_ACCOUNT | __GFP_ZERO);
	int ret;

	if (!page)
		return -ENOMEM;
	ret = vm_insert_page(vma, addr, page);
	/* On success the mapping holds its own reference. */
	put_page(page);
	return ret;
}

void hmm_rs_vma_bounds(struct vm_area_struct *vma, u64 *start, u64 *end)
{
	*start = vma->vm_start;
	*end = vma->vm_end;
}

/* --------------------------------------------------------- notifier */

static bool hmm_rs_invalidate_cb(struct mmu_interval_notifier *mni,
				 const struct mmu_notifier_range *range,
				 unsigned long cur_seq)
{
	struct hmm_rs_mirror *m = container_of(mni, struct hmm_rs_mirror,
					       notifier);

	u64 migrate_owner = range->event == MMU_NOTIFY_MIGRATE ?
		(u64)(uintptr_t)range->owner : 0;

	return hmm_rs_mirror_invalidate(m, range->start, range->end,
					mmu_notifier_range_blockable(range),
					cur_seq, migrate_owner);
}

static const struct mmu_interval_notifier_ops hmm_rs_notifier_ops = {
	.invalidate = hmm_rs_invalidate_cb,
};

/* ------------------------------------------------------ file ops */

static int hmm_rs_fops_open(struct inode *inode, struct file *filp)
{
	struct miscdevice *misc = filp->private_data;
	struct hmm_rs_device *dev = container_of(misc, struct hmm_rs_device,
						 misc);
	struct hmm_rs_mirror *m;
	int ret;

	m = kzalloc(sizeof(*m), GFP_KERNEL);
	if (!m)
		return -ENOMEM;
	kref_init(&m->ref);
	mutex_init(&m->mutex);
	xa_init(&m->pt);
	m->dev = dev;
	/* Mirror the whole address space of the opener, like test_hmm. */
	ret = mmu_interval_notifier_insert(&m->notifier, current->mm, 0,
					   ULONG_MAX & PAGE_MASK,
					   &hmm_rs_notifier_ops);
	if (ret) {
		kfree(m);
		return ret;
	}
	filp->private_data = m;
	return 0;
}

static int hmm_rs_fops_release(struct inode *inode, struct file *filp)
{
	struct hmm_rs_mirror *m = filp->private_data;
	struct hmm_rs_device *d = m->dev;

	mmu_interval_notifier_remove(&m->notifier);
	/*
	 * Like test_hmm: every page of the device goes back to system memory
	 * when a file of it is closed (the chunks stay for reuse).
	 */
	mutex_lock(&d->devmem_lock);
	hmm_rs_devmem_evict_all(d);
	mutex_unlock(&d->devmem_lock);
	kref_put(&m->ref, hmm_rs_mirror_free);
	return 0;
}

static long hmm_rs_fops_ioctl(struct file *filp, unsigned int cmd,
			      unsigned long arg)
{
	struct hmm_rs_mirror *m = filp->private_data;

	if (!m)
		return -EINVAL;
	return hmm_rs_mirror_ioctl(m, cmd, arg);
}

static int hmm_rs_fops_mmap(struct file *filp, struct vm_area_struct *vma)
{
	return hmm_rs_mirror_mmap(filp->private_data, vma);
}

static const struct file_operations hmm_rs_fops = {
	.owner = THIS_MODULE,
	.open = hmm_rs_fops_open,
	.release = hmm_rs_fops_release,
	.unlocked_ioctl = hmm_rs_fops_ioctl,
	.mmap = hmm_rs_fops_mmap,
	.llseek = default_llseek,
};

void hmm_rs_unregister(void)
{
	int i;

	for (i = 0; i < hmm_rs_ndevices; i++) {
		if (hmm_rs_devices[i].registered)
			misc_deregister(&hmm_rs_devices[i].misc);
		hmm_rs_devices[i].registered = false;
		/* No file is open: no page can be allocated any more. */
		hmm_rs_devmem_remove(&hmm_rs_devices[i]);
	}
}

/* Register /dev/hmm_dmirror0 .. /dev/hmm_dmirror{N-1}. */
int hmm_rs_register(void)
{
	int i, ret;

	if (!devname || !*devname || strlen(devname) > 24)
		return -EINVAL;
	hmm_rs_ndevices = 2;
	if (spm_addr_dev0 && spm_addr_dev1) {
		/* Whole sections of memory, as memremap_pages needs. */
		if (!IS_ALIGNED(spm_addr_dev0, HMM_RS_CHUNK_SIZE) ||
		    !IS_ALIGNED(spm_addr_dev1, HMM_RS_CHUNK_SIZE))
			return -EINVAL;
		hmm_rs_devices[2].coherent = true;
		hmm_rs_devices[2].spm_addr = spm_addr_dev0;
		hmm_rs_devices[3].coherent = true;
		hmm_rs_devices[3].spm_addr = spm_addr_dev1;
		hmm_rs_ndevices = HMM_RS_MAX_DEVICES;
	}
	for (i = 0; i < hmm_rs_ndevices; i++) {
		mutex_init(&hmm_rs_devices[i].devmem_lock);
		spin_lock_init(&hmm_rs_devices[i].lock);
	}
	for (i = 0; i < hmm_rs_ndevices; i++) {
		struct hmm_rs_device *d = &hmm_rs_devices[i];

		snprintf(d->name, sizeof(d->name), "%s%d", devname, i);
		d->misc.minor = MISC_DYNAMIC_MINOR;
		d->misc.name = d->name;
		d->misc.fops = &hmm_rs_fops;
		/* misc.mode 0: root only (0600), like test_hmm's devices. */
		ret = misc_register(&d->misc);
		if (ret) {
			hmm_rs_unregister();
			return ret;
		}
		d->registered = true;
	}
	return 0;
}
