"""The table renderer: ss-like text for people.

Pure functions of their inputs (no clock, no I/O). Columns are declared once
(header, width, alignment, how to compute the cell) and grouped per view.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tracer.core.model import FdReleased, LatencyBucket, Leak, LeakEnded, ProbeStats, leaks_per_pid
from tracer.core.summary import ProcessRank, ProcessTrend, Summary
from tracer.core.trends import Group, log2_bucket_bounds
from tracer.core.verdict import GROWING
from tracer.report.durations import format_age
from tracer.report.escape import printable
from tracer.report.text import (
    age_text,
    clock,
    comms_of,
    conn_age,
    container,
    describe_end,
    drop_text,
    dump_header,
    dump_lines,
    fd_text,
    opened_by,
    opt,
    process_verdict_text,
    verdict_text,
)


@dataclass(frozen=True)
class Column:
    """One table column: header, width, alignment and the cell's text."""

    header: str
    width: int
    value: Callable[[Leak, int], str]
    right: bool = False

    def cell(self, text: str) -> str:
        return text.rjust(self.width) if self.right else text.ljust(self.width)


PID = Column("PID", 7, lambda lk, now: str(lk.pid), right=True)
COMM = Column("COMM", 15, lambda lk, now: printable(lk.proc(lk.pid).comm)[:15])
FD = Column("FD", 6, lambda lk, now: fd_text(lk), right=True)
LOCAL = Column("LOCAL", 22, lambda lk, now: lk.local)
REMOTE = Column("REMOTE", 22, lambda lk, now: lk.remote)
AGE = Column("AGE", 8, age_text, right=True)
RECV_Q = Column("RECV-Q", 7, lambda lk, now: str(lk.recv_q), right=True)
OPENED_BY = Column("OPENED-BY", 23, lambda lk, now: opened_by(lk)[:23])
CONN_AGE = Column(
    "CONN-AGE",
    8,
    lambda lk, now: "-" if (a := conn_age(lk, now)) is None else format_age(a),
    right=True,
)
UID = Column("UID", 6, lambda lk, now: str(lk.uid), right=True)
CONTAINER = Column("CONTAINER", 0, lambda lk, now: printable(container(lk) or "-"))

WATCH_COLUMNS = (PID, COMM, FD, LOCAL, REMOTE, AGE, RECV_Q, OPENED_BY, CONN_AGE)
SNAPSHOT_COLUMNS = (PID, COMM, FD, LOCAL, REMOTE, AGE, RECV_Q, UID, CONTAINER)
VIEWS = {"watch": WATCH_COLUMNS, "snapshot": SNAPSHOT_COLUMNS}

FOOTNOTE_WAITING = (
    "! the thread that opened it is now blocked waiting for a pooled connection (--threads)"
)
FOOTNOTE_OPENER = (
    "* the process that opened the connection no longer holds it "
    "(inherited across fork, or passed to another process)"
)


def _lost_text(stats: ProbeStats) -> str:
    parts = [
        f"events lost {stats.events_lost}" + (": raise --buffer-pages" if stats.events_lost else "")
    ]
    if stats.cw_full:
        parts.append(f"FINs untracked (map full) {stats.cw_full}: raise --max-sockets")
    if stats.conns_evicted:
        parts.append(f"creators evicted {stats.conns_evicted}: raise --max-conns")
    if stats.latency_full:
        parts.append(
            f"closes missing from the FIN-to-close histogram (map full) {stats.latency_full}"
        )
    if stats.decode_errors:
        parts.append(f"undecodable events {stats.decode_errors}: a closewait bug, please report it")
    return ", ".join(parts)


