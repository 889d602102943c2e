"""bench/run --smoke: the benchmark suite still runs and still understands closewait.

No timing is asserted here (the figures depend on the machine and its
neighbours): only that every section ran, that each tracer attached and
that closewait's output was parsed into the figures. The statistics
helpers are checked on fixed inputs.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from bench import churn, report, stats
from bench.config import SMOKE
from tests.conftest import ROOT

SECTIONS = ("startup", "detection", "churn", "kernel", "scale", "exporter")


@pytest.fixture(scope="module")
def smoke(bpf_ok: None, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "smoke.json"
    # The first run on a fresh machine also apt-installs bpfcc-tools and
    # bpftrace and compiles the load generator: hence the generous timeout.
    res = subprocess.run(
        [str(ROOT / "bench" / "run"), "--smoke", "--output", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, f"bench/run --smoke failed:\n{res.stdout}\n{res.stderr[-3000:]}"
    assert "Targets:" in res.stdout
    return json.loads(out.read_text())


def test_every_section_ran(smoke: dict) -> None:
    assert smoke["mode"] == "smoke"
    assert smoke["machine"]["kernel"]
    for name in SECTIONS:
        assert name in smoke, name
        assert "error" not in smoke[name], smoke[name].get("error")
    assert smoke["targets"], "no target evaluated"
    for t in smoke["targets"]:
        assert t["met"] in (True, False, None)
        assert t["target"] and t["measured"]


def test_churn_measured_every_condition(smoke: dict) -> None:
    conditions = smoke["churn"]["conditions"]
    assert set(conditions) == set(SMOKE.churn_conditions)
    for name, c in conditions.items():
        for variant in ("client-first", "server-first"):
            v = c["variants"][variant]
            assert v["tps_median"] > 0, (name, variant)
            assert v["ratio_median"] > 0, (name, variant)
            if name != "baseline":
                assert v["tracer_memory_mb"]["VmRSS"] > 0, (name, variant)
        if name != "baseline":
            assert c["tracer_cpu_pct_median"] is not None, name
    # closewait's JSON summaries were read: every session ended with a final
    # report carrying the loss counters.
    sessions = [s for s in smoke["churn"]["sessions"] if "closewait" in s]
    assert sessions
    for s in sessions:
        assert s["exit_status"] == 0
        assert s["closewait"]["final"] is True
        assert s["closewait"]["events_lost"] is not None
    # The exporter was scraped before it stopped, and stopped cleanly.
    exported = [s for s in smoke["churn"]["sessions"] if s["condition"] == "closewait-exporter-all"]
    assert exported and all(s["exit_status"] == 0 and "fins" in s["exporter"] for s in exported)
    # The printing tracers printed events.
    assert smoke["churn"]["conditions"]["tcpstates"]["events_printed"] > 0
    assert smoke["churn"]["conditions"]["bpftrace-print"]["events_printed"] > 0


def test_kernel_counters_measured_each_bpf_tracer(smoke: dict) -> None:
    per_run = smoke["kernel"]["ns_per_run"]
    assert set(per_run) == set(SMOKE.kernel_conditions)
    for name, row in per_run.items():
        for variant in ("client-first", "server-first"):
            assert row[variant] and row[variant] > 0, (name, variant)
    # The tracer's busiest program was the one every state change hits:
    # about ten runs per transaction (five state changes per side).
    for s in smoke["kernel"]["samples"]:
        assert 4 <= s["runs_per_transaction"] <= 20, s
    # The counters were switched back off.
    with open("/proc/sys/kernel/bpf_stats_enabled") as f:
        assert f.read().strip() == "0"


def test_scale_found_every_leak_and_their_end(smoke: dict) -> None:
    for case in smoke["scale"]["cases"]:
        assert case["in_close_wait"] == case["leaks"]
        w = case["watch"]
        assert w["leaks_reported"] == case["leaks"]
        assert w["cpu_per_refresh_s"] is not None
        assert w["memory_mb"]["RssAnon"] > 0
        assert w["end_burst"]["ended_lines"] == w["end_burst"]["leaks_ended"]
        assert w["exit_status"] == 0
        snap = case["snapshot"]
        if snap["available"]:
            assert "error" not in snap, snap.get("error")
            assert snap["leaks_found"] == case["leaks"]


def test_startup_and_detection(smoke: dict) -> None:
    for name in ("pid", "all"):
        s = smoke["startup"][name]
        assert len(s["repetitions"]) == SMOKE.startup_reps
        assert s["launch_to_first_report_s_median"] >= s["launch_to_attached_s_median"] > 0
    d = smoke["detection"]
    assert d["detected"] == d["leaks"] == SMOKE.detect_leaks
    assert all(x["close_to_ended_s"] is not None for x in d["samples"])


def test_exporter_section(smoke: dict) -> None:
    x = smoke["exporter"]
    assert x["idle"]["memory_mb"]["VmRSS"] > 0 and x["idle"]["scrape_bytes"] > 0
    sc = x["scale"]
    assert sc["leaks_exported"] == sc["leaks"] == SMOKE.exporter_leaks
    assert sc["scrape_ms_median"] > 0 and 0 < sc["series"] < 200
    assert "soak" not in x  # only when asked


def test_report_renders_the_results(smoke: dict) -> None:
    text = "\n".join(report.render(smoke))
    for heading in (
        "1. Connection churn", "2. Leaks at scale", "3. Start-up", "4. Detection", "5. The exporter"
    ):  # fmt: skip
        assert heading in text


# -- the pure helpers -----------------------------------------------------------


def test_schedule_brackets_and_rotates() -> None:
    b = "baseline"
    plan = stats.schedule([b, "x", "y", "z"], rounds=2, bracket=True)
    assert plan == [[b, "x", b, "y", b, "z", b], [b, "y", b, "z", b, "x", b]]
    assert stats.schedule([b, "x", "y"], rounds=1, bracket=False) == [[b, "x", "y"]]


def test_reference_is_the_mean_of_the_neighbouring_baselines() -> None:
    baselines = {0: 100.0, 2: 80.0, 4: 60.0}
    assert stats.reference(1, baselines) == 90.0
    assert stats.reference(3, baselines) == 70.0
    assert stats.reference(5, baselines) == 60.0  # only one neighbour
    assert stats.reference(1, {}) is None
    assert stats.drift([100.0, 80.0, 100.0]) == [0.8, 1.25]


def test_median_and_quantile() -> None:
    assert stats.median([3, 1, 2]) == 2
    assert stats.median([4, 1, 2, 3]) == 2.5
    assert stats.median([]) is None
    assert stats.quantile([0, 10], 0.25) == 2.5


def test_noisy_measurements_are_found() -> None:
    def sample(cond: str, variant: str, slot: int, tps: float, **kw: object) -> dict:
        return {"condition": cond, "variant": variant, "round": 0, "slot": slot, "tps": tps, **kw}

    samples = []
    for v in churn.VARIANTS:
        samples += [
            sample("baseline", v, 0, 100.0),
            sample("x", v, 1, 90.0),
            sample("baseline", v, 2, 101.0),
            sample("y", v, 3, 90.0),
            sample("baseline", v, 4, 80.0),  # the machine slowed down meanwhile
            sample("z", v, 5, 90.0, foreign_bpf_programs=2),
            sample("baseline", v, 6, 80.0),
        ]
    base_tps, _ = churn.baseline_tables(samples)
    clean = [churn.is_clean(s, base_tps) for s in samples if s["condition"] != "baseline"]
    assert clean == [True, False, False] * 2
    assert churn.lacking(("baseline", "x", "y", "z"), samples, need=1) == ["y", "z"]
