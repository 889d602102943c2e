"""The kernel's connect counts per (process, peer), for the pool verdict (real BPF)."""

from __future__ import annotations

import socket
import time

import pytest

from tests.conftest import connected_pair
from tracer.core.verdict import PeerKey

pytestmark = pytest.mark.bpf


def test_connects_are_counted_for_inserted_pairs_only(probe, peers) -> None:
    server, client, other = peers(), peers(), peers()
    lst = server.call(op="listen")
    key = PeerKey(client.pid, socket.AF_INET, "127.0.0.1", lst["port"])
    try:
        assert probe.count_connects({key}) == {key}
        t0 = time.monotonic_ns()
        client.call(op="connect", addr="127.0.0.1", port=lst["port"], n=3)
        other.call(op="connect", addr="127.0.0.1", port=lst["port"], n=2)  # not a suspect
        connected_pair(server, client)  # another listener: another peer, not counted
        counts = probe.read_connects()
        assert counts[key][0] == 3 and counts[key][1] >= t0
        assert set(counts) == {key}, "a key the kernel created itself"
        # Removing the pair stops the counting (and empties the map).
        assert probe.count_connects(set()) == set()
        client.call(op="connect", addr="127.0.0.1", port=lst["port"])
        assert probe.read_connects() == {}
    finally:
        probe.count_connects(set())
