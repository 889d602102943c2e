/* closewait.bpf.c: the kernel half of closewait (compiled by BCC at start-up).
 *
 * What it answers: which TCP sockets received the peer's FIN (entered
 * CLOSE_WAIT) and when, who opened them, and, for the few sockets user space
 * has judged leaks, which thread and file descriptor finally let them go.
 *
 * Rules this file keeps:
 *  - It reads tracepoint arguments and BPF helpers, never a kernel struct
 *    through the headers: BCC may compile it against headers of another
 *    kernel version, and tracepoint layouts are read from tracefs at load
 *    time, so this keeps it correct on any kernel that has the tracepoints
 *    (>= 4.16). The one exception, the socket's network namespace, is read
 *    with bpf_probe_read_kernel() at offsets taken from the running
 *    kernel's own BTF at start-up (tracer/kernel/btf.py), never from the
 *    headers; without BTF it is 0 (unknown) and user space says so.
 *  - Healthy connections cost a few map operations and nothing else: no
 *    event reaches user space unless user space asked for that socket.
 *    User space polls the closewait map instead (batch lookups).
 *  - Every loss is counted in `stats` (see closewait.h); each counter is
 *    printed in the reports' totals (tracer/report/) once it is non-zero.
 *
 * Build-time switches (-D from tracer/kernel/config.py, ProbeConfig.cflags):
 *  CW_MAX_SOCKS (closewait and watched), CW_MAX_CONNS, CW_MAX_THREADS, CW_MAX_PREEXIST, CW_MAX_TARGETS
 *  CW_RINGBUF_PAGES   events buffer size; CW_USE_RINGBUF picks the BPF ring
 *                     buffer (>= 5.8) over the per-CPU perf buffer
 *  CW_FILTER_PIDS     record fd drops only for tgids in `targets`
 *  CW_MAX_LAT         latency histogram buckets (per process, port, slot)
 *  CW_MAX_FDS         watched (pid, fd) pairs: dups and forks multiply them
 *  CW_OFF_SKC_NET, CW_OFF_NET_INUM  BTF offsets of sock.__sk_common.skc_net.net
 *                     and net.ns.inum (absent: netns unknown, 0)
 *  CW_MAX_PEERS       (process, peer) pairs whose connects are counted
 *  CW_MAX_LISTEN      listening ports; CW_EPHEMERAL_LO/HI the host's ephemeral
 *                     port range (net.ipv4.ip_local_port_range)
 */
#include <uapi/linux/ptrace.h>
#include "closewait.h"

/* Address and ports of a socket, as the tracepoint gives them. IPv4 keeps its
 * 4 bytes at the start of saddr/daddr, the rest zero. 40 bytes and no
 * implicit padding, so it can be a hash key. */
struct cw_tuple {
    u16 family;
    u16 sport; /* host byte order (the tracepoint converts) */
    u16 dport;
    u16 pad;
    u8 saddr[16];
    u8 daddr[16];
};

/* Who opened a connection, recorded at its first state change. */
struct cw_creator {
    u64 opened_ns; /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
    u32 tgid;      /* 0 for accepted sockets: no owner is known then */
    u32 tid;
    char comm[16]; /* thread name, e.g. "pool-1-thread-3" */
    u32 how;       /* CW_OPENED_* */
    u32 pad;
};

/* A socket in CLOSE_WAIT. */
struct cw_sock {
    u64 fin_ns; /* when the FIN arrived */
    struct cw_tuple t;
    struct cw_creator c; /* how == 0: opened before closewait attached */
    u32 netns;           /* inode of its network namespace; 0: unknown (no BTF) */
    u32 pad;
};

/* A tuple is unique only within a network namespace: the key of sockets
 * known by tuple (those in CLOSE_WAIT before attach). 48 bytes, no
 * implicit padding. */
struct cw_ns_tuple {
    u32 netns; /* 0 when the kernel's BTF is not available */
    u32 pad;
    struct cw_tuple t;
};

