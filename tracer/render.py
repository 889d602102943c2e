"""Turn leaks and summaries into text: tables for people, JSON lines for jq.

Pure functions of their inputs (no clock, no I/O), so both formats are
tested without a kernel. Every string that came from a traced process goes
through escape.printable() here, in both formats. Table columns are declared
once (header, width, alignment, how to compute the cell) and grouped per view.
"""

from __future__ import annotations

import functools
import json
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from json.encoder import encode_basestring

from tracer.containers import container_of
from tracer.durations import format_age
from tracer.escape import printable
from tracer.model import (
    NS_PER_S,
    Creator,
    FdReleased,
    LatencyBucket,
    Leak,
    LeakEnded,
    ProbeStats,
    leaks_per_pid,
)
from tracer.trends import Group, Rate, log2_bucket_bounds


@dataclass(frozen=True)
class ProcessTrend:
    """How fast a process leaks and when it runs out of file descriptors."""

    pid: int
    comm: str
    leaks: int
    open_fds: int | None
    fd_limit: int | None
    rate: Rate | None
    eta_s: float | None  # None: not growing, or unknown


@dataclass(frozen=True)
class Summary:
    """Totals of one report."""

    wall: float  # time.time() of the report
    now_ns: int  # CLOCK_MONOTONIC of the report, the clock of every *_ns
    elapsed_s: float
    targets: dict[int, str]  # live target pid -> comm ({} with --all)
    all_processes: bool
    new: int
    ended: int
    stats: ProbeStats
    final: bool = False
    exited: dict[int, str] = field(default_factory=dict)
    unheld: int | None = None  # CLOSE_WAIT sockets no process holds (None: not counted)
    namespaces: int | None = None  # network namespaces queried (snapshot)
    processes: list[ProcessTrend] = field(default_factory=list)
    groups: list[Group] = field(default_factory=list)
    latency: list[LatencyBucket] = field(default_factory=list)  # final report only


@dataclass(frozen=True)
class ProcessRank:
    """One row of the triage view: a process and its leaks."""

    pid: int
    comm: str
    leaks: int
    oldest_s: float
    open_fds: int | None
    fd_limit: int | None
    container: str | None


# -- cells --------------------------------------------------------------------


def _age_text(leak: Leak, now_ns: int) -> str:
    text = format_age(leak.age_s(now_ns))
    return text if leak.age_exact else "~" + text


def _fd_text(leak: Leak) -> str:
    """The first process's fds, then `+N` for holders in other processes."""
    fds = leak.fds
    others = len(leak.holders) - len(fds)
    text = ",".join(map(str, fds))
    return f"{text}+{others}" if others else text


def _opened_by(leak: Leak) -> str:
    """`thread-name/tid` of the connecting thread, `(accepted)`, or `-` if unknown.

    A trailing `*` marks a socket its opener no longer holds (see footnote)."""
    c = leak.creator
    if c is None:
        return "-"
    if c.accepted:
        return "(accepted)"
    return f"{printable(c.comm)}/{c.tid}" + ("*" if leak.opener_holds is False else "")


def _conn_age(leak: Leak, now_ns: int) -> float | None:
    c = leak.creator
    return None if c is None else max(0, now_ns - c.opened_ns) / NS_PER_S


def _container(leak: Leak) -> str | None:
    return container_of(leak.proc(leak.pid).cgroup)


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
FD = Column("FD", 6, lambda lk, now: _fd_text(lk), right=True)
LOCAL = Column("LOCAL", 22, lambda lk, now: lk.local)
REMOTE = Column("REMOTE", 22, lambda lk, now: lk.remote)
AGE = Column("AGE", 8, _age_text, right=True)
RECV_Q = Column("RECV-Q", 7, lambda lk, now: str(lk.recv_q), right=True)
OPENED_BY = Column("OPENED-BY", 23, lambda lk, now: _opened_by(lk)[:23])
CONN_AGE = Column(
    "CONN-AGE",
    8,
    lambda lk, now: "-" if (a := _conn_age(lk, now)) is None else format_age(a),
    right=True,
)
UID = Column("UID", 6, lambda lk, now: str(lk.uid), right=True)
CONTAINER = Column("CONTAINER", 0, lambda lk, now: printable(_container(lk) or "-"))

