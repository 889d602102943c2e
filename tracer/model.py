"""The facts closewait deals in, as plain immutable records.

Producers (kernel_probe, sockdiag, procfs) turn raw bytes into these;
correlate combines them; render prints them. None of them does I/O.
"""

from __future__ import annotations

import itertools
import socket
from dataclasses import dataclass, field

NS_PER_S = 1_000_000_000

_serials = itertools.count(1)


@dataclass(frozen=True, order=True)
class SockTuple:
    """A TCP connection's addresses, from the socket's own point of view.

    Addresses are canonical text (inet_ntop), so a tuple built from the
    tracepoint's bytes equals one built from sock_diag's. Unique within one
    network namespace only.
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


def format_endpoint(family: int, ip: str, port: int) -> str:
    """`1.2.3.4:80` or `[::1]:80`, as ss prints them."""
    return f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}"


@dataclass(frozen=True)
class Creator:
    """Who opened a connection, as the kernel saw it at connect() or accept time."""

    opened_ns: int
    tgid: int  # 0 when unknown (accepted sockets: the handshake ends in softirq)
    tid: int
    comm: str
    accepted: bool


@dataclass(frozen=True)
class KernelSock:
    """An entry of the BPF closewait map: a socket that got its FIN since attach."""

    sk: int
    fin_ns: int
    tuple: SockTuple
    creator: Creator | None


@dataclass(frozen=True)
class DiagSock:
    """A socket in CLOSE_WAIT as sock_diag reports it, in one network namespace."""

    netns: int
    tuple: SockTuple
    inode: int
    uid: int
    recv_q: int  # unread bytes (sock_diag's rqueue counts the FIN as one more)
    # When the FIN probably arrived (CLOCK_MONOTONIC ns), from tcp_info when the
    # socket was first dumped; None without tcp_info. See correlate.estimated_fin_ns.
    est_fin_ns: int | None


@dataclass(frozen=True)
class Holder:
    """A file descriptor of a process that refers to a socket."""

    pid: int
    fd: int


@dataclass(frozen=True)
class LeftCloseWait:
    """A watched socket left CLOSE_WAIT (decoded BPF event)."""

    ts_ns: int
    sk: int
    fin_ns: int  # 0 when the socket was in CLOSE_WAIT before attach
    tuple: SockTuple
    tgid: int
    tid: int
    comm: str
    drop_kind: int  # CW_DROP_* of closewait.h
    fd_lo: int
    fd_hi: int
    newstate: int
    preexisting: bool


@dataclass(frozen=True)
class FdDrop:
    """A target entered close()/close_range()/dup2() on a watched fd (decoded BPF event)."""

    ts_ns: int
    tgid: int
    tid: int
    comm: str
    drop_kind: int
    fd_lo: int
    fd_hi: int


@dataclass(frozen=True)
class LatencyBucket:
    """One slot of the in-kernel FIN-to-close histogram."""

    pid: int
    side: str  # "remote" (connect()ed: peer's port), "local" (accepted), "unknown"
    port: int
    slot: int  # log2 of microseconds: [2**slot, 2**(slot+1)) µs; slot 0 also holds 0 µs
    count: int


@dataclass
class Leak:
    """A socket in CLOSE_WAIT that a target process still holds open.

    Mutable: holders, recv_q and comm are refreshed while it lasts.
    """

    inode: int
    netns: int
    tuple: SockTuple
    fin_ns: int  # exact (from the kernel) or estimated, see age_exact
    age_exact: bool
    preexisting: bool  # in CLOSE_WAIT before closewait attached
    first_seen_ns: int
    holders: list[Holder]
    comms: dict[int, str]
    recv_q: int
    uid: int
    sk: int | None = None  # kernel address, when the FIN was seen
    creator: Creator | None = None
    cgroups: dict[int, str] = field(default_factory=dict)  # pid -> cgroup path
    version: int = 0  # bumped on every change above, so renderers can cache
    # Unique per Leak object (an inode can leak, end and be found again).
    serial: int = field(default_factory=lambda: next(_serials))

    def update(
        self,
        holders: list[Holder] | None = None,
        recv_q: int | None = None,
        comms: dict[int, str] | None = None,
        cgroups: dict[int, str] | None = None,
    ) -> bool:
        """Change what may change while a leak lasts; True if anything did."""
        changed = False
        if holders is not None and holders != self.holders:
            self.holders, changed = holders, True
        if recv_q is not None and recv_q != self.recv_q:
            self.recv_q, changed = recv_q, True
        for mine, new in ((self.comms, comms), (self.cgroups, cgroups)):
            for pid, value in (new or {}).items():
                if mine.get(pid) != value:
                    mine[pid], changed = value, True
        if changed:
            self.version += 1
        return changed

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

    @property
    def pid(self) -> int:
        return self.holders[0].pid

    @property
    def fds(self) -> list[int]:
        """The fds of the first holder's process that refer to this socket."""
        return [h.fd for h in self.holders if h.pid == self.pid]


@dataclass(frozen=True)
class LeakEnded:
    """A leak stopped: the socket left CLOSE_WAIT or no target holds it any more."""

    leak: Leak
    ts_ns: int
    reason: str  # "closed", "reset", "released", "exited", "gone"
    exact: bool  # ts_ns from a kernel event rather than a poll
    by_pid: int | None = None
    by_tid: int | None = None
    by_comm: str | None = None
    by_fd: int | None = None
    drop: str | None = None  # "close", "close_range"
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
