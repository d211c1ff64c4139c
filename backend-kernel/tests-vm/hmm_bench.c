// SPDX-License-Identifier: GPL-2.0
/*
 * hmm_bench: time READ and SNAPSHOT of a large buffer through a dmirror
 * device, so the kernel's C driver and hmm_rs can be compared in one VM.
 *
 * The buffer is private anonymous memory, populated by the CPU first (so
 * the measured work is the range walk, the device page-table update and the
 * copy, not page allocation). Each READ uses a freshly opened device file,
 * so its device page table starts empty and the whole range goes through
 * the range-fault path. SNAPSHOT never caches and walks every time.
 *
 * usage: hmm_bench [-d DEVICE] [-a DEVICE_B] [-m MiB] [-r ROUNDS] [-s ROUNDS] [-u] [-n]
 *   -r   READ rounds (default 5); -s SNAPSHOT rounds (default: as -r)
 *   -a   paired mode: every READ and SNAPSHOT is issued on DEVICE and on
 *        DEVICE_B in turn (which goes first alternates), so each pair of
 *        calls saw the same machine; prints, with both lists in call order,
 *          pair <op>_<thp|4k> pages=<n> rounds=<r> a_ns=<ns>,... b_ns=<ns>,...
 *   -u   also time HMM_DMIRROR_READ_UNLOCKED (hmm_rs only)
 *   -n   MADV_NOHUGEPAGE: 4 KiB PTEs only (default: THP where possible)
 * Output: one line per operation, with every call's time, sorted:
 *   bench <op>_<thp|4k> pages=<n> rounds=<r> min_ns=<ns> median_ns=<ns>
 *         samples_ns=<ns>,<ns>,...
 * and, before the timings, the fault count of one READ of fresh memory
 * (8 MiB, PMD-aligned, not touched by the CPU): the handle_mm_fault calls
 * of the ioctl's thread (its minor-fault count, which handle_mm_fault
 * raises for every call that completes, GUP's and HMM's too), hmm_rs's own
 * count (module parameter fault_calls; -1 for a driver without it) and the
 * PMD leaves a SNAPSHOT then sees:
 *   faults read_fresh_<thp|4k> pages=<n> pmd_leaves=<n> minflt=<n>
 *          module_calls=<n>
 * Exit status: 0 if every ioctl succeeded and the data read back matched.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "fault_count.h"

struct hmm_dmirror_cmd {
	uint64_t addr, ptr, npages, cpages, faults;
};

#define HMM_DMIRROR_READ _IOWR('H', 0x00, struct hmm_dmirror_cmd)
#define HMM_DMIRROR_SNAPSHOT _IOWR('H', 0x04, struct hmm_dmirror_cmd)
#define HMM_DMIRROR_READ_UNLOCKED _IOWR('H', 0x09, struct hmm_dmirror_cmd)

#define PAGE 4096UL
#define MAX_ROUNDS 64
#define FRESH_MIB 8
#define PMD_SIZE (2UL << 20)
#define PROT_PMD 0x04

static uint64_t now_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000ull + t.tv_nsec;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static const char *suffix = "";

static void report(const char *op, size_t npages, int rounds, uint64_t *ns)
{
	qsort(ns, rounds, sizeof(*ns), cmp_u64);
	printf("bench %s%s pages=%zu rounds=%d min_ns=%llu median_ns=%llu samples_ns=",
	       op, suffix, npages, rounds, (unsigned long long)ns[0],
	       (unsigned long long)ns[rounds / 2]);
	for (int i = 0; i < rounds; i++)
		printf("%s%llu", i ? "," : "", (unsigned long long)ns[i]);
	printf("\n");
	fflush(stdout);
}

/*
 * READ of FRESH_MIB of fresh memory (PMD-aligned, untouched), counting
 * the handle_mm_fault calls it takes, then a SNAPSHOT counting the PMD
 * leaves it left. 0 on success.
 */