WATCH_COLUMNS = (PID, COMM, FD, LOCAL, REMOTE, AGE, RECV_Q, OPENED_BY, CONN_AGE)
SNAPSHOT_COLUMNS = (PID, COMM, FD, LOCAL, REMOTE, AGE, RECV_Q, UID, CONTAINER)
VIEWS = {"watch": WATCH_COLUMNS, "snapshot": SNAPSHOT_COLUMNS}

FOOTNOTE_OPENER = (
    "* the process that opened the connection no longer holds it "
    "(inherited across fork, or passed to another process)"
)


def _clock(wall: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(wall))


def _lost_text(stats: ProbeStats) -> str:
    parts = [
        f"events lost {stats.events_lost}" + (": raise --buffer-pages" if stats.events_lost else "")
    ]
    if stats.cw_full:
        parts.append(f"FINs untracked (map full) {stats.cw_full}: raise --max-sockets")
    if stats.conns_evicted:
        parts.append(f"creators evicted {stats.conns_evicted}: raise --max-conns")
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
            lines.extend(self._row(c.value(lk, s.now_ns) for c in self.columns) for lk in shown)
            if len(shown) < len(leaks):
                lines.append(
                    f"  ... {len(leaks) - len(shown)} more (oldest shown first; "
                    "--rows 0 shows all, --json lists every one)"
                )
            if OPENED_BY in self.columns and any(lk.opener_holds is False for lk in leaks):
                lines.append(FOOTNOTE_OPENER)
        if s.groups:
            lines.append("  by peer:")
            lines.extend(f"    {group_text(g)}" for g in s.groups[:GROUPS_SHOWN])
            if len(s.groups) > GROUPS_SHOWN:
                lines.append(f"    ... {len(s.groups) - GROUPS_SHOWN} more groups (--json has all)")
        if s.final:
            lines.extend(latency_lines(s.latency, _comms_of(s), leaks))
        lines.append("")
        return lines

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
        head = f"{_clock(s.wall)} {self._title(s)}: {n} leaking socket{'' if n == 1 else 's'}"
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
            return [f"{_clock(wall)} no process holds a socket in CLOSE_WAIT", ""]
        lines = [f"{_clock(wall)} processes holding sockets in CLOSE_WAIT, most first:"]
        header = ("PID", "COMM", "LEAKS", "OLDEST", "FDS", "FD-LIMIT")
        lines.append("{:>7} {:<15} {:>6} {:>8} {:>7} {:>8} CONTAINER".format(*header))
        for r in ranks:
            lines.append(
                f"{r.pid:>7} {printable(r.comm)[:15]:<15} {r.leaks:>6} "
                f"{'~' + format_age(r.oldest_s):>8} {_opt(r.open_fds):>7} {_opt(r.fd_limit):>8} "
                f"{printable(r.container or '-')}"
            )
        lines.append("")
        return lines

    def ended(self, e: LeakEnded, wall: float) -> str:
        lk = e.leak
        fds = ",".join(map(str, lk.fds))
        what = (
            f"{_clock(wall)} ENDED pid {lk.pid} ({printable(lk.proc(lk.pid).comm)}) "
            f"fd {fds} {lk.local} -> {lk.remote}: "
        )
        after = format_age(e.latency_s)
        if not (e.exact and lk.age_exact):
            after = "~" + after
        return what + describe_end(e) + f", {after} after the FIN"

    def notice(self, message: str, wall: float) -> str:
        return f"{_clock(wall)} NOTE {message}"

    def fd_released(self, r: FdReleased, wall: float) -> str:
        held = ", ".join(f"pid {h.pid} fd {h.fd}" for h in r.still_held)
        return (
            f"{_clock(wall)} CLOSE pid {r.pid} tid {r.tid} ({printable(r.comm)}) {r.via}({r.fd}) "
            f"on leaked socket {r.leak.local} -> {r.leak.remote}: "
            f"it stays in CLOSE_WAIT, still held by {held}"
        )


GROUPS_SHOWN = 10
BAR_WIDTH = 40
SIDE_WORDS = {"remote": "peer", "local": "local service", "unknown": "opened before attach"}


def trend_text(p: ProcessTrend) -> str:
    """`pid 5301 (java): 23/1024 fds open, +118.2 leaks/min over 12s (rough), fd limit in ~8m`"""
    fds = f"{_opt(p.open_fds)}/{_opt(p.fd_limit)} fds open"
    text = f"pid {p.pid} ({printable(p.comm)}): {p.leaks} leaking, {fds}"
    r = p.rate
    if r is None:
        return text + ", rate not measured yet"
    text += f", {r.per_min:+.1f} leaks/min over {format_age(r.window_s)}"
    if not r.reliable:
        text += " (too short a window to trust)"
    if p.eta_s is not None:
        return text + f", fd limit in ~{format_age(p.eta_s)}"
    return text + (", not growing" if not r.growing else "")


