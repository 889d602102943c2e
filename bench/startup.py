"""3. Start-up: launch to attached, and to the first report.

"Attached" is the moment the stderr line "attached in X.XXs" arrives (BPF
program compiled, loaded and attached; closewait's own figure is kept
too); "first report" the moment the first summary line arrives (it follows
the first refresh: sock_diag in the targets' namespaces, /proc). Two
commands, alternating: `watch --pid <this benchmark's pid>`, the common
case, and `watch --all`, whose first refresh covers every process and
namespace of the host, and every leak on it (other people's included on a
shared machine, so it is reported, not judged). The compile is the bulk of
it and is CPU-bound: a busy machine stretches it.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from bench import stats, tracers
from bench.config import Config

COMMANDS = {
    "pid": ["--pid", str(os.getpid()), "--interval", "1s"],
    "all": ["--all", "--interval", "1s"],
}


def run(cfg: Config, log: Callable[[str], None]) -> dict:
    reps: dict[str, list[dict]] = {name: [] for name in COMMANDS}
    for i in range(cfg.startup_reps):
        for name, args in COMMANDS.items():
            log(f"startup {i + 1}/{cfg.startup_reps}: watch --{name}")
            reps[name].append(_once(args))
    out: dict = {}
    for name, rs in reps.items():
        out[name] = {
            "command": "closewait watch --json " + " ".join(COMMANDS[name]),
            "launch_to_attached_s_median": _med(rs, "launch_to_attached_s"),
            "attached_in_s_median": _med(rs, "attached_in_s"),
            "launch_to_first_report_s_median": _med(rs, "launch_to_first_report_s"),
            "first_report_leaks": rs[-1]["first_report_leaks"] if rs else None,
            "idle_memory_mb": rs[-1]["memory_mb"] if rs else {},
            "repetitions": rs,
        }
    return out


def _once(args: list[str]) -> dict:
    w = tracers.ClosewaitWatch(args, "closewait-startup")
    try:
        attached = w.wait_ready()
        first = w.wait_summary(lambda s: True, 120)
        return {
            "launch_to_attached_s": round(attached, 3),
            "attached_in_s": w.attached_in(),
            "launch_to_first_report_s": round(first.t - w.t_launch, 3),
            "first_report_leaks": first.obj.get("leaks"),
            "memory_mb": w.memory(),
        }
    finally:
        w.stop()


def _med(reps: list[dict], key: str) -> float | None:
    m = stats.median(r[key] for r in reps if r.get(key) is not None)
    return None if m is None else round(m, 3)
