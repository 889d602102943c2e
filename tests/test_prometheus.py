"""The exporter's pure side (report/prometheus.py) and its HTTP server, without
BPF: aggregation by series, monotonic counters, the histogram's buckets,
escaping, the exposition formats, TLS."""

from __future__ import annotations

import socket
import ssl
import subprocess
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from tracer.core.errors import CloseWaitError
from tracer.core.model import (
    NS_PER_S,
    Creator,
    Holder,
    LatencyBucket,
    Leak,
    LeakEnded,
    ProbeStats,
    ProcInfo,
    SockTuple,
)
from tracer.core.summary import ProcessTrend
from tracer.core.trends import Rate
from tracer.engine.httpd import MetricsServer, parse_listen
from tracer.report.prometheus import (
    LATENCY_SLOTS,
    METRICS,
    MetricState,
    SnapshotCollector,
    families,
    series_bound,
    top_peers,
)

S = NS_PER_S
EPHEMERAL = (32768, 60999)
BUILD = {"version": "0.1.0", "kernel": "6.18"}
DOCKER = "/system.slice/docker-" + "ab" * 32 + ".scope"


def leak(pid: int, comm: str, remote_port: int, fin_s: float, inode: int, cgroup=None) -> Leak:
    t = SockTuple(socket.AF_INET, "10.0.0.1", 40000 + inode, "10.0.0.9", remote_port)
    creator = Creator(0, pid, pid, comm, accepted=False)
    return Leak(inode, 1, t, int(fin_s * S), True, False, [Holder(pid, 3 + inode)], 0, 0,
                creator=creator, procs={pid: ProcInfo(comm, cgroup)})  # fmt: skip


def accepted(pid: int, comm: str, inode: int) -> Leak:
    t = SockTuple(socket.AF_INET, "10.0.0.1", 8080, "10.0.0.9", 50000 + inode)
    return Leak(inode, 1, t, 5 * S, True, False, [Holder(pid, 3)], 0, 0,
                creator=Creator(0, 0, 0, "", True), procs={pid: ProcInfo(comm)})  # fmt: skip


def trend(pid: int, comm: str, open_fds=10, limit=1024, per_min=None, eta=None) -> ProcessTrend:
    rate = None if per_min is None else Rate(per_min, 120.0, 60)
    return ProcessTrend(pid, comm, 0, open_fds, limit, rate, eta)


def samples(snap, now_s: float = 100.0) -> dict[tuple[str, tuple], float]:
    out = {}
    for fam in families(snap, int(now_s * S), BUILD):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(all_samples: dict, name: str, **labels: str) -> float:
    return sum(
        v for (n, ls), v in all_samples.items() if n == name and labels.items() <= dict(ls).items()
    )


def test_series_are_per_comm_and_container_summed_over_processes() -> None:
    st = MetricState(max_peers=2, port_range=EPHEMERAL)
    leaks = [
        leak(100, "java", 443, 10, 1), leak(100, "java", 443, 20, 2),
        leak(101, "java", 5432, 30, 3), leak(101, "java", 6379, 40, 4),
        leak(102, "java", 9000, 50, 5), accepted(103, "nginx", 6),
        leak(104, "java", 443, 60, 7, cgroup=DOCKER),
    ]  # fmt: skip
    procs = [
        (trend(100, "java", 900, 1000, per_min=6, eta=600), ProcInfo("java")),
        (trend(101, "java", 10, 1000, per_min=3, eta=3000), ProcInfo("java")),
        (trend(103, "nginx", 5, None), ProcInfo("nginx")),
    ]
    snap = st.snapshot(leaks, procs, ProbeStats(), now_ns=100 * S, wall=0.0)
    v = samples(snap)
    host = {"comm": "java", "container": ""}
    # max_peers=2: the two biggest peers, the rest as "other"
    assert value(v, "closewait_leaked_sockets", **host, peer="10.0.0.9:443") == 2
    assert value(v, "closewait_leaked_sockets", **host, peer="other") == 2
    assert value(v, "closewait_leaked_sockets", **host) == 5
    assert value(v, "closewait_leaked_sockets", comm="nginx", peer="local:8080") == 1
    ct = "/system.slice/docker-" + "ab" * 6 + ".scope"  # the id shortened, as in the table
    assert value(v, "closewait_leaked_sockets", comm="java", container=ct) == 1
    assert value(v, "closewait_oldest_leak_age_seconds", **host) == 90
    assert value(v, "closewait_leak_rate_per_second", **host) == pytest.approx(9 / 60, abs=1e-6)
    assert value(v, "closewait_fd_exhaustion_eta_seconds", **host) == 600  # the first to run out
    assert value(v, "closewait_open_fds", **host) == 900  # the process nearest its limit
    assert value(v, "closewait_fd_limit", **host) == 1000
    for absent in ("closewait_fd_limit", "closewait_fd_exhaustion_eta_seconds"):
        assert not [k for k in v if k[0] == absent and ("comm", "nginx") in k[1]], absent
    assert len(v) <= series_bound(3, max_peers=2)


