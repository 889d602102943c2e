"""Turn the results into text tables and a verdict per target. Pure functions."""

from __future__ import annotations

from collections.abc import Sequence

VARIANTS = ("client-first", "server-first")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], left: int = 1) -> list[str]:
    """Fixed-width text; the first `left` columns left-aligned, the rest right-aligned."""
    cells = [[_cell(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]

    def fmt(row: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))
        ).rstrip()

    return [fmt(headers), fmt(["-" * w for w in widths]), *(fmt(r) for r in cells)]


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _pct(x: float | None, nd: int = 1) -> str:
    return "-" if x is None else f"{100 * x:.{nd}f}%"


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _mem(m: dict | None) -> str:
    if not m or "VmRSS" not in m:
        return "-"
    return f"{m['VmRSS']:.0f} ({m.get('RssAnon', 0):.0f}/{m.get('RssFile', 0):.0f})"


def churn_table(churn: dict) -> list[str]:
    headers = ["condition"]
    for v in VARIANTS:
        headers += [f"{v} tx/s", "ratio", "cpu/tx", "ns/event"]
    headers += ["tracer cpu%", "RSS MB (anon/file)", "events lost", "ready s"]
    rows = []
    for name, c in churn["conditions"].items():
        row: list[object] = [name]
        mem = None
        for v in VARIANTS:
            e = c["variants"].get(v, {})
            row += [
                _num(e.get("tps_median"), ".0f"),
                _pct(e.get("ratio_median")),
                _pct(e.get("cpu_ratio_median")),
                _num(e.get("cpu_ns_per_event"), ".0f"),
            ]
            mem = mem or e.get("tracer_memory_mb")
        lost = c.get("events_lost")
        frac = c.get("events_lost_fraction")
        lost_text = "-" if lost is None else str(lost)
        if frac is not None:
            lost_text += f" ({_pct(frac)})"
        row += [
            _num(c.get("tracer_cpu_pct_median"), ".2f"),
            _mem(mem),
            lost_text,
            _num(c.get("ready_s_median"), ".2f"),
        ]
        rows.append(row)
    w = churn["workload"]
    rep = churn.get("baseline_repeatability", {})
    noise = (
        ", ".join(
            f"{v} {_pct(x['median_deviation'])} (max {_pct(x['max_deviation'])})"
            for v, x in rep.items()
        )
        or "-"
    )
    head = [
        f"1. Connection churn: {w['generator']}, {w['concurrency']} connections in flight,",
        f"   median of {w.get('rounds_run', w['rounds'])} round(s) x {w['window_s']}s windows;"
        " ratio = tx/s over the"
        + (" mean of the baselines just before and after;" if w.get("bracketed") else " baseline;"),
        "   cpu/tx = the same ratio in CPU per transaction (loadgen + ksoftirqd + tracer);"
        " ns/event = extra CPU per tracepoint hit"
        f" ({_num(churn.get('events_per_transaction'), '.1f')} hits per transaction);",
        "   tracer cpu% = the tracer's process (user+sys) over its sessions, in % of one core;"
        " events lost over all sessions (% of events for printing tracers);"
        " ready = launch to attached",
        f"   noise: neighbouring baselines differed by (median, max): {noise}; measurements left"
        f" out as noisy (baselines around them > 5% apart, another BPF tracing program"
        f" loaded, or other processes' leaks seen by --all): {_noisy(churn)}",
    ]
    return [*head, *table(headers, rows)]


def _noisy(churn: dict) -> str:
    noisy = used = 0
    for c in churn["conditions"].values():
        for e in c["variants"].values():
            noisy += e.get("samples_noisy", 0)
            used += e.get("samples_used", 0)
    return f"{noisy} of {noisy + used}" if noisy <= used else f"{noisy} (all kept: no clean one)"


