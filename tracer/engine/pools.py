"""Pool diagnosis for the watch engine: the inputs of each group's verdict.

Once per report, for the groups of leaks the watcher just built:
- the (process, peer) pairs with leaks ("suspects") are handed to the
  kernel, which counts their connect()s from then on (peer_connects), so a
  healthy connection to any other peer costs one hash lookup;
- a pair quiet for the whole window (no connect() since counting began, nor
  since its newest leak was opened) is a candidate: its namespace's
  ESTABLISHED sockets are dumped (sock_diag, once per namespace per report)
  and those to the peer whose inode the process holds are counted. Only
  candidates pay for that, so its cost is bounded by the suspects;
- tracer.core.verdict judges each group.

With --threads, tracer/engine/threads.py looks at the waiting threads.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

from tracer.core.model import Leak, LeakEnded
from tracer.core.trends import Group
from tracer.core.verdict import (
    GroupCounts,
    PeerActivity,
    PeerKey,
    Verdict,
    is_candidate,
    judge,
    most_severe,
    window_s,
)
from tracer.kernel.probe import KernelProbe
from tracer.system import procfs
from tracer.system.fdindex import FdIndex
from tracer.system.sockdiag import TCP_ESTABLISHED, DiagPool, NetnsUnavailable


class PoolWatch:
    """Verdicts per group across reports (one per Watcher)."""

    def __init__(self, probe: KernelProbe, diag: DiagPool, fds: FdIndex, interval_s: float) -> None:
        self.probe = probe
        self.diag = diag
        self.fds = fds
        self.window = window_s(interval_s)
        self.counts = GroupCounts()  # per group: its change over the window
        self._ended: dict[PeerKey, list[int]] = {}  # when each pair's leaks ended
        self._since: dict[PeerKey, int] = {}  # when the kernel began counting each pair
        self.by_pid: dict[int, Verdict] = {}  # the most severe verdict of each process

    def judge(self, groups: list[Group], leaks: Sequence[Leak], now_ns: int) -> list[Group]:
        """The groups, each with its verdict."""
        newest, peers = _suspects(leaks)
        counted = self.probe.count_connects(set(newest))
        self._since = {k: self._since.get(k, now_ns) for k in counted}
        self._ended = {k: v for k, v in self._ended.items() if k in counted}
        kernel = self.probe.read_connects()
        established = _EstablishedCounter(self.diag, self.fds)
        activity: dict[PeerKey, PeerActivity] = {}
        for key in counted:
            n, last_ns = kernel.get(key, (0, 0))
            last = max(last_ns if n else 0, newest[key]) or None
            since = max(last or 0, self._since[key])
            late = sum(1 for t in self._ended.get(key, ()) if t >= since)
            act = PeerActivity(self._since[key], last, None, late)
            if is_candidate(act, now_ns, self.window):
                act = replace(act, established=established.count(key))
            activity[key] = act
        self.counts.add({(g.side, g.endpoint): g.leaks for g in groups}, now_ns, self.window)
        out, verdicts_of = [], {}
        for g in groups:
            peer = peers.get((g.side, g.endpoint))
            acts = {}
            if peer is not None:
                for pid in g.by_pid:
                    act = activity.get(PeerKey(pid, *peer))
                    if act is not None:
                        acts[pid] = act
            key = (g.side, g.endpoint)
            change = self.counts.change(key, now_ns, self.window)
            observed = self.counts.observed_s(key, now_ns)
            verdicts = judge(
                g.side, g.endpoint, g.by_pid, change, acts, now_ns, self.window, observed
            )
            for v in verdicts:
                verdicts_of.setdefault(v.pid, []).append(v)
            out.append(replace(g, verdict=most_severe(verdicts)))
        self.by_pid = {pid: v for pid, vs in verdicts_of.items() if (v := most_severe(vs))}
        return out

    def ended(self, ends: Iterable[LeakEnded]) -> None:
        """Leaks that ended: those closed late never gave their pool slot back."""
        for e in ends:
            key = _peer_key(e.leak)
            if key is not None:
                times = self._ended.setdefault(key, [])
                times.append(e.ts_ns)
                del times[:-1024]


def _peer_key(lk: Leak) -> PeerKey | None:
    """The (process, peer) pair of a client leak (None: a server's)."""
    if lk.group is None or lk.group[0] != "remote":
        return None
    t = lk.tuple
    return PeerKey(lk.pid, t.family, t.remote_ip, t.remote_port)


def _suspects(
    leaks: Sequence[Leak],
) -> tuple[dict[PeerKey, int], dict[tuple[str, str], tuple[int, str, int]]]:
    """(process, peer) pairs of client leaks -> the newest opening the kernel
    saw by that process (0: none); and each client group's peer address."""
    newest: dict[PeerKey, int] = {}
    peers: dict[tuple[str, str], tuple[int, str, int]] = {}
    for lk in leaks:
        key = _peer_key(lk)
        if key is None:
            continue
        c = lk.creator
        peers[lk.group] = key[1:]
        opened = c.opened_ns if c is not None and c.tgid == lk.pid else 0
        if newest.get(key, -1) < opened:
            newest[key] = opened
    return newest, peers


class _EstablishedCounter:
    """ESTABLISHED connections a process holds to a peer, one dump per namespace."""

    def __init__(self, diag: DiagPool, fds: FdIndex) -> None:
        self.diag = diag
        self.fds = fds
        self._dumps: dict[int, list] = {}

    def count(self, key: PeerKey) -> int | None:
        """None when it cannot be known (the process is gone, its namespace or
        fds cannot be read): then no verdict says exhausted."""
        try:
            netns = procfs.netns_inode(key.pid)
            conns = self._dumps.get(netns)
            if conns is None:
                conns = self._dumps[netns] = self.diag.connections(
                    netns, key.pid, 1 << TCP_ESTABLISHED
                )
        except (procfs.ProcessGone, procfs.ProcessHidden, NetnsUnavailable, OSError):
            return None
        to_peer = {
            inode
            for t, inode in conns
            if t.remote_port == key.port and t.remote_ip == key.ip and t.family == key.family
        }
        if not to_peer:
            return 0
        held = _held(self.fds, key.pid)
        return None if held is None else len(to_peer & held)


def _held(fds: FdIndex, pid: int) -> set[int] | None:
    """Socket inodes of pid: from the fd index (kept up to date for the
    targets), else read now."""
    held = fds.socket_inodes(pid)
    if held is not None:
        return held
    try:
        return set(procfs.socket_fds(pid).values())
    except (procfs.ProcessGone, procfs.ProcessHidden):
        return None
