"""The facts closewait deals in, as plain immutable records.

Producers (kernel/ for BPF, system/ for sock_diag and /proc) turn raw bytes
into these; core/correlate combines them; report/ prints them. None of them
does I/O.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

NS_PER_S = 1_000_000_000


class SockTuple(NamedTuple):
    """A TCP connection's addresses, from the socket's own point of view.

    Addresses are canonical text (inet_ntop), so a tuple built from the
    tracepoint's bytes equals one built from sock_diag's. Unique within one
    network namespace only. (The records of this module are named tuples:
    tens of thousands are built per refresh on a sick host, and a tuple is
    several times cheaper to build and smaller than a frozen dataclass.)
    """

    family: int
    local_ip: str
    local_port: int
    remote_ip: str
    remote_port: int

    @classmethod
    def from_bytes(
        cls, family: int, saddr: bytes, sport: int, daddr: bytes, dport: int
    ) -> SockTuple:
        size = 4 if family == socket.AF_INET else 16
        return cls(
            family,
            socket.inet_ntop(family, bytes(saddr[:size])),
            sport,
            socket.inet_ntop(family, bytes(daddr[:size])),
            dport,
        )

    def addr_bytes(self) -> tuple[bytes, bytes]:
        """Source and destination padded to 16 bytes, as the BPF tuple key stores them."""
        return (
            socket.inet_pton(self.family, self.local_ip).ljust(16, b"\0"),
            socket.inet_pton(self.family, self.remote_ip).ljust(16, b"\0"),
        )

    @property
    def local(self) -> str:
        return format_endpoint(self.family, self.local_ip, self.local_port)

    @property
    def remote(self) -> str:
        return format_endpoint(self.family, self.remote_ip, self.remote_port)


_endpoints: dict[str, str] = {}


def format_endpoint(family: int, ip: str, port: int) -> str:
    """`1.2.3.4:80` or `[::1]:80`, as ss prints them.

    Deduplicated: the leaks of a host mostly share one end (the service a
    client pool talks to, or the port a server listens on), and each leak
    keeps its endpoints as strings; 100,000 equal copies would cost 6 MB.
    The table is bounded, so the unique ends cannot grow it forever."""
    text = f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}"
    if len(_endpoints) > 4096:
        _endpoints.clear()
    return _endpoints.setdefault(text, text)


class Creator(NamedTuple):
    """Who opened a connection, as the kernel saw it at connect() or accept time."""

    opened_ns: int  # 0 when unknown (accepted sockets: their handshake is not recorded)
    tgid: int  # 0 when unknown (accepted sockets: the handshake ends in softirq)
    tid: int
    comm: str
    accepted: bool


class KernelSock(NamedTuple):
    """An entry of the BPF closewait map: a socket that got its FIN since attach."""

    sk: int
    fin_ns: int
    tuple: SockTuple
    creator: Creator | None
    netns: int = 0  # inode of its network namespace; 0: unknown (no BTF)


class DiagSock(NamedTuple):
    """A socket in CLOSE_WAIT as sock_diag reports it, in one network namespace."""

    netns: int
    tuple: SockTuple
    inode: int
    uid: int
    recv_q: int  # unread bytes (sock_diag's rqueue counts the FIN as one more)
    # When the FIN probably arrived (CLOCK_MONOTONIC ns): from tcp_info when the
    # socket was first dumped, or that first dump's time (a lower bound on the
    # age) when tcp_info was not asked for. See correlate.estimated_fin_ns.
    est_fin_ns: int | None


class Holder(NamedTuple):
    """A file descriptor of a process that refers to a socket."""

    pid: int
    fd: int


class ProcInfo(NamedTuple):
    """What is printed about a process: its name (raw, escape before printing)
    and its cgroup path."""

    comm: str
    cgroup: str | None = None


UNKNOWN_PROC = ProcInfo("?")


class LeftCloseWait(NamedTuple):
    """A watched socket left CLOSE_WAIT (decoded BPF event)."""

    ts_ns: int
    sk: int
    tuple: SockTuple | None  # only for sockets in CLOSE_WAIT before attach
    netns: int  # with tuple: its namespace as the kernel read it (0: unknown)
    tgid: int
    tid: int
    comm: str
    # The current thread's last fd drop, if recent: "close", "close_range",
    # "dup2" or "exit" (kernel/decode.py names closewait.h's CW_DROP_*).
    drop: str | None
    fd_lo: int
    fd_hi: int
    to_close: bool  # went to CLOSE (an RST, sent or received), not LAST_ACK
    preexisting: bool


class FdDrop(NamedTuple):
    """A target entered close()/close_range()/dup2() on a watched fd (decoded BPF event)."""

    ts_ns: int
    tgid: int
    tid: int
    comm: str
    # "close", "close_range", "dup2"; "exec" (close-on-exec) and "io_uring"
    # (IORING_OP_CLOSE) do not say which fd: fd_lo..fd_hi covers them all.
    via: str
    fd_lo: int
    fd_hi: int


class LatencyBucket(NamedTuple):
    """One slot of the in-kernel FIN-to-close histogram."""

    pid: int
    side: str  # "remote" (connect()ed: peer's port), "local" (accepted), "unknown"
    port: int
    slot: int  # bpf_log2l(microseconds): see trends.log2_bucket_bounds
    count: int


class Leak:
    """A socket in CLOSE_WAIT that a target process still holds open.

    Mutable (holders and Recv-Q are refreshed while it lasts), with slots:
    a host can hold 100,000 of these. Process names and cgroups live in one
    table shared by every leak (`procs`), kept by the tracker.
    """

    __slots__ = (
        "_raw_holders",
        "age_exact",
        "creator",
        "fds",
        "fin_ns",
        "group",
        "holders",
        "inode",
        "local",
        "netns",
        "pid",
        "preexisting",
        "procs",
        "recv_q",
        "remote",
        "sk",
        "tuple",
        "uid",
    )  # fmt: skip

    def __init__(
        self,
        inode: int,
        netns: int,
        tuple: SockTuple,
        fin_ns: int,  # exact (from the kernel) or estimated, see age_exact
        age_exact: bool,
        preexisting: bool,  # in CLOSE_WAIT before closewait attached
        holders: list[Holder],
        recv_q: int,
        uid: int,
        sk: int | None = None,  # kernel address, when the FIN was seen
        creator: Creator | None = None,
        procs: dict[int, ProcInfo] | None = None,
    ) -> None:
        self.inode = inode
        self.netns = netns
        self.tuple = tuple
        # Printed for every leak at every report: computed once.
        self.local = tuple.local
        self.remote = tuple.remote
        self.fin_ns = fin_ns
        self.age_exact = age_exact
        self.preexisting = preexisting
        self.recv_q = recv_q
        self.uid = uid
        self.sk = sk
        self.creator = creator
        self.procs = procs if procs is not None else {}
        self._raw_holders: object = None  # what the tracker last compared holders with
        self.group: tuple[str, str] | None = None  # (side, endpoint), set by trends
        self._set_holders(holders)

    def _set_holders(self, holders: list[Holder]) -> None:
        self.holders = holders
        self.pid = pid = holders[0].pid  # the first holder's process (targets come first)
        self.fds = [h.fd for h in holders if h.pid == pid]

    def update(self, holders: list[Holder] | None = None, recv_q: int | None = None) -> bool:
        """Change what may change while a leak lasts; True if anything did."""
        changed = False
        if holders is not None and holders != self.holders:
            self._set_holders(holders)
            changed = True
        if recv_q is not None and recv_q != self.recv_q:
            self.recv_q, changed = recv_q, True
        return changed

    def proc(self, pid: int) -> ProcInfo:
        return self.procs.get(pid, UNKNOWN_PROC)

    @property
    def opener_holds(self) -> bool | None:
        """Whether the process that connect()ed still holds the socket (None: unknown).

        False is the fork-inheritance signature: the parent opened the
        connection and closed its fd, a child kept the socket."""
        c = self.creator
        if c is None or not c.tgid:
            return None
        return any(h.pid == c.tgid for h in self.holders)

    def age_s(self, now_ns: int) -> float:
        return max(0, now_ns - self.fin_ns) / NS_PER_S

    def __repr__(self) -> str:
        return f"Leak(inode={self.inode}, tuple={self.tuple}, holders={self.holders})"


def leaks_per_pid(leaks: Iterable[Leak]) -> dict[int, int]:
    """How many leaks each process is listed under (its first holder's pid)."""
    out: dict[int, int] = {}
    for lk in leaks:
        out[lk.pid] = out.get(lk.pid, 0) + 1
    return out


@dataclass(frozen=True)
class LeakEnded:
    """A leak stopped: the socket left CLOSE_WAIT or no target holds it any more."""

    leak: Leak
    ts_ns: int
    # "closed": the last fd went (close, close_range, dup2 over it); "exited":
    # the holders exited; "reset": an RST ended CLOSE_WAIT while still held;
    # "shutdown": shutdown() sent our FIN while still held; "released": no
    # target holds it any more, but it is still in CLOSE_WAIT (another
    # process does).
    reason: str
    exact: bool  # ts_ns from a kernel event rather than a poll
    by_pid: int | None = None
    by_tid: int | None = None
    by_comm: str | None = None
    by_fd: int | None = None
    drop: str | None = None  # how: "close", "close_range", "dup2", "exit"
    still_held: list[Holder] = field(default_factory=list)

    @property
    def latency_s(self) -> float:
        """FIN-to-end delay in seconds."""
        return max(0, self.ts_ns - self.leak.fin_ns) / NS_PER_S


@dataclass(frozen=True)
class FdReleased:
    """A target dropped one of its fds for a leaked socket, and the socket
    stayed in CLOSE_WAIT because other fds (a dup, a forked child) hold it."""

    leak: Leak
    ts_ns: int
    pid: int
    tid: int
    comm: str
    fd: int
    via: str  # "close", "close_range", "dup2"
    still_held: list[Holder]


@dataclass(frozen=True)
class ProbeStats:
    """Counters of the BPF side, summed over CPUs since attach."""

    fins: int = 0
    cw_full: int = 0
    cw_left: int = 0
    conns_added: int = 0
    conns_removed: int = 0
    conns_evicted: int = 0
    events: int = 0
    events_lost: int = 0
    drops_stale: int = 0
    latency_full: int = 0
    fins_foreign: int = 0  # --pid: FINs of connections unwatched processes opened
    decode_errors: int = 0  # event records user space could not decode (a bug if ever > 0)