/* The last fd-dropping syscall a thread entered. */
struct cw_fd_drop {
    u64 ts;
    u32 kind; /* CW_DROP_* */
    u32 fd_lo;
    u32 fd_hi; /* inclusive; == fd_lo for close() */
    u32 pad;
};

/* Sent to user space when a watched socket leaves CLOSE_WAIT
 * (CW_EV_LEFT_CLOSE_WAIT), or when a target drops a watched fd
 * (CW_EV_FD_DROP: skaddr and states are zero).
 * Records are 48 bytes (56 in the ring buffer) and carry the namespace and
 * tuple only for sockets that were in CLOSE_WAIT before attach
 * (CW_SRC_PREEXIST), which user space knows by them: the buffer is sized for
 * every watched socket to end at once, so every byte here costs max_sockets
 * bytes there. */
struct cw_event {
    u64 ts;
    u64 skaddr;
    u32 kind;
    u32 tgid; /* the current task: the closer in process context */
    u32 tid;
    u32 drop_kind; /* CW_DROP_NONE: no recent fd drop in this thread */
    u32 fd_lo;
    u32 fd_hi;
    u16 oldstate;
    u16 newstate;
    u32 source; /* CW_SRC_* */
    struct cw_ns_tuple t; /* last: sent only with CW_SRC_PREEXIST */
};
#define CW_EVENT_SHORT offsetof(struct cw_event, t)

/* Sockets in CLOSE_WAIT, keyed by the socket's kernel address.
 * A plain hash, deliberately not LRU: an LRU would evict the entries touched
 * least recently, which are exactly the oldest CLOSE_WAIT sockets, the leaks
 * this tool exists to find. Entries cannot go stale: tcp_set_state() fires
 * the tracepoint on every exit from CLOSE_WAIT, and we delete there. When the
 * map is full a new FIN is counted in CW_STAT_CW_FULL and that socket is
 * still found by user space through sock_diag, with an estimated age. */
BPF_TABLE("hash", u64, struct cw_sock, closewait, CW_MAX_SOCKS);

/* Creators of connect()ed connections, keyed by socket address. LRU because it is a
 * cache of metadata: a connection that never reaches CLOSE through
 * tcp_set_state() would otherwise hold its slot forever, and a host with more
 * live connections than slots should keep recording new connections. The
 * entry moves into `closewait` at the FIN, so leaked sockets do not occupy it.
 * Evictions are computed by user space from CW_STAT_CONN_* and the map size. */
BPF_TABLE("lru_hash", u64, struct cw_creator, conns, CW_MAX_CONNS);

/* Local ports that have a listening socket, in any namespace: port ->
 * listeners. Accepted sockets are not recorded at the handshake (that was an
 * LRU update and delete per accepted connection, about 15% of this program's
 * time per hit under churn: bench section 1b); a socket that gets its FIN
 * with no creator recorded is taken as accepted when its local port listens,
 * or lies outside the ephemeral range (a listener this map never saw open,
 * opened before attach in another namespace). Filled from /proc/net/tcp* at
 * load (tracer/kernel/probe.py), kept up to date by the LISTEN transitions. */
BPF_HASH(listening, u16, u32, CW_MAX_LISTEN);

/* Last fd drop per thread (key: tid). Not deleted at syscall exit on purpose:
 * close_range() and dup2() release the file through task_work when returning
 * to user space, after sys_exit (measured on 6.18; close() itself releases
 * synchronously since 6.7, deferred before). It is consumed by the state
 * change it explains; otherwise overwritten by the thread's next drop. LRU so
 * that entries of exited threads recycle themselves. */
BPF_TABLE("lru_hash", u32, struct cw_fd_drop, fd_drops, CW_MAX_THREADS);

/* Sockets user space judged leaks: address -> the fin_ns of the closewait
 * entry it judged. User space cannot update a map entry conditionally, so it
 * does not flag `closewait` entries in place: if the socket left CLOSE_WAIT
 * and its memory was reused by a new socket in between, a flag written there
 * would mark the wrong connection. The fin_ns here must match instead. */
