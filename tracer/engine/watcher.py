"""The watch engine: one refresh gathers an observation and updates the leaks.

Each refresh reads, in this order: sock_diag (which sockets are in
CLOSE_WAIT now), the BPF closewait map (when each got its FIN), /proc fds
(who holds them), and the events already queued. sock_diag comes before the
map so that a socket in CLOSE_WAIT at the dump has its map entry by the time
the map is read; the events come last so that a watched socket missing from
the dump has its event, if any, already queued (the tracepoint fires before
the state is stored).

The per-refresh cost is proportional to the sockets in CLOSE_WAIT and to the
targets' fds, never to the connection rate: healthy connections are handled
entirely in the kernel.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from tracer.core.correlate import Changes, KernelIndex, Observation, fin_time, is_target
from tracer.core.model import NS_PER_S, FdDrop, Holder, Leak, LeftCloseWait, leaks_per_pid
from tracer.core.summary import ProcessTrend, Summary
from tracer.core.tracker import LeakTracker
from tracer.core.trends import CountHistory, GroupStarts, fd_exhaustion_eta_s
from tracer.core.verdict import Verdict
from tracer.engine.pools import PoolWatch
from tracer.engine.threads import ThreadDumps
from tracer.engine.watchlist import WatchList
from tracer.kernel.probe import KernelProbe
from tracer.system import procfs
from tracer.system.fdindex import FdIndex
from tracer.system.gather import dump_close_wait, holder_scope, process_facts
from tracer.system.sockdiag import DiagPool
from tracer.system.targets import TargetPoll, Targets

# A full reading (sock_diag dump, fd scan of the targets) happens at least
# this often, to refresh Recv-Q and holders and to notice what events cannot
# say (a dup or fork adding a holder, a socket passed between processes).
RECONCILE_EVERY_S = 30.0
# The close probes stay attached this long after the last leak.
CLOSE_PROBES_LINGER_S = 30.0
# Open-fd counts (for the fd-limit forecast) are refreshed at most this often.
OPEN_FDS_EVERY_S = 10.0
OPEN_FDS_CHEAP = 1024  # below this many fds, counting is cheap enough every time


class Watcher:
    """One tracer session: targets, kernel probe, netlink sockets, leak state."""

    def __init__(
        self,
        probe: KernelProbe,
        targets: Targets,
        min_age_s: float,
        clock: Callable[[], int] = time.monotonic_ns,
        interval_s: float = 2.0,
        threads: bool = False,
    ) -> None:
        self.probe = probe
        self.targets = targets
        self.clock = clock
        self.started_ns = clock()
        self.tracker = LeakTracker(
            min_age_s, attach_ns=self.started_ns, netns_known=probe.netns_known
        )
        self.pool = DiagPool()
        self._foreign: set[int] = set()  # CLOSE_WAIT inodes no target held at the last scan
        self._last_full_scan = 0
        self._since_report = Changes()  # what changed since the last summary
        self.unheld = 0  # sockets in CLOSE_WAIT no process holds (with --all)
        self._reported: set[str] = set()  # problems already shown once
        self.notices: list[str] = []
        self.watchlist = WatchList(probe, self.tracker, self.notices.append)
        self.fds = FdIndex()
        # When a socket in CLOSE_WAIT since before attach, seen by the last
        # dump but too young then, becomes old enough to be a leak: the next
        # dump is due then, not at the 30-s reconcile.
        self._due_ns: int | None = None
        self._compat: dict[int, bool] = {}  # pid -> 32-bit (closes not traced)
        self._events_lost = 0
        self._dumped = False
        self._last_dump = 0
        self._cw_full = 0
        self._judged: set[int] = set()  # map entries old enough, seen by the last dump
        self._last_leak_ns = 0
        self.history: dict[int, CountHistory] = {}  # pid -> leak counts over time
        self._fd_counts: dict[int, tuple[int, int | None]] = {}  # pid -> (when, open fds)
        self.starts = GroupStarts(self.started_ns, procfs.ephemeral_port_range())
        self.pools = PoolWatch(probe, self.pool, self.fds, interval_s)  # verdicts per group
        self.dumps = ThreadDumps() if threads else None  # --threads
        if not targets.all_processes:
            self._set_kernel_targets()
        if not probe.netns_known:
            self.notices.append(
                "this kernel has no BTF (/sys/kernel/btf/vmlinux): the network namespace "
                "of a socket is unknown to the kernel side, so a 4-tuple found in two "
                "namespaces gets an estimated age (~) and its end is found by polling"
            )

    def close(self) -> None:
        """End the session: take back every watch it asked of the kernel."""
        self.watchlist.clear()
        self.probe.set_close_probes(False)
        if not self.targets.all_processes:
            self.probe.set_targets(set())
        self.pool.close()

    def _set_kernel_targets(self) -> None:
        pids = set(self.targets.live)
        self.probe.set_targets(pids, {a for pid in pids for a in procfs.ancestors(pid)})

    def refresh(self) -> Changes:
        """Gather one Observation, update the leaks and the kernel's watch list.

        The sock_diag dump and the fd scan, the costly reads, happen only when
        there is something to find: on the first refresh, when the BPF map
        holds a socket old enough to be a leak and not judged yet, when the
        map overflowed or events were lost, and every RECONCILE_EVERY_S. In
        between, leaks end through kernel events, so a host with many
        connections and no new leak pays for a map read only.
        """
        # Events queued since the last drain first: an fd dropped by then must
        # not be trusted by the fd scan below.
        early = self.drain_events(0)
        poll = self.targets.poll()
        for pid, comm in poll.exited_now.items():
            self.notices.append(f"pid {pid} ({comm}) exited")
        if poll.exited_now and not self.targets.all_processes:
            self._set_kernel_targets()

        now = self.clock()
        kernel = self.probe.read_sockets()
        stats = self.probe.stats()
        old_enough = {sk for sk, ks in kernel.items() if now - ks.fin_ns >= self.tracker.min_age_ns}
        self._judged &= kernel.keys()
        if stats.events_lost != self._events_lost:
            # Missed events may hide fd drops and ends: trust nothing until rescanned.
            self._events_lost = stats.events_lost
            self.fds.forget_all()
            self.watchlist.remark_all()
            self._last_full_scan = self._last_dump = 0
        needed = (
            not self._dumped
            or bool(old_enough - self._judged)
            or (self._due_ns is not None and now >= self._due_ns)
            or stats.cw_full != self._cw_full
            or now - self._last_dump > RECONCILE_EVERY_S * NS_PER_S
        )
        self._cw_full = stats.cw_full
        targets = None if self.targets.all_processes else frozenset(poll.pids)
        if needed:
            obs = self._observe(poll, now, targets)
            self._judged = old_enough
        else:
            obs = Observation(now, kernel, None, {}, {}, targets=targets)
        obs.events = self._poll_events(0)
        changes = self.tracker.update(obs, _still_holding)
        self.tracker.settle(changes, _still_holding, now, self._rescan)
        self.tracker.prune_procs()
        if needed:
            self.unheld = changes.unheld
        self._sync_kernel(changes)
        self._sample_counts(now, poll.exited_now)
        changes.ended[:0] = early.ended
        changes.released_fds[:0] = early.released_fds
        return changes

    def _observe(self, poll: TargetPoll, now: int, targets: frozenset[int] | None) -> Observation:
        """The full reading: sock_diag in every namespace, holders from the fd index."""
        dump = dump_close_wait(self.pool, poll)
        # The map again, after the dump (cheap: entries already decoded are
        # reused): a socket in CLOSE_WAIT at the dump has its entry by now,
        # whereas the read that decided on this dump may predate its FIN and
        # would leave it an estimated age.
        kernel = self.probe.read_sockets()
        self._dumped, self._last_dump = True, now
        for problem in dump.problems:
            if problem not in self._reported:
                self._reported.add(problem)
                self.notices.append(problem)
        index = KernelIndex(kernel, dump.diag)
        in_cw = {d.inode for d in dump.diag}
        self._foreign &= in_cw
        candidates = [
            d
            for d in self.tracker.candidates(dump.diag, index, now)
            if d.inode not in self._foreign
        ]
        self._due_ns = self._young_preexisting_due(dump.diag, index, now)
        if candidates or now - self._last_full_scan > RECONCILE_EVERY_S * NS_PER_S:
            # The fds marked in the kernel cannot change without an event.
            self.fds.scan(holder_scope(self.targets, poll), trusted=self.watchlist.trusted())
            self._last_full_scan = now
            holders = self.fds.holders(in_cw)
            self._foreign = {
                d.inode
                for d in candidates
                if not any(is_target(targets, h.pid) for h in holders.get(d.inode, []))
            }
        else:
            # Nothing new to attribute: the last scan, as kept up to date by
            # fd-drop events, minus processes that are gone.
            self.fds.keep_only(set(poll.pids) | self._descendants_seen())
            holders = self.fds.holders(in_cw)
        return Observation(
            now_ns=now,
            kernel=kernel,
            diag=dump.diag,
            holders=holders,
            procs=process_facts(h.pid for hs in holders.values() for h in hs),
            queried_netns=dump.queried,
            exited=set(self.targets.exited),
            targets=targets,
            holders_complete=self.targets.all_processes,
            index=index,
        )

    def _young_preexisting_due(self, diag: list, index: KernelIndex, now: int) -> int | None:
        """When the first socket the kernel map does not know (in CLOSE_WAIT
        since before attach, or not recorded: map full) and too young to be
        a leak at this dump becomes old enough. Sockets the map knows need no
        date: the map read of every refresh sees them come of age."""
        due = None
        for d in diag:
            if d.inode in self.tracker.leaks or index.match(d) is not None:
                continue
            ready = fin_time(d, index, now)[0] + self.tracker.min_age_ns
            if ready > now and (due is None or ready < due):
                due = ready
        return due

    def _rescan(self, pids: set[int]) -> dict[int, list[Holder]]:
        """Re-read the fd tables of pids (and their children, which may have
        inherited the socket) after a drop no known fd explains; inode ->
        holders over the whole index."""
        scope = pids if self.targets.all_processes else procfs.with_descendants(pids)
        self.fds.rescan(scope, self.watchlist.trusted())
        return self.fds.all_holders()

    def verify(self, shown: list[Leak]) -> Changes:
        """Check, before a report, that the fds it will name still hold their
        sockets. A holder marked in the kernel needs no check (any drop of it
        is an event) unless its process is 32-bit, whose closes the syscall
        tracepoints do not see; the others (fork children, unmarked fds) are
        read: one readlink each. What changed is settled like a drop."""
        now = self.clock()
        for leak in shown:
            for h in leak.holders:
                if self.watchlist.marked(h) and not self._is_compat(h.pid):
                    continue
                if procfs.fd_inode(h.pid, h.fd) != leak.inode:
                    self.fds.forget(h.pid, h.fd, h.fd)
                    self.tracker.forget_holder(h, now)
        changes = Changes()
        if self.tracker.unsettled:
            self.tracker.settle(changes, _still_holding, now, self._rescan)
            self._sync_kernel(changes)
        return changes

    def _is_compat(self, pid: int) -> bool:
        compat = self._compat.get(pid)
        if compat is None:
            compat = self._compat[pid] = procfs.is_compat(pid)
        return compat

    def _poll_events(self, timeout_ms: int) -> list[LeftCloseWait | FdDrop]:
        """Events from the kernel; fd drops also invalidate the fd index."""
        events = self.probe.poll(timeout_ms)
        for ev in events:
            if isinstance(ev, FdDrop):
                self.fds.forget(ev.tgid, ev.fd_lo, ev.fd_hi)
                if ev.fd_lo == ev.fd_hi:
                    self.watchlist.kernel_dropped(Holder(ev.tgid, ev.fd_lo))
        return events

    def _descendants_seen(self) -> set[int]:
        """Non-target processes of the last scan (descendants), if still alive."""
        return {pid for pid in self.fds.pids() if procfs.exists(pid)}

    def _sample_counts(self, now_ns: int, exited: dict[int, str]) -> None:
        """One (time, open leaks) point per process, for its growth rate."""
        counts: dict[int, int] = dict.fromkeys(self.targets.live, 0)
        counts.update(dict.fromkeys(self.history, 0))
        counts.update(leaks_per_pid(self.tracker.leaks.values()))
        for pid, n in counts.items():
            if pid in exited:
                self.history.pop(pid, None)
            else:
                self.history.setdefault(pid, CountHistory()).add(now_ns / NS_PER_S, n)

    def drain_events(self, timeout_ms: int) -> Changes:
        """Wait up to timeout_ms for kernel events and end the leaks they concern."""
        events = self._poll_events(timeout_ms)
        if not events and not self.tracker.unsettled:
            return Changes()
        changes = self.tracker.apply_events(events, _still_holding, self.clock(), self._rescan)
        self._sync_kernel(changes)
        return changes

    def _sync_kernel(self, changes: Changes) -> None:
        """Tell the kernel what to report (tracer.engine.watchlist). The close
        probes run while there is a leak to watch: enabling any syscall
        tracepoint slows every syscall of every task (about 2 points of
        throughput under heavy connection churn)."""
        self._since_report.new += changes.new
        self._since_report.ended += changes.ended
        self.starts.add(changes.new)
        self.pools.ended(changes.ended)
        now = self.clock()
        if self.tracker.leaks:
            self._last_leak_ns = now
            self.probe.set_close_probes(True)
        elif now - self._last_leak_ns > CLOSE_PROBES_LINGER_S * NS_PER_S:
            self.probe.set_close_probes(False)
        self.watchlist.apply(changes, now)

    def process_trends(self, verdicts: dict[int, Verdict] | None = None) -> list[ProcessTrend]:
        """Per watched process: open fds, fd limit, leak rate, time to the limit."""
        out = []
        leaks_of = leaks_per_pid(self.tracker.leaks.values())
        for pid, hist in sorted(self.history.items()):
            rate = hist.rate()
            open_fds, fd_limit = self._open_fds(pid), procfs.fd_limit(pid)
            out.append(
                ProcessTrend(
                    pid=pid,
                    comm=self.targets.comms.get(pid) or _comm_or(pid, "?"),
                    leaks=leaks_of.get(pid, 0),
                    open_fds=open_fds,
                    fd_limit=fd_limit,
                    rate=rate,
                    eta_s=fd_exhaustion_eta_s(open_fds, fd_limit, rate),
                    verdict=(verdicts or {}).get(pid),
                )
            )
        return out

    def _open_fds(self, pid: int) -> int | None:
        """Open fds of pid. A process with thousands is counted again at most
        every OPEN_FDS_EVERY_S: a listdir of 20,000 fds per report adds up."""
        now = self.clock()
        cached = self._fd_counts.get(pid)
        if (
            cached is None
            or (cached[1] or 0) < OPEN_FDS_CHEAP
            or now - cached[0] > OPEN_FDS_EVERY_S * NS_PER_S
        ):
            cached = self._fd_counts[pid] = (now, procfs.open_fd_count(pid))
        return cached[1]

    def summary(self, wall: float, final: bool = False) -> Summary:
        """Totals for a report; counts what changed since the previous one."""
        now = self.clock()
        since, self._since_report = self._since_report, Changes()
        groups = self.pools.judge(self.starts.groups(self.leaks(), now), self.leaks(), now)
        dumps = self.dumps.update(self.leaks(), self.pools.by_pid, now) if self.dumps else []
        return Summary(
            wall=wall,
            now_ns=now,
            elapsed_s=(now - self.started_ns) / NS_PER_S,
            targets=self.targets.live,
            all_processes=self.targets.all_processes,
            new=len(since.new),
            ended=len(since.ended),
            stats=self.probe.stats(),
            final=final,
            exited=dict(self.targets.exited),
            unheld=self.unheld if self.targets.all_processes else None,
            processes=self.process_trends(self.pools.by_pid),
            groups=groups,
            latency=self.probe.read_latency() if final else [],
            threads=dumps,
        )

    def leaks(self) -> list[Leak]:
        return self.tracker.sorted_leaks()

    def finished(self) -> bool:
        """True when every given pid has exited (never with --all)."""
        return not self.targets.all_processes and not self.targets.live

    def forget_gone(self) -> None:
        """Forget the per-process history of processes that no longer exist.

        --pid targets are forgotten when they exit (_sample_counts), but with
        --all nothing says a process exited, so the history of every process
        that ever leaked would grow for as long as the watch runs: the
        exporter, which runs for months, calls this once per refresh."""
        for pid in [p for p in self.history if not procfs.exists(p)]:
            del self.history[pid]
            self._fd_counts.pop(pid, None)


def _comm_or(pid: int, default: str) -> str:
    try:
        return procfs.comm(pid)
    except procfs.ProcessGone:
        return default


def _still_holding(leak: Leak) -> list[Holder]:
    return procfs.still_holding(leak.holders, leak.inode)
