"""Verdicts and --threads in both renderers: pure, from a real jcmd dump."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from tests.test_render import S, leak, summary
from tracer.core.model import Creator, Holder, Leak, ProcInfo, SockTuple
from tracer.core.poolwaits import OpenerState, ProcessThreads, diagnose
from tracer.core.summary import ProcessTrend
from tracer.core.threaddump import parse_jcmd_threads
from tracer.core.trends import Group, Rate
from tracer.core.verdict import EXHAUSTED, Verdict
from tracer.report.jsonl import JsonRenderer
from tracer.report.table import FOOTNOTE_WAITING, TableRenderer

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SEED_1 = 0x15AC  # seed-worker-1's nid in the dump
HOSTILE = "evil\x1b[2J\nNOTE fake"


def java_dump(now_ns: int) -> ProcessThreads:
    threads = parse_jcmd_threads((FIXTURES / "jstack-httpclient4-exhausted.txt").read_text())
    return ProcessThreads(100, "java", now_ns, tool="jcmd Thread.print", seconds=0.2,
                          pause_ms=0.47, pause_how="perf counters", threads=len(threads),
                          groups=tuple(diagnose(threads)))  # fmt: skip


def opened_by_seed_1() -> Leak:
    return Leak(556, 1, SockTuple(socket.AF_INET, "127.0.0.1", 40001, "127.0.0.1", 8080),
                10 * S, True, False, [Holder(100, 12)], 0, 0, sk=1,
                creator=Creator(8 * S, 100, SEED_1, "seed-worker-1", False),
                procs={100: ProcInfo("java")})  # fmt: skip


def exhausted_summary(now: int, dumps: list[ProcessThreads]):
    v = Verdict(EXHAUSTED, 100, "127.0.0.1:8080", 1, 0, 10.0, 45.0, 0, 1)
    g = Group("remote", "127.0.0.1:8080", 1, 50.0, 50.0, 1.0, "seed-worker-1", {100: 1}, v)
    p = ProcessTrend(100, "java", 1, 20, 1024, Rate(0.0, 30.0, 10), None, v)
    return summary(now_ns=now, groups=[g], processes=[p], threads=dumps)


def test_table_says_the_verdict_and_the_waiting_threads_and_marks_their_leaks() -> None:
    now = 262 * S
    lines = TableRenderer().report([opened_by_seed_1()], exhausted_summary(now, [java_dump(now)]))
    text = "\n".join(lines)
    assert "pool to 127.0.0.1:8080 exhausted" in lines[1] and "not growing" not in text
    assert "[EXHAUSTED]" in text and "a pool of 1 for this peer is probably exhausted" in text
    assert "threads of pid 100 (java), jcmd Thread.print in 0.20s, paused 0.47 ms" in text
    assert (
        "6 threads (seed-worker-1, seed-worker-2, seed-worker-3, seed-worker-4, seed-worker-5, "
        "seed-worker-6) wait for a pooled connection in "
        "org.apache.http.pool.AbstractConnPool.getPoolEntryBlocking, called from "
        "shop.OrderService.fetchPrices(OrderService.java:22)"
    ) in text
    assert "the thread that opened the leaked connections is among them" in text
    assert f"seed-worker-1/{SEED_1} (fd 12)" in text
    row = next(line for line in lines if line.lstrip().startswith("100 java"))
    assert f"seed-worker-1/{SEED_1}!" in row and FOOTNOTE_WAITING in lines


def test_json_threads_object_once_per_dump() -> None:
    now = 262 * S
    dump = java_dump(now)
    report = JsonRenderer().report([opened_by_seed_1()], exhausted_summary(now, [dump]))
    objs = [json.loads(x) for x in report]
    (group,) = [o for o in objs if o["type"] == "group"]
    assert group["verdict"] == "exhausted" and group["verdict_pid"] == 100
    assert group["quiet_s"] == 45.0 and group["established"] == 0
    (t,) = [o for o in objs if o["type"] == "threads"]
    assert (t["runtime"], t["pause_ms"], t["problem"], t["threads"]) == ("java", 0.47, None, 25)
    (w,) = t["waiting"]
    assert w["app_frame"] == "shop.OrderService.fetchPrices(OrderService.java:22)"
    first = w["threads"][0]
    assert first["name"] == "seed-worker-1" and first["opened_fds"] == [12]
    assert first["frames"][0] == "jdk.internal.misc.Unsafe.park(Native Method)"
    # A later report shows the same look in the table, but JSON does not repeat it.
    later = exhausted_summary(now + 5 * S, [dump])
    assert not [x for x in JsonRenderer().report([], later) if '"type":"threads"' in x]
    assert any("looked 5.0s ago" in line for line in TableRenderer().report([], later))


def test_no_dump_one_line_and_the_openers_state_escaped() -> None:
    now = 262 * S
    dump = ProcessThreads(100, "other", now, problem=f"not a JVM ({HOSTILE})",
                          openers=(OpenerState(101, HOSTILE, "S", "do_epoll_wait"),))  # fmt: skip
    lk = leak()
    lines = TableRenderer().report([lk], summary(now_ns=now, threads=[dump]))
    text = "\n".join(lines)
    assert "\x1b" not in text and "NOTE fake" not in text.replace("\\x0aNOTE fake", "")
    assert any(line.startswith("  threads of pid 100 (java): not a JVM") for line in lines)
    assert "opener evil\\x1b[2J\\x0aNOTE fake/101 (fd 7,9): sleeping in do_epoll_wait" in text
    (t,) = [json.loads(x) for x in JsonRenderer().report([lk], summary(now_ns=now, threads=[dump]))
            if '"type":"threads"' in x]  # fmt: skip
    assert t["openers"] == [{"tid": 101, "name": "evil\\x1b[2J\\x0aNOTE fake", "state": "S",
                             "wchan": "do_epoll_wait", "opened_fds": [7, 9]}]  # fmt: skip
