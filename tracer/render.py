"""Turn leaks and summaries into text: a table for people, JSON lines for jq.

Pure functions of their inputs (no clock, no I/O), so both formats are
tested without a kernel. Every string that came from a traced process goes
through escape.printable() here, in both formats.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from tracer.durations import format_age
from tracer.escape import printable
from tracer.model import NS_PER_S, Leak, LeakEnded, ProbeStats


@dataclass(frozen=True)
class Summary:
    """Totals of one refresh."""

    wall: float  # time.time() of the refresh
    now_ns: int  # CLOCK_MONOTONIC of the refresh, the clock of every *_ns
    elapsed_s: float
    targets: dict[int, str]  # live target pid -> comm ({} with --all)
    all_processes: bool
    new: int
    ended: int
    stats: ProbeStats
    final: bool = False
    exited: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Column:
    """One table column, declared once: header, width, alignment."""

    header: str
    width: int
    right: bool = False

    def cell(self, text: str) -> str:
        return text.rjust(self.width) if self.right else text.ljust(self.width)


COLUMNS = (
    Column("PID", 7, right=True),
    Column("COMM", 15),
    Column("FD", 6, right=True),
    Column("LOCAL", 22),
    Column("REMOTE", 22),
    Column("AGE", 8, right=True),
    Column("RECV-Q", 7, right=True),
    Column("OPENED-BY", 22),
    Column("CONN-AGE", 8, right=True),
)


def _clock(wall: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(wall))


def _age_text(leak: Leak, now_ns: int) -> str:
    text = format_age(leak.age_s(now_ns))
    return text if leak.age_exact else "~" + text


def _fd_text(leak: Leak) -> str:
    fds = leak.fds
    text = ",".join(map(str, fds))
    others = len(leak.holders) - len(fds)
    return f"{text}+{others}" if others else text


def _opened_by(leak: Leak) -> str:
    """`thread-name/tid` of the connecting thread, `(accepted)`, or `-` if unknown."""
    c = leak.creator
    if c is None:
        return "-"
    return "(accepted)" if c.accepted else f"{printable(c.comm)}/{c.tid}"


def _conn_age(leak: Leak, now_ns: int) -> float | None:
    c = leak.creator
    return None if c is None else max(0, now_ns - c.opened_ns) / NS_PER_S


def _lost_text(stats: ProbeStats) -> str:
    parts = [f"events lost {stats.events_lost}"]
    if stats.cw_full:
        parts.append(f"FINs untracked (map full) {stats.cw_full}: raise --max-sockets")
    if stats.conns_evicted:
        parts.append(f"creators evicted {stats.conns_evicted}: raise --max-conns")
    if stats.events_lost:
        parts[0] += ": raise --buffer-pages"
    return ", ".join(parts)


class TableRenderer:
    """ss-like text: a header line with totals, then one row per leaked socket."""

    def report(self, leaks: Sequence[Leak], s: Summary) -> list[str]:
        per_pid = _count_by_pid(leaks)
        if s.all_processes:
            comms = {lk.pid: lk.comms.get(lk.pid, "?") for lk in leaks}
            who = ", ".join(
                f"{pid} {printable(comms[pid])}: {n}"
                for pid, n in sorted(per_pid.items(), key=lambda kv: -kv[1])
            )
        else:
            who = ", ".join(
                f"{pid} {printable(comm)}: {per_pid.get(pid, 0)}" for pid, comm in s.targets.items()
            )
        title = "final report" if s.final else "closewait"
        head = (
            f"{_clock(s.wall)} {title}: {len(leaks)} leaking socket{'s' if len(leaks) != 1 else ''}"
            f" ({who or 'no target left'}) | new {s.new}, ended {s.ended}"
            f" | {_lost_text(s.stats)}"
        )
        lines = [head]
        if leaks:
            lines.append(" ".join(c.cell(c.header) for c in COLUMNS).rstrip())
            for lk in leaks:
                conn_age = _conn_age(lk, s.now_ns)
                cells = (
                    str(lk.pid),
                    printable(lk.comms.get(lk.pid, "?"))[:15],
                    _fd_text(lk),
                    lk.tuple.local,
                    lk.tuple.remote,
                    _age_text(lk, s.now_ns),
                    str(lk.recv_q),
                    _opened_by(lk)[:22],
                    "-" if conn_age is None else format_age(conn_age),
                )
                lines.append(" ".join(c.cell(v) for c, v in zip(COLUMNS, cells)).rstrip())
        lines.append("")
        return lines

    def ended(self, e: LeakEnded, wall: float) -> str:
        lk = e.leak
        fds = ",".join(map(str, lk.fds))
        what = (
            f"{_clock(wall)} ENDED pid {lk.pid} ({printable(lk.comms.get(lk.pid, '?'))}) "
            f"fd {fds} {lk.tuple.local} -> {lk.tuple.remote}: "
        )
        after = format_age(e.latency_s)
        if not (e.exact and lk.age_exact):
            after = "~" + after
        return what + describe_end(e) + f", {after} after the FIN"

    def notice(self, message: str, wall: float) -> str:
        return f"{_clock(wall)} NOTE {message}"


def _count_by_pid(leaks: Sequence[Leak]) -> dict[int, int]:
    per_pid: dict[int, int] = {}
    for lk in leaks:
        per_pid[lk.pid] = per_pid.get(lk.pid, 0) + 1
    return per_pid


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
        return "process exited" + who
    if e.reason == "reset":
        return f"left CLOSE_WAIT (reset by the peer?) but still open: {held}" if held else "reset"
    if e.reason == "shutdown":
        return f"shut down but still open: {held}"
    if e.reason == "released":
        return "no target holds it any more, yet it is still in CLOSE_WAIT (held elsewhere)"
    return e.reason


class JsonRenderer:
    """One JSON object per line; schema documented in README.md."""

    def report(self, leaks: Sequence[Leak], s: Summary) -> list[str]:
        lines = [_dumps(leak_json(lk, s)) for lk in leaks]
        per_pid = _count_by_pid(leaks)
        targets = s.targets if not s.all_processes else {}
        lines.append(
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
                        {"pid": pid, "comm": printable(comm), "leaks": per_pid.get(pid, 0)}
                        for pid, comm in targets.items()
                    ],
                    "leaks_by_pid": {str(pid): n for pid, n in sorted(per_pid.items())},
                    "exited": [
                        {"pid": pid, "comm": printable(comm)} for pid, comm in s.exited.items()
                    ],
                    "events_lost": s.stats.events_lost,
                    "map_full": s.stats.cw_full,
                    "creators_evicted": s.stats.conns_evicted,
                    "fins_seen": s.stats.fins,
                }
            )
        )
        return lines

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


def _identity(lk: Leak) -> dict:
    return {
        "pid": lk.pid,
        "comm": printable(lk.comms.get(lk.pid, "?")),
        "fd": lk.fds[0],
        "fds": lk.fds,
        "inode": lk.inode,
        "family": "ipv6" if lk.tuple.family == socket.AF_INET6 else "ipv4",
        "local": lk.tuple.local,
        "remote": lk.tuple.remote,
    }


def leak_json(lk: Leak, s: Summary) -> dict:
    c = lk.creator
    conn_age = _conn_age(lk, s.now_ns)
    return {
        "type": "leak",
        "ts": round(s.wall, 3),
        **_identity(lk),
        "holders": [
            {"pid": h.pid, "comm": printable(lk.comms.get(h.pid, "?")), "fd": h.fd}
            for h in lk.holders
        ],
        "netns": lk.netns,
        "age_s": round(lk.age_s(s.now_ns), 3),
        "age_exact": lk.age_exact,
        "preexisting": lk.preexisting,
        "recv_q": lk.recv_q,
        "uid": lk.uid,
        "opened_by": None
        if c is None
        else {
            "pid": c.tgid or None,
            "tid": c.tid or None,
            "comm": printable(c.comm) if c.comm else None,
            "accepted": c.accepted,
        },
        "conn_age_s": None if conn_age is None else round(conn_age, 3),
    }


def _dumps(obj: dict) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