BPF_HASH(watched, u64, u64, CW_MAX_SOCKS);

/* Sockets that were in CLOSE_WAIT before attach and that user space judged
 * leaks. Their address is unknown (sock_diag does not expose it), so they are
 * matched by namespace and tuple, and only on the rare path of a CLOSE_WAIT
 * exit that is not in `closewait`. */
BPF_HASH(preexist, struct cw_ns_tuple, u8, CW_MAX_PREEXIST);

/* With CW_FILTER_PIDS: tgid -> CW_TARGET (fd drops are recorded) or
 * CW_ANCESTOR (connections it opens are tracked, as a child may inherit them). */
BPF_HASH(targets, u32, u8, CW_MAX_TARGETS);

/* (tgid, fd) pairs that hold a leaked socket, marked by user space: a
 * close()/dup2() on one of them is reported even when the socket survives it
 * (another fd or a forked child still holds it), which no state change
 * would show. Only marked pairs cost an event. */
struct cw_fd_key {
    u32 tgid;
    u32 fd;
};
BPF_HASH(watched_fds, struct cw_fd_key, u64, CW_MAX_FDS);
/* tgid -> number of its watched fds, so close_range() needs one lookup. */
BPF_HASH(watched_pids, u32, u32, CW_MAX_TARGETS);

/* FIN-to-close latency of every socket a target closes, log2 microsecond
 * slots, per process and per service port: the picture of how a healthy
 * process closes its connections, next to the ones it never closes. */
struct cw_lat_key {
    u32 tgid;
    u16 port;
    u8 side; /* CW_SIDE_* */
    u8 slot; /* log2(microseconds) */
};
BPF_HASH(close_latency, struct cw_lat_key, u64, CW_MAX_LAT);

BPF_PERCPU_ARRAY(stats, u64, CW_STAT_MAX);

/* The last socket this CPU saw receive an RST (tcp:tcp_receive_reset).
 * tcp_reset() fires that tracepoint, then moves the socket to CLOSE in the
 * same call on the same CPU (softirq, not preemptible), so a CLOSE_WAIT ->
 * CLOSE transition of the socket recorded here is the peer's RST, and any
 * other one is our own tcp_close() with unread data (an RST we send), in
 * the closing thread. A per-CPU slot, not a map keyed by socket: the two
 * are never more than a few instructions apart. */
struct cw_reset {
    u64 sk;
    u64 ts;
};
BPF_PERCPU_ARRAY(last_reset, struct cw_reset, 1);

/* Pool diagnosis (tracer/engine/pools.py): connects per (process, peer),
 * counted only for the pairs user space inserted (a process holding leaked
 * connections to that peer: a "suspect"). An exhausted pool opens no new
 * connection to its peer; this says since when none was opened. The healthy
 * path pays one array lookup while no suspect exists, one hash lookup
 * otherwise: keys are never created here. */
struct cw_peer_key {
    u32 tgid;
    u16 family;
    u16 dport; /* host byte order, as the tracepoint gives it */
    u8 daddr[16];
};
struct cw_peer_count {
    u64 connects; /* connect()s since user space inserted the key */
    u64 last_ns;  /* the latest one (bpf_ktime_get_ns), 0: none yet */
};
BPF_HASH(peer_connects, struct cw_peer_key, struct cw_peer_count, CW_MAX_PEERS);
/* [0] != 0 while peer_connects holds a key: one lookup gates the counting. */
BPF_ARRAY(peer_armed, u32, 1);

/* Never written: it exists so that BCC hands Python a ctypes class for
 * struct cw_event (BCC derives classes for map leaves, nested structs
 * included, but not for nested structs in ring buffer records). */
BPF_ARRAY(event_layout, struct cw_event, 1);

