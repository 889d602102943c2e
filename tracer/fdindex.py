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

import os
from collections.abc import Iterable

from tracer.model import Holder
from tracer.procfs import PROC

_SOCKET_PREFIX = "socket:["


class FdIndex:
    def __init__(self) -> None:
        self._fds: dict[int, dict[int, int]] = {}  # pid -> fd -> socket inode
        self._by_inode: dict[int, list[Holder]] = {}  # the same, reversed
        self.readlinks = 0  # syscalls spent, for benchmarks and tests
        self.unreadable: list[int] = []  # pids whose fds could not be read, last scan

    def forget(self, pid: int, lo: int, hi: int) -> None:
        """fds lo..hi of pid were dropped (an FD_DROP event): read them again."""
        fds = self._fds.get(pid)
        if fds is None:
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

    def scan(self, pids: Iterable[int], trusted: dict[int, set[int]]) -> None:
        """Re-read the fd tables of pids; fds in `trusted` keep their inode.

        Processes not in pids are dropped from the index: it describes the
        scanned processes only."""
        fresh: dict[int, dict[int, int]] = {}
        self.unreadable = []
        for pid in pids:
            try:
                dirfd = os.open(f"{PROC}/{pid}/fd", os.O_RDONLY | os.O_DIRECTORY)
            except PermissionError:
                self.unreadable.append(pid)
                continue
            except OSError:
                continue  # exited
            old = self._fds.get(pid, {})
            trust = trusted.get(pid, ())
            table: dict[int, int] = {}
            try:
                for name in os.listdir(dirfd):
                    fd = int(name)
                    if fd in trust and fd in old:
                        table[fd] = old[fd]
                        continue
                    self.readlinks += 1
                    try:
                        target = os.readlink(name, dir_fd=dirfd)
                    except OSError:
                        continue  # closed between listdir and readlink
                    if target.startswith(_SOCKET_PREFIX):
                        table[fd] = int(target[8:-1])
            except OSError:
                pass  # the process exited while we read: keep what we saw
            finally:
                os.close(dirfd)
            fresh[pid] = table
        self._fds = fresh
        by_inode: dict[int, list[Holder]] = {}
        for pid, table in fresh.items():
            for fd, inode in table.items():
                hs = by_inode.get(inode)
                if hs is None:
                    by_inode[inode] = [Holder(pid, fd)]
                else:
                    hs.append(Holder(pid, fd))
        # Where nothing changed, keep handing out the previous list: leaks
        # hold on to it, so a new equal one would double the memory of every
        # leak's holders (20 MB at 100,000 leaks) until the leak ends.
        previous = self._by_inode
        for inode, hs in by_inode.items():
            old_hs = previous.get(inode)
            if old_hs is not None and old_hs == hs:
                by_inode[inode] = old_hs
        self._by_inode = by_inode

    def pids(self) -> list[int]:
        return list(self._fds)

    def fd_count(self, pid: int) -> int | None:
        """Socket fds of pid at the last scan."""
        table = self._fds.get(pid)
        return None if table is None else len(table)

    def holders(self, inodes: Iterable[int]) -> dict[int, list[Holder]]:
        """inode -> holders, for the inodes some indexed process holds."""
        by_inode = self._by_inode
        return {inode: hs for inode in inodes if (hs := by_inode.get(inode)) is not None}
