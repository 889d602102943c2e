"""2. Leaks at scale: N sockets in CLOSE_WAIT held by P processes.

For each case: an accept-close server and P leaking clients in the
benchmark's namespace open N connections; the server closes each at once,
so every client socket sits in CLOSE_WAIT, held and never closed. Then:

- `closewait snapshot --pid P1 --pid P2 ... --json` (when the command
  exists): wall time, and how many of the N it reports;
- `closewait watch --pid P1 ... --json`, started once the leaks are older than
  --min-age: launch to attached, launch to the first report that lists all
  N ("first complete report"), then CPU per refresh: the process's
  utime+stime between the arrival of two summary lines R refreshes apart,
  divided by R (a refresh includes printing its N JSON lines, which the
  benchmark reads and counts without parsing), and RSS;
- the end of every leak at once, by the case's ending: "exit" (the
  clients exit) or "close" (each client close()s every socket, one syscall
  each, as a pool shutdown does: an fd-drop event and an exit event per
  leak): how many ENDED lines came, how many name the closing process
  (only a kernel event can: a leak found gone by polling cannot say who
  closed it), how long after the last close the last ENDED line came, the
  tracer's CPU for the whole storm, and the events lost, the ones that
  mattered most: about sockets already judged leaks.

One process can hold at most RLIMIT_NOFILE sockets (a hard limit of 20000
here that the sandbox cannot raise), so 100,000 leaks take several.

The leaking processes are named with --pid rather than watched with --all:
with --all, closewait also reports (and pays for) every other leak on the
host, and on a shared machine another test suite's leaks would be counted
in (the cost of --all on an idle host is in the start-up section).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from bench import env, stats, tracers
from bench.config import Config
from bench.env import Netns
from bench.workload import Leaker, Server

MIN_AGE_S = 1.0
MAX_SOCKETS = 262144  # --max-sockets: closewait's maps must hold every leak


def run(cfg: Config, binary: Path, ns: Netns, log: Callable[[str], None]) -> dict:
    snapshot = env.has_snapshot()
    cases = []
    for count, procs, ending in cfg.scale_cases:
        log(f"scale: {count} leaked sockets in {procs} process(es), ended by {ending}")
        cases.append(_case(cfg, binary, ns, count, procs, ending, snapshot, log))
    return {
        "snapshot_available": snapshot,
        "min_age_s": MIN_AGE_S,
        "interval_s": cfg.scale_interval_s,
        "max_sockets": MAX_SOCKETS,
        "cases": cases,
    }


def _case(
    cfg: Config,
    binary: Path,
    ns: Netns,
    count: int,
    procs: int,
    ending: str,
    snapshot: bool,
    log: Callable[[str], None],
) -> dict:
    server = Server(binary, ns, accept_close=True)
    shares = [count // procs + (1 if i < count % procs else 0) for i in range(procs)]
    leakers: list[Leaker] = []
    out: dict = {"leaks": count, "processes": procs, "per_process": shares, "ending": ending}
    try:
        t0 = time.monotonic()
        leakers = [Leaker(binary, ns, n) for n in shares]
        fins = sum(lk.wait_ready() for lk in leakers)
        out["setup_s"] = round(time.monotonic() - t0, 2)
        out["in_close_wait"] = fins
        pids = {lk.pid for lk in leakers}
        out["snapshot"] = _snapshot(cfg, pids) if snapshot else {"available": False}
        time.sleep(max(0.0, MIN_AGE_S + 0.2 - (time.monotonic() - t0)))
        out["watch"] = _watch(cfg, pids, fins, leakers, ending, log)
    finally:
        for lk in leakers:
            lk.stop()
        server.stop()
    return out


def _snapshot(cfg: Config, pids: set[int]) -> dict:
    """Wall time of `closewait snapshot --pid ... --json`; leaks it found among ours."""
    walls, found = [], []
    for _ in range(cfg.snapshot_reps):
        if walls and walls[-1] > 5:
            break  # slow enough that one more run would say nothing new
        t = time.monotonic()
        res = subprocess.run(
            [
                *env.closewait_argv(),
                "snapshot",
                *(a for pid in sorted(pids) for a in ("--pid", str(pid))),
                "--json",
            ],
            capture_output=True,
            cwd=env.ROOT,
            check=False,
        )
        walls.append(time.monotonic() - t)
        if res.returncode != 0:
            return {"available": True, "error": res.stderr.decode(errors="replace")[-300:]}
        found.append(_count_leak_lines(res.stdout, pids))
    return {
        "available": True,
        "wall_s_median": round(stats.median(walls), 3),
        "wall_s": [round(w, 3) for w in walls],
        "leaks_found": found[-1],
    }


def _count_leak_lines(stdout: bytes, pids: set[int]) -> int:
    """Leak lines whose pid is one of ours (only lines that look like leaks are parsed)."""
    n = 0
    for line in stdout.splitlines():
        if b'"leak"' in line[:40]:
            obj = json.loads(line)
            if obj.get("type") == "leak" and obj.get("pid") in pids:
                n += 1
    return n


def _watch(
    cfg: Config,
    pids: set[int],
    count: int,
    leakers: list[Leaker],
    ending: str,
    log: Callable[[str], None],
) -> dict:
    interval = cfg.scale_interval_s
    args = [a for pid in sorted(pids) for a in ("--pid", str(pid))]
    args += ["--interval", f"{interval}s", "--min-age", f"{MIN_AGE_S}s"]
    args += ["--max-sockets", str(MAX_SOCKETS)]
    w = tracers.ClosewaitWatch(args, "closewait-scale")
    out: dict = {}
    try:
        # Generous timeouts: a slow refresh is a result to report, not a hang.
        timeout = 60 + count / 1000
        out["launch_to_attached_s"] = round(w.wait_ready(timeout), 3)
        out["attached_in_s"] = w.attached_in()
        first = w.wait_summary(lambda s: s.leaks_of(pids) >= count, timeout)
        out["launch_to_complete_report_s"] = round(first.t - w.t_launch, 3)
        out["reports_before_complete"] = first.index

        # CPU per refresh: between the arrival of two summaries R refreshes
        # apart (the CPU between them is R whole refresh cycles).
        k = len(w.output.summaries)
        start = w.wait_summary(lambda s: s.index >= k, timeout)
        cpu0 = w.cpu()
        end = w.wait_summary(lambda s: s.index >= start.index + cfg.scale_refreshes, timeout)
        cpu1 = w.cpu()
        refreshes = end.index - start.index
        if cpu0 and cpu1:
            d = cpu1 - cpu0
            out["cpu_per_refresh_s"] = round(d.total / refreshes, 3)
            out["cpu_per_refresh_user_s"] = round(d.user / refreshes, 3)
            out["cpu_per_refresh_sys_s"] = round(d.system / refreshes, 3)
        out["refresh_period_s"] = round((end.t - start.t) / refreshes, 3)
        out["leaks_reported"] = end.leaks_of(pids)
        out["memory_mb"] = w.memory()

        # Every leak ends at once: the clients close() them all, or exit.
        reported = end.leaks_of(pids)
        log(f"scale: ending {reported} leaks at once by {ending}")
        t_end = time.monotonic()
        cpu_before = w.cpu()
        storm: dict = {}
        if ending == "close":
            for lk in leakers:
                lk.close_all()
            t_closed = time.monotonic()
            deadline = t_closed + timeout

            def ended_now() -> int:
                return sum(1 for t, e in w.ended() if t >= t_end and e.get("pid") in pids)

            while ended_now() < reported and time.monotonic() < deadline:
                time.sleep(0.05)
            last = max((t for t, _ in w.ended()), default=t_closed)
            cpu_after = w.cpu()
            storm = {
                "closes_s": round(t_closed - t_end, 3),
                "last_ended_after_last_close_s": round(last - t_closed, 3),
                "cpu_s": round((cpu_after - cpu_before).total, 3)
                if cpu_before and cpu_after
                else None,
            }
        for lk in leakers:
            lk.stop()
        # Every target gone: closewait prints its final report and exits.
        final = w.wait_summary(lambda s: s.t > t_end and s.obj.get("final"), timeout)
        ended = [e for t, e in w.ended() if t >= t_end and e.get("pid") in pids]
        out["end_burst"] = {
            "how": ending,
            "leaks_ended": reported,
            "ended_lines": len(ended),
            # An end explained by a kernel event names the thread that
            # closed (the closing or exiting client); one found by polling cannot.
            "closer_named": sum(1 for e in ended if e.get("by_pid") is not None),
            "fd_named": sum(1 for e in ended if e.get("by_fd") is not None),
            "by_reason": _by_reason(ended),
            "events_lost": final.obj.get("events_lost"),
            "last_ended_after_s": round(max((t for t, _ in w.ended()), default=t_end) - t_end, 3),
            **storm,
        }
        out["events_lost"] = final.obj.get("events_lost")
        out["map_full"] = final.obj.get("map_full")
    finally:
        t = time.monotonic()
        out["exit_status"] = w.stop()
        out["stop_s"] = round(time.monotonic() - t, 3)
    return out


def _by_reason(ended: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in ended:
        out[e.get("reason", "?")] = out.get(e.get("reason", "?"), 0) + 1
    return out
