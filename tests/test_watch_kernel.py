"""The watch engine against the real kernel: real BPF, real sockets, real processes.

Each test builds its own Watcher over the session's shared probe and drives
refreshes itself, so it can assert exact pids, fds, ages and attributions.
"""

from __future__ import annotations

import os
import signal
import socket
import time

import pytest

from tests.conftest import connected_pair, wait_until
from tracer.core.model import NS_PER_S
from tracer.engine.watcher import Watcher
from tracer.system import procfs

pytestmark = pytest.mark.bpf

MIN_AGE = 1.0  # seconds; the default is 5 s, tests need not wait that long


def leaks_of(w: Watcher, pid: int) -> list:
    return [lk for lk in w.leaks() if any(h.pid == pid for h in lk.holders)]


def client_leak(peers, watch) -> tuple:
    """A client left holding a socket its server closed, once its watcher
    reports it: (client, watcher, pair, FIN time)."""
    server, client = peers(), peers()
    w = watch(client.pid)
    pair = connected_pair(server, client)
    fin = server.call(op="close", fd=pair["server_fd"])["mono"]
    refresh_after_min_age(w, fin)
    assert len(leaks_of(w, client.pid)) == 1
    return client, w, pair, fin


def send_fin(peer, fd: int, unread: int) -> int:
    """The peer sends `unread` bytes the other side will never read, then
    closes (its FIN); returns the close's CLOCK_MONOTONIC time in ns."""
    peer.call(op="send", fd=fd, n=unread)
    return peer.call(op="close", fd=fd)["mono"]


def refresh_after_min_age(w: Watcher, since_mono_ns: int) -> None:
    """Sleep until the FIN is older than MIN_AGE, then refresh."""
    left = MIN_AGE + 0.05 - (time.monotonic_ns() - since_mono_ns) / NS_PER_S
    if left > 0:
        time.sleep(left)
    w.refresh()


def test_leaking_client_reported_with_pid_fd_remote_recvq_and_age(peers, watch) -> None:
    server, client = peers(), peers()
    w = watch(client.pid)
    pair = connected_pair(server, client)
    fin = send_fin(server, pair["server_fd"], unread=1234)

    w.refresh()
    assert leaks_of(w, client.pid) == [], "reported before --min-age"
    refresh_after_min_age(w, fin)

    (leak,) = leaks_of(w, client.pid)
    assert leak.pid == client.pid
    assert leak.fds == [pair["client_fd"]]
    assert leak.tuple.remote == f"127.0.0.1:{pair['port']}"
    assert leak.tuple.local == f"127.0.0.1:{pair['client_port']}"
    assert leak.recv_q == 1234
    assert leak.age_exact and not leak.preexisting
    assert abs(leak.fin_ns - fin) < 0.5 * NS_PER_S
    assert leak.creator is not None and leak.creator.tgid == client.pid
    assert not leak.creator.accepted
    assert leak.inode == int(os.readlink(f"/proc/{client.pid}/fd/{pair['client_fd']}")[8:-1])


def test_ipv6_leak(peers, watch) -> None:
    if not socket.has_ipv6 or not os.path.exists("/proc/net/if_inet6"):
        pytest.fail("IPv6 is disabled on this host; the IPv6 test needs ::1")
    server, client = peers(), peers()
    w = watch(client.pid)
    pair = connected_pair(server, client, v6=True)
    fin = send_fin(server, pair["server_fd"], unread=10)
    refresh_after_min_age(w, fin)

    (leak,) = leaks_of(w, client.pid)
    assert leak.tuple.family == socket.AF_INET6
    assert leak.tuple.remote == f"[::1]:{pair['port']}"
    assert leak.fds == [pair["client_fd"]]
    assert leak.recv_q == 10
    assert leak.age_exact and abs(leak.fin_ns - fin) < 0.5 * NS_PER_S


