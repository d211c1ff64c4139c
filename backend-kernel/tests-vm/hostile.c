// SPDX-License-Identifier: GPL-2.0
/*
 * hostile: fixed hostile arguments to the test_hmm ioctl ABI, each with the
 * answer hmm_rs gives (the random ones are ioctl_fuzz's job). The first two
 * are the calls that once brought the kernel down (an unchecked
 * `addr + 64 pages` overflowed: a Rust overflow check, kernel BUG()).
 *
 *   snapshot_top_of_address_space  SNAPSHOT addr 0xffffffffffff0000, 1 page:
 *                                  EOVERFLOW (test_hmm: the same)
 *   read_top_of_address_space      READ, same range: EINVAL (test_hmm: the
 *                                  same)
 *   write_top_of_address_space     WRITE, same range: EINVAL
 *   snapshot_above_user_limit      SNAPSHOT at 0x800000000000 succeeds with
 *                                  HMM_DMIRROR_PROT_ERROR (hmm_range_fault
 *                                  sees a hole after the last VMA)
 *   read_above_user_limit          READ there: EFAULT (the hole cannot be
 *                                  faulted)
 *   read_npages_overflow           READ with npages * 4096 beyond 2^64:
 *                                  EINVAL (test_hmm shifts the count and
 *                                  reads the truncated size)
 *   read_huge                      READ of 2^30 pages: ENOMEM without
 *                                  allocating (test_hmm: its vmalloc fails)
 *   read_unaligned                 READ at an unaligned address: EINVAL
 *   read_zero_pages                READ of 0 pages: EINVAL
 *   read_to_null_buffer            READ of a mapped page into ptr NULL: EFAULT
 *   write_from_kernel_address      WRITE from a kernel address: EFAULT
 *   cmd_pointer_null               READ with a NULL command pointer: EFAULT
 *   unknown_command                an unknown command with a NULL argument:
 *                                  ENOTTY, argument untouched (test_hmm:
 *                                  EFAULT from copying the argument in, or
 *                                  EINVAL)
 *   mmap_too_large                 mmap of the device file beyond its
 *                                  64 MiB: ENOMEM (test_hmm allocates every
 *                                  page it is asked for)
 *   open_unprivileged              open by uid 65534: EACCES (both devices
 *                                  are root-only)
 *
 * Device memory (MIGRATE_TO_DEV/SYS, EXCLUSIVE, CHECK_EXCLUSIVE, FLAGS):
 *
 *   migrate_top_of_address_space   MIGRATE_TO_DEV at 0xffffffffffff0000:
 *                                  EINVAL, no VMA (test_hmm: the same)
 *   migrate_to_sys_above_user_limit MIGRATE_TO_SYS at 0x800000000000:
 *                                  EINVAL (test_hmm: the same)
 *   migrate_npages_overflow        MIGRATE_TO_DEV with npages * 4096 beyond
 *                                  2^64: EINVAL (test_hmm migrates the
 *                                  truncated size)
 *   exclusive_above_user_limit     EXCLUSIVE of an unmapped page: EBUSY
 *                                  (test_hmm: the same)
 *   check_exclusive_huge           CHECK_EXCLUSIVE of 2^40 pages: returns at
 *                                  once (only existing entries are looked
 *                                  at; test_hmm loops over every page for
 *                                  hours: skipped for it)
 *   migrate_fail_alloc             FLAGS(FAIL_ALLOC), then MIGRATE_TO_DEV of
 *                                  one page: that page stays in system
 *                                  memory and the read-back is ENOENT
 *                                  (6.12's test_hmm has no FLAGS)
 *   migrate_racing_munmap          MIGRATE_TO_DEV / TO_SYS in a loop while
 *                                  another thread unmaps and maps the range
 *                                  again: every answer 0, EINVAL or ENOENT,
 *                                  the data of every page that was in place
 *                                  intact
 *   migrate_killed                 a process migrating 64 MiB to the device
 *                                  and back in a loop dies of SIGKILL within
 *                                  10 s
 *
 * Leaks show at the end of the run: unloading hmm_rs waits for every
 * device page to be freed (memunmap_pages), so a leaked page hangs it.
 *
 * usage: hostile [DEVICE]      (default /dev/hmm_dmirror0)
 * Output: kselftest TAP. Exit status: 0 if every case passed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <time.h>
#include <fcntl.h>
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
#define HMM_DMIRROR_WRITE _IOWR('H', 0x01, struct hmm_dmirror_cmd)
#define HMM_DMIRROR_MIGRATE_TO_DEV _IOWR('H', 0x02, struct hmm_dmirror_cmd)
#define HMM_DMIRROR_MIGRATE_TO_SYS _IOWR('H', 0x03, struct hmm_dmirror_cmd)
#define HMM_DMIRROR_SNAPSHOT _IOWR('H', 0x04, struct hmm_dmirror_cmd)
#define HMM_DMIRROR_EXCLUSIVE _IOWR('H', 0x05, struct hmm_dmirror_cmd)
#define HMM_DMIRROR_CHECK_EXCLUSIVE _IOWR('H', 0x06, struct hmm_dmirror_cmd)
#define HMM_DMIRROR_FLAGS _IOWR('H', 0x08, struct hmm_dmirror_cmd)
#define HMM_DMIRROR_FLAG_FAIL_ALLOC 1
#define HMM_UNKNOWN _IOWR('H', 0x7f, struct hmm_dmirror_cmd)

#define PAGE 4096UL
#define TOP 0xffffffffffff0000ULL

static int ntest, nfail, fd;
static char *page;		/* one mapped, touched page */
static unsigned char buf[PAGE];

