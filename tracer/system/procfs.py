"""Read-only facts about processes from /proc.

Processes come and go while closewait reads: every function here treats a
vanished /proc entry as an ordinary outcome (ProcessGone, or skipping that
fd), never as an error. Nothing here opens a process's sockets: fds are only
readlink()ed, so the traced process keeps sole ownership of them.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Container, Iterable
from dataclasses import dataclass

from tracer.core.model import Holder

PROC = "/proc"
_SOCKET_PREFIX = "socket:["


class ProcessGone(Exception):
    """The process exited (or was never there)."""


class ProcessHidden(Exception):
    """The process exists but its fds cannot be read (permissions, hidepid)."""


@dataclass(frozen=True)
class ProcessId:
    """A pid plus its start time, so a recycled pid is not mistaken for the target."""

    pid: int
    start_ticks: int


def identify(pid: int) -> ProcessId:
    return ProcessId(pid, start_ticks(pid))


def stat_fields(pid: int, tid: int | None = None) -> list[bytes] | None:
    """/proc/PID/stat (or a thread's) from field 3 (state) on, or None if gone.

    The only parser of that file: comm (field 2) may contain spaces and
    parentheses, so the fields are split after the last ')'. Index 0 is
    the state, 1 the parent pid, 19 the start time in clock ticks."""
    path = f"{PROC}/{pid}/stat" if tid is None else f"{PROC}/{pid}/task/{tid}/stat"
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(b")") + 2 :].split()


def start_ticks(pid: int) -> int:
    """Field 22 of /proc/PID/stat: start time in clock ticks since boot."""
    fields = stat_fields(pid)
    if fields is None:
        raise ProcessGone(pid)
    return int(fields[19])


def is_alive(ident: ProcessId) -> bool:
    """True while the same process (not a recycled pid) exists and is not a zombie."""
    fields = stat_fields(ident.pid)
    if fields is None:
        return False
    return fields[0] not in (b"Z", b"X") and int(fields[19]) == ident.start_ticks


def exists(pid: int) -> bool:
    return os.path.exists(f"{PROC}/{pid}")


def comm(pid: int) -> str:
    """The process's name (its main thread's comm), raw: escape before printing."""
    try:
        with open(f"{PROC}/{pid}/comm", "rb") as f:
            return f.read().rstrip(b"\n").decode("utf-8", "surrogateescape")
    except OSError as exc:
        raise ProcessGone(pid) from exc


def thread_comm(pid: int, tid: int) -> str | None:
    try:
        with open(f"{PROC}/{pid}/task/{tid}/comm", "rb") as f:
            return f.read().rstrip(b"\n").decode("utf-8", "surrogateescape")
    except OSError:
        return None


def netns_inode(pid: int) -> int:
    """Identity of the process's network namespace (inode of /proc/PID/ns/net)."""
    try:
        return os.stat(f"{PROC}/{pid}/ns/net").st_ino
    except PermissionError as exc:
        raise ProcessHidden(pid) from exc
    except OSError as exc:
        raise ProcessGone(pid) from exc


def all_pids() -> list[int]:
    """Every process (thread group) on the host, as visible in this pid namespace."""
    return [int(name) for name in os.listdir(PROC) if name.isdigit()]


def socket_fds(
    pid: int, previous: dict[int, int] | None = None, trusted: Container[int] = ()
) -> dict[int, int]:
    """fd -> socket inode, for the socket fds of `pid`.

    One getdents pass and one readlink per fd, through a directory fd so the
    kernel does not resolve /proc/PID/fd for every entry. An fd in `trusted`
    that `previous` maps keeps that inode without a readlink (fdindex.py says
    when that is sound).
    """
    try:
        dirfd = os.open(f"{PROC}/{pid}/fd", os.O_RDONLY | os.O_DIRECTORY)
    except PermissionError as exc:  # not root, or a process we may not inspect
        raise ProcessHidden(pid) from exc
    except OSError as exc:
        raise ProcessGone(pid) from exc
    table: dict[int, int] = {}
    try:
        for name in os.listdir(dirfd):
            fd = int(name)
            if previous and fd in trusted and fd in previous:
                table[fd] = previous[fd]
                continue
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
    return table


def by_inode(
    tables: dict[int, dict[int, int]], wanted: Container[int] | None = None
) -> dict[int, list[Holder]]:
    """Socket inode -> its holders, from per-pid fd tables (only the inodes in
    `wanted`, if given)."""
    out: dict[int, list[Holder]] = {}
    for pid, table in tables.items():
        for fd, inode in table.items():
            if wanted is not None and inode not in wanted:
                continue
            hs = out.get(inode)
            if hs is None:
                out[inode] = [Holder(pid, fd)]
            else:
                hs.append(Holder(pid, fd))
    return out


