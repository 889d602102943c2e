"""What the kernel is asked to report: leaked sockets and the fds holding them.

Two lists in the kernel, kept in step with the tracker:
- watched sockets (`watched` by address, `preexist` by namespace and tuple):
  their exit from CLOSE_WAIT comes back as an event;
- watched (pid, fd) pairs (`watched_fds`): a close(), close_range(), dup2()
  over one of them comes back as an event even when the socket survives
  it (another fd or a fork child holds it), which no state change shows.

The fd marks follow the tracker's holder changes (tracker.fd_dirty), so a
storm of closes costs O(1) per fd, not a pass over every leak.
"""

from __future__ import annotations

from collections.abc import Callable

from tracer.core.correlate import Changes, is_target
from tracer.core.model import Holder, Leak
from tracer.core.tracker import LeakTracker
from tracer.kernel.probe import KernelProbe
from tracer.system import procfs


class WatchList:
    def __init__(
        self, probe: KernelProbe, tracker: LeakTracker, notice: Callable[[str], None]
    ) -> None:
        self.probe = probe
        self.tracker = tracker
        self._notice = notice
        self._told: set[str] = set()
        self._fds: dict[int, dict[int, int]] = {}  # pid -> fd -> inode marked in the kernel
        self._sockets: dict[int, Leak] = {}  # inode -> leak the kernel watches

    def trusted(self) -> dict[int, dict[int, int]]:
        """pid -> fds marked in the kernel (fd -> inode): they cannot change
        without an event, so a scan may keep what it read before."""
        return self._fds

    def apply(self, changes: Changes, now_ns: int) -> None:
        """Watch the new leaks, unwatch the ones that ended without an event,
        and bring the fd marks up to date."""
        for leak in changes.watch:
            self._watch(leak)
        for leak in changes.unwatch:
            self._unwatch(leak)
        for leak in changes.ended:
            self._sockets.pop(leak.leak.inode, None)  # the kernel dropped it with the event
        self._sync_fds(now_ns)

    def _watch(self, leak: Leak) -> None:
        if leak.sk is not None:
            ok = self.probe.watch(leak.sk, leak.fin_ns)
        else:
            ok = self.probe.watch_preexisting(*self.tracker.tuple_key(leak))
        if ok:
            self._sockets[leak.inode] = leak
        else:
            self._tell(
                "watched-socket map full: some leaks' ends are seen only by polling; "
                "raise --max-sockets"
            )

    def _unwatch(self, leak: Leak) -> None:
        if self._sockets.pop(leak.inode, None) is None:
            return
        if leak.sk is not None:
            self.probe.unwatch(leak.sk)
        else:
            self.probe.unwatch_preexisting(*self.tracker.tuple_key(leak))

    def _sync_fds(self, now_ns: int) -> None:
        dirty = self.tracker.fd_dirty
        if not dirty:
            return
        self.tracker.fd_dirty = set()
        targets = self.tracker.targets
        added: list[tuple[Holder, int]] = []
        for h in dirty:
            want = self.tracker.holds(h) if is_target(targets, h.pid) else None
            have = self._fds.get(h.pid, {}).get(h.fd)
            if want == have:
                continue
            if have is not None:
                self.probe.unwatch_fd(h.pid, h.fd)
                self._drop_mark(h)
            if want is not None:
                if self.probe.watch_fd(h.pid, h.fd, want):
                    self._fds.setdefault(h.pid, {})[h.fd] = want
                    added.append((h, want))
                else:
                    self._tell(
                        "watched-fd map full: closes of some leaked fds are seen only at "
                        "the next scan; raise --max-sockets"
                    )
        # Between the fd scan that found these fds and their marking, a close
        # and a reuse of the number would have gone unseen: read each newly
        # marked fd once. From now on any drop of it is an event.
        for h, inode in added:
            if procfs.fd_inode(h.pid, h.fd) != inode:
                self.tracker.forget_holder(h, now_ns)

    def _drop_mark(self, h: Holder) -> None:
        fds = self._fds.get(h.pid)
        if fds is not None:
            fds.pop(h.fd, None)
            if not fds:
                del self._fds[h.pid]

    def kernel_dropped(self, h: Holder) -> None:
        """An fd-drop event for a marked fd: the kernel removed the mark."""
        fds = self._fds.get(h.pid)
        if fds is not None and fds.pop(h.fd, None) is not None:
            self.probe.fd_mark_dropped(h.pid)
            if not fds:
                del self._fds[h.pid]

    def remark_all(self) -> None:
        """After lost events the kernel's marks are not known for sure: take
        them all back and mark every holder again at the next sync."""
        self.clear_fds()
        self.tracker.fd_dirty.update(
            Holder(pid, fd) for pid, fds in self.tracker.holders_index().items() for fd in fds
        )

    def marked(self, h: Holder) -> bool:
        return h.fd in self._fds.get(h.pid, ())

    def clear(self) -> None:
        """Take back everything this session asked of the kernel, so that a
        probe shared with a later session (the tests share one) starts clean."""
        for leak in list(self._sockets.values()):
            self._unwatch(leak)
        self.clear_fds()

    def clear_fds(self) -> None:
        for pid, fds in list(self._fds.items()):
            for fd in list(fds):
                self.probe.unwatch_fd(pid, fd)
        self._fds.clear()

    def _tell(self, message: str) -> None:
        if message not in self._told:
            self._told.add(message)
            self._notice(message)
