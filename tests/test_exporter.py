"""`closewait exporter` as it runs on a host: a real process, real BPF, real
leaking processes, scraped over HTTP (and by a real Prometheus).

One exporter serves the whole module (loading BPF takes a second): it
watches a fixed set of peer processes, each renamed so that each test owns
its own series (comm), and each test leaves its series at 0.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.cli_helpers import LiveCli
from tests.conftest import ClosingServer, Peer, wait_until
from tracer.report.escape import printable
from tracer.report.prometheus import METRIC_NAMES

pytestmark = pytest.mark.bpf

MIN_AGE_S, INTERVAL_S = 1.0, 0.5
HOSTILE = "evil\x1b[2J\nx{}"  # 15 bytes at most: a comm's limit
NAMES = {"count": "cw-x-count", "exit": "cw-x-exit", "hostile": HOSTILE, "many": "cw-x-many",
         "netns": "cw-x-netns", "prom": "cw-x-prom"}  # fmt: skip


def rename(peer: Peer, name: str) -> None:
    peer.call(op="rename", name=name)
    assert Path(f"/proc/{peer.pid}/comm").read_text().rstrip("\n") == name


class Env:
    def __init__(self, cli: LiveCli, url: str, peers: dict[str, Peer], server: Peer, ns: str):
        self.cli, self.url, self.peers, self.server, self.netns = cli, url, peers, server, ns
        self.base = url.rsplit("/", 1)[0]

    def get(self, path: str, accept: str | None = None) -> tuple[int, dict, bytes]:
        req = urllib.request.Request(self.base + path, headers={"Accept": accept} if accept else {})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def metrics(self) -> dict[str, list]:
        """name -> samples, from the Prometheus text format."""
        _, _, body = self.get("/metrics")
        return {f.name: f.samples for f in text_string_to_metric_families(body.decode())}

    def value(self, sample_name: str, comm: str, **labels: str) -> float:
        """Sum of a metric's samples for one comm (and matching labels)."""
        family = sample_name.removesuffix("_total").removesuffix("_bucket")
        total = 0.0
        for s in self.metrics().get(family, []):
            want = {"comm": printable(comm), **labels}
            if s.name == sample_name and want.items() <= s.labels.items():
                total += s.value
        return total

    def wait_value(self, sample: str, comm: str, want: float, timeout: float = 10, **kw) -> float:
        t0 = time.monotonic()
        ok = wait_until(lambda: self.value(sample, comm, **kw) == want, timeout, 0.05)
        assert ok, f"{sample}{{comm={comm!r}}} = {self.value(sample, comm, **kw)}, want {want}"
        return time.monotonic() - t0


def leak(server: Peer, client: Peer, n: int = 1) -> tuple[list[int], int]:
    """n client sockets the server closes: n leaks in client. Returns
    (client fds, the FIN's CLOCK_MONOTONIC ns)."""
    lst = server.call(op="listen")
    fds = client.call(op="connect", addr="127.0.0.1", port=lst["port"], n=n)["fds"]
    accepted = server.call(op="accept", fd=lst["fd"], n=n)["fds"]
    fin = server.call(op="close", fds=[*accepted, lst["fd"]])["mono"]
    return fds, fin


@pytest.fixture(scope="module")
def env(bpf_ok: None) -> Iterator[Env]:
    ns = f"cwexp-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
    peers: dict[str, Peer] = {}
    cli = None
    try:
        server = Peer()
        for key, name in NAMES.items():
            peers[key] = Peer(ns if key == "netns" else None)
            rename(peers[key], name)
        pids = [a for p in peers.values() for a in ("--pid", str(p.pid))]
        cli = LiveCli("exporter", *pids, "--listen", "127.0.0.1:0", "--json",
                      "--min-age", f"{MIN_AGE_S}s", "--interval", f"{INTERVAL_S}s")  # fmt: skip
        cli.wait_for_attach()
        url = re.search(r"at (http://\S+/metrics)", cli.stderr).group(1)
        yield Env(cli, url, peers, server, ns)
    finally:
        if cli is not None:
            cli.kill()
        for p in [*peers.values(), server]:
            p.kill()
        subprocess.run(["ip", "netns", "delete", ns], check=False, stderr=subprocess.DEVNULL)


