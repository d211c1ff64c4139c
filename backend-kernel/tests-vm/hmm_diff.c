// SPDX-License-Identifier: GPL-2.0
/*
 * hmm_diff: a differential test of two drivers of the test_hmm ioctl ABI,
 * loaded side by side in one VM and asked the same questions about the
 * same memory.
 *
 * For each of LAYOUTS seeded random layouts it builds a 4 MiB, 2 MiB
 * aligned region out of 64-page segments, each one of: untouched
 * anonymous memory, written anonymous memory (THP where a whole aligned
 * 2 MiB block is one VMA: the VM runs with transparent_hugepage=always),
 * read-only touched memory (the zero page), written then mprotect'ed
 * read-only, written then PROT_NONE, written with MADV_DONTNEED holes,
 * shared shmem (memfd), a private file mapping with copy-on-write pages,
 * an unmapped hole, pages migrated to the second device of either driver
 * (device-private pages of another owner for both devices compared), and
 * partly written memory; then, at random, a forked child that shares the
 * anonymous pages copy-on-write, and a 2 MiB hugetlb page. It asks both
 * devices for
 *
 *   1. SNAPSHOT of the region (and of the hugetlb page), byte for byte;
 *   2. READ of every segment: the same errno, and where both succeed the
 *      same cpages and data;
 *   3. SNAPSHOT again, after the faults the READs made.
 *
 * usage: hmm_diff [-s SEED] [-n LAYOUTS] A0 B0 A1 B1
 *   A0, B0  the devices compared (e.g. /dev/hmm_dmirror0 of test_hmm and
 *           /dev/hmm_rs_dmirror0 of hmm_rs)
 *   A1, B1  their drivers' second devices, which own the device-private
 *           pages of the layouts
 * Output: kselftest TAP, one test per layout; every difference is printed
 * as a diagnostic. Exit status: 0 if there was none.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

struct hmm_dmirror_cmd {
	uint64_t addr, ptr, npages, cpages, faults;
};

#define HMM_DMIRROR_READ _IOWR('H', 0x00, struct hmm_dmirror_cmd)
#define HMM_DMIRROR_MIGRATE_TO_DEV _IOWR('H', 0x02, struct hmm_dmirror_cmd)
#define HMM_DMIRROR_SNAPSHOT _IOWR('H', 0x04, struct hmm_dmirror_cmd)

#define PAGE 4096UL
#define SEG_PAGES 64UL
#define NSEG 16UL
#define NPAGES (SEG_PAGES * NSEG)
#define HUGE (2UL << 20)

enum kind {
	EMPTY, WRITTEN, READ_ZERO, RDONLY, PROTNONE, HOLES, SHMEM_SHARED,
	FILE_PRIVATE, UNMAPPED, DEV_A1, DEV_B1, PARTIAL, NKINDS
};

static const char *const kind_name[NKINDS] = {
	"empty", "written", "read-zero", "read-only", "prot-none", "holes",
	"shmem-shared", "file-private", "unmapped", "on-device-A1",
	"on-device-B1", "partial",
};

static uint64_t rng;
static int fa0, fb0, fa1, fb1;
static int diffs;	/* differences in the current layout */
/* What was compared, over all layouts. */
static unsigned long n_bytes, n_valid, n_reads_ok, n_reads_err;

static uint32_t rnd(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (uint32_t)(rng >> 11);
}

static void stamp(char *p, uint64_t seed, unsigned long page)
{
	uint64_t v = (seed << 32) ^ (page * 0x9e3779b97f4a7c15ULL) ^ 0x5a5a;

	memcpy(p, &v, sizeof(v));
	p[PAGE - 1] = (char)page;
}

static int cmd(int fd, unsigned long req, void *addr, unsigned long npages,
	       void *buf, struct hmm_dmirror_cmd *out)
{
	struct hmm_dmirror_cmd c = { .addr = (uintptr_t)addr,
				     .ptr = (uintptr_t)buf, .npages = npages };
	int r = ioctl(fd, req, &c);

	if (out)
		*out = c;
	return r ? -errno : 0;
}

static void differ(const char *what, long at, long a, long b)
{
	if (diffs < 8)
		printf("# %s at %ld: A %ld (0x%lx), B %ld (0x%lx)\n", what, at,
		       a, (unsigned long)a, b, (unsigned long)b);
	diffs++;
}

