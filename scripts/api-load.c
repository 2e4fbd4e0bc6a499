/* api-load: many HTTP clients of one Unix socket, in one thread, for
 * scripts/api-concurrency-bench.py --native.
 *
 *   api-load SOCKET CLIENTS REQUESTS INTERVAL_MS DEADLINE_S
 *
 * Each client sends REQUESTS GETs of / (a fresh connection each: connect,
 * send, read the whole answer, close), the first at a random offset within
 * INTERVAL_MS and each next one INTERVAL_MS after the previous one began (at
 * once when it took longer, or when INTERVAL_MS is 0). A 503, or a connection
 * closed before a whole answer, is tried again 1 ms later, and the GET's time
 * runs from its first attempt. The clients are driven by epoll, so what one
 * GET costs the client is a few system calls, not an interpreter's loop.
 *
 * Prints one line per GET ("t MICROSECONDS STATUS"), then
 * "refused N resets N starved N". A client starves when it has not finished
 * by DEADLINE_S. Exit status 2 on bad arguments or a failed set-up call. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static const char request[] = "GET / HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\r\n";

enum phase { waiting, connecting, sending, reading, finished };

struct client {
    enum phase phase;
    int fd;
    int left;           /* GETs still to start */
    int retrying;       /* the next attempt repeats the current GET */
    double next;        /* when the next attempt may begin (s) */
    double began;       /* the current GET's first attempt (s) */
    size_t sent, got;
    char answer[4096];
};

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static struct sockaddr_un address;
static int epoll_fd;
static long refused, resets;

static void stop_watching(struct client *c) {
    if (c->fd >= 0) {
        epoll_ctl(epoll_fd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
    }
}

/* The attempt failed before an answer: try again in 1 ms. */
static void retry(struct client *c, int reset) {
    stop_watching(c);
    refused++;
    resets += reset;
    c->phase = waiting;
    c->retrying = 1;
    c->next = now() + 0.001;
}

static void start_attempt(struct client *c) {
    if (!c->retrying) {
        c->began = now();
        c->left--;
    }
    c->retrying = 0;
    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) { perror("socket"); exit(2); }
    c->sent = c->got = 0;
    struct epoll_event event = { .events = EPOLLOUT, .data.ptr = c };
    if (connect(c->fd, (struct sockaddr *)&address, sizeof address) == 0 || errno == EINPROGRESS) {
        c->phase = sending;
    } else if (errno == EAGAIN) {
        /* The listen backlog is full: a refusal like a 503. */
        close(c->fd);
        c->fd = -1;
        retry(c, 1);
        return;
    } else {
        perror("connect");
        exit(2);
    }
    if (epoll_ctl(epoll_fd, EPOLL_CTL_ADD, c->fd, &event) != 0) { perror("epoll_ctl"); exit(2); }
}

/* The whole answer is in: its status, or 0 while more is to come. */
static int complete_status(struct client *c) {
    c->answer[c->got < sizeof c->answer ? c->got : sizeof c->answer - 1] = 0;
    char *end = strstr(c->answer, "\r\n\r\n");
    if (!end) return 0;
    long length = 0;
    char *field = strcasestr(c->answer, "\r\ncontent-length:");
    if (field && field < end) length = strtol(field + 17, NULL, 10);
    if ((size_t)(end + 4 - c->answer) + (size_t)length > c->got) return 0;
    int status = 0;
    sscanf(c->answer, "HTTP/1.%*d %d", &status);
    return status;
}

static void ready(struct client *c, double interval) {
    if (c->phase == sending) {
        ssize_t n = send(c->fd, request + c->sent, sizeof request - 1 - c->sent, MSG_NOSIGNAL);
        if (n < 0 && errno != EAGAIN) {
            /* A server past its limit answers 503 and closes: read what is there. */
            c->phase = reading;
        } else if (n > 0 && (c->sent += n) == sizeof request - 1) {
            c->phase = reading;
        }
        if (c->phase == reading) {
            struct epoll_event event = { .events = EPOLLIN, .data.ptr = c };
            epoll_ctl(epoll_fd, EPOLL_CTL_MOD, c->fd, &event);
        }
        return;
    }
    if (c->phase != reading) return;
    ssize_t n = recv(c->fd, c->answer + c->got, sizeof c->answer - 1 - c->got, 0);
    if (n < 0 && errno == EAGAIN) return;
    if (n > 0) c->got += n;
    int status = complete_status(c);
    if (status == 0) {
        if (n <= 0 || c->got >= sizeof c->answer - 1) retry(c, 1);
        return;
    }
    stop_watching(c);
    if (status == 503) {
        retry(c, 0);
        return;
    }
    double finished_at = now(), due = c->began + interval;
    printf("t %.1f %d\n", (finished_at - c->began) * 1e6, status);
    c->phase = c->left > 0 ? waiting : finished;
    c->next = due > finished_at ? due : finished_at;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: api-load SOCKET CLIENTS REQUESTS INTERVAL_MS DEADLINE_S\n");
        return 2;
    }
    int count = atoi(argv[2]), requests = atoi(argv[3]);
    double interval = atof(argv[4]) / 1000, deadline = atof(argv[5]);
    if (count < 1 || requests < 1 || interval < 0 || deadline <= 0 || strlen(argv[1]) >= sizeof address.sun_path) {
        fprintf(stderr, "api-load: bad arguments\n");
        return 2;
    }
    address.sun_family = AF_UNIX;
    strcpy(address.sun_path, argv[1]);
    epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    struct client *clients = calloc(count, sizeof *clients);
    if (epoll_fd < 0 || !clients) { perror("set-up"); return 2; }
    srand48(getpid());
    double start = now();
    for (int i = 0; i < count; i++) {
        clients[i] = (struct client){ .phase = waiting, .fd = -1, .left = requests, .next = start + drand48() * interval };
    }
    int unfinished = count;
    while (unfinished > 0 && now() - start < deadline) {
        /* Begin every GET (or retry) that is due; find the next one due. */
        double t = now(), soonest = start + deadline;
        unfinished = 0;
        for (int i = 0; i < count; i++) {
            struct client *c = &clients[i];
            if (c->phase == finished) continue;
            unfinished++;
            if (c->phase != waiting) continue;
            if (c->next <= t) {
                start_attempt(c);
            } else if (c->next < soonest) {
                soonest = c->next;
            }
        }
        struct epoll_event events[64];
        /* Rounded up, so that a client due within a millisecond is waited for, not spun on. */
        double wait = soonest - now();
        int timeout = wait <= 0 ? 0 : (int)(wait * 1000) + 1;
        int n = epoll_wait(epoll_fd, events, 64, timeout > 100 ? 100 : timeout);
        for (int i = 0; i < n; i++) ready(events[i].data.ptr, interval);
    }
    long starved = 0;
    for (int i = 0; i < count; i++) starved += clients[i].phase != finished;
    printf("refused %ld resets %ld starved %ld\n", refused, resets, starved);
    return 0;
}
