"""A loaded closewait.bpf.c seen from Python: its maps, its events, its probes.

All BCC calls at run time live here (compiling is kernel/build.py, decoding
kernel/decode.py). Everything returned is a plain record from
tracer.core.model, so nothing above kernel/ touches ctypes.
"""

from __future__ import annotations

from typing import Any

from tracer.core.errors import CloseWaitError
from tracer.core.exitcodes import ExitStatus
from tracer.core.model import (
    FdDrop,
    KernelSock,
    LatencyBucket,
    LeftCloseWait,
    ProbeStats,
    SockTuple,
)
from tracer.core.verdict import PeerKey
from tracer.kernel import maps as bpf_maps
from tracer.kernel import preflight
from tracer.kernel.abi import const
from tracer.kernel.build import classify_load_error, compile_program
from tracer.kernel.config import MAX_MAP_ENTRIES, ProbeConfig
from tracer.kernel.decode import (
    SIDE_NAMES,
    STAT_NAMES,
    EventDecoder,
    decode_peer_key,
    decode_sock,
    fd_key,
    ns_tuple_key,
    peer_key,
)
from tracer.kernel.tracepoints import TRACEPOINTS, usable
from tracer.system import procfs


class KernelProbe:
    """A loaded and attached closewait.bpf.c. Use as a context manager, or call close()."""

    def __init__(self, config: ProbeConfig | None = None, verbose: bool = False) -> None:
        from bcc import BPF

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
        self._bpf = compile_program(self.config, verbose)
        self.ring_buffer = "-DCW_USE_RINGBUF" in cflags
        # Whether kernel entries carry their network namespace (BTF offsets).
        self.netns_known = any(f.startswith("-DCW_OFF_SKC_NET=") for f in cflags)
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
        self._peer_connects = b[b"peer_connects"]
        self._peer_armed = b[b"peer_armed"]
        self._peers: set[PeerKey] = set()  # mirrors the keys of peer_connects
        self._peers_armed = False  # mirrors peer_armed[0]
        listening = b[b"listening"]
        for port, count in procfs.listening_ports().items():
            # Listeners opened before attach: the program sees the new ones.
            bpf_maps.update(listening, listening.Key(port), listening.Leaf(count))
        self._fd_marks: dict[int, int] = {}  # tgid -> watched fds, mirrors watched_pids
        self._decoder = EventDecoder(b[b"event_layout"].Leaf)
        # TRACEPOINT_PROBEs are attached at load; the close probes only
        # while some leak is watched (set_close_probes).
        self._close_probes = available_close_probes()
        self.close_probes_attached = False
        for fn in set(self._close_probes.values()):
            # Verified now, so that a program the kernel rejects fails at
            # start-up rather than at the first leak.
            try:
                b.load_func(fn.encode(), BPF.TRACEPOINT)
            except Exception as exc:
                raise classify_load_error(exc, []) from exc
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
                    fresh[sk] = decode_sock(sk, values[i])
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

    def watch_preexisting(self, netns: int, t: SockTuple) -> bool:
        """Ask for an event when a socket in CLOSE_WAIT since before attach
        leaves it. netns: its namespace inode, or 0 when the kernel cannot
        read namespaces (netns_known is False)."""
        p = self._preexist
        return bpf_maps.update(p, ns_tuple_key(p.Key, netns, t), p.Leaf(1))

    def unwatch_preexisting(self, netns: int, t: SockTuple) -> None:
        p = self._preexist
        bpf_maps.delete(p, ns_tuple_key(p.Key, netns, t))

    def watch_fd(self, pid: int, fd: int, inode: int) -> bool:
        """Ask for an event when pid drops fd, which holds leaked socket inode."""
        t = self._watched_fds
        if not bpf_maps.update(t, fd_key(t.Key, pid, fd), t.Leaf(inode)):
            return False
        self._fd_marks[pid] = self._fd_marks.get(pid, 0) + 1
        p = self._watched_pids
        bpf_maps.update(p, p.Key(pid), p.Leaf(self._fd_marks[pid]))
        return True

    def fd_mark_dropped(self, pid: int) -> None:
        """The kernel removed one of pid's fd marks itself (it reported that
        fd's drop): keep the count mirror in step, without a syscall."""
        left = self._fd_marks.get(pid, 1) - 1
        if left > 0:
            self._fd_marks[pid] = left
        else:
            self._fd_marks.pop(pid, None)

    def unwatch_fd(self, pid: int, fd: int) -> None:
        """Take back a mark watch_fd() made. The kernel may have removed it
        already (it does when it reports that fd's drop, and user space may
        not have read that event yet): the count goes down either way, once,
        since the caller forgets the mark now and ignores that event."""
        t = self._watched_fds
        bpf_maps.delete(t, fd_key(t.Key, pid, fd))
        if pid not in self._fd_marks:
            return
        left = self._fd_marks.get(pid, 1) - 1
        p = self._watched_pids
        if left:
            self._fd_marks[pid] = left
            bpf_maps.update(p, p.Key(pid), p.Leaf(left))
        else:
            self._fd_marks.pop(pid, None)
            bpf_maps.delete(p, p.Key(pid))

    # -- pool diagnosis (tracer/engine/pools.py) ----------------------------

    def count_connects(self, peers: set[PeerKey]) -> set[PeerKey]:
        """Count the connect()s of exactly these (process, peer) pairs from now
        on (a pair counted already keeps its count); return the pairs counted
        (fewer when the map is full)."""
        t = self._peer_connects
        for key in self._peers - peers:
            bpf_maps.delete(t, peer_key(t.Key, key))
        self._peers &= peers
        for key in peers - self._peers:
            if bpf_maps.update(t, peer_key(t.Key, key), t.Leaf()):
                self._peers.add(key)
        if bool(self._peers) != self._peers_armed:
            self._peers_armed = bool(self._peers)
            a = self._peer_armed
            bpf_maps.update(a, a.Key(0), a.Leaf(int(self._peers_armed)))
        return set(self._peers)

    def read_connects(self) -> dict[PeerKey, tuple[int, int]]:
        """(process, peer) -> (connects since counted, CLOCK_MONOTONIC ns of the last; 0: none)."""
        if not self._peers:
            return {}
        return {
            decode_peer_key(k): (int(v.connects), int(v.last_ns))
            for k, v in self._peer_connects.items()
        }

    def read_latency(self) -> list[LatencyBucket]:
        """The FIN-to-close histogram, every (process, port, slot) with its count."""
        return [
            LatencyBucket(k.tgid, SIDE_NAMES.get(k.side, "unknown"), k.port, k.slot, int(v.value))
            for k, v in self._latency.items()
        ]

    def forget_latency(self, pids: set[int]) -> None:
        """Delete the histogram entries of these processes (exited ones, once
        read): a long-running exporter would otherwise fill the map with
        processes that are gone, and then miss the closes of live ones."""
        m = self._latency
        for k in [k for k in m if k.tgid in pids]:
            bpf_maps.delete(m, k)

    def stats(self) -> ProbeStats:
        s = self._stats
        values = {name: bpf_maps.percpu_sum(s, const(f"CW_STAT_{name}")) for name in STAT_NAMES}
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
            decode_errors=self.decode_errors,
        )

    # -- events ------------------------------------------------------------

    def _on_event(self, *args: Any) -> int:
        # ring buffer: (ctx, data, size); perf buffer: (cpu, data, size)
        try:
            self._pending.append(self._decoder.decode(args[1], args[2]))
        except Exception:  # never let a bad record kill the callback chain
            self.decode_errors += 1
        return 0

    def set_close_probes(self, on: bool) -> None:
        """Attach or detach the close probes (close-family syscalls, io_uring)."""
        if self._bpf is None or on == self.close_probes_attached:
            return
        for tp, fn in self._close_probes.items():
            if on:
                self._bpf.attach_tracepoint(tp=tp.encode(), fn_name=fn.encode())
            else:
                self._bpf.detach_tracepoint(tp=tp.encode())
        self.close_probes_attached = on

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
        self._decoder.end_of_poll()
        return out


def available_close_probes() -> dict[str, str]:
    """ "category:event" -> C function, for the close probes this kernel has
    with the record layout the C function reads."""
    root = preflight.tracefs_root()
    return {tp.name: tp.function for tp in TRACEPOINTS if tp.function and usable(root, tp)}
