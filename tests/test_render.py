"""Table and JSON rendering: columns, marks, escaping of hostile process names."""

from __future__ import annotations

import json
import socket

from tracer.core.model import (
    NS_PER_S,
    Creator,
    Holder,
    Leak,
    LeakEnded,
    ProbeStats,
    ProcInfo,
    SockTuple,
)
from tracer.core.summary import ProcessRank, Summary
from tracer.report.jsonl import JsonRenderer
from tracer.report.table import FOOTNOTE_OPENER, SNAPSHOT_COLUMNS, WATCH_COLUMNS, TableRenderer

S = NS_PER_S
HOSTILE = "evil\x1b[2J\nNOTE fake"


def json_report(leaks: list[Leak], s: Summary) -> list[str]:
    return list(JsonRenderer().report(leaks, s))


def leak(
    exact: bool = True, comm: str = "java", creator: bool = True, t: SockTuple | None = None
) -> Leak:
    return Leak(
        inode=555,
        netns=4026531833,
        tuple=t or SockTuple(socket.AF_INET6, "::1", 40000, "::1", 8080),
        fin_ns=10 * S,
        age_exact=exact,
        preexisting=not exact,
        holders=[Holder(100, 7), Holder(100, 9), Holder(200, 3)],
        procs={100: ProcInfo(comm), 200: ProcInfo("child")},
        recv_q=2048,
        uid=1000,
        sk=0xFF if exact else None,
        creator=Creator(8 * S, 100, 101, HOSTILE, False) if creator else None,
    )


def summary(**kw) -> Summary:
    base = dict(wall=1_700_000_000.0, now_ns=262 * S, elapsed_s=30.0, targets={100: "java"},
                all_processes=False, new=1, ended=0, stats=ProbeStats(fins=9))  # fmt: skip
    base.update(kw)
    return Summary(**base)


def test_table_columns_marks_and_totals() -> None:
    lines = TableRenderer().report([leak(), leak(exact=False, creator=False)], summary())
    assert "2 leaking sockets (100 java: 2)" in lines[0] and "events lost 0" in lines[0]
    assert lines[1].split() == [c.header for c in WATCH_COLUMNS]
    exact_row, estimated_row = lines[2].split(), lines[3].split()
    assert exact_row[:6] == ["100", "java", "7,9+1", "[::1]:40000", "[::1]:8080", "4m12s"]
    assert estimated_row[5] == "~4m12s" and estimated_row[-2:] == ["-", "-"]
    assert exact_row[6] == "2048" and exact_row[-1] == "4m14s"


def test_table_header_names_losses_and_the_knob_to_raise() -> None:
    stats = ProbeStats(events_lost=3, cw_full=2, conns_evicted=1)
    head = TableRenderer().report([], summary(stats=stats))[0]
    assert "--buffer-pages" in head and "--max-sockets" in head and "--max-conns" in head


def test_hostile_names_cannot_forge_lines_in_either_format() -> None:
    lk = leak(comm=HOSTILE)
    for text in (
        TableRenderer().report([lk], summary())[2],
        json_report([lk], summary())[0],
    ):
        assert "\x1b" not in text and "\n" not in text
    obj = json.loads(json_report([lk], summary())[0])
    assert obj["comm"] == "evil\\x1b[2J\\x0aNOTE fake"
    assert obj["opened_by"]["comm"] == "evil\\x1b[2J\\x0aNOTE fake"


def test_json_leak_and_summary() -> None:
    lines = json_report([leak()], summary())
    obj, summ = json.loads(lines[0]), json.loads(lines[1])
    assert obj["type"] == "leak" and obj["family"] == "ipv6"
    assert (obj["pid"], obj["fd"], obj["fds"]) == (100, 7, [7, 9])
    assert obj["holders"][2] == {"pid": 200, "comm": "child", "fd": 3}
    assert obj["age_s"] == 252.0 and obj["age_exact"] is True and obj["conn_age_s"] == 254.0
    assert obj["opened_by"] == {
        "pid": 100,
        "tid": 101,
        "comm": obj["opened_by"]["comm"],
        "accepted": False,
    }
    assert summ["type"] == "summary" and summ["leaks"] == 1 and summ["fins_seen"] == 9
    assert summ["targets"] == [
        {
            "pid": 100,
            "comm": "java",
            "leaks": 1,
            "open_fds": None,
            "fd_limit": None,
            "leak_rate_per_min": None,
            "rate_window_s": None,
            "rate_reliable": None,
            "fd_exhaustion_eta_s": None,
            "verdict": None,
        }
    ]