class TableRenderer:
    """ss-like text: a header line with totals, then one row per leaked socket."""

    def __init__(self, view: str = "watch", rows: int | None = None) -> None:
        self.view = view
        self.columns = VIEWS[view]
        self.rows = rows  # at most this many leak rows per report (None: all)

    def report(self, leaks: Sequence[Leak], s: Summary) -> list[str]:
        lines = [self._head(leaks, s)]
        lines.extend(f"  {trend_text(p)}" for p in s.processes)
        if leaks:
            shown = leaks if self.rows is None else leaks[: self.rows]
            lines.append(self._row(c.header for c in self.columns))
            waiting = {(t.pid, tid) for t in s.threads for tid in t.waiting_tids()}
            lines.extend(self._row(self._cells(lk, s.now_ns, waiting)) for lk in shown)
            if len(shown) < len(leaks):
                lines.append(
                    f"  ... {len(leaks) - len(shown)} more (oldest shown first; "
                    "--rows 0 shows all, --json lists every one)"
                )
            if OPENED_BY in self.columns and any(lk.opener_holds is False for lk in leaks):
                lines.append(FOOTNOTE_OPENER)
            if OPENED_BY in self.columns and any(_opener_waits(lk, waiting) for lk in shown):
                lines.append(FOOTNOTE_WAITING)
        if s.groups:
            lines.append("  by peer:")
            lines.extend(f"    {text}" for g in s.groups[:GROUPS_SHOWN] for text in group_text(g))
            if len(s.groups) > GROUPS_SHOWN:
                lines.append(f"    ... {len(s.groups) - GROUPS_SHOWN} more groups (--json has all)")
        comms = comms_of(s)
        for t in s.threads:
            lines.append(f"  {dump_header(t, comms.get(t.pid, '?'), s.now_ns)}")
            lines.extend(f"    {line}" for line in dump_lines(t, leaks))
        if s.final:
            lines.extend(latency_lines(s.latency, comms, leaks))
        lines.append("")
        return lines

    def _cells(self, lk: Leak, now_ns: int, waiting: set[tuple[int, int]]) -> list[str]:
        cells = [c.value(lk, now_ns) for c in self.columns]
        if waiting and OPENED_BY in self.columns and _opener_waits(lk, waiting):
            i = self.columns.index(OPENED_BY)
            cells[i] = cells[i][: OPENED_BY.width - 1] + "!"
        return cells

    def _row(self, cells: Sequence[str] | object) -> str:
        return " ".join(c.cell(v) for c, v in zip(self.columns, cells)).rstrip()

    def _head(self, leaks: Sequence[Leak], s: Summary) -> str:
        per_pid = leaks_per_pid(leaks)
        if s.all_processes:
            first_leak = {lk.pid: lk for lk in reversed(leaks)}  # any leak of each pid
            ranked = sorted(per_pid.items(), key=lambda kv: -kv[1])
            who = ", ".join(
                f"{pid} {printable(first_leak[pid].proc(pid).comm)}: {n}" for pid, n in ranked[:5]
            )
            if len(ranked) > 5:
                who += f", +{len(ranked) - 5} more processes"
        else:
            who = ", ".join(
                f"{pid} {printable(comm)}: {per_pid.get(pid, 0)}" for pid, comm in s.targets.items()
            )
        n = len(leaks)
        head = f"{clock(s.wall)} {self._title(s)}: {n} leaking socket{'' if n == 1 else 's'}"
        head += f" ({who or 'no target left'})"
        if s.unheld:
            head += f", {s.unheld} more in CLOSE_WAIT held by no process"
        if self.view == "snapshot":
            ns = s.namespaces or 0
            return head + f" | {ns} network namespace{'' if ns == 1 else 's'}, {s.elapsed_s:.2f}s"
        return head + f" | new {s.new}, ended {s.ended} | {_lost_text(s.stats)}"

    def _title(self, s: Summary) -> str:
        if self.view == "snapshot":
            return "snapshot"
        return "final report" if s.final else "closewait"

    def processes(self, ranks: Sequence[ProcessRank], wall: float) -> list[str]:
        """The triage view: processes ranked by leaked sockets."""
        if not ranks:
            return [f"{clock(wall)} no process holds a socket in CLOSE_WAIT", ""]
        lines = [f"{clock(wall)} processes holding sockets in CLOSE_WAIT, most first:"]
        header = ("PID", "COMM", "LEAKS", "OLDEST", "FDS", "FD-LIMIT")
        lines.append("{:>7} {:<15} {:>6} {:>8} {:>7} {:>8} CONTAINER".format(*header))
        for r in ranks:
            lines.append(
                f"{r.pid:>7} {printable(r.comm)[:15]:<15} {r.leaks:>6} "
                f"{'~' + format_age(r.oldest_s):>8} {opt(r.open_fds):>7} {opt(r.fd_limit):>8} "
                f"{printable(r.container or '-')}"
            )
        lines.append("")
        return lines

    def ended(self, e: LeakEnded, wall: float) -> str:
        lk = e.leak
        fds = ",".join(map(str, lk.fds))
        what = (
            f"{clock(wall)} ENDED pid {lk.pid} ({printable(lk.proc(lk.pid).comm)}) "
            f"fd {fds} {lk.local} -> {lk.remote}: "
        )
        after = format_age(e.latency_s)
        if not (e.exact and lk.age_exact):
            after = "~" + after
        return what + describe_end(e) + f", {after} after the FIN"

    def notice(self, message: str, wall: float) -> str:
        return f"{clock(wall)} NOTE {message}"

    def fd_released(self, r: FdReleased, wall: float) -> str:
        held = ", ".join(f"pid {h.pid} fd {h.fd}" for h in r.still_held)
        who = f"pid {r.pid} tid {r.tid} ({printable(r.comm)})" if r.tid else f"pid {r.pid}"
        return (
            f"{clock(wall)} CLOSE {who} {drop_text(r.via, r.fd)} "
            f"on leaked socket {r.leak.local} -> {r.leak.remote}: "
            f"it stays in CLOSE_WAIT, still held by {held}"
        )


