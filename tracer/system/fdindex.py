"""Which fds hold which sockets, kept across refreshes.

The only way to map a process's fds to socket inodes is one readlink() per
fd: about 0.25 s for 100,000 fds here, every time a new leak has to be
attributed. But the fds that hold leaked sockets (the bulk, in a process
that leaks) are watched by the kernel (watched_fds): such an fd cannot be
closed, dup2()ed over or reused without an FD_DROP event, and process exits
are seen by polling. So an fd the caller marks as trusted keeps the inode
read at the previous scan; every other fd is read again. After lost events
nothing is trusted until the next full scan.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping

from tracer.core.model import Holder
from tracer.system import procfs


class FdIndex:
    def __init__(self) -> None:
        self._fds: dict[int, dict[int, int]] = {}  # pid -> fd -> socket inode
        self._by_inode: dict[int, list[Holder]] = {}  # the same, reversed

    def forget(self, pid: int, lo: int, hi: int) -> None:
        """fds lo..hi of pid were dropped (an FD_DROP event): read them again."""
        fds = self._fds.get(pid)
        if fds is None:
            return
        if lo == hi:  # close(), dup2(): one lookup, whatever the table's size
            inode = fds.pop(lo, None)
            if inode is not None:
                self._unlink(pid, lo, inode)
            return
        for fd in [fd for fd in fds if lo <= fd <= hi]:
            self._unlink(pid, fd, fds.pop(fd))

    def forget_all(self) -> None:
        self._fds.clear()
        self._by_inode.clear()

    def keep_only(self, alive: set[int]) -> None:
        """Drop processes that are gone (cheap: the index holds few processes)."""
        for pid in [p for p in self._fds if p not in alive]:
            for fd, inode in self._fds.pop(pid).items():
                self._unlink(pid, fd, inode)

    def _unlink(self, pid: int, fd: int, inode: int) -> None:
        hs = self._by_inode.get(inode)
        if hs is not None:
            rest = [h for h in hs if h != (pid, fd)]
            if rest:
                self._by_inode[inode] = rest
            else:
                del self._by_inode[inode]

    def scan(self, pids: Iterable[int], trusted: Mapping[int, Container[int]]) -> None:
        """Re-read the fd tables of pids; fds in `trusted` keep their inode.

        Processes not in pids are dropped from the index: it describes the
        scanned processes only. Processes that exited or whose fds may not
        be read are left out."""
        fresh: dict[int, dict[int, int]] = {}
        for pid in pids:
            try:
                fresh[pid] = procfs.socket_fds(pid, self._fds.get(pid), trusted.get(pid, ()))
            except (procfs.ProcessGone, procfs.ProcessHidden):
                continue
        self._fds = fresh
        holders = procfs.by_inode(fresh)
        # Where nothing changed, keep handing out the previous list: leaks
        # hold on to it, so a new equal one would double the memory of every
        # leak's holders (20 MB at 100,000 leaks) until the leak ends.
        previous = self._by_inode
        for inode, hs in holders.items():
            old_hs = previous.get(inode)
            if old_hs is not None and old_hs == hs:
                holders[inode] = old_hs
        self._by_inode = holders

    def rescan(self, pids: Iterable[int], trusted: Mapping[int, Container[int]]) -> None:
        """Re-read the fd tables of pids only (new ones are added), leaving
        the other processes of the index as they are. For the few processes
        an fd drop concerns, between full scans."""
        for pid in pids:
            old = self._fds.pop(pid, None) or {}
            for fd, inode in old.items():
                self._unlink(pid, fd, inode)
            try:
                table = procfs.socket_fds(pid, old, trusted.get(pid, ()))
            except (procfs.ProcessGone, procfs.ProcessHidden):
                continue
            self._fds[pid] = table
            by_inode = self._by_inode
            for fd, inode in table.items():
                # A new list: leaks keep the ones handed out (see scan).
                by_inode[inode] = [*by_inode.get(inode, ()), Holder(pid, fd)]

    def pids(self) -> list[int]:
        return list(self._fds)

    def all_holders(self) -> dict[int, list[Holder]]:
        """inode -> holders, for every socket an indexed process holds (read-only)."""
        return self._by_inode

    def socket_inodes(self, pid: int) -> set[int] | None:
        """The socket inodes pid held at the last scan (None: not indexed)."""
        fds = self._fds.get(pid)
        return None if fds is None else set(fds.values())

    def holders(self, inodes: Iterable[int]) -> dict[int, list[Holder]]:
        """inode -> holders, for the inodes some indexed process holds."""
        by_inode = self._by_inode
        return {inode: hs for inode in inodes if (hs := by_inode.get(inode)) is not None}
