/* loadgen.c: the TCP workloads of closewait's benchmarks (built by bench/run).
 *
 *   loadgen server --addr A --port P --nports N [--mode accept-close]
 *       Listen on ports P .. P+2N-1 of A: the first N serve the client-first
 *       protocol, the next N the server-first one (below). Prints "ready"
 *       once listening, then serves until stdin reaches EOF or SIGTERM.
 *       With --mode accept-close (for `leak`), every connection is accepted
 *       and closed at once, on ports P .. P+N-1.
 *   loadgen client --addr A --port P --nports N --conc C
 *       Reads commands on stdin, one per line, "MODE WARMUP DURATION"
 *       (e.g. "server-first 0.5 3"): keeps C connections in flight for
 *       WARMUP+DURATION seconds and prints one JSON line with the
 *       transactions completed after the warm-up. Exits at stdin EOF. Being
 *       long-lived, client and server exist before a tracer is started, so a
 *       tracer can be pointed at either pid (closewait watch --pid).
 *   loadgen leak --addr A --port P --nports N --count K   ('c' on stdin: close them all)
 *       Open K connections to an accept-close server, wait until every one
 *       has received the server's FIN, print "ready K K_FIN", then hold them
 *       (sockets in CLOSE_WAIT, never closed) until stdin reaches EOF.
 *
 * The protocols (a 64-byte request, a 256-byte response, one transaction
 * per connection):
 *   client-first  the client closes after the response; the server reads
 *                 the EOF, then closes: server sockets pass through CLOSE_WAIT.
 *   server-first  the server closes right after the response; the client
 *                 reads response and EOF, then closes: client sockets pass
 *                 through CLOSE_WAIT.
 *
 * Why this is fast enough to make tracing cost visible: each side is one
 * thread in a level-triggered epoll loop with no parsing, no allocation
 * per connection and no logging; a transaction is about ten syscalls per
 * side (socket, connect, write, read, close; accept, read, write, read,
 * close) plus epoll bookkeeping. Nearly all the CPU therefore goes to the
 * kernel's TCP and loopback paths, which is exactly where a tracer on
 * sock:inet_sock_set_state adds its cost (bench/run prints the generator's
 * user/sys split as evidence). Two processes keep both cores busy, so any
 * CPU a tracer takes, in the kernel or in its own process, is taken from
 * the workload and shows up as lost throughput.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define REQ_BYTES 64   /* "small request" */
#define RESP_BYTES 256 /* "small response" */
#define MAX_EVENTS 256
#define MAX_PORTS 64

enum mode { CLIENT_FIRST, SERVER_FIRST, ACCEPT_CLOSE };

struct opts {
    const char *addr;
    int port, nports, conc, count;
    enum mode mode; /* the server's: ACCEPT_CLOSE, or per port (CLIENT_FIRST) */
};

static volatile sig_atomic_t stop_flag;
static void on_signal(int sig) { (void)sig; stop_flag = 1; }

static void die(const char *what)
{
    fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
    exit(1);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static struct sockaddr_in endpoint(const struct opts *o, int i)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_port = htons(o->port + i % o->nports);
    if (inet_pton(AF_INET, o->addr, &sa.sin_addr) != 1) {
        fprintf(stderr, "loadgen: bad IPv4 address %s\n", o->addr);
        exit(2);
    }
    return sa;
}

static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* ---- server ------------------------------------------------------------- */

/* Per-fd state, indexed by fd (fds are small integers). */
struct conn {
    int got;        /* request bytes received */
    int responded;  /* response sent; waiting for the client's EOF (client-first) */
    enum mode mode; /* from the port the connection was accepted on */
};