def scale_table(scale: dict) -> list[str]:
    headers = [
        "leaks",
        "procs",
        "snapshot s",
        "attached s",
        "complete report s",
        "cpu/refresh s",
        "RSS MB (anon/file)",
        "end: how, lines/closer named, last ENDED after last close s, CPU s",
        "events lost",
    ]
    rows = []
    for c in scale["cases"]:
        w = c.get("watch", {})
        snap = c.get("snapshot", {})
        snap_text = (
            _num(snap.get("wall_s_median"), ".2f")
            if snap.get("available")
            else "n/a (no snapshot command)"
        )
        if snap.get("error"):
            snap_text = "error"
        end = w.get("end_burst", {})
        rows.append(
            [
                c["leaks"],
                c["processes"],
                snap_text,
                _num(w.get("launch_to_attached_s"), ".2f"),
                _num(w.get("launch_to_complete_report_s"), ".2f"),
                _num(w.get("cpu_per_refresh_s"), ".3f"),
                _mem(w.get("memory_mb")),
                f"{end.get('how', 'exit')}, {end.get('ended_lines', '-')}/"
                f"{end.get('closer_named', '-')}"
                + (
                    f", {_num(end.get('last_ended_after_last_close_s'), '.2f')}"
                    f", {_num(end.get('cpu_s'), '.2f')}"
                    if end.get("how") == "close"
                    else ""
                ),
                _num(w.get("events_lost"), "d"),
            ]
        )
    head = [
        f"2. Leaks at scale: closewait watch --pid <each leaking process> --interval"
        f" {scale['interval_s']}s --min-age {scale['min_age_s']}s --max-sockets"
        f" {scale['max_sockets']}; snapshot --pid <each> --json"
    ]
    return [*head, *table(headers, rows, left=0)]


def kernel_table(k: dict) -> list[str]:
    head = [
        "1b. Kernel-side cost per tracepoint hit: run time / run count of the tracer's program on"
        " inet_sock_set_state,",
        "    from the kernel's own counters (BPF run-time stats, which add their two clock"
        " reads to every figure);",
        "    median over rounds; x floor = against the map-only floor in the same run",
    ]
    headers = ["condition"] + [
        f"{v} {c}" for v in ("client-first", "server-first") for c in ("ns/run", "x floor")
    ]
    rows = []
    for cond, row in k["ns_per_run"].items():
        ratio = k["vs_floor_map"].get(cond, {})
        cells: list[object] = [cond]
        for v in ("client-first", "server-first"):
            cells += [_num(row.get(v), ".0f"), _num(ratio.get(v), ".2f")]
        rows.append(cells)
    return [*head, *table(headers, rows)]


def startup_lines(s: dict) -> list[str]:
    lines = ["3. Start-up (median of each):"]
    for x in s.values():
        if not isinstance(x, dict) or "command" not in x:
            continue
        lines.append(
            f"   {x['command']}: launch -> attached"
            f" {_num(x['launch_to_attached_s_median'], '.2f')} s"
            f" (closewait's own figure {_num(x['attached_in_s_median'], '.2f')} s),"
            f" -> first report {_num(x['launch_to_first_report_s_median'], '.2f')} s"
            f" ({x.get('first_report_leaks')} leaks on the host in it);"
            f" RSS {_mem(x.get('idle_memory_mb'))} MB"
        )
    return lines


def detection_lines(d: dict) -> list[str]:
    return [
        f"4. Detection latency (--min-age {d['min_age_s']}s --interval {d['interval_s']}s,"
        f" bound {d['bound_s']:.1f} s, target {d['target_s']:.1f} s): FIN -> first leak line"
        f" median {_num(d['latency_s_median'], '.2f')} s, max {_num(d['latency_s_max'], '.2f')} s"
        f" ({d['detected']}/{d['leaks']} detected); close -> ENDED line"
        f" median {_num(d['close_to_ended_s_median'], '.3f')} s,"
        f" max {_num(d['close_to_ended_s_max'], '.3f')} s",
        *(
            [
                f"   in CLOSE_WAIT before attach: FIN -> first leak line max"
                f" {_num(p['latency_s_max'], '.2f')} s, at most"
                f" {_num(p['past_bound_s_max'], '+.2f')} s past max(attach, FIN + min-age)"
                f" + interval + 0.5 s ({p['detected']}/{p['leaks']} detected)"
            ]
            if (p := d.get("preexisting"))
            else []
        ),
    ]


