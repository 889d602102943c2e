"""`closewait doctor`: every check of tracer.kernel.preflight, with its fix, and a
real compile-and-attach of the BPF program when everything else passed."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

import click

from tracer.cli.options import CONTEXT, EXIT_CODES_EPILOG
from tracer.core.errors import CloseWaitError
from tracer.core.exitcodes import ExitStatus
from tracer.kernel import preflight


def run_doctor(out: TextIO | None = None) -> ExitStatus:
    """Print one line per check; return the status of the first required failure."""
    stream = out or sys.stdout

    def say(line: str) -> None:
        stream.write(line + "\n")
        stream.flush()

    status = ExitStatus.OK
    for c in preflight.all_checks():
        mark = "ok  " if c.ok else ("FAIL" if c.required else "warn")
        say(f"[{mark}] {c.name}: {c.detail}")
        if not c.ok and c.fix:
            say(f"       fix: {c.fix}")
        if not c.ok and c.required and status == ExitStatus.OK:
            status = c.status
    if status == ExitStatus.OK:
        status = _try_load(say)
    say("closewait can run here" if status == ExitStatus.OK else f"not ready (exit {int(status)})")
    return status


def _try_load(say: Callable[[str], None]) -> ExitStatus:
    from tracer.kernel.config import ProbeConfig
    from tracer.kernel.probe import KernelProbe

    t0 = time.monotonic()
    try:
        with KernelProbe(ProbeConfig(max_sockets=1024, max_conns=1024)) as probe:
            mode = "ring buffer" if probe.ring_buffer else "perf buffer"
    except CloseWaitError as exc:
        say(f"[FAIL] load: {exc.message}")
        return exc.status
    say(f"[ok  ] load: compiled and attached in {time.monotonic() - t0:.2f}s ({mode})")
    return ExitStatus.OK


@click.command(context_settings=CONTEXT, epilog=EXIT_CODES_EPILOG)
def doctor() -> None:
    """Check that closewait can run here; print each result and its fix."""
    status = run_doctor()
    if status != ExitStatus.OK:
        sys.exit(int(status))
