/*
 * Scale for snapshots: THREADS threads (default 10,000) with small stacks, all blocked for good
 * on one condition variable in wait_for_work. Nothing ever signals it.
 *
 * Usage: many-waiters [THREADS] [SECONDS]
 * Built by the tests with `gcc -O2 -g -pthread`.
 * Prints "ready" once every waiter is in a futex wait, as seen in /proc/self/task/TID/syscall.
 * The main thread only sleeps (nanosleep is not watched) and exits after SECONDS.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "c_workload.h"

/* 64 KiB: far above what wait_for_work and glibc's futex path use, and small enough that
 * 10,000 threads cost 640 MiB of address space and a few pages each of memory. */
#define STACK_BYTES (64 * 1024)
/* Thread name, which /proc/self/task/TID/comm shows; the readiness check goes by it. */
#define WAITER_NAME "waiter"
/* x86_64 syscall number (arch/x86/entry/syscalls/syscall_64.tbl). */
#define SYS_FUTEX_NR 202
#define POLL_SECONDS 0.01

#define CALL_SITE __attribute__((noinline, noclone))

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t work = PTHREAD_COND_INITIALIZER;
/* Waiters that took the lock and are about to wait; written under the lock. */
static atomic_long waiting;

/* The call site the tests look for: every waiter blocks here. */
CALL_SITE void wait_for_work(void)
{
	pthread_mutex_lock(&lock);
	atomic_fetch_add(&waiting, 1);
	for (;;)
		pthread_cond_wait(&work, &lock);
}

CALL_SITE void *waiter(void *arg)
{
	(void)arg;
	pthread_setname_np(pthread_self(), WAITER_NAME);
	wait_for_work();
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc > 3) {
		fprintf(stderr, "usage: many-waiters [THREADS] [SECONDS]\n");
		return 2;
	}
	long threads = argc > 1 ? atol(argv[1]) : 10000;
	double seconds = argc > 2 ? atof(argv[2]) : 120.0;
	double deadline = now_seconds() + seconds;

	pthread_attr_t attr;
	pthread_attr_init(&attr);
	int err = pthread_attr_setstacksize(&attr, STACK_BYTES);
	if (err != 0) {
		fprintf(stderr, "many-waiters: pthread_attr_setstacksize: %s\n", strerror(err));
		return 1;
	}
	for (long i = 0; i < threads; i++) {
		pthread_t tid;
		err = pthread_create(&tid, &attr, waiter, NULL);
		if (err != 0) {
			fprintf(stderr, "many-waiters: pthread_create #%ld: %s\n", i, strerror(err));
			_exit(1);
		}
	}
	pthread_attr_destroy(&attr);

	/* Every waiter counted itself under the lock; then wait until each is in the futex
	 * syscall (the last ones may still be on their way into pthread_cond_wait). */
	while (atomic_load(&waiting) < threads || threads_in_syscall(WAITER_NAME, SYS_FUTEX_NR) != threads) {
		if (now_seconds() >= deadline) {
			fprintf(stderr, "many-waiters: %ld of %ld waiting before the deadline\n",
				atomic_load(&waiting), threads);
			_exit(1);
		}
		sleep_seconds(POLL_SECONDS);
	}
	printf("ready\n");
	fflush(stdout);

	double left = deadline - now_seconds();
	if (left > 0)
		sleep_seconds(left);
	_exit(0);
}