def exporter_lines(x: dict) -> list[str]:
    idle, sc = x.get("idle", {}), x.get("scale", {})
    lines = [
        "5. The exporter: closewait exporter --all on this host, idle: RSS"
        f" {_mem(idle.get('memory_mb'))} MB, scrape {_num(idle.get('scrape_s'), '.4f')} s;",
        f"   exporter --pid <one process with {sc.get('leaks')} leaks>: all exported after"
        f" {_num(sc.get('to_all_leaks_s'), '.1f')} s; GET /metrics median"
        f" {_num(sc.get('scrape_ms_median'), '.1f')} ms, max {_num(sc.get('scrape_ms_max'), '.1f')}"
        f" ms, {sc.get('scrape_bytes')} bytes, {sc.get('series')} series;"
        f" RSS {_mem(sc.get('memory_mb'))} MB",
    ]
    soak = x.get("soak")
    if soak:
        lines.append(
            f"   soak {soak['seconds']:.0f} s (--all, intermittent churn,"
            f" {soak['transactions']} transactions, {soak['pid_swaps']} leaking processes"
            f" replaced): RSS drift after the first minute {soak['rss_drift_mb']:+.1f} MB"
        )
        lines += table(
            ["t s", "RSS MB", "anon MB", "scrape ms", "series", "leaks", "cpu s"],
            [
                [
                    s["t_s"],
                    s["rss_mb"],
                    s["anon_mb"],
                    s["scrape_ms"],
                    s["series"],
                    s["leaks"],
                    s["cpu_s"],
                ]
                for s in soak["samples"]
            ],
            left=0,
        )
    return lines


# -- targets -------------------------------------------------------------------


def _variant(churn: dict, cond: str, v: str) -> dict:
    return churn.get("conditions", {}).get(cond, {}).get("variants", {}).get(v, {})


def _target(tid: str, text: str, met: bool | None, measured: str) -> dict:
    return {"id": tid, "target": text, "met": met, "measured": measured}


def _at_most(tid: str, text: str, value: float | None, limit: float, measured: str) -> dict:
    """A target that a measured value must not exceed (unknown: not judged)."""
    return _target(tid, text, None if value is None else value <= limit, measured)


def _noise(churn: dict, v: str) -> float | None:
    """How far apart two baselines of the same round were (worst case)."""
    return churn.get("baseline_repeatability", {}).get(v, {}).get("median_deviation")


