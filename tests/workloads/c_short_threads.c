/*
 * Threads that live a few milliseconds each: a holder keeps the static `gate_lock` 20 ms
 * at a time (in a sleep), and every 4 ms the main thread starts a detached thread that
 * waits for the lock at pass_gate, takes it, lets it go and exits, 5-25 ms after it
 * started: a service that spawns a thread per request. A sampled read sees many of them
 * blocked, but by the drain (up to 250 ms later) most are gone, their stacks unread.
 *
 * Usage: c-short-threads [SECONDS]
 * Built by the tests with `gcc -O2 -g -pthread` (no frame pointers at -O2).
 * Prints "ready" once the first thread has passed the gate.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "c_workload.h"

/* noinline and noclone keep the call site as a frame under its plain name. */
#define CALL_SITE __attribute__((noinline, noclone))

static pthread_mutex_t gate_lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_int passed;

/* The call site of every short-lived thread's futex wait. */
CALL_SITE void pass_gate(void)
{
	pthread_mutex_lock(&gate_lock);
	pthread_mutex_unlock(&gate_lock);
	atomic_fetch_add(&passed, 1);
}

static void *short_lived(void *arg)
{
	(void)arg;
	pass_gate();
	return NULL;
}

static void *holder(void *arg)
{
	(void)arg;
	for (;;) {
		pthread_mutex_lock(&gate_lock);
		sleep_seconds(0.02);
		pthread_mutex_unlock(&gate_lock);
		sleep_seconds(0.002);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	double seconds = argc > 1 ? atof(argv[1]) : 30.0;
	pthread_t thread;
	if (pthread_create(&thread, NULL, holder, NULL) != 0)
		return 1;
	pthread_attr_t detached;
	pthread_attr_init(&detached);
	pthread_attr_setdetachstate(&detached, PTHREAD_CREATE_DETACHED);
	pthread_attr_setstacksize(&detached, 64 * 1024);
	int said_ready = 0;
	double end = now_seconds() + seconds;
	while (now_seconds() < end) {
		if (pthread_create(&thread, &detached, short_lived, NULL) != 0)
			return 1;
		if (!said_ready && atomic_load(&passed) > 0) {
			printf("ready\n");
			fflush(stdout);
			said_ready = 1;
		}
		sleep_seconds(0.004);
	}
	return 0;
}