def holders_of(
    pids: Iterable[int], unreadable: list[int] | None = None, wanted: Container[int] | None = None
) -> dict[int, list[Holder]]:
    """Socket inode -> every (pid, fd) among `pids` holding it (only the
    inodes in `wanted`, if given).

    Exited pids are skipped silently; pids whose fds may not be read are
    appended to `unreadable`, so callers can say what they could not see.
    """
    tables: dict[int, dict[int, int]] = {}
    for pid in pids:
        try:
            tables[pid] = socket_fds(pid)
        except ProcessGone:
            continue
        except ProcessHidden:
            if unreadable is not None:
                unreadable.append(pid)
    return by_inode(tables, wanted)


def fd_inode(pid: int, fd: int) -> int | None:
    """The socket inode fd of pid refers to now (None: closed, or not a socket)."""
    try:
        target = os.readlink(f"{PROC}/{pid}/fd/{fd}")
    except OSError:
        return None
    return int(target[8:-1]) if target.startswith(_SOCKET_PREFIX) else None


def is_compat(pid: int) -> bool:
    """Whether the process runs a 32-bit binary on a 64-bit kernel: its
    syscalls go through the compat table, which the syscall tracepoints do
    not report (so its closes are invisible to the close probes)."""
    try:
        with open(f"{PROC}/{pid}/exe", "rb") as f:
            header = f.read(5)
    except OSError:
        return False
    return header[:4] == b"\x7fELF" and header[4] == 1 and os.uname().machine.endswith("64")


def still_holding(holders: Iterable[Holder], inode: int) -> list[Holder]:
    """The holders whose fd still refers to socket `inode` (one readlink each)."""
    want = f"socket:[{inode}]"
    out = []
    for h in holders:
        try:
            if os.readlink(f"{PROC}/{h.pid}/fd/{h.fd}") == want:
                out.append(h)
        except OSError:
            continue
    return out


def children(pid: int) -> list[int]:
    """Direct children of every thread of pid (/proc/PID/task/TID/children)."""
    out: list[int] = []
    try:
        tids = os.listdir(f"{PROC}/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"{PROC}/{pid}/task/{tid}/children", "rb") as f:
                out.extend(int(x) for x in f.read().split())
        except OSError:
            continue
    return out


def with_descendants(pids: Iterable[int]) -> list[int]:
    """pids and all their descendants: the processes that may have inherited
    their sockets across fork()."""
    seen: dict[int, None] = {}
    stack = list(pids)
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen[pid] = None
        stack.extend(children(pid))
    return list(seen)


def parent(pid: int) -> int | None:
    """Field 4 of /proc/PID/stat, or None if the process is gone."""
    fields = stat_fields(pid)
    return None if fields is None else int(fields[1])


def ancestors(pid: int) -> list[int]:
    """Parent, grandparent... up to (not including) pid 1 and pid 0."""
    out: list[int] = []
    p = parent(pid)
    while p and p > 1 and p not in out:
        out.append(p)
        p = parent(p)
    return out


def cgroup_path(pid: int) -> str | None:
    """The process's cgroup v2 path (`0::/...` line), or the first v1 path."""
    try:
        with open(f"{PROC}/{pid}/cgroup", "rb") as f:
            lines = f.read().decode("utf-8", "surrogateescape").splitlines()
    except OSError:
        return None
    paths = [line.split(":", 2)[2] for line in lines if line.count(":") >= 2]
    v2 = [line.split(":", 2)[2] for line in lines if line.startswith("0::")]
    return (v2 or paths or [None])[0]


def open_fd_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"{PROC}/{pid}/fd"))
    except OSError:
        return None


def ephemeral_port_range() -> tuple[int, int]:
    """The local port range for outgoing connections (net.ipv4.ip_local_port_range)."""
    try:
        with open(f"{PROC}/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = f.read().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999  # the kernel's default


def listening_ports() -> dict[int, int]:
    """Local port -> TCP listening sockets on it, in this network namespace
    (/proc/net/tcp and tcp6; state 0A is LISTEN)."""
    out: dict[int, int] = {}
    for name in ("tcp", "tcp6"):
        try:
            with open(f"{PROC}/net/{name}") as f:
                next(f, None)
                for line in f:
                    fields = line.split(None, 4)
                    if len(fields) > 3 and fields[3] == "0A":
                        port = int(fields[1].rpartition(":")[2], 16)
                        out[port] = out.get(port, 0) + 1
        except (OSError, ValueError):
            continue
    return out


def fd_limit(pid: int) -> int | None:
    """Soft RLIMIT_NOFILE of the process, or None if unknown/unlimited."""
    try:
        soft, _hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return None
    return None if soft == resource.RLIM_INFINITY else soft
