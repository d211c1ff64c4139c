/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What the C files of hmm_rs's shim share and Rust does not see: the
 * per-open mirror, the devices and their device-memory chunks. The Rust
 * side only holds pointers to these (see shim.h).
 */
#ifndef HMM_RS_SHIM_INTERNAL_H
#define HMM_RS_SHIM_INTERNAL_H

#include <linux/kref.h>
#include <linux/memremap.h>
#include <linux/miscdevice.h>
#include <linux/mmu_notifier.h>
#include <linux/mutex.h>
#include <linux/spinlock.h>
#include <linux/xarray.h>

#include "shim.h"

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

/* The devices (shim_mirror.c registers them). */
extern struct hmm_rs_device hmm_rs_devices[HMM_RS_MAX_DEVICES];
extern int hmm_rs_ndevices;

/* kref release of a mirror (shim_mirror.c). */
void hmm_rs_mirror_free(struct kref *ref);

/* Migrate every page of @d back to system memory (shim_devmem.c). */
void hmm_rs_devmem_evict_all(struct hmm_rs_device *d);

#endif /* HMM_RS_SHIM_INTERNAL_H */