def group_text(g: Group) -> str:
    where = f"{g.endpoint} ({'peer' if g.side == 'remote' else 'local service'})"
    rate = "" if g.per_min is None else f", {g.per_min:.1f}/min since attach"
    opened = "" if g.opened_by == "-" else f", opened by {printable(g.opened_by)}"
    return (
        f"{where}: {g.leaks} leak{'' if g.leaks == 1 else 's'}, oldest {format_age(g.oldest_s)}, "
        f"newest {format_age(g.newest_s)}{rate}{opened}"
    )


def _comms_of(s: Summary) -> dict[int, str]:
    comms = {p.pid: p.comm for p in s.processes}
    comms.update(s.targets)
    return comms


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


def _opt(value: int | None) -> str:
    return "?" if value is None else str(value)


def describe_end(e: LeakEnded) -> str:
    """How a leak ended, in words."""
    who = ""
    if e.by_pid is not None:
        who = f" by pid {e.by_pid}"
        if e.by_tid is not None:
            who += f" tid {e.by_tid}"
        if e.by_comm:
            who += f" ({printable(e.by_comm)})"
    held = ", ".join(f"pid {h.pid} fd {h.fd}" for h in e.still_held)
    if e.reason == "closed":
        how = f"{e.drop}({e.by_fd})" if e.drop and e.by_fd is not None else (e.drop or "")
        text = "closed" + who + (f" via {how}" if how else "")
        return text if e.exact else text + " (seen by polling)"
    if e.reason == "exited":
        text = "process exited" + who
        return text + (f"; the socket is still held by {held}" if held else "")
    if e.reason == "reset":
        return f"left CLOSE_WAIT (reset by the peer?) but still open: {held}" if held else "reset"
    if e.reason == "shutdown":
        return f"shut down but still open: {held}"
    if e.reason == "released":
        where = held or "a process or kernel user closewait cannot see"
        return f"no watched process holds it any more; still in CLOSE_WAIT, held by {where}"
    return e.reason


class JsonRenderer:
    """One JSON object per line; schema documented in README.md."""

    def report(self, leaks: Sequence[Leak], s: Summary) -> Iterator[str]:
        """The lines of a report, generated: with 100,000 leaks they are tens
        of MB, written out in chunks rather than held at once."""
        ts = repr(round(s.wall, 3))
        shared = Fragments()
        for lk in leaks:
            yield leak_line(lk, s.now_ns, ts, shared)
        for g in s.groups:
            yield _dumps(group_json(g, s))
        if s.final:
            for obj in latency_json(s.latency, _comms_of(s), s.wall):
                yield _dumps(obj)
        per_pid = leaks_per_pid(leaks)
        trends = {p.pid: p for p in s.processes}
        targets = s.targets if not s.all_processes else {p.pid: p.comm for p in s.processes}
        yield (
            _dumps(
                {
                    "type": "summary",
                    "ts": round(s.wall, 3),
                    "final": s.final,
                    "elapsed_s": round(s.elapsed_s, 3),
                    "leaks": len(leaks),
                    "new": s.new,
                    "ended": s.ended,
                    "targets": [
                        {
                            "pid": pid,
                            "comm": printable(comm),
                            "leaks": per_pid.get(pid, 0),
                            **trend_json(trends.get(pid)),
                        }
                        for pid, comm in targets.items()
                    ],
                    "leaks_by_pid": {str(pid): n for pid, n in sorted(per_pid.items())},
                    "exited": [
                        {"pid": pid, "comm": printable(comm)} for pid, comm in s.exited.items()
                    ],
                    "unheld": s.unheld,
                    "events_lost": s.stats.events_lost,
                    "map_full": s.stats.cw_full,
                    "creators_evicted": s.stats.conns_evicted,
                    "fins_seen": s.stats.fins,
                    "fins_other_processes": s.stats.fins_foreign,
                }
            )
        )

    def processes(self, ranks: Sequence[ProcessRank], wall: float) -> list[str]:
        return [
            _dumps(
                {
                    "type": "process",
                    "ts": round(wall, 3),
                    "pid": r.pid,
                    "comm": printable(r.comm),
                    "leaks": r.leaks,
                    "oldest_s": round(r.oldest_s, 3),
                    "open_fds": r.open_fds,
                    "fd_limit": r.fd_limit,
                    "container": None if r.container is None else printable(r.container),
                }
            )
            for r in ranks
        ]

    def ended(self, e: LeakEnded, wall: float) -> str:
        lk = e.leak
        obj = {
            "type": "ended",
            "ts": round(wall, 3),
            **_identity(lk),
            "reason": e.reason,
            "latency_s": round(e.latency_s, 6),
            "latency_exact": e.exact and lk.age_exact,
            "by_pid": e.by_pid,
            "by_tid": e.by_tid,
            "by_comm": None if e.by_comm is None else printable(e.by_comm),
            "by_fd": e.by_fd,
            "via": e.drop,
            "still_held": [{"pid": h.pid, "fd": h.fd} for h in e.still_held],
            "description": describe_end(e),
        }
        return _dumps(obj)

    def notice(self, message: str, wall: float) -> str:
        return _dumps({"type": "notice", "ts": round(wall, 3), "message": message})

    def fd_released(self, r: FdReleased, wall: float) -> str:
        lk = r.leak
        return _dumps(
            {
                "type": "fd_closed",
                "ts": round(wall, 3),
                "pid": r.pid,
                "tid": r.tid,
                "comm": printable(r.comm),
                "fd": r.fd,
                "via": r.via,
                "inode": lk.inode,
                "local": lk.local,
                "remote": lk.remote,
                "still_held": [{"pid": h.pid, "fd": h.fd} for h in r.still_held],
            }
        )