static int run_server(const struct opts *o)
{
    static char buf[4096], resp[RESP_BYTES];
    int ep = epoll_create1(0), nlisten = o->mode == ACCEPT_CLOSE ? o->nports : 2 * o->nports;
    int listeners[2 * MAX_PORTS];
    if (ep < 0)
        die("epoll_create1");
    memset(resp, 'r', sizeof(resp));
    raise_nofile();
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    struct conn *conns = calloc(rl.rlim_cur, sizeof(*conns));

    struct opts all = *o;
    all.nports = nlisten;
    for (int i = 0; i < nlisten; i++) {
        struct sockaddr_in sa = endpoint(&all, i);
        int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        if (fd < 0)
            die("socket");
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
            die("bind");
        if (listen(fd, 65535) < 0) /* capped by net.core.somaxconn */
            die("listen");
        /* data.u64 = (index + 1) << 32 marks a listener; a plain fd otherwise. */
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint64_t)(i + 1) << 32 | fd};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
        listeners[i] = fd;
    }
    /* stdin EOF (the harness went away) stops the server too. */
    struct epoll_event sev = {.events = EPOLLIN, .data.u64 = 0};
    epoll_ctl(ep, EPOLL_CTL_ADD, 0, &sev);
    printf("ready\n");
    fflush(stdout);

    struct epoll_event evs[MAX_EVENTS];
    while (!stop_flag) {
        int n = epoll_wait(ep, evs, MAX_EVENTS, 200);
        for (int k = 0; k < n; k++) {
            int fd = (int)(evs[k].data.u64 & 0xffffffff);
            int listener = (int)(evs[k].data.u64 >> 32);
            if (fd == 0) {
                if (read(0, buf, sizeof(buf)) <= 0)
                    stop_flag = 1;
                continue;
            }
            if (listener) {
                enum mode m = o->mode == ACCEPT_CLOSE ? ACCEPT_CLOSE
                              : listener > o->nports  ? SERVER_FIRST
                                                      : CLIENT_FIRST;
                int c;
                while ((c = accept4(listeners[listener - 1], NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    if (m == ACCEPT_CLOSE || c >= (int)rl.rlim_cur) {
                        close(c);
                        continue;
                    }
                    conns[c] = (struct conn){.mode = m};
                    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint64_t)c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
                }
                continue;
            }
            struct conn *cn = &conns[fd];
            for (;;) {
                ssize_t r = read(fd, buf, sizeof(buf));
                if (r > 0) {
                    cn->got += r;
                    if (!cn->responded && cn->got >= REQ_BYTES) {
                        if (write(fd, resp, sizeof(resp)) != sizeof(resp)) {
                            close(fd); /* a short write on loopback: give up */
                            break;
                        }
                        cn->responded = 1;
                        if (cn->mode == SERVER_FIRST) {
                            close(fd);
                            break;
                        }
                    }
                    continue;
                }
                if (r == 0 || errno != EAGAIN)
                    close(fd); /* the client's EOF (client-first), or an error */
                break;
            }
        }
    }
    return 0;
}

/* ---- client ------------------------------------------------------------- */

enum cstate { CONNECTING, READING };

struct cconn {
    int fd;
    int got;
    enum cstate st;
};

static long long completed, errors_;

/* Open a connection to the next port of this mode's block and send the
 * request; -1 if no port could be had after many tries. */
static int open_conn(int ep, const struct opts *o, enum mode m, struct cconn *c, int *rr)
{
    static const char req[REQ_BYTES] = {'q'};
    for (int attempt = 0; attempt < 1000; attempt++) {
        int i = (*rr)++ % o->nports + (m == SERVER_FIRST ? o->nports : 0);
        struct opts all = *o;
        all.nports = 2 * o->nports;
        struct sockaddr_in sa = endpoint(&all, i);
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        if (fd < 0)
            die("socket");
        int r = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
        if (r < 0 && errno != EINPROGRESS) {
            errors_++; /* EADDRNOTAVAIL (ports exhausted), ECONNREFUSED... */
            close(fd);
            continue;
        }
        c->fd = fd;
        c->got = 0;
        /* On loopback the handshake usually completes inside connect():
         * try the request at once and skip one epoll round trip. */
        struct epoll_event ev = {.data.ptr = c};
        if (write(fd, req, sizeof(req)) == sizeof(req)) {
            c->st = READING;
            ev.events = EPOLLIN;
        } else {
            c->st = CONNECTING;
            ev.events = EPOLLOUT;
        }
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
        return 0;
    }
    return -1;
}

