// SPDX-License-Identifier: GPL-2.0
/*
 * uffd_read: a device reads a userfaultfd-backed range.
 *
 * For each variant (4 KiB pages; a 2 MiB-aligned, MADV_HUGEPAGE range of a
 * THP-enabled VMA; a MAP_HUGETLB range) the range is registered with
 * UFFDIO_REGISTER_MODE_MISSING and left unpopulated; a handler thread
 * answers every missing fault with UFFDIO_COPY of a known pattern. In the
 * THP-VMA variant the first fault of each 2 MiB goes through the huge-page
 * fault path (do_huge_pmd_anonymous_page hands it to userfaultfd), but
 * UFFDIO_COPY installs 4 KiB PTEs, so no PMD leaf appears there: what that
 * variant shows is the huge-page fault path dropping the lock. The hugetlb
 * variant maps 2 MiB leaves, and checks it. Two cases per variant:
 *
 *   <variant>_read_efault     HMM_DMIRROR_READ (0x00) fails with EFAULT: the
 *                             kernel's hmm_range_fault cannot let the
 *                             userfaultfd handler drop the mmap lock, so the
 *                             fault is SIGBUS. Both drivers behave so.
 *   <variant>_read_unlocked   HMM_DMIRROR_READ_UNLOCKED (0x09) succeeds:
 *                             cpages == npages and every byte the device read
 *                             equals the pattern the handler supplied; then
 *                             SNAPSHOT reports the leaf size the handler
 *                             installed (HMM_DMIRROR_PROT_PMD on every page
 *                             for hugetlb, on none for the others). The
 *                             kernel's C driver has no such ioctl (EINVAL).
 *
 * and one more case:
 *
 *   4k_killed_while_waiting   a child process issues READ_UNLOCKED on a
 *                             range whose handler never answers; when the
 *                             fault is seen waiting, the child is sent
 *                             SIGKILL. It must die of it: the fault waits
 *                             killably and the driver checks for fatal
 *                             signals after the lock drop instead of
 *                             faulting again. The driver's retry budget is
 *                             switched off for this case (hmm_rs's
 *                             unlocked_timeout_ms parameter set to 0), so
 *                             the only way out of the ioctl is the
 *                             fatal-signal path (-EINTR): a driver that
 *                             ignored the signal would spin in the kernel,
 *                             and the parent gives up after 30 s.
 *
 * and one without userfaultfd:
 *
 *   thp_read_fault_calls      HMM_DMIRROR_READ of 8 MiB of fresh memory
 *                             (2 MiB-aligned, MADV_HUGEPAGE, never touched)
 *                             calls handle_mm_fault at most once per PMD leaf
 *                             that SNAPSHOT then finds (a read fault maps the
 *                             huge zero page). Counted by the driver's own
 *                             count (hmm_rs's fault_calls parameter), or, for
 *                             a driver without one, by the ioctl thread's
 *                             minor-fault count, which handle_mm_fault raises
 *                             for each call that completes. mm/hmm.c faults
 *                             every page of a none PMD it must fault, so the
 *                             C driver takes 64 calls (one chunk) per leaf
 *                             and fails; hmm-core faults a hole once and
 *                             walks again, as GUP does. SKIP without THP.
 *
 * usage: uffd_read [DEVICE]      (default /dev/hmm_dmirror0)
 * Output: kselftest TAP ("ok N name" / "not ok N name").
 * Exit status: 0 if every case passed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <signal.h>
#include <unistd.h>

#include "fault_count.h"

struct hmm_dmirror_cmd {
	uint64_t addr, ptr, npages, cpages, faults;
};

#define HMM_DMIRROR_READ _IOWR('H', 0x00, struct hmm_dmirror_cmd)
#define HMM_DMIRROR_SNAPSHOT _IOWR('H', 0x04, struct hmm_dmirror_cmd)
#define HMM_DMIRROR_READ_UNLOCKED _IOWR('H', 0x09, struct hmm_dmirror_cmd)
#define HMM_DMIRROR_PROT_PMD 0x04

/* hmm_rs's READ_UNLOCKED retry budget (ms; 0: none). */
#define BUDGET_PARAM "/sys/module/hmm_rs/parameters/unlocked_timeout_ms"

