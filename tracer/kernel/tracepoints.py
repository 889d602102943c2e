"""Every tracepoint closewait uses, in one table: preflight checks it, the
probe attaches from it, and tests compare it with bpf/closewait.bpf.c.

Required ones are attached by BCC at load (TRACEPOINT_PROBE): without them
nothing works. The close-family syscall ones are optional and attached only
while a leak is watched (enabling any syscall tracepoint sends every syscall
of every task through the kernel's slow path); each missing one costs one
kind of attribution, said in `without`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Tracepoint:
    category: str
    event: str
    required: bool
    function: str | None = None  # the C function attached by name (syscall probes)
    without: str = ""  # what is lost when an optional one is missing

    @property
    def name(self) -> str:
        return f"{self.category}:{self.event}"


TRACEPOINTS = (
    Tracepoint("sock", "inet_sock_set_state", True),
    Tracepoint("sched", "sched_process_exit", True),
    Tracepoint(
        "syscalls",
        "sys_enter_close",
        False,
        "cw_sys_enter_close",
        "close() of a leaked fd another fd still holds is not reported, and "
        "closes are attributed to a thread but not to an fd",
    ),
    # close_range(2) exists since Linux 5.9.
    Tracepoint(
        "syscalls",
        "sys_enter_close_range",
        False,
        "cw_sys_enter_close_range",
        "closes through close_range()/closefrom() are not attributed to an fd",
    ),
    # arm64 has dup3 only.
    Tracepoint(
        "syscalls",
        "sys_enter_dup2",
        False,
        "cw_sys_enter_dup",
        "dup2() over a leaked fd is not attributed",
    ),
    Tracepoint(
        "syscalls",
        "sys_enter_dup3",
        False,
        "cw_sys_enter_dup",
        "dup3() over a leaked fd is not attributed",
    ),
)

SYSCALL_PROBES = {tp.event: tp.function for tp in TRACEPOINTS if tp.function}


def present(root: Path | None, tp: Tracepoint) -> bool:
    """Whether the tracefs mounted at root has this tracepoint."""
    return root is not None and (root / "events" / tp.category / tp.event / "format").is_file()
