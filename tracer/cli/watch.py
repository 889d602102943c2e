"""`closewait watch`: the command, and the session it runs.

Set-up goes in the order that fails fastest and clearest: root -> targets
exist -> BCC, tracepoints, headers, bpf() -> compile and attach -> loop.
Whatever was set up is torn down on the way out: the BPF programs are
detached even when the loop ends by an exception. `closewait demo` runs the
same session (attached() and watch_targets()) around its own workload.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import click

from tracer.cli.options import (
    CONTEXT,
    DURATION,
    EXIT_CODES_EPILOG,
    probe_options,
    require_targets,
    target_options,
    threads_option,
    timing_options,
)
from tracer.kernel import preflight
from tracer.kernel.config import DEFAULT_MAX_CONNS, DEFAULT_MAX_SOCKETS, ProbeConfig
from tracer.report.escape import printable
from tracer.report.output import Output
from tracer.system.targets import Targets


@dataclass(frozen=True)
class WatchRequest:
    """Everything a watch session was asked for, from the command line or the demo."""

    pids: tuple[int, ...]
    all_processes: bool
    interval_s: float
    min_age_s: float
    duration_s: float | None
    json_lines: bool
    rows: int | None = None  # leak rows per table report (None: all)
    max_sockets: int = DEFAULT_MAX_SOCKETS
    max_conns: int = DEFAULT_MAX_CONNS
    buffer_pages: int | None = None
    perf_buffer: bool = False
    debug: bool = False  # print BCC's compiler output
    threads: bool = False  # --threads: look at the leaking processes' threads

    def probe_config(self) -> ProbeConfig:
        """The one place a watch's ProbeConfig is assembled (watch, --ebpf, demo)."""
        return ProbeConfig(
            max_sockets=self.max_sockets,
            max_conns=self.max_conns,
            buffer_pages=self.buffer_pages,
            filter_pids=not self.all_processes,
            ring_buffer=False if self.perf_buffer else None,
        )


def status_line(message: str) -> None:
    """Progress for people, on stderr so that stdout stays parseable."""
    sys.stderr.write(f"closewait: {message}\n")
    sys.stderr.flush()


@contextlib.contextmanager
def attached(req: WatchRequest) -> Iterator[tuple[object, object]]:
    """Check what loading needs, compile and attach; yield (probe, stop flag).
    The caller has checked root (and its targets) first: those fail faster."""
    for w in preflight.require_tracer():
        status_line(f"warning: {w.detail}")

    from tracer.engine.loop import StopFlag
    from tracer.kernel.probe import KernelProbe

    stop = StopFlag()
    stop.install()
    with KernelProbe(req.probe_config(), verbose=req.debug) as probe:
        if not probe.ring_buffer:
            pages, cpus = probe.config.pages, os.cpu_count() or 1
            status_line(
                f"events through the perf buffer (no BPF ring buffer): {pages} pages on "
                f"each of {cpus} CPUs ({pages * 4096 * cpus / 2**20:.0f} MB locked in all)"
            )
        yield probe, stop


def watch_targets(probe, targets: Targets, req: WatchRequest, stop) -> object:
    """Run the watch loop over targets until it ends; return the Watcher."""
    from tracer.engine.loop import WatchOptions, run
    from tracer.engine.watcher import Watcher

    watcher = Watcher(probe, targets, req.min_age_s, interval_s=req.interval_s, threads=req.threads)
    try:
        options = WatchOptions(req.interval_s, req.min_age_s, req.duration_s)
        run(watcher, options, Output(req.json_lines, rows=req.rows), stop)
    finally:
        watcher.close()
    return watcher


def who_is_watched(targets: Targets) -> str:
    if targets.all_processes:
        return "every process"
    return ", ".join(f"pid {p} ({printable(c)})" for p, c in targets.live.items())


def run_watch(req: WatchRequest) -> None:
    t0 = time.monotonic()
    preflight.require(preflight.check_root)
    targets = Targets(req.pids, req.all_processes)
    with attached(req) as (probe, stop):
        status_line(
            f"tracing {who_is_watched(targets)}; attached in {time.monotonic() - t0:.2f}s; "
            "Ctrl-C for the final report"
        )
        watch_targets(probe, targets, req, stop)


@click.command(context_settings=CONTEXT, epilog=EXIT_CODES_EPILOG)
@target_options("watch")
@timing_options("reports")
@click.option("-d", "--duration", type=DURATION, default=None, help="Stop after this long.")
@click.option("--json", "json_lines", is_flag=True, help="JSON lines instead of a table.")
@click.option(
    "--rows",
    type=click.IntRange(0),
    default=100,
    show_default=True,
    help="Leak rows per table report, oldest first (0: all). JSON lists every leak.",
)
@threads_option
@probe_options
@click.pass_context
def watch(
    ctx: click.Context,
    pids: tuple[int, ...],
    all_processes: bool,
    interval: float,
    min_age: float,
    duration: float | None,
    json_lines: bool,
    rows: int,
    max_sockets: int,
    max_conns: int,
    buffer_pages: int | None,
    perf_buffer: bool,
    ebpf: bool,
    threads: bool,
) -> None:
    """Report, live, the sockets of PID in CLOSE_WAIT that it never closed.

    Each report lists the leaking file descriptors oldest first: PID, COMM,
    FD, endpoints, AGE since the peer's FIN (~ marks an estimate, for sockets
    already in CLOSE_WAIT when tracing began), unread bytes (RECV-Q) and the
    thread that opened the connection. A line is printed when a leak ends.
    Stops on Ctrl-C, SIGTERM, --duration or when every PID has exited.
    """
    req = request_or_print(
        ctx,
        ebpf,
        pids=pids,
        all_processes=all_processes,
        interval_s=interval,
        min_age_s=min_age,
        duration_s=duration,
        json_lines=json_lines,
        rows=rows or None,
        max_sockets=max_sockets,
        max_conns=max_conns,
        buffer_pages=buffer_pages,
        perf_buffer=perf_buffer,
        threads=threads,
    )
    if req is not None:
        require_targets(pids, all_processes)
        run_watch(req)


def request_or_print(ctx: click.Context, ebpf: bool, **fields: object) -> WatchRequest | None:
    """The WatchRequest of a command that loads the program (watch, exporter);
    None once --ebpf printed the program instead (no targets needed for that)."""
    req = WatchRequest(debug=bool(ctx.obj and ctx.obj.get("debug")), **fields)  # type: ignore[arg-type]
    if ebpf:
        from tracer.kernel.build import program_text

        click.echo(program_text(req.probe_config()))
        return None
    if req.interval_s <= 0:
        raise click.BadParameter("must be greater than 0", param_hint="'--interval'")
    return req