def test_ended_lines() -> None:
    e = LeakEnded(
        leak(),
        22 * S,
        "closed",
        exact=True,
        by_pid=100,
        by_tid=101,
        by_comm="w",
        by_fd=9,
        drop="close",
    )
    text = TableRenderer().ended(e, 0.0)
    assert (
        "ENDED pid 100 (java) fd 7,9" in text
        and "closed by pid 100 tid 101 (w) via close(9)" in text
    )
    assert text.endswith("12.0s after the FIN")
    obj = json.loads(JsonRenderer().ended(e, 0.0))
    assert (obj["reason"], obj["by_fd"], obj["via"], obj["latency_s"]) == (
        "closed",
        9,
        "close",
        12.0,
    )
    polled = LeakEnded(leak(exact=False), 22 * S, "closed", exact=False)
    assert "(seen by polling)" in TableRenderer().ended(polled, 0.0)
    assert "~12.0s" in TableRenderer().ended(polled, 0.0)


def test_opener_that_no_longer_holds_gets_a_mark_and_a_footnote() -> None:
    lk = leak()
    lk.creator = Creator(8 * S, 100, 101, "pool-1-thread-1", False)
    lk.update(holders=[Holder(200, 3)])  # opened by pid 100, now held by its child only
    lines = TableRenderer().report([lk], summary())
    assert lines[2].split()[-2] == "pool-1-thread-1/101*"
    assert FOOTNOTE_OPENER in lines
    assert json.loads(json_report([lk], summary())[0])["opener_holds"] is False


def test_snapshot_view_has_uid_and_container_columns() -> None:
    lk = leak()
    lk.procs[100] = ProcInfo("java", "/system.slice/docker-" + "ab" * 32 + ".scope")
    lines = TableRenderer("snapshot").report([lk], summary(namespaces=3, unheld=2))
    assert "snapshot: 1 leaking socket" in lines[0] and "3 network namespaces" in lines[0]
    assert "2 more in CLOSE_WAIT held by no process" in lines[0]
    assert lines[1].split() == [c.header for c in SNAPSHOT_COLUMNS]
    assert lines[2].split()[-2:] == ["1000", "/system.slice/docker-abababababab.scope"]
    obj = json.loads(json_report([lk], summary())[0])
    assert obj["container"] == "/system.slice/docker-abababababab.scope"
    assert obj["cgroup"].endswith("ab" * 32 + ".scope")


def test_triage_rows() -> None:
    ranks = [ProcessRank(100, HOSTILE, 40, 3700.0, 1800, 2048, None)]
    lines = TableRenderer("snapshot").processes(ranks, 0.0)
    assert lines[1].split() == ["PID", "COMM", "LEAKS", "OLDEST", "FDS", "FD-LIMIT", "CONTAINER"]
    assert lines[2].split()[-5:] == ["40", "~1h01m", "1800", "2048", "-"]
    assert "\x1b" not in lines[2]
    obj = json.loads(JsonRenderer().processes(ranks, 0.0)[0])
    assert (obj["type"], obj["leaks"], obj["open_fds"], obj["fd_limit"]) == (
        "process",
        40,
        1800,
        2048,
    )
    assert TableRenderer().processes([], 0.0)[0].endswith("no process holds a socket in CLOSE_WAIT")