def test_accepted_socket_whose_client_went_away(peers, watch) -> None:
    server, client = peers(), peers()
    w = watch(server.pid)
    pair = connected_pair(server, client)
    fin = send_fin(client, pair["client_fd"], unread=7)
    refresh_after_min_age(w, fin)

    (leak,) = leaks_of(w, server.pid)
    assert leak.fds == [pair["server_fd"]]
    assert leak.tuple.local == f"127.0.0.1:{pair['port']}"
    assert leak.recv_q == 7
    # Accepted sockets are not recorded at the handshake (bpf/closewait.bpf.c,
    # `listening`): known as accepted by their listening port, opened when unknown.
    assert leak.creator is not None and leak.creator.accepted
    assert leak.creator.opened_ns == 0 and leak.creator.tgid == 0
    assert abs(leak.fin_ns - fin) < 0.5 * NS_PER_S
    assert procfs.listening_ports().get(pair["port"], 0) >= 1


def test_healthy_client_that_closes_promptly_is_never_reported(peers, watch, probe) -> None:
    server, client = peers(), peers()
    w = watch(client.pid)
    events_before = probe.stats().events
    fins = []
    for _ in range(20):
        pair = connected_pair(server, client)
        fins.append(server.call(op="close", fd=pair["server_fd"])["mono"])
        client.call(op="close", fd=pair["client_fd"])
        server.call(op="close", fd=pair["listener"]["fd"])
    refresh_after_min_age(w, fins[-1])
    w.refresh()
    assert leaks_of(w, client.pid) == []
    # The kernel handled all 20 in-map: no event reached user space.
    assert probe.stats().events == events_before


def test_leak_that_ends_reports_fd_pid_and_latency(peers, watch) -> None:
    client, w, pair, fin = client_leak(peers, watch)

    closed = client.call(op="close", fd=pair["client_fd"])["mono"]
    ended = wait_until(lambda: w.drain_events(100).ended, timeout=3)
    (e,) = ended
    assert e.reason == "closed" and e.exact
    assert e.by_pid == client.pid and e.by_fd == pair["client_fd"] and e.drop == "close"
    assert abs(e.latency_s - (closed - fin) / NS_PER_S) < 0.5
    assert leaks_of(w, client.pid) == []


def test_leak_in_another_network_namespace_traced_from_the_root_one(peers, watch, netns) -> None:
    server, client = peers(netns), peers(netns)
    assert procfs.netns_inode(client.pid) != procfs.netns_inode(os.getpid())
    w = watch(client.pid)
    pair = connected_pair(server, client)
    fin = send_fin(server, pair["server_fd"], unread=99)
    refresh_after_min_age(w, fin)

    (leak,) = leaks_of(w, client.pid)
    assert leak.netns == procfs.netns_inode(client.pid)
    assert leak.fds == [pair["client_fd"]]
    assert leak.recv_q == 99
    assert leak.age_exact and abs(leak.fin_ns - fin) < 0.5 * NS_PER_S


def test_forked_child_keeps_the_socket_after_the_parent_closes(peers, watch) -> None:
    server, client = peers(), peers()
    pair = connected_pair(server, client)
    child = client.call(op="fork_hold")["child"]
    w = watch(client.pid, child)
    fin = server.call(op="close", fd=pair["server_fd"])["mono"]
    refresh_after_min_age(w, fin)

    (leak,) = leaks_of(w, client.pid)
    assert sorted(h.pid for h in leak.holders) == sorted([client.pid, child])

    # The parent's close() drops one reference: no state change, still a leak.
    client.call(op="close", fd=pair["client_fd"])
    w.refresh()
    (leak,) = leaks_of(w, child)
    assert [h.pid for h in leak.holders] == [child]


