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
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

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

static void sleep_seconds(double seconds)
{
	struct timespec ts = { .tv_sec = (time_t)seconds };
	ts.tv_nsec = (long)((seconds - (double)ts.tv_sec) * 1e9);
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static double now_seconds(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Reads a small /proc file into buf (NUL-terminated); returns 0 on success. */
static int read_small(const char *path, char *buf, size_t size)
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
 * Whether, right now, exactly `handlers` threads named handler are all in futex and the one
 * thread named holder is in pause. A running thread shows "running" and fails this.
 */
static int all_blocked(long handlers)
{
	DIR *dir = opendir("/proc/self/task");
	if (!dir)
		return 0;
	long futex_handlers = 0, pausing_holders = 0;
	int ok = 1;
	struct dirent *entry;
	while (ok && (entry = readdir(dir)) != NULL) {
		/* Task directories are thread ids; skip . and .. */
		long tid = strtol(entry->d_name, NULL, 10);
		if (tid <= 0)
			continue;
		char path[64], comm[32], syscall[256];
		snprintf(path, sizeof path, "/proc/self/task/%ld/comm", tid);
		if (read_small(path, comm, sizeof comm) < 0)
			continue;
		snprintf(path, sizeof path, "/proc/self/task/%ld/syscall", tid);
		if (read_small(path, syscall, sizeof syscall) < 0)
			continue;
		comm[strcspn(comm, "\n")] = '\0';
		char *end;
		long nr = strtol(syscall, &end, 10);
		int in_syscall = end != syscall;
		if (strcmp(comm, HANDLER_NAME) == 0) {
			if (in_syscall && nr == SYS_FUTEX_NR)
				futex_handlers++;
			else
				ok = 0;
		} else if (strcmp(comm, HOLDER_NAME) == 0) {
			if (in_syscall && nr == SYS_PAUSE_NR)
				pausing_holders++;
			else
				ok = 0;
		}
	}
	closedir(dir);
	return ok && futex_handlers == handlers && pausing_holders == 1;
}

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
		stable = all_blocked(handlers) ? stable + 1 : 0;
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