def test_trend_group_and_latency_rendering() -> None:
    from tracer.core.model import LatencyBucket
    from tracer.core.summary import ProcessTrend
    from tracer.core.trends import Group, Rate
    from tracer.report.table import latency_lines

    trend = ProcessTrend(100, "java", 7, 230, 1024, Rate(60.0, 20.0, 11), 794.0)
    group = Group("remote", "[::1]:8080", 7, 252.0, 2.0, 30.0, "pool-1-thread-*")
    lat = [LatencyBucket(100, "remote", 8080, 15, 50), LatencyBucket(100, "remote", 8080, 13, 5)]
    s = summary(processes=[trend], groups=[group], latency=lat, final=True)
    text = "\n".join(TableRenderer().report([leak()], s))
    assert (
        "pid 100 (java): 7 leaking, 230/1024 fds open, +60.0 leaks/min over 20.0s "
        "(too short a window to trust), fd limit in ~13m14s" in text
    )
    assert "[::1]:8080 (peer): 7 leaks, oldest 4m12s, newest 2.0s, 30.0/min since attach" in text
    assert "opened by pool-1-thread-*" in text
    hist = latency_lines(lat, {100: "java"}, [leak()])
    assert "55 closed after the peer's FIN, 1 never closed" in hist[1]
    rows = hist[3:6]
    assert [r.split(":")[0].split() for r in rows] == [
        ["4096", "->", "8191"],
        ["8192", "->", "16383"],
        ["16384", "->", "32767"],
    ]
    assert [int(r.split(":")[1].split("|")[0]) for r in rows] == [5, 0, 50]
    assert rows[2].count("*") == 40 and rows[0].count("*") == 4
    objs = [json.loads(line) for line in json_report([leak()], s)]
    g = next(o for o in objs if o["type"] == "group")
    assert (g["endpoint"], g["leaks"], g["leaks_per_min"]) == ("[::1]:8080", 7, 30.0)
    lat_obj = next(o for o in objs if o["type"] == "latency")
    assert lat_obj["closes"] == 55 and lat_obj["buckets"][-1] == {
        "lo_us": 16384,
        "hi_us": 32768,
        "count": 50,
    }
    t = objs[-1]["targets"][0]
    assert (t["leak_rate_per_min"], t["fd_exhaustion_eta_s"], t["rate_reliable"]) == (
        60.0,
        794.0,
        False,
    )


def test_rows_follow_changes_and_never_cross_leaks() -> None:
    def first_row(renderer: TableRenderer | JsonRenderer, lk: Leak) -> str:
        lines = list(renderer.report([lk], summary()))
        return lines[0] if isinstance(renderer, JsonRenderer) else lines[2]

    for renderer in (TableRenderer(), JsonRenderer()):
        lk = leak()
        first = first_row(renderer, lk)
        lk.update(holders=[Holder(100, 11)])
        second = first_row(renderer, lk)
        assert first != second and "11" in second
        again = leak()  # the same inode found again later: a new Leak
        again.update(holders=[Holder(100, 12)])
        assert "12" in first_row(renderer, again)


def test_fast_json_line_equals_the_reference_dict() -> None:
    from tracer.report.jsonl import leak_json

    s = summary()
    cases = [leak(), leak(exact=False, creator=False), leak(comm=HOSTILE), leak(comm='q"uote\\')]
    accepted = leak()
    accepted.creator = Creator(0, 0, 0, "", True)  # handshake time unknown: conn_age_s null
    v4 = leak(t=SockTuple(socket.AF_INET, "10.1.2.3", 5, "10.9.9.9", 80))
    v4.procs[100] = ProcInfo("поток", "/kubepods/pod1/" + "cd" * 32)
    for lk in [*cases, accepted, v4]:
        line = json_report([lk], s)[0]
        assert json.loads(line) == leak_json(lk, s), line
    assert json.loads(json_report([accepted], s)[0])["conn_age_s"] is None


def test_the_histogram_of_an_exited_target_keeps_its_name() -> None:
    from tracer.core.model import LatencyBucket
    from tracer.report.table import latency_lines
    from tracer.report.text import comms_of

    s = summary(final=True, targets={}, exited={100: "java"})
    lines = latency_lines([LatencyBucket(100, "remote", 8080, 13, 5)], comms_of(s), [])
    assert "pid 100 (java)" in lines[1]  # after the blank line that opens it
