"""Which processes are watched: given pids, or every process on the host."""

from __future__ import annotations

from dataclasses import dataclass, field

from tracer.core.errors import CloseWaitError
from tracer.core.exitcodes import ExitStatus
from tracer.system import procfs


@dataclass
class TargetPoll:
    """The state of the targets at one refresh."""

    pids: list[int]
    namespaces: dict[int, int]  # netns inode -> a live pid inside it
    exited_now: dict[int, str] = field(default_factory=dict)  # pid -> last comm
    hidden: list[int] = field(default_factory=list)  # targets whose namespace is unreadable


class Targets:
    """Given pids (checked to exist, and followed until they exit) or --all."""

    def __init__(self, pids: tuple[int, ...] = (), all_processes: bool = False) -> None:
        self.all_processes = all_processes
        self._idents: dict[int, procfs.ProcessId] = {}
        self.comms: dict[int, str] = {}
        self.exited: dict[int, str] = {}
        for pid in pids:
            try:
                self._idents[pid] = procfs.identify(pid)
                self.comms[pid] = procfs.comm(pid)
            except procfs.ProcessGone:
                raise CloseWaitError(
                    ExitStatus.NO_SUCH_PROCESS, f"no process with pid {pid}"
                ) from None

    @property
    def live(self) -> dict[int, str]:
        """Live target pid -> comm (empty with --all: every process is a target)."""
        return {pid: self.comms[pid] for pid in self._idents}

    def poll(self) -> TargetPoll:
        if self.all_processes:
            return self._poll_all()
        exited: dict[int, str] = {}
        namespaces: dict[int, int] = {}
        hidden: list[int] = []
        for pid, ident in list(self._idents.items()):
            try:
                if not procfs.is_alive(ident):
                    raise procfs.ProcessGone(pid)
                self.comms[pid] = procfs.comm(pid)
                namespaces.setdefault(procfs.netns_inode(pid), pid)
            except procfs.ProcessHidden:
                hidden.append(pid)  # alive, but its namespace cannot be entered
            except procfs.ProcessGone:
                del self._idents[pid]
                exited[pid] = self.comms.pop(pid, "?")
        self.exited.update(exited)
        return TargetPoll(list(self._idents), namespaces, exited, hidden)

    def _poll_all(self) -> TargetPoll:
        pids = procfs.all_pids()
        namespaces: dict[int, int] = {}
        for pid in pids:
            try:
                namespaces.setdefault(procfs.netns_inode(pid), pid)
            except (procfs.ProcessGone, procfs.ProcessHidden):
                # Hidden ones (e.g. a sandbox's init) are nearly always in a
                # namespace another process shares; not worth a notice each refresh.
                continue
        return TargetPoll(pids, namespaces)