/* SNAPSHOT of [p, p + npages) by both devices, compared byte for byte. */
static void compare_snapshot(const char *what, char *p, unsigned long npages)
{
	static unsigned char sa[NPAGES], sb[NPAGES];
	struct hmm_dmirror_cmd ca, cb;
	int ra, rb;
	unsigned long i;

	memset(sa, 0xee, npages);
	memset(sb, 0xee, npages);
	ra = cmd(fa0, HMM_DMIRROR_SNAPSHOT, p, npages, sa, &ca);
	rb = cmd(fb0, HMM_DMIRROR_SNAPSHOT, p, npages, sb, &cb);
	if (ra != rb) {
		differ(what, -1, ra, rb);
		return;
	}
	if (ra)
		return;
	if (ca.cpages != cb.cpages)
		differ(what, -2, (long)ca.cpages, (long)cb.cpages);
	for (i = 0; i < npages; i++) {
		n_bytes++;
		n_valid += sa[i] != 0 && sa[i] != 0xff;
		if (sa[i] != sb[i])
			differ(what, (long)i, sa[i], sb[i]);
	}
}

/* READ of one segment by both devices: errno, cpages and data. */
static void compare_read(char *p, unsigned long seg)
{
	static char da[SEG_PAGES * PAGE], db[SEG_PAGES * PAGE];
	struct hmm_dmirror_cmd ca, cb;
	char *s = p + seg * SEG_PAGES * PAGE;
	unsigned long i;
	int ra, rb;

	memset(da, 0x11, sizeof(da));
	memset(db, 0x22, sizeof(db));
	ra = cmd(fa0, HMM_DMIRROR_READ, s, SEG_PAGES, da, &ca);
	rb = cmd(fb0, HMM_DMIRROR_READ, s, SEG_PAGES, db, &cb);
	if (ra != rb) {
		differ("read errno (segment)", (long)seg, ra, rb);
		return;
	}
	if (ra) {
		n_reads_err++;
		return;
	}
	n_reads_ok++;
	if (ca.cpages != cb.cpages)
		differ("read cpages (segment)", (long)seg, (long)ca.cpages,
		       (long)cb.cpages);
	for (i = 0; i < SEG_PAGES; i++)
		if (memcmp(da + i * PAGE, db + i * PAGE, PAGE))
			differ("read data (page)", (long)(seg * SEG_PAGES + i),
			       da[i * PAGE], db[i * PAGE]);
}

static int memfd_segment(char *s, int shared, uint64_t seed,
			 unsigned long first)
{
	int fd = memfd_create("hmm_diff", 0);
	unsigned long i;
	char *m;

	if (fd < 0 || ftruncate(fd, SEG_PAGES * PAGE))
		return -1;
	m = mmap(s, SEG_PAGES * PAGE, PROT_READ | PROT_WRITE,
		 (shared ? MAP_SHARED : MAP_PRIVATE) | MAP_FIXED, fd, 0);
	if (m == MAP_FAILED) {
		close(fd);
		return -1;
	}
	for (i = 0; i < SEG_PAGES; i++) {
		switch (rnd() % 3) {
		case 0:
			stamp(m + i * PAGE, seed, first + i);
			break;
		case 1:
			(void)*(volatile char *)(m + i * PAGE);
			break;
		}
	}
	return fd;
}