def targets(results: dict) -> list[dict]:
    out = []
    churn = results.get("churn") or {}
    for v in VARIANTS if "conditions" in churn else ():
        cw = _variant(churn, "closewait-all", v)
        r = cw.get("ratio_median")
        out.append(
            _target(
                f"churn-95-{v}",
                f"watch --all keeps >= 95% of baseline throughput ({v})",
                None if r is None else r >= 0.95,
                f"{_pct(r)} (CPU per transaction: {_pct(cw.get('cpu_ratio_median'))})",
            )
        )
        fl = _variant(churn, "floor-map", v).get("ratio_median")
        out.append(
            _target(
                f"churn-floor-{v}",
                f"watch --all at most 2 points below the map-only floor ({v})",
                None if r is None or fl is None else r >= fl - 0.02,
                f"{_pct(r)} vs floor {_pct(fl)} ({_pts(r, fl)})" + _kernel_note(results, v),
            )
        )
        noise = _noise(churn, v)
        for other in ("tcpstates", "bpftrace-print", "bpftrace-count"):
            o = _variant(churn, other, v).get("ratio_median")
            if o is None:
                continue
            met = None if r is None else r > o
            text = f"{_pct(r)} vs {_pct(o)}"
            if met is not None and noise is not None and abs(r - o) <= noise:
                # Closer than two baselines of the same round: not a result.
                met = None
                text += f": within the noise (neighbouring baselines differ by {_pct(noise)})"
            out.append(
                _target(
                    f"churn-vs-{other}-{v}", f"watch --all costs less than {other} ({v})", met, text
                )
            )
    cpus = []
    for cond in ("closewait-all", "closewait-pid-server", "closewait-pid-client"):
        c = churn.get("conditions", {}).get(cond, {})
        if c.get("tracer_cpu_pct_median") is not None:
            slowest = min((e.get("tps_median") or 0) for e in c["variants"].values())
            cpus.append((c["tracer_cpu_pct_median"], slowest, cond))
    if cpus:
        worst = max(cpus)
        fast = all(tps >= 10_000 for _, tps, _ in cpus)
        out.append(
            _target(
                "tracer-cpu-2pct",
                "closewait's process uses <= 2% of one core under >= 10,000 conn/s of churn",
                worst[0] <= 2.0 if fast else None,
                f"worst {worst[0]:.2f}% ({worst[2]}, at >= {worst[1]:.0f} tx/s)"
                + ("" if fast else "; churn was below 10,000/s: not conclusive"),
            )
        )
    lost = []
    for cond, c in churn.get("conditions", {}).items():
        for s in c.get("closewait_sessions", []):
            lost.append((s.get("events_lost") or 0, cond))
    scale = results.get("scale") or {}
    for case in scale.get("cases", []):
        end = case.get("watch", {}).get("end_burst")
        if end:
            lost.append((end.get("events_lost") or 0, f"{case['leaks']} leaks ending at once"))
    if lost:
        total = sum(n for n, _ in lost)
        where = ", ".join(f"{n} in {w}" for n, w in lost if n)
        out.append(
            _target(
                "no-lost-events",
                "zero lost events about suspects (churn sessions, mass end of leaks)",
                total == 0,
                f"{total} lost" + (f" ({where})" if where else ""),
            )
        )
    for c in scale.get("cases", []):
        end = c.get("watch", {}).get("end_burst") or {}
        if end.get("how") != "close":
            continue
        after = end.get("last_ended_after_last_close_s")
        out.append(
            _at_most(
                "end-storm",
                f"{c['leaks']} leaks close()d one by one: last ENDED <= 2 s after the last close",
                after,
                2.0,
                f"{_num(after, '.2f')} s, {end.get('ended_lines')} ENDED lines, "
                f"{_num(end.get('cpu_s'), '.2f')} s CPU",
            )
        )
    big = [c for c in scale.get("cases", []) if c["leaks"] >= 100_000]
    for c in big:
        w = c.get("watch", {})
        n = c["leaks"]
        cpu = w.get("cpu_per_refresh_s")
        out.append(
            _at_most(
                "scale-refresh-cpu",
                f"{n} leaks: refresh <= 0.5 s CPU",
                cpu,
                0.5,
                _num(cpu, ".3f") + " s",
            )
        )
        rss = (w.get("memory_mb") or {}).get("VmRSS")
        out.append(
            _at_most(
                "scale-rss", f"{n} leaks: RSS <= 200 MB", rss, 200, f"{_mem(w.get('memory_mb'))} MB"
            )
        )
        snap = c.get("snapshot", {})
        wall = snap.get("wall_s_median")
        shown = (
            _num(wall, ".2f") + " s"
            if snap.get("available")
            else "not available (no `closewait snapshot`)"
        )
        out.append(_at_most("scale-snapshot", f"{n} leaks: snapshot <= 2 s", wall, 2.0, shown))
    if not big and scale.get("cases"):
        out.append(
            _target("scale-100k", "100,000 leaks (refresh CPU, RSS, snapshot)", None, "not run")
        )
    out += exporter_targets(results)
    det = results.get("detection")
    if det:
        mx = det.get("latency_s_max")
        out.append(
            _target(
                "detection-latency",
                "detection latency <= min-age + interval + 0.5 s",
                None if mx is None else (mx <= det["target_s"] and det["detected"] == det["leaks"]),
                f"max {_num(mx, '.2f')} s vs {det['target_s']:.1f} s"
                f" ({det['detected']}/{det['leaks']} detected)",
            )
        )
        pre = det.get("preexisting")
        if pre:
            past = pre.get("past_bound_s_max")
            out.append(
                _target(
                    "detection-preexisting",
                    "leaks in CLOSE_WAIT before attach: reported by max(attach, FIN + min-age)"
                    " + interval + 0.5 s",
                    None if past is None else (past <= 0 and pre["detected"] == pre["leaks"]),
                    f"at most {_num(past, '+.2f')} s past it"
                    f" ({pre['detected']}/{pre['leaks']} detected)",
                )
            )
    return out


