"""Correlate the kernel's FINs with the application's missing close(): pure logic.

Inputs per refresh (an Observation): the BPF closewait map (exact FIN times
by socket address and tuple), sock_diag's CLOSE_WAIT sockets (inode, Recv-Q,
tcp_info), the targets' fds from /proc (inode -> holders), and the events of
watched sockets that left CLOSE_WAIT. Output: the leaks, the leaks that
ended, and what the kernel should watch next.

The join: sock_diag gives tuple and inode; the BPF map gives tuple and FIN
time; /proc gives inode and fd. Tuples are unique per network namespace
only, while the BPF map spans all of them, so a tuple found twice in the map
is resolved by the FIN time closest to sock_diag's estimate.
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
    """The closewait map indexed by tuple, for joining with sock_diag."""

    def __init__(self, kernel: dict[int, KernelSock]) -> None:
        self._by_tuple: dict[SockTuple, list[KernelSock]] = {}
        for ks in kernel.values():
            self._by_tuple.setdefault(ks.tuple, []).append(ks)

    def match(self, d: DiagSock, now_ns: int) -> KernelSock | None:
        found = self._by_tuple.get(d.tuple)
        if not found:
            return None
        if len(found) == 1:
            return found[0]
        # Same tuple in several namespaces: take the FIN closest to the estimate.
        guess = estimated_fin_ns(d, now_ns)
        return min(found, key=lambda ks: abs(ks.fin_ns - guess))


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
    ks = index.match(d, now_ns)
    if ks is not None:
        return ks.fin_ns, True, ks
    return estimated_fin_ns(d, now_ns), False, None


class LeakTracker:
    """Leaks across refreshes: which sockets are leaking, since when, until when.

    A leak is a socket in CLOSE_WAIT for at least min_age whose inode a
    target fd still holds; it lists every holder the observation knows,
    targets first. It ends when a kernel event says the socket left
    CLOSE_WAIT, when a refresh no longer finds it in CLOSE_WAIT, or when no
    target holds it any more.
    """

    def __init__(self, min_age_s: float, attach_ns: int) -> None:
        self.min_age_ns = int(min_age_s * NS_PER_S)
        self.attach_ns = attach_ns
        self.leaks: dict[int, Leak] = {}
        self._by_sk: dict[int, int] = {}
        self._by_tuple: dict[SockTuple, int] = {}
        self.targets: frozenset[int] | None = None  # from the last observation
        self._sorted: list[Leak] | None = None
        # Names and cgroups of holders, shared by every leak; a process that
        # exited keeps its last known name while a leak still names it.
        self.procs: dict[int, ProcInfo] = {}
        self.holders_changed = True  # some leak's holders changed since last cleared

    # -- queries used before holders are read --------------------------------

    def candidates(
        self, obs_diag: Iterable[DiagSock], index: KernelIndex, now_ns: int
    ) -> list[DiagSock]:
        """CLOSE_WAIT sockets old enough to be leaks and not yet known as leaks:
        the ones whose holders must be looked up in /proc."""
        out = []
        for d in obs_diag:
            if d.inode in self.leaks:
                continue
            fin, _exact, _ks = fin_time(d, index, now_ns)
            if now_ns - fin >= self.min_age_ns:
                out.append(d)
        return out

    # -- the refresh ---------------------------------------------------------

    def update(self, obs: Observation, still_holding: StillHolding) -> Changes:
        self.targets = obs.targets
        self.procs.update(obs.procs)
        ch = self.apply_events(obs.events, still_holding)
        if obs.diag is None:
            return ch
        now = obs.now_ns

        index = KernelIndex(obs.kernel)
        seen: set[int] = set()
        for d in obs.diag:
            seen.add(d.inode)
            leak = self.leaks.get(d.inode)
            raw = obs.holders.get(d.inode)
            if leak is not None and raw is not None and raw == leak._raw_holders:
                leak.update(recv_q=d.recv_q)  # the common case: nothing else changed
                continue
            mine, others = obs.ordered_holders(d.inode)
            if leak is not None:
                if mine:
                    leak._raw_holders = raw
                    if leak.update(holders=mine + others if others else mine, recv_q=d.recv_q):
                        self.holders_changed = True
                else:
                    self._drop(leak)
                    ch.unwatch.append(leak)
                    ch.ended.append(self._released(leak, now, obs.exited, others))
                continue
            if not mine:
                if not others and obs.holders_complete:
                    fin, _exact, _ks = fin_time(d, index, now)
                    ch.unheld += now - fin >= max(self.min_age_ns, UNHELD_MIN_AGE_NS)
                continue
            fin, exact, ks = fin_time(d, index, now)
            if now - fin < self.min_age_ns:
                continue
            leak = Leak(
                inode=d.inode,
                netns=d.netns,
                tuple=d.tuple,
                fin_ns=fin,
                age_exact=exact,
                preexisting=not exact and fin < self.attach_ns,
                holders=mine + others if others else mine,
                recv_q=d.recv_q,
                uid=d.uid,
                sk=ks.sk if ks else None,
                creator=ks.creator if ks else None,
                procs=self.procs,
            )
            leak._raw_holders = raw
            self._add(leak)
            ch.new.append(leak)
            ch.watch.append(leak)

        for leak in list(self.leaks.values()):
            if leak.inode in seen:
                continue
            if leak.netns not in obs.queried_netns:
                # Nobody left to query that namespace through: its holders exited.
                if {h.pid for h in leak.holders} <= obs.exited:
                    self._drop(leak)
                    ch.unwatch.append(leak)
                    ch.ended.append(LeakEnded(leak, now, "exited", exact=False))
                continue
            # Left CLOSE_WAIT without an event: lost, or unwatched (map full).
            self._drop(leak)
            ch.unwatch.append(leak)
            still = still_holding(leak)
            ch.ended.append(
                LeakEnded(
                    leak=leak,
                    ts_ns=now,
                    reason="reset" if still else "closed",
                    exact=False,
                    still_held=still,
                )
            )
        return ch

    def apply_events(
        self, events: Iterable[LeftCloseWait | FdDrop], still_holding: StillHolding
    ) -> Changes:
        """Apply kernel events in order: sockets out of CLOSE_WAIT end their
        leaks; watched fds dropped while the socket survives are reported."""
        ch = Changes()
        for ev in events:
            if isinstance(ev, FdDrop):
                self._fd_dropped(ev, still_holding, ch)
                continue
            leak = self._find(ev)
            if leak is not None:
                self._drop(leak)
                ch.ended.append(end_from_event(leak, ev, still_holding(leak)))
        return ch

    def _fd_dropped(self, ev: FdDrop, still_holding: StillHolding, ch: Changes) -> None:
        """A target dropped an fd of a leaked socket (close, close_range, dup2).

        If nothing holds the socket any more, its CLOSE_WAIT exit follows and
        explains everything: nothing to say here. If other fds still hold it
        (a dup, a forked child), the socket stays in CLOSE_WAIT: say so, since
        no state change will. The leak ends if no target is among them.
        """
        via = ev.via
        for leak in list(self.leaks.values()):
            dropped = [h for h in leak.holders if h.pid == ev.tgid and ev.fd_lo <= h.fd <= ev.fd_hi]
            if not dropped:
                continue
            still = still_holding(leak)
            gone = [h for h in dropped if h not in still]
            if not still or not gone:
                continue  # socket released (an exit event follows), or the drop failed
            ch.released_fds.append(
                FdReleased(leak, ev.ts_ns, ev.tgid, ev.tid, ev.comm, gone[0].fd, via, still)
            )
            leak.update(holders=still)
            self.holders_changed = True
            if not any(is_target(self.targets, h.pid) for h in still):
                self._drop(leak)
                ch.ended.append(
                    LeakEnded(
                        leak,
                        ev.ts_ns,
                        "released",
                        exact=True,
                        by_pid=ev.tgid,
                        by_tid=ev.tid,
                        by_comm=ev.comm,
                        by_fd=gone[0].fd,
                        drop=via,
                        still_held=still,
                    )
                )

    def prune_procs(self) -> None:
        """Forget processes no leak names any more (called once per refresh)."""
        if len(self.procs) > 2 * len(self.leaks) + 64:
            named = {h.pid for lk in self.leaks.values() for h in lk.holders}
            for pid in [p for p in self.procs if p not in named]:
                del self.procs[pid]

    def sorted_leaks(self) -> list[Leak]:
        """Oldest FIN first (then by inode, for a stable order). Sorted again
        only when the set of leaks changed: reports ask for it twice each."""
        if self._sorted is None:
            self._sorted = sorted(self.leaks.values(), key=_by_age)
        return self._sorted

    # -- bookkeeping ---------------------------------------------------------

    def _find(self, ev: LeftCloseWait) -> Leak | None:
        inode = self._by_tuple.get(ev.tuple) if ev.preexisting else self._by_sk.get(ev.sk)
        return self.leaks.get(inode) if inode is not None else None

    def _add(self, leak: Leak) -> None:
        self.holders_changed = True
        self._sorted = None
        self.leaks[leak.inode] = leak
        if leak.sk is not None:
            self._by_sk[leak.sk] = leak.inode
        else:
            self._by_tuple[leak.tuple] = leak.inode

    def _drop(self, leak: Leak) -> None:
        self.holders_changed = True
        self._sorted = None
        self.leaks.pop(leak.inode, None)
        if leak.sk is not None:
            self._by_sk.pop(leak.sk, None)
        elif self._by_tuple.get(leak.tuple) == leak.inode:
            del self._by_tuple[leak.tuple]

    @staticmethod
    def _released(leak: Leak, now: int, exited: set[int], others: list[Holder]) -> LeakEnded:
        """No target fd holds the socket any more, yet it is still in CLOSE_WAIT
        (held by `others`, or by something closewait cannot see)."""
        target_pids = {h.pid for h in leak.holders} - {h.pid for h in others}
        reason = "exited" if target_pids <= exited else "released"
        return LeakEnded(leak, now, reason, exact=False, still_held=others)


def _by_age(leak: Leak) -> tuple[int, int]:
    return (leak.fin_ns, leak.inode)


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
    if ev.tgid not in {h.pid for h in leak.holders}:
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
