"""Decode the BPF program's records into tracer.core.model records.

This is where closewait.h's numbers become names (drop kinds, TCP states,
sides), so that nothing above kernel/ depends on the C header. The ctypes
layouts themselves come from BCC, derived from closewait.bpf.c.
"""

from __future__ import annotations

import ctypes
import socket
import struct
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
    const("CW_DROP_EXEC"): "exec",
    const("CW_DROP_URING"): "io_uring",
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
        self._short = _short_record(event_class)
        self._head_size = self._short.size
        self._thread_names: dict[tuple[int, int], str] = {}
        self._fd_drop = const("CW_EV_FD_DROP")
        self._preexist = const("CW_SRC_PREEXIST")
        self._tcp_close = const("CW_TCP_CLOSE")

    def decode(self, data: Any, size: int) -> LeftCloseWait | FdDrop:
        # The short head with one struct.unpack (a storm of 200,000 events
        # spends most of its decoding in ctypes attribute access otherwise);
        # the tuple of the rare long record through BCC's class.
        ts, sk, kind, tgid, tid, drop_kind, fd_lo, fd_hi, _old, newstate, source = (
            self._short.unpack(ctypes.string_at(data, self._head_size))
        )
        comm = self._thread_name(tgid, tid)
        if kind == self._fd_drop:
            via = DROP_NAMES.get(drop_kind, "close")
            return FdDrop(ts, tgid, tid, comm, via, fd_lo, fd_hi)
        preexisting = source == self._preexist
        t = netns = None
        if preexisting:
            e = self._event_class()
            ctypes.memmove(ctypes.byref(e), data, min(size, ctypes.sizeof(e)))
            t, netns = decode_tuple(e.t.t), e.t.netns
        return LeftCloseWait(
            ts_ns=ts,
            sk=sk,
            tuple=t,
            netns=netns or 0,
            tgid=tgid,
            tid=tid,
            comm=comm,
            drop=DROP_NAMES.get(drop_kind),
            fd_lo=fd_lo,
            fd_hi=fd_hi,
            to_close=newstate == self._tcp_close,
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


# The head of struct cw_event, every field before the tuple, in order.
_HEAD = (
    ("ts", "Q"),
    ("skaddr", "Q"),
    ("kind", "I"),
    ("tgid", "I"),
    ("tid", "I"),
    ("drop_kind", "I"),
    ("fd_lo", "I"),
    ("fd_hi", "I"),
    ("oldstate", "H"),
    ("newstate", "H"),
    ("source", "I"),
)


def _short_record(event_class: Any) -> struct.Struct:
    """A struct.Struct for the short record, checked field by field against
    the layout BCC derived from closewait.bpf.c: the C file stays the one
    description of the record."""
    fmt = "=" + "".join(code for _, code in _HEAD)
    offset = 0
    for name, code in _HEAD:
        field = getattr(event_class, name)
        size = struct.calcsize(code)
        if (field.offset, field.size) != (offset, size):
            raise RuntimeError(f"struct cw_event.{name} moved: update kernel/decode.py _HEAD")
        offset += size
    if event_class.t.offset != offset:
        raise RuntimeError("struct cw_event: the tuple no longer follows the head")
    return struct.Struct(fmt)


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
    return KernelSock(
        sk=sk, fin_ns=v.fin_ns, tuple=decode_tuple(v.t), creator=creator, netns=v.netns
    )


def fd_key(key_type: Any, pid: int, fd: int) -> Any:
    k = key_type()
    k.tgid, k.fd = pid, fd
    return k


def ns_tuple_key(key_type: Any, netns: int, t: SockTuple) -> Any:
    """A struct cw_ns_tuple: the key of sockets known by namespace and tuple."""
    k = key_type()
    k.netns = netns
    k.t.family, k.t.sport, k.t.dport = t.family, t.local_port, t.remote_port
    src, dst = t.addr_bytes()
    for i in range(16):
        k.t.saddr[i] = src[i]
        k.t.daddr[i] = dst[i]
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