static void expect(const char *name, int ret, int err, int want)
{
	ntest++;
	if (ret == -1 && err == want) {
		printf("ok %d %s\n", ntest, name);
	} else {
		nfail++;
		printf("# %s: returned %d (%s), want -1 (%s)\n", name, ret,
		       ret ? strerror(err) : "success", strerror(want));
		printf("not ok %d %s\n", ntest, name);
	}
	fflush(stdout);
}

/* The ioctl `req` on [addr, addr + npages pages) with buffer ptr. */
static void cmd_case(const char *name, unsigned long req, uint64_t addr,
		     uint64_t npages, uint64_t ptr, int want)
{
	struct hmm_dmirror_cmd cmd = { .addr = addr, .ptr = ptr,
				       .npages = npages };
	int ret = ioctl(fd, req, &cmd);

	expect(name, ret, errno, want);
}

static void snapshot_above_user_limit(void)
{
	const char *name = "snapshot_above_user_limit";
	struct hmm_dmirror_cmd cmd = { .addr = 0x800000000000ULL,
				       .ptr = (uintptr_t)buf, .npages = 1 };
	int ret;

	buf[0] = 0;
	ret = ioctl(fd, HMM_DMIRROR_SNAPSHOT, &cmd);
	ntest++;
	if (ret == 0 && cmd.cpages == 1 && buf[0] == 0xff) {
		printf("ok %d %s\n", ntest, name);
	} else {
		nfail++;
		printf("# %s: returned %d (%s), cpages %llu, byte 0x%02x; "
		       "want 0, 1, 0xff\n", name, ret,
		       ret ? strerror(errno) : "success",
		       (unsigned long long)cmd.cpages, buf[0]);
		printf("not ok %d %s\n", ntest, name);
	}
	fflush(stdout);
}

/* The driver under test is hmm_rs (its module is loaded). */
static int is_hmm_rs(void)
{
	return access("/sys/module/hmm_rs", F_OK) == 0;
}

static void skip(const char *name, const char *why)
{
	ntest++;
	printf("ok %d %s # SKIP %s\n", ntest, name, why);
	fflush(stdout);
}

static void ok_if(const char *name, int good, const char *fmt, long a,
		  long b)
{
	ntest++;
	if (good) {
		printf("ok %d %s\n", ntest, name);
	} else {
		nfail++;
		printf("# %s: ", name);
		printf(fmt, a, b);
		printf("\nnot ok %d %s\n", ntest, name);
	}
	fflush(stdout);
}

static void check_exclusive_huge(uint64_t p)
{
	struct hmm_dmirror_cmd cmd = { .addr = p, .npages = 1ULL << 40 };
	struct timespec t0, t1;
	int ret;

	if (!is_hmm_rs()) {
		skip("check_exclusive_huge", "test_hmm loops over 2^40 pages");
		return;
	}
	clock_gettime(CLOCK_MONOTONIC, &t0);
	ret = ioctl(fd, HMM_DMIRROR_CHECK_EXCLUSIVE, &cmd);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	ok_if("check_exclusive_huge", ret == 0 && t1.tv_sec - t0.tv_sec < 10,
	      "returned %ld after %ld s; want 0 within 10 s", ret,
	      (long)(t1.tv_sec - t0.tv_sec));
}

