"""Explaining leaks against the real kernel: closes the socket survives, dup2,
the FIN-to-close latency histogram, leak rate and fd-exhaustion forecast."""

from __future__ import annotations

import resource
import time

import pytest

from tests.conftest import connected_pair, wait_until
from tracer.core.correlate import Changes
from tracer.core.model import NS_PER_S
from tracer.core.trends import log2_bucket_bounds
from tracer.engine.watcher import Watcher
from tracer.report.table import TableRenderer

pytestmark = pytest.mark.bpf


def leak_now(server, client, w: Watcher) -> dict:
    pair = connected_pair(server, client)
    fin = server.call(op="close", fd=pair["server_fd"])["mono"]
    time.sleep(max(0, 1.05 - (time.monotonic_ns() - fin) / NS_PER_S))
    w.refresh()
    return pair


def test_close_that_a_forked_child_survives_is_reported(peers, watch) -> None:
    server, client = peers(), peers()
    pair = connected_pair(server, client)
    child = client.call(op="fork_hold")["child"]
    w = watch(client.pid)
    server.call(op="close", fd=pair["server_fd"])
    time.sleep(1.05)
    w.refresh()
    (leak,) = w.leaks()
    assert {h.pid for h in leak.holders} == {client.pid, child}

    client.call(op="close", fd=pair["client_fd"])
    changes = wait_until(lambda: _with_released(w.drain_events(100)), timeout=3)
    (r,) = changes.released_fds
    assert (r.pid, r.fd, r.via) == (client.pid, pair["client_fd"], "close")
    assert [(h.pid, h.fd) for h in r.still_held] == [(child, pair["client_fd"])]
    (e,) = changes.ended  # the watched pid no longer holds it
    assert e.reason == "released" and e.exact and e.by_pid == client.pid
    text = TableRenderer().fd_released(r, 0.0)
    assert f"close({pair['client_fd']})" in text and f"still held by pid {child}" in text


def _with_released(changes: Changes) -> Changes | None:
    return changes if changes.released_fds else None


def test_dup2_over_a_leaked_fd_ends_the_leak_and_is_attributed(peers, watch) -> None:
    server, client = peers(), peers()
    w = watch(client.pid)
    pair = leak_now(server, client, w)
    assert len(w.leaks()) == 1
    client.call(op="dup2_devnull", fd=pair["client_fd"])
    ended = wait_until(lambda: w.drain_events(100).ended, timeout=3)
    (e,) = ended
    assert (e.reason, e.drop, e.by_fd, e.by_pid) == (
        "closed",
        "dup2",
        pair["client_fd"],
        client.pid,
    )


def test_latency_histogram_counts_healthy_closes_beside_the_leaks(
    peers, watch, probe, closing_server
) -> None:
    server, client = peers(), peers()
    w = watch(client.pid)
    # 50 healthy closes, each 22 ms after the FIN: slot [16384, 32768) µs.
    client.call(op="cycle_after_fin", addr="127.0.0.1", port=closing_server.port, n=50, delay_ms=22)
    # ... and 5 leaks: the server side closes, the client never does.
    pairs = [connected_pair(server, client) for _ in range(5)]
    server.call(op="close", fds=[p["server_fd"] for p in pairs])
    time.sleep(1.05)
    w.refresh()
    assert len(w.leaks()) == 5

    mine = [b for b in probe.read_latency() if b.pid == client.pid]
    assert sum(b.count for b in mine) == 50
    assert {log2_bucket_bounds(b.slot) for b in mine} == {(16384, 32768)}
    assert {(b.side, b.port) for b in mine} == {("remote", closing_server.port)}
    final = w.summary(time.time(), final=True)
    assert sum(b.count for b in final.latency if b.pid == client.pid) == 50


def test_steady_leak_rate_and_fd_exhaustion_forecast(peers, watch, closing_server) -> None:
    client = peers()
    _soft, hard = resource.prlimit(client.pid, resource.RLIMIT_NOFILE)
    resource.prlimit(client.pid, resource.RLIMIT_NOFILE, (256, hard))
    w = watch(client.pid)
    client.call(op="leak_steadily", addr="127.0.0.1", port=closing_server.port, n=30, interval_s=1)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 21:
        w.refresh()
        time.sleep(1)
    (trend,) = [p for p in w.process_trends() if p.pid == client.pid]
    assert trend.rate is not None
    assert abs(trend.rate.per_min - 60) <= 12, trend.rate
    assert not trend.rate.reliable  # 20 s: said to be too short to trust
    assert trend.fd_limit == 256
    true_left_s = 256 - trend.open_fds  # one more fd per second
    assert trend.eta_s is not None and abs(trend.eta_s - true_left_s) <= 0.2 * true_left_s
