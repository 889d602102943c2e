"""The BPF side seen from Python: compile and attach, read maps, receive events, detach.

All BCC calls live here. Everything returned is a plain record from
tracer.model, so nothing above this module touches ctypes.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tracer import bpf_maps, preflight, procfs
from tracer.bpf_abi import bpf_dir, const
from tracer.errors import CloseWaitError
from tracer.exitcodes import ExitStatus
from tracer.model import (
    Creator,
    FdDrop,
    KernelSock,
    LatencyBucket,
    LeftCloseWait,
    ProbeStats,
    SockTuple,
)

# Limits for map sizes given on the command line: the BPF hash maps are
# preallocated, so a huge number would pin that much kernel memory.
MAX_MAP_ENTRIES = 4 * 1024 * 1024
# A short struct cw_event (48 bytes) plus the ring buffer's 8-byte header.
EVENT_RECORD_BYTES = 56


@dataclass(frozen=True)
class ProbeConfig:
    """What to compile into the program. Sizes are entries, not bytes."""

    max_sockets: int = 65536  # closewait, watched and preexist maps
    max_conns: int = 65536  # creators of live connections (LRU)
    max_threads: int = 32768  # pending fd drops (LRU)
    max_targets: int = 1024
    max_latency_buckets: int = 16384  # (process, port, log2 slot) triples
    buffer_pages: int | None = None  # event buffer in pages (power of two); None: sized below
    filter_pids: bool = False  # record fd drops of targets only
    ring_buffer: bool | None = None  # None: when the kernel has it (5.8+)

    @property
    def pages(self) -> int:
        """Event buffer pages: by default room for every watched socket to
        end at once, each with an fd-drop event before its exit event (a
        process closing all its leaked fds in a loop), so that no event about
        a leak is ever lost: 2 x max_sockets x 56 bytes, rounded up to a power
        of two (8 MB for the default 65,536)."""
        if self.buffer_pages is not None:
            return self.buffer_pages
        need = 2 * self.max_sockets * EVENT_RECORD_BYTES // 4096 + 1
        return 1 << (need - 1).bit_length()

    def cflags(self) -> list[str]:
        use_rb = preflight.ringbuf_supported() if self.ring_buffer is None else self.ring_buffer
        flags = [
            f"-I{bpf_dir()}",
            f"-DCW_MAX_SOCKS={self.max_sockets}",
            f"-DCW_MAX_PREEXIST={self.max_sockets}",
            f"-DCW_MAX_CONNS={self.max_conns}",
            f"-DCW_MAX_THREADS={self.max_threads}",
            f"-DCW_MAX_TARGETS={self.max_targets}",
            f"-DCW_RINGBUF_PAGES={self.pages}",
            f"-DCW_MAX_LAT={self.max_latency_buckets}",
        ]
        if use_rb:
            flags.append("-DCW_USE_RINGBUF")
        if self.filter_pids:
            flags.append("-DCW_FILTER_PIDS")
        return flags


@contextlib.contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """Collect what C code (clang, libbpf, the verifier) writes to fd 2.

    BCC prints compiler and verifier diagnostics straight to the process's
    stderr; captured, they can be condensed into one line on failure.
    """
    lines: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines.extend(tmp.read().decode("utf-8", "replace").splitlines())


def _first_diagnostic(lines: list[str]) -> str:
    for pattern in (
        r"\berror:",
        r"fatal error",
        r"Permission denied|Operation not permitted",
    ):
        for line in lines:
            if re.search(pattern, line):
                return line.strip()
    return next((line.strip() for line in lines if line.strip()), "")


def _classify_load_error(exc: Exception, diag: list[str]) -> CloseWaitError:
    """Turn BCC's generic exceptions into an exit status and one line."""
    text = str(exc)
    detail = _first_diagnostic(diag)
    joined = "\n".join(diag)
    if "compile" in text.lower():
        if "file not found" in joined or "No such file" in joined:
            return CloseWaitError(
                ExitStatus.NO_HEADERS,
                f"BCC cannot compile closewait: kernel headers incomplete ({detail}); "
                "fix: install linux-headers-$(uname -r) or run scripts/setup.sh",
            )
        return CloseWaitError(
            ExitStatus.INTERNAL,
            f"BCC failed to compile closewait.bpf.c: {detail or text}",
        )
    if "attach" in text.lower() and "tracepoint" in text.lower():
        return CloseWaitError(
            ExitStatus.NO_TRACEPOINT, f"cannot attach to a tracepoint: {text.strip()}"
        )
    if "Operation not permitted" in text or "Permission denied" in text:
        return CloseWaitError(
            ExitStatus.NO_BPF,
            f"the kernel refused the BPF program ({text.strip()}); "
            "fix: run as real root on the host, not in an unprivileged container",
        )
    return CloseWaitError(
        ExitStatus.NO_BPF,
        f"cannot load the BPF program: {text.strip()} {detail}".strip(),
    )