static void migrate_fail_alloc(void)
{
	struct hmm_dmirror_cmd cmd = { .npages = 1 };
	char *b = mmap(NULL, PAGE, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	int ret;

	if (b == MAP_FAILED) {
		expect("migrate_fail_alloc", 0, 0, ENOENT);
		return;
	}
	b[0] = 7;
	cmd.npages = HMM_DMIRROR_FLAG_FAIL_ALLOC;
	cmd.addr = (uintptr_t)b;
	ioctl(fd, HMM_DMIRROR_FLAGS, &cmd);
	cmd.npages = 1;
	cmd.ptr = (uintptr_t)buf;
	ret = ioctl(fd, HMM_DMIRROR_MIGRATE_TO_DEV, &cmd);
	expect("migrate_fail_alloc", ret, errno, ENOENT);
	munmap(b, PAGE);
}

#define RACE_PAGES 512UL
static char *race_buf;
static volatile int race_stop;

static void *race_unmapper(void *arg)
{
	(void)arg;
	while (!race_stop) {
		munmap(race_buf, RACE_PAGES * PAGE);
		usleep(100);
		if (mmap(race_buf, RACE_PAGES * PAGE, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) ==
		    MAP_FAILED)
			break;
		usleep(300);
	}
	return NULL;
}

static void migrate_racing_munmap(void)
{
	static unsigned char out[RACE_PAGES * PAGE];
	long bad = 0, badret = 0, i;
	pthread_t t;

	race_buf = mmap(NULL, RACE_PAGES * PAGE, PROT_READ | PROT_WRITE,
			MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (race_buf == MAP_FAILED ||
	    pthread_create(&t, NULL, race_unmapper, NULL)) {
		expect("migrate_racing_munmap", 0, 0, 0);
		return;
	}
	for (i = 0; i < 300; i++) {
		struct hmm_dmirror_cmd cmd = { .addr = (uintptr_t)race_buf,
					       .ptr = (uintptr_t)out,
					       .npages = RACE_PAGES };
		int ret = ioctl(fd, i & 1 ? HMM_DMIRROR_MIGRATE_TO_SYS :
				HMM_DMIRROR_MIGRATE_TO_DEV, &cmd);

		if (ret && errno != EINVAL && errno != ENOENT) {
			badret = errno;
			break;
		}
	}
	race_stop = 1;
	pthread_join(t, NULL);
	/* Quiet now: fill, migrate, check every page's data. */
	for (i = 0; i < (long)RACE_PAGES; i++)
		race_buf[i * PAGE] = (char)i;
	{
		struct hmm_dmirror_cmd cmd = { .addr = (uintptr_t)race_buf,
					       .ptr = (uintptr_t)out,
					       .npages = RACE_PAGES };

		if (ioctl(fd, HMM_DMIRROR_MIGRATE_TO_DEV, &cmd))
			bad = -errno;
		for (i = 0; !bad && i < (long)RACE_PAGES; i++)
			if (out[i * PAGE] != (unsigned char)i ||
			    race_buf[i * PAGE] != (char)i)
				bad = i + 1;
	}
	munmap(race_buf, RACE_PAGES * PAGE);
	ok_if("migrate_racing_munmap", !badret && !bad,
	      "unexpected errno %ld, or data/answer %ld wrong after the race",
	      badret, bad);
}

static void migrate_killed(const char *dev)
{
	const unsigned long n = 16384;
	struct timespec t0, t1;
	int status = 0;
	pid_t pid = fork();

	if (pid == 0) {
		char *b = mmap(NULL, n * PAGE, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		int f = open(dev, O_RDWR);
		unsigned long i;

		if (b == MAP_FAILED || f < 0)
			_exit(1);
		for (i = 0; i < n; i++)
			b[i * PAGE] = 1;
		for (;;) {
			struct hmm_dmirror_cmd cmd = { .addr = (uintptr_t)b,
						       .npages = n };

			ioctl(f, HMM_DMIRROR_MIGRATE_TO_SYS, &cmd);
			cmd.npages = n;
			cmd.ptr = 0;	/* the read-back fails: EFAULT */
			ioctl(f, HMM_DMIRROR_MIGRATE_TO_DEV, &cmd);
		}
	}
	usleep(300 * 1000);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	kill(pid, SIGKILL);
	waitpid(pid, &status, 0);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	ok_if("migrate_killed",
	      WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL &&
	      t1.tv_sec - t0.tv_sec < 10,
	      "status 0x%lx after %ld s; want SIGKILL within 10 s",
	      status, (long)(t1.tv_sec - t0.tv_sec));
}

static void open_unprivileged(const char *dev)
{
	int status, r;
	pid_t pid = fork();

	if (pid == 0) {
		int f;

		if (setgid(65534) || setuid(65534))
			_exit(100);
		f = open(dev, O_RDWR);
		_exit(f >= 0 ? 0 : errno > 99 ? 99 : errno);
	}
	if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status)) {
		expect("open_unprivileged", 0, 0, EACCES);
		return;
	}
	r = WEXITSTATUS(status);
	expect("open_unprivileged", r ? -1 : 0, r, EACCES);
}

int main(int argc, char **argv)
{
	const char *dev = argc > 1 ? argv[1] : "/dev/hmm_dmirror0";
	uint64_t p;
	void *m;
	int ret;

	printf("TAP version 13\n1..23\n# hostile on %s\n", dev);
	fd = open(dev, O_RDWR | O_CLOEXEC);
	page = mmap(NULL, PAGE, PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (fd < 0 || page == MAP_FAILED) {
		printf("Bail out! open %s: %s\n", dev, strerror(errno));
		return 1;
	}
	page[0] = 1;
	p = (uintptr_t)page;

	cmd_case("snapshot_top_of_address_space", HMM_DMIRROR_SNAPSHOT, TOP, 1,
		 (uintptr_t)buf, EOVERFLOW);
	cmd_case("read_top_of_address_space", HMM_DMIRROR_READ, TOP, 1,
		 (uintptr_t)buf, EINVAL);
	cmd_case("write_top_of_address_space", HMM_DMIRROR_WRITE, TOP, 1,
		 (uintptr_t)buf, EINVAL);
	snapshot_above_user_limit();
	cmd_case("read_above_user_limit", HMM_DMIRROR_READ, 0x800000000000ULL,
		 1, (uintptr_t)buf, EFAULT);
	cmd_case("read_npages_overflow", HMM_DMIRROR_READ, p,
		 (UINT64_MAX >> 12) + 2, (uintptr_t)buf, EINVAL);
	cmd_case("read_huge", HMM_DMIRROR_READ, p, 1ULL << 30,
		 (uintptr_t)buf, ENOMEM);
	cmd_case("read_unaligned", HMM_DMIRROR_READ, p + 1, 1,
		 (uintptr_t)buf, EINVAL);
	cmd_case("read_zero_pages", HMM_DMIRROR_READ, p, 0, (uintptr_t)buf,
		 EINVAL);
	cmd_case("read_to_null_buffer", HMM_DMIRROR_READ, p, 1, 0, EFAULT);
	cmd_case("write_from_kernel_address", HMM_DMIRROR_WRITE, p, 1,
		 0xffff888000000000ULL, EFAULT);
	ret = ioctl(fd, HMM_DMIRROR_READ, NULL);
	expect("cmd_pointer_null", ret, errno, EFAULT);
	ret = ioctl(fd, HMM_UNKNOWN, NULL);
	expect("unknown_command", ret, errno, ENOTTY);

	m = mmap(NULL, 128UL << 20, PROT_READ, MAP_PRIVATE, fd, 0);
	expect("mmap_too_large", m == MAP_FAILED ? -1 : 0, errno, ENOMEM);
	if (m != MAP_FAILED)
		munmap(m, 128UL << 20);

	open_unprivileged(dev);

	cmd_case("migrate_top_of_address_space", HMM_DMIRROR_MIGRATE_TO_DEV,
		 TOP, 1, (uintptr_t)buf, EINVAL);
	cmd_case("migrate_to_sys_above_user_limit", HMM_DMIRROR_MIGRATE_TO_SYS,
		 0x800000000000ULL, 1, (uintptr_t)buf, EINVAL);
	cmd_case("migrate_npages_overflow", HMM_DMIRROR_MIGRATE_TO_DEV, p,
		 (UINT64_MAX >> 12) + 2, (uintptr_t)buf, EINVAL);
	cmd_case("exclusive_above_user_limit", HMM_DMIRROR_EXCLUSIVE,
		 0x800000000000ULL, 1, (uintptr_t)buf, EBUSY);
	check_exclusive_huge(p);
	migrate_fail_alloc();
	migrate_racing_munmap();
	migrate_killed(dev);
	printf("# %d passed, %d failed\n", ntest - nfail, nfail);
	return nfail ? 1 : 0;
}
