"""Prometheus metrics from closewait's records: pure, no I/O, no clock of its own.

The exporter's loop (tracer.engine.exporter) keeps one MetricState: it counts
leaks as they start and end, folds the kernel's FIN-to-close histogram into
per-series totals, and at the end of every refresh builds a Snapshot, an
immutable object holding every value a scrape needs, already aggregated by
series. A scrape, on an HTTP thread, reads the latest Snapshot only
(SnapshotCollector): its cost depends on the number of series, never on the
number of leaks, and it never touches the watcher's state.

Series identity is (comm, container), summed over processes, so restarts
and pid churn do not make new series (`--labels pid` adds pid). Counters are
kept here, by identity, so they stay monotonic when the processes behind a
series come and go. Label values pass through escape.printable(), as in the
table, before prometheus_client escapes them for the exposition format.
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from tracer.core.containers import container_of
from tracer.core.model import NS_PER_S, LatencyBucket, Leak, LeakEnded, ProbeStats, ProcInfo
from tracer.core.summary import ProcessTrend
from tracer.core.trends import group_key, log2_bucket_bounds
from tracer.report.escape import printable

LABELS = ("comm", "container")
PID_LABEL = "pid"
#: LeakEnded.reason values: every one is exported (0 until it happens), so
#: that increase() sees the first end of each kind.
END_REASONS = ("closed", "exited", "reset", "shutdown", "released")
#: The peers of a process group beyond --max-peers are summed under this one.
OTHER_PEER = "other"
DEFAULT_MAX_PEERS = 10
#: FIN-to-close histogram: the kernel's log2 slots of microseconds. Slot s
#: holds [2**(s-1), 2**s) µs, so its upper bound, in seconds, is a bucket's
#: `le`: 2 µs to 2**32 µs (71.6 min); longer closes count in +Inf only.
LATENCY_SLOTS = tuple(range(1, 33))
_MAX_SLOT = 64  # bpf_log2l() of a u64
#: A series whose processes are all gone and which has no leak keeps its
#: counters this long (a restart within it continues them), then is dropped:
#: container ids change with every restart, and dead ones must not pile up.
IDLE_SERIES_TTL_S = 3600.0
#: Name of a process the exporter could not read (exited before it looked).
UNKNOWN_COMM = "?"

#: Every metric family the exporter serves, with its help text: the one list
#: that the README, the alert rules and deploy/ are checked against.
METRICS: dict[str, str] = {
    "closewait_leaked_sockets": "Sockets in CLOSE_WAIT that a process still holds past --min-age, "
    "by peer (the remote endpoint of client sockets, local:PORT of accepted ones; "
    "beyond --max-peers per process group: other).",
    "closewait_oldest_leak_age_seconds": "Seconds since the peer's FIN of the group's oldest leak "
    "(0 without leaks).",
    "closewait_leak_rate_per_second": "Net growth of the group's leaks (new minus closed), "
    "least-squares slope over the last 5 minutes, summed over its processes.",
    "closewait_open_fds": "Open file descriptors of the group's process nearest its fd limit.",
    "closewait_fd_limit": "Soft RLIMIT_NOFILE of that process (absent when unlimited).",
    "closewait_fd_exhaustion_eta_seconds": "Seconds until the group's first process runs out of "
    "file descriptors at its leak rate (absent when not growing).",
    "closewait_pool_exhausted": "1 while closewait judges the group's connection pool to a "
    "peer exhausted: every connection it holds to the peer is leaked, none was opened for "
    "max(3 intervals, 10 s), none is ESTABLISHED (absent otherwise; see README, verdicts).",
    "closewait_leaks_started_total": "Leaks found (sockets that became leaks, "
    "or were found leaking at start).",
    "closewait_leaks_ended_total": "Leaks that ended, by reason (closed, exited, reset, "
    "shutdown, released).",
    "closewait_fin_to_close_seconds": "Delay from the peer's FIN to the process's close() of its "
    "sockets (in-kernel log2 microsecond buckets; no _sum: the kernel keeps counts only).",
    "closewait_events_lost_total": "Kernel events the buffer had no room for "
    "(raise --buffer-pages).",
    "closewait_map_full_total": "FINs the kernel map had no room for (raise --max-sockets); "
    "those sockets are still found, with an estimated age.",
    "closewait_creators_evicted_total": "Connection creators the kernel's LRU map evicted "
    "(raise --max-conns).",
    "closewait_fins_total": "TCP sockets that entered CLOSE_WAIT since the exporter started.",
    "closewait_refresh_errors_total": "Refreshes that failed and were skipped "
    "(the next one reads everything again).",
    "closewait_build_info": "closewait's version and the running kernel (value 1).",
}
METRIC_NAMES = tuple(METRICS)
HISTOGRAMS = ("closewait_fin_to_close_seconds",)

Labels = tuple[str, ...]


class Group(NamedTuple):
    """One series identity's values at one refresh."""

    labels: Labels
    peers: tuple[tuple[str, int], ...]  # (peer, leaks), most first, `other` last; () without
    oldest_fin_ns: int | None
    live: bool  # a live process of this identity is watched: the gauges below apply
    rate_per_s: float | None
    open_fds: int | None
    fd_limit: int | None
    eta_s: float | None
    exhausted: tuple[str, ...] = ()  # peers whose pool a verdict calls exhausted