class KernelProbe:
    """A loaded and attached closewait.bpf.c. Use as a context manager, or call close()."""

    def __init__(self, config: ProbeConfig | None = None) -> None:
        from bcc import BPF  # imported late: preflight reports a missing bcc cleanly

        self.config = config or ProbeConfig()
        for name in ("max_sockets", "max_conns", "max_threads", "max_targets"):
            value = getattr(self.config, name)
            if not 1 <= value <= MAX_MAP_ENTRIES:
                raise CloseWaitError(
                    ExitStatus.USAGE, f"{name} must be between 1 and {MAX_MAP_ENTRIES}"
                )
        pages = self.config.pages
        if pages < 1 or pages & (pages - 1):
            raise CloseWaitError(ExitStatus.USAGE, "buffer pages must be a power of two")

        cflags = self.config.cflags()
        self.compile_messages: list[str] = []
        try:
            with _captured_stderr() as diag:
                self._bpf = BPF(
                    src_file=str(bpf_dir() / "closewait.bpf.c").encode(),
                    cflags=cflags,
                )
        except Exception as exc:  # BCC raises bare Exception for every failure
            raise _classify_load_error(exc, diag) from exc
        self.compile_messages = diag
        _return_compiler_memory()
        self.ring_buffer = "-DCW_USE_RINGBUF" in cflags
        b = self._bpf
        self._closewait = b[b"closewait"]
        self._watched = b[b"watched"]
        self._preexist = b[b"preexist"]
        self._targets = b[b"targets"]
        self._stats = b[b"stats"]
        self._conns = b[b"conns"]
        self._events = b[b"events"]
        self._watched_fds = b[b"watched_fds"]
        self._watched_pids = b[b"watched_pids"]
        self._latency = b[b"close_latency"]
        self._fd_marks: dict[int, int] = {}  # tgid -> watched fds, mirrors watched_pids
        self._event_class = b[b"event_layout"].Leaf
        self._thread_names: dict[tuple[int, int], str] = {}
        # TRACEPOINT_PROBEs are attached at load; the syscall probes only
        # while some leak is watched (set_syscall_probes).
        self._syscall_probes = available_syscall_probes()
        self.syscall_probes_attached = False
        for fn in set(self._syscall_probes.values()):
            # Verified now, so that a program the kernel rejects fails at
            # start-up rather than at the first leak.
            try:
                b.load_func(fn.encode(), BPF.TRACEPOINT)
            except Exception as exc:
                raise _classify_load_error(exc, []) from exc
        self.decode_errors = 0
        self._reader = bpf_maps.BatchReader(self._closewait)
        self._cache: dict[int, KernelSock] = {}
        self._pending: list[LeftCloseWait | FdDrop] = []
        self._perf_lost = 0
        if self.ring_buffer:
            self._events.open_ring_buffer(self._on_event)
        else:
            # Per CPU: a burst (one process exiting) lands on one CPU's buffer.
            self._events.open_perf_buffer(self._on_event, page_cnt=pages, lost_cb=self._on_lost)

    # -- lifecycle ---------------------------------------------------------

    def close(self) -> None:
        """Detach every program and free the maps. Safe to call twice."""
        b = getattr(self, "_bpf", None)
        if b is not None:
            self._bpf = None
            b.cleanup()

    def __enter__(self) -> KernelProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- targets -----------------------------------------------------------

    def set_targets(self, pids: set[int], ancestors: set[int] = frozenset()) -> None:
        """With filter_pids: the processes whose fd drops are recorded, and
        their ancestors, whose connections are tracked too (a child may
        inherit them across fork)."""
        t = self._targets
        want = dict.fromkeys(ancestors - pids, const("CW_ANCESTOR"))
        want.update(dict.fromkeys(pids, const("CW_TARGET")))
        current = {k.value: v.value for k, v in t.items()}
        for pid in current.keys() - want.keys():
            bpf_maps.delete(t, t.Key(pid))
        for pid, kind in want.items():
            if current.get(pid) != kind:
                bpf_maps.update(t, t.Key(pid), t.Leaf(kind))

    # -- reading -----------------------------------------------------------

    def read_sockets(self) -> dict[int, KernelSock]:
        """Every socket that entered CLOSE_WAIT since attach and is still there.

        Entries already decoded on an earlier call are reused, so a refresh
        costs one batch syscall plus work for new entries only.
        """
        old = self._cache
        fresh: dict[int, KernelSock] = {}
        for keys, fins, values in self._reader.chunks():
            for i, (sk, fin) in enumerate(zip(keys, fins)):
                known = old.get(sk)
                if known is not None and known.fin_ns == fin:
                    fresh[sk] = known
                else:
                    fresh[sk] = _decode_sock(sk, values[i])
        self._cache = fresh
        return fresh

    def watch(self, sk: int, fin_ns: int) -> bool:
        """Ask for an event when this socket leaves CLOSE_WAIT."""
        w = self._watched
        return bpf_maps.update(w, w.Key(sk), w.Leaf(fin_ns))

    def unwatch(self, sk: int) -> None:
        w = self._watched
        bpf_maps.delete(w, w.Key(sk))

    def watched(self) -> dict[int, int]:
        return {k.value: v.value for k, v in self._watched.items()}

    def watch_preexisting(self, t: SockTuple) -> bool:
        """Ask for an event when a socket in CLOSE_WAIT since before attach leaves it."""
        p = self._preexist
        return bpf_maps.update(p, _tuple_key(p.Key, t), p.Leaf(1))

    def unwatch_preexisting(self, t: SockTuple) -> None:
        p = self._preexist
        bpf_maps.delete(p, _tuple_key(p.Key, t))

    def watch_fd(self, pid: int, fd: int, inode: int) -> bool:
        """Ask for an event when pid drops fd, which holds leaked socket inode."""
        t = self._watched_fds
        if not bpf_maps.update(t, _fd_key(t.Key, pid, fd), t.Leaf(inode)):
            return False
        self._fd_marks[pid] = self._fd_marks.get(pid, 0) + 1
        p = self._watched_pids
        bpf_maps.update(p, p.Key(pid), p.Leaf(self._fd_marks[pid]))
        return True

    def unwatch_fd(self, pid: int, fd: int) -> None:
        t = self._watched_fds
        if not bpf_maps.delete(t, _fd_key(t.Key, pid, fd)):
            return
        left = self._fd_marks.get(pid, 1) - 1
        p = self._watched_pids
        if left:
            self._fd_marks[pid] = left
            bpf_maps.update(p, p.Key(pid), p.Leaf(left))
        else:
            self._fd_marks.pop(pid, None)
            bpf_maps.delete(p, p.Key(pid))

    def read_latency(self) -> list[LatencyBucket]:
        """The FIN-to-close histogram, every (process, port, slot) with its count."""
        sides = {
            const("CW_SIDE_REMOTE"): "remote",
            const("CW_SIDE_LOCAL"): "local",
        }
        return [
            LatencyBucket(k.tgid, sides.get(k.side, "unknown"), k.port, k.slot, int(v.value))
            for k, v in self._latency.items()
        ]

    def stats(self) -> ProbeStats:
        s = self._stats
        values = {name: bpf_maps.percpu_sum(s, const(f"CW_STAT_{name}")) for name in _STAT_NAMES}
        added, removed = values["CONN_ADDED"], values["CONN_REMOVED"]
        evicted = 0
        # An LRU map evicts silently. Every entry added was either removed by
        # the program, is still there, or was evicted; count the live ones
        # only when evictions are possible (LRU lists can evict before full).
        if added - removed > self.config.max_conns // 2:
            live = sum(1 for _ in self._conns)
            evicted = max(0, added - removed - live)
        return ProbeStats(
            fins=values["FIN"],
            cw_full=values["CW_FULL"],
            cw_left=values["CW_LEFT"],
            conns_added=added,
            conns_removed=removed,
            conns_evicted=evicted,
            events=values["EVENTS"],
            events_lost=values["EVENTS_LOST"] + self._perf_lost,
            drops_stale=values["DROPS_STALE"],
            latency_full=values["LAT_FULL"],
            fins_foreign=values["FIN_FOREIGN"],
        )

    # -- events ------------------------------------------------------------

    def _on_event(self, *args: Any) -> int:
        # ring buffer: (ctx, data, size); perf buffer: (cpu, data, size)
        try:
            self._pending.append(self._decode_event(args[1], args[2]))
        except Exception:  # never let a bad record kill the callback chain
            self.decode_errors += 1
        return 0

    def _decode_event(self, data: Any, size: int) -> LeftCloseWait | FdDrop:
        # Records are short unless they carry a tuple: copy what came.
        e = self._event_class()
        ctypes.memmove(ctypes.byref(e), data, min(size, ctypes.sizeof(e)))
        comm = self._thread_name(e.tgid, e.tid)
        if e.kind == const("CW_EV_FD_DROP"):
            return FdDrop(e.ts, e.tgid, e.tid, comm, e.drop_kind, e.fd_lo, e.fd_hi)
        preexisting = e.source == const("CW_SRC_PREEXIST")
        return LeftCloseWait(
            ts_ns=e.ts,
            sk=e.skaddr,
            tuple=_decode_tuple(e.t) if preexisting else None,
            tgid=e.tgid,
            tid=e.tid,
            comm=comm,
            drop_kind=e.drop_kind,
            fd_lo=e.fd_lo,
            fd_hi=e.fd_hi,
            newstate=e.newstate,
            preexisting=preexisting,
        )

    def _thread_name(self, tgid: int, tid: int) -> str:
        """The thread's name from /proc, once per thread per poll (a process
        exiting with 100,000 leaks sends as many events from one thread)."""
        key = (tgid, tid)
        name = self._thread_names.get(key)
        if name is None:
            name = self._thread_names[key] = procfs.thread_comm(tgid, tid) or ""
        return name

    def set_syscall_probes(self, on: bool) -> None:
        """Attach or detach the close-family syscall tracepoints."""
        if self._bpf is None or on == self.syscall_probes_attached:
            return
        for tp, fn in self._syscall_probes.items():
            name = f"syscalls:{tp}".encode()
            if on:
                self._bpf.attach_tracepoint(tp=name, fn_name=fn.encode())
            else:
                self._bpf.detach_tracepoint(tp=name)
        self.syscall_probes_attached = on

    def _on_lost(self, count: int) -> None:
        self._perf_lost += count

    def poll(self, timeout_ms: int) -> list[LeftCloseWait | FdDrop]:
        """Wait up to timeout_ms for events (0: just drain); return what arrived."""
        if self._bpf is None:
            return []
        if self.ring_buffer:
            if timeout_ms:
                self._bpf.ring_buffer_poll(timeout_ms)
            self._bpf.ring_buffer_consume()
        else:
            self._bpf.perf_buffer_poll(timeout_ms)
        out, self._pending = self._pending, []
        self._thread_names.clear()
        return out


