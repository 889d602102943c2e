"""Pool diagnosis on real clients: the exhausted-pool verdict and --threads.

One `closewait watch --threads --json` session watches every client of the
module at once (JVMs start slowly, and each verdict needs its 10 s window):
- Apache HttpClient 4 (Debian's libhttpclient-java, built here with javac) with
  a pool of 4, 6 workers and unconsumed responses: exhausted, and its threads
  wait in AbstractConnPool.getPoolEntryBlocking called from OrderService:22;
- the same client consuming its responses: no leak, no verdict, no dump;
- the same leaky client in a JVM started with -XX:+DisableAttachMechanism:
  exhausted, and one line saying why its threads cannot be shown;
- urllib3 (PoolManager(maxsize=3, block=True), preload_content=False never
  released): exhausted, and py-spy shows the threads in _get_conn;
- the demo's client with an unbounded pool: growing, never exhausted;
- a process that is neither a JVM nor Python (sleep, holding a connection
  bash opened): one line, and its opener thread's state.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli_helpers import ROOT, LiveCli, run_cli
from tests.conftest import wait_until
from tracer.system import procfs

pytestmark = pytest.mark.bpf

WORKLOADS = Path(__file__).resolve().parent / "workloads"
JARS = ("httpclient", "httpcore", "commons-logging", "commons-codec")
MIN_AGE_S, INTERVAL_S, WINDOW_S = 1.0, 1.0, 10.0
APP_FRAME_JAVA = "shop.OrderService.fetchPrices(OrderService.java:22)"


@pytest.fixture(scope="session")
def java_client() -> Iterator[list[str]]:
    """The command line of the Java client, compiled once per session (outside
    /tmp: the container test gives its JVM a /tmp of its own)."""
    javac = shutil.which("javac")
    jars = [Path(f"/usr/share/java/{j}.jar") for j in JARS]
    if javac is None or not all(j.exists() for j in jars):
        pytest.skip("needs javac and libhttpclient-java: run scripts/setup.sh --dev")
    out = tempfile.mkdtemp(prefix="closewait-java-", dir="/var/tmp")
    try:
        classpath = ":".join(map(str, jars))
        sources = sorted(str(p) for p in (WORKLOADS / "java" / "shop").glob("*.java"))
        subprocess.run([javac, "-d", out, "-cp", classpath, *sources], check=True)
        yield ["java", "-Xshare:auto", "-cp", f"{out}:{classpath}"]
    finally:
        shutil.rmtree(out, ignore_errors=True)


class Procs:
    """Child processes of a test, every one killed at the end."""

    def __init__(self) -> None:
        self.made: list[subprocess.Popen] = []

    def start(self, *cmd: str, stdout=subprocess.DEVNULL) -> subprocess.Popen:
        p = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.DEVNULL, cwd=ROOT,
            text=True,
        )  # fmt: skip
        self.made.append(p)
        return p

    def kill(self) -> None:
        for p in self.made:
            if p.poll() is None:
                p.kill()
            p.wait()


@pytest.fixture(scope="module")
def session(bpf_ok, java_client):
    """Start closewait, then every client (so the kernel sees them connect),
    run until the slowest verdict is due, and hand the JSON objects over."""
    if not os.access(Path(sys.executable).parent / "py-spy", os.X_OK) and not shutil.which(
        "py-spy"
    ):
        pytest.skip("needs py-spy: run scripts/setup.sh --dev")
    procs = Procs()
    cli = None
    try:
        server = procs.start(sys.executable, "-m", "tracer.demo.workload", "server",
                             stdout=subprocess.PIPE)  # fmt: skip
        port = server.stdout.readline().strip()
        # The clients are started first, stopped (SIGSTOP) until closewait has
        # attached, so that their pids can be given with --pid.
        clients = {
            "java": [*java_client, "shop.LeakyPool", port, "leaky", "4", "6"],
            "java_healthy": [*java_client, "shop.LeakyPool", port, "healthy", "4", "2"],
            "java_noattach": [java_client[0], "-XX:+DisableAttachMechanism", *java_client[1:],
                              "shop.LeakyPool", port, "leaky", "2", "3"],
            "python": [sys.executable, str(WORKLOADS / "leaky_urllib3.py"), port, "3", "5"],
            "unbounded": [sys.executable, "-m", "tracer.demo.workload", "client", port, "leaky",
                          "--pool", "0"],
            # (stops itself: it must connect after closewait has attached)
            "other": ["bash", "-c", f"kill -STOP $$; exec 3<>/dev/tcp/127.0.0.1/{port}; "
                      "printf 'GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n' >&3; exec sleep 60"],
        }  # fmt: skip
        pids = {}
        for name, cmd in clients.items():
            p = procs.start(*cmd)
            if name != "other":
                os.kill(p.pid, 19)  # SIGSTOP: it starts once closewait watches it
            pids[name] = p.pid
        args = [a for pid in pids.values() for a in ("--pid", str(pid))]
        cli = LiveCli("watch", *args, "--threads", "--json", "--min-age", f"{MIN_AGE_S}s",
                      "--interval", f"{INTERVAL_S}s", "--duration", "17s")  # fmt: skip
        cli.wait_for_attach()
        for pid in pids.values():
            os.kill(pid, 18)  # SIGCONT
        assert cli.finish(timeout=60) == 0, cli.stderr
        yield pids, cli.json_lines()
    finally:
        if cli is not None:
            cli.kill()
        procs.kill()


def _groups(objs: list[dict], pid: int) -> list[dict]:
    return [o for o in objs if o["type"] == "group" and o["verdict_pid"] == pid]


def _threads(objs: list[dict], pid: int) -> list[dict]:
    return [o for o in objs if o["type"] == "threads" and o["pid"] == pid]


def _assert_exhausted_in_time(objs: list[dict], pid: int) -> dict:
    """The process's verdict becomes exhausted within min-age + window + 2 intervals
    of its last leak's FIN; returns the first group object that says it."""
    leaks = [o for o in objs if o["type"] == "leak" and o["pid"] == pid]
    assert leaks, f"no leak of pid {pid}"
    last_fin = max(lk["ts"] - lk["age_s"] for lk in leaks)
    verdicts = [
        (s["ts"], t["verdict"])
        for s in objs
        if s["type"] == "summary"
        for t in s["targets"]
        if t["pid"] == pid
    ]
    first = next((ts for ts, v in verdicts if v == "exhausted"), None)
    assert first is not None, verdicts[-3:]
    assert first - last_fin <= MIN_AGE_S + WINDOW_S + 2 * INTERVAL_S + 0.5, (first, last_fin)
    group = next((g for g in _groups(objs, pid) if g["verdict"] == "exhausted"), None)
    if group is not None:
        assert group["established"] == 0 and group["quiet_s"] >= WINDOW_S
        assert "probably exhausted" in group["verdict_text"]
    return group


