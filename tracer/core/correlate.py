"""Correlate the kernel's FINs with the application's missing close(): pure logic.

Inputs per refresh (an Observation): the BPF closewait map (exact FIN times
by socket address and tuple), sock_diag's CLOSE_WAIT sockets (inode, Recv-Q,
tcp_info), the targets' fds from /proc (inode -> holders), and the events of
watched sockets that left CLOSE_WAIT. Output: the leaks, the leaks that
ended, and what the kernel should watch next.

The join: sock_diag gives namespace, tuple and inode; the BPF map gives
namespace (where the kernel has BTF), tuple and FIN time; /proc gives inode
and fd. See KernelIndex for tuples that two namespaces share. The leak
lifecycle over refreshes is tracker.LeakTracker.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from tracer.core.model import (
    NS_PER_S,
    DiagSock,
    FdDrop,
    FdReleased,
    Holder,
    KernelSock,
    Leak,
    LeakEnded,
    LeftCloseWait,
    ProcInfo,
    SockTuple,
)

StillHolding = Callable[[Leak], list[Holder]]

# A socket is counted as held by no process only after this long in
# CLOSE_WAIT: a healthy one closed between the sock_diag dump and the /proc
# scan would otherwise look unheld (seen with --min-age 0 under churn).
UNHELD_MIN_AGE_NS = NS_PER_S


def is_target(targets: frozenset[int] | None, pid: int) -> bool:
    """The one definition of a target: with --all (targets None) every process."""
    return targets is None or pid in targets


@dataclass
class Observation:
    """What one refresh read from the system. Gathered by tracer.engine.watcher."""

    now_ns: int
    kernel: dict[int, KernelSock]
    diag: list[DiagSock] | None  # None: not read this time (nothing new to find)
    holders: dict[int, list[Holder]]  # inode -> target fds holding it
    procs: dict[int, ProcInfo]  # name and cgroup of the holders' processes
    events: list[LeftCloseWait | FdDrop] = field(default_factory=list)
    queried_netns: set[int] = field(default_factory=set)
    exited: set[int] = field(default_factory=set)  # targets that exited
    targets: frozenset[int] | None = None  # None: every process is a target
    holders_complete: bool = False  # holders covers every process on the host
    # The join of kernel and diag, when the gatherer built it already (it
    # needs it to pick candidates): built once per dump, not twice.
    index: KernelIndex | None = None

    def is_target(self, pid: int) -> bool:
        return is_target(self.targets, pid)

    def ordered_holders(self, inode: int) -> tuple[list[Holder], list[Holder]]:
        """(target holders, other holders) of a socket, each sorted by pid and fd."""
        holders = self.holders.get(inode)
        if not holders:
            return [], []
        if len(holders) == 1:  # by far the most common case: spare the sort and
            # the copies (the fd index never changes a list it handed out)
            return (holders, []) if self.is_target(holders[0].pid) else ([], holders)
        holders = sorted(holders)  # Holder is (pid, fd)
        mine = [h for h in holders if self.is_target(h.pid)]
        return mine, [h for h in holders if not self.is_target(h.pid)]


@dataclass
class Changes:
    """What one refresh changed."""

    new: list[Leak] = field(default_factory=list)
    ended: list[LeakEnded] = field(default_factory=list)
    released_fds: list[FdReleased] = field(default_factory=list)
    watch: list[Leak] = field(default_factory=list)  # ask the kernel for events
    unwatch: list[Leak] = field(default_factory=list)  # ended without an event
    unheld: int = 0  # old enough, but no process holds it (counted if holders_complete)


class KernelIndex:
    """The closewait map indexed for the join with sock_diag.

    A tuple is unique only within a network namespace. Kernel entries that
    carry their namespace (read through BTF offsets) join on (namespace,
    tuple): exact. Entries without one (no BTF) join on the tuple alone, and
    only where that cannot be wrong: a tuple found twice in the map, or in
    the sock_diag dumps of two namespaces, joins nothing, so those sockets
    get estimated ages and ends rather than another socket's.
    """

    def __init__(self, kernel: dict[int, KernelSock], diag: Iterable[DiagSock] = ()) -> None:
        self._by_ns: dict[tuple[int, SockTuple], KernelSock] = {}
        self._by_tuple: dict[SockTuple, list[KernelSock]] = {}
        for ks in kernel.values():
            if ks.netns:
                self._by_ns[(ks.netns, ks.tuple)] = ks
            else:
                self._by_tuple.setdefault(ks.tuple, []).append(ks)
        self._shared: set[SockTuple] = set()
        if self._by_tuple:
            first_ns: dict[SockTuple, int] = {}
            for d in diag:
                if d.tuple in self._by_tuple and first_ns.setdefault(d.tuple, d.netns) != d.netns:
                    self._shared.add(d.tuple)

    def match(self, d: DiagSock) -> KernelSock | None:
        ks = self._by_ns.get((d.netns, d.tuple))
        if ks is not None:
            return ks
        found = self._by_tuple.get(d.tuple)
        if found and len(found) == 1 and d.tuple not in self._shared:
            return found[0]
        return None


def estimated_fin_ns(d: DiagSock, now_ns: int) -> int:
    """FIN time of a socket the kernel map does not know, from tcp_info.

    tcpi_last_ack_recv is the time since the last ACK received; the FIN
    carries one and an idle CLOSE_WAIT socket receives nothing after it, so
    this is the FIN's age unless the peer sent more (keepalives, window
    probes): then it is an underestimate. Without tcp_info: now.
    """
    return now_ns if d.est_fin_ns is None else d.est_fin_ns


def fin_time(d: DiagSock, index: KernelIndex, now_ns: int) -> tuple[int, bool, KernelSock | None]:
    """(FIN time, exact?, kernel entry) for a sock_diag socket."""
    ks = index.match(d)
    if ks is not None:
        return ks.fin_ns, True, ks
    return estimated_fin_ns(d, now_ns), False, None


def end_from_event(leak: Leak, ev: LeftCloseWait, still: list[Holder]) -> LeakEnded:
    """Explain a kernel event about a leak, given which of its fds still hold it.

    - Fds still hold the socket: it left CLOSE_WAIT without being closed, by
      an RST from the peer (-> CLOSE) or shutdown() (-> LAST_ACK).
    - Otherwise it was closed. The thread that did it is named only if it
      belongs to a holder process (in softirq the current task is unrelated),
      and the fd only if that thread's last fd drop covers a holder fd.
    """
    if still:
        reason = "reset" if ev.to_close else "shutdown"
        return LeakEnded(leak, ev.ts_ns, reason, exact=True, still_held=still)
    if ev.tgid != leak.pid and all(h.pid != ev.tgid for h in leak.holders):
        return LeakEnded(leak, ev.ts_ns, "closed", exact=True)
    drop = ev.drop
    if drop is None:
        # No fd drop recorded (the syscall probes attach with the first
        # leak): the closer's only fd for this socket, if it had one, is it.
        fds = [h.fd for h in leak.holders if h.pid == ev.tgid]
        fds = fds if len(fds) == 1 else []
    else:
        fds = [
            h.fd
            for h in leak.holders
            if drop != "exit" and h.pid == ev.tgid and ev.fd_lo <= h.fd <= ev.fd_hi
        ]
    return LeakEnded(
        leak,
        ev.ts_ns,
        "exited" if drop == "exit" else "closed",
        exact=True,
        by_pid=ev.tgid,
        by_tid=ev.tid,
        by_comm=ev.comm,
        by_fd=fds[0] if fds else None,
        drop=drop,
    )