_STAT_NAMES = (
    "FIN",
    "CW_FULL",
    "CW_LEFT",
    "CONN_ADDED",
    "CONN_REMOVED",
    "EVENTS",
    "EVENTS_LOST",
    "DROPS_STALE",
    "LAT_FULL",
    "FIN_FOREIGN",
)


# Close-family syscall tracepoints -> the function of bpf/closewait.bpf.c
# attached to each while leaks are watched. close_range exists since 5.9;
# dup2 is absent on arm64, which has only dup3.
SYSCALL_PROBES = {
    "sys_enter_close": "cw_sys_enter_close",
    "sys_enter_close_range": "cw_sys_enter_close_range",
    "sys_enter_dup2": "cw_sys_enter_dup",
    "sys_enter_dup3": "cw_sys_enter_dup",
}


def available_syscall_probes() -> dict[str, str]:
    """The SYSCALL_PROBES whose tracepoint this kernel has."""
    root = preflight.tracefs_root()
    return {
        tp: fn
        for tp, fn in SYSCALL_PROBES.items()
        if root and (root / "events/syscalls" / tp / "format").is_file()
    }


def program_text(config: ProbeConfig) -> str:
    """The C program and the flags BCC would compile it with (for --ebpf)."""
    source = (bpf_dir() / "closewait.bpf.c").read_text()
    return "// cflags: " + " ".join(config.cflags()) + "\n" + source


