// SPDX-License-Identifier: GPL-2.0
/*
 * C shim of the hmm_rs module: device memory.
 *
 * The pagemaps (MEMORY_DEVICE_PRIVATE chunks, or MEMORY_DEVICE_COHERENT
 * soft-reserved memory), the per-device free list, the page primitives,
 * the migrate_vma_* and migrate_device_* wrappers and exclusive access.
 * Which pages migrate, and where, is decided in Rust (devmem.rs).
 */

#include <linux/highmem.h>
#include <linux/migrate.h>
#include <linux/mm.h>
#include <linux/rmap.h>
#include <linux/slab.h>

#include "shim_internal.h"

/* The MIGRATE_PFN_* and MIGRATE_VMA_SELECT_* values shim.h restates. */
static_assert(HMM_RS_MIGRATE_PFN_VALID == MIGRATE_PFN_VALID);
static_assert(HMM_RS_MIGRATE_PFN_MIGRATE == MIGRATE_PFN_MIGRATE);
static_assert(HMM_RS_MIGRATE_PFN_WRITE == MIGRATE_PFN_WRITE);
static_assert(HMM_RS_MIGRATE_PFN_SHIFT == MIGRATE_PFN_SHIFT);
static_assert(HMM_RS_SELECT_SYSTEM == MIGRATE_VMA_SELECT_SYSTEM);
static_assert(HMM_RS_SELECT_DEVICE_PRIVATE == MIGRATE_VMA_SELECT_DEVICE_PRIVATE);
static_assert(HMM_RS_SELECT_DEVICE_COHERENT == MIGRATE_VMA_SELECT_DEVICE_COHERENT);

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
void hmm_rs_devmem_evict_all(struct hmm_rs_device *d)
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
