/*
 * An event-driven writer, the way Redis or memcached serve their clients: one thread, an
 * epoll loop over non-blocking sockets. It connects to 127.0.0.1:PORT (a backend that never
 * reads) and writes until the socket would block, then waits in epoll_wait for it to take
 * more; it does the same into a Unix socketpair whose other end it never reads. No thread
 * ever blocks in send: the queues are all that shows of the peers that stopped reading.
 *
 * Usage: c_event_writer PORT SECONDS
 * Prints "ready" once both sockets would block (their send buffers full), then loops until
 * SECONDS have passed.
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "c_workload.h"

static char chunk[65536];

static void set_nonblocking(int fd)
{
	if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0) {
		perror("fcntl");
		exit(1);
	}
}

/* Writes until the socket would block. */
static void fill(int fd)
{
	for (;;) {
		ssize_t n = send(fd, chunk, sizeof chunk, MSG_NOSIGNAL);
		if (n >= 0)
			continue;
		if (errno == EAGAIN || errno == EWOULDBLOCK)
			return;
		if (errno == EINTR)
			continue;
		perror("send");
		exit(1);
	}
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: %s PORT SECONDS\n", argv[0]);
		return 2;
	}
	int port = atoi(argv[1]);
	double seconds = atof(argv[2]);

	int tcp = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in backend = { .sin_family = AF_INET, .sin_port = htons(port) };
	backend.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (tcp < 0 || connect(tcp, (struct sockaddr *)&backend, sizeof backend) < 0) {
		perror("connect");
		return 1;
	}
	int pair[2];
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, pair) < 0) {
		perror("socketpair");
		return 1;
	}
	set_nonblocking(tcp);
	set_nonblocking(pair[0]);

	int epoll = epoll_create1(0);
	struct epoll_event events[2] = {
		{ .events = EPOLLOUT, .data.fd = tcp },
		{ .events = EPOLLOUT, .data.fd = pair[0] },
	};
	if (epoll < 0 || epoll_ctl(epoll, EPOLL_CTL_ADD, tcp, &events[0]) < 0 ||
	    epoll_ctl(epoll, EPOLL_CTL_ADD, pair[0], &events[1]) < 0) {
		perror("epoll");
		return 1;
	}
	/* The backend's window closes after a few KiB; what follows fills the send buffer. */
	double started = now_seconds();
	fill(tcp);
	fill(pair[0]);
	printf("ready\n");
	fflush(stdout);
	while (now_seconds() - started < seconds) {
		struct epoll_event ready[2];
		int n = epoll_wait(epoll, ready, 2, 100);
		for (int i = 0; i < n; i++)
			fill(ready[i].data.fd);
	}
	return 0;
}
