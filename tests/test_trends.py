"""Growth rates, forecasts and groups: pure logic."""

from __future__ import annotations

import socket

import pytest

from tracer.core.model import NS_PER_S, Creator, Holder, Leak, SockTuple
from tracer.core.trends import (
    CountHistory,
    GroupStarts,
    Rate,
    fd_exhaustion_eta_s,
    group_key,
    log2_bucket_bounds,
    thread_pattern,
)

S = NS_PER_S
EPHEMERAL = (32768, 60999)


def test_rate_is_the_least_squares_slope_over_the_window() -> None:
    h = CountHistory(window_s=300)
    assert h.rate() is None
    # 1 leak/s, detected in bursts every 2 s (count jumps by 2)
    for i in range(11):
        h.add(100 + 2 * i, 2 * i)
    r = h.rate()
    assert r is not None and r.per_min == pytest.approx(60.0)
    assert r.window_s == 20 and r.samples == 11 and not r.reliable and r.growing
    for i in range(11, 40):
        h.add(100 + 2 * i, 2 * i)
    assert h.rate().reliable


def test_old_samples_leave_the_window() -> None:
    h = CountHistory(window_s=60)
    for t in range(0, 100, 10):
        h.add(t, t if t < 50 else 50)  # grew, then stopped
    r = h.rate()
    assert r.window_s == 60 and r.per_min < 30


def test_forecast() -> None:
    assert fd_exhaustion_eta_s(200, 256, Rate(60.0, 30, 10)) == pytest.approx(56.0)
    assert fd_exhaustion_eta_s(300, 256, Rate(60.0, 30, 10)) == 0
    assert fd_exhaustion_eta_s(200, 256, Rate(0.0, 30, 10)) is None  # not growing
    assert fd_exhaustion_eta_s(200, 256, Rate(-5.0, 30, 10)) is None
    assert fd_exhaustion_eta_s(200, None, Rate(60.0, 30, 10)) is None


@pytest.mark.parametrize(
    ("names", "pattern"),
    [
        (["pool-1-thread-1", "pool-1-thread-7"], "pool-1-thread-*"),
        (["pool-1-thread-3"], "pool-1-thread-3"),
        (["main", "main"], "main"),
        (["a1", "b", "b", "c"], "b, a1 (+1 more)"),
        ([], "-"),
    ],
)
def test_thread_pattern(names: list[str], pattern: str) -> None:
    assert thread_pattern(names) == pattern


def _leak(local: int, remote: int, fin_s: float, creator: Creator | None = None) -> Leak:
    t = SockTuple(socket.AF_INET, "10.0.0.1", local, "10.0.0.9", remote)
    return Leak(1, 1, t, int(fin_s * S), True, False, [Holder(1, 3)], 0, 0, creator=creator)


def test_grouping_side_from_creator_or_ephemeral_ports() -> None:
    client = Creator(0, 1, 2, "w", accepted=False)
    server = Creator(0, 0, 0, "", accepted=True)
    assert group_key(_leak(40000, 8080, 1, client), EPHEMERAL) == ("remote", "10.0.0.9:8080")
    assert group_key(_leak(8080, 40000, 1, server), EPHEMERAL) == ("local", "10.0.0.1:8080")
    assert group_key(_leak(8080, 40000, 1), EPHEMERAL) == ("local", "10.0.0.1:8080")
    assert group_key(_leak(40000, 8080, 1), EPHEMERAL) == ("remote", "10.0.0.9:8080")


def test_groups_count_starts_since_attach() -> None:
    starts = GroupStarts(attach_ns=100 * S, port_range=EPHEMERAL)
    w = Creator(0, 1, 2, "pool-1-thread-1", False)
    w2 = Creator(0, 1, 3, "pool-1-thread-2", False)
    old = _leak(40001, 8080, 50, w)  # FIN before attach: not a start
    new = [_leak(40002, 8080, 110, w), _leak(40003, 8080, 130, w2)]
    starts.add([old, *new])
    (g,) = starts.groups([old, *new], now_ns=160 * S)
    assert (g.leaks, g.oldest_s, g.newest_s, g.per_min) == (3, 110, 30, 2.0)
    assert g.opened_by == "pool-1-thread-*"


def test_log2_bounds_match_bcc() -> None:
    # bpf_log2l(v) = floor(log2(v)) + 1, and 1 for v == 0
    assert log2_bucket_bounds(1) == (0, 2)
    assert log2_bucket_bounds(2) == (2, 4)
    assert log2_bucket_bounds(15) == (16384, 32768)  # 20 ms lands here
