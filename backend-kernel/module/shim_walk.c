// SPDX-License-Identifier: GPL-2.0
/*
 * C shim of the hmm_rs module: the page-table reader.
 *
 * hmm_rs_walk inspects page tables the way mm/hmm.c's callbacks do: PMDs
 * are read locklessly, PTE tables are mapped under RCU without the PTE
 * lock, and consistency comes from the caller's interval-notifier
 * sequence. It reports leaf descriptors in batches and holds no lock other
 * than the caller's mmap read lock when it returns. It stays C: it is made
 * of the architecture's page-table accessors, which are macros and static
 * inline functions.
 */

#include <linux/hugetlb.h>
#include <linux/mm.h>
#include <linux/pgtable.h>
#include <linux/rcupdate.h>
#include <linux/spinlock.h>
#include <linux/swapops.h>

#include "shim.h"

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

