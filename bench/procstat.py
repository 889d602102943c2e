"""What a process costs, read from /proc: CPU time and resident memory.

CPU: utime and stime of /proc/PID/stat (fields 14 and 15) count every
thread of the process, in clock ticks (USER_HZ, 100 per second here). The
kernel scales them to the precise runtime it accounts per thread, so their
sum is exact up to one tick (10 ms): good for refreshes that take tenths of
a second, and for the user/system split. For the churn windows (3 s, where
a tick is 0.3% of a core, a sizeable part of the 2% target) runtime()
sums the scheduler's nanosecond counters of the threads instead. Note what it
does not include: a BPF program runs in the context of whatever task hit
the tracepoint (the workload, or a softirq), so a tracer's in-kernel cost is
never charged to the tracer's process. That cost is measured as lost
workload throughput instead (bench/churn.py).

Memory: VmRSS and its split from /proc/PID/status. RssFile is clean,
file-backed pages (libbcc, LLVM, Python's own libraries) that the kernel can
drop and that other processes mapping the same files share; RssAnon is the
process's own heap, the part that grows with what it tracks.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuTimes:
    user: float  # seconds
    system: float

    @property
    def total(self) -> float:
        return self.user + self.system

    def __sub__(self, other: CpuTimes) -> CpuTimes:
        return CpuTimes(self.user - other.user, self.system - other.system)


def parse_stat(text: str) -> CpuTimes:
    """utime and stime from the text of /proc/PID/stat."""
    # comm (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return CpuTimes(int(fields[11]) / TICKS, int(fields[12]) / TICKS)


def cpu(pid: int) -> CpuTimes | None:
    """CPU used so far by every thread of pid; None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return parse_stat(f.read())
    except (OSError, ValueError):
        return None


def runtime(pid: int) -> float | None:
    """Seconds on CPU of every live thread of pid, from the scheduler's own
    nanosecond counter (/proc/PID/task/TID/schedstat, first field): exact,
    where utime+stime move in 10 ms ticks. Used for the short churn windows."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # the thread exited meanwhile
    return total / 1e9


@functools.lru_cache(maxsize=1)
def ksoftirqd_pids() -> tuple[int, ...]:
    """The per-CPU softirq threads (softirq work the kernel defers to them)."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/comm") as f:
                    if f.read().startswith("ksoftirqd/"):
                        out.append(int(name))
            except OSError:
                continue
    return tuple(out)


MEMORY_FIELDS = ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM")


def parse_status(text: str) -> dict[str, float]:
    """The memory fields of /proc/PID/status, in MB (10^6 bytes)."""
    out = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in MEMORY_FIELDS:
            out[key] = round(int(rest.split()[0]) * 1024 / 1e6, 1)
    return out


def memory(pid: int) -> dict[str, float]:
    try:
        with open(f"/proc/{pid}/status") as f:
            return parse_status(f.read())
    except OSError:
        return {}
