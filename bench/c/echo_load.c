/*
 * bench/c/echo_load.c - an epoll load client for echo servers, one process, one thread.
 *
 *   echo_load rate   HOST:PORT CONNECTIONS IN_FLIGHT PAYLOAD
 *       Many short connections: connect, send PAYLOAD bytes, read them all back and compare,
 *       close; IN_FLIGHT of them at a time until CONNECTIONS have finished.
 *   echo_load stream HOST:PORT STREAMS SECONDS [WARMUP_S [WORKERS]]
 *       STREAMS long connections, each writing a known pattern and reading the echo at the
 *       same time; the echoed bytes are compared and counted for SECONDS after WARMUP_S
 *       (default 0.5). The streams are shared among WORKERS processes (default: the number
 *       of CPUs online, at most STREAMS).
 *
 * Every echoed byte is compared with what was sent. Prints one JSON object on stdout:
 * mode, target, duration_s, connections_ok, errors {refused, reset, timeout, short, wrong,
 * other}, conn_per_s, mib_per_s, latency_ms {p50, p90, p99, max}, bytes_verified.
 * Exit status: 0 when there were no errors, 1 otherwise, 2 for bad arguments.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PATLEN 65521u         /* a prime: consecutive payloads start at different offsets */
#define CHUNK (256u * 1024u)  /* bytes per read()/write() call in stream mode */
#define TIMEOUT_S 10.0        /* a connection silent this long counts as a timeout */
#define MAX_EVENTS 256

enum { E_REFUSED, E_RESET, E_TIMEOUT, E_SHORT, E_WRONG, E_OTHER, E_KINDS };
static const char *const error_names[E_KINDS] = {"refused", "reset", "timeout",
                                                 "short", "wrong", "other"};

static unsigned char pattern[PATLEN + CHUNK]; /* any window of up to CHUNK bytes is contiguous */
static struct sockaddr_in target;
static const char *target_text;
static long errors[E_KINDS];

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void usage(void)
{
    fprintf(stderr, "usage: echo_load rate HOST:PORT CONNECTIONS IN_FLIGHT PAYLOAD\n"
                    "       echo_load stream HOST:PORT STREAMS SECONDS [WARMUP_S [WORKERS]]\n");
    exit(2);
}

static long positive(const char *text)
{
    char *end;
    long v = strtol(text, &end, 10);
    if (*text == '\0' || *end != '\0' || v < 1)
        usage();
    return v;
}

static void parse_target(const char *text)
{
    char host[64];
    const char *colon = strrchr(text, ':');
    size_t len;
    if (colon == NULL || (len = (size_t)(colon - text)) == 0 || len >= sizeof host)
        usage();
    memcpy(host, text, len);
    host[len] = '\0';
    memset(&target, 0, sizeof target);
    target.sin_family = AF_INET;
    target.sin_port = htons((unsigned short)positive(colon + 1));
    if (inet_pton(AF_INET, host, &target.sin_addr) != 1)
        usage();
    target_text = text;
}

