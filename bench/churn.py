"""1. Overhead on connection churn.

Two long-lived loadgen processes in the benchmark's network namespace: a
server and a client keeping `concurrency` connections in flight, each
connection one small request and response, then closed. Two variants:
client-first (the client closes; server sockets pass through CLOSE_WAIT)
and server-first (the server closes; client sockets do).

Each slot of the schedule (bench/stats.py: every condition between two
baselines) starts one tracer, waits until it is attached and settled, runs
both variants (their order alternating from slot to slot), and stops it.
Per variant it records the client's transactions/s over the window after
the warm-up, and the CPU used over that window by the workload (loadgen
processes and ksoftirqd threads, from the scheduler's nanosecond counters)
and by the tracer. The tracer's own CPU is also taken over its whole
session, which spans at least two of closewait's refreshes.

A tracer's kernel-side cost is not in its process's CPU time: a BPF
program runs in the context of whoever hit the tracepoint (here the
workload, in its syscalls and in the softirq work done on its behalf). It
shows up as throughput lost against the baselines around it, and as more
CPU per transaction. A measurement is left out of the medians when the two
baselines around it disagree by more than NOISY, when another BPF tracing
program (another test suite, another tracer) was loaded meanwhile, or when
`watch --all` found leaks (another suite's: this workload leaks nothing).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

from bench import env, procstat, stats, tracers
from bench.config import Config
from bench.env import Netns
from bench.workload import Client, Server

VARIANTS = ("client-first", "server-first")

# A slot whose two surrounding baselines differ by more than this saw the
# machine change speed (another job started or stopped): its ratio says
# more about that job than about the tracer.
NOISY = 0.05

# --max-sockets/--max-conns are left at their defaults: what a user runs.
TRACERS: dict[str, Callable[[int, int], tracers.Tracer]] = {
    "closewait-all": lambda s, c: tracers.ClosewaitWatch(["--all"], "closewait-all"),
    "closewait-exporter-all": lambda s, c: tracers.ClosewaitExporter(
        ["--all"], "closewait-exporter-all"
    ),
    "closewait-pid-server": lambda s, c: tracers.ClosewaitWatch(
        ["--pid", str(s)], "closewait-pid-server"
    ),
    "closewait-pid-client": lambda s, c: tracers.ClosewaitWatch(
        ["--pid", str(c)], "closewait-pid-client"
    ),
    "tcpstates": lambda s, c: tracers.Tracer(tracers.tcpstates()),
    "bpftrace-print": lambda s, c: tracers.Tracer(tracers.bpftrace_print()),
    "bpftrace-count": lambda s, c: tracers.Tracer(tracers.bpftrace_count()),
    "floor-map": lambda s, c: tracers.Tracer(tracers.floor(raw=False)),
    "floor-raw": lambda s, c: tracers.Tracer(tracers.floor(raw=True)),
}

if env.base_argv():
    TRACERS["closewait-all@base"] = lambda s, c: tracers.ClosewaitWatch(
        ["--all"], "closewait-all@base", command=env.base_argv()
    )

DESCRIPTIONS = {
    "baseline": "no tracer",
    "closewait-all": "closewait watch --all",
    "closewait-all@base": "closewait watch --all of CLOSEWAIT_BENCH_BASE_CMD's build",
    "closewait-exporter-all": "closewait exporter --all (the always-on condition)",
    "closewait-pid-server": "closewait watch --pid <server>",
    "closewait-pid-client": "closewait watch --pid <client>",
    "tcpstates": "tcpstates-bpfcc (BCC), output to a pty",
    "bpftrace-print": "bpftrace printf per event, output to a pty",
    "bpftrace-count": "bpftrace count() per state pair (in-kernel)",
    "floor-map": "map-only BPF program (bench/floor.bpf.c), tracepoint",
    "floor-raw": "map-only BPF program, raw tracepoint",
}


def run(cfg: Config, binary: Path, ns: Netns, log: Callable[[str], None]) -> dict:
    server = Server(binary, ns)
    client = Client(binary, ns, cfg.concurrency)
    samples: list[dict] = []
    sessions: list[dict] = []
    try:
        # Reach the steady state (TIME_WAIT population at its cap, caches
        # warm) before anything is compared.
        for v in VARIANTS:
            client.run(v, 0, cfg.churn_prewarm_s)
        t_start = time.monotonic()
        took: dict[str, list[float]] = {}  # seconds each slot took, by condition
        plan = stats.schedule(cfg.churn_conditions, cfg.churn_rounds, cfg.churn_bracket)
        rnd = 0
        while rnd < len(plan):
            slots = plan[rnd]
            for slot, cond in enumerate(slots):
                order = VARIANTS if (rnd + slot) % 2 == 0 else VARIANTS[::-1]
                log(f"churn round {rnd + 1}/{len(plan)} slot {slot + 1}/{len(slots)}: {cond}")
                t_slot = time.monotonic()
                s, sess = _slot(cfg, cond, rnd, order, server, client)
                took.setdefault(cond, []).append(time.monotonic() - t_slot)
                for sample in s:
                    sample["slot"] = slot
                samples.extend(s)
                if sess:
                    sessions.append(sess)
            rnd += 1
            # After the planned rounds, and while the time budget lasts:
            # one more round of the conditions that still lack two clean
            # measurements (noise comes in bursts; a later try often misses
            # them).
            if rnd == len(plan) and cfg.churn_bracket:
                todo = lacking(cfg.churn_conditions, samples, need=2)
                left = cfg.churn_budget_s - (time.monotonic() - t_start)
                if todo and left > _round_estimate(took, todo):
                    log(f"churn: one more round for {', '.join(todo)} (noisy measurements)")
                    plan.append(stats.schedule([stats.BASELINE, *todo], 1, bracket=True)[0])
    finally:
        client.stop()
        server.stop()
    return summarize(cfg, samples, sessions)


def _round_estimate(took: dict[str, list[float]], todo: list[str]) -> float:
    """Seconds a bracketed round of these conditions will take, from the
    slowest slot each has taken so far (a tracer slowed down by the machine
    stays slow)."""
    base = max(took.get(stats.BASELINE, [5.0]))
    return (len(todo) + 1) * base + sum(max(took.get(c, [15.0])) for c in todo)


def _slot(
    cfg: Config, cond: str, rnd: int, order: tuple[str, ...], server: Server, client: Client
) -> tuple[list[dict], dict | None]:
    tracer = None
    session: dict | None = None
    before = env.tracing_programs()
    own: set[int] = set()
    if cond != stats.BASELINE:
        tracer = TRACERS[cond](server.pid, client.pid)
        try:
            # The settle keeps the tracer's start-up tail (closewait's first
            # refresh scans /proc and every namespace; BCC frees its compiler
            # heap) out of the measured windows.
            ready = tracer.wait_ready(settle=cfg.churn_settle_s)
        except tracers.TracerFailed:
            tracer.stop()
            raise
        session = {"condition": cond, "round": rnd, "ready_s": round(ready, 3)}
        after = env.tracing_programs()
        if before is not None and after is not None:
            own = after - before  # what this tracer loaded (anything else: foreign)
            session["bpf_programs"] = len(own)
    out = []
    t0 = time.monotonic()
    run0 = procstat.runtime(tracer.pid) if tracer else None
    try:
        for variant in order:
            sample = _measure(cfg, cond, rnd, variant, tracer, server, client)
            now = env.tracing_programs()
            if before is not None and now is not None:
                # Tracing programs loaded now that are not this tracer's:
                # another suite's or tool's, on the same hot paths.
                sample["foreign_bpf_programs"] = len(now - own)
            out.append(sample)
    finally:
        if tracer is not None:
            # The tracer's CPU over the whole session (both variants), which
            # spans at least two of closewait's refreshes; a single window
            # may or may not contain one.
            run1, t1 = procstat.runtime(tracer.pid), time.monotonic()
            exported = _last_scrape(tracer)
            rc = tracer.stop()
            assert session is not None
            session["exit_status"] = rc
            if run0 is not None and run1 is not None:
                session["tracer_cpu_pct"] = round(100 * (run1 - run0) / (t1 - t0), 3)
            session["transactions"] = sum(s["all_transactions"] for s in out)
            if cond == "bpftrace-count":
                # Its map, printed at exit, counts every state change: the
                # number of tracepoint hits per transaction, for the cost
                # per event.
                hits = _bpftrace_total(bytes(tracer.out.head))
                if hits and session["transactions"]:
                    session["events_per_transaction"] = round(hits / session["transactions"], 3)
            # Totals of the session (both variants): a printing tracer's
            # output and its loss reports lag behind the events, so they
            # cannot be split between the two variants exactly.
            if exported is not None:
                session["exporter"] = exported
                session["events_lost"] = exported["events_lost"]
                if exported["leaks"]:  # someone else's, as with watch --all below
                    session["foreign_leaks"] = exported["leaks"]
                    for sample in out:
                        sample["foreign_leaks"] = exported["leaks"]
            else:
                session["events_lost"] = tracer.lost()
            if tracer.spec.prints_events:
                session["events_printed"] = tracer.printed()
            if isinstance(tracer, tracers.ClosewaitWatch):
                last = tracer.last_summary()
                final = last.obj if last else {}
                session["closewait"] = {
                    k: final.get(k)
                    for k in ("events_lost", "map_full", "creators_evicted", "fins_seen", "final")
                }
                session["closewait"]["reports"] = len(tracer.output.summaries)
                # This workload leaks nothing: leaks in a report are someone
                # else's (another suite's leaking processes, seen by --all),
                # and closewait then spends its refreshes on them.
                foreign = max((x.obj.get("leaks", 0) for x in tracer.output.summaries), default=0)
                if foreign:
                    session["foreign_leaks"] = foreign
                    for sample in out:
                        sample["foreign_leaks"] = foreign
    return out, session


def _measure(
    cfg: Config,
    cond: str,
    rnd: int,
    variant: str,
    tracer: tracers.Tracer | None,
    server: Server,
    client: Client,
) -> dict:
    gen0, g0 = (server.cpu(), client.cpu()), time.monotonic()
    client.start_run(variant, cfg.churn_warmup_s, cfg.churn_window_s)
    # CPU is read at the start and the end of the client's measured window
    # (the warm-up is excluded from both); the client's rate times this
    # window is the transactions the CPU paid for.
    time.sleep(cfg.churn_warmup_s)
    t0, cpu0 = time.monotonic(), tracer.cpu() if tracer else None
    run0 = _runtimes(tracer, server, client)
    res = client.result()
    t1, cpu1 = time.monotonic(), tracer.cpu() if tracer else None
    run1 = _runtimes(tracer, server, client)
    gen1, g1 = (server.cpu(), client.cpu()), time.monotonic()
    window = t1 - t0
    sample = {
        "round": rnd,
        "condition": cond,
        "variant": variant,
        "tps": res["tps"],
        "transactions": res["transactions"],
        "seconds": res["seconds"],
        "errors": res["errors"],
        "generator_wall_s": round(g1 - g0, 3),
        "all_transactions": res.get("all_transactions", res["transactions"]),
    }
    for who, a, b in (("server", gen0[0], gen1[0]), ("client", gen0[1], gen1[1])):
        if a and b:
            d = b - a
            sample[f"{who}_user_s"], sample[f"{who}_sys_s"] = round(d.user, 3), round(d.system, 3)
    used = {k: run1[k] - run0[k] for k in run0.keys() & run1.keys()}
    if res["tps"] > 0 and "workload" in used:
        # CPU per transaction: everything the transactions cost, wherever
        # it ran: the two loadgen processes (their syscalls, and the
        # loopback softirq work done in their context, where most of a BPF
        # program's cost lands), the ksoftirqd threads (softirq work
        # deferred there), and the tracer's own process.
        total = used["workload"] + used.get("tracer", 0.0)
        sample["cpu_us_per_tx"] = round(1e6 * total / (res["tps"] * window), 3)
    if tracer is not None:
        if cpu0 and cpu1:
            d = cpu1 - cpu0
            sample["tracer_cpu_pct"] = round(100 * d.total / window, 2)
            sample["tracer_user_s"], sample["tracer_sys_s"] = round(d.user, 3), round(d.system, 3)
        if "tracer" in used:
            # The scheduler's nanosecond count is preferred over the ticks.
            sample["tracer_cpu_pct"] = round(100 * used["tracer"] / window, 2)
        sample["tracer_memory_mb"] = tracer.memory()
    return sample


def _last_scrape(tracer: tracers.Tracer) -> dict | None:
    """The exporter's counters, scraped once before it is stopped."""
    if not isinstance(tracer, tracers.ClosewaitExporter):
        return None
    try:
        seconds, body = tracer.scrape()
    except OSError:
        return {"events_lost": 0, "leaks": 0, "scrape_failed": True}
    return {
        "scrape_s": round(seconds, 4),
        "events_lost": int(tracer.metric("closewait_events_lost_total", body) or 0),
        "map_full": int(tracer.metric("closewait_map_full_total", body) or 0),
        "fins": int(tracer.metric("closewait_fins_total", body) or 0),
        "leaks": int(tracer.metric("closewait_leaked_sockets", body) or 0),
    }


