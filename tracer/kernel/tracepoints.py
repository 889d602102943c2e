"""Every tracepoint closewait uses, in one table: preflight checks it, the
probe attaches from it, and tests compare it with bpf/closewait.bpf.c.

Two kinds. Those BCC attaches at load (TRACEPOINT_PROBE in the C file) are
required: without them nothing works. The close probes (a C function named
in `function`) are optional and attached only while a leak is watched:
enabling any syscall tracepoint sends every syscall of every task through
the kernel's slow path, and io_uring's fires on every submission. Each
missing one costs one kind of attribution, said in `without`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Tracepoint:
    category: str
    event: str
    required: bool
    function: str | None = None  # C function attached by name while leaks are watched
    without: str = ""  # what is lost when an optional one is missing
    # (field, byte offset, size) the C function reads from the record; the
    # probe is attached only where tracefs says the layout is that.
    layout: tuple[tuple[str, int, int], ...] = ()

    @property
    def name(self) -> str:
        return f"{self.category}:{self.event}"


# struct cw_sys_enter: the syscall number at 8, then 8-byte arguments.
def _sys(*args: str) -> tuple[tuple[str, int, int], ...]:
    return (("__syscall_nr", 8, 4), *((a, 16 + 8 * i, 8) for i, a in enumerate(args)))


TRACEPOINTS = (
    Tracepoint("sock", "inet_sock_set_state", True),
    Tracepoint("sched", "sched_process_exit", True),
    Tracepoint("sched", "sched_process_exec", True),
    Tracepoint("tcp", "tcp_receive_reset", True),
    Tracepoint(
        "syscalls",
        "sys_enter_close",
        False,
        "cw_sys_enter_close",
        "close() of a leaked fd another fd still holds is not reported at once, and "
        "closes are attributed to a thread but not to an fd",
        _sys("fd"),
    ),
    # close_range(2) exists since Linux 5.9.
    Tracepoint(
        "syscalls",
        "sys_enter_close_range",
        False,
        "cw_sys_enter_close_range",
        "closes through close_range()/closefrom() are not attributed to an fd",
        _sys("fd", "max_fd", "flags"),
    ),
    # arm64 has dup3 only.
    Tracepoint(
        "syscalls",
        "sys_enter_dup2",
        False,
        "cw_sys_enter_dup",
        "dup2() over a leaked fd is not attributed",
        _sys("oldfd", "newfd"),
    ),
    Tracepoint(
        "syscalls",
        "sys_enter_dup3",
        False,
        "cw_sys_enter_dup",
        "dup3() over a leaked fd is not attributed",
        _sys("oldfd", "newfd"),
    ),
    # Linux 5.18+ (io_uring_submit_sqe before, with another layout).
    Tracepoint(
        "io_uring",
        "io_uring_submit_req",
        False,
        "cw_io_uring_submit",
        "an io_uring close of a leaked fd is noticed at the next report instead of at once",
        (("opcode", 32, 1),),
    ),
)

CLOSE_PROBES = {tp.name: tp.function for tp in TRACEPOINTS if tp.function}


def present(root: Path | None, tp: Tracepoint) -> bool:
    """Whether the tracefs mounted at root has this tracepoint."""
    return root is not None and (root / "events" / tp.category / tp.event / "format").is_file()


def format_fields(root: Path, tp: Tracepoint) -> dict[str, tuple[int, int]]:
    """field name -> (offset, size), from the tracepoint's tracefs format file."""
    out: dict[str, tuple[int, int]] = {}
    text = (root / "events" / tp.category / tp.event / "format").read_text()
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("field:"):
            continue
        parts = dict(p.strip().split(":", 1) for p in line.split(";") if ":" in p)
        name = parts["field"].split()[-1].split("[")[0]
        out[name] = (int(parts["offset"]), int(parts["size"]))
    return out


def usable(root: Path | None, tp: Tracepoint) -> bool:
    """Present, with the record layout its C function reads."""
    if not present(root, tp):
        return False
    if not tp.layout:
        return True
    assert root is not None
    fields = format_fields(root, tp)
    return all(fields.get(name) == (off, size) for name, off, size in tp.layout)
