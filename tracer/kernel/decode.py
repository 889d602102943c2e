"""Decode the BPF program's records into tracer.core.model records.

This is where closewait.h's numbers become names (drop kinds, TCP states,
sides), so that nothing above kernel/ depends on the C header. The ctypes
layouts themselves come from BCC, derived from closewait.bpf.c.
"""

from __future__ import annotations

import ctypes
import socket
from typing import Any

from tracer.core.model import Creator, FdDrop, KernelSock, LeftCloseWait, SockTuple
from tracer.core.verdict import PeerKey
from tracer.kernel.abi import const
from tracer.system import procfs

# struct cw_fd_drop.kind -> the name core/ and the reports use.
DROP_NAMES = {
    const("CW_DROP_CLOSE"): "close",
    const("CW_DROP_CLOSE_RANGE"): "close_range",
    const("CW_DROP_EXIT"): "exit",
    const("CW_DROP_DUP2"): "dup2",
}
SIDE_NAMES = {const("CW_SIDE_REMOTE"): "remote", const("CW_SIDE_LOCAL"): "local"}

# Slots of the per-CPU stats array (CW_STAT_<name>), as ProbeStats reads them.
STAT_NAMES = (
    "FIN",
    "CW_FULL",
    "CW_LEFT",
    "CONN_ADDED",
    "CONN_REMOVED",
    "EVENTS",
    "EVENTS_LOST",
    "DROPS_STALE",
    "LAT_FULL",
    "FIN_FOREIGN",
)


class EventDecoder:
    """struct cw_event records -> LeftCloseWait / FdDrop, with thread names."""

    def __init__(self, event_class: Any) -> None:
        self._event_class = event_class
        self._thread_names: dict[tuple[int, int], str] = {}
        self._fd_drop = const("CW_EV_FD_DROP")
        self._preexist = const("CW_SRC_PREEXIST")
        self._tcp_close = const("CW_TCP_CLOSE")

    def decode(self, data: Any, size: int) -> LeftCloseWait | FdDrop:
        # Records are short unless they carry a tuple: copy what came.
        e = self._event_class()
        ctypes.memmove(ctypes.byref(e), data, min(size, ctypes.sizeof(e)))
        comm = self._thread_name(e.tgid, e.tid)
        if e.kind == self._fd_drop:
            via = DROP_NAMES.get(e.drop_kind, "close")
            return FdDrop(e.ts, e.tgid, e.tid, comm, via, e.fd_lo, e.fd_hi)
        preexisting = e.source == self._preexist
        return LeftCloseWait(
            ts_ns=e.ts,
            sk=e.skaddr,
            tuple=decode_tuple(e.t) if preexisting else None,
            tgid=e.tgid,
            tid=e.tid,
            comm=comm,
            drop=DROP_NAMES.get(e.drop_kind),
            fd_lo=e.fd_lo,
            fd_hi=e.fd_hi,
            to_close=e.newstate == self._tcp_close,
            preexisting=preexisting,
        )

    def _thread_name(self, tgid: int, tid: int) -> str:
        """The thread's name from /proc, once per thread per poll (a process
        exiting with 100,000 leaks sends as many events from one thread)."""
        key = (tgid, tid)
        name = self._thread_names.get(key)
        if name is None:
            name = self._thread_names[key] = procfs.thread_comm(tgid, tid) or ""
        return name

    def end_of_poll(self) -> None:
        """Thread names are cached for one poll only: tids are reused."""
        self._thread_names.clear()


def decode_tuple(t: Any) -> SockTuple:
    return SockTuple.from_bytes(t.family, bytes(t.saddr), t.sport, bytes(t.daddr), t.dport)


def decode_sock(sk: int, v: Any) -> KernelSock:
    c = v.c
    creator = None
    if c.how:
        creator = Creator(
            opened_ns=c.opened_ns,
            tgid=c.tgid,
            tid=c.tid,
            comm=bytes(c.comm).rstrip(b"\0").decode("utf-8", "surrogateescape"),
            accepted=c.how == const("CW_OPENED_ACCEPT"),
        )
    return KernelSock(sk=sk, fin_ns=v.fin_ns, tuple=decode_tuple(v.t), creator=creator)


def fd_key(key_type: Any, pid: int, fd: int) -> Any:
    k = key_type()
    k.tgid, k.fd = pid, fd
    return k


def tuple_key(key_type: Any, t: SockTuple) -> Any:
    k = key_type()
    k.family, k.sport, k.dport = t.family, t.local_port, t.remote_port
    src, dst = t.addr_bytes()
    for i in range(16):
        k.saddr[i] = src[i]
        k.daddr[i] = dst[i]
    return k


def peer_key(key_type: Any, key: PeerKey) -> Any:
    """struct cw_peer_key of a (process, peer) pair."""
    k = key_type()
    k.tgid, k.family, k.dport = key.pid, key.family, key.port
    addr = socket.inet_pton(key.family, key.ip).ljust(16, b"\0")
    for i in range(16):
        k.daddr[i] = addr[i]
    return k


def decode_peer_key(k: Any) -> PeerKey:
    size = 4 if k.family == socket.AF_INET else 16
    return PeerKey(k.tgid, k.family, socket.inet_ntop(k.family, bytes(k.daddr)[:size]), k.dport)