def _bpftrace_total(output: bytes) -> int:
    """Sum of the counts of a bpftrace map dump: lines like "@[1, 4]: 12345"."""
    return sum(int(m) for m in re.findall(rb"^@\[[^\]]*\]: (\d+)$", output, re.MULTILINE))


def _runtimes(tracer: tracers.Tracer | None, server: Server, client: Client) -> dict[str, float]:
    """CPU seconds so far: the workload (loadgen + ksoftirqd) and the tracer."""
    out: dict[str, float] = {}
    parts = [procstat.runtime(p) for p in (server.pid, client.pid, *procstat.ksoftirqd_pids())]
    if all(p is not None for p in parts[:2]):
        out["workload"] = sum(p for p in parts if p is not None)
    if tracer is not None:
        t = procstat.runtime(tracer.pid)
        if t is not None:
            out["tracer"] = t
    return out


Table = dict[tuple[str, int], dict[int, float]]  # (variant, round) -> slot -> baseline value


def baseline_tables(samples: list[dict]) -> tuple[Table, Table]:
    """The baselines' tx/s and CPU per transaction, by (variant, round) and slot.

    Baselines run while another tracing program was loaded are left out,
    unless a round has no other.
    """
    base_tps: Table = {}
    base_cpu: Table = {}
    base = [s for s in samples if s["condition"] == stats.BASELINE]
    clean_keys = {(s["variant"], s["round"]) for s in base if not s.get("foreign_bpf_programs")}
    for s in base:
        key = (s["variant"], s["round"])
        if s.get("foreign_bpf_programs") and key in clean_keys:
            continue
        base_tps.setdefault(key, {})[s["slot"]] = s["tps"]
        if "cpu_us_per_tx" in s:
            base_cpu.setdefault(key, {})[s["slot"]] = s["cpu_us_per_tx"]
    return base_tps, base_cpu


