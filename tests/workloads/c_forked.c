/*
 * Forked siblings blocked at the same place, as PostgreSQL's backends (forked from one
 * postmaster) are: the parent forks CHILDREN children, each reading a pipe no one writes to,
 * under a frame whose CFI needs rbp (a variable-length array makes gcc keep rbp as its frame
 * base). Each child's caller pads its own frame by as much as the array below it shrinks, so
 * every child blocks at the same sp and pc, each with its own rbp: a tracer that finds a
 * thread's saved rbp by sp and pc alone cannot tell them apart.
 *
 * Usage: c-forked [CHILDREN] [SECONDS]
 * Built by the tests with `gcc -O2 -g -pthread`. Prints "ready" once every child is in read,
 * as /proc/PID/syscall shows; the parent sleeps (nanosleep is not watched) and exits after
 * SECONDS, its children with it.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <unistd.h>

#include "c_workload.h"

#define MAX_CHILDREN 16
/* x86_64 syscall number of read (arch/x86/entry/syscalls/syscall_64.tbl). */
#define SYS_READ_NR 0
#define POLL_SECONDS 0.01

/* noinline keeps the call sites as frames; noclone keeps their plain names. */
#define CALL_SITE __attribute__((noinline, noclone))

CALL_SITE static void wait_for_work(int fd)
{
	char byte;
	if (read(fd, &byte, 1) < 0)
		perror("read");
}

/* rbp-based: its CFA is rbp + 16. The array is used after the call, so no tail call. */
CALL_SITE static void under_rbp_frame(int fd, int bytes)
{
	volatile char scratch[bytes];
	scratch[0] = 1;
	wait_for_work(fd);
	scratch[bytes - 1] = scratch[0];
}

/* Pads by what `under_rbp_frame`'s array leaves: the read's sp is the same in every child. */
CALL_SITE static void child_main(int fd, int index)
{
	volatile char pad[(MAX_CHILDREN - index) * 16];
	pad[0] = 1;
	under_rbp_frame(fd, (index + 1) * 16);
	pad[sizeof(pad) - 1] = pad[0];
}

/* True once the child is in read(2). */
static int in_read(pid_t child)
{
	char path[64], buf[256];
	snprintf(path, sizeof(path), "/proc/%d/syscall", (int)child);
	if (read_small(path, buf, sizeof(buf)) != 0)
		return 0;
	return strtol(buf, NULL, 10) == SYS_READ_NR;
}

int main(int argc, char **argv)
{
	int children = argc > 1 ? atoi(argv[1]) : 4;
	double seconds = argc > 2 ? atof(argv[2]) : 60.0;
	if (children < 1 || children > MAX_CHILDREN) {
		fprintf(stderr, "c-forked: CHILDREN must be 1 to %d\n", MAX_CHILDREN);
		return 2;
	}
	int never_written[2];
	if (pipe(never_written) != 0) {
		perror("pipe");
		return 1;
	}
	pid_t pids[MAX_CHILDREN];
	for (int index = 0; index < children; index++) {
		pid_t pid = fork();
		if (pid < 0) {
			perror("fork");
			return 1;
		}
		if (pid == 0) {
			prctl(PR_SET_PDEATHSIG, SIGKILL);
			child_main(never_written[0], index);
			_exit(0);
		}
		pids[index] = pid;
	}
	for (;;) {
		int ready = 0;
		for (int index = 0; index < children; index++)
			ready += in_read(pids[index]);
		if (ready == children)
			break;
		sleep_seconds(POLL_SECONDS);
	}
	printf("ready\n");
	fflush(stdout);
	sleep_seconds(seconds);
	for (int index = 0; index < children; index++)
		kill(pids[index], SIGKILL);
	return 0;
}
