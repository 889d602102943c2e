"""The exporter engine: the watch loop, run until stopped, publishing metrics.

The main thread runs the same refresh/drain cycle as `closewait watch`
(tracer.engine.loop.cycle). After each refresh it builds an immutable
Snapshot (tracer.report.prometheus) and publishes it with one assignment;
the HTTP threads (tracer.engine.httpd) read only the latest one, so a scrape
never waits for a refresh nor sees one half done. A refresh that fails (a
namespace that vanished, a /proc race, anything) is counted in
closewait_refresh_errors_total and skipped: the next one reads everything
again. Every distinct failure is also said once, as a notice.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from tracer import __version__
from tracer.core.correlate import Changes
from tracer.core.model import ProcInfo
from tracer.core.summary import ProcessTrend
from tracer.core.verdict import EXHAUSTED
from tracer.engine import gcpause
from tracer.engine.httpd import PATHS
from tracer.engine.loop import StopFlag, cycle
from tracer.engine.watcher import Watcher, _comm_or
from tracer.report.output import Output
from tracer.report.prometheus import (
    DEFAULT_MAX_PEERS,
    UNKNOWN_COMM,
    MetricState,
    Snapshot,
    SnapshotCollector,
    status_page,
)
from tracer.system import procfs

#: /healthz fails when the loop has not completed a pass for this many
#: intervals (and at least STALE_MIN_S): the loop is stuck, not just slow.
STALE_INTERVALS = 10
STALE_MIN_S = 30.0
TRIM_EVERY_S = 10.0

_libc = ctypes.CDLL(None)


@dataclass(frozen=True)
class ExporterOptions:
    interval_s: float = 2.0
    max_peers: int = DEFAULT_MAX_PEERS
    pid_label: bool = False


def build_info() -> dict[str, str]:
    return {"version": __version__, "kernel": os.uname().release}


class Exporter:
    """One exporter session over a Watcher. run() in the main thread; the
    HTTP side uses collector(), health() and page()."""

    def __init__(
        self,
        watcher: Watcher,
        options: ExporterOptions,
        out: Output | None = None,
        notice: Callable[[str], None] | None = None,
    ) -> None:
        self.watcher = watcher
        self.options = options
        self.out = out  # JSON lines of the leaks' lifecycle, or None
        self._notice = notice or (lambda message: None)
        self.state = MetricState(options.max_peers, options.pid_label, watcher.starts.port_range)
        self.latest: Snapshot | None = None
        self.last_pass: float | None = None  # time.monotonic() at the end of the last pass
        self.build = build_info()
        self._procs: dict[int, ProcInfo] = {}  # name and cgroup of processes without leaks
        self._failures: set[str] = set()
        self._trimmed = 0.0

    # -- the loop (main thread) ----------------------------------------------

    def run(self, stop: StopFlag) -> None:
        """Until stopped: with --pid, targets that exit leave their series'
        counters behind, and the exporter keeps serving them."""
        said_finished = False
        for _ in cycle(
            self.watcher,
            self.options.interval_s,
            stop,
            self._emit,
            until_finished=False,
            on_error=self._failed,
        ):
            self._publish()
            if self.watcher.finished() and not said_finished:
                said_finished = True
                self._say("every target has exited; still serving their counters")

    def _emit(self, changes: Changes) -> None:
        w = self.watcher
        for message in w.notices:
            self._say(message)
        w.notices.clear()
        self.state.count_new(changes.new)
        self.state.count_ended(changes.ended)
        if self.out is not None:
            if changes.new:
                self.out.leaks(changes.new, w.clock())
            for r in changes.released_fds:
                self.out.fd_released(r)
            for e in changes.ended:
                self.out.ended(e)

    def _say(self, message: str) -> None:
        if self.out is not None:
            self.out.notice(message)
        else:
            self._notice(message)

    def _failed(self, exc: Exception) -> None:
        self.state.refresh_errors += 1
        text = f"refresh failed, skipped: {type(exc).__name__}: {exc}"
        if text not in self._failures and len(self._failures) < 100:
            self._failures.add(text)
            self._say(text)

    def _publish(self) -> None:
        try:
            with gcpause.paused():
                self.latest = self._snapshot()
        except Exception as exc:
            self._failed(exc)
        now = time.monotonic()
        if now - self._trimmed > TRIM_EVERY_S:
            # A refresh's burst (sock_diag replies, fd scans) is freed by
            # reference counting, but glibc keeps the pages: give them back,
            # so that RSS stays flat over months (bench/exporter.py soak).
            self._trimmed = now
            with contextlib.suppress(OSError, AttributeError):
                _libc.malloc_trim(0)
        self.last_pass = now

    def _snapshot(self) -> Snapshot:
        w = self.watcher
        w.forget_gone()
        summary = w.summary(time.time())
        known = w.tracker.procs
        keep = self._harvest_latency(known) | {t.pid for t in summary.processes}
        for pid in [p for p in self._procs if p not in keep]:
            del self._procs[pid]
        views: list[tuple[ProcessTrend, ProcInfo]] = []
        for t in summary.processes:
            proc = known.get(t.pid) or self._procs.get(t.pid)
            if proc is None:
                proc = self._procs[t.pid] = ProcInfo(t.comm, procfs.cgroup_path(t.pid))
            views.append((t, proc))
        exhausted = [
            (g.verdict.pid, g.endpoint)
            for g in summary.groups
            if g.verdict is not None and g.verdict.kind == EXHAUSTED
        ]
        return self.state.snapshot(
            w.leaks(), views, summary.stats, summary.now_ns, summary.wall, exhausted
        )

    def _harvest_latency(self, known: dict[int, ProcInfo]) -> set[int]:
        """Fold the kernel's FIN-to-close histogram into the series, then
        delete the entries of processes that exited (the map is bounded).
        Returns the live processes it names."""
        probe = self.watcher.probe
        buckets = probe.read_latency()
        procs: dict[int, ProcInfo] = {}
        gone: set[int] = set()
        for pid in {b.pid for b in buckets}:
            proc = known.get(pid) or self._procs.get(pid)
            alive = procfs.exists(pid)
            if proc is None:
                proc = ProcInfo(_comm_or(pid, UNKNOWN_COMM), procfs.cgroup_path(pid))
                if alive:
                    self._procs[pid] = proc
            procs[pid] = proc
            if not alive:
                gone.add(pid)
                self._procs.pop(pid, None)
        self.state.add_latency(buckets, procs)
        if gone:
            probe.forget_latency(gone)
        return procs.keys() - gone

    # -- the HTTP side (other threads: read only) --------------------------------

    def collector(self) -> SnapshotCollector:
        return SnapshotCollector(lambda: self.latest, self.build, time.monotonic_ns)

    def health(self) -> tuple[bool, str]:
        last = self.last_pass
        if last is None:
            return False, "starting: no refresh yet"
        age = time.monotonic() - last
        limit = max(STALE_MIN_S, STALE_INTERVALS * self.options.interval_s)
        if age > limit:
            return False, f"stuck: last refresh {age:.0f}s ago"
        errors = self.state.refresh_errors
        return True, f"ok: last refresh {age:.1f}s ago, {errors} refresh error(s)"

    def page(self, about: str) -> str:
        return status_page(self.latest, self.build, about, PATHS)
