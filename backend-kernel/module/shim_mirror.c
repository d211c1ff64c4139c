// SPDX-License-Identifier: GPL-2.0
/*
 * C shim of the hmm_rs module: the devices and their per-open mirrors.
 *
 * This file owns the kernel objects: the misc devices, and per open file
 * the interval notifier, the driver mutex and the device page-table
 * xarray. It exposes them to Rust with a plain C ABI. Everything that
 * decides something (the range walk and fault loop of hmm-core, the
 * ioctls, the invalidation of the device page table) is Rust, in
 * hmm_rs_main.rs and its modules; the file operations and the notifier
 * callback are trampolines into it.
 */

#include <linux/fs.h>
#include <linux/highmem.h>
#include <linux/module.h>
#include <linux/sched.h>
#include <linux/slab.h>

#include "shim_internal.h"

/* The device page-table tags must be valid xarray pointer tags. */
static_assert(HMM_RS_TAG_WRITE <= 3 && HMM_RS_TAG_ATOMIC <= 3);

struct hmm_rs_device hmm_rs_devices[HMM_RS_MAX_DEVICES];
int hmm_rs_ndevices;

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


void hmm_rs_mirror_free(struct kref *ref)
{
	struct hmm_rs_mirror *m = container_of(ref, struct hmm_rs_mirror, ref);

	xa_destroy(&m->pt);
	kfree(m);
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
