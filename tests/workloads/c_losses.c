// Waits that the tracer cannot fully see, one kind per mode, for the tests that force each
// loss counter (tests/tests/losses.rs). Every mode loops for `seconds`, making a wait of a
// few milliseconds (over the tracer's default 1 ms threshold) about every 3 ms:
//
//   bad-stack      futex waits made with the stack pointer in an unreadable page
//                  (the stack copy fails: "stacks unreadable")
//   jit            futex waits made from code in an anonymous executable mapping
//                  (no symbol covers the address: "unknown symbols")
//   closed-socket  recv waits on a socket closed right after, never reusing its number
//                  (gone before userspace resolves it: "descriptors unresolved")
//   wakes          futex waits ended by a sibling thread's FUTEX_WAKE
//                  (each wake is a waker record: fills the wakers' ring buffer)
//
// Usage: c-losses MODE SECONDS. Prints "ready" once the waits have started.

#define _GNU_SOURCE
#include <linux/futex.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "c_workload.h"

static const struct timespec WAIT = {.tv_sec = 0, .tv_nsec = 3 * 1000 * 1000};
static double deadline;

static void die(const char *what) {
    perror(what);
    exit(1);
}

// A futex wait that times out after WAIT, made with rsp pointing into `bad_stack_top`'s
// PROT_NONE page: the kernel never touches the user stack during the call, so the only
// reader that fails is the tracer's stack copy. The syscall clobbers rcx and r11.
static void futex_wait_on_bad_stack(uint32_t *word, char *bad_stack_top) {
    register long r10 __asm__("r10") = (long)&WAIT;
    long ret = SYS_futex;
    __asm__ volatile(
        "mov %%rsp, %%r12\n\t"
        "mov %[bad], %%rsp\n\t"
        "syscall\n\t"
        "mov %%r12, %%rsp"
        : "+a"(ret)
        : "D"(word), "S"((long)FUTEX_WAIT_PRIVATE), "d"(0L), "r"(r10),
          [bad] "r"(bad_stack_top)
        : "rcx", "r11", "r12", "memory");
}

static void bad_stack(void) {
    char *page = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (page == MAP_FAILED) die("mmap");
    uint32_t word = 0;
    puts("ready");
    fflush(stdout);
    while (now_seconds() < deadline) futex_wait_on_bad_stack(&word, page + 2048);
}

typedef long (*futex_stub)(uint32_t *word, long op, long val, const struct timespec *timeout);

static void jit(void) {
    // mov r10, rcx; mov eax, SYS_futex; syscall; ret
    static const unsigned char code[] = {0x49, 0x89, 0xca, 0xb8, SYS_futex, 0x00, 0x00, 0x00,
                                         0x0f, 0x05, 0xc3};
    unsigned char *page =
        mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (page == MAP_FAILED) die("mmap");
    memcpy(page, code, sizeof code);
    if (mprotect(page, 4096, PROT_READ | PROT_EXEC) != 0) die("mprotect");
    futex_stub stub = (futex_stub)(void *)page;
    uint32_t word = 0;
    puts("ready");
    fflush(stdout);
    while (now_seconds() < deadline) stub(&word, FUTEX_WAIT_PRIVATE, 0, &WAIT);
}

static void closed_socket(void) {
    // Each round's socket gets a number not used for the last FD_CYCLE rounds (seconds),
    // so a late lookup of it finds nothing rather than a newer socket; cycling keeps the
    // numbers under the usual limit of 1024 descriptors.
    enum { FIRST_FD = 100, FD_CYCLE = 800 };
    int round = 0;
    puts("ready");
    fflush(stdout);
    while (now_seconds() < deadline) {
        int pair[2];
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, pair) != 0) die("socketpair");
        int fd = dup2(pair[0], FIRST_FD + round++ % FD_CYCLE);
        if (fd < 0) die("dup2");
        close(pair[0]);
        struct timeval timeout = {.tv_sec = 0, .tv_usec = 3000};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
        char byte;
        (void)recv(fd, &byte, 1, 0);
        close(fd);
        close(pair[1]);
    }
}

static uint32_t wake_word;

static void *waker(void *arg) {
    (void)arg;
    while (now_seconds() < deadline) {
        nanosleep(&WAIT, NULL);
        __atomic_store_n(&wake_word, 1, __ATOMIC_SEQ_CST);
        syscall(SYS_futex, &wake_word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
    }
    return NULL;
}

static void wakes(void) {
    pthread_t thread;
    if (pthread_create(&thread, NULL, waker, NULL) != 0) die("pthread_create");
    puts("ready");
    fflush(stdout);
    while (now_seconds() < deadline) {
        // A timeout too, so the loop ends even if the last wake came before the wait.
        struct timespec timeout = {.tv_sec = 0, .tv_nsec = 50 * 1000 * 1000};
        syscall(SYS_futex, &wake_word, FUTEX_WAIT_PRIVATE, 0, &timeout, NULL, 0);
        __atomic_store_n(&wake_word, 0, __ATOMIC_SEQ_CST);
    }
    pthread_join(thread, NULL);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: c-losses bad-stack|jit|closed-socket|wakes SECONDS\n");
        return 2;
    }
    deadline = now_seconds() + atof(argv[2]);
    if (strcmp(argv[1], "bad-stack") == 0) bad_stack();
    else if (strcmp(argv[1], "jit") == 0) jit();
    else if (strcmp(argv[1], "closed-socket") == 0) closed_socket();
    else if (strcmp(argv[1], "wakes") == 0) wakes();
    else {
        fprintf(stderr, "c-losses: unknown mode %s\n", argv[1]);
        return 2;
    }
    return 0;
}
