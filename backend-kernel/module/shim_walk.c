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

#include <linux/hmm.h>
#include <linux/hugetlb.h>
#include <linux/mm.h>
#include <linux/pgtable.h>
#include <linux/rcupdate.h>
#include <linux/spinlock.h>
#include <linux/swapops.h>

#include "shim.h"

/* ------------------------------------------------------ page-table walk */

/* The word encoding of shim.h fits the leaf kinds, flags and owners. */
static_assert(HMM_RS_LEAF_BAD < 16);
static_assert((HMM_RS_LEAF_WRITE | HMM_RS_LEAF_PROTNONE | HMM_RS_LEAF_SPECIAL |
	       HMM_RS_LEAF_ZERO) < 16);
static_assert(HMM_RS_PTE_OWNERS <= 8);
/* A plain PTE's word is its hmm_range_fault() output. */
static_assert(HMM_RS_PTE_PLAIN == HMM_PFN_VALID);
static_assert(HMM_RS_PTE_WRITE == HMM_PFN_WRITE);
static_assert(HMM_RS_PTE_PFN_MASK < (1ULL << HMM_PFN_ORDER_SHIFT));
static_assert(PTRS_PER_PTE == HMM_RS_PTE_TABLE);

struct hmm_rs_walker {
	struct hmm_rs_leaf *out;
	u32 n, cap;
	/*
	 * Table mode (hmm_rs_walk_table()): the words of one PTE table go to
	 * table->words, and the walk stops after that table or after one
	 * leaf. NULL for hmm_rs_walk().
	 */
	struct hmm_rs_table *table;
	u64 *words;
	u32 wcap;
};

