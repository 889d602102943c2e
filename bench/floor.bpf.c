/* floor.bpf.c: the least a tracer on sock:inet_sock_set_state can cost.
 *
 * The benchmark's floor: one hash-map operation per TCP state change and
 * nothing else, no event to user space, no per-CPU statistics, no second
 * tracepoint. Any tracer that keeps per-socket state in the kernel does at
 * least this much, so "throughput under this program" is the bar closewait
 * is measured against (bench/churn.py). Compiled by BCC (bench/floor.py).
 *
 * Per socket: the map holds the time of its last state change, keyed by the
 * socket's address (what tcpstates and closewait key by), and the entry is
 * deleted when the socket reaches CLOSE, so the map stays as small as the
 * number of live connections.
 *
 * -DFLOOR_RAW attaches to the raw tracepoint instead: the arguments are the
 * tracepoint's TP_PROTO (sk, oldstate, newstate) without the perf-style
 * record the classic tracepoint fills in, which is the cheapest attachment
 * there is. It cannot read sk->sk_protocol without a probe read of a kernel
 * struct, so it does not filter on TCP; inet_sock_set_state fires for TCP,
 * DCCP, SCTP and MPTCP sockets, which in this benchmark are all TCP.
 */
#define FLOOR_TCP_CLOSE 7
#define FLOOR_IPPROTO_TCP 6

BPF_HASH(last_change, u64, u64, 65536);

static __always_inline void track(u64 sk, int newstate)
{
    if (newstate == FLOOR_TCP_CLOSE) {
        last_change.delete(&sk);
        return;
    }
    u64 now = bpf_ktime_get_ns();
    last_change.update(&sk, &now);
}

#ifdef FLOOR_RAW
RAW_TRACEPOINT_PROBE(inet_sock_set_state)
{
    /* TP_PROTO(const struct sock *sk, const int oldstate, const int newstate) */
    track(ctx->args[0], (int)ctx->args[2]);
    return 0;
}
#else
TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
    if (args->protocol != FLOOR_IPPROTO_TCP)
        return 0;
    track((u64)args->skaddr, args->newstate);
    return 0;
}
#endif
