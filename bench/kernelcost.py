"""1b. Kernel-side cost per tracepoint hit, from the kernel's own counters.

A BPF program's cost lands in the workload's context, so the churn section
can only see it as lost throughput, and on a shared machine the baselines
around a measurement drift by several percent: enough to hide the few
points that separate two cheap tracers. The kernel measures each program
itself while run-time stats are enabled (bpf(BPF_ENABLE_STATS), or the
`kernel.bpf_stats_enabled` sysctl): run_time_ns and run_cnt per
program (bpftool prog show). Their ratio is the program's cost per hit,
which does not depend on how busy the rest of the machine is.

For each tracer that runs a BPF program on sock:inet_sock_set_state: start
it, enable the counters, run each churn variant once, and report the
nanoseconds per run of the tracer's busiest program (the one on that
tracepoint). The counters are switched off again at the end: while on,
every BPF program on the host pays two clock reads per run.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from bench import env, stats
from bench.churn import TRACERS, VARIANTS
from bench.config import Config
from bench.env import Netns
from bench.workload import Client, Server

STATS_SYSCTL = "/proc/sys/kernel/bpf_stats_enabled"


def run(cfg: Config, binary: Path, ns: Netns, log: Callable[[str], None]) -> dict:
    server = Server(binary, ns)
    client = Client(binary, ns, cfg.concurrency)
    samples: list[dict] = []
    try:
        client.run(VARIANTS[0], 0, cfg.churn_prewarm_s)
        conditions = cfg.kernel_conditions
        if env.base_argv():
            conditions = (*conditions, "closewait-all@base")
        for rnd, order in enumerate(stats.schedule(conditions, cfg.kernel_rounds, False)):
            for cond in order:
                if cond == stats.BASELINE:
                    continue
                log(f"kernel cost round {rnd + 1}/{cfg.kernel_rounds}: {cond}")
                samples.extend(_session(cfg, cond, rnd, server, client))
    finally:
        client.stop()
        server.stop()
    return summarize(samples)


def _session(cfg: Config, cond: str, rnd: int, server: Server, client: Client) -> list[dict]:
    before = env.tracing_programs() or set()
    tracer = TRACERS[cond](server.pid, client.pid)
    out = []
    try:
        tracer.wait_ready(settle=cfg.churn_settle_s)
        own = (env.tracing_programs() or set()) - before
        with bpf_stats():
            for variant in VARIANTS:
                c0 = program_counters(own)
                res = client.run(variant, cfg.churn_warmup_s, cfg.churn_window_s)
                c1 = program_counters(own)
                out.append(_sample(cond, rnd, variant, res, c0, c1))
    finally:
        tracer.stop()
    return out


def _sample(cond: str, rnd: int, variant: str, res: dict, c0: dict, c1: dict) -> dict:
    """The busiest of the tracer's programs over the window: the one on the
    tracepoint every state change hits (closewait's others run on process
    exit and, when attached, on close-family syscalls)."""
    runs = {pid: (c1[pid][0] - c0[pid][0], c1[pid][1] - c0[pid][1]) for pid in c1 if pid in c0}
    sample = {"round": rnd, "condition": cond, "variant": variant, "tps": res["tps"]}
    if runs:
        prog, (ns, cnt) = max(runs.items(), key=lambda kv: kv[1][1])
        sample.update(program=prog, runs=cnt, run_time_ns=ns)
        if cnt:
            sample["ns_per_run"] = round(ns / cnt, 1)
        # The counters span the warm-up too: compare with every transaction.
        tx = res.get("all_transactions", res["transactions"])
        if tx:
            sample["runs_per_transaction"] = round(cnt / tx, 2)
    return sample


def program_counters(ids: set[int]) -> dict[int, tuple[int, int]]:
    """prog id -> (run_time_ns, run_cnt) for the given programs."""
    res = subprocess.run(
        ["bpftool", "prog", "show", "--json"], capture_output=True, timeout=10, check=False
    )
    try:
        progs = json.loads(res.stdout or b"[]")
    except ValueError:
        return {}
    return {
        p["id"]: (p.get("run_time_ns", 0), p.get("run_cnt", 0)) for p in progs if p["id"] in ids
    }


@contextlib.contextmanager
def bpf_stats() -> Iterator[None]:
    """Run-time statistics on for the duration.

    Through bpf(BPF_ENABLE_STATS) (Linux 5.8+): the kernel keeps them on
    while any such fd is open, counted, so two runs that overlap (another
    suite's benchmark on a shared machine) cannot leave them on, as saving
    and restoring kernel.bpf_stats_enabled did. The sysctl is the fallback."""
    fd = _enable_stats_fd()
    if fd is None:
        with open(STATS_SYSCTL) as f:
            old = f.read().strip()
        with open(STATS_SYSCTL, "w") as f:
            f.write("1")
    time.sleep(0.05)
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)
        else:
            with open(STATS_SYSCTL, "w") as f:
                f.write(old)


_SYS_BPF = {"x86_64": 321, "aarch64": 280}
_BPF_ENABLE_STATS = 32  # enum bpf_cmd
_BPF_STATS_RUN_TIME = 0


def _enable_stats_fd() -> int | None:
    nr = _SYS_BPF.get(os.uname().machine)
    if nr is None:
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    attr = ctypes.create_string_buffer(struct.pack("=I", _BPF_STATS_RUN_TIME), 128)
    fd = libc.syscall(nr, _BPF_ENABLE_STATS, attr, ctypes.sizeof(attr))
    return fd if fd >= 0 else None


def summarize(samples: list[dict]) -> dict:
    """Median ns per run by condition and variant, and each against the floor."""
    conditions = list(dict.fromkeys(s["condition"] for s in samples))
    table: dict[str, dict[str, float | None]] = {}
    for cond in conditions:
        table[cond] = {
            v: stats.median(
                s.get("ns_per_run") for s in samples if s["condition"] == cond and s["variant"] == v
            )
            for v in VARIANTS
        }
    floor = table.get("floor-map", {})
    vs_floor = {
        cond: {
            v: (round(row[v] / floor[v], 3) if row.get(v) and floor.get(v) else None)
            for v in VARIANTS
        }
        for cond, row in table.items()
    }
    return {"ns_per_run": table, "vs_floor_map": vs_floor, "samples": samples}
