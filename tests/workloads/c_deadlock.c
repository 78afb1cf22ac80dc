/*
 * A protocol deadlock between two processes: each waits for the other to speak first. The
 * parent connects to the child over loopback TCP, and its "client" thread waits in recv()
 * for a greeting; the child accepts, and its "peer-epoll" thread waits in epoll_wait() and
 * its "peer-poll" thread in poll() for a request on that connection, while "peer-idle"
 * only sleeps.
 *
 * Usage: c-deadlock [SECONDS]
 * Built by the tests with `gcc -O2 -g -pthread`. Prints "ready CHILD_PID" once the client is
 * in recvfrom and the child's two waiters in epoll_wait and poll (as their
 * /proc/self/task/TID/syscall shows); both processes exit after SECONDS (the child also when
 * the parent dies).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "c_workload.h"

/* x86_64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl); recv() is recvfrom. */
#define SYS_POLL_NR 7
#define SYS_RECVFROM_NR 45
#define SYS_EPOLL_WAIT_NR 232
#define POLL_SECONDS 0.01

static int connection = -1;

static void die(const char *what)
{
	perror(what);
	exit(1);
}

/* Not inlined: the tests find the wait by these names. */
__attribute__((noinline)) static void *wait_for_request_in_epoll(void *unused)
{
	(void)unused;
	int epoll = epoll_create1(EPOLL_CLOEXEC);
	struct epoll_event event = { .events = EPOLLIN, .data.fd = connection };
	if (epoll < 0 || epoll_ctl(epoll, EPOLL_CTL_ADD, connection, &event) < 0)
		die("epoll");
	while (epoll_wait(epoll, &event, 1, -1) >= 0 || errno == EINTR)
		;
	return NULL;
}

__attribute__((noinline)) static void *wait_for_request_in_poll(void *unused)
{
	(void)unused;
	struct pollfd fds[2] = { { .fd = -1 }, { .fd = connection, .events = POLLIN } };
	while (poll(fds, 2, -1) >= 0 || errno == EINTR)
		;
	return NULL;
}

static void *idle(void *unused)
{
	(void)unused;
	for (;;)
		sleep_seconds(3600);
	return NULL;
}

static void start(void *(*run)(void *), const char *name)
{
	pthread_t thread;
	if (pthread_create(&thread, NULL, run, NULL) != 0)
		die("pthread_create");
	pthread_setname_np(thread, name);
}

static void wait_until(const char *name, long nr)
{
	while (threads_in_syscall(name, nr) != 1)
		sleep_seconds(POLL_SECONDS);
}

/* The child: accepts the parent's connection and waits for a request that never comes. */
static void serve(int listener, int ready_pipe)
{
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	connection = accept(listener, NULL, NULL);
	if (connection < 0)
		die("accept");
	start(wait_for_request_in_epoll, "peer-epoll");
	start(wait_for_request_in_poll, "peer-poll");
	start(idle, "peer-idle");
	wait_until("peer-epoll", SYS_EPOLL_WAIT_NR);
	wait_until("peer-poll", SYS_POLL_NR);
	if (write(ready_pipe, "r", 1) != 1)
		die("write");
}

__attribute__((noinline)) static void *wait_for_greeting(void *unused)
{
	(void)unused;
	char greeting[64];
	while (recv(connection, greeting, sizeof greeting, 0) > 0 || errno == EINTR)
		;
	return NULL;
}

int main(int argc, char **argv)
{
	double seconds = argc > 1 ? atof(argv[1]) : 60;
	int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in address = { .sin_family = AF_INET,
				       .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t length = sizeof address;
	if (listener < 0 || bind(listener, (struct sockaddr *)&address, sizeof address) < 0 ||
	    listen(listener, 1) < 0 ||
	    getsockname(listener, (struct sockaddr *)&address, &length) < 0)
		die("listen");
	int ready[2];
	if (pipe(ready) < 0)
		die("pipe");
	pid_t child = fork();
	if (child < 0)
		die("fork");
	if (child == 0) {
		serve(listener, ready[1]);
		sleep_seconds(seconds);
		return 0;
	}
	close(listener);
	connection = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (connection < 0 || connect(connection, (struct sockaddr *)&address, sizeof address) < 0)
		die("connect");
	char byte;
	if (read(ready[0], &byte, 1) != 1)
		die("read");
	start(wait_for_greeting, "client");
	wait_until("client", SYS_RECVFROM_NR);
	printf("ready %d\n", child);
	fflush(stdout);
	sleep_seconds(seconds);
	kill(child, SIGKILL);
	return 0;
}
