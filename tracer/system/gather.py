"""Reading the system for one report, shared by `watch` and `snapshot`.

Everything here is I/O over sock_diag and /proc, and every failure a live
system produces (a process exiting mid-read, a namespace that cannot be
entered) becomes a counted skip with a reason, never an exception.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from tracer.core.model import DiagSock, ProcInfo
from tracer.system import procfs
from tracer.system.sockdiag import DiagPool, NetnsUnavailable
from tracer.system.targets import TargetPoll, Targets


@dataclass
class CloseWaitDump:
    """The CLOSE_WAIT sockets of every namespace the targets live in."""

    diag: list[DiagSock] = field(default_factory=list)
    queried: set[int] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)  # namespaces skipped, and why


def dump_close_wait(pool: DiagPool, poll: TargetPoll) -> CloseWaitDump:
    """Query each namespace once, through one of its processes."""
    out = CloseWaitDump()
    if poll.hidden:
        pids = ", ".join(map(str, poll.hidden[:5])) + (", ..." if len(poll.hidden) > 5 else "")
        out.problems.append(
            f"cannot read the network namespace of {len(poll.hidden)} process(es) "
            f"(pid {pids}): permission denied; their sockets are seen only if "
            "another process shares that namespace"
        )
    for netns, pid in poll.namespaces.items():
        try:
            out.diag.extend(pool.close_wait(netns, pid))
            out.queried.add(netns)
        except (NetnsUnavailable, OSError) as exc:
            out.problems.append(f"cannot query network namespace {netns} via pid {pid}: {exc}")
    pool.retain(set(poll.namespaces))
    return out


def holder_scope(targets: Targets, poll: TargetPoll) -> list[int]:
    """Processes whose fds are scanned: every process with --all; otherwise the
    targets and their descendants, which may have inherited the targets'
    sockets across fork()."""
    if targets.all_processes:
        return poll.pids
    return procfs.with_descendants(poll.pids)


def process_facts(pids: Iterable[int]) -> dict[int, ProcInfo]:
    """Name and cgroup path of each pid that still exists."""
    out: dict[int, ProcInfo] = {}
    for pid in set(pids):
        try:
            out[pid] = ProcInfo(procfs.comm(pid), procfs.cgroup_path(pid))
        except procfs.ProcessGone:
            continue
    return out