@dataclass(frozen=True)
class Snapshot:
    """What every scrape until the next refresh serves. Immutable: built by
    the loop's thread, read by HTTP threads."""

    now_ns: int  # CLOCK_MONOTONIC of the refresh (the clock of every *_ns)
    wall: float
    label_names: Labels
    groups: tuple[Group, ...]
    started: tuple[tuple[Labels, int], ...]
    ended: tuple[tuple[Labels, tuple[int, ...]], ...]  # counts in END_REASONS order
    latency: tuple[tuple[Labels, tuple[int, ...]], ...]  # cumulative, per LATENCY_SLOTS + Inf
    counters: Mapping[str, int] = field(default_factory=dict)  # kernel-side totals
    refresh_errors: int = 0
    leaks: int = 0


def peer_label(leak: Leak, port_range: tuple[int, int]) -> str:
    """The remote endpoint of a client socket; `local:PORT` for an accepted one."""
    side, endpoint = leak.group or group_key(leak, port_range)
    return f"local:{leak.tuple.local_port}" if side == "local" else endpoint


def top_peers(counts: Mapping[str, int], max_peers: int) -> tuple[tuple[str, int], ...]:
    """The max_peers biggest peers, the rest summed as `other`."""
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    head = ranked[:max_peers]
    rest = sum(n for _, n in ranked[max_peers:])
    return (*head, (OTHER_PEER, rest)) if rest else tuple(head)


def latency_buckets(slots: Sequence[int]) -> tuple[int, ...]:
    """Cumulative counts for each bound of LATENCY_SLOTS, then +Inf, from
    counts per kernel slot (index = slot)."""
    out, total = [], 0
    upto = 0
    for s in LATENCY_SLOTS:
        while upto <= s:
            total += slots[upto]
            upto += 1
        out.append(total)
    return (*out, sum(slots))


LATENCY_BOUNDS = tuple(floatToGoString(log2_bucket_bounds(s)[1] / 1e6) for s in LATENCY_SLOTS)


class _Acc:
    """A series' values while a snapshot is built."""

    __slots__ = ("eta", "exhausted", "fd_pick", "live", "oldest", "peers", "rate")

    def __init__(self) -> None:
        self.peers: Counter[str] = Counter()
        self.oldest: int | None = None
        self.live = False
        self.rate: float | None = None
        self.eta: float | None = None
        self.fd_pick: tuple[float, int, int | None] | None = None  # (fill, open, limit)
        self.exhausted: set[str] = set()


