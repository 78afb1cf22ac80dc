/*
 * Processes forked from one parent taking turns at one lock, as PostgreSQL's backends take
 * turns at a hot row: each child, one thread, takes a process-shared mutex and holds it
 * across a 10 ms sleep in poll(), then lets it go. The others wait for it in a futex, so the
 * lock is held, asleep, almost all the time: the blocked time at hold_and_sleep over a
 * recording is about its length. No thread of them runs when a pass ticks, so none has its
 * stack copied then; only a sleep still going on when the passes are drained can be read.
 *
 * Usage: c-forked-turns [CHILDREN] [SECONDS]
 * Built by the tests with `gcc -O2 -g -pthread`. Prints "ready" once every child has held
 * the lock; exits after SECONDS, its children with it.
 */
#define _GNU_SOURCE
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <unistd.h>

#include "c_workload.h"

#define MAX_CHILDREN 16
#define HOLD_MS 10
#define REST_MS 2

/* noinline keeps the call sites as frames; noclone keeps their plain names. */
#define CALL_SITE __attribute__((noinline, noclone))

struct shared {
	pthread_mutex_t lock;
	long turns[MAX_CHILDREN];
};

/* The empty asm after each call keeps it a call, not a jump: the frame stays. */
CALL_SITE static void hold_and_sleep(void)
{
	poll(NULL, 0, HOLD_MS);
	__asm__ volatile("" ::: "memory");
}

/* Outside the lock, so that a waiter it woke takes it (glibc's mutex lets the one that
 * unlocks take it straight back, and one process would hold it turn after turn). In
 * nanosleep, which is not watched: a poll here would be the same call from the same
 * depth as hold_and_sleep's, which a tracer cannot tell apart without reading the stack. */
CALL_SITE static void rest_between_turns(void)
{
	sleep_seconds(REST_MS / 1000.0);
	__asm__ volatile("" ::: "memory");
}

CALL_SITE static void take_turns(struct shared *shared, int index)
{
	for (;;) {
		pthread_mutex_lock(&shared->lock);
		hold_and_sleep();
		shared->turns[index]++;
		pthread_mutex_unlock(&shared->lock);
		rest_between_turns();
	}
}

int main(int argc, char **argv)
{
	int children = argc > 1 ? atoi(argv[1]) : 4;
	double seconds = argc > 2 ? atof(argv[2]) : 60.0;
	if (children < 1 || children > MAX_CHILDREN) {
		fprintf(stderr, "c-forked-turns: CHILDREN must be 1 to %d\n", MAX_CHILDREN);
		return 2;
	}
	struct shared *shared = mmap(NULL, sizeof(*shared), PROT_READ | PROT_WRITE,
				     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (shared == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	pthread_mutexattr_t attr;
	pthread_mutexattr_init(&attr);
	pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
	pthread_mutex_init(&shared->lock, &attr);
	pid_t pids[MAX_CHILDREN];
	for (int index = 0; index < children; index++) {
		pid_t pid = fork();
		if (pid < 0) {
			perror("fork");
			return 1;
		}
		if (pid == 0) {
			prctl(PR_SET_PDEATHSIG, SIGKILL);
			take_turns(shared, index);
		}
		pids[index] = pid;
	}
	for (;;) {
		int came = 0;
		for (int index = 0; index < children; index++)
			came += __atomic_load_n(&shared->turns[index], __ATOMIC_RELAXED) > 0;
		if (came == children)
			break;
		sleep_seconds(0.01);
	}
	printf("ready\n");
	fflush(stdout);
	sleep_seconds(seconds);
	for (int index = 0; index < children; index++)
		kill(pids[index], SIGKILL);
	return 0;
}
