"""The snapshot engine: the leaks that exist right now, without BPF.

sock_diag (in every namespace the targets live in) and /proc only, so it
works where BCC, kernel headers or bpf() are missing, and answers in the
first second of an incident. Ages are estimates from tcp_info (see
correlate.estimated_fin_ns). Every process's fds are scanned, so each leak
lists all its holders and sockets no process holds are counted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from tracer.core.containers import container_of
from tracer.core.correlate import Observation
from tracer.core.model import Leak
from tracer.core.summary import ProcessRank
from tracer.core.tracker import LeakTracker
from tracer.system import procfs
from tracer.system.gather import dump_close_wait, process_facts
from tracer.system.sockdiag import DiagPool
from tracer.system.targets import Targets


@dataclass
class Snapshot:
    leaks: list[Leak]
    now_ns: int
    wall: float
    unheld: int
    namespaces: int
    problems: list[str] = field(default_factory=list)
    unreadable_pids: list[int] = field(default_factory=list)
    seconds: float = 0.0


def take(targets: Targets, min_age_s: float = 0.0) -> Snapshot:
    """Read the system once and return every leak of the targets."""
    t0 = time.monotonic()
    pool = DiagPool()
    try:
        poll = targets.poll()
        dump = dump_close_wait(pool, poll)
    finally:
        pool.close()
    unreadable: list[int] = []
    in_cw = {d.inode for d in dump.diag}
    holders = procfs.holders_of(procfs.all_pids(), unreadable, wanted=in_cw)
    procs = process_facts(h.pid for hs in holders.values() for h in hs)
    now = time.monotonic_ns()
    tracker = LeakTracker(min_age_s, attach_ns=now)
    changes = tracker.update(
        Observation(
            now_ns=now,
            kernel={},
            diag=dump.diag,
            holders=holders,
            procs=procs,
            queried_netns=dump.queried,
            targets=None if targets.all_processes else frozenset(poll.pids),
            holders_complete=not unreadable,
        ),
        lambda _leak: [],
    )
    return Snapshot(
        leaks=tracker.sorted_leaks(),
        now_ns=now,
        wall=time.time(),
        unheld=changes.unheld,
        namespaces=len(dump.queried),
        problems=dump.problems,
        unreadable_pids=unreadable,
        seconds=time.monotonic() - t0,
    )


def rank_processes(snap: Snapshot) -> list[ProcessRank]:
    """Processes by leaked sockets, with how close they are to their fd limit:
    the triage view for an SRE who does not know the culprit yet."""
    by_pid: dict[int, list[Leak]] = {}
    for lk in snap.leaks:
        for pid in {h.pid for h in lk.holders}:
            by_pid.setdefault(pid, []).append(lk)
    ranks = []
    for pid, leaks in by_pid.items():
        any_leak = leaks[0]
        ranks.append(
            ProcessRank(
                pid=pid,
                comm=any_leak.proc(pid).comm,
                leaks=len(leaks),
                oldest_s=max(lk.age_s(snap.now_ns) for lk in leaks),
                open_fds=procfs.open_fd_count(pid),
                fd_limit=procfs.fd_limit(pid),
                container=container_of(any_leak.proc(pid).cgroup),
            )
        )
    return sorted(ranks, key=lambda r: (-r.leaks, -r.oldest_s, r.pid))