_COMPILER_LIBS = re.compile(r"/lib(LLVM|clang)[^/]*\.so")
MADV_DONTNEED = 4


def _return_compiler_memory() -> None:
    """Give back what compiling the program used and the tracer no longer needs.

    - The heap clang/LLVM used (about 20 MB here): glibc keeps freed memory
      in its arenas; malloc_trim() returns it to the kernel (a no-op
      elsewhere, e.g. musl).
    - The executable pages of libLLVM and libclang-cpp (about 72 MB here),
      touched while compiling and resident ever since. Code pages are never
      written, so MADV_DONTNEED only drops them from this process; were the
      code ever run again, it would fault back in from the page cache.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    with contextlib.suppress(OSError, AttributeError):
        libc.malloc_trim(0)
    try:
        with open("/proc/self/maps") as f:
            maps = f.read().splitlines()
    except OSError:
        return
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    for line in maps:
        fields = line.split()
        if len(fields) < 6 or fields[1] != "r-xp" or not _COMPILER_LIBS.search(fields[5]):
            continue
        start, end = (int(x, 16) for x in fields[0].split("-"))
        libc.madvise(start, end - start, MADV_DONTNEED)


def _decode_tuple(t: Any) -> SockTuple:
    return SockTuple.from_bytes(t.family, bytes(t.saddr), t.sport, bytes(t.daddr), t.dport)


def _decode_sock(sk: int, v: Any) -> KernelSock:
    c = v.c
    creator = None
    if c.how:
        creator = Creator(
            opened_ns=c.opened_ns,
            tgid=c.tgid,
            tid=c.tid,
            comm=bytes(c.comm).rstrip(b"\0").decode("utf-8", "surrogateescape"),
            accepted=c.how == const("CW_OPENED_ACCEPT"),
        )
    return KernelSock(sk=sk, fin_ns=v.fin_ns, tuple=_decode_tuple(v.t), creator=creator)


def _fd_key(key_type: Any, pid: int, fd: int) -> Any:
    k = key_type()
    k.tgid, k.fd = pid, fd
    return k


def _tuple_key(key_type: Any, t: SockTuple) -> Any:
    k = key_type()
    k.family, k.sport, k.dport = t.family, t.local_port, t.remote_port
    src, dst = t.addr_bytes()
    for i in range(16):
        k.saddr[i] = src[i]
        k.daddr[i] = dst[i]
    return k