#ifdef CW_USE_RINGBUF
BPF_RINGBUF_OUTPUT(events, CW_RINGBUF_PAGES);
#else
BPF_PERF_OUTPUT(events);
#endif

static __always_inline void stat_add(u32 idx)
{
    u64 *v = stats.lookup(&idx);
    if (v)
        (*v)++;
}

/* BCC defines the tracepoint's argument struct at TRACEPOINT_PROBE, after
 * the helpers, so reading arguments is a macro expanded in the probe body. */
#define READ_TUPLE(args, t)                                        \
    do {                                                           \
        __builtin_memset(&(t), 0, sizeof(t));                      \
        (t).family = (args)->family;                               \
        (t).sport = (args)->sport;                                 \
        (t).dport = (args)->dport;                                 \
        if ((args)->family == CW_AF_INET) {                        \
            __builtin_memcpy((t).saddr, (args)->saddr, 4);         \
            __builtin_memcpy((t).daddr, (args)->daddr, 4);         \
        } else {                                                   \
            __builtin_memcpy((t).saddr, (args)->saddr_v6, 16);     \
            __builtin_memcpy((t).daddr, (args)->daddr_v6, 16);     \
        }                                                          \
    } while (0)

/* The socket's network namespace inode (what /proc/PID/ns/net and sock_diag
 * name), read at BTF-derived offsets; 0 without them. Two probe reads, on
 * the FIN and on the rare pre-existing path only (about 70 ns here). */
static __always_inline u32 sock_netns(u64 sk)
{
    u32 inum = 0;
#ifdef CW_OFF_SKC_NET
    u64 net = 0;
    bpf_probe_read_kernel(&net, sizeof(net), (void *)(sk + CW_OFF_SKC_NET));
    if (net)
        bpf_probe_read_kernel(&inum, sizeof(inum), (void *)(net + CW_OFF_NET_INUM));
#endif
    return inum;
}

static __always_inline void remove_creator(u64 sk)
{
    if (conns.delete(&sk) == 0)
        stat_add(CW_STAT_CONN_REMOVED);
}

static __always_inline void record_creator(u64 sk, u32 how)
{
    struct cw_creator c = {};
    c.opened_ns = bpf_ktime_get_ns();
    c.how = how;
    if (how == CW_OPENED_CONNECT) {
        /* connect() runs this transition in the connecting thread itself,
         * so the current task is the creator. */
        u64 id = bpf_get_current_pid_tgid();
        c.tgid = id >> 32;
        c.tid = (u32)id;
        bpf_get_current_comm(&c.comm, sizeof(c.comm));
    }
    conns.update(&sk, &c);
    stat_add(CW_STAT_CONN_ADDED);
}

/* Pool diagnosis: is any (process, peer) pair being counted? */
static __always_inline int peer_connects_armed(void)
{
    u32 zero = 0;
    u32 *on = peer_armed.lookup(&zero);
    return on && *on;
}

/* Pool diagnosis: count a connect() of the current process to t's peer if
 * user space asked for that pair. CLOSE -> SYN_SENT runs in the connecting
 * thread, with the destination already set (the source port is not). */
static __always_inline void count_peer_connect(const struct cw_tuple *t)
{
    struct cw_peer_key k = {};
    k.tgid = bpf_get_current_pid_tgid() >> 32;
    k.family = t->family;
    k.dport = t->dport;
    __builtin_memcpy(k.daddr, t->daddr, 16);
    struct cw_peer_count *c = peer_connects.lookup(&k);
    if (c) {
        __sync_fetch_and_add(&c->connects, 1);
        c->last_ns = bpf_ktime_get_ns();
    }
}

/* Whether a local port is a server's: listening, or outside the ephemeral range. */
static __always_inline int is_service_port(u16 port)
{
    if (port < CW_EPHEMERAL_LO || port > CW_EPHEMERAL_HI)
        return 1;
    return listening.lookup(&port) != 0;
}

