"""Texts both renderers print the same way: ages, fds, openers, containers,
clock times, and how a leak ended. Every string that came from a traced
process goes through escape.printable() here or in the renderers."""

from __future__ import annotations

import time
from collections.abc import Sequence

from tracer.core.containers import container_of
from tracer.core.model import NS_PER_S, Leak, LeakEnded
from tracer.core.poolwaits import ProcessThreads
from tracer.core.summary import Summary
from tracer.core.trends import Group
from tracer.core.verdict import DRAINING, EXHAUSTED, GROWING, STEADY, Verdict
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
    """Names of the processes a report mentions, exited targets included
    (the final report's histogram often outlives its process)."""
    comms = dict(s.exited)
    comms.update({p.pid: p.comm for p in s.processes})
    comms.update(s.targets)
    return comms


def opt(value: int | None) -> str:
    return "?" if value is None else str(value)


# How an fd went, for the drops that do not name a syscall with its fd.
_DROP_WORDS = {
    "exec": "execve() closed fd {fd} (close-on-exec)",
    "io_uring": "an io_uring close dropped fd {fd}",
    "unseen": "fd {fd} was closed unseen (found at a check: a path no probe traces)",
}


def drop_text(via: str, fd: int) -> str:
    """`close(5)`, `dup2(5)`, or the words for an exec, io_uring or unseen drop."""
    words = _DROP_WORDS.get(via)
    return words.format(fd=fd) if words else f"{via}({fd})"


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


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def verdict_text(v: Verdict, g: Group) -> str:
    """The sentence behind a group's verdict (core/verdict.py says when each holds)."""
    window = format_age(v.window_s)
    span = f"last {window}" if v.full_window else f"{window} watched so far"
    who = f" of pid {v.pid}" if len(g.by_pid) > 1 else ""
    if v.kind == EXHAUSTED:
        late = v.pool - v.leaks
        closed = ""
        if late:
            closed = f" ({late} more {'was' if late == 1 else 'were'} closed late, not given back)"
        return (
            f"all {_plural(v.leaks, 'connection')}{who} to {g.endpoint} are leaked and none "
            f"was opened for {format_age(v.quiet_s or 0)}: a pool of {v.pool} for this peer "
            f"is probably exhausted{closed}: a thread that needs a connection to it blocks "
            "(unless the process stopped asking for one: --threads shows which)"
        )
    if v.kind == GROWING:
        return (
            f"growing: {v.change:+d} leaks in the {span}, and new ones keep coming: "
            "an unbounded pool, or a new connection per request"
        )
    if v.kind == DRAINING:
        return f"draining: {-v.change} fewer leaks in the {span}: they are being closed, late"
    text = f"steady: no new leak in the {span}, and the leaked ones stay open"
    if v.quiet_s is not None and v.quiet_s < v.window_s:
        return text + "; it still connects to this peer"
    if v.established:
        return text + f"; {_plural(v.established, 'ESTABLISHED connection')} to it left"
    return text


def process_verdict_text(v: Verdict) -> str:
    """The per-process line's words for its most severe verdict."""
    return {
        EXHAUSTED: f"pool to {v.endpoint} exhausted",
        GROWING: "growing",
        STEADY: "steady: its leaks stay open",
        DRAINING: "draining: leaks are being closed, late",
    }[v.kind]


NAMES_SHOWN = 6  # thread names per table line (JSON has them all)
STATE_WORDS = {
    "R": "running",
    "S": "sleeping",
    "D": "in uninterruptible sleep",
    "T": "stopped",
    "t": "stopped by a tracer",
    "Z": "a zombie",
    "I": "idle",
}


def opened_fds(leaks: Sequence[Leak], pid: int) -> dict[int, list[int]]:
    """tid -> the fds of pid's leaks that thread opened (the join with a dump's threads)."""
    out: dict[int, list[int]] = {}
    for lk in leaks:
        c = lk.creator
        if lk.pid == pid and c is not None and c.tgid == pid and c.tid:
            out.setdefault(c.tid, []).extend(lk.fds)
    return {tid: sorted(fds) for tid, fds in out.items()}


def dump_header(t: ProcessThreads, comm: str, now_ns: int) -> str:
    """`threads of pid 5528 (java), jcmd Thread.print in 0.25s, JVM paused 0.40 ms: 25 threads`"""
    text = f"threads of pid {t.pid} ({printable(comm)})"
    if now_ns != t.taken_ns:
        text += f", looked {format_age((now_ns - t.taken_ns) / NS_PER_S)} ago"
    if t.tool:
        text += f", {t.tool}" + ("" if t.seconds is None else f" in {t.seconds:.2f}s")
    if t.problem is not None:
        return f"{text}: {printable(t.problem)}"
    if t.pause_ms is not None:
        text += ", not paused" if t.pause_ms == 0 else f", paused {t.pause_ms:.2f} ms"
    return f"{text}: {t.threads} threads"


def dump_lines(t: ProcessThreads, leaks: Sequence[Leak]) -> list[str]:
    """What the threads are doing: pool waits and the leaks their threads opened,
    or (no dump) the state of each opener thread."""
    opened = opened_fds(leaks, t.pid)
    lines = [printable(g.sentence(max_names=NAMES_SHOWN)) for g in t.groups]
    if t.problem is None and not t.groups:
        lines.append("no thread waits for a pooled connection")
    blocked = [(tid, opened[tid]) for tid in sorted(t.waiting_tids()) if tid in opened]
    if blocked:
        names = {th.tid: th.label() for g in t.groups for th in g.threads}
        who = ", ".join(
            f"{printable(names[tid])}/{tid} (fd {','.join(map(str, fds))})"
            for tid, fds in blocked[:NAMES_SHOWN]
        )
        if len(blocked) > NAMES_SHOWN:
            who += f" and {len(blocked) - NAMES_SHOWN} more"
        n = len(blocked)
        lines.append(
            f"{'the thread' if n == 1 else f'{n} threads'} that opened the leaked connections "
            f"{'is' if n == 1 else 'are'} among them, blocked waiting for another one: {who}"
        )
    for o in t.openers:
        state = STATE_WORDS.get(o.state or "", o.state or "?")
        wchan = f" in {printable(o.wchan)}" if o.wchan else ""
        fds = ",".join(map(str, opened.get(o.tid, [])))
        lines.append(f"opener {printable(o.name or '?')}/{o.tid} (fd {fds}): {state}{wchan}")
    return lines