def trend_json(p: ProcessTrend | None) -> dict:
    r = None if p is None else p.rate
    return {
        "open_fds": None if p is None else p.open_fds,
        "fd_limit": None if p is None else p.fd_limit,
        "leak_rate_per_min": None if r is None else round(r.per_min, 3),
        "rate_window_s": None if r is None else round(r.window_s, 1),
        "rate_reliable": None if r is None else r.reliable,
        "fd_exhaustion_eta_s": None if p is None or p.eta_s is None else round(p.eta_s, 1),
    }


def group_json(g: Group, s: Summary) -> dict:
    return {
        "type": "group",
        "ts": round(s.wall, 3),
        "side": g.side,
        "endpoint": g.endpoint,
        "leaks": g.leaks,
        "oldest_s": round(g.oldest_s, 3),
        "newest_s": round(g.newest_s, 3),
        "leaks_per_min": None if g.per_min is None else round(g.per_min, 3),
        "opened_by": printable(g.opened_by),
    }


def latency_json(
    buckets: Sequence[LatencyBucket], comms: dict[int, str], wall: float
) -> list[dict]:
    """One object per (process, side, port): its FIN-to-close histogram."""
    groups: dict[tuple[int, str, int], dict[int, int]] = {}
    for b in buckets:
        slots = groups.setdefault((b.pid, b.side, b.port), {})
        slots[b.slot] = slots.get(b.slot, 0) + b.count
    out = []
    for (pid, side, port), slots in sorted(groups.items()):
        out.append(
            {
                "type": "latency",
                "ts": round(wall, 3),
                "pid": pid,
                "comm": printable(comms.get(pid, "?")),
                "side": side,
                "port": port,
                "closes": sum(slots.values()),
                "buckets": [
                    {"lo_us": lo, "hi_us": hi, "count": slots[slot]}
                    for slot in sorted(slots)
                    for lo, hi in [log2_bucket_bounds(slot)]
                ],
            }
        )
    return out


def _identity(lk: Leak) -> dict:
    return {
        "pid": lk.pid,
        "comm": printable(lk.proc(lk.pid).comm),
        "fd": lk.fds[0],
        "fds": lk.fds,
        "inode": lk.inode,
        "family": "ipv6" if lk.tuple.family == socket.AF_INET6 else "ipv4",
        "local": lk.local,
        "remote": lk.remote,
    }


