/*
 * A target that is hostile or odd in the ways a probe of the tracer found: WAITERS threads
 * blocked for good in pthread_cond_wait, reached through functions with plain C names that a
 * careless demangler reads as C++ types (f, Dn, St, Pc, i: float, std::nullptr_t, std,
 * char*, int).
 *
 * Usage: c-hostile MODE [WAITERS] [SECONDS]
 *   plain       the waiters only;
 *   name        then the process and every thread name themselves HOSTILE_NAME, an escape
 *               sequence that sets a terminal's title, and markup;
 *   main-exits  then the main thread calls pthread_exit: the process is a zombie leader
 *               whose threads live on and stay blocked;
 *   drain       then, DRAIN_SECONDS after "ready", the main thread releases every waiter
 *               (they return from their wait and exit): a pile-up that drains while it
 *               is recorded;
 *   bytes       then the process and every thread name themselves ODD_NAME, bytes that
 *               are not UTF-8, and the process maps a file whose path holds one too.
 * Prints "ready" once every waiter is in its futex wait (and renamed). An alarm ends the
 * process after SECONDS whatever happens. Built by the tests with `gcc -O2 -g -pthread`.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "c_workload.h"

/* The name the waiters have until they all wait; the readiness check goes by it. */
#define WAITER_NAME "waiter"
/* ESC ] 0 ; pwn BEL sets an xterm's title; <a> is markup; a tab and a newline would
 * break a table's row, and -- an XML comment. 15 bytes: fits comm's 15. */
#define HOSTILE_NAME "\x1b]0;pwn\x07<a>\t\n--"
/* Not UTF-8: 0xff never is, and 0xc3 wants a continuation byte. */
#define ODD_NAME "\xff\xc3-odd"
/* x86_64 futex (arch/x86/entry/syscalls/syscall_64.tbl). */
#define SYS_FUTEX_NR 202
#define POLL_SECONDS 0.01
#define STABLE_POLLS 10

/* noinline and noclone keep each name a frame of its own (no f.constprop.0). */
#define CALL_SITE __attribute__((noinline, noclone))

/* How long the drain mode holds its waiters after "ready". */
#define DRAIN_SECONDS 2.0

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t never = PTHREAD_COND_INITIALIZER;
/* Set (under lock) when the drain mode releases the waiters. */
static int released;

/* The empty asm keeps gcc from turning each call into a tail call (and dropping a frame). */
CALL_SITE void i(void)
{
	pthread_mutex_lock(&lock);
	while (!released)
		pthread_cond_wait(&never, &lock);
	pthread_mutex_unlock(&lock);
}

CALL_SITE void Pc(void)
{
	i();
	__asm__ volatile("");
}

CALL_SITE void St(void)
{
	Pc();
	__asm__ volatile("");
}

CALL_SITE void Dn(void)
{
	St();
	__asm__ volatile("");
}

CALL_SITE void f(void)
{
	Dn();
	__asm__ volatile("");
}

CALL_SITE void *waiter(void *arg)
{
	(void)arg;
	pthread_setname_np(pthread_self(), WAITER_NAME);
	f();
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc < 2 || argc > 4) {
		fprintf(stderr,
			"usage: c-hostile plain|name|main-exits|drain|bytes [WAITERS] [SECONDS]\n");
		return 2;
	}
	const char *mode = argv[1];
	long waiters = argc > 2 ? atol(argv[2]) : 4;
	unsigned seconds = argc > 3 ? (unsigned)atoi(argv[3]) : 60;
	if (strcmp(mode, "plain") != 0 && strcmp(mode, "name") != 0 &&
	    strcmp(mode, "main-exits") != 0 && strcmp(mode, "drain") != 0 &&
	    strcmp(mode, "bytes") != 0) {
		fprintf(stderr, "c-hostile: unknown mode %s\n", mode);
		return 2;
	}
	alarm(seconds);

	pthread_t *tids = calloc((size_t)waiters, sizeof *tids);
	for (long n = 0; n < waiters; n++) {
		int err = pthread_create(&tids[n], NULL, waiter, NULL);
		if (err != 0) {
			fprintf(stderr, "c-hostile: pthread_create: %s\n", strerror(err));
			return 1;
		}
	}
	/* Poll instead of a barrier: main must never wait on a futex. */
	for (int stable = 0; stable < STABLE_POLLS;) {
		stable = threads_in_syscall(WAITER_NAME, SYS_FUTEX_NR) == waiters ? stable + 1 : 0;
		sleep_seconds(POLL_SECONDS);
	}
	if (strcmp(mode, "name") == 0) {
		for (long n = 0; n < waiters; n++)
			pthread_setname_np(tids[n], HOSTILE_NAME);
		prctl(PR_SET_NAME, HOSTILE_NAME, 0, 0, 0);
	}
	if (strcmp(mode, "bytes") == 0) {
		for (long n = 0; n < waiters; n++)
			pthread_setname_np(tids[n], ODD_NAME);
		prctl(PR_SET_NAME, ODD_NAME, 0, 0, 0);
		/* Mapped, then unlinked: maps shows the path (and " (deleted)"), nothing is left. */
		char path[64];
		snprintf(path, sizeof path, "/tmp/c-hostile-%d-" ODD_NAME, (int)getpid());
		int fd = open(path, O_RDWR | O_CREAT | O_EXCL, 0600);
		if (fd < 0 || ftruncate(fd, 4096) != 0 ||
		    mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0) == MAP_FAILED) {
			perror("c-hostile: map a file of an odd name");
			return 1;
		}
		unlink(path);
	}
	printf("ready\n");
	fflush(stdout);
	if (strcmp(mode, "main-exits") == 0)
		pthread_exit(NULL);
	if (strcmp(mode, "drain") == 0) {
		sleep_seconds(DRAIN_SECONDS);
		pthread_mutex_lock(&lock);
		released = 1;
		pthread_cond_broadcast(&never);
		pthread_mutex_unlock(&lock);
	}
	for (;;)
		pause();
}
