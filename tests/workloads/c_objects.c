/*
 * Handlers behind one static mutex, in C through glibc: a holder thread locks the static
 * `stats_lock` and then waits for good in pause() (not a futex), holding it; HANDLERS handler
 * threads call record_stat, which locks `stats_lock`, and so all block on its one futex word.
 * The tests check that the tracer names that lock by its symbol and counts every handler on it.
 *
 * Usage: c-objects [HANDLERS] [SECONDS]
 * Built by the tests with `gcc -O2 -g -pthread` (no frame pointers at -O2).
 * Prints "stuck" once every handler is in a futex wait and the holder in pause, as seen in
 * /proc/self/task/TID/syscall. The main thread only sleeps (nanosleep is not watched) and exits
 * after SECONDS without joining.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "c_workload.h"

/* Thread names, which /proc/self/task/TID/comm shows; the readiness check goes by them. */
#define HANDLER_NAME "handler"
#define HOLDER_NAME "holder"
/* x86_64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl). */
#define SYS_PAUSE_NR 34
#define SYS_FUTEX_NR 202
/* Poll period, and how many polls in a row must see every thread blocked. */
#define POLL_SECONDS 0.01
#define STABLE_POLLS 10
#define STATS_CAPACITY 1024

/*
 * noinline keeps the call sites as frames; noclone stops gcc -O2 from renaming them to
 * record_stat.constprop.0 and the like, so the tests can match the plain names.
 */
#define CALL_SITE __attribute__((noinline, noclone))

/* The lock the tests expect the tracer to name: a static, so it has a symbol. */
static pthread_mutex_t stats_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned long stats[STATS_CAPACITY];
static size_t stats_len;
/* Set by the holder once it holds stats_lock; main starts the handlers only then. */
static volatile int holder_locked;

/* The call site the tests look for on every handler's futex wait. */
CALL_SITE void record_stat(unsigned long value)
{
	pthread_mutex_lock(&stats_lock);
	stats[stats_len++ % STATS_CAPACITY] = value;
	pthread_mutex_unlock(&stats_lock);
}

CALL_SITE void *handler(void *arg)
{
	unsigned long id = (unsigned long)arg;

	pthread_setname_np(pthread_self(), HANDLER_NAME);
	for (;;)
		record_stat(id);
	return NULL;
}

CALL_SITE void *holder(void *arg)
{
	(void)arg;
	pthread_setname_np(pthread_self(), HOLDER_NAME);
	pthread_mutex_lock(&stats_lock);
	__atomic_store_n(&holder_locked, 1, __ATOMIC_RELEASE);
	/* Never unlocks: pause() returns only for a handled signal, and none is handled. */
	for (;;)
		pause();
	return NULL;
}

/* Reads a small /proc file into buf (NUL-terminated); returns 0 on success. */
int main(int argc, char **argv)
{
	if (argc > 3) {
		fprintf(stderr, "usage: c-objects [HANDLERS] [SECONDS]\n");
		return 2;
	}
	long handlers = argc > 1 ? atol(argv[1]) : 16;
	double seconds = argc > 2 ? atof(argv[2]) : 60.0;
	double deadline = now_seconds() + seconds;

	pthread_t tid;
	int err = pthread_create(&tid, NULL, holder, NULL);
	if (err != 0) {
		fprintf(stderr, "c-objects: pthread_create: %s\n", strerror(err));
		return 1;
	}
	/* Poll, not a condition variable: main must never wait on a futex. */
	while (!__atomic_load_n(&holder_locked, __ATOMIC_ACQUIRE)) {
		if (now_seconds() >= deadline) {
			fprintf(stderr, "c-objects: the holder did not take the lock\n");
			_exit(1);
		}
		sleep_seconds(POLL_SECONDS);
	}
	for (long i = 0; err == 0 && i < handlers; i++)
		err = pthread_create(&tid, NULL, handler, (void *)i);
	if (err != 0) {
		fprintf(stderr, "c-objects: pthread_create: %s\n", strerror(err));
		return 1;
	}

	for (int stable = 0; stable < STABLE_POLLS;) {
		if (now_seconds() >= deadline) {
			fprintf(stderr, "c-objects: the threads did not all block before the deadline\n");
			_exit(1);
		}
		int blocked = threads_in_syscall(HANDLER_NAME, SYS_FUTEX_NR) == handlers &&
			      threads_in_syscall(HOLDER_NAME, SYS_PAUSE_NR) == 1;
		stable = blocked ? stable + 1 : 0;
		sleep_seconds(POLL_SECONDS);
	}
	printf("stuck\n");
	fflush(stdout);

	double left = deadline - now_seconds();
	if (left > 0)
		sleep_seconds(left);
	/* _exit: skip atexit and stdio teardown while the holder still holds the lock. */
	_exit(0);
}