def test_parent_only_watch_sees_the_socket_released_to_a_child(peers, watch) -> None:
    server, client = peers(), peers()
    pair = connected_pair(server, client)
    child = client.call(op="fork_hold")["child"]
    w = watch(client.pid)
    fin = server.call(op="close", fd=pair["server_fd"])["mono"]
    refresh_after_min_age(w, fin)
    (leak,) = leaks_of(w, client.pid)
    # The child is not watched, but as a descendant its copy is listed.
    assert [(h.pid, h.fd) for h in leak.holders] == [
        (client.pid, pair["client_fd"]),
        (child, pair["client_fd"]),
    ]

    # The parent closes its fd; the child's copy keeps the socket in
    # CLOSE_WAIT, but no watched process holds it any more.
    client.call(op="close", fd=pair["client_fd"])
    (e,) = w.refresh().ended
    assert e.reason == "released" and e.leak.fds == [pair["client_fd"]]
    assert [(h.pid, h.fd) for h in e.still_held] == [(child, pair["client_fd"])]
    assert leaks_of(w, client.pid) == []


def test_fork_inherited_leak_names_the_parent_as_opener(peers, watch) -> None:
    server, client = peers(), peers()
    pair = connected_pair(server, client)
    child = client.call(op="fork_hold")["child"]
    client.call(op="close", fd=pair["client_fd"])
    w = watch(child)
    fin = server.call(op="close", fd=pair["server_fd"])["mono"]
    refresh_after_min_age(w, fin)
    (leak,) = leaks_of(w, child)
    assert leak.pid == child and leak.fds == [pair["client_fd"]]
    assert leak.creator is not None and leak.creator.tgid == client.pid
    assert leak.opener_holds is False


def test_close_range_attributed(peers, watch) -> None:
    client, w, pair, _fin = client_leak(peers, watch)
    fd = pair["client_fd"]
    client.call(op="closerange", lo=fd, hi=fd)
    (e,) = wait_until(lambda: w.drain_events(100).ended, timeout=3)
    assert e.reason == "closed" and e.drop == "close_range" and e.by_fd == fd
    assert e.by_pid == client.pid


def test_process_exit_ends_its_leaks(peers, watch) -> None:
    client, w, _pair, _fin = client_leak(peers, watch)
    os.kill(client.pid, signal.SIGKILL)
    client.proc.wait()
    (e,) = wait_until(lambda: w.drain_events(100).ended, timeout=3)
    assert e.reason == "exited" and e.by_pid == client.pid
    w.refresh()
    assert w.finished()
    assert any("exited" in n for n in w.notices)


def test_all_processes_mode_finds_the_leak(peers, watch) -> None:
    server, client = peers(), peers()
    w = watch(all_processes=True)
    pair = connected_pair(server, client)
    fin = server.call(op="close", fd=pair["server_fd"])["mono"]
    refresh_after_min_age(w, fin)
    (leak,) = leaks_of(w, client.pid)
    assert leak.fds == [pair["client_fd"]]


def test_pid_filter_keeps_what_an_ancestor_opened_and_skips_strangers(
    peers, watch, probe_filtered
) -> None:
    """With --pid's program: a connection the parent opened and a fork child
    holds is tracked exactly (the parent is the target's ancestor); one a
    sibling opened never enters the kernel map."""
    server, parent, stranger = peers(), peers(), peers()
    inherited = connected_pair(server, parent)
    child = parent.call(op="fork_hold")["child"]
    parent.call(op="close", fd=inherited["client_fd"])  # only the child holds it now
    theirs = connected_pair(server, stranger)
    w = watch(child, on=probe_filtered)
    before = probe_filtered.stats().fins_foreign
    fin = server.call(op="close", fds=[inherited["server_fd"], theirs["server_fd"]])["mono"]
    refresh_after_min_age(w, fin)

    (leak,) = w.leaks()
    assert leak.pid == child and leak.fds == [inherited["client_fd"]]
    assert leak.age_exact and leak.creator is not None and leak.creator.tgid == parent.pid
    assert leak.opener_holds is False
    kernel = probe_filtered.read_sockets()
    assert not [k for k in kernel.values() if k.tuple.local_port == theirs["client_port"]]
    assert probe_filtered.stats().fins_foreign >= before + 1  # (other tracers add theirs)
