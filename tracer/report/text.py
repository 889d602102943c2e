"""Texts both renderers print the same way: ages, fds, openers, containers,
clock times, and how a leak ended. Every string that came from a traced
process goes through escape.printable() here or in the renderers."""

from __future__ import annotations

import time

from tracer.core.containers import container_of
from tracer.core.model import NS_PER_S, Leak, LeakEnded
from tracer.core.summary import Summary
from tracer.report.durations import format_age
from tracer.report.escape import printable


def age_text(leak: Leak, now_ns: int) -> str:
    text = format_age(leak.age_s(now_ns))
    return text if leak.age_exact else "~" + text


def fd_text(leak: Leak) -> str:
    """The first process's fds, then `+N` for holders in other processes."""
    fds = leak.fds
    others = len(leak.holders) - len(fds)
    text = ",".join(map(str, fds))
    return f"{text}+{others}" if others else text


def opened_by(leak: Leak) -> str:
    """`thread-name/tid` of the connecting thread, `(accepted)`, or `-` if unknown.

    A trailing `*` marks a socket its opener no longer holds (see footnote)."""
    c = leak.creator
    if c is None:
        return "-"
    if c.accepted:
        return "(accepted)"
    return f"{printable(c.comm)}/{c.tid}" + ("*" if leak.opener_holds is False else "")


def conn_age(leak: Leak, now_ns: int) -> float | None:
    c = leak.creator
    return None if c is None or not c.opened_ns else max(0, now_ns - c.opened_ns) / NS_PER_S


def container(leak: Leak) -> str | None:
    return container_of(leak.proc(leak.pid).cgroup)


def clock(wall: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(wall))


def comms_of(s: Summary) -> dict[int, str]:
    comms = {p.pid: p.comm for p in s.processes}
    comms.update(s.targets)
    return comms


def opt(value: int | None) -> str:
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
