/* closewait.h: the constants the BPF program and tracer/ agree on.
 *
 * tracer/kernel/abi.py reads every `#define CW_...` line of this file at run
 * time, so a constant lives here once. The struct layouts (maps, events)
 * are not repeated in Python either: BCC derives ctypes classes from the
 * C definitions in closewait.bpf.c, and tests/test_bpf_abi.py checks the
 * field names user space relies on.
 */
#ifndef CLOSEWAIT_H
#define CLOSEWAIT_H

/* TCP states as the sock:inet_sock_set_state tracepoint reports them
 * (include/net/tcp_states.h). */
#define CW_TCP_ESTABLISHED 1
#define CW_TCP_SYN_SENT 2
#define CW_TCP_SYN_RECV 3
#define CW_TCP_CLOSE 7
#define CW_TCP_CLOSE_WAIT 8
#define CW_TCP_LAST_ACK 9
#define CW_TCP_LISTEN 10

#define CW_AF_INET 2
#define CW_AF_INET6 10
#define CW_IPPROTO_TCP 6

/* struct cw_creator.how */
#define CW_OPENED_CONNECT 1 /* CLOSE -> SYN_SENT, in the connecting thread */
#define CW_OPENED_ACCEPT 2  /* accepted: no creator recorded, local port a server's (at the FIN) */

/* struct cw_fd_drop.kind: the last way a thread let go of file descriptors. */
#define CW_DROP_NONE 0
#define CW_DROP_CLOSE 1
#define CW_DROP_CLOSE_RANGE 2
#define CW_DROP_EXIT 3 /* the thread is exiting: its fd table may be released */
#define CW_DROP_DUP2 4 /* dup2()/dup3() onto an open fd closes it first */
#define CW_DROP_EXEC 5 /* execve() closed the close-on-exec fds (fd unknown) */
#define CW_DROP_URING 6 /* an io_uring IORING_OP_CLOSE was submitted (fd unknown) */

/* io_uring's opcode for close (include/uapi/linux/io_uring.h). */
#define CW_IORING_OP_CLOSE 19

/* struct cw_event.kind */
#define CW_EV_LEFT_CLOSE_WAIT 1 /* a watched socket left CLOSE_WAIT */
#define CW_EV_FD_DROP 2         /* a target dropped a watched (pid, fd) */

/* struct cw_lat_key.side: which port keys a latency histogram bucket. */
#define CW_SIDE_UNKNOWN 0 /* opened before attach */
#define CW_SIDE_REMOTE 1  /* connect()ed: the peer's (service) port */
#define CW_SIDE_LOCAL 2   /* accepted: our listening port */

/* struct cw_event.source: how the kernel knew the socket was watched. */
#define CW_SRC_MAP 1      /* in closewait and in watched */
#define CW_SRC_PREEXIST 2 /* in CLOSE_WAIT before attach, matched by tuple */

/* Indexes of the per-CPU stats array. */
#define CW_STAT_FIN 0            /* sockets that entered CLOSE_WAIT */
#define CW_STAT_CW_FULL 1        /* ... and found the closewait map full */
#define CW_STAT_CW_LEFT 2        /* sockets that left CLOSE_WAIT */
#define CW_STAT_CONN_ADDED 3     /* creator entries written */
#define CW_STAT_CONN_REMOVED 4   /* creator entries removed by the program */
#define CW_STAT_EVENTS 5         /* events sent to user space */
#define CW_STAT_EVENTS_LOST 6    /* events the ring buffer had no room for */
#define CW_STAT_DROPS_STALE 7    /* fd drops too old to explain a close */
#define CW_STAT_LAT_FULL 8       /* closes the latency map had no room for */
#define CW_STAT_FIN_FOREIGN 9    /* FINs of connections unwatched processes opened */
#define CW_STAT_MAX 10

/* Values of the targets map (with CW_FILTER_PIDS). */
#define CW_TARGET 1   /* a watched process: its fd drops are recorded */
#define CW_ANCESTOR 2 /* an ancestor of one: connections it opens may be inherited */

/* A pending fd drop explains a CLOSE_WAIT exit in the same thread only if
 * it is this recent: close() releases the socket before it returns,
 * close_range()/dup2() a few microseconds after (see the program). */
#define CW_DROP_MAX_AGE_NS 1000000000ULL

#endif /* CLOSEWAIT_H */
