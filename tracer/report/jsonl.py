"""The JSON-lines renderer: one object per line, for jq and log pipelines.

The schema is documented in README.md and checked by tests/test_cli_contract.py.
Leak lines, the bulk of a report at 100,000 leaks, are assembled from shared
pre-encoded fragments (Fragments) rather than through json.dumps each.
"""

from __future__ import annotations

import functools
import json
import socket
from collections.abc import Iterator, Sequence
from json.encoder import encode_basestring

from tracer.core.containers import container_of
from tracer.core.model import (
    NS_PER_S,
    Creator,
    FdReleased,
    LatencyBucket,
    Leak,
    LeakEnded,
    leaks_per_pid,
)
from tracer.core.poolwaits import ProcessThreads
from tracer.core.summary import ProcessRank, ProcessTrend, Summary
from tracer.core.threaddump import ThreadStack
from tracer.core.trends import Group, log2_bucket_bounds
from tracer.report.escape import printable
from tracer.report.text import comms_of, conn_age, describe_end, opened_fds, verdict_text


class JsonRenderer:
    """One JSON object per line; schema documented in README.md."""

    def report(self, leaks: Sequence[Leak], s: Summary) -> Iterator[str]:
        """The lines of a report, generated: with 100,000 leaks they are tens
        of MB, written out in chunks rather than held at once."""
        yield from self.leaks(leaks, s.now_ns, s.wall)
        for g in s.groups:
            yield _dumps(group_json(g, s))
        comms = comms_of(s)
        for t in s.threads:
            if t.taken_ns == s.now_ns:  # a new look, taken for this report
                yield _dumps(threads_json(t, comms.get(t.pid, "?"), leaks, s.wall))
        if s.final:
            for obj in latency_json(s.latency, comms_of(s), s.wall):
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
                    "latency_full": s.stats.latency_full,
                    "decode_errors": s.stats.decode_errors,
                    "fins_seen": s.stats.fins,
                    "fins_other_processes": s.stats.fins_foreign,
                }
            )
        )

    def leaks(self, leaks: Sequence[Leak], now_ns: int, wall: float) -> Iterator[str]:
        """Leak lines outside a report (the exporter prints each leak once, when found)."""
        ts = repr(round(wall, 3))
        shared = Fragments()
        for lk in leaks:
            yield leak_line(lk, now_ns, ts, shared)

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
        "verdict": None if p is None or p.verdict is None else p.verdict.kind,
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
        **verdict_json(g),
    }


def verdict_json(g: Group) -> dict:
    v = g.verdict
    if v is None:
        return dict.fromkeys(("verdict", "verdict_text", "verdict_pid", "quiet_s", "established"))
    return {
        "verdict": v.kind,
        "verdict_text": verdict_text(v, g),
        "verdict_pid": v.pid,
        "quiet_s": None if v.quiet_s is None else round(v.quiet_s, 3),
        "established": v.established,
    }


def threads_json(t: ProcessThreads, comm: str, leaks: Sequence[Leak], wall: float) -> dict:
    """One look at a process's threads (--threads)."""
    opened = opened_fds(leaks, t.pid)

    def thread(th: ThreadStack) -> dict:
        return {
            "name": None if th.name is None else printable(th.name),
            "tid": th.tid,
            "state": None if th.state is None else printable(th.state),
            "opened_fds": opened.get(th.tid, []) if th.tid is not None else [],
            "frames": [printable(f.display()) for f in th.frames],
        }

    return {
        "type": "threads",
        "ts": round(wall, 3),
        "pid": t.pid,
        "comm": printable(comm),
        "runtime": t.runtime,
        "tool": t.tool,
        "tool_s": None if t.seconds is None else round(t.seconds, 3),
        "pause_ms": None if t.pause_ms is None else round(t.pause_ms, 3),
        "pause_how": t.pause_how,
        "problem": None if t.problem is None else printable(t.problem),
        "threads": t.threads,
        "waiting": [
            {
                "pool": g.signature.library,
                "pool_frame": printable(g.pool_frame.display()),
                "app_frame": None if g.app_frame is None else printable(g.app_frame.display()),
                "text": printable(g.sentence()),
                "threads": [thread(th) for th in g.threads],
            }
            for g in t.groups
        ],
        "openers": [
            {
                "tid": o.tid,
                "name": None if o.name is None else printable(o.name),
                "state": o.state,
                "wchan": None if o.wchan is None else printable(o.wchan),
                "opened_fds": opened.get(o.tid, []),
            }
            for o in t.openers
        ],
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
    opened_s = conn_age(lk, s.now_ns)
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
        "conn_age_s": None if opened_s is None else round(opened_s, 3),
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
    opened = "null" if c is None else shared.opener(c)
    conn_txt = "null" if (opened_s := conn_age(lk, now_ns)) is None else f"{opened_s:.3f}"
    return (
        f'{{"type":"leak","pid":{pid},"comm":{comm},"fd":{fds[0]},'
        f'"fds":[{fds[0] if len(fds) == 1 else ",".join(map(str, fds))}],"inode":{lk.inode},'
        f'"family":"{"ipv6" if lk.tuple.family == socket.AF_INET6 else "ipv4"}",'
        f'"local":"{lk.local}","remote":"{lk.remote}","holders":[{holders}],'
        f'"netns":{lk.netns},"age_exact":{_JBOOL[lk.age_exact]},'
        f'"preexisting":{_JBOOL[lk.preexisting]},"recv_q":{lk.recv_q},"uid":{lk.uid},'
        f'{cgroup},"opened_by":{opened},"opener_holds":{opener_holds},'
        f'"age_s":{max(0, now_ns - lk.fin_ns) / NS_PER_S:.3f},'
        f'"conn_age_s":{conn_txt},"ts":{ts}}}'
    )


def _dumps(obj: dict) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
