"""`closewait watch`: the refresh loop that gathers observations and reports.

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

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from tracer import procfs
from tracer.correlate import Changes, KernelIndex, LeakTracker, Observation
from tracer.gather import dump_close_wait, holder_scope, process_facts
from tracer.kernel_probe import KernelProbe
from tracer.model import NS_PER_S, Holder, Leak
from tracer.output import Output
from tracer.render import Summary
from tracer.sockdiag import DiagPool
from tracer.targets import Targets

# Holders of known leaks are re-verified every refresh with one readlink
# each; a full scan of the targets' fds happens when there are new candidate
# sockets, and at least this often, to notice new holders (dup, fork).
FULL_SCAN_EVERY_S = 30.0


@dataclass(frozen=True)
class WatchOptions:
    interval_s: float = 2.0
    min_age_s: float = 5.0
    duration_s: float | None = None


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
        if not targets.all_processes:
            probe.set_targets(set(targets.live))

    def close(self) -> None:
        self.pool.close()

    def refresh(self) -> Changes:
        """Gather one Observation, update the leaks and the kernel's watch list."""
        poll = self.targets.poll()
        for pid, comm in poll.exited_now.items():
            self.notices.append(f"pid {pid} ({comm}) exited")
        if poll.exited_now and not self.targets.all_processes:
            self.probe.set_targets(set(self.targets.live))

        dump = dump_close_wait(self.pool, poll)
        for problem in dump.problems:
            if problem not in self._reported:
                self._reported.add(problem)
                self.notices.append(problem)

        now = self.clock()
        kernel = self.probe.read_sockets()
        index = KernelIndex(kernel)
        in_cw = {d.inode for d in dump.diag}
        self._foreign &= in_cw
        candidates = [
            d
            for d in self.tracker.candidates(dump.diag, index, now)
            if d.inode not in self._foreign
        ]
        targets = None if self.targets.all_processes else frozenset(poll.pids)
        if candidates or now - self._last_full_scan > FULL_SCAN_EVERY_S * NS_PER_S:
            holders = procfs.holders_of(holder_scope(self.targets, poll))
            self._last_full_scan = now
            self._foreign = {
                d.inode
                for d in candidates
                if not any(targets is None or h.pid in targets for h in holders.get(d.inode, []))
            }
        else:
            # Nothing new to attribute: re-read only the known holders' fds.
            holders = {}
            for leak in self.tracker.leaks.values():
                still = _still_holding(leak)
                if still:
                    holders[leak.inode] = still
        holders = {inode: hs for inode, hs in holders.items() if inode in in_cw}
        comms, cgroups = process_facts(h.pid for hs in holders.values() for h in hs)

        obs = Observation(
            now_ns=now,
            kernel=kernel,
            diag=dump.diag,
            holders=holders,
            comms=comms,
            events=self.probe.poll(0),
            queried_netns=dump.queried,
            exited=set(self.targets.exited),
            targets=targets,
            cgroups=cgroups,
            holders_complete=self.targets.all_processes,
        )
        changes = self.tracker.update(obs, _still_holding)
        self.unheld = changes.unheld
        self._sync_kernel(changes)
        return changes

    def drain_events(self, timeout_ms: int) -> Changes:
        """Wait up to timeout_ms for kernel events and end the leaks they concern."""
        events = self.probe.poll(timeout_ms)
        if not events:
            return Changes()
        changes = Changes(ended=self.tracker.apply_events(events, _still_holding))
        self._sync_kernel(changes)
        return changes

    def _sync_kernel(self, changes: Changes) -> None:
        self._since_report.new += changes.new
        self._since_report.ended += changes.ended
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
        )

    def leaks(self) -> list[Leak]:
        return self.tracker.sorted_leaks()

    def finished(self) -> bool:
        """True when every given pid has exited (never with --all)."""
        return not self.targets.all_processes and not self.targets.live


def _still_holding(leak: Leak) -> list[Holder]:
    return procfs.still_holding(leak.holders, leak.inode)


class StopFlag:
    """Set by SIGINT/SIGTERM; a second SIGINT while stopping aborts at once."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def __bool__(self) -> bool:
        return self.reason is not None

    def install(self) -> None:
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        if self.reason is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.reason = signal.Signals(signum).name


def run(watcher: Watcher, options: WatchOptions, out: Output, stop: StopFlag) -> None:
    """Refresh every interval until stopped, the duration ends or every target
    exits; then print the final report. Events are drained between refreshes,
    so an ENDED line appears as soon as the kernel reports it."""
    deadline = None if options.duration_s is None else time.monotonic() + options.duration_s

    def expired() -> bool:
        return deadline is not None and time.monotonic() >= deadline

    def emit(changes: Changes) -> None:
        for message in watcher.notices:
            out.notice(message)
        watcher.notices.clear()
        for e in changes.ended:
            out.ended(e)

    changes = watcher.refresh()
    emit(changes)
    while not (stop or watcher.finished() or expired()):
        out.report(watcher.leaks(), watcher.summary(time.time()))
        next_refresh = time.monotonic() + options.interval_s
        if deadline is not None:
            next_refresh = min(next_refresh, deadline)
        while not stop and (left := next_refresh - time.monotonic()) > 0:
            emit(watcher.drain_events(max(1, int(min(left, 0.25) * 1000))))
        changes = watcher.refresh()
        emit(changes)
    if watcher.finished():
        out.notice("every target has exited")
    out.report(watcher.leaks(), watcher.summary(time.time(), final=True))
