"""The leak lifecycle across refreshes and events: pure logic.

A leak is a socket in CLOSE_WAIT for at least min_age whose inode a target
fd still holds; it lists every holder the observation knows, targets first.
It ends when a kernel event says the socket left CLOSE_WAIT, when a refresh
no longer finds it in CLOSE_WAIT, or when no target holds it any more.

Everything a kernel event can name is indexed, so that a storm of events
(a pool shutdown closing 100,000 leaks) costs O(1) each: leaks by kernel
address, by (namespace, tuple) for the ones known by tuple, and by
(pid, fd) for fd drops. The (pid, fd) marks the kernel should hold are
kept as a set of changes (`fd_dirty`), never recomputed from all leaks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from tracer.core.correlate import (
    UNHELD_MIN_AGE_NS,
    Changes,
    KernelIndex,
    Observation,
    StillHolding,
    end_from_event,
    fin_time,
    is_target,
)
from tracer.core.model import (
    NS_PER_S,
    DiagSock,
    FdDrop,
    FdReleased,
    Holder,
    Leak,
    LeakEnded,
    LeftCloseWait,
    ProcInfo,
    SockTuple,
)

# After a drop of a leaked fd, how long to wait for what explains it: the
# socket's exit from CLOSE_WAIT (the close released it), or the end of the
# syscall (the event is sent at its entry). Past this, a socket no known fd
# holds is ended as released (held by something closewait cannot see: an
# fd in flight, another process).
SETTLE_NS = NS_PER_S

# inode -> every holder among the given pids, read again from /proc.
Rescan = Callable[[set[int]], dict[int, list[Holder]]]


@dataclass
class _Unsettled:
    """A drop of some of a leak's fds, not yet explained."""

    ev: FdDrop
    dropped: list[Holder]


