"""How bad and how fast: leak growth rates, fd-exhaustion forecasts, per-peer
groups. Pure logic over timestamps given by the caller, tested without a
kernel or a clock.
"""

from __future__ import annotations

import re
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from tracer.core.model import NS_PER_S, Leak, leaks_per_pid
from tracer.core.verdict import Verdict

#: Counts older than this do not weigh on the rate: a leak that started an
#: hour ago and stopped should not be forecast to continue.
RATE_WINDOW_S = 300.0
#: Below this window (or this many samples) a rate is printed as rough.
MIN_RELIABLE_WINDOW_S = 60.0
MIN_RELIABLE_SAMPLES = 5
#: Slower growth than this counts as "not growing".
NOT_GROWING_PER_MIN = 0.05


@dataclass(frozen=True)
class Rate:
    """Net leaked sockets per minute, and how much evidence it rests on."""

    per_min: float
    window_s: float
    samples: int

    @property
    def reliable(self) -> bool:
        return self.window_s >= MIN_RELIABLE_WINDOW_S and self.samples >= MIN_RELIABLE_SAMPLES

    @property
    def growing(self) -> bool:
        return self.per_min > NOT_GROWING_PER_MIN


class CountHistory:
    """Leak counts of one process over time; its growth rate by least squares.

    The slope of a least-squares line through (time, open leaks) is the net
    leak rate: new leaks minus leaks closed late. It is robust to the bursty
    arrival of detections (a refresh finds several at once) where a
    first-to-last difference is not.
    """

    def __init__(self, window_s: float = RATE_WINDOW_S) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, t_s: float, count: int) -> None:
        self._samples.append((t_s, count))
        while self._samples and t_s - self._samples[0][0] > self.window_s:
            self._samples.popleft()

    def rate(self) -> Rate | None:
        n = len(self._samples)
        if n < 2:
            return None
        ts = [t for t, _ in self._samples]
        cs = [c for _, c in self._samples]
        t_mean = sum(ts) / n
        c_mean = sum(cs) / n
        var = sum((t - t_mean) ** 2 for t in ts)
        if var == 0:
            return None
        slope = sum((t - t_mean) * (c - c_mean) for t, c in zip(ts, cs)) / var
        return Rate(per_min=slope * 60, window_s=ts[-1] - ts[0], samples=n)


def fd_exhaustion_eta_s(
    open_fds: int | None, fd_limit: int | None, rate: Rate | None
) -> float | None:
    """Seconds until open fds reach the soft limit at this rate; None when not growing
    or unknown. Assumes the rest of the process's fd use stays flat."""
    if open_fds is None or fd_limit is None or rate is None or not rate.growing:
        return None
    return max(0, fd_limit - open_fds) / (rate.per_min / 60)


_TRAILING_NUMBER = re.compile(r"\d+$")


def thread_pattern(names: Iterable[str]) -> str:
    """Summarise thread names: `pool-1-thread-*` when they differ only by a
    trailing number, else the most common ones."""
    counts = Counter(names)
    if not counts:
        return "-"
    if len(counts) == 1:
        return next(iter(counts))
    stems = {_TRAILING_NUMBER.sub("", n) for n in counts}
    if len(stems) == 1:
        return stems.pop() + "*"
    top = [n for n, _ in counts.most_common(2)]
    more = len(counts) - len(top)
    return ", ".join(top) + (f" (+{more} more)" if more else "")


def is_ephemeral(port: int, port_range: tuple[int, int]) -> bool:
    return port_range[0] <= port <= port_range[1]


def group_key(leak: Leak, port_range: tuple[int, int]) -> tuple[str, str]:
    """(side, endpoint) a leak is grouped under.

    Client sockets (connect()ed) group by the peer they talk to; server
    sockets (accepted) by the local port clients came to. When the kernel did
    not see the connection open, the ephemeral port range tells which end is
    the client's.
    """
    t, c = leak.tuple, leak.creator
    if c is not None:
        accepted = c.accepted
    else:
        accepted = is_ephemeral(t.remote_port, port_range) and not is_ephemeral(
            t.local_port, port_range
        )
    # The leak's own endpoint strings: one object per endpoint, not per call.
    return ("local", leak.local) if accepted else ("remote", leak.remote)


@dataclass(frozen=True)
class Group:
    """Leaks sharing a peer (or a local service port)."""

    side: str
    endpoint: str
    leaks: int
    oldest_s: float
    newest_s: float
    per_min: float | None  # leaks that started during the watch, per minute
    opened_by: str
    by_pid: dict[int, int] = field(default_factory=dict)  # leaks per holding process
    verdict: Verdict | None = None  # set by the watch engine (tracer/engine/pools.py)


class GroupStarts:
    """Per group, how many leaks started (got their FIN) since attach, ended
    ones included: the numerator of a group's leaks per minute."""

    def __init__(self, attach_ns: int, port_range: tuple[int, int]) -> None:
        self.attach_ns = attach_ns
        self.port_range = port_range
        self.started: Counter[tuple[str, str]] = Counter()
        self._keys: dict[tuple[str, str], tuple[str, str]] = {}

    def add(self, new_leaks: Iterable[Leak]) -> None:
        for lk in new_leaks:
            if lk.fin_ns >= self.attach_ns:
                self.started[group_key(lk, self.port_range)] += 1

    def groups(self, leaks: Sequence[Leak], now_ns: int) -> list[Group]:
        """Current groups, biggest first."""
        members: dict[tuple[str, str], list[Leak]] = {}
        for lk in leaks:
            key = lk.group
            if key is None:  # a leak's group never changes: computed once,
                key = group_key(lk, self.port_range)
                # and one tuple per group is shared by its leaks (100,000
                # leaks of a few groups would otherwise keep 100,000 tuples).
                if len(self._keys) > 65536:
                    self._keys.clear()
                key = lk.group = self._keys.setdefault(key, key)
            members.setdefault(key, []).append(lk)
        minutes = (now_ns - self.attach_ns) / NS_PER_S / 60
        out = []
        for key, lks in members.items():
            fins = [lk.fin_ns for lk in lks]
            openers = [lk.creator.comm for lk in lks if lk.creator and not lk.creator.accepted]
            out.append(
                Group(
                    side=key[0],
                    endpoint=key[1],
                    leaks=len(lks),
                    oldest_s=max(0, now_ns - min(fins)) / NS_PER_S,
                    newest_s=max(0, now_ns - max(fins)) / NS_PER_S,
                    per_min=self.started[key] / minutes if minutes > 0 else None,
                    opened_by=thread_pattern(openers) if openers else "-",
                    by_pid=leaks_per_pid(lks),
                )
            )
        return sorted(out, key=lambda g: (-g.leaks, g.side, g.endpoint))


def log2_bucket_bounds(slot: int) -> tuple[int, int]:
    """[low, high) microseconds of a slot filled with BCC's bpf_log2l(v), which is
    floor(log2(v)) + 1 (and 1 for v == 0): slot k holds [2**(k-1), 2**k),
    slot 1 holds 0 and 1, as BCC's print_log2_hist shows them."""
    if slot <= 1:
        return (0, 2)
    return (1 << (slot - 1), 1 << slot)