def is_clean(s: dict, base_tps: Table) -> bool:
    """False when another BPF tracing program was loaded, or when the machine
    changed speed during this slot: the two baselines around it disagree by
    more than NOISY."""
    if s.get("foreign_bpf_programs") or s.get("foreign_leaks"):
        return False
    d = stats.disagreement(s["slot"], base_tps.get((s["variant"], s["round"]), {}))
    return d is None or d <= NOISY


def lacking(conditions: tuple[str, ...], samples: list[dict], need: int) -> list[str]:
    """The conditions with fewer than `need` clean measurements in a variant."""
    base_tps, _ = baseline_tables(samples)
    out = []
    for cond in conditions:
        if cond == stats.BASELINE:
            continue
        for v in VARIANTS:
            mine = [s for s in samples if s["condition"] == cond and s["variant"] == v]
            if sum(is_clean(s, base_tps) for s in mine) < need:
                out.append(cond)
                break
    return out


def summarize(cfg: Config, samples: list[dict], sessions: list[dict]) -> dict:
    """Medians per condition and variant; each sample is compared with the
    baselines around it (bench/stats.py)."""
    base_tps, base_cpu = baseline_tables(samples)
    spoilt = {
        (s["variant"], s["round"])
        for s in samples
        if s["condition"] == stats.BASELINE and s.get("foreign_bpf_programs")
    }

    def compare(s: dict, field: str, table: Table) -> float | None:
        ref = stats.reference(s["slot"], table.get((s["variant"], s["round"]), {}))
        value = s.get(field)
        if ref is None and s["condition"] == stats.BASELINE:
            ref = value  # a lone baseline is its own reference
        return None if ref is None or value is None else value / ref

    def clean(s: dict) -> bool:
        return is_clean(s, base_tps)

    results: dict[str, dict] = {}
    for cond in cfg.churn_conditions:
        per_variant = {}
        for v in VARIANTS:
            every = [s for s in samples if s["condition"] == cond and s["variant"] == v]
            if not every:
                continue
            # Noisy slots are left out of the medians, unless all are noisy.
            mine = [s for s in every if clean(s)] or every
            ratios = [r for r in (compare(s, "tps", base_tps) for s in mine) if r]
            # The same comparison in CPU per transaction, inverted so that it
            # reads like the throughput ratio (1.0 = free, 0.9 = 11% more CPU
            # per transaction). Less sensitive to CPU taken by other
            # processes than throughput is, but not immune (they also
            # disturb caches and batching).
            cpu_ratios = [1 / r for r in (compare(s, "cpu_us_per_tx", base_cpu) for s in mine) if r]
            entry: dict = {
                "tps_median": _r(stats.median(s["tps"] for s in mine), 0),
                "tps": [s["tps"] for s in mine],
                "ratio_median": _r(stats.median(ratios), 4),
                "ratios": [round(x, 4) for x in ratios],
                "cpu_us_per_tx_median": _r(stats.median(s.get("cpu_us_per_tx") for s in mine), 2),
                "cpu_ratio_median": _r(stats.median(cpu_ratios), 4),
                "cpu_ratios": [round(x, 4) for x in cpu_ratios],
                "errors": sum(s["errors"] for s in every),
                "samples_used": len(mine),
                "samples_noisy": len(every) - len([s for s in every if clean(s)]),
            }
            if cond != stats.BASELINE:
                cpu = [s.get("tracer_cpu_pct") for s in mine]
                entry["tracer_cpu_pct_window_median"] = _r(stats.median(cpu), 2)
                mems = [s["tracer_memory_mb"] for s in mine if s.get("tracer_memory_mb")]
                if mems:
                    entry["tracer_memory_mb"] = max(mems, key=lambda m: m.get("VmRSS", 0))
            else:
                gen = _generator_split(mine)
                if gen:
                    entry["generator"] = gen
            per_variant[v] = entry
        results[cond] = {"description": DESCRIPTIONS.get(cond, cond), "variants": per_variant}
        mine_sessions = [s for s in sessions if s["condition"] == cond]
        if mine_sessions:
            results[cond]["tracer_cpu_pct_median"] = _r(
                stats.median(s.get("tracer_cpu_pct") for s in mine_sessions), 2
            )
            results[cond]["ready_s_median"] = _r(
                stats.median(s["ready_s"] for s in mine_sessions), 3
            )
            lost = sum(s.get("events_lost", 0) for s in mine_sessions)
            results[cond]["events_lost"] = lost
            if any("events_printed" in s for s in mine_sessions):
                got = sum(s.get("events_printed", 0) for s in mine_sessions)
                results[cond]["events_printed"] = got
                results[cond]["events_lost_fraction"] = _r(lost / (got + lost), 4) if got else None
            cw = [s["closewait"] for s in mine_sessions if "closewait" in s]
            if cw:
                results[cond]["closewait_sessions"] = cw
    per_tx = stats.median(
        s["events_per_transaction"] for s in sessions if "events_per_transaction" in s
    )
    if per_tx:
        # What each tracepoint hit costs, in CPU: the extra CPU per
        # transaction over the baseline, divided by the hits per transaction.
        for cond, c in results.items():
            for v, e in c["variants"].items():
                base = results.get(stats.BASELINE, {}).get("variants", {}).get(v, {})
                b, x = base.get("cpu_us_per_tx_median"), e.get("cpu_us_per_tx_median")
                if cond != stats.BASELINE and b and x and e.get("cpu_ratio_median"):
                    # From the median bracketed ratio, not the two medians.
                    extra_us = b * (1 / e["cpu_ratio_median"] - 1)
                    e["cpu_ns_per_event"] = round(1000 * extra_us / per_tx, 1)
    return {
        "rounds_with_foreign_bpf": len({rnd for _v, rnd in spoilt}),
        "events_per_transaction": per_tx,
        "baseline_repeatability": _repeatability(samples),
        "baseline_repeatability_cpu": _repeatability(samples, "cpu_us_per_tx"),
        "workload": {
            "generator": "bench/loadgen.c (epoll, one thread per side), loopback in a netns",
            "concurrency": cfg.concurrency,
            "request_bytes": 64,
            "response_bytes": 256,
            "window_s": cfg.churn_window_s,
            "warmup_s": cfg.churn_warmup_s,
            "rounds": cfg.churn_rounds,
            "bracketed": cfg.churn_bracket,
            "rounds_run": 1 + max((s["round"] for s in samples), default=0),
        },
        "conditions": results,
        "samples": samples,
        "sessions": sessions,
    }