def test_serves_every_metric_and_its_pages(env: Env) -> None:
    assert wait_until(lambda: env.get("/healthz")[0] == 200, 10)
    status, headers, body = env.get("/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    # Every family the README lists; the per-group ones once a group exists.
    assert {"closewait_build_info", "closewait_events_lost", "closewait_fins"} <= families.keys()
    (info,) = families["closewait_build_info"].samples
    assert info.labels["kernel"] == os.uname().release and info.value == 1
    status, headers, body = env.get("/metrics", accept="application/openmetrics-text")
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
    status, headers, page = env.get("/")
    assert status == 200 and b'href="/metrics"' in page and b"closewait exporter" in page
    assert env.get("/nope")[0] == 404
    assert all(name.startswith("closewait_") for name in METRIC_NAMES)


def test_counts_leaks_within_min_age_and_two_intervals_then_back_to_zero(env: Env) -> None:
    comm, client = NAMES["count"], env.peers["count"]
    fds, fin = leak(env.server, client, n=3)
    env.wait_value("closewait_leaked_sockets", comm, 3, timeout=10)
    seen_after = (time.monotonic_ns() - fin) / 1e9
    assert seen_after <= MIN_AGE_S + 2 * INTERVAL_S + 0.3, seen_after
    assert env.value("closewait_leaks_started_total", comm) == 3
    assert env.value("closewait_oldest_leak_age_seconds", comm) >= MIN_AGE_S
    assert env.value("closewait_open_fds", comm) >= 3
    assert env.value("closewait_fd_limit", comm) > 0
    before = env.value("closewait_leaks_ended_total", comm, reason="closed")
    client.call(op="close", fds=fds)
    env.wait_value("closewait_leaked_sockets", comm, 0, timeout=5)
    assert env.value("closewait_leaks_ended_total", comm, reason="closed") == before + 3
    assert env.value("closewait_oldest_leak_age_seconds", comm) == 0
    # The healthy closes of the FIN-to-close histogram: 3, in a bucket of a second or more.
    assert env.value("closewait_fin_to_close_seconds_bucket", comm, le="+Inf") == 3
    assert env.value("closewait_fin_to_close_seconds_bucket", comm, le="0.524288") == 0
    # --json: each leak once when found, and its end.
    found = [
        env.cli.wait_for_json(lambda o: o["type"] == "leak" and o["pid"] == client.pid, 5)["fd"]
        for _ in fds
    ]
    assert sorted(found) == sorted(fds)
    for _ in fds:
        env.cli.wait_for_json(lambda o: o["type"] == "ended" and o["pid"] == client.pid, 5)


def test_survives_its_targets_exit_and_counts_the_ends(env: Env) -> None:
    comm, client = NAMES["exit"], env.peers["exit"]
    leak(env.server, client, n=2)
    env.wait_value("closewait_leaked_sockets", comm, 2)
    client.kill()
    env.wait_value("closewait_leaked_sockets", comm, 0)
    env.wait_value("closewait_leaks_ended_total", comm, 2, reason="exited")
    assert env.get("/healthz")[0] == 200 and env.cli.proc.poll() is None


def test_survives_a_network_namespace_that_disappears(env: Env) -> None:
    comm, client = NAMES["netns"], env.peers["netns"]
    server = Peer(env.netns)
    try:
        leak(server, client, n=2)
        env.wait_value("closewait_leaked_sockets", comm, 2)
    finally:
        server.kill()
    client.kill()
    subprocess.run(["ip", "netns", "delete", env.netns], check=True)
    env.wait_value("closewait_leaked_sockets", comm, 0)
    time.sleep(3 * INTERVAL_S)  # a few refreshes with the namespace gone
    assert env.get("/healthz")[0] == 200 and env.cli.proc.poll() is None
    assert env.value("closewait_leaks_ended_total", comm) == 2


def test_hostile_process_names_are_escaped(env: Env) -> None:
    client = env.peers["hostile"]
    fds, _ = leak(env.server, client)
    escaped = printable(HOSTILE)
    assert escaped == "evil\\x1b[2J\\x0ax{}"
    env.wait_value("closewait_leaked_sockets", HOSTILE, 1)
    _, _, body = env.get("/metrics")
    assert b"\x1b" not in body and b"\nx{}" not in body
    # the exposition format escapes the backslashes of the printable() text
    assert b'comm="evil\\\\x1b[2J\\\\x0ax{}"' in body
    client.call(op="close", fds=fds)
    env.wait_value("closewait_leaked_sockets", HOSTILE, 0)


def test_two_thousand_leaks_and_a_real_prometheus(env: Env, tmp_path: Path) -> None:
    comm, client = NAMES["many"], env.peers["many"]
    srv = ClosingServer()
    try:
        fds: list[int] = []
        for _ in range(4):  # the listen backlog is 1024
            fds += client.call(op="connect", addr="127.0.0.1", port=srv.port, n=500)["fds"]
        env.wait_value("closewait_leaked_sockets", comm, 2000, timeout=15)
        t0 = time.monotonic()
        for _ in range(10):
            env.get("/metrics")
        scrape_s = (time.monotonic() - t0) / 10
        print(f"\nscrape with 2,000 leaks: {scrape_s * 1000:.1f} ms")
        assert scrape_s < 0.5
        # One series per peer, not per leak.
        assert env.get("/metrics")[2].count(f'comm="{comm}"'.encode()) < 60
        query = f'sum(closewait_leaked_sockets{{comm="{comm}"}})'
        assert query_real_prometheus(env, tmp_path, query, want=2000)
        client.call(op="close", fds=fds)
        env.wait_value("closewait_leaked_sockets", comm, 0, timeout=10)
    finally:
        srv.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def query_real_prometheus(env: Env, tmp: Path, query: str, want: float) -> bool:
    """Start Debian's Prometheus on loopback, scraping the exporter every
    second; True once its HTTP API answers `query` with `want`."""
    target = env.base.removeprefix("http://")
    config = tmp / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"scrape_configs: [{{job_name: closewait, static_configs: [{{targets: ['{target}']}}]}}]\n"
    )
    web = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        ["/usr/bin/prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
         f"--web.listen-address={web}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:

        def answer() -> float | None:
            url = f"http://{web}/api/v1/query?" + urllib.parse.urlencode({"query": query})
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    result = json.load(r)["data"]["result"]
            except (OSError, ValueError, KeyError):
                return None
            return float(result[0]["value"][1]) if result else None

        ok = wait_until(lambda: answer() == want, timeout=30, step=0.25)
        assert ok, f"Prometheus answered {answer()} for {query}, want {want}"
        return True
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def own_bpf_programs(pid: int) -> set[int]:
    """The ids of the BPF programs process pid holds (its fds' fdinfo)."""
    ids = set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        if m := re.search(r"^prog_id:\s+(\d+)", text, re.MULTILINE):
            ids.add(int(m.group(1)))
    return ids


def loaded_bpf_programs() -> set[int]:
    out = subprocess.run(["bpftool", "prog", "show", "--json"], capture_output=True, check=True)
    return {p["id"] for p in json.loads(out.stdout)}


def test_sigterm_exits_zero_and_detaches_everything(env: Env) -> None:
    """Last in the module: it stops the shared exporter."""
    mine = own_bpf_programs(env.cli.proc.pid)
    assert len(mine) >= 2 and mine <= loaded_bpf_programs()
    env.cli.proc.send_signal(signal.SIGTERM)
    assert env.cli.finish(timeout=20) == 0
    assert not mine & loaded_bpf_programs(), "BPF programs left after exit"
    assert "stopped: BPF programs detached" in env.cli.stderr