def test_counters_survive_pid_churn_and_expire_when_idle() -> None:
    st = MetricState(port_range=EPHEMERAL, idle_ttl_s=60)
    a = leak(100, "worker", 80, 1, 1)
    st.count_new([a])
    st.count_ended([LeakEnded(a, 2 * S, "exited", exact=True)])
    b = leak(200, "worker", 80, 3, 2)  # the restarted worker: another pid, same series
    st.count_new([b])
    v = samples(st.snapshot([b], [], ProbeStats(), 10 * S, 0.0))
    w = {"comm": "worker", "container": ""}
    assert value(v, "closewait_leaks_started_total", **w) == 2
    assert value(v, "closewait_leaks_ended_total", **w, reason="exited") == 1
    assert value(v, "closewait_leaks_ended_total", **w, reason="closed") == 0  # every reason
    st.count_ended([LeakEnded(b, 11 * S, "closed", exact=True)])
    v = samples(st.snapshot([], [], ProbeStats(), 20 * S, 0.0))
    assert value(v, "closewait_leaks_ended_total", **w) == 2
    assert value(v, "closewait_leaked_sockets", **w) == 0  # no leak: one series, no peer
    v = samples(st.snapshot([], [], ProbeStats(), 100 * S, 0.0))
    assert not value(v, "closewait_leaks_started_total", **w), "idle series kept past the TTL"


def test_pid_label_splits_series() -> None:
    st = MetricState(pid_label=True, port_range=EPHEMERAL)
    v = samples(
        st.snapshot([leak(100, "j", 1, 1, 1), leak(101, "j", 1, 1, 2)], [], ProbeStats(), S, 0)
    )
    assert value(v, "closewait_leaked_sockets", pid="100") == 1
    assert value(v, "closewait_leaked_sockets", pid="101") == 1


def test_kernel_counters_stay_monotonic() -> None:
    st = MetricState(port_range=EPHEMERAL)
    st.snapshot([], [], ProbeStats(fins=10, conns_evicted=5), S, 0)
    v = samples(st.snapshot([], [], ProbeStats(fins=12, conns_evicted=0), S, 0))
    assert value(v, "closewait_creators_evicted_total") == 5  # computed evictions may dip
    assert value(v, "closewait_fins_total") == 12


def test_fin_to_close_histogram_from_kernel_slots() -> None:
    st = MetricState(port_range=EPHEMERAL)
    procs = {7: ProcInfo("svc")}
    # slot 11: [1024, 2048) µs; slot 21: [1, 2) s; slot 40: beyond the last bound
    st.add_latency(
        [LatencyBucket(7, "local", 80, 11, 3), LatencyBucket(7, "local", 80, 21, 1)], procs
    )
    st.add_latency([LatencyBucket(7, "local", 80, 11, 5), LatencyBucket(7, "local", 80, 21, 1),
                    LatencyBucket(7, "remote", 5432, 40, 2)], procs)  # fmt: skip
    # the process exited and its entries were deleted, then pid 7 came back
    st.add_latency([LatencyBucket(7, "local", 80, 11, 1)], procs)
    v = samples(st.snapshot([], [], ProbeStats(), S, 0))
    b = "closewait_fin_to_close_seconds_bucket"
    assert value(v, b, comm="svc", le="0.001024") == 0
    assert value(v, b, comm="svc", le="0.002048") == 6
    assert value(v, b, comm="svc", le="2.097152") == 7
    assert value(v, b, comm="svc", le="4294.967296") == 7
    assert value(v, b, comm="svc", le="+Inf") == 9
    les = [dict(ls)["le"] for (n, ls) in v if n == b]
    assert len(les) == len(LATENCY_SLOTS) + 1


def test_expositions_escape_hostile_names_and_parse_back() -> None:
    hostile = 'evil\x1b[2J\nNOTE "x" \\'
    st = MetricState(port_range=EPHEMERAL)
    snap = st.snapshot([leak(1, hostile, 80, 1, 1)], [], ProbeStats(), 2 * S, 0)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(lambda: snap, BUILD, lambda: 3 * S))
    text = generate_latest(registry).decode()
    assert "\x1b" not in text
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    (s,) = [s for s in fams["closewait_leaked_sockets"].samples]
    assert s.labels["comm"] == 'evil\\x1b[2J\\x0aNOTE "x" \\\\'  # printable(), as in the table
    assert set(fams) == {name.removesuffix("_total") for name in METRICS}
    om = generate_openmetrics(registry).decode()
    assert om.endswith("# EOF\n") and "\x1b" not in om


def test_top_peers_orders_and_sums_the_rest() -> None:
    assert top_peers({"a": 1, "b": 3, "c": 2}, 2) == (("b", 3), ("c", 2), ("other", 1))
    assert top_peers({"a": 1}, 2) == (("a", 1),)


