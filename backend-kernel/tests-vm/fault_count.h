/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Counting handle_mm_fault calls from user space, shared by hmm_bench.c and
 * uffd_read.c: hmm_rs's own count (its read-only module parameter) and the
 * calling thread's minor faults, which count the faults any driver's ioctl
 * makes on the caller's behalf.
 */
#ifndef HMM_RS_FAULT_COUNT_H
#define HMM_RS_FAULT_COUNT_H

#include <stdio.h>
#include <sys/resource.h>

#define FAULT_CALLS_PARAM "/sys/module/hmm_rs/parameters/fault_calls"

/* hmm_rs's handle_mm_fault count, or -1 for a driver without one. */
static inline long long module_fault_calls(void)
{
	FILE *f = fopen(FAULT_CALLS_PARAM, "r");
	long long n = -1;

	if (f) {
		if (fscanf(f, "%lld", &n) != 1)
			n = -1;
		fclose(f);
	}
	return n;
}

/* The calling thread's minor faults, or -1. */
static inline long thread_minflt(void)
{
	struct rusage ru;

	return getrusage(RUSAGE_THREAD, &ru) ? -1 : ru.ru_minflt;
}

#endif