static int classify(int err)
{
    switch (err) {
    case ECONNREFUSED:
        return E_REFUSED;
    case ECONNRESET:
    case EPIPE:
        return E_RESET;
    case ETIMEDOUT:
        return E_TIMEOUT;
    default:
        return E_OTHER;
    }
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double percentile(const double *sorted, long n, double p)
{
    long i;
    if (n == 0)
        return 0.0;
    i = (long)(p / 100.0 * (double)(n - 1) + 0.5);
    return sorted[i];
}

static int report(const char *mode, double elapsed, long ok, double mib, double *lat, long nlat,
                  long long verified)
{
    long total_errors = 0;
    int k;
    if (nlat > 0)
        qsort(lat, (size_t)nlat, sizeof *lat, cmp_double);
    printf("{\"mode\": \"%s\", \"target\": \"%s\", \"duration_s\": %.6f, "
           "\"connections_ok\": %ld, \"errors\": {",
           mode, target_text, elapsed, ok);
    for (k = 0; k < E_KINDS; k++) {
        printf("%s\"%s\": %ld", k ? ", " : "", error_names[k], errors[k]);
        total_errors += errors[k];
    }
    printf("}, \"conn_per_s\": %.1f, \"mib_per_s\": %.1f, \"latency_ms\": "
           "{\"p50\": %.3f, \"p90\": %.3f, \"p99\": %.3f, \"max\": %.3f}, "
           "\"bytes_verified\": %lld}\n",
           elapsed > 0 ? (double)ok / elapsed : 0.0, mib, percentile(lat, nlat, 50) * 1e3,
           percentile(lat, nlat, 90) * 1e3, percentile(lat, nlat, 99) * 1e3,
           nlat ? lat[nlat - 1] * 1e3 : 0.0, verified);
    return total_errors ? 1 : 0;
}

/* ----- rate mode ------------------------------------------------------------------------- */

struct conn {
    int fd;         /* -1 when the slot is free */
    int connected;
    unsigned off;   /* where this connection's payload starts in the pattern */
    long got;
    double started;
};

static int epfd;

static int start_conn(struct conn *c, unsigned off, int *err)
{
    struct epoll_event ev;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        *err = errno;
        return -1;
    }
    c->started = now();
    if (connect(fd, (struct sockaddr *)&target, sizeof target) < 0 && errno != EINPROGRESS) {
        *err = errno;
        close(fd);
        return -1;
    }
    c->fd = fd;
    c->connected = 0;
    c->off = off;
    c->got = 0;
    ev.events = EPOLLOUT;
    ev.data.ptr = c;
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        perror("epoll_ctl");
        exit(1);
    }
    return 0;
}

static void end_conn(struct conn *c)
{
    close(c->fd); /* also removes it from the epoll set */
    c->fd = -1;
}

static int run_rate(long total, long inflight, long payload)
{
    struct conn *conns = calloc((size_t)inflight, sizeof *conns);
    double *lat = calloc((size_t)total, sizeof *lat);
    unsigned char *buf = malloc((size_t)payload);
    struct epoll_event events[MAX_EVENTS];
    long started = 0, finished = 0, ok = 0, i;
    long long verified = 0;
    double t0, elapsed, last_check;

    if (conns == NULL || lat == NULL || buf == NULL || payload > (long)CHUNK) {
        fprintf(stderr, "echo_load: out of memory or payload above %u\n", CHUNK);
        return 2;
    }
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) {
        perror("epoll_create1");
        return 1;
    }
    t0 = last_check = now();
    for (i = 0; i < inflight; i++)
        conns[i].fd = -1;
    while (finished < total) {
        int n, k;
        double t;
        /* Fill every free slot. */
        for (i = 0; i < inflight && started < total; i++) {
            int err;
            if (conns[i].fd >= 0)
                continue;
            if (start_conn(&conns[i], (unsigned)(started * 64u) % PATLEN, &err) < 0) {
                errors[classify(err)]++;
                finished++;
            }
            started++;
        }
        n = epoll_wait(epfd, events, MAX_EVENTS, 100);
        if (n < 0 && errno != EINTR) {
            perror("epoll_wait");
            return 1;
        }
        for (k = 0; k < n; k++) {
            struct conn *c = events[k].data.ptr;
            if (!c->connected) {
                int err = 0;
                socklen_t len = sizeof err;
                ssize_t sent;
                struct epoll_event ev;
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
                if (err != 0) {
                    errors[classify(err)]++;
                    end_conn(c);
                    finished++;
                    continue;
                }
                c->connected = 1;
                /* PAYLOAD bytes fit the empty send buffer of a fresh socket in one call. */
                sent = send(c->fd, pattern + c->off, (size_t)payload, MSG_NOSIGNAL);
                if (sent != payload) {
                    errors[sent < 0 ? classify(errno) : E_OTHER]++;
                    end_conn(c);
                    finished++;
                    continue;
                }
                ev.events = EPOLLIN;
                ev.data.ptr = c;
                epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
                continue;
            }
            for (;;) {
                ssize_t r = recv(c->fd, buf, (size_t)(payload - c->got), 0);
                if (r > 0) {
                    if (memcmp(buf, pattern + c->off + c->got, (size_t)r) != 0) {
                        errors[E_WRONG]++;
                        end_conn(c);
                        finished++;
                        break;
                    }
                    c->got += r;
                    if (c->got == payload) {
                        lat[ok++] = now() - c->started;
                        verified += payload;
                        end_conn(c);
                        finished++;
                        break;
                    }
                    continue;
                }
                if (r < 0 && (errno == EAGAIN || errno == EINTR))
                    break;
                errors[r == 0 ? E_SHORT : classify(errno)]++;
                end_conn(c);
                finished++;
                break;
            }
        }
        t = now();
        if (t - last_check >= 0.5) { /* time out the connections silent too long */
            last_check = t;
            for (i = 0; i < inflight; i++) {
                if (conns[i].fd >= 0 && t - conns[i].started > TIMEOUT_S) {
                    errors[E_TIMEOUT]++;
                    end_conn(&conns[i]);
                    finished++;
                }
            }
        }
    }
    elapsed = now() - t0;
    return report("rate", elapsed, ok, (double)verified / elapsed / 1048576.0, lat, ok,
                  verified);
}

