"""Verdicts per group of leaks (exhausted, growing, steady, draining): pure logic."""

from __future__ import annotations

import socket

import pytest

from tracer.core.model import NS_PER_S
from tracer.core.trends import Group
from tracer.core.verdict import (
    DRAINING,
    EXHAUSTED,
    GROWING,
    STEADY,
    GroupCounts,
    PeerActivity,
    PeerKey,
    Verdict,
    is_candidate,
    judge,
    most_severe,
    window_s,
)
from tracer.report.text import process_verdict_text, verdict_text

S = NS_PER_S
NOW = 1000 * S
PEER = "127.0.0.1:8080"


def quiet_for(seconds: float, established: int | None = 0) -> PeerActivity:
    return PeerActivity(counted_since_ns=NOW - int(seconds * S), last_connect_ns=None,
                        established=established)  # fmt: skip


def verdict(activity: dict, change: int = 0, side: str = "remote", leaks=None):
    leaks = leaks or {100: 20}
    return most_severe(judge(side, PEER, leaks, change, activity, NOW, 10.0))


def test_the_window_is_three_intervals_and_at_least_ten_seconds() -> None:
    assert window_s(2.0) == 10.0 and window_s(5.0) == 15.0 and window_s(0.5) == 10.0


def test_exhausted_needs_leaks_quiet_for_the_window_and_no_established_left() -> None:
    v = verdict({100: quiet_for(10)})
    assert (v.kind, v.pid, v.leaks, v.quiet_s, v.established) == (EXHAUSTED, 100, 20, 10, 0)
    assert verdict({100: quiet_for(9.9)}).kind == STEADY  # not quiet for long enough yet
    assert verdict({100: quiet_for(60, established=1)}).kind == STEADY  # a connection left
    assert verdict({100: quiet_for(60, established=None)}).kind == STEADY  # unknown: no claim
    assert verdict({}).kind == STEADY  # connects not counted
    assert verdict({100: quiet_for(60)}, side="local").kind == STEADY  # a server's leaks


def test_the_pool_counts_the_leaks_closed_late_since_the_last_connect() -> None:
    act = PeerActivity(NOW - 30 * S, None, 0, ended_since_connect=3)
    v = verdict({100: act}, change=-3, leaks={100: 5})
    assert (v.kind, v.leaks, v.pool) == (EXHAUSTED, 5, 8)


def test_quiet_counts_from_the_last_connect_known() -> None:
    act = PeerActivity(NOW - 60 * S, last_connect_ns=NOW - 4 * S, established=0)
    assert act.quiet_s(NOW) == 4 and not is_candidate(act, NOW, 10.0)
    assert verdict({100: act}).kind == STEADY
    # Counting began 3 s ago: the connect before it proves nothing newer.
    assert PeerActivity(NOW - 3 * S, NOW - 30 * S, 0).quiet_s(NOW) == 3


def test_otherwise_the_count_over_the_window_decides() -> None:
    assert verdict({}, change=+3).kind == GROWING
    assert verdict({}, change=-2).kind == DRAINING
    assert verdict({}, change=0).kind == STEADY
    # Exhausted first: leaks ending late (a finalizer) do not refill the pool.
    assert verdict({100: quiet_for(30)}, change=-1).kind == EXHAUSTED


def test_a_group_of_several_processes_takes_the_most_severe_verdict() -> None:
    v = verdict({200: quiet_for(30)}, change=+1, leaks={100: 5, 200: 3})
    assert (v.kind, v.pid) == (EXHAUSTED, 200)
    assert verdict({}, change=+1, leaks={100: 5, 200: 3}).pid == 100  # the bigger one


def test_group_counts_compare_with_a_window_ago() -> None:
    c = GroupCounts()
    key = ("remote", PEER)
    for t, n in ((0, 2), (2, 4), (5, 6), (12, 6), (14, 6)):
        c.add({key: n}, t * S, 10.0)
    assert c.change(key, 14 * S, 10.0) == 2  # 6 now, 4 at t=2 (the last sample <= 4 s)
    assert c.change(key, 5 * S, 10.0) == 4  # younger than the window: since the first sample
    c.add({key: 3}, 30 * S, 10.0)
    assert c.change(key, 30 * S, 10.0) == -3
    c.add({}, 32 * S, 10.0)  # the group is gone: forgotten
    assert c.change(key, 32 * S, 10.0) == 0


def group(v, leaks: int = 20, by_pid=None) -> Group:
    return Group("remote", PEER, leaks, 50.0, 45.0, 1.0, "w*", by_pid or {100: leaks}, v)


@pytest.mark.parametrize(
    ("kind", "change", "peak", "words"),
    [
        (EXHAUSTED, 0, 20, "all 20 connections to 127.0.0.1:8080 are leaked and none was opened "
         "for 45.0s: a pool of 20 for this peer is probably exhausted: a thread that needs a "
         "connection to it blocks (unless the process stopped asking for one"),
        (EXHAUSTED, -2, 22, "a pool of 22 for this peer is probably exhausted (2 more were "
         "closed late, not given back)"),
        (GROWING, 4, 20, "growing: +4 leaks in the last 10.0s"),
        (DRAINING, -3, 20, "draining: 3 fewer leaks in the last 10.0s"),
        (STEADY, 0, 20, "steady: no new leak in the last 10.0s, and the leaked ones stay open"),
    ],
)  # fmt: skip
def test_each_verdict_is_said_in_words(kind: str, change: int, peak: int, words: str) -> None:
    quiet = 45.0 if kind == EXHAUSTED else None
    v = Verdict(kind, 100, PEER, 20, change, 10.0, quiet, 0 if quiet else None, peak)
    assert words in verdict_text(v, group(v))
    assert process_verdict_text(v)


def test_peer_key_is_what_the_kernel_counts() -> None:
    assert PeerKey(1, socket.AF_INET, "127.0.0.1", 80) == (1, 2, "127.0.0.1", 80)


def test_just_after_attach_no_verdict_claims_more_than_was_watched() -> None:
    """A group seen once has no verdict; seen for 3 s of a 10-s window, its
    words say 3 s, not 10."""
    leaks, acts = {100: 12}, {}
    assert judge("remote", PEER, leaks, 0, acts, 100 * S, 10.0, observed_s=0.0) == []
    (v,) = judge("remote", PEER, leaks, 0, acts, 100 * S, 10.0, observed_s=3.0)
    assert v.kind == STEADY and v.window_s == 3.0 and not v.full_window
    assert "no new leak in the 3.0s watched so far" in verdict_text(v, group(v, 12))
    (v,) = judge("remote", PEER, leaks, 0, acts, 100 * S, 10.0, observed_s=30.0)
    assert v.full_window and "in the last 10.0s" in verdict_text(v, group(v, 12))