def exporter_targets(results: dict) -> list[dict]:
    """The always-on targets (issue 11): the healthy path at the floor, small and flat."""
    out = []
    churn = results.get("churn") or {}
    for v in VARIANTS if "conditions" in churn else ():
        r = _variant(churn, "closewait-exporter-all", v).get("ratio_median")
        fl = _variant(churn, "floor-map", v).get("ratio_median")
        if r is not None:
            out.append(
                _target(
                    f"exporter-churn-floor-{v}",
                    f"exporter --all at most 2 points below the map-only floor ({v})",
                    None if fl is None else r >= fl - 0.02,
                    f"{_pct(r)} vs floor {_pct(fl)} ({_pts(r, fl)})",
                )
            )
    ratios = (results.get("kernel") or {}).get("vs_floor_map", {}).get("closewait-exporter-all")
    for v, ratio in (ratios or {}).items():
        out.append(
            _at_most(
                f"exporter-kernel-{v}",
                f"exporter --all kernel cost per tracepoint hit <= 1.15x the floor ({v})",
                ratio,
                1.15,
                _num(ratio, ".2f") + "x",
            )
        )
    x = results.get("exporter") or {}
    rss = ((x.get("idle") or {}).get("memory_mb") or {}).get("VmRSS")
    if rss is not None:
        out.append(
            _at_most("exporter-idle-rss", "exporter idle RSS <= 80 MB", rss, 80, f"{rss:.0f} MB")
        )
    sc = x.get("scale") or {}
    if sc.get("scrape_ms_median") is not None:
        ms = sc["scrape_ms_max"]
        out.append(
            _at_most(
                "exporter-scrape",
                f"a scrape at {sc['leaks']} leaks <= 50 ms",
                ms,
                50,
                f"max {ms:.1f} ms (median {sc['scrape_ms_median']:.1f}), {sc['series']} series",
            )
        )
    soak = x.get("soak")
    if soak:
        drift = soak["rss_drift_mb"]
        out.append(
            _at_most(
                "exporter-soak",
                f"exporter RSS flat over a {soak['seconds']:.0f} s soak (drift <= 5 MB)",
                abs(drift),
                5,
                f"{drift:+.1f} MB after the first minute",
            )
        )
    return out


def _kernel_note(results: dict, v: str) -> str:
    """The noise-free comparison with the floor, from section 1b, when it ran."""
    per_run = (results.get("kernel") or {}).get("ns_per_run", {})
    cw, fl = per_run.get("closewait-all", {}).get(v), per_run.get("floor-map", {}).get(v)
    if cw is None or fl is None:
        return ""
    return f"; per tracepoint hit (1b): {cw:.0f} ns vs floor {fl:.0f} ns ({cw / fl:.2f}x)"


def _pts(a: float | None, b: float | None) -> str:
    if a is None or b is None:
        return "-"
    return f"{100 * (a - b):+.1f} points"


def targets_lines(ts: list[dict]) -> list[str]:
    mark = {True: "MET   ", False: "MISSED", None: "n/a   "}
    return ["Targets:", *(f"  [{mark[t['met']]}] {t['target']}: {t['measured']}" for t in ts)]


def render(results: dict) -> list[str]:
    m = results["machine"]
    lines = [
        f"closewait benchmarks ({results['mode']}), {m['date']}: {m['cpus']} CPUs"
        f" ({m.get('cpu_model') or '?'}), {m.get('memory_gib')} GiB, kernel {m['kernel']},"
        f" {m.get('distro') or ''}; "
        + (
            f"closewait run as: {m['closewait_command']}"
            if m.get("closewait_command")
            else f"closewait {m.get('closewait_commit')}"
            + (" (modified tree)" if m.get("closewait_tree_modified") else "")
        ),
        "",
    ]
    for key, fn in (
        ("churn", churn_table),
        ("kernel", kernel_table),
        ("scale", scale_table),
        ("startup", startup_lines),
        ("detection", detection_lines),
        ("exporter", exporter_lines),
    ):
        section = results.get(key)
        if section is None:
            continue
        if "error" in section:
            lines += [f"{key}: FAILED: {section['error']}", ""]
            continue
        lines += [*fn(section), ""]
    lines += targets_lines(results.get("targets", []))
    return lines
