"""sock_diag: closewait's fast reply parser agrees with pyroute2's decoder on real
sockets, and namespaces are entered and left correctly."""

from __future__ import annotations

import os
import socket
import time

import pytest
from pyroute2 import DiagSocket

from tests.conftest import connected_pair
from tracer.system import procfs
from tracer.system.sockdiag import TCP_CLOSE_WAIT, DiagClient, DiagPool


def _close_wait_sockets(n_v4: int = 3, n_v6: int = 2) -> list[socket.socket]:
    """Client sockets whose peers closed after sending i bytes: in CLOSE_WAIT."""
    keep = []
    for fam, addr, n in ((socket.AF_INET, "127.0.0.1", n_v4), (socket.AF_INET6, "::1", n_v6)):
        srv = socket.socket(fam)
        srv.bind((addr, 0))
        srv.listen()
        for i in range(n):
            c = socket.create_connection(srv.getsockname()[:2])
            a, _ = srv.accept()
            a.sendall(b"z" * (i * 10))
            a.close()
            keep.append(c)
        srv.close()
    time.sleep(0.1)
    return keep


def test_parser_matches_pyroute2_decoder() -> None:
    keep = _close_wait_sockets()
    mine = {d.inode: d for d in DiagClient(procfs.netns_inode(os.getpid()), None).close_wait()}
    theirs = {}
    with DiagSocket() as ds:
        ds.bind()
        t1 = time.monotonic_ns()
        for fam in (socket.AF_INET, socket.AF_INET6):
            for m in ds.get_sock_stats(family=fam, states=1 << TCP_CLOSE_WAIT, extensions=2):
                theirs[m["idiag_inode"]] = m
        t2 = time.monotonic_ns()
    ours = [os.fstat(s.fileno()).st_ino for s in keep]
    assert set(ours) <= set(mine) and set(ours) <= set(theirs)
    for inode in ours:
        d, m = mine[inode], theirs[inode]
        assert d.tuple.family == m["idiag_family"]
        assert (d.tuple.local_ip, d.tuple.local_port) == (m["idiag_src"], m["idiag_sport"])
        assert (d.tuple.remote_ip, d.tuple.remote_port) == (m["idiag_dst"], m["idiag_dport"])
        assert d.uid == m["idiag_uid"] and d.recv_q == m["idiag_rqueue"] - 1
        # pyroute2's dump ran between t1 and t2: its FIN time is within
        # [t1 - last_ack, t2 - last_ack], to the jiffy (4 ms at HZ=250).
        last_ack = m.get_attr("INET_DIAG_INFO")["tcpi_last_ack_recv"] * 1_000_000
        assert t1 - last_ack - 10_000_000 <= d.est_fin_ns <= t2 - last_ack + 10_000_000
    assert sorted(mine[i].recv_q for i in ours) == [0, 0, 10, 10, 20]
    for s in keep:
        s.close()


def test_dump_inside_another_network_namespace(netns: str, peers) -> None:
    if os.geteuid() != 0:
        pytest.skip("entering a network namespace needs root")
    server, client = peers(netns), peers(netns)
    pair = connected_pair(server, client)
    server.call(op="close", fd=pair["server_fd"])
    time.sleep(0.1)
    pool = DiagPool()
    try:
        ns = procfs.netns_inode(client.pid)
        found = pool.close_wait(ns, client.pid)
        assert [d.tuple.local_port for d in found] == [pair["client_port"]]
        assert all(d.netns == ns for d in found)
        # Our own namespace is untouched: the thread went back.
        assert procfs.netns_inode(os.getpid()) == os.stat("/proc/thread-self/ns/net").st_ino
        own = pool.close_wait(procfs.netns_inode(os.getpid()), os.getpid())
        assert pair["client_port"] not in [d.tuple.local_port for d in own]
    finally:
        pool.close()


def test_a_socket_dumped_again_keeps_its_first_fin_estimate() -> None:
    """Known sockets are not re-parsed; their FIN estimate must stay absolute,
    or a pre-existing socket's age would never grow past --min-age."""
    keep = _close_wait_sockets(2, 0)  # the second one has 10 unread bytes
    client = DiagClient(procfs.netns_inode(os.getpid()), None)
    inode = os.fstat(keep[1].fileno()).st_ino
    first = {d.inode: d for d in client.close_wait()}[inode]
    time.sleep(0.3)
    second = {d.inode: d for d in client.close_wait()}[inode]
    assert second.est_fin_ns == first.est_fin_ns is not None
    keep[1].recv(1)  # reading changes Recv-Q: that one field is refreshed
    third = {d.inode: d for d in client.close_wait()}[inode]
    assert third.recv_q == first.recv_q - 1 and third.est_fin_ns == first.est_fin_ns
    client.close()
    for s in keep:
        s.close()


def test_sockets_new_after_the_first_dump_are_estimated_at_first_sight() -> None:
    """Later dumps skip tcp_info (a third of the bytes): a socket that first
    appears then is at least as old as that dump, which is its estimate."""
    client = DiagClient(procfs.netns_inode(os.getpid()), None)
    client.close_wait()
    keep = _close_wait_sockets(1, 0)
    time.sleep(0.2)
    before = time.monotonic_ns()
    later = {d.inode: d for d in client.close_wait()}[os.fstat(keep[0].fileno()).st_ino]
    assert before <= later.est_fin_ns <= time.monotonic_ns()
    client.close()
    keep[0].close()