def test_httpclient_pool_exhausted_and_its_waiting_threads(session) -> None:
    pids, objs = session
    pid = pids["java"]
    first = _assert_exhausted_in_time(objs, pid)
    assert first is not None
    # (the no-attach JVM talks to the same peer: one group, two processes)
    assert f"all 4 connections of pid {pid}" in first["verdict_text"]
    assert "a pool of 4 for" in first["verdict_text"]
    dumps = _threads(objs, pid)
    assert dumps and dumps[-1]["runtime"] == "java" and dumps[-1]["problem"] is None
    (wait,) = dumps[-1]["waiting"]
    assert wait["pool"] == "Apache HttpClient 4" and wait["app_frame"] == APP_FRAME_JAVA
    assert "AbstractConnPool.getPoolEntryBlocking" in wait["pool_frame"]
    names = sorted(t["name"] for t in wait["threads"])
    assert names == [f"seed-worker-{i}" for i in range(1, 7)]
    # The join: the threads that opened the 4 leaks are among the waiting ones.
    assert sum(len(t["opened_fds"]) for t in wait["threads"]) == 4
    assert 0 <= dumps[-1]["pause_ms"] < 50, dumps[-1]
    summary = [o for o in objs if o["type"] == "summary"][-1]
    (target,) = [t for t in summary["targets"] if t["pid"] == pid]
    assert target["verdict"] == "exhausted"


