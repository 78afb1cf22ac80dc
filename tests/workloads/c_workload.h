/*
 * What the C test workloads share: sleeping and timing, and polling /proc/self/task until
 * their threads are where the test expects them (a workload prints "ready" only then).
 * Included by each workload's single source file; gcc finds it beside them.
 */
#ifndef C_WORKLOAD_H
#define C_WORKLOAD_H

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static inline void sleep_seconds(double seconds)
{
	struct timespec ts = { .tv_sec = (time_t)seconds };
	ts.tv_nsec = (long)((seconds - (double)ts.tv_sec) * 1e9);
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static inline double now_seconds(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Reads a small /proc file into buf (NUL-terminated); returns 0 on success. */
static inline int read_small(const char *path, char *buf, size_t size)
{
	FILE *f = fopen(path, "re");
	if (!f)
		return -1;
	size_t n = fread(buf, 1, size - 1, f);
	fclose(f);
	buf[n] = '\0';
	return 0;
}

/*
 * How many threads named `name` are in syscall `nr_a` and in `nr_b` right now; false if one
 * of them is anywhere else (a running thread shows "running" in /proc and counts as
 * elsewhere).
 */
static inline int tally_syscalls(const char *name, long nr_a, long *in_a, long nr_b, long *in_b)
{
	DIR *dir = opendir("/proc/self/task");
	if (!dir)
		return 0;
	int all_in = 1;
	*in_a = *in_b = 0;
	struct dirent *entry;
	while ((entry = readdir(dir)) != NULL) {
		/* Task directories are thread ids; skip . and .. */
		long tid = strtol(entry->d_name, NULL, 10);
		if (tid <= 0)
			continue;
		char path[64], comm[32], syscall[256];
		snprintf(path, sizeof path, "/proc/self/task/%ld/comm", tid);
		if (read_small(path, comm, sizeof comm) < 0)
			continue;
		comm[strcspn(comm, "\n")] = '\0';
		if (strcmp(comm, name) != 0)
			continue;
		snprintf(path, sizeof path, "/proc/self/task/%ld/syscall", tid);
		if (read_small(path, syscall, sizeof syscall) < 0)
			continue;
		char *end;
		long in = strtol(syscall, &end, 10);
		if (end != syscall && in == nr_a)
			++*in_a;
		else if (end != syscall && in == nr_b)
			++*in_b;
		else
			all_in = 0;
	}
	closedir(dir);
	return all_in;
}

/*
 * How many threads named `name` are in syscall `nr` right now; -1 if one of them is
 * anywhere else.
 */
static inline long threads_in_syscall(const char *name, long nr)
{
	long in, never;
	/* Never in a syscall file: -1 is a thread outside any syscall, which is elsewhere. */
	return tally_syscalls(name, nr, &in, -2, &never) ? in : -1;
}

#endif
