"""What one report says beyond its leaks: totals, per-process trends,
groups, triage rows. Built by the engines, rendered by report/."""

from __future__ import annotations

from dataclasses import dataclass, field

from tracer.core.model import LatencyBucket, ProbeStats
from tracer.core.poolwaits import ProcessThreads
from tracer.core.trends import Group, Rate
from tracer.core.verdict import Verdict


@dataclass(frozen=True)
class ProcessTrend:
    """How fast a process leaks and when it runs out of file descriptors."""

    pid: int
    comm: str
    leaks: int
    open_fds: int | None
    fd_limit: int | None
    rate: Rate | None
    eta_s: float | None  # None: not growing, or unknown
    verdict: Verdict | None = None  # the most severe of its groups' (core/verdict.py)


@dataclass(frozen=True)
class Summary:
    """Totals of one report."""

    wall: float  # time.time() of the report
    now_ns: int  # CLOCK_MONOTONIC of the report, the clock of every *_ns
    elapsed_s: float
    targets: dict[int, str]  # live target pid -> comm ({} with --all)
    all_processes: bool
    new: int
    ended: int
    stats: ProbeStats
    final: bool = False
    exited: dict[int, str] = field(default_factory=dict)
    unheld: int | None = None  # CLOSE_WAIT sockets no process holds (None: not counted)
    namespaces: int | None = None  # network namespaces queried (snapshot)
    processes: list[ProcessTrend] = field(default_factory=list)
    groups: list[Group] = field(default_factory=list)
    latency: list[LatencyBucket] = field(default_factory=list)  # final report only
    # --threads: the latest look at each leaking process's threads; one
    # taken for this report has taken_ns == now_ns.
    threads: list[ProcessThreads] = field(default_factory=list)


@dataclass(frozen=True)
class ProcessRank:
    """One row of the triage view: a process and its leaks."""

    pid: int
    comm: str
    leaks: int
    oldest_s: float
    open_fds: int | None
    fd_limit: int | None
    container: str | None
