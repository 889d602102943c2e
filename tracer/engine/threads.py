"""--threads in the watch engine and the snapshot: when to look at whose threads.

Each process with leaks is looked at (tracer/system/threads.py) at the first
report that has its leaks, then again when its verdict changes (growing ->
exhausted, typically), but never twice within THREADS_MIN_EVERY_S: never at
every refresh. A look costs a JVM a safepoint of well under a millisecond
(measured and printed with it), a Python process nothing (py-spy
--nonblocking), and closewait a fraction of a second, during which the
report waits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tracer.core.model import NS_PER_S, Leak
from tracer.core.poolwaits import ProcessThreads
from tracer.core.verdict import Verdict
from tracer.system import threads

THREADS_MIN_EVERY_S = 10.0


class ThreadDumps:
    """When to look at the threads of a process with leaks, and the latest look."""

    def __init__(self, dump: Callable[..., ProcessThreads] = threads.dump) -> None:
        self.dump = dump
        self._last: dict[int, tuple[int, str | None]] = {}  # pid -> (when, verdict then)
        self.latest: dict[int, ProcessThreads] = {}

    def update(
        self, leaks: Sequence[Leak], verdicts: dict[int, Verdict], now_ns: int
    ) -> list[ProcessThreads]:
        """The latest look at each process with leaks, taking a new one where due."""
        openers: dict[int, set[int]] = {}
        for lk in leaks:
            tids = openers.setdefault(lk.pid, set())
            c = lk.creator
            if c is not None and c.tgid == lk.pid and c.tid:
                tids.add(c.tid)
        for pid in [p for p in self._last if p not in openers]:
            del self._last[pid]
            self.latest.pop(pid, None)
        for pid, tids in openers.items():
            v = verdicts.get(pid)
            kind = None if v is None else v.kind
            last = self._last.get(pid)
            if last is None or (
                kind != last[1] and now_ns - last[0] >= THREADS_MIN_EVERY_S * NS_PER_S
            ):
                self._last[pid] = (now_ns, kind)
                self.latest[pid] = self.dump(pid, tids, now_ns)
        return [self.latest[pid] for pid in sorted(self.latest)]
