"""The watch loop: refresh every interval, drain events in between.

`cycle` is the loop itself, shared by `closewait watch` and `closewait demo`
(through `run`, which prints a report after each refresh) and by the
exporter (which publishes its metrics there instead): the caller gives a
Watcher and what to do with the changes.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
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


def cycle(
    watcher: Watcher,
    interval_s: float,
    stop: StopFlag,
    emit: Callable[[Changes], None],
    deadline: float | None = None,
    until_finished: bool = True,
    on_error: Callable[[Exception], None] | None = None,
) -> Iterator[None]:
    """Refresh, then yield to the caller (to report or publish), then drain
    events until the next refresh, and again; every Changes goes to emit, so
    an ENDED line appears as soon as the kernel reports it. Ends when stopped,
    at `deadline` (time.monotonic()) or, with until_finished, once every
    target has exited. With on_error, a refresh or drain that raises is
    handed to it and the loop goes on (the next refresh reads everything
    again); without, the exception ends the loop."""

    def guarded(step: Callable[..., Changes], *args: int) -> Changes:
        if on_error is None:
            return step(*args)
        try:
            return step(*args)
        except Exception as exc:
            on_error(exc)
            return Changes()

    def done() -> bool:
        expired = deadline is not None and time.monotonic() >= deadline
        return bool(stop) or expired or (until_finished and watcher.finished())

    with gcpause.paused():
        changes = guarded(watcher.refresh)
    emit(changes)
    while not done():
        yield
        next_refresh = time.monotonic() + interval_s
        if deadline is not None:
            next_refresh = min(next_refresh, deadline)
        while not stop and (left := next_refresh - time.monotonic()) > 0:
            emit(guarded(watcher.drain_events, max(1, int(min(left, 0.25) * 1000))))
        with gcpause.paused():
            changes = guarded(watcher.refresh)
        emit(changes)


def run(watcher: Watcher, options: WatchOptions, out: Output, stop: StopFlag) -> None:
    """Report after every refresh until stopped, the duration ends or every
    target exits; then print the final report."""
    deadline = None if options.duration_s is None else time.monotonic() + options.duration_s

    def emit(changes: Changes) -> None:
        for message in watcher.notices:
            out.notice(message)
        watcher.notices.clear()
        out.changes(changes.released_fds, changes.ended)

    def report(final: bool = False) -> None:
        # Every fd a report names is checked first (Watcher.verify).
        emit(watcher.verify(out.shown(watcher.leaks())))
        out.report(watcher.leaks(), watcher.summary(time.time(), final=final))

    for _ in cycle(watcher, options.interval_s, stop, emit, deadline):
        with gcpause.paused():
            report()
    if watcher.finished():
        out.notice("every target has exited")
    with gcpause.paused():
        report(final=True)
