"""`closewait snapshot`: the command, one read of the host and one report."""

from __future__ import annotations

import click

from tracer.cli.options import (
    CONTEXT,
    DURATION,
    EXIT_CODES_EPILOG,
    require_targets,
    target_options,
)
from tracer.core.model import ProbeStats
from tracer.core.summary import Summary
from tracer.engine import gcpause
from tracer.engine.snapshot import Snapshot, rank_processes, take
from tracer.kernel import preflight
from tracer.report.output import Output
from tracer.system.targets import Targets


@click.command(context_settings=CONTEXT, epilog=EXIT_CODES_EPILOG)
@target_options("inspect")
@click.option(
    "--min-age",
    type=DURATION,
    default="0",
    show_default=True,
    help="Only sockets at least this long in CLOSE_WAIT (estimated).",
)
@click.option(
    "--leaks-only",
    is_flag=True,
    help="With --all, skip the per-process triage table and list leaks only.",
)
@click.option("--json", "json_lines", is_flag=True, help="JSON lines instead of tables.")
def snapshot(
    pids: tuple[int, ...], all_processes: bool, min_age: float, leaks_only: bool, json_lines: bool
) -> None:
    """List the sockets in CLOSE_WAIT that PID holds now, without BPF.

    Works where BCC, kernel headers or bpf() are missing: it reads sock_diag
    (in every network namespace of the targets) and /proc. AGE is estimated
    from tcp_info (~). Every process's fds are scanned, so each leak lists all
    its holders; sockets no process holds are counted. With --all, a triage
    table ranks processes by leaked sockets, with open fds and fd limit.
    """
    require_targets(pids, all_processes)
    run_snapshot(pids, all_processes, min_age, json_lines, triage=all_processes and not leaks_only)


def run_snapshot(
    pids: tuple[int, ...], all_processes: bool, min_age_s: float, json_lines: bool, triage: bool
) -> None:
    """The `snapshot` command: root check, one read, one report."""
    preflight.require(preflight.check_root, preflight.check_pyroute2)
    targets = Targets(pids, all_processes)
    gcpause.off_for_good()
    snap = take(targets, min_age_s)
    _print(snap, targets, Output(json_lines, view="snapshot"), triage)


def _print(snap: Snapshot, targets: Targets, out: Output, triage: bool) -> None:
    notes = list(snap.problems)
    if snap.unreadable_pids:
        notes.append(f"{len(snap.unreadable_pids)} processes' fds could not be read (permissions)")
    for gone, comm in targets.exited.items():
        notes.append(f"pid {gone} ({comm}) exited during the scan")
    for note in notes:
        out.notice(note)
    if triage:
        out.processes(rank_processes(snap), snap.wall)
    out.report(
        snap.leaks,
        Summary(
            wall=snap.wall,
            now_ns=snap.now_ns,
            elapsed_s=snap.seconds,
            targets=targets.live,
            all_processes=targets.all_processes,
            new=len(snap.leaks),
            ended=0,
            stats=ProbeStats(),
            final=True,
            exited=dict(targets.exited),
            unheld=snap.unheld,
            namespaces=snap.namespaces,
        ),
    )