/* One measured run: C connections in flight, each replaced as soon as its
 * transaction completes. */
static void client_run(const struct opts *o, enum mode m, double warmup, double duration)
{
    static char buf[4096];
    static const char req[REQ_BYTES] = {'q'};
    int ep = epoll_create1(0), rr = 0;
    if (ep < 0)
        die("epoll_create1");
    struct cconn *cs = calloc(o->conc, sizeof(*cs));
    completed = errors_ = 0;
    for (int i = 0; i < o->conc; i++)
        if (open_conn(ep, o, m, &cs[i], &rr) < 0)
            die("connect");

    double t0 = now_s(), t_measure = t0 + warmup, t_end = t_measure + duration;
    long long at_measure = -1;
    double t_real_measure = t_measure;
    struct epoll_event evs[MAX_EVENTS];
    while (!stop_flag) {
        double t = now_s();
        if (at_measure < 0 && t >= t_measure) {
            at_measure = completed;
            t_real_measure = t;
        }
        if (t >= t_end)
            break;
        int n = epoll_wait(ep, evs, MAX_EVENTS, 100);
        for (int k = 0; k < n; k++) {
            struct cconn *c = evs[k].data.ptr;
            if (c->st == CONNECTING) {
                int err = 0;
                socklen_t len = sizeof(err);
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
                if (err || write(c->fd, req, sizeof(req)) != sizeof(req)) {
                    errors_++;
                    close(c->fd);
                    if (open_conn(ep, o, m, c, &rr) < 0)
                        die("connect");
                    continue;
                }
                c->st = READING;
                struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                continue;
            }
            int finished = 0, failed = 0;
            for (;;) {
                ssize_t r = read(c->fd, buf, sizeof(buf));
                if (r > 0) {
                    c->got += r;
                    if (c->got >= RESP_BYTES && m == CLIENT_FIRST) {
                        finished = 1;
                        break;
                    }
                    continue;
                }
                if (r == 0) { /* the server's FIN: this socket is in CLOSE_WAIT now */
                    finished = c->got >= RESP_BYTES;
                    failed = !finished;
                } else if (errno != EAGAIN) {
                    failed = 1;
                }
                break;
            }
            if (finished || failed) {
                close(c->fd);
                if (finished)
                    completed++;
                else
                    errors_++;
                if (open_conn(ep, o, m, c, &rr) < 0)
                    die("connect");
            }
        }
    }
    double t_stop = now_s();
    for (int i = 0; i < o->conc; i++)
        close(cs[i].fd);
    close(ep);
    free(cs);
    if (at_measure < 0) { /* stopped during the warm-up */
        at_measure = 0;
        t_real_measure = t0;
    }
    double secs = t_stop - t_real_measure;
    long long tx = completed - at_measure;
    printf("{\"mode\": \"%s\", \"transactions\": %lld, \"seconds\": %.6f, \"tps\": %.1f, "
           "\"errors\": %lld, \"concurrency\": %d, \"all_transactions\": %lld}\n",
           m == CLIENT_FIRST ? "client-first" : "server-first", tx, secs,
           secs > 0 ? tx / secs : 0.0, errors_, o->conc, completed);
    fflush(stdout);
}