class MetricState:
    """The exporter's cumulative view, updated by the loop's thread only."""

    def __init__(
        self,
        max_peers: int = DEFAULT_MAX_PEERS,
        pid_label: bool = False,
        port_range: tuple[int, int] = (32768, 60999),
        idle_ttl_s: float = IDLE_SERIES_TTL_S,
    ) -> None:
        self.max_peers = max_peers
        self.pid_label = pid_label
        self.port_range = port_range
        self.idle_ttl_ns = int(idle_ttl_s * NS_PER_S)
        self.label_names: Labels = (*LABELS, PID_LABEL) if pid_label else LABELS
        self.refresh_errors = 0
        self._idents: dict[int, Labels] = {}  # pid -> labels, as of the last snapshot
        self._started: dict[Labels, int] = {}
        self._ended: dict[Labels, list[int]] = {}
        self._latency: dict[Labels, list[int]] = {}  # counts per kernel slot
        self._lat_seen: dict[tuple[int, str, int, int], int] = {}
        self._last_active: dict[Labels, int] = {}
        self._counters: dict[str, int] = {}

    # -- identity ------------------------------------------------------------

    def labels(self, comm: str, cgroup: str | None, pid: int) -> Labels:
        ct = container_of(cgroup)
        base = (printable(comm), "" if ct is None else printable(ct))
        return (*base, str(pid)) if self.pid_label else base

    def _leak_labels(self, leak: Leak) -> Labels:
        """A leak's identity: as of the last snapshot (stable even once the
        tracker forgot the process), else from the leak's process record."""
        pid = leak.pid
        known = self._idents.get(pid)
        if known is not None:
            return known
        proc = leak.proc(pid)
        return self.labels(proc.comm, proc.cgroup, pid)

    # -- events of the loop ---------------------------------------------------

    def count_new(self, leaks: Iterable[Leak]) -> None:
        for lk in leaks:
            key = self._leak_labels(lk)
            self._started[key] = self._started.get(key, 0) + 1

    def count_ended(self, ended: Iterable[LeakEnded]) -> None:
        for e in ended:
            counts = self._ended.setdefault(self._leak_labels(e.leak), [0] * len(END_REASONS))
            counts[END_REASONS.index(e.reason)] += 1

    def add_latency(self, buckets: Iterable[LatencyBucket], procs: Mapping[int, ProcInfo]) -> None:
        """Fold a read of the kernel's histogram (cumulative per process, port
        and slot) into the series': each entry adds what it grew since the
        last read. An entry that shrank was deleted (its process exited) and
        counted again: all of it is new."""
        seen: dict[tuple[int, str, int, int], int] = {}
        last = self._lat_seen
        for b in buckets:
            key = (b.pid, b.side, b.port, b.slot)
            seen[key] = b.count
            delta = b.count - last.get(key, 0)
            if delta < 0:
                delta = b.count
            if delta:
                proc = procs.get(b.pid) or ProcInfo(UNKNOWN_COMM)
                slots = self._latency.setdefault(
                    self.labels(proc.comm, proc.cgroup, b.pid), [0] * (_MAX_SLOT + 1)
                )
                slots[min(b.slot, _MAX_SLOT)] += delta
        self._lat_seen = seen

    def count_kernel(self, stats: ProbeStats) -> None:
        """Kernel totals, kept monotonic (evictions are computed, and may dip)."""
        c = self._counters
        for name, value in (
            ("closewait_events_lost_total", stats.events_lost),
            ("closewait_map_full_total", stats.cw_full),
            ("closewait_creators_evicted_total", stats.conns_evicted),
            ("closewait_fins_total", stats.fins),
        ):
            c[name] = max(c.get(name, 0), value)

    # -- the snapshot ---------------------------------------------------------

    def snapshot(
        self,
        leaks: Sequence[Leak],
        processes: Sequence[tuple[ProcessTrend, ProcInfo]],
        stats: ProbeStats,
        now_ns: int,
        wall: float,
        exhausted: Iterable[tuple[int, str]] = (),
    ) -> Snapshot:
        """Aggregate the current leaks and watched processes by series. O(leaks)
        here, in the loop, so that a scrape is O(series). `exhausted`: the
        (pid, peer) pairs whose pool a group verdict calls exhausted."""
        self.count_kernel(stats)
        accs: dict[Labels, _Acc] = {}
        idents: dict[int, Labels] = {}
        for lk in leaks:
            pid = lk.pid
            key = idents.get(pid)
            if key is None:
                proc = lk.proc(pid)
                key = idents[pid] = self.labels(proc.comm, proc.cgroup, pid)
            acc = accs.get(key)
            if acc is None:
                acc = accs[key] = _Acc()
            acc.peers[peer_label(lk, self.port_range)] += 1
            if acc.oldest is None or lk.fin_ns < acc.oldest:
                acc.oldest = lk.fin_ns
        for trend, proc in processes:
            key = idents.get(trend.pid)
            if key is None:
                key = idents[trend.pid] = self.labels(proc.comm, proc.cgroup, trend.pid)
            acc = accs.get(key)
            if acc is None:
                acc = accs[key] = _Acc()
            _add_process(acc, trend)
        for pid, peer in exhausted:
            key = idents.get(pid)
            if key is not None and key in accs:
                accs[key].exhausted.add(peer)
        self._idents = idents
        self._expire(accs.keys(), now_ns)
        for key in (*self._started, *self._ended, *self._latency):
            if key not in accs:
                accs[key] = _Acc()  # counters only: leaked_sockets 0
        groups = tuple(
            Group(
                labels=key,
                peers=(top := top_peers(acc.peers, self.max_peers)),
                oldest_fin_ns=acc.oldest,
                live=acc.live,
                rate_per_s=acc.rate,
                open_fds=None if acc.fd_pick is None else acc.fd_pick[1],
                fd_limit=None if acc.fd_pick is None else acc.fd_pick[2],
                eta_s=acc.eta,
                # The same peers as leaked_sockets: beyond the top ones, "other".
                exhausted=_within(acc.exhausted, top),
            )
            for key, acc in sorted(accs.items())
        )
        return Snapshot(
            now_ns=now_ns,
            wall=wall,
            label_names=self.label_names,
            groups=groups,
            started=tuple(sorted(self._started.items())),
            ended=tuple(sorted((k, tuple(v)) for k, v in self._ended.items())),
            latency=tuple(sorted((k, latency_buckets(v)) for k, v in self._latency.items())),
            counters=dict(self._counters),
            refresh_errors=self.refresh_errors,
            leaks=len(leaks),
        )

    def _expire(self, active: Iterable[Labels], now_ns: int) -> None:
        last = self._last_active
        for key in active:
            last[key] = now_ns
        for key in (*self._started, *self._ended, *self._latency):
            last.setdefault(key, now_ns)  # a leak that began and ended between refreshes
        for key in [k for k, t in last.items() if now_ns - t > self.idle_ttl_ns]:
            del last[key]
            self._started.pop(key, None)
            self._ended.pop(key, None)
            self._latency.pop(key, None)


