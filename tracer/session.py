"""Set up a watch session in the order that fails fastest and clearest.

root -> targets exist -> BCC, tracepoints, headers, bpf() -> compile and
attach -> loop. Whatever was set up is torn down on the way out: the BPF
programs are detached even when the loop ends by an exception.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from tracer import preflight
from tracer.escape import printable
from tracer.output import Output
from tracer.targets import Targets


@dataclass(frozen=True)
class WatchRequest:
    pids: tuple[int, ...]
    all_processes: bool
    interval_s: float
    min_age_s: float
    duration_s: float | None
    json_lines: bool
    rows: int | None = None  # leak rows per table report (None: all)
    max_sockets: int = 65536
    max_conns: int = 65536
    buffer_pages: int | None = None
    perf_buffer: bool = False


def status_line(message: str) -> None:
    """Progress for people, on stderr so that stdout stays parseable."""
    sys.stderr.write(f"closewait: {message}\n")
    sys.stderr.flush()


def run_watch(req: WatchRequest) -> None:
    t0 = time.monotonic()
    preflight.require(preflight.check_root)
    targets = Targets(req.pids, req.all_processes)
    warnings = preflight.require_tracer()
    for w in warnings:
        status_line(f"warning: {w.detail}")

    from tracer.kernel_probe import KernelProbe, ProbeConfig
    from tracer.watch import StopFlag, Watcher, WatchOptions, run

    stop = StopFlag()
    stop.install()
    config = ProbeConfig(
        max_sockets=req.max_sockets,
        max_conns=req.max_conns,
        buffer_pages=req.buffer_pages,
        filter_pids=not req.all_processes,
        ring_buffer=False if req.perf_buffer else None,
    )
    with KernelProbe(config) as probe:
        watcher = Watcher(probe, targets, req.min_age_s)
        try:
            who = (
                "every process"
                if req.all_processes
                else ", ".join(f"pid {p} ({printable(c)})" for p, c in targets.live.items())
            )
            status_line(
                f"tracing {who}; attached in {time.monotonic() - t0:.2f}s; "
                "Ctrl-C for the final report"
            )
            options = WatchOptions(req.interval_s, req.min_age_s, req.duration_s)
            run(watcher, options, Output(req.json_lines, rows=req.rows), stop)
        finally:
            watcher.close()
