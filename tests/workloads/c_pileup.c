/*
 * The pile-up in C through glibc: handler threads push statistics into a bounded queue guarded
 * by a pthread mutex and condition variables; one reporter thread pops them and send()s each to
 * a backend that reads slowly. The backend fills the reporter's send buffer, the reporter blocks
 * in send(), the queue fills, and every handler blocks in pthread_cond_wait inside enqueue_stat.
 *
 * Usage: c-pileup PORT [HANDLERS] [SECONDS]
 * Built by the tests with `gcc -O2 -g -pthread` (no frame pointers at -O2).
 * Prints "ready" once every thread runs. The main thread only sleeps (not traced) and exits
 * without joining, so it never waits on a futex.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "c_workload.h"

/* Few slots, so the queue stays full and handlers wait behind it. */
#define QUEUE_CAPACITY 16
/* Big enough that the backend's reads, not our syscalls, set the pace. */
#define MESSAGE_BYTES 256
/* The smallest send buffer the kernel allows (doubled and clamped at about 4.5 KiB). */
#define SEND_BUFFER_BYTES 4096

/*
 * noinline keeps the call sites as frames; noclone stops gcc -O2 from renaming them to
 * enqueue_stat.constprop.0 and the like, so the tests can match the plain names.
 */
#define CALL_SITE __attribute__((noinline, noclone))

struct queue {
	pthread_mutex_t lock;
	pthread_cond_t not_full;
	pthread_cond_t not_empty;
	size_t head, len;
	char slots[QUEUE_CAPACITY][MESSAGE_BYTES];
};

static struct queue queue = {
	.lock = PTHREAD_MUTEX_INITIALIZER,
	.not_full = PTHREAD_COND_INITIALIZER,
	.not_empty = PTHREAD_COND_INITIALIZER,
};
static atomic_int started;
static int backend_fd = -1;

/* The call site the tests look for on every handler's futex wait. */
CALL_SITE void enqueue_stat(const char *msg)
{
	pthread_mutex_lock(&queue.lock);
	while (queue.len == QUEUE_CAPACITY)
		pthread_cond_wait(&queue.not_full, &queue.lock);
	memcpy(queue.slots[(queue.head + queue.len) % QUEUE_CAPACITY], msg, MESSAGE_BYTES);
	queue.len++;
	pthread_cond_signal(&queue.not_empty);
	pthread_mutex_unlock(&queue.lock);
}

CALL_SITE void *handler(void *arg)
{
	long id = (long)arg;
	unsigned long seq = 0;
	char msg[MESSAGE_BYTES];

	pthread_setname_np(pthread_self(), "handler");
	atomic_fetch_add(&started, 1);
	for (;;) {
		memset(msg, '.', sizeof msg);
		snprintf(msg, sizeof msg, "stat handler=%ld seq=%lu ", id, seq++);
		enqueue_stat(msg);
	}
	return NULL;
}

/* The call site the tests look for on the reporter's [send] wait. */
CALL_SITE int send_to_backend(const char *msg, size_t len)
{
	while (len > 0) {
		ssize_t n = send(backend_fd, msg, len, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		msg += n;
		len -= (size_t)n;
	}
	return 0;
}

CALL_SITE void *reporter(void *arg)
{
	char msg[MESSAGE_BYTES];

	(void)arg;
	pthread_setname_np(pthread_self(), "reporter");
	atomic_fetch_add(&started, 1);
	for (;;) {
		pthread_mutex_lock(&queue.lock);
		while (queue.len == 0)
			pthread_cond_wait(&queue.not_empty, &queue.lock);
		memcpy(msg, queue.slots[queue.head], MESSAGE_BYTES);
		queue.head = (queue.head + 1) % QUEUE_CAPACITY;
		queue.len--;
		pthread_cond_signal(&queue.not_full);
		pthread_mutex_unlock(&queue.lock);
		if (send_to_backend(msg, sizeof msg) < 0) {
			/* Backend gone: stop draining (the handlers stay piled up) and park
			 * without a futex until main exits the process. */
			perror("c-pileup: send");
			for (;;)
				sleep(3600);
		}
	}
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc < 2 || argc > 4) {
		fprintf(stderr, "usage: c-pileup PORT [HANDLERS] [SECONDS]\n");
		return 2;
	}
	int port = atoi(argv[1]);
	long handlers = argc > 2 ? atol(argv[2]) : 32;
	double seconds = argc > 3 ? atof(argv[3]) : 30.0;
	struct timespec start;
	clock_gettime(CLOCK_MONOTONIC, &start);

	backend_fd = socket(AF_INET, SOCK_STREAM, 0);
	if (backend_fd < 0) {
		perror("c-pileup: socket");
		return 1;
	}
	int sndbuf = SEND_BUFFER_BYTES;
	if (setsockopt(backend_fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf) < 0) {
		perror("c-pileup: setsockopt SO_SNDBUF");
		return 1;
	}
	struct sockaddr_in addr = {
		.sin_family = AF_INET,
		.sin_port = htons((unsigned short)port),
		.sin_addr.s_addr = htonl(INADDR_LOOPBACK),
	};
	if (connect(backend_fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
		fprintf(stderr, "c-pileup: connect 127.0.0.1:%d: %s\n", port, strerror(errno));
		return 1;
	}

	pthread_t tid;
	int err = pthread_create(&tid, NULL, reporter, NULL);
	for (long i = 0; err == 0 && i < handlers; i++)
		err = pthread_create(&tid, NULL, handler, (void *)i);
	if (err != 0) {
		fprintf(stderr, "c-pileup: pthread_create: %s\n", strerror(err));
		return 1;
	}

	/* Poll instead of joining or a barrier: main must never wait on a futex. */
	while (atomic_load(&started) < handlers + 1)
		sleep_seconds(0.001);
	printf("ready\n");
	fflush(stdout);

	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	double elapsed = (double)(now.tv_sec - start.tv_sec) + (double)(now.tv_nsec - start.tv_nsec) / 1e9;
	if (seconds > elapsed)
		sleep_seconds(seconds - elapsed);
	/* _exit: skip atexit and stdio teardown while threads still hold the queue lock. */
	_exit(0);
}