static int fresh_read_faults(const char *dev, int nothp)
{
	size_t size = (size_t)FRESH_MIB << 20, npages = size / PAGE, leaves = 0;
	unsigned char *raw, *buf, *out;
	long long mod0, mod1;
	long flt0, flt1;
	int fd, rc = 1;

	raw = mmap(NULL, size + PMD_SIZE, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	out = malloc(size);
	if (raw == MAP_FAILED || !out) {
		perror("alloc");
		return 1;
	}
	buf = (unsigned char *)(((uintptr_t)raw + PMD_SIZE - 1) & ~(PMD_SIZE - 1));
	if (madvise(buf, size, nothp ? MADV_NOHUGEPAGE : MADV_HUGEPAGE)) {
		perror("madvise");
		return 1;
	}
	memset(out, 1, size);
	fd = open(dev, O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		perror(dev);
		return 1;
	}
	{
		struct hmm_dmirror_cmd cmd = {
			.addr = (uintptr_t)buf, .ptr = (uintptr_t)out,
			.npages = npages,
		};

		mod0 = module_fault_calls();
		flt0 = thread_minflt();
		if (ioctl(fd, HMM_DMIRROR_READ, &cmd)) {
			perror("READ (fresh)");
			goto out;
		}
		flt1 = thread_minflt();
		mod1 = module_fault_calls();
		for (size_t i = 0; i < size; i++) {
			if (out[i]) {
				fprintf(stderr, "READ (fresh): byte %zu is %u\n",
					i, out[i]);
				goto out;
			}
		}
	}
	{
		struct hmm_dmirror_cmd cmd = {
			.addr = (uintptr_t)buf, .ptr = (uintptr_t)out,
			.npages = npages,
		};

		if (ioctl(fd, HMM_DMIRROR_SNAPSHOT, &cmd)) {
			perror("SNAPSHOT (fresh)");
			goto out;
		}
		for (size_t i = 0; i < npages; i += PMD_SIZE / PAGE)
			leaves += !!(out[i] & PROT_PMD);
	}
	printf("faults read_fresh%s pages=%zu pmd_leaves=%zu minflt=%ld module_calls=%lld\n",
	       suffix, npages, leaves, flt1 - flt0,
	       mod0 < 0 || mod1 < 0 ? -1 : mod1 - mod0);
	fflush(stdout);
	rc = 0;
out:
	close(fd);
	munmap(raw, size + PMD_SIZE);
	free(out);
	return rc;
}

/* One timed call of @req on a new open of @dev (READ) or on @fd. */
static int timed_call(const char *dev, int fd, unsigned long req,
		      unsigned char *buf, unsigned char *out, size_t npages,
		      uint64_t *ns)
{
	struct hmm_dmirror_cmd cmd = {
		.addr = (uintptr_t)buf, .ptr = (uintptr_t)out, .npages = npages,
	};
	int own = fd < 0;
	uint64_t t0;

	if (own)
		fd = open(dev, O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		perror(dev);
		return 1;
	}
	t0 = now_ns();
	if (ioctl(fd, req, &cmd)) {
		perror(dev);
		return 1;
	}
	*ns = now_ns() - t0;
	if (own)
		close(fd);
	if (cmd.cpages != npages) {
		fprintf(stderr, "%s: cpages %llu\n", dev,
			(unsigned long long)cmd.cpages);
		return 1;
	}
	return 0;
}

static void report_pair(const char *op, size_t npages, int rounds,
			const uint64_t *a, const uint64_t *b)
{
	printf("pair %s%s pages=%zu rounds=%d a_ns=", op, suffix, npages, rounds);
	for (int i = 0; i < rounds; i++)
		printf("%s%llu", i ? "," : "", (unsigned long long)a[i]);
	printf(" b_ns=");
	for (int i = 0; i < rounds; i++)
		printf("%s%llu", i ? "," : "", (unsigned long long)b[i]);
	printf("\n");
	fflush(stdout);
}

/* Paired mode: READ and SNAPSHOT on @dev_a and @dev_b in turn. */
static int paired(const char *dev_a, const char *dev_b, unsigned char *buf,
		  unsigned char *out, size_t size, int rounds, int snap_rounds)
{
	size_t npages = size / PAGE;
	uint64_t a[MAX_ROUNDS], b[MAX_ROUNDS];
	int fa, fb, r;

	for (r = 0; r < rounds; r++) {
		int first_b = r & 1;

		memset(out, 0, size);
		if (timed_call(first_b ? dev_b : dev_a, -1, HMM_DMIRROR_READ,
			       buf, out, npages, first_b ? &b[r] : &a[r]) ||
		    memcmp(buf, out, size))
			return 1;
		memset(out, 0, size);
		if (timed_call(first_b ? dev_a : dev_b, -1, HMM_DMIRROR_READ,
			       buf, out, npages, first_b ? &a[r] : &b[r]) ||
		    memcmp(buf, out, size))
			return 1;
	}
	report_pair("read", npages, rounds, a, b);
	fa = open(dev_a, O_RDWR | O_CLOEXEC);
	fb = open(dev_b, O_RDWR | O_CLOEXEC);
	if (fa < 0 || fb < 0) {
		perror("open");
		return 1;
	}
	for (r = 0; r < snap_rounds; r++) {
		int first_b = r & 1;

		if (timed_call(NULL, first_b ? fb : fa, HMM_DMIRROR_SNAPSHOT,
			       buf, out, npages, first_b ? &b[r] : &a[r]) ||
		    timed_call(NULL, first_b ? fa : fb, HMM_DMIRROR_SNAPSHOT,
			       buf, out, npages, first_b ? &a[r] : &b[r]))
			return 1;
	}
	close(fa);
	close(fb);
	report_pair("snapshot", npages, snap_rounds, a, b);
	return 0;
}

int main(int argc, char **argv)
{
	const char *dev_b = NULL;
	const char *dev = "/dev/hmm_dmirror0";
	size_t mib = 64, size, npages, i;
	int rounds = 5, snap_rounds = 0, unlocked = 0, nothp = 0, opt, r;
	uint64_t ns[MAX_ROUNDS];
	unsigned char *buf, *out;

	while ((opt = getopt(argc, argv, "d:a:m:r:s:un")) != -1) {
		switch (opt) {
		case 'd': dev = optarg; break;
		case 'a': dev_b = optarg; break;
		case 'm': mib = strtoul(optarg, NULL, 0); break;
		case 'r': rounds = atoi(optarg); break;
		case 's': snap_rounds = atoi(optarg); break;
		case 'u': unlocked = 1; break;
		case 'n': nothp = 1; break;
		default:
			fprintf(stderr, "usage: %s [-d DEV] [-a DEV_B] [-m MiB] [-r N] [-s N] [-u] [-n]\n",
				argv[0]);
			return 2;
		}
	}
	if (!snap_rounds)
		snap_rounds = rounds;
	if (rounds < 1 || rounds > MAX_ROUNDS || snap_rounds < 1 ||
	    snap_rounds > MAX_ROUNDS || mib < 1)
		return 2;
	suffix = nothp ? "_4k" : "_thp";
	if (!dev_b && fresh_read_faults(dev, nothp))
		return 1;
	size = mib << 20;
	npages = size / PAGE;
	buf = mmap(NULL, size, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	out = malloc(size);
	if (buf == MAP_FAILED || !out) {
		perror("alloc");
		return 1;
	}
	if (madvise(buf, size, nothp ? MADV_NOHUGEPAGE : MADV_HUGEPAGE)) {
		perror("madvise");
		return 1;
	}
	for (i = 0; i < size; i++)
		buf[i] = (unsigned char)(i * 13 + (i >> 12));
	memset(out, 0, size);	/* populate the destination too */
	if (dev_b)
		return paired(dev, dev_b, buf, out, size, rounds, snap_rounds);

	for (int pass = 0; pass < 1 + unlocked; pass++) {
		unsigned long req = pass ? HMM_DMIRROR_READ_UNLOCKED
					 : HMM_DMIRROR_READ;

		for (r = 0; r < rounds; r++) {
			struct hmm_dmirror_cmd cmd = {
				.addr = (uintptr_t)buf, .ptr = (uintptr_t)out,
				.npages = npages,
			};
			int fd = open(dev, O_RDWR | O_CLOEXEC);
			uint64_t t0;

			if (fd < 0) {
				perror(dev);
				return 1;
			}
			t0 = now_ns();
			if (ioctl(fd, req, &cmd)) {
				perror(pass ? "READ_UNLOCKED" : "READ");
				return 1;
			}
			ns[r] = now_ns() - t0;
			close(fd);
			if (cmd.cpages != npages || memcmp(buf, out, size)) {
				fprintf(stderr, "READ: wrong data\n");
				return 1;
			}
		}
		report(pass ? "read_unlocked" : "read", npages, rounds, ns);
	}

	{
		int fd = open(dev, O_RDWR | O_CLOEXEC);

		if (fd < 0) {
			perror(dev);
			return 1;
		}
		for (r = 0; r < snap_rounds; r++) {
			struct hmm_dmirror_cmd cmd = {
				.addr = (uintptr_t)buf, .ptr = (uintptr_t)out,
				.npages = npages,
			};
			uint64_t t0 = now_ns();

			if (ioctl(fd, HMM_DMIRROR_SNAPSHOT, &cmd)) {
				perror("SNAPSHOT");
				return 1;
			}
			ns[r] = now_ns() - t0;
			if (cmd.cpages != npages) {
				fprintf(stderr, "SNAPSHOT: cpages %llu\n",
					(unsigned long long)cmd.cpages);
				return 1;
			}
			/* Populated private anonymous memory: RW (maybe PMD). */
			for (i = 0; i < npages; i++) {
				if ((out[i] & 0x3) != 0x2) {
					fprintf(stderr, "SNAPSHOT: page %zu is 0x%x\n",
						i, out[i]);
					return 1;
				}
			}
		}
		close(fd);
		report("snapshot", npages, snap_rounds, ns);
	}
	return 0;
}
