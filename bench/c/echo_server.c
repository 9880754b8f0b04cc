/*
 * bench/c/echo_server.c - the tutorial's fork-per-connection echo server, bugs fixed.
 *
 * The design of the classic tutorial (parent accepts, one fork()ed child per client), with the
 * bugs that tutorial carries removed:
 *   - the child echoes exactly the bytes it received (n, not a fixed buffer size), and sends
 *     them all (a send loop: write() may send fewer bytes than asked);
 *   - the SIGCHLD handler is installed once, before the loop, and reaps with a
 *     waitpid(-1, WNOHANG) loop (one signal may stand for many exited children);
 *   - SO_REUSEADDR is set before bind(), and every call that can fail is checked;
 *   - accept() interrupted by SIGCHLD (EINTR) is retried, not treated as fatal.
 *
 * Usage: echo_server [PORT [BACKLOG [HOST]]]   (PORT 0 picks a free port)
 * Prints "listening on HOST:PORT" on stdout once ready. Stops on SIGTERM/SIGINT.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define BUFSIZE 65536

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static void reap_children(int signum)
{
    int saved = errno; /* waitpid() may change errno under the interrupted code */
    (void)signum;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
    errno = saved;
}

static int send_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

static int echo(int fd)
{
    static char buf[BUFSIZE];
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n == 0)
            return 0;
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return 1;
        }
        if (send_all(fd, buf, (size_t)n) < 0)
            return 1;
    }
}

int main(int argc, char **argv)
{
    int port = argc > 1 ? atoi(argv[1]) : 7007;
    int backlog = argc > 2 ? atoi(argv[2]) : 128;
    const char *host = argc > 3 ? argv[3] : "127.0.0.1";
    struct sockaddr_in addr;
    socklen_t addrlen = sizeof addr;
    struct sigaction sa;
    int one = 1;
    int lfd;

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = reap_children;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
    if (sigaction(SIGCHLD, &sa, NULL) < 0)
        die("sigaction");

    lfd = socket(AF_INET, SOCK_STREAM, 0);
    if (lfd < 0)
        die("socket");
    if (setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0)
        die("setsockopt SO_REUSEADDR");
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)port);
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "bad IPv4 address: %s\n", host);
        return 2;
    }
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0)
        die("bind");
    if (listen(lfd, backlog) < 0)
        die("listen");
    if (getsockname(lfd, (struct sockaddr *)&addr, &addrlen) < 0)
        die("getsockname");
    printf("listening on %s:%d\n", host, ntohs(addr.sin_port));
    fflush(stdout);

    for (;;) {
        pid_t pid;
        int cfd = accept(lfd, NULL, NULL);
        if (cfd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                perror("accept");
                usleep(100000);
                continue;
            }
            die("accept");
        }
        pid = fork();
        if (pid < 0) {
            perror("fork");
            close(cfd);
            usleep(100000);
            continue;
        }
        if (pid == 0) {
            int status;
            close(lfd);
            signal(SIGCHLD, SIG_DFL);
            status = echo(cfd);
            close(cfd);
            _exit(status);
        }
        close(cfd);
    }
}