/* A socket starts (+1) or stops (-1) listening on port. */
static __always_inline void count_listener(u16 port, int up)
{
    u32 *n = listening.lookup(&port);
    if (up) {
        u32 one = 1;
        if (n)
            __sync_fetch_and_add(n, 1);
        else
            listening.update(&port, &one);
    } else if (n) {
        if (*n <= 1)
            listening.delete(&port);
        else
            __sync_fetch_and_add(n, -1);
    }
}

/* ESTABLISHED -> CLOSE_WAIT: tcp_fin() runs in softirq or in whichever task
 * processes the packet (on loopback, the peer that sent the FIN), so the
 * current task says nothing about the owner. Only time and tuple are kept. */
static __always_inline void enter_close_wait(u64 sk, const struct cw_tuple *t)
{
    struct cw_sock s = {};
    s.fin_ns = bpf_ktime_get_ns();
    s.t = *t;
    s.netns = sock_netns(sk);
    struct cw_creator *c = conns.lookup(&sk);
    if (c) {
        s.c = *c;
        remove_creator(sk);
    } else if (is_service_port(t->sport)) {
        s.c.how = CW_OPENED_ACCEPT; /* opened_ns 0: the handshake's time is unknown */
    }
    stat_add(CW_STAT_FIN);
#ifdef CW_FILTER_PIDS
    /* Watching given pids: a connection opened by a process that is neither
     * one of them nor an ancestor (which may pass it down, e.g. a supervisor
     * handing connections to workers) is not theirs. Skipping it keeps the
     * map for the targets on a host where another service leaks by the
     * hundred thousand. Accepted sockets and connections opened before
     * attach have no known opener: kept. */
    if (s.c.how == CW_OPENED_CONNECT && targets.lookup(&s.c.tgid) == 0) {
        stat_add(CW_STAT_FIN_FOREIGN);
        return;
    }
#endif
    if (closewait.insert(&sk, &s) != 0)
        stat_add(CW_STAT_CW_FULL);
}

static __always_inline int emit(void *ctx, struct cw_event *e)
{
    /* A constant size per branch: the verifier wants a known length. */
#ifdef CW_USE_RINGBUF
    int err = e->source == CW_SRC_PREEXIST ? events.ringbuf_output(e, sizeof(*e), 0)
                                           : events.ringbuf_output(e, CW_EVENT_SHORT, 0);
#else
    int err = e->source == CW_SRC_PREEXIST ? events.perf_submit(ctx, e, sizeof(*e))
                                           : events.perf_submit(ctx, e, CW_EVENT_SHORT);
#endif
    if (err != 0) {
        stat_add(CW_STAT_EVENTS_LOST);
        return -1;
    }
    stat_add(CW_STAT_EVENTS);
    return 0;
}

/* Who and when: the current task, as the event's author. (User space
 * reads the thread's name from /proc, which keeps records small.) */
static __always_inline void event_task(struct cw_event *e, u32 kind, u64 ts, u64 pid_tgid)
{
    e->kind = kind;
    e->ts = ts;
    e->tgid = pid_tgid >> 32;
    e->tid = (u32)pid_tgid;
}

static __always_inline int is_target(u32 tgid)
{
#ifdef CW_FILTER_PIDS
    u8 *kind = targets.lookup(&tgid);
    return kind && *kind == CW_TARGET;
#else
    return 1;
#endif
}

/* The thread's fd drop that explains a state change happening now, if any.
 * A single-fd drop is consumed; a range (close_range, exit) may release
 * many sockets and is left for the others, to expire by age. */
static __always_inline int take_fd_drop(u32 tid, u64 now, struct cw_fd_drop *out)
{
    struct cw_fd_drop *d = fd_drops.lookup(&tid);
    if (!d)
        return 0;
    if (now - d->ts >= CW_DROP_MAX_AGE_NS) {
        stat_add(CW_STAT_DROPS_STALE);
        fd_drops.delete(&tid);
        return 0;
    }
    *out = *d;
    if (out->fd_lo == out->fd_hi)
        fd_drops.delete(&tid);
    return 1;
}