/* ----- stream mode ----------------------------------------------------------------------- */

struct result {
    double seconds;
    unsigned long long counted;
    unsigned long long verified;
    long errors[E_KINDS];
};

struct stream {
    int fd;
    int writing;              /* 0 once we half-closed to finish */
    unsigned long long sent;
    unsigned long long recvd;
};

static void stream_worker(long nstreams, double seconds, double warmup, struct result *res)
{
    struct stream *st = calloc((size_t)nstreams, sizeof *st);
    unsigned char *buf = malloc(CHUNK);
    struct epoll_event events[MAX_EVENTS];
    unsigned long long counted = 0, total_verified = 0;
    double t0, measure_from, measure_to, t, drain_deadline;
    long i, open_streams = nstreams;
    int measuring = 0, finishing = 0;

    if (st == NULL || buf == NULL) {
        fprintf(stderr, "echo_load: out of memory\n");
        exit(2);
    }
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) {
        perror("epoll_create1");
        exit(1);
    }
    memset(res, 0, sizeof *res);
    for (i = 0; i < nstreams; i++) {
        struct epoll_event ev;
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&target, sizeof target) < 0) {
            errors[classify(errno)]++;
            fprintf(stderr, "echo_load: connect: %s\n", strerror(errno));
            memcpy(res->errors, errors, sizeof errors);
            return;
        }
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        st[i].fd = fd;
        st[i].writing = 1;
        ev.events = EPOLLIN | EPOLLOUT;
        ev.data.ptr = &st[i];
        epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
    }
    t0 = now();
    measure_from = t0 + warmup;
    measure_to = measure_from + seconds;
    drain_deadline = measure_to + TIMEOUT_S;
    while (open_streams > 0) {
        int n = epoll_wait(epfd, events, MAX_EVENTS, 100), k;
        t = now();
        if (!measuring && t >= measure_from) {
            measuring = 1;
            measure_from = t;
            measure_to = t + seconds;
            drain_deadline = measure_to + TIMEOUT_S;
            counted = 0;
        }
        if (measuring && !finishing && t >= measure_to) {
            /* Stop writing: half-close, then read the rest of the echo until EOF. */
            finishing = 1;
            measure_to = t;
            for (i = 0; i < nstreams; i++) {
                struct epoll_event ev;
                if (st[i].fd < 0)
                    continue;
                st[i].writing = 0;
                shutdown(st[i].fd, SHUT_WR);
                ev.events = EPOLLIN;
                ev.data.ptr = &st[i];
                epoll_ctl(epfd, EPOLL_CTL_MOD, st[i].fd, &ev);
            }
        }
        if (finishing && t > drain_deadline) {
            for (i = 0; i < nstreams; i++) {
                if (st[i].fd >= 0) {
                    errors[E_TIMEOUT]++;
                    close(st[i].fd);
                    st[i].fd = -1;
                    open_streams--;
                }
            }
            break;
        }
        if (n < 0 && errno != EINTR) {
            perror("epoll_wait");
            exit(1);
        }
        for (k = 0; k < n; k++) {
            struct stream *s = events[k].data.ptr;
            if (s->fd < 0)
                continue;
            if (s->writing && (events[k].events & EPOLLOUT)) {
                unsigned off = (unsigned)(s->sent % PATLEN);
                ssize_t w = send(s->fd, pattern + off, CHUNK, MSG_NOSIGNAL);
                if (w > 0)
                    s->sent += (unsigned long long)w;
                else if (w < 0 && errno != EAGAIN && errno != EINTR) {
                    errors[classify(errno)]++;
                    close(s->fd);
                    s->fd = -1;
                    open_streams--;
                    continue;
                }
            }
            if (events[k].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                ssize_t r = recv(s->fd, buf, CHUNK, 0);
                if (r > 0) {
                    unsigned off = (unsigned)(s->recvd % PATLEN);
                    if (memcmp(buf, pattern + off, (size_t)r) != 0) {
                        errors[E_WRONG]++;
                        close(s->fd);
                        s->fd = -1;
                        open_streams--;
                        continue;
                    }
                    s->recvd += (unsigned long long)r;
                    total_verified += (unsigned long long)r;
                    if (measuring && !finishing)
                        counted += (unsigned long long)r;
                } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
                    if (r == 0 && s->recvd != s->sent)
                        errors[E_SHORT]++;
                    else if (r < 0)
                        errors[classify(errno)]++;
                    close(s->fd);
                    s->fd = -1;
                    open_streams--;
                }
            }
        }
    }
    res->seconds = measure_to - measure_from;
    res->counted = counted;
    res->verified = total_verified;
    memcpy(res->errors, errors, sizeof errors);
}

