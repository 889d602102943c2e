"""Every exit status closewait can return, in one place.

`--help` and the README table are generated from / checked against this enum
(tests/test_cli_contract.py), so scripts can rely on the numbers.
"""

from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    """Process exit codes. Values are stable: they are part of the interface."""

    OK = 0
    INTERNAL = 1
    USAGE = 2
    NOT_ROOT = 3
    NO_BPF = 4
    NO_HEADERS = 5
    NO_TRACEPOINT = 6
    NO_SUCH_PROCESS = 7
    NO_DEPENDENCY = 8
    INTERRUPTED = 130

    @property
    def meaning(self) -> str:
        return _MEANINGS[self]


_MEANINGS = {
    ExitStatus.OK: "finished: --duration elapsed, Ctrl-C/SIGTERM, or every target exited",
    ExitStatus.INTERNAL: "unexpected internal error (rerun with --debug for the traceback)",
    ExitStatus.USAGE: "bad command line: unknown option, bad PID or duration, --pid with --all",
    ExitStatus.NOT_ROOT: "not running as root (BPF and other users' /proc/PID/fd need it)",
    ExitStatus.NO_BPF: "the kernel refused to load or attach the BPF program",
    ExitStatus.NO_HEADERS: "no kernel headers for BCC to compile against",
    ExitStatus.NO_TRACEPOINT: "a tracepoint closewait needs is missing, or tracefs is not mounted",
    ExitStatus.NO_SUCH_PROCESS: "a --pid names no running process",
    ExitStatus.NO_DEPENDENCY: "a required Python module (bcc, pyroute2) cannot be imported, "
    "or BCC has no writable temporary directory",
    ExitStatus.INTERRUPTED: "interrupted again (Ctrl-C or SIGTERM) while stopping: no final report",
}


def exit_code_table() -> str:
    """The exit codes as `code  meaning` lines, for --help epilogues."""
    return "\n".join(f"{int(s):>3}  {s.meaning}" for s in ExitStatus)