static int run_client(const struct opts *o)
{
    char line[256], mode[32];
    double warmup, duration;
    printf("ready\n");
    fflush(stdout);
    while (!stop_flag && fgets(line, sizeof(line), stdin)) {
        if (sscanf(line, "%31s %lf %lf", mode, &warmup, &duration) != 3) {
            fprintf(stderr, "loadgen: bad command: %s", line);
            return 2;
        }
        if (strcmp(mode, "client-first") && strcmp(mode, "server-first")) {
            fprintf(stderr, "loadgen: bad mode: %s\n", mode);
            return 2;
        }
        client_run(o, strcmp(mode, "server-first") ? CLIENT_FIRST : SERVER_FIRST, warmup,
                   duration);
    }
    return 0;
}

/* ---- leak --------------------------------------------------------------- */

static int run_leak(const struct opts *o)
{
    raise_nofile();
    struct pollfd *pf = calloc(o->count, sizeof(*pf));
    int rr = 0;
    for (int i = 0; i < o->count; i++) {
        struct sockaddr_in sa = endpoint(o, rr++);
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0)
            die("socket (raise RLIMIT_NOFILE?)");
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
            die("connect");
        pf[i].fd = fd;
        pf[i].events = POLLRDHUP;
    }
    /* Wait for every FIN: poll() reports POLLRDHUP once the peer's FIN has
     * been received, i.e. once the socket is in CLOSE_WAIT. */
    int left = o->count;
    double deadline = now_s() + 60;
    while (left > 0 && now_s() < deadline && !stop_flag) {
        if (poll(pf, o->count, 200) < 0 && errno != EINTR)
            die("poll");
        for (int i = 0; i < o->count; i++) {
            if (pf[i].fd >= 0 && (pf[i].revents & (POLLRDHUP | POLLHUP | POLLIN))) {
                pf[i].fd = ~pf[i].fd; /* negative: poll ignores it from now on */
                left--;
            }
        }
    }
    printf("ready %d %d\n", o->count, o->count - left);
    fflush(stdout);
    /* 'c' on stdin: close() every socket, one syscall each, as a pool
     * shutdown would; EOF: exit, and exit() closes whatever is left. */
    char c;
    while (!stop_flag && read(0, &c, 1) > 0) {
        if (c != 'c')
            continue;
        int closed = 0;
        for (int i = 0; i < o->count; i++) {
            int fd = pf[i].fd < 0 ? ~pf[i].fd : pf[i].fd;
            if (fd >= 0 && close(fd) == 0)
                closed++;
            pf[i].fd = -1;
        }
        printf("closed %d\n", closed);
        fflush(stdout);
    }
    return 0;
}

/* ---- main --------------------------------------------------------------- */

static void usage(void)
{
    fprintf(stderr, "usage: loadgen server|client|leak [--addr A] [--port P] [--nports N]\n"
                    "       [--mode accept-close] [--conc C] [--count K]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    if (argc < 2)
        usage();
    struct opts o = {.addr = "127.0.0.1", .port = 20000, .nports = 1, .conc = 32,
                     .count = 100, .mode = CLIENT_FIRST};
    for (int i = 2; i < argc; i++) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v)
            usage();
        i++;
        if (!strcmp(k, "--addr"))
            o.addr = v;
        else if (!strcmp(k, "--port"))
            o.port = atoi(v);
        else if (!strcmp(k, "--nports"))
            o.nports = atoi(v);
        else if (!strcmp(k, "--conc"))
            o.conc = atoi(v);
        else if (!strcmp(k, "--count"))
            o.count = atoi(v);
        else if (!strcmp(k, "--mode") && !strcmp(v, "accept-close"))
            o.mode = ACCEPT_CLOSE;
        else
            usage();
    }
    if (o.nports < 1 || o.nports > MAX_PORTS || o.conc < 1 || o.count < 1)
        usage();
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    if (!strcmp(argv[1], "server"))
        return run_server(&o);
    if (!strcmp(argv[1], "client"))
        return run_client(&o);
    if (!strcmp(argv[1], "leak"))
        return run_leak(&o);
    usage();
    return 2;
}