def leak_json(lk: Leak, s: Summary) -> dict:
    """A leak object, as a dict: the reference that leak_line() must equal."""
    c = lk.creator
    cgroup = lk.proc(lk.pid).cgroup
    conn_age = _conn_age(lk, s.now_ns)
    return {
        "type": "leak",
        **_identity(lk),
        "holders": [
            {"pid": h.pid, "comm": printable(lk.proc(h.pid).comm), "fd": h.fd} for h in lk.holders
        ],
        "netns": lk.netns,
        "age_exact": lk.age_exact,
        "preexisting": lk.preexisting,
        "recv_q": lk.recv_q,
        "uid": lk.uid,
        "cgroup": None if cgroup is None else printable(cgroup),
        "container": None if (ct := container_of(cgroup)) is None else printable(ct),
        "opened_by": None
        if c is None
        else {
            "pid": c.tgid or None,
            "tid": c.tid or None,
            "comm": printable(c.comm) if c.comm else None,
            "accepted": c.accepted,
        },
        "opener_holds": lk.opener_holds,
        "age_s": round(lk.age_s(s.now_ns), 3),
        "conn_age_s": None if conn_age is None else round(conn_age, 3),
        "ts": round(s.wall, 3),
    }


@functools.lru_cache(maxsize=8192)
def _jstr(text: str | None) -> str:
    """A JSON string literal (escaped for the terminal first), or null; cached
    because the same process names and cgroups recur in every leak."""
    return "null" if text is None else encode_basestring(printable(text))


_JBOOL = {True: "true", False: "false", None: "null"}


class Fragments:
    """JSON fragments that many leaks of a report share, built once per report:
    the fields of a process (its name, cgroup and container), and the
    `opened_by` object of a thread (one thread opens many connections)."""

    def __init__(self) -> None:
        self.procs: dict[int, tuple[str, str]] = {}
        self.openers: dict[tuple[int, int, str, bool], str] = {}

    def proc(self, lk: Leak, pid: int) -> tuple[str, str]:
        """(`comm` literal, `"cgroup":…,"container":…`) of a holder's process."""
        frag = self.procs.get(pid)
        if frag is None:
            proc = lk.proc(pid)
            cg = proc.cgroup
            frag = self.procs[pid] = (
                _jstr(proc.comm),
                f'"cgroup":{_jstr(cg)},"container":{_jstr(container_of(cg))}',
            )
        return frag

    def opener(self, c: Creator) -> str:
        key = (c.tgid, c.tid, c.comm, c.accepted)
        frag = self.openers.get(key)
        if frag is None:
            frag = self.openers[key] = (
                f'{{"pid":{c.tgid or "null"},"tid":{c.tid or "null"},'
                f'"comm":{_jstr(c.comm or None)},"accepted":{_JBOOL[c.accepted]}}}'
            )
        return frag


def leak_line(lk: Leak, now_ns: int, ts: str, shared: Fragments | None = None) -> str:
    """One leak object as a JSON line, assembled directly: json.dumps of a dict
    costs several times more, and a report may carry 100,000 of them.
    tests/test_render.py checks it against leak_json(). `shared` carries the
    fragments that recur across the lines of one report."""
    if shared is None:
        shared = Fragments()
    pid, hs, fds, c = lk.pid, lk.holders, lk.fds, lk.creator
    comm, cgroup = shared.proc(lk, pid)
    if len(hs) == 1:  # the common case: one fd of one process
        holders = f'{{"pid":{pid},"comm":{comm},"fd":{hs[0].fd}}}'
        opener_holds = "null" if c is None or not c.tgid else _JBOOL[c.tgid == pid]
    else:
        holders = ",".join(
            f'{{"pid":{h.pid},"comm":{shared.proc(lk, h.pid)[0]},"fd":{h.fd}}}' for h in hs
        )
        opener_holds = _JBOOL[lk.opener_holds]
    if c is None:
        opened = conn_age = "null"
    else:
        opened = shared.opener(c)
        conn_age = f"{max(0, now_ns - c.opened_ns) / NS_PER_S:.3f}"
    return (
        f'{{"type":"leak","pid":{pid},"comm":{comm},"fd":{fds[0]},'
        f'"fds":[{fds[0] if len(fds) == 1 else ",".join(map(str, fds))}],"inode":{lk.inode},'
        f'"family":"{"ipv6" if lk.tuple.family == socket.AF_INET6 else "ipv4"}",'
        f'"local":"{lk.local}","remote":"{lk.remote}","holders":[{holders}],'
        f'"netns":{lk.netns},"age_exact":{_JBOOL[lk.age_exact]},'
        f'"preexisting":{_JBOOL[lk.preexisting]},"recv_q":{lk.recv_q},"uid":{lk.uid},'
        f'{cgroup},"opened_by":{opened},"opener_holds":{opener_holds},'
        f'"age_s":{max(0, now_ns - lk.fin_ns) / NS_PER_S:.3f},'
        f'"conn_age_s":{conn_age},"ts":{ts}}}'
    )


def _dumps(obj: dict) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