def _repeatability(samples: list[dict], key: str = "tps") -> dict:
    """The noise that remains: each baseline over the previous one, per variant.

    Neighbouring baselines are what bracketing compares with; when two of
    them differ by x, a difference of x between two conditions is not a
    result.
    """
    out: dict = {}
    for v in VARIANTS:
        ordered = sorted(
            (s["round"], s["slot"], s[key])
            for s in samples
            if s["condition"] == stats.BASELINE and s["variant"] == v and key in s
        )
        by_round: dict[int, list[float]] = {}
        for rnd, _slot, value in ordered:
            by_round.setdefault(rnd, []).append(value)
        ratios = [r for values in by_round.values() for r in stats.drift(values)]
        if ratios:
            dev = [abs(r - 1) for r in ratios]
            out[v] = {
                "ratios": [round(r, 4) for r in ratios],
                "median_deviation": round(stats.median(dev), 4),
                "max_deviation": round(max(dev), 4),
            }
    return out


def _generator_split(mine: list[dict]) -> dict | None:
    """How the load generator's own CPU splits between user and kernel."""
    user = sum(s.get("server_user_s", 0) + s.get("client_user_s", 0) for s in mine)
    sys_ = sum(s.get("server_sys_s", 0) + s.get("client_sys_s", 0) for s in mine)
    if user + sys_ <= 0:
        return None
    secs = sum(s["generator_wall_s"] for s in mine)
    return {
        "kernel_share": round(sys_ / (user + sys_), 3),
        "cores_busy": round((user + sys_) / secs, 2) if secs else None,
    }


def _r(x: float | None, nd: int) -> float | None:
    return None if x is None else round(x, nd)
