"""Shared fixtures: real BPF, real processes, real network namespaces.

On CI (CI=true) a test that would skip fails instead: the BPF tests are the
point of the suite, and a silent skip would turn CI green for nothing.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PEER = Path(__file__).resolve().parent / "peer.py"
ON_CI = os.environ.get("CI") == "true"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if ON_CI and rep.skipped and not hasattr(rep, "wasxfail"):
        rep.outcome = "failed"
        rep.longrepr = f"skipped on CI, which must run every test: {rep.longrepr}"


def bpf_unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    try:
        from tracer.kernel import preflight

        preflight.require_tracer()
    except Exception as exc:
        return f"BPF unavailable: {exc}"
    return None


@pytest.fixture(scope="session")
def bpf_ok() -> None:
    reason = bpf_unavailable_reason()
    if reason:
        if ON_CI:
            pytest.fail(f"CI must run BPF tests: {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def probe(bpf_ok: None) -> Iterator[object]:
    """One loaded BPF program shared by the in-process tests (compiling takes ~1 s).

    Sound to share: each test watches only its own processes, and events
    about other tests' sockets are ignored by the tracker (unknown sockets).
    fd drops are recorded for every process (no pid filter), as with --all.
    """
    from tracer.kernel.config import ProbeConfig
    from tracer.kernel.probe import KernelProbe

    with KernelProbe(ProbeConfig(max_sockets=32768, max_conns=32768)) as p:
        yield p


@pytest.fixture
def watch(probe: object) -> Iterator[Callable[..., object]]:
    """Make Watchers over the shared probe; each is closed (and takes back
    what it asked of the kernel) at the end of the test."""
    from tracer.engine.watcher import Watcher
    from tracer.system.targets import Targets

    made: list[Watcher] = []

    def make(*pids: int, all_processes: bool = False, min_age: float = 1.0, on=None) -> Watcher:
        w = Watcher(on or probe, Targets(tuple(pids), all_processes), min_age)
        made.append(w)
        return w

    yield make
    for w in made:
        w.close()


@pytest.fixture
def live() -> Iterator[Callable[..., object]]:
    """Start `closewait ARGS` in the background (tests/cli_helpers.LiveCli);
    killed at the end of the test if still running."""
    from tests.cli_helpers import LiveCli

    made: list[LiveCli] = []

    def start(*args: str) -> LiveCli:
        c = LiveCli(*args)
        made.append(c)
        return c

    yield start
    for c in made:
        c.kill()


@pytest.fixture(scope="session")
def probe_filtered(bpf_ok: None) -> Iterator[object]:
    """A second shared probe, compiled as `watch --pid` is (CW_FILTER_PIDS):
    fd drops recorded for targets only, FINs of connections opened by
    processes that are neither targets nor their ancestors left out."""
    from tracer.kernel.config import ProbeConfig
    from tracer.kernel.probe import KernelProbe

    with KernelProbe(ProbeConfig(max_sockets=4096, max_conns=4096, filter_pids=True)) as p:
        yield p


class Peer:
    """A tests/peer.py child process, optionally inside a network namespace."""

    def __init__(self, netns: str | None = None) -> None:
        cmd = [sys.executable, str(PEER)]
        if netns:
            cmd = ["ip", "netns", "exec", netns, *cmd]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        hello = self._read()
        self.pid: int = hello["pid"]

    def _read(self) -> dict:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"peer exited with {self.proc.wait()}")
        return json.loads(line)

    def call(self, **cmd: object) -> dict:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        reply = self._read()
        if "error" in reply:
            raise RuntimeError(f"peer {cmd}: {reply['error']}")
        return reply

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def peers() -> Iterator[Callable[..., Peer]]:
    made: list[Peer] = []

    def start(netns: str | None = None) -> Peer:
        p = Peer(netns)
        made.append(p)
        return p

    yield start
    for p in made:
        p.kill()


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh network namespace with loopback up, deleted afterwards."""
    name = f"cwtest-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def connected_pair(server: Peer, client: Peer, v6: bool = False) -> dict:
    """client connects to a listener in server; returns fds, ports and the listener."""
    lst = server.call(op="listen", v6=v6)
    addr = "::1" if v6 else "127.0.0.1"
    c = client.call(op="connect", addr=addr, port=lst["port"])
    a = server.call(op="accept", fd=lst["fd"])
    return {
        "listener": lst,
        "port": lst["port"],
        "client_fd": c["fd"],
        "client_port": c["local_port"],
        "server_fd": a["fd"],
        "addr": addr,
    }


class ClosingServer:
    """A listener in the test process that closes every connection at once:
    its clients get a FIN right after connecting."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def closing_server() -> Iterator[ClosingServer]:
    srv = ClosingServer()
    yield srv
    srv.close()


def wait_until(predicate: Callable[[], object], timeout: float = 5.0, step: float = 0.05) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)
