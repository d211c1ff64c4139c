// SPDX-License-Identifier: GPL-2.0
/*
 * ioctl_fuzz: a bounded, seeded fuzzer of the test_hmm ioctl ABI.
 *
 * The same binary is run once against each driver (the kernel's test_hmm.ko
 * and our hmm_rs.ko, loaded one at a time) so that their per-errno answer
 * counts can be compared. The main thread makes up to MAX_CALLS ioctl calls
 * on its own fd of DEVICE, each drawn from a splitmix64 generator seeded with
 * SEED, so the sequence of calls is the same for a given seed:
 *
 *   command   one of READ (0x00) WRITE MIGRATE_TO_DEV MIGRATE_TO_SYS SNAPSHOT
 *             EXCLUSIVE CHECK_EXCLUSIVE RELEASE FLAGS READ_UNLOCKED (0x09),
 *             i.e. _IOWR('H', nr, 40 bytes), or an unknown one: another nr
 *             under 'H', another type letter, a wrong size, a wrong
 *             direction, or a random 32-bit number;
 *   argument  mostly a valid command struct (aligned or not), else NULL, an
 *             unmapped address, a read-only page (the driver writes the
 *             struct back), a kernel address, or a struct whose 40 bytes run
 *             into an unmapped resp. a read-only page;
 *   addr      0, unaligned, a page of a target region, around the user
 *             address limit, near 2^64, random;
 *   npages    0, 1, 2..600, the rest of the region, huge (2^20 .. 2^64-1 and
 *             values that make addr + npages * 4096 overflow), random; the
 *             flags word (0, 1, a bit, random) for FLAGS;
 *   ptr       a 4 MiB buffer (too small if the transfer is larger), NULL,
 *             unmapped, read-only, a kernel address, a target region.
 *
 * Sizes a well-behaved driver would really allocate and copy are avoided:
 * test_hmm vmallocs npages * 4096 bytes before looking at the range (READ,
 * WRITE, MIGRATE_TO_DEV, EXCLUSIVE; READ_UNLOCKED alike), so there the
 * effective page count (test_hmm truncates npages << 12 to 64 bits) is
 * either at most 4096 or at least 2^21 (8 GiB, beyond any RAM the VM has),
 * and CHECK_EXCLUSIVE, whose loop visits every page of the range without
 * ever rescheduling, gets at most 2^16 effective pages (high bits of npages
 * are kept: a driver that does not truncate still sees a huge value). A
 * SNAPSHOT of more than 2^16 pages into the buffer or a region gets a ptr
 * 64 KiB before the guard page that ends it, so its walk stops (EFAULT)
 * after 2^16 pages.
 *
 * The target regions: a 4 MiB anonymous mapping whose first 2 MiB are
 * 2 MiB-aligned and THP-advised (some pages written, some read, some never
 * touched), a 2 MiB memfd (shmem) mapping and a read-only mapping, each
 * between PROT_NONE guard pages. While the main thread fuzzes, stressor
 * threads work on them: munmap + re-mmap of sub-ranges (MAP_FIXED in place,
 * or after a short hole with MAP_FIXED_NOREPLACE), mprotect toggling,
 * MADV_DONTNEED, touching pages, fork()ing a child that writes a page and
 * exits, and an open/close thread that opens DEVICE, issues a few ioctls
 * (not MIGRATE_TO_DEV) and closes it. The stressors keep a per-page state
 * under a mutex, so they only touch pages that are mapped with the right
 * protection: a fault there (caught with sigsetjmp) is a violation.
 *
 * Two races test_hmm (6.12) does not survive are kept out:
 *  - RELEASE against close() of another fd of the same device (close walks
 *    the chunk array RELEASE frees): RELEASE is serialised with the
 *    open/close thread and the fork thread (whose child may drop the last
 *    reference of an fd);
 *  - a READ or WRITE, by any fd of the device, of a page that is device
 *    private on that device and missing from the fd's device page table
 *    (the open/close thread's fd; the main fd after an mprotect or fork
 *    invalidated it): hmm_range_fault reports such a page without faulting
 *    it and test_hmm then copies from/to the device-private struct page,
 *    which has no kernel mapping. So MIGRATE_TO_DEV runs with the open/close
 *    and fork threads held off, and right after it every page of the
 *    anonymous and read-only regions that is not present (/proc/self/pagemap
 *    "swapped": device private, device exclusive, migration entry; every
 *    page if pagemap cannot be read) is read by the CPU, which migrates it
 *    back to system memory, before any other call is made.
 *
 * A successful READ, WRITE, READ_UNLOCKED or SNAPSHOT whose argument was
 * the valid writable struct must have written back cpages == npages; a
 * successful SNAPSHOT into the 4 MiB buffer must have written npages bytes
 * that are HMM_DMIRROR_PROT_* codes and no byte past them. One exception is
 * only noted ("# note ... truncated-npages"), not a violation: test_hmm
 * computes the range size as npages << 12 in 64 bits, so it accepts an
 * npages >= 2^52 as npages mod 2^52 and answers cpages = npages mod 2^52.
 *
 * usage: ioctl_fuzz [-s SEED] [-n MAX_CALLS] [-t MAX_SECONDS] [-d DEVICE]
 *                   [-c CMDLIST]
 *   -s  seed (default: from the clock; always printed)
 *   -n  number of calls (default 20000)
 *   -t  time limit in seconds (default 60); at MAX_SECONDS + 30 a watchdog
 *       prints fuzz-hang and exits 3
 *   -d  device (default /dev/hmm_dmirror0)
 *   -c  comma-separated command numbers (0..255; above 9 is an unknown nr
 *       under 'H') and/or "unknown" (every kind of unknown command);
 *       default 0,1,...,9,unknown
 *
 * Output (stdout; lines starting with '#' are comments):
 *   fuzz-seed <seed>
 *   fuzz-config device=<dev> calls=<max> seconds=<max> cmds=<list>
 *   fuzz-violation <command> call=<n> <what> ...     (as they happen)
 *   fuzz-result <command> <OK | errno name | E<number>> <count>  (sorted)
 *   fuzz-done calls=<n> elapsed_ms=<ms> violations=<n>
 * or fuzz-error <why> (setup failure), fuzz-hang last_call=<command>
 * addr=<addr> npages=<npages> ... (watchdog). <command> is READ, WRITE,
 * MIGRATE_TO_DEV, MIGRATE_TO_SYS, SNAPSHOT, EXCLUSIVE, CHECK_EXCLUSIVE,
 * RELEASE, FLAGS, READ_UNLOCKED or UNKNOWN.
 * Exit status: 0 no violation, 1 violation, 2 setup failure, 3 watchdog.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/ioctl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

struct hmm_dmirror_cmd {
	uint64_t addr, ptr, npages, cpages, faults;
};

_Static_assert(sizeof(struct hmm_dmirror_cmd) == 40, "ABI: 40 bytes");

#define HMM_IOC(nr) _IOWR('H', (nr), struct hmm_dmirror_cmd)

enum {
	C_READ, C_WRITE, C_MIGRATE_TO_DEV, C_MIGRATE_TO_SYS, C_SNAPSHOT,
	C_EXCLUSIVE, C_CHECK_EXCLUSIVE, C_RELEASE, C_FLAGS, C_READ_UNLOCKED,
	C_UNKNOWN, NCMD
};

static const char *const cmd_names[NCMD] = {
	"READ", "WRITE", "MIGRATE_TO_DEV", "MIGRATE_TO_SYS", "SNAPSHOT",
	"EXCLUSIVE", "CHECK_EXCLUSIVE", "RELEASE", "FLAGS", "READ_UNLOCKED",
	"UNKNOWN",
};

/* HMM_DMIRROR_PROT_* (lib/test_hmm_uapi.h). */
#define PROT_ERROR	0xff
#define PROT_ACCESS	0x03	/* READ 0x01, WRITE 0x02 */
#define PROT_SIZE	0x0c	/* PMD 0x04, PUD 0x08 */
#define PROT_KIND_MAX	0x50	/* ZERO 0x10, DEV_PRIVATE 0x20/0x30,
				 * DEV_COHERENT 0x40/0x50 */
