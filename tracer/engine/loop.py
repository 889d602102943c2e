"""The watch loop: refresh every interval, report, drain events in between.

Shared by `closewait watch` and `closewait demo` (and by the exporter): the
caller gives a Watcher, the options and an Output.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass

from tracer.core.correlate import Changes
from tracer.engine import gcpause
from tracer.engine.watcher import Watcher
from tracer.report.output import Output


@dataclass(frozen=True)
class WatchOptions:
    interval_s: float = 2.0
    min_age_s: float = 5.0
    duration_s: float | None = None


class StopFlag:
    """Set by SIGINT/SIGTERM; a second one while stopping aborts at once (the
    final report may be stuck writing to a reader that stopped reading)."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def __bool__(self) -> bool:
        return self.reason is not None

    def install(self) -> None:
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        if self.reason is not None:
            raise KeyboardInterrupt
        self.reason = signal.Signals(signum).name


def run(watcher: Watcher, options: WatchOptions, out: Output, stop: StopFlag) -> None:
    """Refresh every interval until stopped, the duration ends or every target
    exits; then print the final report. Events are drained between refreshes,
    so an ENDED line appears as soon as the kernel reports it."""
    deadline = None if options.duration_s is None else time.monotonic() + options.duration_s

    def expired() -> bool:
        return deadline is not None and time.monotonic() >= deadline

    def emit(changes: Changes) -> None:
        for message in watcher.notices:
            out.notice(message)
        watcher.notices.clear()
        out.changes(changes.released_fds, changes.ended)

    def report(final: bool = False) -> None:
        # Every fd a report names is checked first (Watcher.verify).
        emit(watcher.verify(out.shown(watcher.leaks())))
        out.report(watcher.leaks(), watcher.summary(time.time(), final=final))

    with gcpause.paused():
        changes = watcher.refresh()
    emit(changes)
    while not (stop or watcher.finished() or expired()):
        with gcpause.paused():
            report()
        next_refresh = time.monotonic() + options.interval_s
        if deadline is not None:
            next_refresh = min(next_refresh, deadline)
        while not stop and (left := next_refresh - time.monotonic()) > 0:
            emit(watcher.drain_events(max(1, int(min(left, 0.25) * 1000))))
        with gcpause.paused():
            changes = watcher.refresh()
        emit(changes)
    if watcher.finished():
        out.notice("every target has exited")
    with gcpause.paused():
        report(final=True)
