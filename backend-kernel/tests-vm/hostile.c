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
 * usage: hostile [DEVICE]      (default /dev/hmm_dmirror0)
 * Output: kselftest TAP. Exit status: 0 if every case passed.
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
#include <sys/wait.h>
#include <unistd.h>

struct hmm_dmirror_cmd {
	uint64_t addr, ptr, npages, cpages, faults;
};

#define HMM_DMIRROR_READ _IOWR('H', 0x00, struct hmm_dmirror_cmd)
#define HMM_DMIRROR_WRITE _IOWR('H', 0x01, struct hmm_dmirror_cmd)
#define HMM_DMIRROR_SNAPSHOT _IOWR('H', 0x04, struct hmm_dmirror_cmd)
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

	printf("TAP version 13\n1..15\n# hostile on %s\n", dev);
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
	printf("# %d passed, %d failed\n", ntest - nfail, nfail);
	return nfail ? 1 : 0;
}