#define SENTINEL	0xa5	/* not a PROT code */

#define PAGE		4096UL
#define TWOMEG		(2UL << 20)
#define ANON_SIZE	(4UL << 20)
#define SHM_SIZE	(2UL << 20)
#define RO_SIZE		(256UL << 10)
#define BUF_SIZE	(4UL << 20)
#define RBUF_SIZE	(1UL << 20)

/* Bounds on the effective page count (npages mod 2^52), see the top. */
#define EFF_MASK	((1ULL << 52) - 1)
#define BOUNCE_SMALL	4096ULL
#define BOUNCE_HUGE	(1ULL << 21)
#define CHECK_EXCL_MAX	(1ULL << 16)
#define SNAP_PTR_MAX	(64ULL << 10)

#define EINTR_RETRIES	3
#define HANG_GRACE	30
#define MAX_PRINTED	50
#define MAX_NOTES	10
#define MAXERR		4096

/* ---- PRNG: splitmix64 ---- */

struct rng {
	uint64_t s;
};

static uint64_t rng_next(struct rng *r)
{
	uint64_t z = (r->s += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static uint64_t rng_below(struct rng *r, uint64_t n)
{
	return n ? rng_next(r) % n : 0;
}

#define PICK(r, a) ((a)[rng_below((r), sizeof(a) / sizeof((a)[0]))])

/* ---- errno names ---- */

static const struct {
	int e;
	const char *name;
} errnames[] = {
	{ EPERM, "EPERM" }, { ENOENT, "ENOENT" }, { ESRCH, "ESRCH" },
	{ EINTR, "EINTR" }, { EIO, "EIO" }, { ENXIO, "ENXIO" },
	{ E2BIG, "E2BIG" }, { ENOEXEC, "ENOEXEC" }, { EBADF, "EBADF" },
	{ ECHILD, "ECHILD" }, { EAGAIN, "EAGAIN" }, { ENOMEM, "ENOMEM" },
	{ EACCES, "EACCES" }, { EFAULT, "EFAULT" }, { ENOTBLK, "ENOTBLK" },
	{ EBUSY, "EBUSY" }, { EEXIST, "EEXIST" }, { EXDEV, "EXDEV" },
	{ ENODEV, "ENODEV" }, { ENOTDIR, "ENOTDIR" }, { EISDIR, "EISDIR" },
	{ EINVAL, "EINVAL" }, { ENFILE, "ENFILE" }, { EMFILE, "EMFILE" },
	{ ENOTTY, "ENOTTY" }, { ETXTBSY, "ETXTBSY" }, { EFBIG, "EFBIG" },
	{ ENOSPC, "ENOSPC" }, { ESPIPE, "ESPIPE" }, { EROFS, "EROFS" },
	{ EMLINK, "EMLINK" }, { EPIPE, "EPIPE" }, { EDOM, "EDOM" },
	{ ERANGE, "ERANGE" }, { EDEADLK, "EDEADLK" },
	{ ENAMETOOLONG, "ENAMETOOLONG" }, { ENOLCK, "ENOLCK" },
	{ ENOSYS, "ENOSYS" }, { ENOTEMPTY, "ENOTEMPTY" }, { ELOOP, "ELOOP" },
	{ ENOMSG, "ENOMSG" }, { EIDRM, "EIDRM" }, { ENODATA, "ENODATA" },
	{ ETIME, "ETIME" }, { EOVERFLOW, "EOVERFLOW" }, { EBADFD, "EBADFD" },
	{ EILSEQ, "EILSEQ" }, { EOPNOTSUPP, "EOPNOTSUPP" },
	{ EADDRINUSE, "EADDRINUSE" }, { ETIMEDOUT, "ETIMEDOUT" },
	{ ECANCELED, "ECANCELED" }, { EOWNERDEAD, "EOWNERDEAD" },
	{ ENOTRECOVERABLE, "ENOTRECOVERABLE" }, { EHWPOISON, "EHWPOISON" },
	/* Kernel-internal codes that must never reach user space. */
	{ 512, "ERESTARTSYS" }, { 513, "ERESTARTNOINTR" },
	{ 514, "ERESTARTNOHAND" }, { 515, "ENOIOCTLCMD" },
	{ 516, "ERESTART_RESTARTBLOCK" }, { 517, "EPROBE_DEFER" },
	{ 524, "ENOTSUPP" }, { 529, "EIOCBQUEUED" },
};

static const char *errno_name(int e, char *buf, size_t len)
{
	size_t i;

	if (e == 0)
		return "OK";
	for (i = 0; i < sizeof(errnames) / sizeof(errnames[0]); i++)
		if (errnames[i].e == e)
			return errnames[i].name;
	snprintf(buf, len, "E%d", e);
	return buf;
}

/* ---- memory: target regions, buffers, argument pages ---- */

enum { R_ANON, R_SHM, R_RO, NREG };

/* Per-page state of a target region, under region_lock. */
#define ST_MAPPED	0x01	/* mapped by us */
#define ST_LOST		0x02	/* a re-mmap failed: maybe someone else's */
#define ST_READ		0x04
#define ST_WRITE	0x08
#define ST_UNKNOWN	0x10	/* protection unknown (mprotect failed) */

struct region {
	const char *name;
	char *base;
	size_t size;
	size_t npages;
	int memfd;		/* R_SHM: the backing memfd, else -1 */
	unsigned char *state;
};

static struct region regions[NREG];
static unsigned char anon_state[ANON_SIZE / PAGE];
static unsigned char shm_state[SHM_SIZE / PAGE];
static unsigned char ro_state[RO_SIZE / PAGE];

static char *buf;		/* the valid user buffer (ptr) */
static char *rbuf;		/* the open/close thread's buffer */

/*
 * Argument pages: page W (memfd page 0, writable) is followed by page R
 * (memfd page 1, read-only); alias maps both pages writable elsewhere, for
 * filling structs that lie in R. Page X (anonymous, writable) is followed
 * by a hole.
 */
static char *arg_w, *arg_r, *arg_alias, *arg_x, *arg_hole;

#define OFF_VALID	64
#define OFF_UNALIGNED	(256 + 3)
#define OFF_RO		128

static const uint64_t kernel_addrs[] = {
	0xffff888000000000ULL, 0xffffffff81000000ULL,
	0xffffffffff600000ULL,	/* vsyscall page */
};

static const uint64_t limit_addrs[] = {
	0x00007ffffff00000ULL, 0x00007fffffffe000ULL, 0x00007ffffffff000ULL,
	0x0000800000000000ULL, 0x0000800000001000ULL, 0x00fffffffffff000ULL,
	0x0100000000000000ULL,
};

static const uint64_t top_addrs[] = {
	0xfffffffffffff000ULL, 0xffffffffffffe000ULL, 0xffffffffffff0000ULL,
	0xfffffffffffc0000ULL, 0xfffffffffff00000ULL, 0xffff800000000000ULL,
	0xffff888000000000ULL, 0xffffffff81000000ULL, 0xffffffffff600000ULL,
};

/*
 * Map size bytes aligned to align between PROT_NONE guard pages (which stay
 * mapped: the range walks of the drivers stop there). Returns the base of
 * the usable part, still PROT_NONE.
 */
static char *reserve(size_t size, size_t align)
{
	size_t total = size + align + 2 * PAGE;
	char *p = mmap(NULL, total, PROT_NONE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	uintptr_t b;

	if (p == MAP_FAILED)
		return NULL;
	b = ((uintptr_t)p + PAGE + align - 1) & ~(uintptr_t)(align - 1);
	return (char *)b;
}

static int map_region_pages(struct region *rg, size_t first, size_t n,
			    int fixed)
{
	char *addr = rg->base + first * PAGE;
	char *p;

	if (rg->memfd >= 0)
		p = mmap(addr, n * PAGE, PROT_READ | PROT_WRITE,
			 MAP_SHARED | fixed, rg->memfd, first * PAGE);
	else
		p = mmap(addr, n * PAGE, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | fixed, -1, 0);
	if (p == MAP_FAILED)
		return -1;
	if (p != addr) {
		/* MAP_FIXED_NOREPLACE unknown to the kernel: just a hint. */
		munmap(p, n * PAGE);
		return -1;
	}
	/* Only the first 2 MiB of the anonymous region are THP-advised. */
	if (rg->memfd < 0 && first * PAGE < TWOMEG)
		madvise(addr, first + n > TWOMEG / PAGE ?
			TWOMEG - first * PAGE : n * PAGE, MADV_HUGEPAGE);
	return 0;
}

static int setup_memory(void)
{
	struct region *rg;
	size_t i;
	int fd;

	/* Anonymous: 4 MiB, 2 MiB-aligned, first 2 MiB THP-advised. */
	rg = &regions[R_ANON];
	rg->name = "anon";
	rg->size = ANON_SIZE;
	rg->npages = ANON_SIZE / PAGE;
	rg->memfd = -1;
	rg->state = anon_state;
	rg->base = reserve(ANON_SIZE, TWOMEG);
	if (!rg->base || map_region_pages(rg, 0, rg->npages, MAP_FIXED))
		return -1;
	memset(rg->base, 0x11, TWOMEG);			/* THP, written */
	for (i = TWOMEG / PAGE; i < rg->npages; i++) {
		if (i % 3 == 0)
			rg->base[i * PAGE] = (char)i;	/* written */
		else if (i % 3 == 1)
			(void)*(volatile char *)(rg->base + i * PAGE);
	}						/* else untouched */
	memset(anon_state, ST_MAPPED | ST_READ | ST_WRITE, sizeof(anon_state));

	/* Shmem: a 2 MiB memfd, every other page written. */
	rg = &regions[R_SHM];
	rg->name = "shm";
	rg->size = SHM_SIZE;
	rg->npages = SHM_SIZE / PAGE;
	rg->state = shm_state;
	rg->memfd = memfd_create("ioctl_fuzz_shm", MFD_CLOEXEC);
	if (rg->memfd < 0 || ftruncate(rg->memfd, SHM_SIZE))
		return -1;
	rg->base = reserve(SHM_SIZE, PAGE);
	if (!rg->base || map_region_pages(rg, 0, rg->npages, MAP_FIXED))
		return -1;
	for (i = 0; i < rg->npages; i += 2)
		rg->base[i * PAGE] = (char)i;
	memset(shm_state, ST_MAPPED | ST_READ | ST_WRITE, sizeof(shm_state));

	/* Read-only: first half has data, some of the rest is the zero page. */
	rg = &regions[R_RO];
	rg->name = "ro";
	rg->size = RO_SIZE;
	rg->npages = RO_SIZE / PAGE;
	rg->memfd = -1;
	rg->state = ro_state;
	rg->base = reserve(RO_SIZE, PAGE);
	if (!rg->base || mmap(rg->base, RO_SIZE, PROT_READ | PROT_WRITE,
			      MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
			      -1, 0) == MAP_FAILED)
		return -1;
	memset(rg->base, 0x5a, RO_SIZE / 2);
	if (mprotect(rg->base, RO_SIZE, PROT_READ))
		return -1;
	for (i = rg->npages / 2; i < rg->npages; i += 2)
		(void)*(volatile char *)(rg->base + i * PAGE);
	memset(ro_state, ST_MAPPED | ST_READ, sizeof(ro_state));

	/* The buffers, each between guards. */
	buf = reserve(BUF_SIZE, PAGE);
	rbuf = reserve(RBUF_SIZE, PAGE);
	if (!buf || !rbuf ||
	    mprotect(buf, BUF_SIZE, PROT_READ | PROT_WRITE) ||
	    mprotect(rbuf, RBUF_SIZE, PROT_READ | PROT_WRITE))
		return -1;
	memset(buf, 0x33, BUF_SIZE);
	memset(rbuf, 0x44, RBUF_SIZE);

	/* Argument pages: [guard][W][R][X][hole][guard]. */
	arg_w = reserve(4 * PAGE, PAGE);
	fd = memfd_create("ioctl_fuzz_arg", MFD_CLOEXEC);
	if (!arg_w || fd < 0 || ftruncate(fd, 2 * PAGE))
		return -1;
	arg_r = arg_w + PAGE;
	arg_x = arg_w + 2 * PAGE;
	arg_hole = arg_w + 3 * PAGE;
	arg_alias = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED,
			 fd, 0);
	if (arg_alias == MAP_FAILED ||
	    mmap(arg_w, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED,
		 fd, 0) == MAP_FAILED ||
	    mmap(arg_r, PAGE, PROT_READ, MAP_SHARED | MAP_FIXED,
		 fd, PAGE) == MAP_FAILED ||
	    mprotect(arg_x, PAGE, PROT_READ | PROT_WRITE) ||
	    munmap(arg_hole, PAGE))
		return -1;
	close(fd);
	return 0;
}

/* ---- shared state ---- */

static const char *device = "/dev/hmm_dmirror0";
static volatile int stop;
static pthread_barrier_t go;

static pthread_mutex_t region_lock = PTHREAD_MUTEX_INITIALIZER;
/*
 * Held by the open/close thread around open..close, by the fork thread
 * around fork..waitpid, and by the main thread around RELEASE and around
 * MIGRATE_TO_DEV and the settling after it (see the top).
 */
static pthread_mutex_t dev_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t print_lock = PTHREAD_MUTEX_INITIALIZER;

static unsigned long violations;

/* The call in flight, for the watchdog. */
struct inflight {
	volatile int active;
	volatile int cmd;
	volatile unsigned long req;
	volatile uint64_t addr, npages, ptr, call;
};

static struct inflight cur, race_cur;
static volatile pid_t fork_child;

static struct {
	unsigned long remaps, remap_holes, lost, mprotects, mprotect_fail,
		dontneeds, touches, forks, race_opens, race_open_fail,
		race_ioctls, race_ok, settled;
} st;

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_us(unsigned long us)
{
	struct timespec ts = { us / 1000000, (us % 1000000) * 1000 };

	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

static void violation(const char *fmt, ...)
	__attribute__((format(printf, 1, 2)));

static void violation(const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&print_lock);
	if (++violations <= MAX_PRINTED) {
		fputs("fuzz-violation ", stdout);
		va_start(ap, fmt);
		vprintf(fmt, ap);
		va_end(ap);
		putchar('\n');
		fflush(stdout);
	}
	pthread_mutex_unlock(&print_lock);
}

/* ---- page-state helpers (region_lock held) ---- */

/* True if every page of [first, first + n) is mapped by us. */
static int range_owned(struct region *rg, size_t first, size_t n)
{
	size_t i;

	for (i = first; i < first + n; i++)
		if ((rg->state[i] & (ST_MAPPED | ST_LOST)) != ST_MAPPED)
			return 0;
	return 1;
}

/* ... and has a known protection that allows need (ST_READ, ST_WRITE). */
static int range_is(struct region *rg, size_t first, size_t n, int need)
{
	size_t i;

	for (i = first; i < first + n; i++)
		if ((rg->state[i] & (ST_MAPPED | ST_LOST | ST_UNKNOWN | need)) !=
		    (ST_MAPPED | need))
			return 0;
	return 1;
}

static int range_has(struct region *rg, size_t first, size_t n, int bits)
{
	size_t i;

	for (i = first; i < first + n; i++)
		if (rg->state[i] & bits)
			return 1;
	return 0;
}

static void range_set(struct region *rg, size_t first, size_t n, int v)
{
	memset(rg->state + first, v, n);
}

static void pick_range(struct rng *r, struct region *rg, size_t max,
		       size_t *first, size_t *n)
{
	*first = rng_below(r, rg->npages);
	*n = 1 + rng_below(r, max);
	if (*first + *n > rg->npages)
		*n = rg->npages - *first;
}

/* ---- stressors ---- */

static void *remap_main(void *arg)
{
	struct rng r = { *(uint64_t *)arg ^ 0x72656d6170ULL };

	pthread_barrier_wait(&go);
	while (!stop) {
		struct region *rg = &regions[rng_below(&r, 10) < 7 ? R_ANON :
							R_SHM];
		size_t first, n;

		if (rg->memfd < 0 && rng_below(&r, 8) == 0) {
			/* A whole (THP-advised) 2 MiB-aligned block. */
			first = rng_below(&r, ANON_SIZE / TWOMEG) *
				(TWOMEG / PAGE);
			n = TWOMEG / PAGE;
		} else {
			pick_range(&r, rg, 64, &first, &n);
		}
		pthread_mutex_lock(&region_lock);
		if (range_has(rg, first, n, ST_LOST)) {
			pthread_mutex_unlock(&region_lock);
			continue;
		}
		if (rng_below(&r, 2)) {
			/* In place: the range is never a hole. */
			if (map_region_pages(rg, first, n, MAP_FIXED))
				range_set(rg, first, n, ST_LOST);
			else
				range_set(rg, first, n,
					  ST_MAPPED | ST_READ | ST_WRITE);
		} else {
			/* A hole for a while; then only where still free. */
			munmap(rg->base + first * PAGE, n * PAGE);
			range_set(rg, first, n, 0);
			pthread_mutex_unlock(&region_lock);
			sleep_us(rng_below(&r, 300));
			pthread_mutex_lock(&region_lock);
			st.remap_holes++;
			if (map_region_pages(rg, first, n,
					     MAP_FIXED_NOREPLACE)) {
				range_set(rg, first, n, ST_LOST);
				st.lost++;
			} else {
				range_set(rg, first, n,
					  ST_MAPPED | ST_READ | ST_WRITE);
			}
		}
		st.remaps++;
		pthread_mutex_unlock(&region_lock);
		sleep_us(200 + rng_below(&r, 2000));
	}
	return NULL;
}

static void *mprotect_main(void *arg)
{
	struct rng r = { *(uint64_t *)arg ^ 0x6d70726f74ULL };
	static const int prots[] = {
		PROT_NONE, PROT_READ, PROT_READ,
		PROT_READ | PROT_WRITE, PROT_READ | PROT_WRITE,
		PROT_READ | PROT_WRITE,
	};

	pthread_barrier_wait(&go);
	while (!stop) {
		struct region *rg = &regions[rng_below(&r, 10) < 7 ? R_ANON :
							R_SHM];
		int prot = PICK(&r, prots);
		size_t first, n;

		pick_range(&r, rg, 32, &first, &n);
		pthread_mutex_lock(&region_lock);
		if (range_owned(rg, first, n)) {
			if (mprotect(rg->base + first * PAGE, n * PAGE,
				     prot)) {
				range_set(rg, first, n,
					  ST_MAPPED | ST_UNKNOWN);
				st.mprotect_fail++;
			} else {
				range_set(rg, first, n, ST_MAPPED |
					  (prot & PROT_READ ? ST_READ : 0) |
					  (prot & PROT_WRITE ? ST_WRITE : 0));
			}
			st.mprotects++;
		}
		pthread_mutex_unlock(&region_lock);
		sleep_us(100 + rng_below(&r, 1500));
	}
	return NULL;
}

static void *dontneed_main(void *arg)
{
	struct rng r = { *(uint64_t *)arg ^ 0x646f6e74ULL };

	pthread_barrier_wait(&go);
	while (!stop) {
		struct region *rg = &regions[rng_below(&r, 10) < 7 ? R_ANON :
							R_SHM];
		size_t first, n;

		pick_range(&r, rg, 128, &first, &n);
		pthread_mutex_lock(&region_lock);
		if (range_owned(rg, first, n)) {
			madvise(rg->base + first * PAGE, n * PAGE,
				MADV_DONTNEED);
			st.dontneeds++;
		}
		pthread_mutex_unlock(&region_lock);
		sleep_us(100 + rng_below(&r, 1500));
	}
	return NULL;
}

static __thread volatile sig_atomic_t touch_armed;
static __thread sigjmp_buf touch_jmp;

static void fault_handler(int sig, siginfo_t *si, void *uc)
{
	char msg[96];
	int len;

	(void)uc;
	if (touch_armed) {
		touch_armed = 0;
		siglongjmp(touch_jmp, sig);
	}
	/* Not a stressor touch: a bug of the fuzzer itself. Die of it. */
	len = snprintf(msg, sizeof(msg), "fuzz-error signal %d at %p\n",
		       sig, si->si_addr);
	if (len > 0 && write(1, msg, len) < 0)
		len = 0;
	signal(sig, SIG_DFL);
}

/* Touch page i of rg as its state allows (region_lock held). */
static void touch_page(struct rng *r, struct region *rg, size_t i)
{
	volatile char *p = rg->base + i * PAGE + rng_below(r, PAGE);
	int s = rg->state[i];
	int sig;

	if (!(s & ST_MAPPED) || (s & (ST_LOST | ST_UNKNOWN)))
		return;
	if (!(s & (ST_READ | ST_WRITE)))
		return;
	sig = sigsetjmp(touch_jmp, 1);
	if (sig) {
		violation("TOUCH call=%llu touch-fault sig=%d region=%s page=%zu state=0x%x",
			  (unsigned long long)cur.call, sig, rg->name, i, s);
		return;
	}
	touch_armed = 1;
	if (s & ST_WRITE)
		*p = (char)rng_next(r);
	else
		(void)*p;
	touch_armed = 0;
	st.touches++;
}

static void *touch_main(void *arg)
{
	struct rng r = { *(uint64_t *)arg ^ 0x746f756368ULL };

	pthread_barrier_wait(&go);
	while (!stop) {
		unsigned int k = rng_below(&r, 100);
		struct region *rg = &regions[k < 50 ? R_ANON :
					     k < 85 ? R_SHM : R_RO];
		size_t first, n, i;

		pick_range(&r, rg, 8, &first, &n);
		pthread_mutex_lock(&region_lock);
		for (i = first; i < first + n; i++)
			touch_page(&r, rg, i);
		pthread_mutex_unlock(&region_lock);
		sleep_us(rng_below(&r, 500));
	}
	return NULL;
}

static int pagemap_fd = -1;

/*
 * Read page i of rg by the CPU whatever its protection (region_lock held):
 * a device-private page migrates back to system memory.
 */
static void settle_page(struct region *rg, size_t i)
{
	volatile char *p = rg->base + i * PAGE;
	int s = rg->state[i];
	int sig;

	if (!(s & ST_MAPPED) || (s & ST_LOST))
		return;
	if ((!(s & ST_READ) || (s & ST_UNKNOWN)) &&
	    mprotect((char *)p, PAGE, PROT_READ))
		return;
	sig = sigsetjmp(touch_jmp, 1);
	if (sig) {
		violation("%s call=%llu settle-fault sig=%d region=%s page=%zu state=0x%x",
			  cmd_names[cur.cmd], (unsigned long long)cur.call,
			  sig, rg->name, i, s);
	} else {
		touch_armed = 1;
		(void)*p;
		touch_armed = 0;
	}
	if (s & ST_UNKNOWN)
		rg->state[i] = ST_MAPPED | ST_READ;	/* known now */
	else if (!(s & ST_READ) && mprotect((char *)p, PAGE, PROT_NONE))
		rg->state[i] = ST_MAPPED | ST_UNKNOWN;
}

/* Bring every non-present page of rg back to system memory. */
static void settle_region(struct region *rg)
{
	static uint64_t pm[ANON_SIZE / PAGE];
	size_t len = rg->npages * sizeof(pm[0]), i;
	off_t off = (uintptr_t)rg->base / PAGE * sizeof(pm[0]);
	int pass;

	for (pass = 0; pass < 3; pass++) {
		int left = 0;

		if (pagemap_fd < 0 ||
		    pread(pagemap_fd, pm, len, off) != (ssize_t)len) {
			for (i = 0; i < rg->npages; i++)
				settle_page(rg, i);
			return;
		}
		for (i = 0; i < rg->npages; i++) {
			if (pm[i] >> 62 & 1) {	/* PM_SWAP */
				settle_page(rg, i);
				left++;
			}
		}
		if (!left)
			return;
		st.settled += left;
	}
}

static void child_fault(int sig)
{
	_exit(sig == SIGBUS ? 6 : 5);
}

/* Child of fork_main: write the chosen pages, exit. */
static void __attribute__((noreturn)) fork_child_main(char **pages, int n)
{
	int i;

	signal(SIGSEGV, child_fault);
	signal(SIGBUS, child_fault);
	for (i = 0; i < n; i++)
		*(volatile char *)pages[i] += 1;
	_exit(0);
}

static void *fork_main(void *arg)
{
	struct rng r = { *(uint64_t *)arg ^ 0x666f726bULL };

	pthread_barrier_wait(&go);
	while (!stop) {
		char *pages[4];
		int n = 0, tries, status, waited;
		pid_t pid;

		pthread_mutex_lock(&dev_lock);
		pthread_mutex_lock(&region_lock);
		for (tries = 0; tries < 16 && n < 4; tries++) {
			struct region *rg = &regions[rng_below(&r, 3) ? R_ANON :
							      R_SHM];
			size_t i = rng_below(&r, rg->npages);

			if (range_is(rg, i, 1, ST_WRITE))
				pages[n++] = rg->base + i * PAGE;
		}
		pid = fork();
		if (pid == 0)
			fork_child_main(pages, n);
		pthread_mutex_unlock(&region_lock);
		if (pid > 0) {
			fork_child = pid;
			st.forks++;
			/* Poll for the child; give up after 10 s. */
			for (waited = 0; waited < 10000; waited++) {
				if (waitpid(pid, &status, WNOHANG) == pid)
					break;
				sleep_us(1000);
			}
			if (waited == 10000) {
				kill(pid, SIGKILL);
				waitpid(pid, &status, 0);
				violation("FORK call=%llu child-stuck pages=%d",
					  (unsigned long long)cur.call, n);
			} else if (!WIFEXITED(status) ||
				   WEXITSTATUS(status) != 0) {
				violation("FORK call=%llu child-fault status=0x%x pages=%d",
					  (unsigned long long)cur.call,
					  status, n);
			}
			fork_child = 0;
		}
		pthread_mutex_unlock(&dev_lock);
		sleep_us(2000 + rng_below(&r, 8000));
	}
	return NULL;
}

static long ioctl_retry(int fd, unsigned long req, void *arg, int *err)
{
	long ret;
	int i;

	for (i = 0;; i++) {
		ret = ioctl(fd, req, arg);
		*err = ret ? errno : 0;
		if (!ret || *err != EINTR || i == EINTR_RETRIES)
			return ret;
	}
}

/* Opens the device, makes a few sane calls on its own fd, closes it. */
static void *race_main(void *arg)
{
	struct rng r = { *(uint64_t *)arg ^ 0x72616365ULL };
	static const int cmds[] = {
		C_READ, C_WRITE, C_SNAPSHOT, C_CHECK_EXCLUSIVE, C_EXCLUSIVE,
		C_MIGRATE_TO_SYS, C_READ_UNLOCKED, C_FLAGS,
	};
	static struct hmm_dmirror_cmd c;

	pthread_barrier_wait(&go);
	while (!stop) {
		int fd, i, n, err;

		pthread_mutex_lock(&dev_lock);
		fd = open(device, O_RDWR | O_CLOEXEC);
		if (fd < 0) {
			st.race_open_fail++;
			pthread_mutex_unlock(&dev_lock);
			sleep_us(1000);
			continue;
		}
		st.race_opens++;
		n = 1 + rng_below(&r, 4);
		for (i = 0; i < n; i++) {
			struct region *rg = &regions[rng_below(&r, NREG)];
			int cmd = PICK(&r, cmds);
			size_t first = rng_below(&r, rg->npages);

			c.addr = (uintptr_t)rg->base + first * PAGE;
			c.ptr = (uintptr_t)rbuf;
			c.npages = 1 + rng_below(&r, 64);
			if (first + c.npages > rg->npages)
				c.npages = rg->npages - first;
			if (cmd == C_FLAGS)
				c.npages = rng_below(&r, 2);
			c.cpages = c.faults = 0;
			race_cur.cmd = cmd;
			race_cur.addr = c.addr;
			race_cur.npages = c.npages;
			race_cur.active = 1;
			if (!ioctl_retry(fd, HMM_IOC(cmd), &c, &err))
				st.race_ok++;
			race_cur.active = 0;
			st.race_ioctls++;
		}
		close(fd);
		pthread_mutex_unlock(&dev_lock);
		sleep_us(rng_below(&r, 2000));
	}
	return NULL;
}

/* ---- watchdog ---- */

static pthread_mutex_t wd_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wd_cond;
static int wd_done;
static struct timespec wd_deadline;

static void *watchdog_main(void *arg)
{
	char msg[512];
	int len;

	(void)arg;
	pthread_mutex_lock(&wd_lock);
	while (!wd_done)
		if (pthread_cond_timedwait(&wd_cond, &wd_lock,
					   &wd_deadline) == ETIMEDOUT)
			break;
	if (wd_done) {
		pthread_mutex_unlock(&wd_lock);
		return NULL;
	}
	len = snprintf(msg, sizeof(msg),
		       "fuzz-hang last_call=%s addr=0x%llx npages=0x%llx req=0x%lx ptr=0x%llx call=%llu in_ioctl=%d\n"
		       "# race thread: %s addr=0x%llx npages=0x%llx in_ioctl=%d\n",
		       cmd_names[cur.cmd], (unsigned long long)cur.addr,
		       (unsigned long long)cur.npages, cur.req,
		       (unsigned long long)cur.ptr,
		       (unsigned long long)cur.call, cur.active,
		       cmd_names[race_cur.cmd],
		       (unsigned long long)race_cur.addr,
		       (unsigned long long)race_cur.npages, race_cur.active);
	/* Whoever holds print_lock may be the one that is stuck. */
	if (!pthread_mutex_trylock(&print_lock))
		fflush(stdout);
	if (write(1, msg, len) < 0)
		len = 0;
	if (fork_child > 0)
		kill(fork_child, SIGKILL);
	_exit(3);
}

/* ---- the fuzzed calls ---- */

enum {
	ARG_VALID, ARG_UNALIGNED, ARG_NULL, ARG_UNMAPPED, ARG_RO, ARG_KERNEL,
	ARG_CROSS_HOLE, ARG_CROSS_RO,
};

#define SEL_UNKNOWN 256		/* in the command list: any unknown kind */

struct call {
	unsigned long req;
	int cmd;		/* C_* accounting class */
	int argkind;
	void *arg;		/* what the ioctl gets */
	char *fill;		/* where the struct is written (writable) */
	size_t fill_len;
	struct hmm_dmirror_cmd c;
	int region;		/* addr is in this region, or -1 */
};

static int classify(unsigned long req)
{
	int nr;

	for (nr = 0; nr <= C_READ_UNLOCKED; nr++)
		if (req == HMM_IOC(nr))
			return nr;
	return C_UNKNOWN;
}

static unsigned long draw_unknown(struct rng *r)
{
	static const unsigned int bad_sizes[] = {
		0, 8, 32, 39, 41, 48, 64, 0x3fff,
	};
	static const unsigned int bad_dirs[] = {
		_IOC_NONE, _IOC_READ, _IOC_WRITE,
	};
	static const unsigned int types[] = { 'h', 'G', 'I', 'T', 'X', 0 };
	unsigned int nr = rng_below(r, 10);
	unsigned long req;

	switch (rng_below(r, 5)) {
	case 0:
		return HMM_IOC(0x0a + rng_below(r, 0xf6));
	case 1:
		return _IOC(_IOC_READ | _IOC_WRITE, PICK(r, types), nr,
			    sizeof(struct hmm_dmirror_cmd));
	case 2:
		return _IOC(_IOC_READ | _IOC_WRITE, 'H', nr, PICK(r, bad_sizes));
	case 3:
		return _IOC(PICK(r, bad_dirs), 'H', nr,
			    sizeof(struct hmm_dmirror_cmd));
	default:
		req = (uint32_t)rng_next(r);
		/* Keep clear of the VFS's own ioctls (FIFREEZE & co). */
		if (_IOC_TYPE(req) == 'X' || _IOC_TYPE(req) == 0x54 ||
		    _IOC_TYPE(req) == 0x00 || _IOC_TYPE(req) == 0x94 ||
		    _IOC_TYPE(req) == 'f' || _IOC_TYPE(req) == 0x15)
			req ^= 0x4800;
		return req;
	}
}

static uint64_t region_page(struct rng *r, int *which)
{
	unsigned int k = rng_below(r, 100);
	int g = k < 55 ? R_ANON : k < 80 ? R_SHM : R_RO;

	if (which)
		*which = g;
	return (uintptr_t)regions[g].base +
		rng_below(r, regions[g].npages) * PAGE;
}

static uint64_t draw_addr(struct rng *r, int *region)
{
	unsigned int k = rng_below(r, 100);

	*region = -1;
	if (k < 4)
		return 0;
	if (k < 10)
		return region_page(r, NULL) + 1 + rng_below(r, PAGE - 1);
	if (k < 68)
		return region_page(r, region);
	if (k < 76)
		return PICK(r, limit_addrs);
	if (k < 86)
		return PICK(r, top_addrs);
	if (k < 92)
		return rng_next(r) & ~(uint64_t)(PAGE - 1);
	return rng_next(r);
}

static uint64_t draw_npages(struct rng *r, uint64_t addr, int region)
{
	unsigned int k = rng_below(r, 100);
	/* Pages from addr to 2^64 (2^52 for 0), for the overflow values. */
	uint64_t to_top = addr ? (0 - addr) >> 12 : 1ULL << 52;
	uint64_t huge[] = {
		1ULL << 20, 1ULL << 21, 1ULL << 30, 1ULL << 40, 1ULL << 52,
		1ULL << 63, UINT64_MAX, UINT64_MAX / PAGE,
		to_top, to_top + 1, to_top - 1,
	};

	if (k < 4)
		return 0;
	if (k < 16)
		return 1;
	if (k < 46)
		return 2 + rng_below(r, 599);
	if (k < 70) {
		if (region < 0)
			return 1 + rng_below(r, 1024);
		return ((uintptr_t)regions[region].base +
			regions[region].size - addr) / PAGE;
	}
	if (k < 92)
		return PICK(r, huge);
	return rng_next(r);
}

static uint64_t draw_flags(struct rng *r)
{
	switch (rng_below(r, 4)) {
	case 0:
		return 0;
	case 1:
		return 1;
	case 2:
		return 1ULL << rng_below(r, 64);
	default:
		return rng_next(r);
	}
}

static uint64_t draw_ptr(struct rng *r)
{
	unsigned int k = rng_below(r, 100);

	if (k < 55)
		return (uintptr_t)buf;
	if (k < 63)
		return 0;
	if (k < 71)
		return k & 1 ? (uintptr_t)arg_hole : 0x10000;
	if (k < 79)
		return (uintptr_t)regions[R_RO].base +
			rng_below(r, regions[R_RO].npages) * PAGE;
	if (k < 87)
		return PICK(r, kernel_addrs);
	return region_page(r, NULL);
}

/* The end of the writable area (buf, a region) holding p, else p. */
static uint64_t area_end(uint64_t p)
{
	uint64_t b = (uintptr_t)buf;
	int i;

	if (p >= b && p < b + BUF_SIZE)
		return b + BUF_SIZE;
	for (i = 0; i < NREG; i++) {
		b = (uintptr_t)regions[i].base;
		if (p >= b && p < b + regions[i].size)
			return b + regions[i].size;
	}
	return p;
}

/*
 * Keep the work a driver may legitimately do bounded (see the top). The
 * rules follow test_hmm: a range it rejects up front (unaligned, empty or
 * wrapping after npages << 12) is left alone; they apply by the command's
 * nr, whatever the rest of the encoding, in case a driver only decodes nr.
 */
static void bound_npages(struct call *cl)
{
	uint64_t addr = cl->c.addr, npages = cl->c.npages;
	uint64_t eff = npages & EFF_MASK, end;
	unsigned int nr = _IOC_NR(cl->req);

	if ((addr & (PAGE - 1)) || addr >= addr + (npages << 12))
		return;
	switch (nr) {
	case C_SNAPSHOT:
		/* One byte a page: at most SNAP_PTR_MAX bytes to a guard. */
		end = area_end(cl->c.ptr);
		if (eff > SNAP_PTR_MAX && end - cl->c.ptr > SNAP_PTR_MAX)
			cl->c.ptr = end - SNAP_PTR_MAX;
		break;
	case C_CHECK_EXCLUSIVE:
		if (eff > CHECK_EXCL_MAX)
			cl->c.npages = (npages & ~EFF_MASK) |
				       (eff & (CHECK_EXCL_MAX - 1));
		break;
	case C_READ:
	case C_WRITE:
	case C_MIGRATE_TO_DEV:
	case C_EXCLUSIVE:
	case C_READ_UNLOCKED:
		if (eff > BOUNCE_SMALL && eff < BOUNCE_HUGE)
			cl->c.npages = (npages & ~EFF_MASK) | BOUNCE_HUGE;
		break;
	}
}

static void draw_call(struct rng *r, const int *sel, int nsel,
		      struct call *cl)
{
	int s = sel[rng_below(r, nsel)];
	unsigned int k;

	memset(cl, 0, sizeof(*cl));
	cl->req = s == SEL_UNKNOWN ? draw_unknown(r) : HMM_IOC(s);
	cl->cmd = classify(cl->req);

	k = rng_below(r, 100);
	cl->argkind = k < 78 ? ARG_VALID : k < 82 ? ARG_UNALIGNED :
		k < 85 ? ARG_NULL : k < 88 ? ARG_UNMAPPED : k < 91 ? ARG_RO :
		k < 94 ? ARG_KERNEL : k < 97 ? ARG_CROSS_HOLE : ARG_CROSS_RO;

	cl->c.addr = draw_addr(r, &cl->region);
	if (cl->cmd == C_FLAGS)
		cl->c.npages = draw_flags(r);
	else
		cl->c.npages = draw_npages(r, cl->c.addr, cl->region);
	cl->c.ptr = draw_ptr(r);
	cl->c.cpages = rng_next(r);
	cl->c.faults = rng_next(r);
	bound_npages(cl);

	cl->fill_len = sizeof(cl->c);
	switch (cl->argkind) {
	case ARG_VALID:
		cl->arg = arg_w + OFF_VALID;
		cl->fill = arg_alias + OFF_VALID;
		break;
	case ARG_UNALIGNED:
		cl->arg = arg_w + OFF_UNALIGNED;
		cl->fill = arg_alias + OFF_UNALIGNED;
		break;
	case ARG_NULL:
		cl->arg = NULL;
		break;
	case ARG_UNMAPPED:
		cl->arg = rng_below(r, 2) ? arg_hole : (void *)0x10000;
		break;
	case ARG_RO:
		cl->arg = arg_r + OFF_RO;
		cl->fill = arg_alias + PAGE + OFF_RO;
		break;
	case ARG_KERNEL:
		cl->arg = (void *)(uintptr_t)PICK(r, kernel_addrs);
		break;
	case ARG_CROSS_HOLE:
		/* 16 bytes in page X, the rest in the hole. */
		cl->arg = arg_x + PAGE - 16;
		cl->fill = arg_x + PAGE - 16;
		cl->fill_len = 16;
		break;
	case ARG_CROSS_RO:
		/* 24 bytes in page W, 16 in the read-only page R. */
		cl->arg = arg_r - 24;
		cl->fill = arg_alias + PAGE - 24;
		break;
	}
}

static int prot_byte_ok(unsigned char v)
{
	if (v == PROT_ERROR)
		return 1;
	if ((v & 0xf0) > PROT_KIND_MAX)
		return 0;
	if ((v & PROT_ACCESS) == PROT_ACCESS)	/* READ and WRITE */
		return 0;
	if ((v & PROT_SIZE) == PROT_SIZE)	/* PMD and PUD */
		return 0;
	return 1;
}

static int writable_arg(const struct call *cl)
{
	return cl->argkind == ARG_VALID || cl->argkind == ARG_UNALIGNED;
}

/* A SNAPSHOT into buf whose bytes (and a sentinel tail) we can check. */
static size_t snapshot_check_len(const struct call *cl)
{
	if (cl->cmd != C_SNAPSHOT || !writable_arg(cl) ||
	    cl->c.ptr != (uintptr_t)buf || cl->c.npages > BUF_SIZE - 64)
		return 0;
	return cl->c.npages;
}

static unsigned long truncated;

static void check_success(const struct call *cl, uint64_t n)
{
	struct hmm_dmirror_cmd out;
	size_t len, i;

	if (!writable_arg(cl))
		return;
	memcpy(&out, cl->arg, sizeof(out));
	switch (cl->cmd) {
	case C_READ:
	case C_WRITE:
	case C_READ_UNLOCKED:
	case C_SNAPSHOT:
		if (out.cpages == cl->c.npages)
			break;
		if (cl->c.npages > EFF_MASK &&
		    out.cpages == (cl->c.npages & EFF_MASK)) {
			/* test_hmm: npages << 12 truncated, see the top. */
			pthread_mutex_lock(&print_lock);
			if (++truncated <= MAX_NOTES)
				printf("# note %s call=%llu truncated-npages npages=0x%llx cpages=0x%llx\n",
				       cmd_names[cl->cmd],
				       (unsigned long long)n,
				       (unsigned long long)cl->c.npages,
				       (unsigned long long)out.cpages);
			pthread_mutex_unlock(&print_lock);
			break;
		}
		violation("%s call=%llu cpages-mismatch addr=0x%llx npages=0x%llx cpages=0x%llx",
			  cmd_names[cl->cmd], (unsigned long long)n,
			  (unsigned long long)cl->c.addr,
			  (unsigned long long)cl->c.npages,
			  (unsigned long long)out.cpages);
		break;
	}
	len = snapshot_check_len(cl);
	if (!len)
		return;
	for (i = 0; i < len; i++) {
		if (!prot_byte_ok((unsigned char)buf[i])) {
			violation("SNAPSHOT call=%llu bad-prot-byte index=%zu value=0x%02x addr=0x%llx npages=0x%llx",
				  (unsigned long long)n, i,
				  (unsigned char)buf[i],
				  (unsigned long long)cl->c.addr,
				  (unsigned long long)cl->c.npages);
			return;
		}
	}
	for (i = len; i < len + 64; i++) {
		if ((unsigned char)buf[i] != SENTINEL) {
			violation("SNAPSHOT call=%llu wrote-past-npages index=%zu value=0x%02x addr=0x%llx npages=0x%llx",
				  (unsigned long long)n, i,
				  (unsigned char)buf[i],
				  (unsigned long long)cl->c.addr,
				  (unsigned long long)cl->c.npages);
			return;
		}
	}
}

static uint64_t counts[NCMD][MAXERR];

static void do_call(int fd, const struct call *cl, uint64_t n)
{
	size_t snap = snapshot_check_len(cl);
	long ret;
	int err, i;

	if (snap)
		memset(buf, SENTINEL, snap + 64);
	cur.cmd = cl->cmd;
	cur.req = cl->req;
	cur.addr = cl->c.addr;
	cur.npages = cl->c.npages;
	cur.ptr = cl->c.ptr;
	cur.call = n;
	if (cl->cmd == C_RELEASE || cl->cmd == C_MIGRATE_TO_DEV)
		pthread_mutex_lock(&dev_lock);
	for (i = 0;; i++) {
		/* Like hmm-tests: retry on EINTR, with the struct as sent. */
		if (cl->fill)
			memcpy(cl->fill, &cl->c, cl->fill_len);
		cur.active = 1;
		ret = ioctl(fd, cl->req, cl->arg);
		err = ret ? errno : 0;
		cur.active = 0;
		if (!ret || err != EINTR || i == EINTR_RETRIES)
			break;
	}
	if (cl->cmd == C_MIGRATE_TO_DEV) {
		pthread_mutex_lock(&region_lock);
		settle_region(&regions[R_ANON]);
		settle_region(&regions[R_RO]);
		pthread_mutex_unlock(&region_lock);
	}
	if (cl->cmd == C_RELEASE || cl->cmd == C_MIGRATE_TO_DEV)
		pthread_mutex_unlock(&dev_lock);
	if (ret && ret != -1)
		violation("%s call=%llu bad-return ret=%ld",
			  cmd_names[cl->cmd], (unsigned long long)n, ret);
	if (err <= 0 || err >= MAXERR)
		err = 0;
	counts[cl->cmd][err]++;
	if (!ret)
		check_success(cl, n);
}

/* ---- report ---- */

struct result {
	const char *cmd;
	char outcome[24];
	uint64_t count;
};

static int result_cmp(const void *a, const void *b)
{
	const struct result *x = a, *y = b;
	int c = strcmp(x->cmd, y->cmd);

	return c ? c : strcmp(x->outcome, y->outcome);
}

static void report(void)
{
	static struct result res[NCMD * 64];
	size_t nres = 0, i;
	char tmp[24];
	int c, e;

	for (c = 0; c < NCMD; c++) {
		for (e = 0; e < MAXERR; e++) {
			if (!counts[c][e])
				continue;
			if (nres == sizeof(res) / sizeof(res[0]))
				break;
			res[nres].cmd = cmd_names[c];
			snprintf(res[nres].outcome, sizeof(res[nres].outcome),
				 "%s", errno_name(e, tmp, sizeof(tmp)));
			res[nres].count = counts[c][e];
			nres++;
		}
	}
	qsort(res, nres, sizeof(res[0]), result_cmp);
	for (i = 0; i < nres; i++)
		printf("fuzz-result %s %s %llu\n", res[i].cmd, res[i].outcome,
		       (unsigned long long)res[i].count);
}

/* ---- main ---- */

static void usage(const char *argv0)
{
	fprintf(stderr,
		"usage: %s [-s SEED] [-n MAX_CALLS] [-t MAX_SECONDS] [-d DEVICE] [-c CMDLIST]\n"
		"  CMDLIST: comma-separated numbers (0..255) and/or \"unknown\"\n",
		argv0);
	exit(2);
}

static int parse_u64(const char *s, uint64_t *v)
{
	char *end;

	errno = 0;
	*v = strtoull(s, &end, 0);
	return errno || end == s || *end || *s == '-';
}

static int parse_cmds(const char *s, int *sel, int *nsel, char *desc,
		      size_t dlen)
{
	char *copy = strdup(s), *tok, *save = NULL;
	size_t used = 0;
	uint64_t v;
	int n = 0;

	if (!copy)
		return -1;
	desc[0] = 0;
	for (tok = strtok_r(copy, ",", &save); tok;
	     tok = strtok_r(NULL, ",", &save)) {
		if (n == 257)
			break;
		if (!strcmp(tok, "unknown") || !strcmp(tok, "u"))
			v = SEL_UNKNOWN;
		else if (parse_u64(tok, &v) || v > 255)
			goto bad;
		sel[n++] = (int)v;
		if (v == SEL_UNKNOWN)
			used += snprintf(desc + used, dlen - used, "%sunknown",
					 n > 1 ? "," : "");
		else
			used += snprintf(desc + used, dlen - used, "%s%d",
					 n > 1 ? "," : "", (int)v);
		if (used >= dlen)
			goto bad;
	}
	free(copy);
	*nsel = n;
	return n ? 0 : -1;
bad:
	free(copy);
	return -1;
}

int main(int argc, char **argv)
{
	static int sel[258];
	static char cmd_desc[2048];
	uint64_t seed = 0, max_calls = 20000, max_seconds = 60, n, v;
	uint64_t t0, deadline_ms;
	void *(*stressors[])(void *) = {
		remap_main, mprotect_main, dontneed_main, touch_main,
		fork_main, race_main,
	};
	enum { NSTRESS = sizeof(stressors) / sizeof(stressors[0]) };
	pthread_t threads[NSTRESS], wd;
	pthread_condattr_t ca;
	struct sigaction sa;
	struct timespec ts;
	int have_seed = 0, nsel = 0, opt, fd, i;
	struct rng r;

	while ((opt = getopt(argc, argv, "s:n:t:d:c:h")) != -1) {
		switch (opt) {
		case 's':
			if (parse_u64(optarg, &seed))
				usage(argv[0]);
			have_seed = 1;
			break;
		case 'n':
			if (parse_u64(optarg, &max_calls))
				usage(argv[0]);
			break;
		case 't':
			if (parse_u64(optarg, &v) || v > 86400)
				usage(argv[0]);
			max_seconds = v;
			break;
		case 'd':
			device = optarg;
			break;
		case 'c':
			if (parse_cmds(optarg, sel, &nsel, cmd_desc,
				       sizeof(cmd_desc)))
				usage(argv[0]);
			break;
		default:
			usage(argv[0]);
		}
	}
	if (optind != argc)
		usage(argv[0]);
	if (!nsel) {
		for (i = 0; i <= C_READ_UNLOCKED; i++)
			sel[nsel++] = i;
		sel[nsel++] = SEL_UNKNOWN;
		snprintf(cmd_desc, sizeof(cmd_desc),
			 "0,1,2,3,4,5,6,7,8,9,unknown");
	}
	if (!have_seed) {
		clock_gettime(CLOCK_REALTIME, &ts);
		r.s = (uint64_t)ts.tv_sec * 1000000000ULL + ts.tv_nsec;
		r.s ^= (uint64_t)getpid() << 32;
		seed = rng_next(&r);
	}
	setvbuf(stdout, NULL, _IOFBF, 1 << 16);
	printf("fuzz-seed %llu\n", (unsigned long long)seed);
	printf("fuzz-config device=%s calls=%llu seconds=%llu cmds=%s\n",
	       device, (unsigned long long)max_calls,
	       (unsigned long long)max_seconds, cmd_desc);
	fflush(stdout);

	fd = open(device, O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		printf("fuzz-error open %s: %s\n", device, strerror(errno));
		return 2;
	}
	if (setup_memory()) {
		printf("fuzz-error memory setup: %s\n", strerror(errno));
		return 2;
	}
	pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = fault_handler;
	sa.sa_flags = SA_SIGINFO | SA_NODEFER;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGSEGV, &sa, NULL);
	sigaction(SIGBUS, &sa, NULL);

	/* The watchdog: MAX_SECONDS + 30 s from now. */
	t0 = now_ms();
	deadline_ms = t0 + max_seconds * 1000;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&wd_cond, &ca);
	clock_gettime(CLOCK_MONOTONIC, &wd_deadline);
	wd_deadline.tv_sec += max_seconds + HANG_GRACE;
	if (pthread_create(&wd, NULL, watchdog_main, NULL)) {
		printf("fuzz-error pthread_create\n");
		return 2;
	}

	pthread_barrier_init(&go, NULL, NSTRESS + 1);
	for (i = 0; i < NSTRESS; i++) {
		if (pthread_create(&threads[i], NULL, stressors[i], &seed)) {
			printf("fuzz-error pthread_create\n");
			fflush(stdout);
			_exit(2);
		}
	}
	pthread_barrier_wait(&go);

	r.s = seed;
	for (n = 0; n < max_calls && now_ms() < deadline_ms; n++) {
		struct call cl;

		draw_call(&r, sel, nsel, &cl);
		do_call(fd, &cl, n);
	}

	stop = 1;
	for (i = 0; i < NSTRESS; i++)
		pthread_join(threads[i], NULL);
	close(fd);

	pthread_mutex_lock(&print_lock);
	report();
	printf("# stress remaps=%lu holes=%lu lost=%lu mprotects=%lu mprotect_fail=%lu dontneeds=%lu touches=%lu forks=%lu\n",
	       st.remaps, st.remap_holes, st.lost, st.mprotects,
	       st.mprotect_fail, st.dontneeds, st.touches, st.forks);
	printf("# race opens=%lu open_fail=%lu ioctls=%lu ok=%lu\n",
	       st.race_opens, st.race_open_fail, st.race_ioctls, st.race_ok);
	printf("# notes truncated-npages=%lu settled-pages=%lu pagemap=%s\n",
	       truncated, st.settled, pagemap_fd >= 0 ? "yes" : "no");
	printf("fuzz-done calls=%llu elapsed_ms=%llu violations=%lu\n",
	       (unsigned long long)n, (unsigned long long)(now_ms() - t0),
	       violations);
	fflush(stdout);
	pthread_mutex_unlock(&print_lock);

	pthread_mutex_lock(&wd_lock);
	wd_done = 1;
	pthread_cond_signal(&wd_cond);
	pthread_mutex_unlock(&wd_lock);
	pthread_join(wd, NULL);
	return violations ? 1 : 0;
}