static __always_inline void record_latency(u32 tgid, const struct cw_sock *s, u64 delta_ns)
{
    struct cw_lat_key k = {};
    k.tgid = tgid;
    if (s->c.how == CW_OPENED_CONNECT) {
        k.side = CW_SIDE_REMOTE;
        k.port = s->t.dport;
    } else if (s->c.how == CW_OPENED_ACCEPT) {
        k.side = CW_SIDE_LOCAL;
        k.port = s->t.sport;
    }
    k.slot = bpf_log2l(delta_ns / 1000);
    u64 zero = 0;
    u64 *count = close_latency.lookup_or_try_init(&k, &zero);
    if (count)
        __sync_fetch_and_add(count, 1);
    else
        stat_add(CW_STAT_LAT_FULL);
}

/* Whether this CLOSE_WAIT -> CLOSE is the peer's RST (see last_reset). */
static __always_inline int reset_received(u64 sk, u64 now)
{
    u32 zero = 0;
    struct cw_reset *r = last_reset.lookup(&zero);
    return r && r->sk == sk && now - r->ts < 1000000ULL;
}

/* Leaving CLOSE_WAIT. When the application drops the last reference to the
 * socket (close() and friends), tcp_close() moves it to LAST_ACK, or to CLOSE
 * with an RST when unread data was still queued, in the closing thread, right
 * after that thread's fd drop. An RST from the peer moves it to CLOSE in
 * softirq, where the current task is unrelated (reset_received() tells);
 * so does a keepalive timeout (rare: keepalive is off by default). User
 * space also checks whether the fds that held the socket still do. */
static __always_inline void leave_close_wait(void *ctx, u64 sk, const struct cw_tuple *t,
                                             int oldstate, int newstate)
{
    struct cw_event e = {};
    struct cw_fd_drop drop = {};
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    u32 tid = (u32)id;
    u64 now = bpf_ktime_get_ns();
    struct cw_sock *s = closewait.lookup(&sk);
    int dropped = 0;

    stat_add(CW_STAT_CW_LEFT);
    if (s) {
        u64 fin_ns = s->fin_ns;
        /* The thread's fd drop is taken only for a socket that matters: a
         * softirq running on top of a thread between its close() and the
         * release would otherwise consume that thread's drop for an
         * unrelated socket. */
        dropped = take_fd_drop(tid, now, &drop);
        /* -> LAST_ACK is set only by tcp_close() and tcp_shutdown(), in the
         * task that called them, and -> CLOSE without a received RST only by
         * tcp_close() with unread data: both are closes by the current task
         * even when the close-family syscall probes are not attached (they
         * are attached only while leaks are watched: enabling any syscall
         * tracepoint slows every syscall of every task). */
        int closed = newstate == CW_TCP_LAST_ACK || dropped ||
                     (newstate == CW_TCP_CLOSE && !reset_received(sk, now));
        if (closed && is_target(tgid))
            record_latency(tgid, s, now - fin_ns);
        closewait.delete(&sk);
        u64 *judged = watched.lookup(&sk);
        if (!judged)
            return; /* the healthy path ends here */
        /* Read before deleting: a preallocated hash recycles the element
         * at once. */
        u64 judged_fin = *judged;
        watched.delete(&sk);
        if (judged_fin != fin_ns)
            return; /* judged an earlier socket at the same address */
        e.source = CW_SRC_MAP;
    } else {
        /* Rare: in CLOSE_WAIT since before attach, or the map was full. */
        e.t.netns = sock_netns(sk);
        e.t.t = *t;
        if (preexist.lookup(&e.t) == 0)
            return;
        preexist.delete(&e.t);
        dropped = take_fd_drop(tid, now, &drop);
        e.source = CW_SRC_PREEXIST;
    }

    event_task(&e, CW_EV_LEFT_CLOSE_WAIT, now, id);
    e.skaddr = sk;
    e.oldstate = oldstate;
    e.newstate = newstate;
    if (dropped) {
        e.drop_kind = drop.kind;
        e.fd_lo = drop.fd_lo;
        e.fd_hi = drop.fd_hi;
    }
    emit(ctx, &e);
}

TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
    if (args->protocol != CW_IPPROTO_TCP)
        return 0;

    u64 sk = (u64)args->skaddr;
    int oldstate = args->oldstate;
    int newstate = args->newstate;

    if (newstate == CW_TCP_CLOSE_WAIT || oldstate == CW_TCP_CLOSE_WAIT) {
        struct cw_tuple t;
        READ_TUPLE(args, t);
        if (newstate == CW_TCP_CLOSE_WAIT)
            enter_close_wait(sk, &t);
        else
            leave_close_wait(args, sk, &t, oldstate, newstate);
    } else if (oldstate == CW_TCP_CLOSE && newstate == CW_TCP_SYN_SENT) {
        record_creator(sk, CW_OPENED_CONNECT);
        if (peer_connects_armed()) { /* pool diagnosis, only while suspects exist */
            struct cw_tuple t;
            READ_TUPLE(args, t);
            count_peer_connect(&t);
        }
    } else if (newstate == CW_TCP_LISTEN || oldstate == CW_TCP_LISTEN) {
        /* listen() (CLOSE -> LISTEN, the port bound already) and the
         * listener's close (LISTEN -> CLOSE); LISTEN -> SYN_RECV is a child
         * socket being created, which changes nothing. */
        if (newstate == CW_TCP_LISTEN)
            count_listener(args->sport, 1);
        else if (newstate == CW_TCP_CLOSE)
            count_listener(args->sport, 0);
        return 0;
    }
    /* A connection that ends without passing CLOSE_WAIT (we closed first,
     * or it failed) frees its creator slot here. One that passed it (it
     * leaves from CLOSE_WAIT itself, or from LAST_ACK, which only
     * CLOSE_WAIT leads to) moved its creator out at the FIN: no lookup. */
    if (newstate == CW_TCP_CLOSE && oldstate != CW_TCP_CLOSE_WAIT && oldstate != CW_TCP_LAST_ACK)
        remove_creator(sk);
    return 0;
}

/* Remember a thread's fd drop; report it if it touches a watched fd. */
static __always_inline void record_fd_drop(void *ctx, u32 kind, u32 fd_lo, u32 fd_hi)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    u32 tid = (u32)id;
    if (!is_target(tgid))
        return;
    struct cw_fd_drop d = {};
    d.ts = bpf_ktime_get_ns();
    d.kind = kind;
    d.fd_lo = fd_lo;
    d.fd_hi = fd_hi;
    fd_drops.update(&tid, &d);

    if (kind == CW_DROP_EXIT)
        return; /* user space sees the process go away */
    struct cw_fd_key k = {tgid, fd_lo};
    u32 *marks = watched_pids.lookup(&tgid);
    if (fd_lo == fd_hi) {
        if (watched_fds.lookup(&k) == 0)
            return;
    } else if (!marks || *marks == 0) {
        return;
    }
    struct cw_event e = {};
    event_task(&e, CW_EV_FD_DROP, d.ts, id);
    e.drop_kind = kind;
    e.fd_lo = fd_lo;
    e.fd_hi = fd_hi;
    if (emit(ctx, &e) != 0 || fd_lo != fd_hi)
        return;
    /* The fd is gone (close() and dup2() over it always drop it), and user
     * space learns it from this event: the mark goes with it, here, so that
     * a process closing 100,000 leaks costs user space no map syscalls.
     * (After lost events user space marks everything again.) The count may
     * stay above the truth for a moment, never below: harmless extra range
     * events, never a missed one. */
    watched_fds.delete(&k);
    if (marks && *marks > 0)
        __sync_fetch_and_add(marks, -1);
}