static int layout(uint64_t seed)
{
	int kinds[NSEG], memfds[NSEG], child = -1;
	char *raw, *p, *huge = MAP_FAILED;
	unsigned long seg, i;
	static char scratch[SEG_PAGES * PAGE];

	diffs = 0;
	raw = mmap(NULL, NPAGES * PAGE + HUGE, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (raw == MAP_FAILED)
		return -1;
	p = (char *)(((uintptr_t)raw + HUGE - 1) & ~(HUGE - 1));
	if (p > raw)
		munmap(raw, p - raw);
	munmap(p + NPAGES * PAGE, raw + NPAGES * PAGE + HUGE -
	       (p + NPAGES * PAGE));

	for (seg = 0; seg < NSEG; seg++) {
		char *s = p + seg * SEG_PAGES * PAGE;
		unsigned long first = seg * SEG_PAGES;
		int k = rnd() % NKINDS;

		kinds[seg] = k;
		memfds[seg] = -1;
		switch (k) {
		case EMPTY:
		case UNMAPPED:
			break;
		case READ_ZERO:
			for (i = 0; i < SEG_PAGES; i++)
				(void)*(volatile char *)(s + i * PAGE);
			break;
		case SHMEM_SHARED:
		case FILE_PRIVATE:
			memfds[seg] = memfd_segment(s, k == SHMEM_SHARED, seed,
						    first);
			break;
		case PARTIAL:
			for (i = 0; i < SEG_PAGES; i++)
				if (rnd() & 1)
					stamp(s + i * PAGE, seed, first + i);
			break;
		default:
			for (i = 0; i < SEG_PAGES; i++)
				stamp(s + i * PAGE, seed, first + i);
		}
	}
	/* Protection and holes after every segment is written (a THP
	 * block spanning segments is then split, as a program's would be). */
	for (seg = 0; seg < NSEG; seg++) {
		char *s = p + seg * SEG_PAGES * PAGE;

		switch (kinds[seg]) {
		case RDONLY:
			mprotect(s, SEG_PAGES * PAGE, PROT_READ);
			break;
		case PROTNONE:
			mprotect(s, SEG_PAGES * PAGE, PROT_NONE);
			break;
		case HOLES:
			for (i = 0; i < SEG_PAGES; i++)
				if (rnd() % 3 == 0)
					madvise(s + i * PAGE, PAGE,
						MADV_DONTNEED);
			break;
		case UNMAPPED:
			munmap(s, SEG_PAGES * PAGE);
			break;
		case DEV_A1:
		case DEV_B1:
			cmd(kinds[seg] == DEV_A1 ? fa1 : fb1,
			    HMM_DMIRROR_MIGRATE_TO_DEV, s, SEG_PAGES, scratch,
			    NULL);
			break;
		}
	}
	if (rnd() % 3 == 0) {
		child = fork();
		if (child == 0) {
			for (;;)
				pause();
		}
	}
	if (rnd() % 4 == 0) {
		huge = mmap(NULL, HUGE, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
		if (huge != MAP_FAILED) {
			if (rnd() & 1)
				stamp(huge + (rnd() % 512) * PAGE, seed, 0);
			else
				(void)*(volatile char *)huge;
		}
	}

	printf("# layout %llu:", (unsigned long long)seed);
	for (seg = 0; seg < NSEG; seg++)
		printf(" %s", kind_name[kinds[seg]]);
	printf("%s%s\n", child > 0 ? " +fork" : "",
	       huge != MAP_FAILED ? " +hugetlb" : "");

	compare_snapshot("snapshot (page)", p, NPAGES);
	if (huge != MAP_FAILED)
		compare_snapshot("hugetlb snapshot (page)", huge, HUGE / PAGE);
	for (seg = 0; seg < NSEG; seg++)
		compare_read(p, seg);
	if (huge != MAP_FAILED) {
		static char ha[HUGE], hb[HUGE];
		int ra = cmd(fa0, HMM_DMIRROR_READ, huge, HUGE / PAGE, ha,
			     NULL);
		int rb = cmd(fb0, HMM_DMIRROR_READ, huge, HUGE / PAGE, hb,
			     NULL);

		if (ra != rb)
			differ("hugetlb read errno", 0, ra, rb);
		else if (!ra && memcmp(ha, hb, HUGE))
			differ("hugetlb read data", 0, 0, 1);
	}
	compare_snapshot("snapshot after reads (page)", p, NPAGES);

	if (child > 0) {
		kill(child, SIGKILL);
		waitpid(child, NULL, 0);
	}
	if (huge != MAP_FAILED)
		munmap(huge, HUGE);
	munmap(p, NPAGES * PAGE);
	for (seg = 0; seg < NSEG; seg++)
		if (memfds[seg] >= 0)
			close(memfds[seg]);
	return diffs;
}

int main(int argc, char **argv)
{
	unsigned long seed = 1, n = 100, i;
	int opt, failed = 0;

	while ((opt = getopt(argc, argv, "s:n:")) != -1) {
		if (opt == 's')
			seed = strtoul(optarg, NULL, 0);
		else if (opt == 'n')
			n = strtoul(optarg, NULL, 0);
		else
			return 2;
	}
	if (argc - optind != 4) {
		fprintf(stderr, "usage: hmm_diff [-s SEED] [-n LAYOUTS] A0 B0 A1 B1\n");
		return 2;
	}
	printf("TAP version 13\n1..%lu\n# hmm_diff: A %s, B %s, seed %lu\n", n,
	       argv[optind], argv[optind + 1], seed);
	fa0 = open(argv[optind], O_RDWR | O_CLOEXEC);
	fb0 = open(argv[optind + 1], O_RDWR | O_CLOEXEC);
	fa1 = open(argv[optind + 2], O_RDWR | O_CLOEXEC);
	fb1 = open(argv[optind + 3], O_RDWR | O_CLOEXEC);
	if (fa0 < 0 || fb0 < 0 || fa1 < 0 || fb1 < 0) {
		printf("Bail out! open: %s\n", strerror(errno));
		return 1;
	}
	for (i = 0; i < n; i++) {
		int d;

		rng = (seed + i) * 0x2545f4914f6cdd1dULL | 1;
		d = layout(seed + i);
		if (d < 0) {
			printf("Bail out! mmap: %s\n", strerror(errno));
			return 1;
		}
		if (d)
			failed++;
		printf("%sok %lu layout_%lu\n", d ? "not " : "", i + 1,
		       seed + i);
		if (d)
			printf("# layout %lu: %d differences\n", seed + i, d);
		fflush(stdout);
	}
	printf("# compared: %lu SNAPSHOT bytes (%lu of them valid entries), "
	       "%lu segment READs with data (%lu more with the same errno)\n",
	       n_bytes, n_valid, n_reads_ok, n_reads_err);
	printf("# %lu layouts, %d with differences\n", n, failed);
	return failed ? 1 : 0;
}
