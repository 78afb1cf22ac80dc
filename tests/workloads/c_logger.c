/*
 * Handlers that log through one lock to a pipe whose reader stopped reading, in C through
 * glibc: a service whose log goes to a collector that hangs. HANDLERS handler threads call
 * log_line, which either (mode `mutex`) locks the static `log_lock` and write()s a line to
 * the pipe, or (mode `stdio`) fprintf()s it to stderr, made the pipe: stdio's own FILE lock
 * guards it, or (mode `heap`) does as `mutex` with the lock of a logger allocated at start,
 * which the static `logger` points to. The collector, a child process, holds the pipe's read end and never reads; once
 * the pipe is full, one handler blocks in write() holding the lock, and the others block on
 * its futex. The tests check that the tracer's chain goes from the lock's waiters through its
 * holder's write to the collector, with the pipe's fill, and the lock's name.
 *
 * Usage: c-logger [HANDLERS] [SECONDS] [mutex|stdio|heap]
 * Built by the tests with `gcc -O2 -g -pthread` (no frame pointers at -O2).
 * Prints "stuck COLLECTOR_PID" once one handler is in write and every other in a futex wait,
 * as seen in /proc/self/task/TID/syscall. The collector dies with the workload (its parent
 * death signal); the main thread only sleeps and exits after SECONDS.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "c_workload.h"

#define HANDLER_NAME "handler"
#define COLLECTOR_NAME "collector"
/* x86_64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl). */
#define SYS_WRITE_NR 1
#define SYS_FUTEX_NR 202
#define POLL_SECONDS 0.01
#define STABLE_POLLS 10

/* noinline and noclone keep the call sites as frames under their plain names. */
#define CALL_SITE __attribute__((noinline, noclone))

/* The lock the tests expect the tracer to name: a static, so it has a symbol. */
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static int log_fd = -1;
static int through_stdio;
/* Mode `heap`: the lock leads an object on the heap, named by the static pointing to it. */
struct logger {
	pthread_mutex_t lock;
	int fd;
};
static struct logger *logger;
static unsigned long lines_logged;

/* The call site of both the lock's waits and its holder's write. */
CALL_SITE void log_line(unsigned long id)
{
	if (through_stdio) {
		fprintf(stderr, "handler %lu handled a request\n", id);
		__atomic_add_fetch(&lines_logged, 1, __ATOMIC_RELAXED);
		return;
	}
	char line[128];
	int len = snprintf(line, sizeof line, "handler %lu handled a request\n", id);
	pthread_mutex_t *lock = logger ? &logger->lock : &log_lock;
	int fd = logger ? logger->fd : log_fd;
	pthread_mutex_lock(lock);
	/* A short or failed write is dropped, as a logger does. */
	if (write(fd, line, (size_t)len) > 0)
		lines_logged++;
	pthread_mutex_unlock(lock);
}

CALL_SITE void *handler(void *arg)
{
	unsigned long id = (unsigned long)arg;

	pthread_setname_np(pthread_self(), HANDLER_NAME);
	for (;;)
		log_line(id);
	return NULL;
}

/* The collector: keeps the read end `reader` alone and never reads, until its parent dies. */
static void collect(int reader)
{
	prctl(PR_SET_NAME, COLLECTOR_NAME);
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	for (int fd = 0; fd < 1024; fd++)
		if (fd != reader)
			close(fd);
	for (;;)
		pause();
}

int main(int argc, char **argv)
{
	const char *mode = argc > 3 ? argv[3] : "mutex";
	if (argc > 4 || (strcmp(mode, "mutex") != 0 && strcmp(mode, "stdio") != 0 &&
			 strcmp(mode, "heap") != 0)) {
		fprintf(stderr, "usage: c-logger [HANDLERS] [SECONDS] [mutex|stdio|heap]\n");
		return 2;
	}
	long handlers = argc > 1 ? atol(argv[1]) : 16;
	double seconds = argc > 2 ? atof(argv[2]) : 60.0;
	double deadline = now_seconds() + seconds;
	if (handlers < 2) {
		fprintf(stderr, "c-logger: HANDLERS must be 2 or more\n");
		return 2;
	}
	through_stdio = strcmp(mode, "stdio") == 0;
	if (strcmp(mode, "heap") == 0) {
		logger = calloc(1, sizeof *logger);
		if (logger == NULL || pthread_mutex_init(&logger->lock, NULL) != 0) {
			fprintf(stderr, "c-logger: cannot make the logger\n");
			return 1;
		}
	}
	/* Where this program's own errors go once stderr is the pipe. */
	int errors = dup(STDERR_FILENO);

	int ends[2];
	if (pipe(ends) < 0) {
		perror("c-logger: pipe");
		return 1;
	}
	fflush(stdout);
	pid_t collector = fork();
	if (collector < 0) {
		perror("c-logger: fork");
		return 1;
	}
	if (collector == 0)
		collect(ends[0]);
	close(ends[0]);
	log_fd = ends[1];
	if (logger != NULL)
		logger->fd = ends[1];
	if (through_stdio && dup2(ends[1], STDERR_FILENO) < 0) {
		perror("c-logger: dup2");
		return 1;
	}

	pthread_t tid;
	for (long i = 0; i < handlers; i++) {
		int err = pthread_create(&tid, NULL, handler, (void *)i);
		if (err != 0) {
			dprintf(errors, "c-logger: pthread_create: %s\n", strerror(err));
			return 1;
		}
	}

	for (int stable = 0; stable < STABLE_POLLS;) {
		if (now_seconds() >= deadline) {
			dprintf(errors, "c-logger: the handlers did not all block before the deadline\n");
			_exit(1);
		}
		long writing, locking;
		int blocked = tally_syscalls(HANDLER_NAME, SYS_WRITE_NR, &writing, SYS_FUTEX_NR,
					     &locking) &&
			      writing == 1 && locking == handlers - 1;
		stable = blocked ? stable + 1 : 0;
		sleep_seconds(POLL_SECONDS);
	}
	printf("stuck %d\n", (int)collector);
	fflush(stdout);

	double left = deadline - now_seconds();
	if (left > 0)
		sleep_seconds(left);
	/* _exit: skip atexit and stdio teardown while a handler still holds the lock. */
	_exit(0);
}
