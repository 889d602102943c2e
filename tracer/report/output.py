"""Where reports go. Commands never call print(): they hand records to an
Output, which renders them (table or JSON lines) and writes them to a stream.
Tests give it a StringIO."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Sequence
from typing import TextIO

from tracer.core.model import FdReleased, Leak, LeakEnded
from tracer.core.summary import ProcessRank, Summary
from tracer.report.jsonl import JsonRenderer
from tracer.report.table import TableRenderer


class Output:
    def __init__(
        self,
        json_lines: bool = False,
        stream: TextIO | None = None,
        view: str = "watch",
        rows: int | None = None,
    ) -> None:
        self.renderer = JsonRenderer() if json_lines else TableRenderer(view, rows)
        self.stream = stream if stream is not None else sys.stdout

    def _write(self, lines: Iterable[str]) -> None:
        """Write in chunks: a report of 100,000 leaks is tens of MB as one string."""
        chunk: list[str] = []
        for line in lines:
            chunk.append(line)
            if len(chunk) == 4096:
                self.stream.write("\n".join(chunk) + "\n")
                chunk = []
        if chunk:
            self.stream.write("\n".join(chunk) + "\n")
        self.stream.flush()

    def report(self, leaks: Sequence[Leak], summary: Summary) -> None:
        self._write(self.renderer.report(leaks, summary))

    def leaks(self, leaks: Sequence[Leak], now_ns: int) -> None:
        """New leaks, one line each (JSON lines only: the exporter's log)."""
        assert isinstance(self.renderer, JsonRenderer), "leak lines are JSON only"
        self._write(self.renderer.leaks(leaks, now_ns, time.time()))

    def processes(self, ranks: Sequence[ProcessRank], wall: float) -> None:
        self._write(self.renderer.processes(ranks, wall))

    def ended(self, e: LeakEnded) -> None:
        self._write([self.renderer.ended(e, time.time())])

    def fd_released(self, r: FdReleased) -> None:
        self._write([self.renderer.fd_released(r, time.time())])

    def changes(self, released: Sequence[FdReleased], ended: Sequence[LeakEnded]) -> None:
        """CLOSE then ENDED lines, written at once: a pool shutdown ends
        100,000 leaks in a second, and a write per line would cost more."""
        if not released and not ended:
            return
        wall = time.time()
        r = self.renderer
        self._write(
            [*(r.fd_released(x, wall) for x in released), *(r.ended(e, wall) for e in ended)]
        )

    def shown(self, leaks: Sequence[Leak]) -> Sequence[Leak]:
        """The leaks a report will print: the first rows of a table, every
        one in JSON."""
        rows = getattr(self.renderer, "rows", None)
        return leaks if rows is None else leaks[:rows]

    def notice(self, message: str) -> None:
        self._write([self.renderer.notice(message, time.time())])