#define PAGE 4096UL
#define TWOMEG (2UL << 20)

struct handler {
	int uffd, stopfd;
	char *base, *src;
	size_t size, unit;	/* bytes per UFFDIO_COPY */
	unsigned long copies;
	int error;
};

static void *handler_main(void *arg)
{
	struct handler *h = arg;

	for (;;) {
		struct pollfd p[2] = {
			{ .fd = h->uffd, .events = POLLIN },
			{ .fd = h->stopfd, .events = POLLIN },
		};
		struct uffd_msg msg;
		struct uffdio_copy copy;
		uintptr_t addr;

		if (poll(p, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			h->error = errno;
			return NULL;
		}
		if (p[1].revents)
			return NULL;
		if (read(h->uffd, &msg, sizeof(msg)) != sizeof(msg)) {
			if (errno == EAGAIN)
				continue;
			h->error = errno;
			return NULL;
		}
		if (msg.event != UFFD_EVENT_PAGEFAULT)
			continue;
		addr = msg.arg.pagefault.address & ~(uintptr_t)(h->unit - 1);
		copy.dst = addr;
		copy.src = (uintptr_t)(h->src + (addr - (uintptr_t)h->base));
		copy.len = h->unit;
		copy.mode = 0;
		copy.copy = 0;
		if (ioctl(h->uffd, UFFDIO_COPY, &copy) < 0) {
			if (errno == EEXIST) {
				/* Raced with another copy: just wake. */
				struct uffdio_range r = { addr, h->unit };

				ioctl(h->uffd, UFFDIO_WAKE, &r);
				continue;
			}
			h->error = errno;
			return NULL;
		}
		h->copies++;
	}
}

static int ntest;
static int nfail;

static void result(int ok, const char *name, const char *why)
{
	ntest++;
	if (!ok)
		nfail++;
	if (why && *why)
		printf("# %s: %s\n", name, why);
	printf("%sok %d %s\n", ok ? "" : "not ", ntest, name);
	fflush(stdout);
}

static unsigned char pattern(size_t off)
{
	return (unsigned char)((off >> 12) * 7 + (off & 0xfff) + 0xab);
}

enum variant { V_4K, V_THP, V_HUGETLB };

/* Runs the two cases of one variant; *skip is set if the setup failed. */
static void run_variant(const char *dev, enum variant v)
{
	static const char *const names[] = { "4k", "thp_vma", "hugetlb" };
	char n_efault[64], n_unlocked[64], why[256];
	size_t size = v == V_4K ? 256 * PAGE : v == V_THP ? TWOMEG : 2 * TWOMEG;
	size_t unit = v == V_HUGETLB ? TWOMEG : PAGE;
	struct uffdio_api api = { .api = UFFD_API };
	struct uffdio_register reg;
	struct hmm_dmirror_cmd cmd, cmd2;
	struct handler h;
	pthread_t thread;
	char *map, *base, *mirror = NULL;
	size_t i, bad;
	int fd, uffd, ret, err;
	uint64_t one = 1;

	snprintf(n_efault, sizeof(n_efault), "uffd_%s_read_efault", names[v]);
	snprintf(n_unlocked, sizeof(n_unlocked), "uffd_%s_read_unlocked",
		 names[v]);
	memset(&h, 0, sizeof(h));

	if (v == V_HUGETLB) {
		map = mmap(NULL, size, PROT_READ | PROT_WRITE,
			   MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
		base = map;
	} else {
		/* Over-allocate so a 2 MiB-aligned range fits. */
		map = mmap(NULL, size + TWOMEG, PROT_READ | PROT_WRITE,
			   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		base = map == MAP_FAILED ? map :
			(char *)(((uintptr_t)map + TWOMEG - 1) & ~(TWOMEG - 1));
	}
	if (map == MAP_FAILED) {
		snprintf(why, sizeof(why), "mmap: %s", strerror(errno));
		result(0, n_efault, why);
		result(0, n_unlocked, why);
		return;
	}
	if (v == V_THP && madvise(base, size, MADV_HUGEPAGE)) {
		snprintf(why, sizeof(why), "madvise(MADV_HUGEPAGE): %s",
			 strerror(errno));
		result(0, n_efault, why);
		result(0, n_unlocked, why);
		return;
	}

	h.src = malloc(size);
	mirror = malloc(size);
	if (!h.src || !mirror)
		abort();
	for (i = 0; i < size; i++)
		h.src[i] = pattern(i);

	uffd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if (uffd < 0 || ioctl(uffd, UFFDIO_API, &api)) {
		snprintf(why, sizeof(why), "userfaultfd: %s", strerror(errno));
		result(0, n_efault, why);
		result(0, n_unlocked, why);
		return;
	}
	reg.range.start = (uintptr_t)base;
	reg.range.len = size;
	reg.mode = UFFDIO_REGISTER_MODE_MISSING;
	if (ioctl(uffd, UFFDIO_REGISTER, &reg)) {
		snprintf(why, sizeof(why), "UFFDIO_REGISTER: %s",
			 strerror(errno));
		result(0, n_efault, why);
		result(0, n_unlocked, why);
		return;
	}
	h.uffd = uffd;
	h.stopfd = eventfd(0, EFD_CLOEXEC);
	h.base = base;
	h.size = size;
	h.unit = unit;
	if (h.stopfd < 0 || pthread_create(&thread, NULL, handler_main, &h))
		abort();

	fd = open(dev, O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		snprintf(why, sizeof(why), "open %s: %s", dev, strerror(errno));
		result(0, n_efault, why);
		result(0, n_unlocked, why);
		goto stop;
	}

	/* Linux hmm_range_fault path: userfaultfd cannot drop the lock. */
	memset(&cmd, 0, sizeof(cmd));
	cmd.addr = (uintptr_t)base;
	cmd.ptr = (uintptr_t)mirror;
	cmd.npages = size / PAGE;
	ret = ioctl(fd, HMM_DMIRROR_READ, &cmd);
	err = errno;
	snprintf(why, sizeof(why), "READ returned %d (%s), want -1 (EFAULT)",
		 ret, ret ? strerror(err) : "success");
	result(ret == -1 && err == EFAULT, n_efault,
	       ret == -1 && err == EFAULT ? NULL : why);

	/* The lock-dropping path. */
	memset(&cmd, 0, sizeof(cmd));
	cmd.addr = (uintptr_t)base;
	cmd.ptr = (uintptr_t)mirror;
	cmd.npages = size / PAGE;
	memset(mirror, 0, size);
	ret = ioctl(fd, HMM_DMIRROR_READ_UNLOCKED, &cmd);
	err = errno;
	if (ret) {
		snprintf(why, sizeof(why), "READ_UNLOCKED: %s%s", strerror(err),
			 err == EINVAL || err == ENOTTY ?
				 " (driver has no lock-dropping READ)" : "");
		result(0, n_unlocked, why);
	} else {
		for (i = 0, bad = 0; i < size; i++)
			bad += (unsigned char)mirror[i] != pattern(i);
		for (i = 0; i < size && !bad; i++)
			bad += (unsigned char)base[i] != pattern(i);
		size_t npages = size / PAGE, pmd = 0;
		int want_pmd = v == V_HUGETLB, snap_ok;
		unsigned char *prot = malloc(npages);

		if (!prot)
			abort();
		memset(&cmd2, 0, sizeof(cmd2));
		cmd2.addr = (uintptr_t)base;
		cmd2.ptr = (uintptr_t)prot;
		cmd2.npages = npages;
		snap_ok = !ioctl(fd, HMM_DMIRROR_SNAPSHOT, &cmd2) &&
			  cmd2.cpages == npages;
		for (i = 0; snap_ok && i < npages; i++)
			pmd += !!(prot[i] & HMM_DMIRROR_PROT_PMD);
		free(prot);
		snprintf(why, sizeof(why),
			 "cpages %llu/%zu, faults %llu, %zu bad bytes, "
			 "%lu UFFDIO_COPYs of %zu bytes; snapshot %s, "
			 "%zu/%zu pages in PMD leaves (want %s)",
			 (unsigned long long)cmd.cpages, npages,
			 (unsigned long long)cmd.faults, bad, h.copies, unit,
			 snap_ok ? "ok" : "FAILED", pmd, npages,
			 want_pmd ? "all" : "none");
		result(cmd.cpages == npages && !bad && h.copies > 0 &&
			       !h.error && snap_ok &&
			       pmd == (want_pmd ? npages : 0),
		       n_unlocked, why);
	}
	close(fd);
stop:
	if (write(h.stopfd, &one, sizeof(one)) != sizeof(one))
		abort();
	pthread_join(thread, NULL);
	close(h.stopfd);
	close(uffd);
	munmap(map, v == V_HUGETLB ? size : size + TWOMEG);
	free(h.src);
	free(mirror);
}

/* The killer thread: wait for the first fault message, then SIGKILL us. */
static void *killer_main(void *arg)
{
	int uffd = *(int *)arg;
	struct pollfd p = { .fd = uffd, .events = POLLIN };
	struct uffd_msg msg;

	for (;;) {
		if (poll(&p, 1, -1) < 0 && errno != EINTR)
			_exit(5);
		if (read(uffd, &msg, sizeof(msg)) == sizeof(msg) &&
		    msg.event == UFFD_EVENT_PAGEFAULT)
			kill(getpid(), SIGKILL);
	}
	return NULL;
}

/* Child: READ_UNLOCKED on a range nobody resolves. Returns only on error. */
static int killed_child(const char *dev)
{
	size_t size = 16 * PAGE;
	struct uffdio_api api = { .api = UFFD_API };
	struct uffdio_register reg;
	struct hmm_dmirror_cmd cmd;
	pthread_t thread;
	char *base, *mirror = malloc(size);
	int fd, uffd;

	base = mmap(NULL, size, PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uffd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if (base == MAP_FAILED || !mirror || uffd < 0 ||
	    ioctl(uffd, UFFDIO_API, &api))
		return 10;
	reg.range.start = (uintptr_t)base;
	reg.range.len = size;
	reg.mode = UFFDIO_REGISTER_MODE_MISSING;
	if (ioctl(uffd, UFFDIO_REGISTER, &reg))
		return 11;
	fd = open(dev, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return 12;
	if (pthread_create(&thread, NULL, killer_main, &uffd))
		return 13;
	memset(&cmd, 0, sizeof(cmd));
	cmd.addr = (uintptr_t)base;
	cmd.ptr = (uintptr_t)mirror;
	cmd.npages = size / PAGE;
	if (ioctl(fd, HMM_DMIRROR_READ_UNLOCKED, &cmd))
		return errno == EINVAL || errno == ENOTTY ? 20 : 21;
	return 22;
}

/* Read BUDGET_PARAM into buf (empty if absent) and write val to it. */
static int set_budget(char *old, size_t len, const char *val)
{
	FILE *f = fopen(BUDGET_PARAM, "r+");
	int ok;

	if (old)
		old[0] = 0;
	if (!f)
		return 0;
	if (old && !fgets(old, len, f))
		old[0] = 0;
	rewind(f);
	ok = fputs(val, f) >= 0;
	return fclose(f) == 0 && ok;
}

static void run_killed(const char *dev)
{
	const char *name = "uffd_4k_killed_while_waiting";
	char why[160], budget[32];
	int status, i, nobudget;
	pid_t pid;

	/* No retry budget: only the fatal-signal path ends the ioctl. */
	nobudget = set_budget(budget, sizeof(budget), "0");
	printf("# %s: retry budget %s\n", name,
	       nobudget ? "off (unlocked_timeout_ms=0)" : "parameter absent");
	fflush(stdout);
	pid = fork();
	if (pid == 0)
		_exit(killed_child(dev));
	if (pid < 0) {
		if (nobudget)
			set_budget(NULL, 0, budget[0] ? budget : "1000");
		result(0, name, "fork failed");
		return;
	}
	/* Poll for the child's end; give up after 30 s. */
	for (i = 0; i < 3000; i++) {
		if (waitpid(pid, &status, WNOHANG) == pid)
			break;
		usleep(10000);
	}
	if (nobudget)
		set_budget(NULL, 0, budget[0] ? budget : "1000");
	if (i == 3000) {
		kill(pid, SIGKILL);
		waitpid(pid, &status, 0);
		result(0, name, "the child did not die within 30 s of SIGKILL");
		return;
	}
	if (WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) {
		result(1, name, NULL);
		return;
	}
	snprintf(why, sizeof(why), "child exited with %d (%s)",
		 WIFEXITED(status) ? WEXITSTATUS(status) : -1,
		 WIFEXITED(status) && WEXITSTATUS(status) == 20 ?
			 "driver has no lock-dropping READ" :
		 WIFEXITED(status) && WEXITSTATUS(status) == 22 ?
			 "READ_UNLOCKED succeeded on an unresolved range" :
			 "setup or ioctl error");
	result(0, name, why);
}

static void run_thp_fault_calls(const char *dev)
{
	const char *name = "thp_read_fault_calls";
	size_t size = 8UL << 20, huge = 2UL << 20, npages = size >> 12, i;
	unsigned char *raw, *buf, *out = malloc(size);
	long long m0, m1, calls;
	long f0, f1;
	size_t leaves = 0;
	char why[200];
	int fd, ok;

	raw = mmap(NULL, size + huge, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	fd = open(dev, O_RDWR | O_CLOEXEC);
	if (raw == MAP_FAILED || !out || fd < 0) {
		result(0, name, "setup failed");
		goto out;
	}
	buf = (unsigned char *)(((uintptr_t)raw + huge - 1) & ~(huge - 1));
	if (madvise(buf, size, MADV_HUGEPAGE)) {
		result(0, name, "madvise(MADV_HUGEPAGE) failed");
		goto out;
	}
	memset(out, 1, size);
	{
		struct hmm_dmirror_cmd cmd = {
			.addr = (uintptr_t)buf, .ptr = (uintptr_t)out,
			.npages = npages,
		};

		m0 = module_fault_calls();
		f0 = thread_minflt();
		ok = !ioctl(fd, HMM_DMIRROR_READ, &cmd) && cmd.cpages == npages;
		f1 = thread_minflt();
		m1 = module_fault_calls();
	}
	for (i = 0; ok && i < size; i++)
		ok = !out[i];
	if (!ok) {
		result(0, name, "READ failed or read non-zero bytes");
		goto out;
	}
	{
		struct hmm_dmirror_cmd cmd = {
			.addr = (uintptr_t)buf, .ptr = (uintptr_t)out,
			.npages = npages,
		};

		if (ioctl(fd, HMM_DMIRROR_SNAPSHOT, &cmd)) {
			result(0, name, "SNAPSHOT failed");
			goto out;
		}
		for (i = 0; i < npages; i += huge >> 12)
			leaves += !!(out[i] & HMM_DMIRROR_PROT_PMD);
	}
	calls = m0 >= 0 && m1 >= 0 ? m1 - m0 : f1 - f0;
	snprintf(why, sizeof(why),
		 "%lld handle_mm_fault calls (%s) for %zu PMD leaves of %zu pages",
		 calls, m0 >= 0 ? "fault_calls" : "thread minflt", leaves,
		 npages);
	if (!leaves) {
		printf("# %s\n", why);
		ntest++;
		printf("ok %d %s # SKIP no THP in this VM\n", ntest, name);
		fflush(stdout);
		goto out;
	}
	result(calls >= 1 && (size_t)calls <= leaves, name, why);
out:
	if (fd >= 0)
		close(fd);
	if (raw != MAP_FAILED)
		munmap(raw, size + huge);
	free(out);
}

int main(int argc, char **argv)
{
	const char *dev = argc > 1 ? argv[1] : "/dev/hmm_dmirror0";

	printf("TAP version 13\n1..8\n");
	printf("# uffd_read on %s\n", dev);
	run_variant(dev, V_4K);
	run_variant(dev, V_THP);
	run_variant(dev, V_HUGETLB);
	run_killed(dev);
	run_thp_fault_calls(dev);
	printf("# %d passed, %d failed\n", ntest - nfail, nfail);
	return nfail ? 1 : 0;
}
