/*
 * One long wait per way an exact recording can see a wait end, in C through glibc, each at a
 * call site of its own, over and over:
 *   - signalled_wait: pthread_cond_wait (no timeout), signalled every 40 ms by a thread of
 *     this process: the wait ends at its waker, which shares its memory;
 *   - timed_wait: pthread_cond_timedwait that times out after 30 ms: a timer ends it, outside
 *     any thread of the process;
 *   - peer_wait: recv on a socketpair that a child process writes to every 50 ms: another
 *     process ends it;
 *   - shared_wait: pthread_cond_wait on a process-shared condition in shared memory that the
 *     child signals every 60 ms: another process ends an untimed futex wait, the one case
 *     whose stack no probe can read (the tests expect it counted, not lost silently);
 *   - echo_wait: recv of the child's echo of a byte just sent on a second socketpair: the
 *     child echoes at once (thousands of short waits a second, each ended by another
 *     process) but holds one echo for 20 ms every 100 ms (a long one). Every other round
 *     trip sleeps a frame deeper. A thread whose waits are mostly short, at two places in
 *     turn, still gets its later stack copies sized to what a walk reads at each.
 *
 * Usage: c-wake-paths [SECONDS [TID_STRIDE]]
 * With TID_STRIDE, the five wait loops run on threads whose ids are BASE, BASE + TID_STRIDE,
 * ..., BASE + 4 * TID_STRIDE: the tracer keeps each thread's wait in a word indexed by its id
 * modulo its slot count, so with that count as the stride all five share one word. Each
 * thread is placed by writing the pid namespace's last allocated id just before creating it
 * (root only; kernel.pid_max must exceed BASE + 4 * TID_STRIDE); when another process takes
 * an id first, all five start again at another BASE.
 * Built by the tests with `gcc -O2 -g -pthread` (no frame pointers at -O2). Prints "ready"
 * once every thread has started; exits after SECONDS (the child with it).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "c_workload.h"

/* noinline and noclone keep each call site a frame with its plain name. */
#define CALL_SITE __attribute__((noinline, noclone))

static pthread_mutex_t local_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t local_cond = PTHREAD_COND_INITIALIZER;
static unsigned long local_signals;

/* In memory shared with the child. */
struct shared {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	unsigned long signals;
};
static struct shared *shared;
static int sockets[2];
static int echo_sockets[2];

CALL_SITE void signalled_wait(void)
{
	pthread_mutex_lock(&local_lock);
	unsigned long seen = local_signals;
	while (local_signals == seen)
		pthread_cond_wait(&local_cond, &local_lock);
	pthread_mutex_unlock(&local_lock);
}

CALL_SITE void timed_wait(void)
{
	static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
	static pthread_cond_t never = PTHREAD_COND_INITIALIZER;
	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_nsec += 30 * 1000 * 1000;
	if (until.tv_nsec >= 1000000000L) {
		until.tv_sec += 1;
		until.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&lock);
	while (pthread_cond_timedwait(&never, &lock, &until) == 0)
		;
	pthread_mutex_unlock(&lock);
}

CALL_SITE void peer_wait(void)
{
	char byte;
	if (recv(sockets[0], &byte, 1, 0) != 1)
		sleep_seconds(0.05);
}

CALL_SITE static int echo_round_trip(void)
{
	char byte = 'e';
	return send(echo_sockets[0], &byte, 1, 0) == 1 && recv(echo_sockets[0], &byte, 1, 0) == 1;
}

/* The same round trip a frame further down the stack: a second place the thread sleeps at. */
CALL_SITE static int echo_round_trip_deeper(void)
{
	volatile char frame[64];
	frame[0] = 1;
	int done = echo_round_trip();
	return done && frame[0];
}

CALL_SITE void echo_wait(void)
{
	/* A pause every 16 round trips keeps the short waits to some thousands a second. */
	static unsigned long round_trips;
	int deeper = ++round_trips % 2;
	if (!(deeper ? echo_round_trip_deeper() : echo_round_trip()))
		sleep_seconds(0.05);
	if (round_trips % 16 == 0)
		sleep_seconds(0.001);
}

CALL_SITE void shared_wait(void)
{
	pthread_mutex_lock(&shared->lock);
	unsigned long seen = shared->signals;
	while (shared->signals == seen)
		pthread_cond_wait(&shared->cond, &shared->lock);
	pthread_mutex_unlock(&shared->lock);
}

struct wait_loop {
	void (*wait)(void);
	/* The loop's thread id, once its thread runs. */
	pid_t tid;
	/* 0 until main has checked the id: then 1 to wait in a loop, -1 to end. */
	int go;
	pthread_t thread;
};

static void *loop(void *arg)
{
	struct wait_loop *self = arg;
	__atomic_store_n(&self->tid, gettid(), __ATOMIC_RELEASE);
	int go;
	while ((go = __atomic_load_n(&self->go, __ATOMIC_ACQUIRE)) == 0)
		sleep_seconds(0.001);
	if (go < 0)
		return NULL;
	for (;;)
		self->wait();
	return NULL;
}

/* Makes `tid` the id the next thread or process of this pid namespace gets, unless another
 * one is created first (the caller checks). */
static int set_next_tid(long tid)
{
	FILE *f = fopen("/proc/sys/kernel/ns_last_pid", "we");
	if (!f)
		return -1;
	int failed = fprintf(f, "%ld", tid - 1) < 0;
	return fclose(f) != 0 || failed ? -1 : 0;
}

