"""Exact from the first second: the moments around attach, dup, close and
namespace boundaries, against the real kernel (issue 10).

Engine tests drive a Watcher over the session's shared probe; where the
moment is the attach itself (sockets already in CLOSE_WAIT), the command
line runs with a probe of its own, compiled after the FINs.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.conftest import Peer, connected_pair, wait_until
from tracer.core.correlate import Changes
from tracer.core.model import NS_PER_S, Holder
from tracer.report.table import TableRenderer

pytestmark = pytest.mark.bpf


def _leaked(server, client, w) -> dict:
    """A client socket its server closed, reported once older than min-age."""
    pair = connected_pair(server, client)
    fin = server.call(op="close", fd=pair["server_fd"])["mono"]
    time.sleep(max(0, 1.05 - (time.monotonic_ns() - fin) / NS_PER_S))
    w.refresh()
    pair["fin"] = fin
    return pair


def _drain_until(w, pred, timeout: float = 3.0) -> Changes:
    """Drain events until a batch satisfies pred; every batch's lines merged."""
    seen = Changes()

    def step() -> bool:
        ch = w.drain_events(100)
        seen.released_fds += ch.released_fds
        seen.ended += ch.ended
        return pred(seen)

    assert wait_until(step, timeout=timeout), (seen.released_fds, seen.ended)
    return seen


def test_dup_then_close_names_the_new_fd_at_once(peers, watch) -> None:
    server, client = peers(), peers()
    w = watch(client.pid)
    pair = _leaked(server, client, w)
    (leak,) = w.leaks()
    old = pair["client_fd"]
    new = client.call(op="dup", fd=old)["fd"]  # no probe sees a dup
    client.call(op="close", fd=old)

    seen = _drain_until(w, lambda s: s.released_fds)
    (r,) = seen.released_fds
    assert (r.pid, r.fd, r.via) == (client.pid, old, "close")
    assert r.still_held == [Holder(client.pid, new)]
    assert seen.ended == []
    text = TableRenderer().fd_released(r, 0.0)
    assert f"close({old})" in text and f"still held by pid {client.pid} fd {new}" in text
    (leak,) = w.leaks()
    assert leak.fds == [new]
    # The new fd is watched now: closing it ends the leak, attributed to it.
    client.call(op="close", fd=new)
    (e,) = _drain_until(w, lambda s: s.ended).ended
    assert (e.reason, e.by_pid, e.by_fd, e.drop) == ("closed", client.pid, new, "close")


def test_io_uring_close_of_a_dup_does_not_stay_trusted(peers, watch) -> None:
    server, client = peers(), peers()
    w = watch(client.pid)
    pair = _leaked(server, client, w)
    old = pair["client_fd"]
    new = client.call(op="dup", fd=old)["fd"]
    w.refresh()  # not a full scan: the dup is unknown until a drop says so
    assert client.call(op="uring_close", fd=old)["res"] == 0

    (r,) = _drain_until(w, lambda s: s.released_fds).released_fds
    assert (r.fd, r.via, r.still_held) == (old, "io_uring", [Holder(client.pid, new)])
    assert "an io_uring close dropped fd" in TableRenderer().fd_released(r, 0.0)
    (leak,) = w.leaks()
    assert leak.fds == [new]


def test_exec_closes_the_cloexec_fd_and_the_inheritable_dup_is_named(peers, watch) -> None:
    server, client = peers(), peers()
    w = watch(client.pid)
    pair = _leaked(server, client, w)
    old = pair["client_fd"]  # Python sockets are close-on-exec
    new = client.call(op="dup", fd=old, inheritable=True)["fd"]
    client.call(op="exec_sleep", s=30)  # pid stays, fds < new go, new stays

    (r,) = _drain_until(w, lambda s: s.released_fds).released_fds
    assert (r.pid, r.fd, r.via) == (client.pid, old, "exec")
    assert r.still_held == [Holder(client.pid, new)]
    (leak,) = w.leaks()
    assert leak.fds == [new]


