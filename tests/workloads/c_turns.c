/*
 * Threads that take turns at one lock: each of HANDLERS handler threads locks the static
 * `turn_lock`, holds it HOLD_MS in a sleep, lets it go and comes straight back for it. At
 * any time one holds the lock and every other waits on its futex, each wait a few holds
 * long: a service whose handlers queue behind one slow critical section. Nearly all the
 * waiters' time is blocked at take_turn: (HANDLERS - 1) x the time recorded. No other
 * thread of the process runs while they sleep, so a sampled recording's passes rarely tick
 * in its memory: most waits' stacks are read only at the drains, after their thread ran.
 *
 * Usage: c-turns [HANDLERS] [HOLD_MS] [SECONDS]
 * Built by the tests with `gcc -O2 -g -pthread` (no frame pointers at -O2).
 * Prints "ready" once every handler has come for its first turn (not taken it: a handler
 * that lets the lock go takes it straight back as often as not, so another may wait
 * seconds for its first turn).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "c_workload.h"

/* noinline and noclone keep the call site as a frame under its plain name. */
#define CALL_SITE __attribute__((noinline, noclone))

static pthread_mutex_t turn_lock = PTHREAD_MUTEX_INITIALIZER;
static double hold_seconds = 0.01;
static atomic_int came_for_a_turn;

/* The call site of every handler's futex wait. */
CALL_SITE void take_turn(void)
{
	pthread_mutex_lock(&turn_lock);
	sleep_seconds(hold_seconds);
	pthread_mutex_unlock(&turn_lock);
}

static void *handler(void *arg)
{
	(void)arg;
	atomic_fetch_add(&came_for_a_turn, 1);
	for (;;)
		take_turn();
	return NULL;
}

int main(int argc, char **argv)
{
	int handlers = argc > 1 ? atoi(argv[1]) : 4;
	int hold_ms = argc > 2 ? atoi(argv[2]) : 10;
	double seconds = argc > 3 ? atof(argv[3]) : 60.0;
	if (handlers < 2 || hold_ms < 1 || seconds <= 0) {
		fprintf(stderr, "usage: c-turns [HANDLERS] [HOLD_MS] [SECONDS]\n");
		return 2;
	}
	hold_seconds = hold_ms / 1000.0;
	for (int i = 0; i < handlers; i++) {
		pthread_t thread;
		if (pthread_create(&thread, NULL, handler, NULL) != 0) {
			perror("pthread_create");
			return 1;
		}
	}
	while (atomic_load(&came_for_a_turn) < handlers)
		sleep_seconds(hold_seconds);
	printf("ready\n");
	fflush(stdout);
	sleep_seconds(seconds);
	return 0;
}
