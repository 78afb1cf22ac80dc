/*
 * A pile-up that never clears, in C through glibc: handler threads push statistics into a
 * bounded queue guarded by a pthread mutex and condition variables; one sender thread pops them
 * and send()s each to a backend that never reads (slow-backend --never-read). The sender's send
 * buffer fills and it blocks in send() for good, the queue fills, and every handler blocks in
 * pthread_cond_wait inside enqueue_stat for good.
 *
 * Usage: c-stuck PORT [HANDLERS] [SECONDS]
 * Built by the tests with `gcc -O2 -g -pthread` (no frame pointers at -O2).
 * Prints "stuck" once every handler is in a futex wait and the sender in sendto, as seen in
 * /proc/self/task/TID/syscall. The main thread only sleeps (nanosleep is not watched) and exits
 * after SECONDS without joining.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "c_workload.h"

/* Few slots, so the queue fills right after the sender blocks. */
#define QUEUE_CAPACITY 4
#define MESSAGE_BYTES 256
/* The smallest send buffer the kernel allows (doubled and clamped at about 4.5 KiB). */
#define SEND_BUFFER_BYTES 4096
/* Thread names, which /proc/self/task/TID/comm shows; the readiness check goes by them. */
#define HANDLER_NAME "handler"
#define SENDER_NAME "sender"
/* x86_64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl); glibc's send() is sendto. */
#define SYS_FUTEX_NR 202
#define SYS_SENDTO_NR 44
/* Poll period, and how many polls in a row must see every thread blocked: a handler waiting
 * briefly while the sender still drains the queue must not count. */
#define POLL_SECONDS 0.01
#define STABLE_POLLS 10

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

	pthread_setname_np(pthread_self(), HANDLER_NAME);
	for (;;) {
		memset(msg, '.', sizeof msg);
		snprintf(msg, sizeof msg, "stat handler=%ld seq=%lu ", id, seq++);
		enqueue_stat(msg);
	}
	return NULL;
}

/* The call site the tests look for on the sender's [send] wait. */
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

CALL_SITE void *sender(void *arg)
{
	char msg[MESSAGE_BYTES];

	(void)arg;
	pthread_setname_np(pthread_self(), SENDER_NAME);
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
			perror("c-stuck: send");
			for (;;)
				sleep(3600);
		}
	}
	return NULL;
}

/* Reads a small /proc file into buf (NUL-terminated); returns 0 on success. */
int main(int argc, char **argv)
{
	if (argc < 2 || argc > 4) {
		fprintf(stderr, "usage: c-stuck PORT [HANDLERS] [SECONDS]\n");
		return 2;
	}
	int port = atoi(argv[1]);
	long handlers = argc > 2 ? atol(argv[2]) : 16;
	double seconds = argc > 3 ? atof(argv[3]) : 60.0;
	double deadline = now_seconds() + seconds;

	backend_fd = socket(AF_INET, SOCK_STREAM, 0);
	if (backend_fd < 0) {
		perror("c-stuck: socket");
		return 1;
	}
	int sndbuf = SEND_BUFFER_BYTES;
	if (setsockopt(backend_fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf) < 0) {
		perror("c-stuck: setsockopt SO_SNDBUF");
		return 1;
	}
	struct sockaddr_in addr = {
		.sin_family = AF_INET,
		.sin_port = htons((unsigned short)port),
		.sin_addr.s_addr = htonl(INADDR_LOOPBACK),
	};
	if (connect(backend_fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
		fprintf(stderr, "c-stuck: connect 127.0.0.1:%d: %s\n", port, strerror(errno));
		return 1;
	}

	pthread_t tid;
	int err = pthread_create(&tid, NULL, sender, NULL);
	for (long i = 0; err == 0 && i < handlers; i++)
		err = pthread_create(&tid, NULL, handler, (void *)i);
	if (err != 0) {
		fprintf(stderr, "c-stuck: pthread_create: %s\n", strerror(err));
		return 1;
	}

	/* Poll instead of joining or a barrier: main must never wait on a futex. */
	for (int stable = 0; stable < STABLE_POLLS;) {
		if (now_seconds() >= deadline) {
			fprintf(stderr, "c-stuck: the threads did not all block before the deadline\n");
			_exit(1);
		}
		int blocked = threads_in_syscall(HANDLER_NAME, SYS_FUTEX_NR) == handlers &&
			      threads_in_syscall(SENDER_NAME, SYS_SENDTO_NR) == 1;
		stable = blocked ? stable + 1 : 0;
		sleep_seconds(POLL_SECONDS);
	}
	printf("stuck\n");
	fflush(stdout);

	double left = deadline - now_seconds();
	if (left > 0)
		sleep_seconds(left);
	/* _exit: skip atexit and stdio teardown while threads still hold the queue lock. */
	_exit(0);
}