def test_listen_addresses() -> None:
    assert parse_listen("127.0.0.1:9877") == ("127.0.0.1", 9877)
    assert parse_listen("[::1]:80") == ("::1", 80)
    assert parse_listen(":9877") == ("0.0.0.0", 9877)
    for bad in ("9877", "host:", "a:99999"):
        with pytest.raises(ValueError):
            parse_listen(bad)


def test_busy_port_is_one_line_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(CloseWaitError, match=f"cannot listen on 127.0.0.1:{port}.*fix:"):
            MetricsServer(f"127.0.0.1:{port}", CollectorRegistry(), lambda: (True, "ok"), str)


def test_tls_serves_metrics_and_health(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(lambda: None, BUILD, lambda: 0))
    server = MetricsServer("127.0.0.1:0", registry, lambda: (False, "starting"), lambda: "page",
                           str(cert), str(key))  # fmt: skip
    server.start()
    try:
        assert server.url.startswith("https://127.0.0.1:")
        ctx = ssl.create_default_context(cafile=str(cert))
        with urllib.request.urlopen(server.url, context=ctx, timeout=5) as r:
            assert b"closewait_build_info" in r.read()
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(server.url.replace("/metrics", "/healthz"), context=ctx)
        assert err.value.code == 503
    finally:
        server.stop()


class FakeProbe:
    def read_latency(self) -> list[LatencyBucket]:
        return []

    def forget_latency(self, pids: set[int]) -> None:
        raise AssertionError("nothing to forget")


class FakeWatcher:
    """Just enough of tracer.engine.watcher.Watcher for the exporter's loop:
    its second refresh fails, as one hit by a /proc race would."""

    def __init__(self, stop) -> None:
        from tracer.core.tracker import LeakTracker
        from tracer.core.trends import GroupStarts

        self.stop, self.refreshes = stop, 0
        self.starts = GroupStarts(0, EPHEMERAL)
        self.tracker = LeakTracker(1.0, 0)
        self.probe = FakeProbe()
        self.notices: list[str] = []
        self.clock = lambda: 5 * S

    def refresh(self):
        from tracer.core.correlate import Changes

        self.refreshes += 1
        if self.refreshes == 2:
            raise FileNotFoundError("/proc/4242/fd: vanished")
        if self.refreshes == 4:
            self.stop.reason = "SIGTERM"
        return Changes(new=[leak(100, "svc", 80, 1, self.refreshes)])

    def drain_events(self, timeout_ms: int):
        from tracer.core.correlate import Changes

        return Changes()

    def summary(self, wall: float):
        from tracer.core.summary import Summary

        return Summary(wall, 5 * S, 5.0, {}, True, 0, 0, ProbeStats(fins=3))

    def leaks(self) -> list[Leak]:
        return []

    def forget_gone(self) -> None:
        pass

    def finished(self) -> bool:
        return False


def test_a_failed_refresh_is_counted_and_skipped() -> None:
    from tracer.engine.exporter import Exporter, ExporterOptions
    from tracer.engine.loop import StopFlag

    stop = StopFlag()
    said: list[str] = []
    ex = Exporter(FakeWatcher(stop), ExporterOptions(interval_s=0.01), notice=said.append)
    assert ex.health() == (False, "starting: no refresh yet")
    ex.run(stop)
    assert ex.watcher.refreshes == 4 and ex.state.refresh_errors == 1
    assert said == ["refresh failed, skipped: FileNotFoundError: /proc/4242/fd: vanished"]
    v = samples(ex.latest)
    assert value(v, "closewait_refresh_errors_total") == 1
    # refreshes 1 and 3 were published; the 4th ended the loop (stopped)
    assert value(v, "closewait_leaks_started_total", comm="svc") == 2
    assert value(v, "closewait_fins_total") == 3
    assert ex.health()[0] is True


def test_an_exhausted_pool_is_one_series_per_group_and_peer() -> None:
    """The group verdicts' (pid, peer) pairs become closewait_pool_exhausted 1
    under the pid's series identity; other peers and groups have no series."""
    st = MetricState(max_peers=10, port_range=EPHEMERAL)
    leaks = [leak(100, "java", 443, 10, 1), leak(101, "java", 443, 20, 2),
             leak(102, "python3", 80, 30, 3)]  # fmt: skip
    snap = st.snapshot(leaks, [], ProbeStats(), 100 * S, 0.0, exhausted=[(101, "10.0.0.9:443")])
    pool = {k: x for k, x in samples(snap).items() if k[0] == "closewait_pool_exhausted"}
    assert pool == {
        (
            "closewait_pool_exhausted",
            (("comm", "java"), ("container", ""), ("peer", "10.0.0.9:443")),
        ): 1
    }
    assert "closewait_pool_exhausted" in METRICS
