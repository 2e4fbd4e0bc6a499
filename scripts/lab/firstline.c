/* firstline: run a command and print how long it took, from exec to the first
 * line of its output that contains MARKER, in seconds; then stop it.
 * Usage: firstline MARKER TIMEOUT_SECONDS COMMAND [ARG...]
 * Built static by scripts/lab-bench.py and run inside a lab L1, where there is
 * no Python: it times Kestrel and QEMU as L2 VMMs on the same KVM. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <poll.h>
#include <fcntl.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: firstline MARKER TIMEOUT COMMAND [ARG...]\n"); return 2; }
    const char *marker = argv[1];
    double timeout = atof(argv[2]);
    int out[2];
    if (pipe(out) != 0) { perror("pipe"); return 2; }
    double start = now();
    pid_t child = fork();
    if (child < 0) { perror("fork"); return 2; }
    if (child == 0) {
        dup2(out[1], 1);
        dup2(out[1], 2);
        close(out[0]);
        close(out[1]);
        int null = open("/dev/null", 0);
        if (null >= 0) dup2(null, 0);
        execvp(argv[3], argv + 3);
        perror("exec");
        _exit(127);
    }
    close(out[1]);
    char window[8192];
    size_t used = 0;
    double found = -1;
    while (found < 0) {
        double left = timeout - (now() - start);
        if (left <= 0) break;
        struct pollfd p = { .fd = out[0], .events = POLLIN };
        if (poll(&p, 1, (int)(left * 1000) + 1) <= 0) continue;
        ssize_t n = read(out[0], window + used, sizeof window - 1 - used);
        if (n <= 0) break;
        used += n;
        window[used] = 0;
        if (memmem(window, used, marker, strlen(marker))) { found = now() - start; break; }
        if (used > sizeof window / 2) {  /* keep the tail, where a marker may be split */
            size_t keep = strlen(marker);
            memmove(window, window + used - keep, keep);
            used = keep;
        }
    }
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    if (found < 0) { printf("timeout\n"); return 1; }
    printf("%.3f\n", found);
    return 0;
}