/* Split the streams over WORKERS processes (one thread of copying and comparing cannot keep
 * up with several streams), each sending its figures back through a pipe. */
static int run_stream(long nstreams, double seconds, double warmup, long nworkers)
{
    struct result total, one;
    long w, bad = 0;
    int fds[2], k;
    double mib = 0.0;

    if (nworkers > nstreams)
        nworkers = nstreams;
    if (pipe(fds) < 0) {
        perror("pipe");
        return 1;
    }
    for (w = 0; w < nworkers; w++) {
        long share = nstreams / nworkers + (w < nstreams % nworkers ? 1 : 0);
        pid_t pid = fork();
        if (pid < 0) {
            perror("fork");
            return 1;
        }
        if (pid == 0) {
            close(fds[0]);
            stream_worker(share, seconds, warmup, &one);
            if (write(fds[1], &one, sizeof one) != (ssize_t)sizeof one)
                _exit(1);
            _exit(0);
        }
    }
    close(fds[1]);
    memset(&total, 0, sizeof total);
    for (w = 0; w < nworkers; w++) {
        if (read(fds[0], &one, sizeof one) != (ssize_t)sizeof one) {
            fprintf(stderr, "echo_load: a stream worker died\n");
            errors[E_OTHER]++;
            continue;
        }
        if (one.seconds > total.seconds)
            total.seconds = one.seconds;
        if (one.seconds > 0)
            mib += (double)one.counted / one.seconds / 1048576.0;
        total.verified += one.verified;
        for (k = 0; k < E_KINDS; k++)
            errors[k] += one.errors[k];
    }
    while (wait(NULL) > 0) {
    }
    for (k = 0; k < E_KINDS; k++)
        bad += errors[k];
    return report("stream", total.seconds, bad < nstreams ? nstreams - bad : 0, mib, NULL, 0,
                  (long long)total.verified);
}

int main(int argc, char **argv)
{
    unsigned i;
    signal(SIGPIPE, SIG_IGN);
    srand(7);
    for (i = 0; i < sizeof pattern; i++)
        pattern[i] = (unsigned char)(i < PATLEN ? rand() >> 7 : pattern[i - PATLEN]);
    if (argc < 3)
        usage();
    parse_target(argv[2]);
    if (strcmp(argv[1], "rate") == 0 && argc == 6)
        return run_rate(positive(argv[3]), positive(argv[4]), positive(argv[5]));
    if (strcmp(argv[1], "stream") == 0 && argc >= 5 && argc <= 7) {
        long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
        return run_stream(positive(argv[3]), atof(argv[4]), argc >= 6 ? atof(argv[5]) : 0.5,
                          argc == 7 ? positive(argv[6]) : (ncpu > 0 ? ncpu : 1));
    }
    usage();
    return 2;
}
