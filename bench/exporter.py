"""5. The always-on exporter: idle RSS, a scrape at N leaks, and (on request) a soak.

- idle: `closewait exporter --all` on a host with nothing to find (beyond
  other suites' leaks), RSS after a few refreshes, and a scrape;
- scale: N sockets in CLOSE_WAIT held by one process in the benchmark's
  namespace (bench/loadgen.c `leak`), `exporter --pid` on it: how long a
  scrape takes (median and max of 20 GET /metrics, client side), its size,
  and the series it holds: bounded by the label cardinality, not by N;
- soak (only with --soak-s S, never in the default run): `exporter --all`
  for S seconds under intermittent churn (one connection in flight, a
  half-second window every 3 s) and pid churn (a leaking process with 100
  leaks is replaced every minute: same comm, new pid), RSS sampled every
  30 s. The figure that matters is the drift: RSS at the end minus RSS
  after the first minute.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from bench import procstat, stats, tracers
from bench.config import Config
from bench.env import Netns
from bench.workload import Client, Leaker, Server

SCRAPES = 20
SOAK_SAMPLE_S = 30.0
SOAK_PID_CHURN_S = 60.0


def run(cfg: Config, binary: Path, ns: Netns, log: Callable[[str], None]) -> dict:
    out: dict = {"idle": _idle(cfg, log), "scale": _scale(cfg, binary, ns, log)}
    if cfg.soak_s:
        out["soak"] = _soak(cfg, binary, ns, log)
    return out


def _started(args: list[str], name: str) -> tracers.ClosewaitExporter:
    ex = tracers.ClosewaitExporter(args, name)
    try:
        ex.wait_ready()
    except tracers.TracerFailed:
        ex.stop()
        raise
    return ex


def _idle(cfg: Config, log: Callable[[str], None]) -> dict:
    log("exporter: idle RSS (--all)")
    ex = _started(["--all", "--interval", "1s"], "exporter-idle")
    try:
        time.sleep(cfg.exporter_settle_s)  # a few refreshes: the steady state
        seconds, body = ex.scrape()
        return {
            "memory_mb": ex.memory(),
            "scrape_s": round(seconds, 4),
            "scrape_bytes": len(body),
            "leaks_on_host": int(ex.metric("closewait_leaked_sockets", body) or 0),
        }
    finally:
        ex.stop()


def _scale(cfg: Config, binary: Path, ns: Netns, log: Callable[[str], None]) -> dict:
    n = cfg.exporter_leaks
    log(f"exporter: a scrape at {n} leaks")
    server = Server(binary, ns, accept_close=True)
    leaker = None
    ex = None
    try:
        leaker = Leaker(binary, ns, n)
        fins = leaker.wait_ready()
        # Older than --min-age at the exporter's first refresh: a socket
        # younger than that at the first sock_diag dump, and not in the
        # kernel map (it got its FIN before attach), waits for the 30 s
        # reconcile (tracer/engine/watcher.py), as with `watch`.
        time.sleep(1.2)
        ex = _started(
            ["--pid", str(leaker.pid), "--interval", "1s", "--min-age", "1s",
             "--max-sockets", str(max(65536, 2 * n))],
            "exporter-scale",
        )  # fmt: skip
        t0 = time.monotonic()
        seen = None
        while time.monotonic() - t0 < 60:
            seen = ex.metric("closewait_leaked_sockets")
            if seen == fins:
                break
            time.sleep(0.2)
        times, size, body = [], 0, b""
        for _ in range(SCRAPES):
            seconds, body = ex.scrape()
            times.append(seconds)
            size = len(body)
        series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
        return {
            "leaks": fins,
            "leaks_exported": seen,
            "to_all_leaks_s": round(time.monotonic() - t0, 2),
            "scrape_ms_median": round(1000 * stats.median(times), 2),
            "scrape_ms_max": round(1000 * max(times), 2),
            "scrape_bytes": size,
            "series": series,
            "memory_mb": ex.memory(),
        }
    finally:
        if ex is not None:
            ex.stop()
        if leaker is not None:
            leaker.stop()
        server.stop()


def _soak(cfg: Config, binary: Path, ns: Netns, log: Callable[[str], None]) -> dict:
    log(f"exporter: soak for {cfg.soak_s:.0f}s (churn, pid churn)")
    server = Server(binary, ns)
    leak_server = Server(binary, ns, accept_close=True)
    client = Client(binary, ns, 1)
    leaker = Leaker(binary, ns, 100)
    leaker.wait_ready()
    ex = _started(["--all"], "exporter-soak")
    samples: list[dict] = []
    try:
        t0 = last_sample = last_swap = time.monotonic()
        transactions = swaps = 0
        while (now := time.monotonic()) - t0 < cfg.soak_s:
            transactions += client.run("client-first" if swaps % 2 else "server-first", 0, 0.5)[
                "transactions"
            ]
            time.sleep(2.5)
            if now - last_swap >= SOAK_PID_CHURN_S:
                leaker.stop()
                leaker = Leaker(binary, ns, 100)
                leaker.wait_ready()
                swaps, last_swap = swaps + 1, now
            if now - last_sample >= SOAK_SAMPLE_S or not samples:
                seconds, body = ex.scrape()
                mem = ex.memory()
                samples.append(
                    {
                        "t_s": round(now - t0),
                        "rss_mb": mem.get("VmRSS"),
                        "anon_mb": mem.get("RssAnon"),
                        "scrape_ms": round(1000 * seconds, 2),
                        "series": sum(1 for x in body.splitlines() if x and not x.startswith(b"#")),
                        "leaks": int(ex.metric("closewait_leaked_sockets", body) or 0),
                        "cpu_s": round((procstat.runtime(ex.pid) or 0.0), 2),
                    }
                )
                log(f"soak t={samples[-1]['t_s']}s RSS {samples[-1]['rss_mb']} MB")
                last_sample = now
        first = next((s for s in samples if s["t_s"] >= 60), samples[0])
        return {
            "seconds": cfg.soak_s,
            "transactions": transactions,
            "pid_swaps": swaps,
            "samples": samples,
            "rss_drift_mb": round((samples[-1]["rss_mb"] or 0) - (first["rss_mb"] or 0), 1),
            "exit_status": ex.stop(),
        }
    finally:
        ex.stop()
        for p in (leaker, client, server, leak_server):
            p.stop()