/* A base id at which no thread or process exists at any of `count` strides. */
static long free_tid_base(long stride, size_t count)
{
	char path[64];
	for (long base = getpid() + 1000;; base++) {
		size_t unused = 0;
		for (; unused < count; unused++) {
			snprintf(path, sizeof path, "/proc/%ld", base + (long)unused * stride);
			if (access(path, F_OK) == 0)
				break;
		}
		if (unused == count)
			return base;
	}
}

/* Starts `wait_loop`'s thread, held until main says go; with a stride, on thread id `tid`.
 * Returns -1 on failure, 1 when another thread or process took `tid` first, else 0. */
static int start_loop(struct wait_loop *wait_loop, long stride, long tid)
{
	wait_loop->tid = 0;
	wait_loop->go = 0;
	if (stride > 0 && set_next_tid(tid) != 0) {
		perror("c-wake-paths: ns_last_pid");
		return -1;
	}
	if (pthread_create(&wait_loop->thread, NULL, loop, wait_loop) != 0) {
		perror("c-wake-paths: pthread_create");
		return -1;
	}
	pid_t got;
	while ((got = __atomic_load_n(&wait_loop->tid, __ATOMIC_ACQUIRE)) == 0)
		sleep_seconds(0.001);
	return stride > 0 && got != tid;
}

/* Starts every loop; with a stride, on ids `stride` apart (one slot of the tracer's
 * wait words), trying other ids while something else on the machine takes one first. */
static int start_loops(struct wait_loop *loops, size_t count, long stride)
{
	for (int attempt = 0; attempt < 10; attempt++) {
		long base = stride > 0 ? free_tid_base(stride, count) : 0;
		int taken = 0;
		for (size_t i = 0; i < count; i++) {
			int started = start_loop(&loops[i], stride, base + (long)i * stride);
			if (started < 0)
				return -1;
			taken |= started;
		}
		for (size_t i = 0; i < count; i++)
			__atomic_store_n(&loops[i].go, taken ? -1 : 1, __ATOMIC_RELEASE);
		if (!taken)
			return 0;
		for (size_t i = 0; i < count; i++)
			pthread_join(loops[i].thread, NULL);
	}
	fprintf(stderr, "c-wake-paths: other processes kept taking the wait loops' ids\n");
	return -1;
}

static void *signaller(void *arg)
{
	(void)arg;
	for (;;) {
		sleep_seconds(0.04);
		pthread_mutex_lock(&local_lock);
		local_signals++;
		pthread_cond_signal(&local_cond);
		pthread_mutex_unlock(&local_lock);
	}
	return NULL;
}

/* The child's echo of echo_wait's bytes: at once, except one held for 20 ms every 100 ms. */
static void *echo_loop(void *arg)
{
	(void)arg;
	double next_hold = now_seconds();
	char byte;
	while (recv(echo_sockets[1], &byte, 1, 0) == 1) {
		double now = now_seconds();
		if (now >= next_hold) {
			sleep_seconds(0.02);
			next_hold = now + 0.1;
		}
		if (send(echo_sockets[1], &byte, 1, 0) != 1)
			break;
	}
	_exit(0);
}

/* The child: echoes on its own thread, writes to the socket every 50 ms and signals the
 * shared condition every 60. */
static void child_loop(void)
{
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	pthread_t echo;
	if (pthread_create(&echo, NULL, echo_loop, NULL) != 0)
		_exit(1);
	double next_write = now_seconds(), next_signal = next_write;
	for (;;) {
		double now = now_seconds();
		if (now >= next_write) {
			if (send(sockets[1], "x", 1, 0) != 1)
				_exit(0);
			next_write = now + 0.05;
		}
		if (now >= next_signal) {
			pthread_mutex_lock(&shared->lock);
			shared->signals++;
			pthread_cond_signal(&shared->cond);
			pthread_mutex_unlock(&shared->lock);
			next_signal = now + 0.06;
		}
		sleep_seconds(0.005);
	}
}

int main(int argc, char **argv)
{
	double seconds = argc > 1 ? atof(argv[1]) : 30.0;
	long stride = argc > 2 ? atol(argv[2]) : 0;
	shared = mmap(NULL, sizeof *shared, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (shared == MAP_FAILED || socketpair(AF_UNIX, SOCK_STREAM, 0, sockets) < 0 ||
	    socketpair(AF_UNIX, SOCK_STREAM, 0, echo_sockets) < 0) {
		perror("c-wake-paths: setup");
		return 1;
	}
	pthread_mutexattr_t mutex_attr;
	pthread_condattr_t cond_attr;
	pthread_mutexattr_init(&mutex_attr);
	pthread_mutexattr_setpshared(&mutex_attr, PTHREAD_PROCESS_SHARED);
	pthread_condattr_init(&cond_attr);
	pthread_condattr_setpshared(&cond_attr, PTHREAD_PROCESS_SHARED);
	pthread_mutex_init(&shared->lock, &mutex_attr);
	pthread_cond_init(&shared->cond, &cond_attr);
	pid_t child = fork();
	if (child < 0) {
		perror("c-wake-paths: fork");
		return 1;
	}
	if (child == 0)
		child_loop();

	static struct wait_loop loops[] = {
		{ .wait = signalled_wait }, { .wait = timed_wait }, { .wait = peer_wait },
		{ .wait = shared_wait }, { .wait = echo_wait },
	};
	if (start_loops(loops, sizeof loops / sizeof loops[0], stride) != 0)
		return 1;
	pthread_t thread;
	if (pthread_create(&thread, NULL, signaller, NULL) != 0) {
		perror("c-wake-paths: pthread_create");
		return 1;
	}
	printf("ready\n");
	fflush(stdout);
	sleep_seconds(seconds);
	kill(child, SIGKILL);
	return 0;
}
