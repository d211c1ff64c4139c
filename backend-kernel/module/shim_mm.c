// SPDX-License-Identifier: GPL-2.0
/*
 * C shim of the hmm_rs module: the mm wrappers.
 *
 * Linux 6.12 has no Rust abstractions for mm, and what the Rust side needs
 * (the mmap lock, mmget/mmput, VMA lookup, handle_mm_fault, the fatal-signal
 * check, the coarse clock) are static inline functions or macros. These
 * wrappers give them a plain C ABI; kernels whose Rust `mm` abstractions
 * (MmWithUser, MmapReadGuard, VmaRef) cover them replace this file.
 */

#include <linux/hugetlb.h>
#include <linux/mm.h>
#include <linux/moduleparam.h>
#include <linux/sysfs.h>
#include <linux/sched/mm.h>
#include <linux/sched/signal.h>
#include <linux/timekeeping.h>

#include "shim.h"

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
 * Every handle_mm_fault() call of this module (faults and migration
 * waits), for the harness: a THP READ of fresh memory should take one per
 * 2 MiB leaf (hmm-core faults a hole once and walks again, as GUP does;
 * mm/hmm.c calls handle_mm_fault() for every page of the hole). Read-only
 * module parameter /sys/module/hmm_rs/parameters/fault_calls.
 */
static atomic64_t hmm_rs_fault_calls = ATOMIC64_INIT(0);

static int hmm_rs_fault_calls_get(char *buf, const struct kernel_param *kp)
{
	return sysfs_emit(buf, "%lld\n",
			  (long long)atomic64_read(&hmm_rs_fault_calls));
}

static const struct kernel_param_ops hmm_rs_fault_calls_ops = {
	.get = hmm_rs_fault_calls_get,
};
module_param_cb(fault_calls, &hmm_rs_fault_calls_ops, NULL, 0444);
MODULE_PARM_DESC(fault_calls, "handle_mm_fault() calls so far (read-only)");

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
	atomic64_inc(&hmm_rs_fault_calls);
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

	if (vma) {
		atomic64_inc(&hmm_rs_fault_calls);
		handle_mm_fault(vma, addr, FAULT_FLAG_REMOTE, NULL);
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