/* The close-family syscall probes are attached only while user space watches
 * a leak (tracer/kernel/probe.py, set_syscall_probes): enabling any syscall
 * tracepoint sends every syscall of every task through the kernel's slow
 * path. So they are not TRACEPOINT_PROBEs, which BCC attaches at load, but
 * plain functions attached by name, reading the record every sys_enter_*
 * tracepoint shares (struct syscall_trace_enter: the common header, the
 * syscall number at offset 8, then each argument as 8 bytes from offset 16,
 * as each event's tracefs format file says; tests/test_bpf_abi.py checks
 * those files). */
struct cw_sys_enter {
    u64 common; /* struct trace_entry; BPF may not read it */
    s32 nr;
    u32 pad;
    u64 args[3];
};

int cw_sys_enter_close(struct cw_sys_enter *ctx)
{
    record_fd_drop(ctx, CW_DROP_CLOSE, ctx->args[0], ctx->args[0]);
    return 0;
}

/* close_range(2) (Linux 5.9+) and glibc's closefrom(): (fd, max_fd, flags).
 * With CLOSE_RANGE_CLOEXEC (4) it only marks the fds close-on-exec. */
int cw_sys_enter_close_range(struct cw_sys_enter *ctx)
{
    if (ctx->args[2] & 4)
        return 0;
    record_fd_drop(ctx, CW_DROP_CLOSE_RANGE, ctx->args[0], ctx->args[1]);
    return 0;
}

/* dup2(oldfd, newfd) and dup3(oldfd, newfd, flags) onto an open fd close it
 * first (its file is released after the syscall, through task_work, like
 * close_range). dup2(fd, fd) and a failing call drop nothing; user space
 * checks the fd afterwards. */
int cw_sys_enter_dup(struct cw_sys_enter *ctx)
{
    if (ctx->args[0] != ctx->args[1])
        record_fd_drop(ctx, CW_DROP_DUP2, ctx->args[1], ctx->args[1]);
    return 0;
}

/* A thread exits. sched_process_exit fires in do_exit() before
 * exit_files(); when the last thread goes, exit_files() drops every fd and
 * the sockets are released by task_work in that same thread, so a
 * CLOSE_WAIT exit that follows is the process's exit, not a close(). */
TRACEPOINT_PROBE(sched, sched_process_exit)
{
    record_fd_drop(args, CW_DROP_EXIT, 0, 0xffffffff);
    return 0;
}

/* execve() closed the close-on-exec fds: sched_process_exec fires after
 * begin_new_exec() has done so, and their sockets are released by task_work
 * on the way back to user space, in this thread. Which fds went is not
 * known here: a range over every fd, so that user space re-reads the fd
 * table of a target with watched fds. Rare; always attached. */
TRACEPOINT_PROBE(sched, sched_process_exec)
{
    record_fd_drop(args, CW_DROP_EXEC, 0, 0xffffffff);
    return 0;
}

/* An io_uring close (IORING_OP_CLOSE) drops an fd without any close-family
 * syscall. The tracepoint has the opcode but not the fd: like exec, a range
 * over every fd. Attached only while leaks are watched, with the syscall
 * probes: it fires for every io_uring submission on the host. */
struct cw_uring_submit {
    u64 common;
    u64 ctx;
    u64 req;
    u64 user_data;
    u8 opcode;
};

int cw_io_uring_submit(struct cw_uring_submit *ctx)
{
    if (ctx->opcode == CW_IORING_OP_CLOSE)
        record_fd_drop(ctx, CW_DROP_URING, 0, 0xffffffff);
    return 0;
}

/* The peer's RST: remembered for the state change that follows on this CPU
 * (see last_reset). Fires only for RSTs received. */
TRACEPOINT_PROBE(tcp, tcp_receive_reset)
{
    u32 zero = 0;
    struct cw_reset *r = last_reset.lookup(&zero);
    if (r) {
        r->sk = (u64)args->skaddr;
        r->ts = bpf_ktime_get_ns();
    }
    return 0;
}
