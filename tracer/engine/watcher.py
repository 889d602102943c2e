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

from tracer.core.correlate import Changes, KernelIndex, LeakTracker, Observation, is_target
from tracer.core.model import NS_PER_S, FdDrop, Holder, Leak, LeftCloseWait, leaks_per_pid
from tracer.core.summary import ProcessTrend, Summary
from tracer.core.trends import CountHistory, GroupStarts, fd_exhaustion_eta_s
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
# The close-family syscall probes stay attached this long after the last leak.
SYSCALL_PROBES_LINGER_S = 30.0
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
    ) -> None:
        self.probe = probe
        self.targets = targets
        self.clock = clock
        self.started_ns = clock()
        self.tracker = LeakTracker(min_age_s, attach_ns=self.started_ns)
        self.pool = DiagPool()
        self._foreign: set[int] = set()  # CLOSE_WAIT inodes no target held at the last scan
        self._last_full_scan = 0
        self._since_report = Changes()  # what changed since the last summary
        self.unheld = 0  # sockets in CLOSE_WAIT no process holds (with --all)
        self._reported: set[str] = set()  # problems already shown once
        self.notices: list[str] = []
        self._fd_watched: dict[int, set[int]] = {}  # pid -> fds marked in the kernel
        self.fds = FdIndex()
        self._events_lost = 0
        self._dumped = False
        self._last_dump = 0
        self._cw_full = 0
        self._judged: set[int] = set()  # map entries old enough, seen by the last dump
        self._last_leak_ns = 0
        self.history: dict[int, CountHistory] = {}  # pid -> leak counts over time
        self._fd_counts: dict[int, tuple[int, int | None]] = {}  # pid -> (when, open fds)
        self.starts = GroupStarts(self.started_ns, procfs.ephemeral_port_range())
        if not targets.all_processes:
            self._set_kernel_targets()

    def close(self) -> None:
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
            self._last_full_scan = self._last_dump = 0
        needed = (
            not self._dumped
            or bool(old_enough - self._judged)
            or stats.cw_full != self._cw_full
            or now - self._last_dump > RECONCILE_EVERY_S * NS_PER_S
        )
        self._cw_full = stats.cw_full
        targets = None if self.targets.all_processes else frozenset(poll.pids)
        if needed:
            obs = self._observe(poll, now, kernel, targets)
            self._judged = old_enough
        else:
            obs = Observation(now, kernel, None, {}, {}, targets=targets)
        obs.events = self._poll_events(0)
        changes = self.tracker.update(obs, _still_holding)
        self.tracker.prune_procs()
        if needed:
            self.unheld = changes.unheld
        self._sync_kernel(changes)
        self._sample_counts(now, poll.exited_now)
        changes.ended[:0] = early.ended
        changes.released_fds[:0] = early.released_fds
        return changes

    def _observe(
        self, poll: TargetPoll, now: int, kernel: dict, targets: frozenset[int] | None
    ) -> Observation:
        """The full reading: sock_diag in every namespace, holders from the fd index."""
        dump = dump_close_wait(self.pool, poll)
        self._dumped, self._last_dump = True, now
        for problem in dump.problems:
            if problem not in self._reported:
                self._reported.add(problem)
                self.notices.append(problem)
        index = KernelIndex(kernel)
        in_cw = {d.inode for d in dump.diag}
        self._foreign &= in_cw
        candidates = [
            d
            for d in self.tracker.candidates(dump.diag, index, now)
            if d.inode not in self._foreign
        ]
        if candidates or now - self._last_full_scan > RECONCILE_EVERY_S * NS_PER_S:
            # The fds marked in the kernel cannot change without an event.
            self.fds.scan(holder_scope(self.targets, poll), trusted=self._fd_watched)
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
        )

    def _poll_events(self, timeout_ms: int) -> list[LeftCloseWait | FdDrop]:
        """Events from the kernel; fd drops also invalidate the fd index."""
        events = self.probe.poll(timeout_ms)
        for ev in events:
            if isinstance(ev, FdDrop):
                self.fds.forget(ev.tgid, ev.fd_lo, ev.fd_hi)
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
        if not events:
            return Changes()
        changes = self.tracker.apply_events(events, _still_holding)
        self._sync_kernel(changes)
        return changes

    def _sync_kernel(self, changes: Changes) -> None:
        """Tell the kernel what to report: watched sockets, and the fds of
        targets that hold them (so that a close() the socket survives is seen).
        The close-family syscall probes run while there is a leak to watch:
        enabling any syscall tracepoint slows every syscall of every task
        (about 2 points of throughput under heavy connection churn)."""
        self._since_report.new += changes.new
        self._since_report.ended += changes.ended
        self.starts.add(changes.new)
        now = self.clock()
        if self.tracker.leaks:
            self._last_leak_ns = now
            self.probe.set_syscall_probes(True)
        elif now - self._last_leak_ns > SYSCALL_PROBES_LINGER_S * NS_PER_S:
            self.probe.set_syscall_probes(False)
        self._sync_fds()
        for leak in changes.watch:
            if leak.sk is not None:
                if not self.probe.watch(leak.sk, leak.fin_ns):
                    self.notices.append("watched-socket map full: raise --max-sockets")
            elif not self.probe.watch_preexisting(leak.tuple):
                self.notices.append("pre-existing-socket map full: raise --max-sockets")
        for leak in changes.unwatch:
            if leak.sk is not None:
                self.probe.unwatch(leak.sk)
            else:
                self.probe.unwatch_preexisting(leak.tuple)

    def _sync_fds(self) -> None:
        if not self.tracker.holders_changed:
            return
        self.tracker.holders_changed = False
        targets = self.tracker.targets
        want: dict[int, dict[int, int]] = {}  # pid -> fd -> inode
        for leak in self.tracker.leaks.values():
            for h in leak.holders:
                if is_target(targets, h.pid):
                    want.setdefault(h.pid, {})[h.fd] = leak.inode
        for pid, fds in list(self._fd_watched.items()):
            for fd in fds - want.get(pid, {}).keys():
                self.probe.unwatch_fd(pid, fd)
                fds.discard(fd)
            if not fds:
                del self._fd_watched[pid]
        for pid, fds in want.items():
            have = self._fd_watched.setdefault(pid, set())
            for fd in fds.keys() - have:
                if self.probe.watch_fd(pid, fd, fds[fd]):
                    have.add(fd)

    def process_trends(self) -> list[ProcessTrend]:
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
            processes=self.process_trends(),
            groups=self.starts.groups(self.leaks(), now),
            latency=self.probe.read_latency() if final else [],
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