def _add_process(acc: _Acc, t: ProcessTrend) -> None:
    """Sum the rates; the first process to run out sets the ETA; the fd
    gauges are those of the process nearest its limit."""
    acc.live = True
    if t.rate is not None:
        acc.rate = (acc.rate or 0.0) + t.rate.per_min / 60
    if t.eta_s is not None and (acc.eta is None or t.eta_s < acc.eta):
        acc.eta = t.eta_s
    if t.open_fds is not None:
        fill = t.open_fds / t.fd_limit if t.fd_limit else 0.0
        pick = (fill, t.open_fds, t.fd_limit)
        if acc.fd_pick is None or pick[:2] > acc.fd_pick[:2]:
            acc.fd_pick = pick


def families(snap: Snapshot, now_ns: int, build: Mapping[str, str]) -> list[Metric]:
    """The metric families of a snapshot, ages computed at now_ns."""
    names = list(snap.label_names)

    def gauge(name: str, extra: Sequence[str] = ()) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, METRICS[name], labels=[*names, *extra])

    def counter(name: str, extra: Sequence[str] = ()) -> CounterMetricFamily:
        return CounterMetricFamily(name, METRICS[name], labels=[*names, *extra])

    leaked = gauge("closewait_leaked_sockets", ("peer",))
    oldest = gauge("closewait_oldest_leak_age_seconds")
    rate = gauge("closewait_leak_rate_per_second")
    open_fds = gauge("closewait_open_fds")
    fd_limit = gauge("closewait_fd_limit")
    eta = gauge("closewait_fd_exhaustion_eta_seconds")
    pool = gauge("closewait_pool_exhausted", ("peer",))
    for g in snap.groups:
        labels = list(g.labels)
        for peer in g.exhausted:
            pool.add_metric([*labels, peer], 1)
        if g.peers:
            for peer, n in g.peers:
                leaked.add_metric([*labels, peer], n)
        else:
            # No leak: one series without a peer (an empty label is no
            # label), so that a query sees 0 rather than nothing.
            leaked.add_metric([*labels, ""], 0)
        age = 0.0 if g.oldest_fin_ns is None else max(0, now_ns - g.oldest_fin_ns) / NS_PER_S
        oldest.add_metric(labels, round(age, 3))
        if not g.live:
            continue
        if g.rate_per_s is not None:
            rate.add_metric(labels, round(g.rate_per_s, 6))
        if g.open_fds is not None:
            open_fds.add_metric(labels, g.open_fds)
        if g.fd_limit is not None:
            fd_limit.add_metric(labels, g.fd_limit)
        if g.eta_s is not None:
            eta.add_metric(labels, round(g.eta_s, 1))

    started = counter("closewait_leaks_started_total")
    for key, n in snap.started:
        started.add_metric(list(key), n)
    ended = counter("closewait_leaks_ended_total", ("reason",))
    ended_by = dict(snap.ended)
    for key in sorted({k for k, _ in snap.started} | ended_by.keys()):
        counts = ended_by.get(key, (0,) * len(END_REASONS))
        for reason, n in zip(END_REASONS, counts):
            ended.add_metric([*key, reason], n)

    latency = HistogramMetricFamily(
        "closewait_fin_to_close_seconds", METRICS["closewait_fin_to_close_seconds"], labels=names
    )
    for key, cumulative in snap.latency:
        bounds = [*LATENCY_BOUNDS, "+Inf"]
        latency.add_metric(list(key), list(zip(bounds, cumulative)), sum_value=None)

    out: list[Metric] = [
        leaked, oldest, rate, open_fds, fd_limit, eta, pool, started, ended, latency
    ]  # fmt: skip
    for name in (
        "closewait_events_lost_total",
        "closewait_map_full_total",
        "closewait_creators_evicted_total",
        "closewait_fins_total",
    ):
        out.append(CounterMetricFamily(name, METRICS[name], value=snap.counters.get(name, 0)))
    out.append(
        CounterMetricFamily(
            "closewait_refresh_errors_total",
            METRICS["closewait_refresh_errors_total"],
            value=snap.refresh_errors,
        )
    )
    out.append(build_info(build))
    return out