class LeakTracker:
    """Leaks across refreshes: which sockets are leaking, since when, until when."""

    def __init__(self, min_age_s: float, attach_ns: int, netns_known: bool = True) -> None:
        self.min_age_ns = int(min_age_s * NS_PER_S)
        self.attach_ns = attach_ns
        # Whether kernel events carry the socket's namespace: if not, sockets
        # known by tuple are keyed by the tuple alone (namespace 0).
        self.netns_known = netns_known
        self.leaks: dict[int, Leak] = {}
        self._by_sk: dict[int, int] = {}
        self._by_tuple: dict[tuple[int, SockTuple], int] = {}
        self._ambiguous: set[tuple[int, SockTuple]] = set()  # keys two leaks share
        self._at: dict[int, dict[int, int]] = {}  # pid -> fd -> inode, every holder
        self.fd_dirty: set[Holder] = set()  # holders added or removed since last taken
        self._unsettled: dict[int, _Unsettled] = {}  # inode -> unexplained fd drop
        self.targets: frozenset[int] | None = None  # from the last observation
        self._sorted: list[Leak] | None = None
        # Names and cgroups of holders, shared by every leak; a process that
        # exited keeps its last known name while a leak still names it.
        self.procs: dict[int, ProcInfo] = {}

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

    def holders_index(self) -> dict[int, dict[int, int]]:
        """pid -> fd -> inode of every holder of every leak (read-only)."""
        return self._at

    def holds(self, h: Holder) -> int | None:
        """The leaked socket (inode) the tracker believes fd h holds."""
        fds = self._at.get(h.pid)
        return None if fds is None else fds.get(h.fd)

    # -- the refresh ---------------------------------------------------------

    def update(self, obs: Observation, still_holding: StillHolding) -> Changes:
        self.targets = obs.targets
        self.procs.update(obs.procs)
        ch = self.apply_events(obs.events, still_holding, obs.now_ns)
        if obs.diag is None:
            return ch
        now = obs.now_ns

        index = obs.index or KernelIndex(obs.kernel, obs.diag)
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
                    self._set_holders(leak, mine + others if others else mine)
                    leak.update(recv_q=d.recv_q)
                else:
                    self._end(leak, ch, self._released(leak, now, obs.exited, others))
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
            if self._add(leak, ch):
                ch.watch.append(leak)
            ch.new.append(leak)

        for leak in list(self.leaks.values()):
            if leak.inode in seen:
                continue
            if leak.netns not in obs.queried_netns:
                # Nobody left to query that namespace through: its holders exited.
                if {h.pid for h in leak.holders} <= obs.exited:
                    self._end(leak, ch, LeakEnded(leak, now, "exited", exact=False))
                continue
            # Left CLOSE_WAIT without an event: lost, or unwatched (map full,
            # or a tuple two namespaces share without BTF).
            still = still_holding(leak)
            reason = "reset" if still else "closed"
            self._end(leak, ch, LeakEnded(leak, now, reason, exact=False, still_held=still))
        return ch

    def apply_events(
        self,
        events: Iterable[LeftCloseWait | FdDrop],
        still_holding: StillHolding,
        now_ns: int | None = None,
        rescan: Rescan | None = None,
    ) -> Changes:
        """Apply kernel events in order: sockets out of CLOSE_WAIT end their
        leaks; drops of leaked fds are settled once the batch is applied
        (see settle)."""
        ch = Changes()
        last_ts = 0
        for ev in events:
            last_ts = ev.ts_ns
            if isinstance(ev, FdDrop):
                self._fd_dropped(ev)
                continue
            leak = self._find(ev)
            if leak is not None:
                # A close by the holder of every fd: nothing can still hold it.
                still = [] if _drop_covers(ev, leak) else still_holding(leak)
                self._end(leak, ch, end_from_event(leak, ev, still), watched=True)
        self.settle(ch, still_holding, now_ns if now_ns is not None else last_ts, rescan)
        return ch

    def _fd_dropped(self, ev: FdDrop) -> None:
        """A target dropped fds (close, close_range, dup2; exec and io_uring
        without saying which): remember which leaks' holders it may concern.
        A (pid, fd) lookup, or a walk over that pid's leaked fds for a range."""
        fds = self._at.get(ev.tgid)
        if not fds:
            return
        if ev.fd_lo == ev.fd_hi:
            inode = fds.get(ev.fd_lo)
            hits = [] if inode is None else [(ev.fd_lo, inode)]
        else:
            hits = [(fd, inode) for fd, inode in fds.items() if ev.fd_lo <= fd <= ev.fd_hi]
        for fd, inode in hits:
            pending = self._unsettled.get(inode)
            if pending is None:
                self._unsettled[inode] = _Unsettled(ev, [Holder(ev.tgid, fd)])
            else:
                pending.dropped.append(Holder(ev.tgid, fd))

    def settle(
        self,
        ch: Changes,
        still_holding: StillHolding,
        now_ns: int,
        rescan: Rescan | None = None,
    ) -> None:
        """Explain the fd drops of leaks that are still open.

        - the dropped fds still hold the socket: the syscall has not finished
          (the event is sent at its entry) or failed: wait, up to SETTLE_NS;
        - other known fds hold it (a dup, a forked child): say so (a CLOSE
          line), since no state change will; the leak ends if no target is
          among them;
        - no known fd holds it: the close released it and its exit event is
          on its way, or an fd closewait did not know holds it (a dup made
          after the last scan, fd passing): the holders' fd tables are read
          again (rescan, once for the whole batch); found, as above; not
          found after SETTLE_NS, the leak ends as released.
        """
        if not self._unsettled:
            return
        searching: list[tuple[Leak, _Unsettled, list[Holder]]] = []
        for inode, u in list(self._unsettled.items()):
            leak = self.leaks.get(inode)
            if leak is None:
                del self._unsettled[inode]  # ended, by its exit event most likely
                continue
            still = still_holding(leak)
            gone = [h for h in u.dropped if h not in still]
            if not gone:
                if now_ns - u.ev.ts_ns > SETTLE_NS:
                    del self._unsettled[inode]  # the drop failed (dup2 with a bad fd)
                continue
            if still:
                del self._unsettled[inode]
                self._release(leak, u.ev, gone, still, ch)
            else:
                searching.append((leak, u, gone))
        if not searching:
            return
        found = rescan({h.pid for lk, _u, _g in searching for h in lk.holders}) if rescan else {}
        for leak, u, gone in searching:
            new = [h for h in found.get(leak.inode, []) if h not in gone]
            if new:
                del self._unsettled[leak.inode]
                targets = [h for h in new if is_target(self.targets, h.pid)]
                self._release(leak, u.ev, gone, targets + [h for h in new if h not in targets], ch)
            elif rescan is not None and now_ns - u.ev.ts_ns > SETTLE_NS:
                # Searched, and nothing closewait can see holds it.
                del self._unsettled[leak.inode]
                self._end(leak, ch, self._dropped_end(leak, u.ev, gone, []))

    @property
    def unsettled(self) -> int:
        return len(self._unsettled)

    def _release(
        self, leak: Leak, ev: FdDrop, gone: list[Holder], still: list[Holder], ch: Changes
    ) -> None:
        """Some fds of a leak went, others hold it: a CLOSE line, new holders."""
        ch.released_fds.append(
            FdReleased(leak, ev.ts_ns, ev.tgid, ev.tid, ev.comm, gone[0].fd, ev.via, still)
        )
        self._set_holders(leak, still)
        if not any(is_target(self.targets, h.pid) for h in still):
            self._end(leak, ch, self._dropped_end(leak, ev, gone, still))

    @staticmethod
    def _dropped_end(leak: Leak, ev: FdDrop, gone: list[Holder], still: list[Holder]) -> LeakEnded:
        return LeakEnded(
            leak,
            ev.ts_ns,
            "released",
            exact=True,
            by_pid=ev.tgid,
            by_tid=ev.tid or None,  # 0: seen at a check, no thread known
            by_comm=ev.comm or None,
            by_fd=gone[0].fd if ev.fd_lo == ev.fd_hi else None,
            drop=ev.via,
            still_held=still,
        )

    def forget_holder(self, h: Holder, ts_ns: int, comm: str = "") -> None:
        """An fd the tracker trusted no longer holds its leak (seen by a
        check, not by an event: an fd closed by a path no probe sees, or
        reused between a scan and its marking): settle it like a drop."""
        inode = self.holds(h)
        if inode is not None and inode not in self._unsettled:
            ev = FdDrop(ts_ns, h.pid, 0, comm, "unseen", h.fd, h.fd)
            self._unsettled[inode] = _Unsettled(ev, [h])

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

    def tuple_key(self, leak: Leak) -> tuple[int, SockTuple]:
        """How the kernel names a socket known by tuple: (namespace, tuple),
        the namespace 0 when the kernel cannot read it."""
        return (leak.netns if self.netns_known else 0, leak.tuple)

    def _find(self, ev: LeftCloseWait) -> Leak | None:
        if ev.preexisting:
            assert ev.tuple is not None
            inode = self._by_tuple.get((ev.netns, ev.tuple))
        else:
            inode = self._by_sk.get(ev.sk)
        return self.leaks.get(inode) if inode is not None else None

    def _add(self, leak: Leak, ch: Changes) -> bool:
        """Register a new leak; True if the kernel can be asked to watch it."""
        self._sorted = None
        self.leaks[leak.inode] = leak
        self._index(leak, (), leak.holders)
        if leak.sk is not None:
            self._by_sk[leak.sk] = leak.inode
            return True
        key = self.tuple_key(leak)
        if key in self._ambiguous:
            return False
        other = self._by_tuple.get(key)
        if other is not None:
            # Two sockets the kernel would name alike (no BTF, one tuple in two
            # namespaces): watch neither; their ends are found by polling.
            self._ambiguous.add(key)
            del self._by_tuple[key]
            ch.unwatch.append(self.leaks[other])
            return False
        self._by_tuple[key] = leak.inode
        return True

    def _end(self, leak: Leak, ch: Changes, ended: LeakEnded, watched: bool = False) -> None:
        """Drop a leak and report its end; watched: the kernel already
        stopped watching it (its exit event came)."""
        self._sorted = None
        self.leaks.pop(leak.inode, None)
        self._unsettled.pop(leak.inode, None)
        self._index(leak, leak.holders, ())
        if leak.sk is not None:
            self._by_sk.pop(leak.sk, None)
        else:
            key = self.tuple_key(leak)
            if self._by_tuple.get(key) == leak.inode:
                del self._by_tuple[key]
        if not watched:
            ch.unwatch.append(leak)
        ch.ended.append(ended)

    def _set_holders(self, leak: Leak, holders: list[Holder]) -> None:
        old = leak.holders
        if leak.update(holders=holders):
            self._index(leak, old, holders)

    def _index(self, leak: Leak, old: Iterable[Holder], new: Iterable[Holder]) -> None:
        """Move leak's (pid, fd) entries from old to new holders."""
        new_set = set(new)
        for h in old:
            if h in new_set:
                continue
            fds = self._at.get(h.pid)
            if fds is not None and fds.get(h.fd) == leak.inode:
                del fds[h.fd]
                if not fds:
                    del self._at[h.pid]
                self.fd_dirty.add(h)
        old_set = set(old)
        for h in new_set - old_set:
            self._at.setdefault(h.pid, {})[h.fd] = leak.inode
            self.fd_dirty.add(h)

    @staticmethod
    def _released(leak: Leak, now: int, exited: set[int], others: list[Holder]) -> LeakEnded:
        """No target fd holds the socket any more, yet it is still in CLOSE_WAIT
        (held by `others`, or by something closewait cannot see)."""
        target_pids = {h.pid for h in leak.holders} - {h.pid for h in others}
        reason = "exited" if target_pids <= exited else "released"
        return LeakEnded(leak, now, reason, exact=False, still_held=others)


def _drop_covers(ev: LeftCloseWait, leak: Leak) -> bool:
    """Whether the closing thread's own fd drop covers every known holder of
    the socket (the usual close of a single-fd leak): then no readlink is
    needed to know that none holds it any more."""
    if ev.drop is None or ev.drop == "exit":
        return False
    return all(h.pid == ev.tgid and ev.fd_lo <= h.fd <= ev.fd_hi for h in leak.holders)


def _by_age(leak: Leak) -> tuple[int, int]:
    return (leak.fin_ns, leak.inode)