def test_a_trusted_fd_closed_unseen_is_caught_before_the_report(peers, watch) -> None:
    """What no probe sees (here: a close while the close probes are off, as a
    32-bit process's closes are) must not reach a report: verify() reads
    every fd a report names unless an event would have told."""
    server, client = peers(), peers()
    w = watch(client.pid)
    pair = _leaked(server, client, w)
    old = pair["client_fd"]
    new = client.call(op="dup", fd=old)["fd"]
    w.probe.set_close_probes(False)
    try:
        client.call(op="close", fd=old)
        assert w.drain_events(100).released_fds == []  # unseen
        # As for an fd no event covers (a 32-bit process's): not marked.
        w.probe.unwatch_fd(client.pid, old)
        w.watchlist._drop_mark(Holder(client.pid, old))
        ch = w.verify(w.leaks())
    finally:
        w.probe.set_close_probes(True)
    (r,) = ch.released_fds
    assert (r.fd, r.via, r.still_held) == (old, "unseen", [Holder(client.pid, new)])
    assert w.leaks()[0].fds == [new]


@pytest.fixture
def two_netns() -> Iterator[tuple[str, str]]:
    names = [f"cwtwin-{uuid.uuid4().hex[:6]}" for _ in range(2)]
    try:
        for n in names:
            subprocess.run(["ip", "netns", "add", n], check=True)
            subprocess.run(["ip", "-n", n, "link", "set", "lo", "up"], check=True)
        yield names[0], names[1]
    finally:
        for n in names:
            subprocess.run(["ip", "netns", "delete", n], check=False)


SERVICE_PORT, CLIENT_PORT = 8080, 41000


def _twin(peers, ns: str) -> tuple[Peer, Peer, dict]:
    """In namespace ns: a server on 127.0.0.1:8080 and a client bound to
    127.0.0.1:41000, connected: the same 4-tuple in every twin."""
    server, client = peers(ns), peers(ns)
    lst = server.call(op="listen", port=SERVICE_PORT)
    c = client.call(op="connect", addr="127.0.0.1", port=SERVICE_PORT, bind_port=CLIENT_PORT)
    a = server.call(op="accept", fd=lst["fd"])
    return server, client, {"client_fd": c["fd"], "server_fd": a["fd"]}


def test_twins_in_two_namespaces_are_never_mixed_up(peers, watch, two_netns) -> None:
    (s1, c1, p1), (s2, c2, p2) = (_twin(peers, ns) for ns in two_netns)
    w = watch(c1.pid, c2.pid)
    f1 = s1.call(op="close", fd=p1["server_fd"])["mono"]
    time.sleep(0.3)  # two FIN times far enough apart to tell them
    f2 = s2.call(op="close", fd=p2["server_fd"])["mono"]
    time.sleep(max(0, 1.05 - (time.monotonic_ns() - f2) / NS_PER_S))
    w.refresh()
    by_pid = {lk.pid: lk for lk in w.leaks()}
    assert set(by_pid) == {c1.pid, c2.pid}
    assert by_pid[c1.pid].tuple == by_pid[c2.pid].tuple
    assert by_pid[c1.pid].netns != by_pid[c2.pid].netns
    for pid, fin in ((c1.pid, f1), (c2.pid, f2)):
        assert by_pid[pid].age_exact and abs(by_pid[pid].fin_ns - fin) < 0.1 * NS_PER_S

    c2.call(op="close", fd=p2["client_fd"])
    (e,) = _drain_until(w, lambda s: s.ended).ended
    assert e.leak.pid == c2.pid and e.by_pid == c2.pid and e.exact
    w.refresh()
    assert [lk.pid for lk in w.leaks()] == [c1.pid]