def build_info(build: Mapping[str, str]) -> GaugeMetricFamily:
    info = GaugeMetricFamily(
        "closewait_build_info", METRICS["closewait_build_info"], labels=["version", "kernel"]
    )
    info.add_metric([printable(build["version"]), printable(build["kernel"])], 1)
    return info


class SnapshotCollector:
    """A prometheus_client collector over the latest Snapshot.

    latest() is read once per scrape; the snapshot it returns is never
    changed afterwards, so no lock is needed. Before the first refresh only
    closewait_build_info is served."""

    def __init__(
        self,
        latest: Callable[[], Snapshot | None],
        build: Mapping[str, str],
        clock: Callable[[], int],
    ) -> None:
        self._latest = latest
        self._build = dict(build)
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        snap = self._latest()
        if snap is None:
            yield build_info(self._build)
            return
        yield from families(snap, self._clock(), self._build)

    def describe(self) -> list[Metric]:
        """Nothing up front: registering must not run a collection."""
        return []


def _within(peers: set[str], top: tuple[tuple[str, int], ...]) -> tuple[str, ...]:
    """peers named as in the top peers' labels (the others as OTHER_PEER)."""
    shown = {p for p, _n in top}
    return tuple(sorted({p if p in shown else OTHER_PEER for p in peers}))


def series_bound(groups: int, max_peers: int = DEFAULT_MAX_PEERS) -> int:
    """The most series a scrape can hold for this many series identities:
    per identity, max_peers + 1 leaked_sockets series and as many
    pool_exhausted ones, five gauges, one started and one ended per reason,
    and a histogram of LATENCY_SLOTS + 1 buckets; plus the six global series."""
    per_group = 2 * (max_peers + 1) + 5 + 1 + len(END_REASONS) + len(LATENCY_SLOTS) + 1
    return groups * per_group + 6


def status_page(snap: Snapshot | None, build: Mapping[str, str], about: str, paths: dict) -> str:
    """The exporter's `/` page: what it watches, and links."""
    rows = [
        f"<h1>closewait exporter {html.escape(build['version'])}</h1>",
        f"<p>{html.escape(about)}; kernel {html.escape(build['kernel'])}.</p>",
    ]
    if snap is None:
        rows.append("<p>Starting: no refresh yet.</p>")
    else:
        rows.append(
            f"<p>{snap.leaks} leaked socket(s) in {sum(1 for g in snap.groups if g.peers)} "
            f"process group(s); {snap.refresh_errors} refresh error(s).</p>"
        )
    links = " ".join(f'<a href="{html.escape(p)}">{html.escape(p)}</a>' for p in paths.values())
    rows.append(f"<p>{links}</p>")
    body = "\n".join(rows)
    head = "<!doctype html>\n<html><head><title>closewait</title></head><body>"
    return f"{head}\n{body}\n</body></html>\n"
