/*
 * A pile-up that builds up over time, in C through glibc: a holder thread takes a pthread
 * mutex and never lets it go, and handler threads come to it one at a time, STEP_MS
 * apart, each blocking in pthread_mutex_lock inside take_lock for good. Beside them, a
 * pair of threads hand a token back and forth through a condition variable every 5 ms, so
 * that waits end with a waker (the timeline's wake arrows).
 *
 * Usage: c-buildup HANDLERS STEP_MS SECONDS [on-signal]
 * Prints "ready" when the holder has the lock and the pair runs, before any handler
 * comes; exits after SECONDS. With `on-signal`, the handlers start coming only once the
 * process gets SIGUSR1 (a test sends it when its tracer has started).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "c_workload.h"

static pthread_mutex_t shared_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t token_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t token_moved = PTHREAD_COND_INITIALIZER;
static int token_holder; /* 0: the pinger's turn to wait, 1: the ponger's */

static double step_seconds;

/* The lock's holder: takes it and keeps it. */
static void *holder(void *unused)
{
	(void)unused;
	pthread_mutex_lock(&shared_lock);
	for (;;)
		sleep_seconds(3600);
	return NULL;
}

__attribute__((noinline)) static void take_lock(void)
{
	pthread_mutex_lock(&shared_lock);
	pthread_mutex_unlock(&shared_lock);
}

/* Handler `index` comes to the lock index × STEP after the start. */
static void *handler(void *arg)
{
	long index = (long)arg;
	sleep_seconds(step_seconds * (double)index);
	take_lock();
	return NULL;
}

__attribute__((noinline)) static void wait_for_token(int mine)
{
	pthread_mutex_lock(&token_lock);
	while (token_holder != mine)
		pthread_cond_wait(&token_moved, &token_lock);
	pthread_mutex_unlock(&token_lock);
}

static void pass_token(int to)
{
	pthread_mutex_lock(&token_lock);
	token_holder = to;
	pthread_cond_broadcast(&token_moved);
	pthread_mutex_unlock(&token_lock);
}

/* The pair: each waits for the token, holds it 5 ms, passes it on. */
static void *pinger(void *arg)
{
	int mine = (int)(long)arg;
	for (;;) {
		wait_for_token(mine);
		sleep_seconds(0.005);
		pass_token(1 - mine);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc != 4 && !(argc == 5 && strcmp(argv[4], "on-signal") == 0)) {
		fprintf(stderr, "usage: c-buildup HANDLERS STEP_MS SECONDS [on-signal]\n");
		return 2;
	}
	long handlers = strtol(argv[1], NULL, 10);
	step_seconds = strtod(argv[2], NULL) / 1000.0;
	double seconds = strtod(argv[3], NULL);
	int on_signal = argc == 5;
	/* Blocked in every thread, so that sigwait takes it. */
	sigset_t usr1;
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &usr1, NULL);
	pthread_t thread;
	pthread_create(&thread, NULL, holder, NULL);
	pthread_setname_np(thread, "holder");
	/* The holder has the lock before any handler comes. */
	while (pthread_mutex_trylock(&shared_lock) == 0) {
		pthread_mutex_unlock(&shared_lock);
		sleep_seconds(0.001);
	}
	for (long side = 0; side < 2; side++) {
		pthread_create(&thread, NULL, pinger, (void *)side);
		pthread_setname_np(thread, side == 0 ? "ping" : "pong");
	}
	if (on_signal) {
		printf("ready\n");
		fflush(stdout);
		int signal;
		sigwait(&usr1, &signal);
	}
	double started = now_seconds();
	for (long index = 1; index <= handlers; index++) {
		pthread_create(&thread, NULL, handler, (void *)index);
		pthread_setname_np(thread, "handler");
	}
	if (!on_signal) {
		printf("ready\n");
		fflush(stdout);
	}
	sleep_seconds(seconds - (now_seconds() - started));
	return 0;
}