def test_twins_attached_after_their_fins(peers, two_netns, live) -> None:
    (s1, c1, p1), (s2, c2, p2) = (_twin(peers, ns) for ns in two_netns)
    for s, p in ((s1, p1), (s2, p2)):
        s.call(op="close", fd=p["server_fd"])
    cli = live("watch", "--pid", str(c1.pid), "--pid", str(c2.pid), "--json",
               "--min-age", "0.5", "--interval", "0.5")  # fmt: skip
    cli.wait_for_attach()
    cli.wait_for_json(lambda o: o["type"] == "summary" and o["leaks"] == 2)
    c1.call(op="close", fd=p1["client_fd"])
    ended = cli.wait_for_json(lambda o: o["type"] == "ended")
    assert ended["pid"] == c1.pid and ended["reason"] == "closed"
    assert ended["latency_exact"] is False  # the FIN came before attach
    summary = cli.wait_for_json(lambda o: o["type"] == "summary")
    assert summary["leaks_by_pid"] == {str(c2.pid): 1}
    cli.proc.terminate()
    assert cli.finish() == 0
    assert not [o for o in cli.json_lines() if o["type"] == "ended" and o["pid"] == c2.pid]


def test_leaks_younger_than_min_age_at_attach_are_reported_on_time(peers, live) -> None:
    """Sockets already in CLOSE_WAIT at attach, 0.3 s old, min-age 2 s: the
    first report after they come of age lists them (not the 30-s reconcile)."""
    server, client = peers(), peers()
    lst = server.call(op="listen")
    c = client.call(op="connect", addr="127.0.0.1", port=lst["port"], n=20)
    a = server.call(op="accept", fd=lst["fd"], n=20)
    fin = server.call(op="close", fds=a["fds"])["mono"]
    cli = live("watch", "--pid", str(client.pid), "--json", "--min-age", "2", "--interval", "1")
    first = cli.wait_for_json(lambda o: o["type"] == "summary" and o["leaks"] == 20, timeout=10)
    latency = (time.monotonic_ns() - fin) / NS_PER_S
    assert latency <= 2 + 1 + 0.5 + 1.5, latency  # min-age + interval + 0.5 s, + compile time
    leaks = [o for o in cli.json_lines() if o["type"] == "leak"]
    assert sorted(o["fd"] for o in leaks) == sorted(c["fds"])
    assert all(o["preexisting"] and not o["age_exact"] for o in leaks)
    assert first["elapsed_s"] < 3.6


def test_closing_the_session_takes_back_what_it_asked_of_the_kernel(peers, watch, probe) -> None:
    server, client = peers(), peers()
    w = watch(client.pid)
    _leaked(server, client, w)
    assert probe.watched() and w.watchlist._fds
    w.close()
    assert probe.watched() == {} and probe._fd_marks == {}
    assert len(list(probe._watched_fds.items())) == 0 and not probe.close_probes_attached


def _storm_size() -> int:
    """As many sockets as one process may hold here (the hard RLIMIT_NOFILE,
    20,000 on this machine kind, which even root cannot raise), less room
    for the peer's own fds, in whole thousands."""
    import resource

    return (resource.getrlimit(resource.RLIMIT_NOFILE)[1] - 100) // 1000 * 1000 or 1000


def test_a_process_closing_its_leaks_one_by_one_by_the_ten_thousand(peers, watch) -> None:
    """Each close is an fd drop and a CLOSE_WAIT exit: every leak ends,
    attributed to its own fd. (The time it takes is bench/'s: end storm.)"""
    storm = _storm_size()
    assert storm >= 10_000
    server, client = peers(), peers()
    lst = server.call(op="listen")
    client_fds, server_fds = [], []
    for _ in range(storm // 1000):  # within the listen backlog
        client_fds += client.call(op="connect", addr="127.0.0.1", port=lst["port"], n=1000)["fds"]
        server_fds += server.call(op="accept", fd=lst["fd"], n=1000)["fds"]
    w = watch(client.pid)
    fin = server.call(op="close", fds=server_fds)["mono"]
    time.sleep(max(0, 1.05 - (time.monotonic_ns() - fin) / NS_PER_S))
    w.refresh()
    assert len(w.leaks()) == storm
    assert w.probe.stats().events_lost == 0

    client.call(op="close", fds=client_fds)
    ended = _drain_until(w, lambda s: len(s.ended) >= storm, timeout=60).ended
    assert len(ended) == storm and w.leaks() == []
    assert {e.reason for e in ended} == {"closed"} and all(e.exact for e in ended)
    assert sorted(e.by_fd for e in ended) == sorted(client_fds)
    assert all(e.by_fd in e.leak.fds for e in ended)
    assert w.probe.stats().events_lost == 0