static bool hmm_rs_emit(struct hmm_rs_walker *w, u64 start, u64 end, u32 kind,
			u64 pfn, u32 flags, u32 order, u64 owner)
{
	struct hmm_rs_leaf *l;

	if (w->n >= w->cap || (w->table && w->table->nwords))
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

/* The leaf flags of the present PTE @pte, which maps @pfn (see below). */
static u32 hmm_rs_present_flags(pte_t pte, u64 pfn)
{
	u32 fl = 0;

	if (pte_write(pte))
		fl |= HMM_RS_LEAF_WRITE;
	if (pte_protnone(pte))
		fl |= HMM_RS_LEAF_PROTNONE;
	if (is_zero_pfn(pfn))
		fl |= HMM_RS_LEAF_ZERO;
	else if (pte_special(pte) && !pte_devmap(pte))
		fl |= HMM_RS_LEAF_SPECIAL;
	return fl;
}

/*
 * Report the PTE @pte of the page [addr, addr + PAGE_SIZE) as one leaf.
 *
 * mm/hmm.c refuses a present PTE for which vm_normal_page() finds no page,
 * unless it is devmap (DAX, P2PDMA) or the zero page. vm_normal_page() is
 * not exported; with ARCH_HAS_PTE_SPECIAL (x86) it finds no page for
 * special PTEs (raw PFNs of VM_PFNMAP / VM_MIXEDMAP, devmap, the zero page)
 * and, after reporting a bad PTE, for a non-special PTE beyond the memmap,
 * which a correct kernel never installs. The zero page is reported on its
 * own.
 */
static bool hmm_rs_emit_pte(struct hmm_rs_walker *w, u64 addr, pte_t pte)
{
	u64 next = addr + PAGE_SIZE;
	u64 pfn;

	if (pte_none(pte) || is_pte_marker(pte))
		return hmm_rs_emit(w, addr, next, HMM_RS_LEAF_NONE, 0, 0, 0, 0);
	if (!pte_present(pte))
		return hmm_rs_emit_swap(w, addr, next, pte, 0);
	pfn = pte_pfn(pte);
	return hmm_rs_emit(w, addr, next, HMM_RS_LEAF_PRESENT, pfn,
			   hmm_rs_present_flags(pte, pfn), 0, 0);
}

/*
 * Table mode: the word of @pte (see HMM_RS_PTE_* in shim.h), classified as
 * hmm_rs_emit_pte() classifies it. A plain present PTE (present, not
 * PROT_NONE, not special, not devmap, not the zero page) is its PFN and
 * write bit under HMM_RS_PTE_PLAIN; anything else is its leaf kind, flags
 * and PFN, and a device-private entry the index of its pgmap owner in
 * table->owners (looked up here, while the table is mapped). False if the
 * PTE does not fit a word (a ninth owner in one table, a PFN of more than
 * 52 bits): the caller reports it as a leaf instead.
 */
static bool hmm_rs_pte_word(struct hmm_rs_walker *w, pte_t pte, u64 *word)
{
	struct hmm_rs_table *t = w->table;
	u64 pfn = 0, owner_ix = 0;
	u32 kind, fl = 0;

	if (pte_none(pte) || is_pte_marker(pte)) {
		*word = (u64)HMM_RS_LEAF_NONE << HMM_RS_PTE_KIND_SHIFT;
		return true;
	}
	if (pte_present(pte)) {
		pfn = pte_pfn(pte);
		if (!pte_protnone(pte) && !pte_special(pte) &&
		    !pte_devmap(pte) && !is_zero_pfn(pfn) &&
		    pfn <= HMM_RS_PTE_PFN_MASK) {
			*word = HMM_RS_PTE_PLAIN | pfn |
				(pte_write(pte) ? HMM_RS_PTE_WRITE : 0);
			return true;
		}
		kind = HMM_RS_LEAF_PRESENT;
		fl = hmm_rs_present_flags(pte, pfn);
	} else {
		swp_entry_t entry = pte_to_swp_entry(pte);

		if (is_device_private_entry(entry)) {
			struct page *page = pfn_swap_entry_to_page(entry);
			u64 owner = (u64)(uintptr_t)page->pgmap->owner;

			while (owner_ix < t->nowners &&
			       t->owners[owner_ix] != owner)
				owner_ix++;
			if (owner_ix == t->nowners) {
				if (owner_ix == HMM_RS_PTE_OWNERS)
					return false;
				t->owners[t->nowners++] = owner;
			}
			kind = HMM_RS_LEAF_DEVICE_PRIVATE;
			pfn = swp_offset_pfn(entry);
			if (is_writable_device_private_entry(entry))
				fl |= HMM_RS_LEAF_WRITE;
		} else if (is_device_exclusive_entry(entry)) {
			kind = HMM_RS_LEAF_DEVICE_EXCLUSIVE;
		} else if (is_migration_entry(entry)) {
			kind = HMM_RS_LEAF_MIGRATION;
		} else if (non_swap_entry(entry)) {
			/* hwpoison and unknown entries: not faultable (mm/hmm.c). */
			kind = HMM_RS_LEAF_HWPOISON;
		} else {
			kind = HMM_RS_LEAF_SWAP;
		}
	}
	if (pfn > HMM_RS_PTE_PFN_MASK)
		return false;
	*word = ((u64)kind << HMM_RS_PTE_KIND_SHIFT) |
		((u64)fl << HMM_RS_PTE_FLAGS_SHIFT) |
		(owner_ix << HMM_RS_PTE_OWNER_SHIFT) | pfn;
	return true;
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
 *
 * In table mode the PTEs become words (one per page, at most wcap), unless
 * this walk has already reported a leaf or a table: then nothing is
 * reported, and the walk stops here. A PTE that does not fit a word ends
 * the table before it; if it is the table's first, it is reported as a
 * leaf instead.
 */
static u64 hmm_rs_walk_ptes(struct hmm_rs_walker *w, pmd_t pmdval, u64 addr,
			    u64 end)
{
	pte_t *ptep;

	RCU_LOCKDEP_WARN(!rcu_read_lock_held(),
			 "hmm_rs_walk_ptes() outside an RCU read-side section");
	ptep = pte_offset_kernel(&pmdval, addr);
	if (w->table) {
		struct hmm_rs_table *t = w->table;
		u32 n = 0;

		if (w->n || t->nwords)
			return addr;
		for (; addr < end && n < w->wcap; addr += PAGE_SIZE, ptep++) {
			pte_t pte = ptep_get(ptep);

			if (!hmm_rs_pte_word(w, pte, &w->words[n])) {
				if (!n && hmm_rs_emit_pte(w, addr, pte))
					addr += PAGE_SIZE;
				break;
			}
			n++;
		}
		t->nwords = n;
		return addr;
	}
	for (; addr < end; addr += PAGE_SIZE, ptep++) {
		if (!hmm_rs_emit_pte(w, addr, ptep_get(ptep)))
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
 * Walk [start, end) (page aligned, inside one VMA) into @w, in address
 * order and without gaps, until it is full. @vma is the VMA found by
 * hmm_rs_find_vma() under the same mmap read lock, or NULL to look it up.
 * Returns -EFAULT if [start, end) is not inside that VMA, else 0 with
 * *next the end of what was reported (end if the range is complete).
 */
static int hmm_rs_walk_range(struct hmm_rs_walker *w, struct mm_struct *mm,
			     struct vm_area_struct *vma, u64 start, u64 end,
			     u64 *next)
{
	u64 addr = start;

	mmap_assert_locked(mm);
	*next = start;
	if (!vma)
		vma = vma_lookup(mm, start);
	if (!vma || vma->vm_mm != mm || start < vma->vm_start ||
	    end > vma->vm_end || start >= end)
		return -EFAULT;
	if (is_vm_hugetlb_page(vma)) {
		*next = hmm_rs_walk_hugetlb(w, vma, start, end);
		return 0;
	}
	while (addr < end) {
		pgd_t *pgd = pgd_offset(mm, addr);
		u64 pgd_end = pgd_addr_end(addr, end);
		u64 p4d_end;
		p4d_t *p4d;

		if (pgd_none(READ_ONCE(*pgd))) {
			if (!hmm_rs_emit(w, addr, pgd_end, HMM_RS_LEAF_NONE,
					 0, 0, 0, 0))
				break;
			addr = pgd_end;
			continue;
		}
		p4d = p4d_offset(pgd, addr);
		p4d_end = p4d_addr_end(addr, end);
		if (p4d_none(READ_ONCE(*p4d))) {
			if (!hmm_rs_emit(w, addr, p4d_end, HMM_RS_LEAF_NONE,
					 0, 0, 0, 0))
				break;
			addr = p4d_end;
			continue;
		}
		{
			pud_t *pudp = pud_offset(p4d, addr);
			u64 pud_end = pud_addr_end(addr, end);
			u64 reached = hmm_rs_walk_pud(w, pudp, addr, pud_end);

			addr = reached;
			if (reached != pud_end)
				break;
		}
	}
	*next = addr;
	return 0;
}

/*
 * Report the leaves of [start, end) (page aligned, inside one VMA) into
 * out[0..cap), in address order and without gaps. @vma: see
 * hmm_rs_walk_range(). Returns the number of leaves, or -EFAULT if
 * [start, end) is not inside that VMA. *next is the end of the last
 * reported leaf (end if the range is complete).
 */
int hmm_rs_walk(struct mm_struct *mm, struct vm_area_struct *vma, u64 start,
		u64 end, struct hmm_rs_leaf *out, u32 cap, u64 *next)
{
	struct hmm_rs_walker w = { .out = out, .n = 0, .cap = cap };
	int err = hmm_rs_walk_range(&w, mm, vma, start, end, next);

	return err ? err : w.n;
}

/*
 * The batched reader: from @start, either the PTE words of the one PTE
 * table that maps @start, for [start, min(end, its PMD's end)) and at most
 * @cap pages, into words[] (table->nwords of them), or one leaf
 * (table->leaf, table->nleaves = 1) for an entry that is not a PTE table
 * (none, huge or bad PMD or PUD, hugetlb) or a PTE that does not fit a
 * word. table->owners holds the device-private owners the words name.
 * The table is read under RCU without the PTE lock, and every struct page
 * it names (device-private owners) is looked at before the RCU section
 * ends, as hmm_rs_walk() does. Returns 0, or -EFAULT if [start, end) is not
 * inside @vma (see hmm_rs_walk_range()); table->next is the end of what
 * was reported. No lock is held on return.
 */
int hmm_rs_walk_table(struct mm_struct *mm, struct vm_area_struct *vma,
		      u64 start, u64 end, u64 *words, u32 cap,
		      struct hmm_rs_table *table)
{
	struct hmm_rs_walker w = {
		.out = &table->leaf, .n = 0, .cap = 1,
		.table = table, .words = words, .wcap = cap,
	};
	int err;

	table->nwords = 0;
	table->nowners = 0;
	table->nleaves = 0;
	err = hmm_rs_walk_range(&w, mm, vma, start, end, &table->next);
	table->nleaves = w.n;
	return err;
}
