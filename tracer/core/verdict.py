"""Is a connection pool exhausted? A verdict per group of leaks: pure logic.

A bounded pool whose connections all leaked stops connecting: every
connection is leased forever, none comes back, and the threads that want one
block. So a process's group of leaks to a peer is `exhausted` when it holds
N > 0 leaked connections to that peer, has opened none to it for a while
(the kernel counts its connect()s to the peer), and holds no ESTABLISHED
connection to it any more (sock_diag). Otherwise the group's count over the
same window says whether it is `growing` (new leaks keep coming: an
unbounded pool, or a new connection per request), `steady` (flat) or
`draining` (leaks are being closed, late).

The engine (tracer/engine/pools.py) gathers the inputs; report/ words them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from tracer.core.model import NS_PER_S

EXHAUSTED = "exhausted"
GROWING = "growing"
STEADY = "steady"
DRAINING = "draining"
#: Most severe first: with several processes in a group, the group takes the
#: most severe of their verdicts.
SEVERITY = (EXHAUSTED, GROWING, STEADY, DRAINING)

#: "No new connection for a while" means at least this long, and at least
#: QUIET_INTERVALS reports: a pool busy with slow requests may not connect
#: for a few seconds without being stuck.
MIN_QUIET_S = 10.0
QUIET_INTERVALS = 3


def window_s(interval_s: float) -> float:
    """The window of every verdict: max(3 intervals, 10 s)."""
    return max(QUIET_INTERVALS * interval_s, MIN_QUIET_S)


class PeerKey(NamedTuple):
    """A process and a peer it connects to (the kernel's peer_connects key)."""

    pid: int
    family: int
    ip: str
    port: int


@dataclass(frozen=True)
class PeerActivity:
    """What the engine knows of one process's connections to one peer."""

    counted_since_ns: int  # since when the kernel counts its connect()s to the peer
    last_connect_ns: int | None  # its latest connect() known (None: none seen)
    established: int | None  # ESTABLISHED connections it holds to the peer (None: not checked)
    # Its leaks to the peer that ended (closed late) since that last connect:
    # they were in the pool then, and their slot never came back.
    ended_since_connect: int = 0

    def quiet_s(self, now_ns: int) -> float:
        """How long it provably opened no connection to the peer."""
        since = max(self.counted_since_ns, self.last_connect_ns or 0)
        return max(0, now_ns - since) / NS_PER_S


def is_candidate(activity: PeerActivity, now_ns: int, window: float) -> bool:
    """Quiet long enough that the ESTABLISHED check is worth its sock_diag dump."""
    return activity.quiet_s(now_ns) >= window


@dataclass(frozen=True)
class Verdict:
    kind: str  # one of SEVERITY
    pid: int  # the process it is about
    endpoint: str  # the group's peer (or local service)
    leaks: int  # that process's leaks in the group
    change: int  # the group's leaks now minus window_s ago
    window_s: float  # the span the change covers: the window, or less just after attach
    quiet_s: float | None = None  # no connect() to the peer for this long (None: not counted)
    established: int | None = None  # ESTABLISHED connections left (None: not checked)
    pool: int = 0  # exhausted: the pool's probable size (leaks + those closed late since)
    full_window: bool = True  # False: watched for less than a window so far


def judge(
    side: str,
    endpoint: str,
    leaks_by_pid: Mapping[int, int],
    change: int,
    activity: Mapping[int, PeerActivity],
    now_ns: int,
    window: float,
    observed_s: float | None = None,
) -> list[Verdict]:
    """The verdicts of one group (side "remote": a peer; "local": a service
    port), one per process holding its leaks; the group's own is the most
    severe (most_severe).

    `leaks_by_pid`: the group's leaks per holding process; `change`: the
    group's leaks now minus `window` seconds ago; `activity`: per process,
    its connects to the peer (remote groups only); `observed_s`: how long
    the group has been watched, when less than the window (just after
    attach): the change covers only that. A group seen once has no verdict:
    no change can be told from one sample.
    """
    span = window if observed_s is None else min(window, observed_s)
    if span <= 0:
        return []
    verdicts = []
    for pid, n in leaks_by_pid.items():
        act = activity.get(pid) if side == "remote" else None
        quiet = None if act is None else act.quiet_s(now_ns)
        established = None if act is None else act.established
        if n > 0 and quiet is not None and quiet >= window and established == 0:
            kind = EXHAUSTED
        else:
            kind = GROWING if change > 0 else DRAINING if change < 0 else STEADY
        pool = n + (act.ended_since_connect if act is not None else 0)
        covered = window if kind == EXHAUSTED else span
        verdicts.append(
            Verdict(
                kind, pid, endpoint, n, change, covered, quiet, established, pool, span >= window
            )
        )
    return verdicts


class GroupCounts:
    """Each group's leak count at every report, for as long as a window: how
    many more (or fewer) leaks it has than a window ago."""

    def __init__(self) -> None:
        self._samples: dict[object, deque[tuple[int, int]]] = {}

    def add(self, counts: Mapping[object, int], now_ns: int, window: float) -> None:
        """One sample per group; groups absent from `counts` are forgotten."""
        keep_ns = int(2 * window * NS_PER_S)
        for key in [k for k in self._samples if k not in counts]:
            del self._samples[key]
        for key, n in counts.items():
            q = self._samples.setdefault(key, deque())
            q.append((now_ns, n))
            while len(q) > 2 and now_ns - q[1][0] >= keep_ns:
                q.popleft()

    def observed_s(self, key: object, now_ns: int) -> float:
        """How long the group has been sampled (0: once, or never)."""
        q = self._samples.get(key)
        return (now_ns - q[0][0]) / NS_PER_S if q else 0.0

    def change(self, key: object, now_ns: int, window: float) -> int:
        """Leaks now minus the count a window ago (or at the first sample, if
        the group is younger than that)."""
        q = self._samples.get(key)
        if not q:
            return 0
        then_ns = now_ns - int(window * NS_PER_S)
        then = q[0][1]
        for t, n in q:
            if t > then_ns:
                break
            then = n
        return q[-1][1] - then


def most_severe(verdicts: Iterable[Verdict]) -> Verdict | None:
    """The most severe verdict (then the one with most leaks); None if none."""
    return min(verdicts, key=lambda v: (SEVERITY.index(v.kind), -v.leaks, v.pid), default=None)