def test_a_client_that_consumes_its_responses_has_no_verdict_and_no_dump(session) -> None:
    pids, objs = session
    pid = pids["java_healthy"]
    assert not [o for o in objs if o["type"] in ("leak", "group") and o.get("pid") == pid]
    assert not _groups(objs, pid) and not _threads(objs, pid)


def test_urllib3_pool_exhausted_and_py_spy_shows_the_waiters(session) -> None:
    pids, objs = session
    pid = pids["python"]
    first = _assert_exhausted_in_time(objs, pid)
    assert first is not None and "all 3 connections" in first["verdict_text"]
    dumps = _threads(objs, pid)
    assert dumps and dumps[-1]["runtime"] == "python" and dumps[-1]["pause_ms"] == 0
    (wait,) = dumps[-1]["waiting"]
    assert wait["pool"] == "urllib3" and "HTTPConnectionPool._get_conn" in wait["pool_frame"]
    assert (
        wait["app_frame"].startswith("fetch_prices (")
        and "leaky_urllib3.py:18" in (wait["app_frame"])
    )
    assert len(wait["threads"]) == 5  # 5 workers, 3 connections: all of them wait


def test_an_unbounded_leaker_is_growing_never_exhausted(session) -> None:
    pids, objs = session
    verdicts = [g["verdict"] for g in _groups(objs, pids["unbounded"])]
    assert verdicts and "exhausted" not in verdicts and verdicts[-1] == "growing", verdicts


def test_threads_of_a_process_no_runtime_tool_can_dump(session) -> None:
    pids, objs = session
    (dump,) = _threads(objs, pids["other"])[:1]
    assert dump["runtime"] == "other" and "no safe thread dump exists" in dump["problem"]
    (opener,) = dump["openers"]
    assert opener["tid"] == pids["other"] and opener["state"] in ("S", "R")
    assert opener["opened_fds"] == [3]


def test_threads_of_a_jvm_that_refuses_attach(session) -> None:
    pids, objs = session
    pid = pids["java_noattach"]
    _assert_exhausted_in_time(objs, pid)
    dumps = _threads(objs, pid)
    assert dumps and all("refuses attach" in d["problem"] for d in dumps)
    assert dumps[0]["waiting"] == [] and dumps[0]["openers"]
    assert objs[-1]["type"] == "summary" and objs[-1]["final"]  # the report went on


def test_threads_of_a_jvm_in_its_own_mount_and_pid_namespaces(bpf_ok, java_client) -> None:
    """A container's JVM: its own /tmp (hsperfdata, attach socket) and pid 1 there.
    snapshot --threads runs its jcmd inside its namespaces (nsenter)."""
    procs = Procs()
    try:
        server = procs.start(sys.executable, "-m", "tracer.demo.workload", "server",
                             stdout=subprocess.PIPE)  # fmt: skip
        port = server.stdout.readline().strip()
        java = " ".join([*java_client, "shop.LeakyPool", port, "leaky", "2", "3"])
        # --kill-child: the JVM (pid 1 of its namespace) dies with unshare.
        box = procs.start("unshare", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc",
                          "--propagation", "private", "sh", "-c",
                          f"mount -t tmpfs tmpfs /tmp && exec {java}")  # fmt: skip

        def snapshot() -> dict | None:
            kids = procfs.children(box.pid)
            if not kids:
                return None
            res = run_cli("snapshot", "--pid", str(kids[0]), "--threads", "--json")
            objs = [json.loads(line) for line in res.stdout.splitlines()]
            dumps = [o for o in objs if o["type"] == "threads"]
            return dumps[0] if dumps and dumps[0]["waiting"] else None

        dump = wait_until(snapshot, timeout=20, step=0.5)
        assert dump, "no dump with waiting threads"
        assert dump["problem"] is None and dump["runtime"] == "java"
        (wait,) = dump["waiting"]
        assert wait["app_frame"] == APP_FRAME_JAVA and len(wait["threads"]) == 3
    finally:
        procs.kill()
