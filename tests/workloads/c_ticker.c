/*
 * One thread that waits in poll() for a tick that never comes, TICK_MS at a time, and
 * between waits does nothing: a service whose only thread sleeps in short waits (an event
 * loop between timers). No other thread of the process runs while it sleeps, so a sampled
 * recording's pass in the kernel never ticks in its memory and cannot copy its stack: the
 * tests check that its waits still keep their stacks (the drains then come at the rate).
 *
 * Usage: c-ticker [TICK_MS] [SECONDS]
 * Built by the tests with `gcc -O2 -g -pthread` (no frame pointers at -O2).
 * Prints "ready" before its first wait.
 */
#define _GNU_SOURCE
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

/* noinline and noclone keep the call site as a frame under its plain name. */
#define CALL_SITE __attribute__((noinline, noclone))

/* Waits up to `ms` for the pipe's read end, which no one writes to. */
CALL_SITE static void wait_for_tick(int fd, int ms) {
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    (void)poll(&pfd, 1, ms);
}

int main(int argc, char **argv) {
    int ms = argc > 1 ? atoi(argv[1]) : 50;
    double seconds = argc > 2 ? atof(argv[2]) : 60.0;
    int fds[2];
    if (pipe(fds) != 0) {
        perror("pipe");
        return 1;
    }
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    printf("ready\n");
    fflush(stdout);
    do {
        wait_for_tick(fds[0], ms);
        clock_gettime(CLOCK_MONOTONIC, &now);
    } while ((now.tv_sec - start.tv_sec) + (now.tv_nsec - start.tv_nsec) / 1e9 < seconds);
    return 0;
}
