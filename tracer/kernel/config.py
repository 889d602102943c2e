"""What the BPF program is compiled with: map sizes, buffer, filters.

The defaults here are the only copy: the CLI's options and the watch
request read them from this module.
"""

from __future__ import annotations

from dataclasses import dataclass

from tracer.kernel import btf, preflight
from tracer.kernel.abi import bpf_dir
from tracer.system import procfs

# Limits for map sizes given on the command line: the BPF hash maps are
# preallocated, so a huge number would pin that much kernel memory.
MAX_MAP_ENTRIES = 4 * 1024 * 1024
# A short struct cw_event (48 bytes) plus the ring buffer's 8-byte header.
EVENT_RECORD_BYTES = 56
DEFAULT_MAX_SOCKETS = 65536
DEFAULT_MAX_CONNS = 65536


@dataclass(frozen=True)
class ProbeConfig:
    """What to compile into the program. Sizes are entries, not bytes."""

    max_sockets: int = DEFAULT_MAX_SOCKETS  # closewait, watched and preexist maps
    max_conns: int = DEFAULT_MAX_CONNS  # creators of live connections (LRU)
    max_threads: int = 32768  # pending fd drops (LRU)
    max_targets: int = 1024
    max_latency_buckets: int = 16384  # (process, port, log2 slot) triples
    max_peers: int = 4096  # (process, peer) pairs whose connects are counted (pool diagnosis)
    max_listening_ports: int = 4096
    buffer_pages: int | None = None  # event buffer in pages (power of two); None: sized below
    filter_pids: bool = False  # record fd drops of targets only
    ring_buffer: bool | None = None  # None: when the kernel has it (5.8+)
    # Read each socket's network namespace at the offsets the kernel's BTF
    # gives (False: never; tests use it for the no-BTF fallback).
    netns: bool = True

    @property
    def max_fds(self) -> int:
        """(pid, fd) marks: a leaked socket may be held by several fds (dups)
        and processes (fork children), so twice the sockets."""
        return 2 * self.max_sockets

    @property
    def netns_offsets(self) -> tuple[int, int] | None:
        return btf.netns_offsets_here() if self.netns else None

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
        lo, hi = procfs.ephemeral_port_range()
        flags = [
            f"-I{bpf_dir()}",
            f"-DCW_MAX_SOCKS={self.max_sockets}",
            f"-DCW_MAX_PREEXIST={self.max_sockets}",
            f"-DCW_MAX_CONNS={self.max_conns}",
            f"-DCW_MAX_THREADS={self.max_threads}",
            f"-DCW_MAX_TARGETS={self.max_targets}",
            f"-DCW_RINGBUF_PAGES={self.pages}",
            f"-DCW_MAX_LAT={self.max_latency_buckets}",
            f"-DCW_MAX_FDS={self.max_fds}",
            f"-DCW_MAX_PEERS={self.max_peers}",
            f"-DCW_MAX_LISTEN={self.max_listening_ports}",
            f"-DCW_EPHEMERAL_LO={lo}",
            f"-DCW_EPHEMERAL_HI={hi}",
        ]
        offsets = self.netns_offsets
        if offsets is not None:
            flags += [f"-DCW_OFF_SKC_NET={offsets[0]}", f"-DCW_OFF_NET_INUM={offsets[1]}"]
        if use_rb:
            flags.append("-DCW_USE_RINGBUF")
        if self.filter_pids:
            flags.append("-DCW_FILTER_PIDS")
        return flags