def _opener_waits(lk: Leak, waiting: set[tuple[int, int]]) -> bool:
    """The thread that opened this leak is now blocked waiting for a pooled connection."""
    c = lk.creator
    return c is not None and (c.tgid, c.tid) in waiting


GROUPS_SHOWN = 10
BAR_WIDTH = 40
SIDE_WORDS = {"remote": "peer", "local": "local service", "unknown": "opened before attach"}


def trend_text(p: ProcessTrend) -> str:
    """`pid 5301 (java): 23/1024 fds open, +118.2 leaks/min over 12s (rough), fd limit in ~8m`"""
    fds = f"{opt(p.open_fds)}/{opt(p.fd_limit)} fds open"
    text = f"pid {p.pid} ({printable(p.comm)}): {p.leaks} leaking, {fds}"
    r = p.rate
    if r is None:
        return text + ", rate not measured yet"
    text += f", {r.per_min:+.1f} leaks/min over {format_age(r.window_s)}"
    if not r.reliable:
        text += " (too short a window to trust)"
    v = p.verdict
    # An exhausted pool, or a flat count, will not reach the fd limit: its
    # verdict says what it is instead (a flat count is no reassurance).
    if p.eta_s is not None and (v is None or v.kind == GROWING):
        text += f", fd limit in ~{format_age(p.eta_s)}"
    elif v is not None:
        text += ", " + process_verdict_text(v)
    return text


def group_text(g: Group) -> list[str]:
    """The group's line, then its verdict's sentence (if judged)."""
    where = f"{g.endpoint} ({'peer' if g.side == 'remote' else 'local service'})"
    rate = "" if g.per_min is None else f", {g.per_min:.1f}/min since attach"
    opened = "" if g.opened_by == "-" else f", opened by {printable(g.opened_by)}"
    verdict = "" if g.verdict is None else f" [{g.verdict.kind.upper()}]"
    line = (
        f"{where}: {g.leaks} leak{'' if g.leaks == 1 else 's'}, oldest {format_age(g.oldest_s)}, "
        f"newest {format_age(g.newest_s)}{rate}{opened}{verdict}"
    )
    return [line] if g.verdict is None else [line, f"  {verdict_text(g.verdict, g)}"]


def latency_lines(
    buckets: Sequence[LatencyBucket], comms: dict[int, str], leaks: Sequence[Leak]
) -> list[str]:
    """Per process, the FIN-to-close histogram (as BCC's tools print them), then
    per port; next to it, how many sockets were never closed."""
    lines: list[str] = []
    by_pid: dict[int, dict[int, int]] = {}
    by_port: dict[tuple[int, str, int], int] = {}
    for b in buckets:
        slots = by_pid.setdefault(b.pid, {})
        slots[b.slot] = slots.get(b.slot, 0) + b.count
        key = (b.pid, b.side, b.port)
        by_port[key] = by_port.get(key, 0) + b.count
    open_by_pid = leaks_per_pid(leaks)
    for pid in sorted(by_pid):
        slots = by_pid[pid]
        total = sum(slots.values())
        lines.append("")
        lines.append(
            f"FIN-to-close latency of pid {pid} ({printable(comms.get(pid, '?'))}): "
            f"{total} closed after the peer's FIN, {open_by_pid.get(pid, 0)} never closed (leaking)"
        )
        lines.append(f"{'usecs':>22} : {'count':<8} distribution")
        peak = max(slots.values())
        for slot in range(min(slots), max(slots) + 1):
            lo, hi = log2_bucket_bounds(slot)
            n = slots.get(slot, 0)
            bar = "*" * round(BAR_WIDTH * n / peak)
            lines.append(f"{lo:>10} -> {hi - 1:<9} : {n:<8} |{bar:<{BAR_WIDTH}}|")
        ports = sorted((k, n) for k, n in by_port.items() if k[0] == pid)
        lines.append(
            "  by port: "
            + ", ".join(f"{port} ({SIDE_WORDS[side]}): {n}" for (_pid, side, port), n in ports)
        )
    return lines
