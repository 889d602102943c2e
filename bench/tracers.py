"""The tracers under test, each a real process started as a user would.

One Tracer runs one command; its stdout and stderr are read by threads that
count lines (the events a printing tracer delivered) and lost-event
reports. A printing tracer can be given a pseudo-terminal for stdout: a
terminal is where people run tcpstates and bpftrace one-liners, and it
makes their output line-buffered (one write() per event), which is a large
part of what they cost. ClosewaitWatch adds the parsing of closewait's JSON
lines.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import tty
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field

from bench import env, procstat

BPFTRACE_PRINT = (
    "tracepoint:sock:inet_sock_set_state "
    '{ printf("%d %s:%d -> %d %d\\n", pid, comm, args->sport, args->oldstate, args->newstate); }'
)
BPFTRACE_COUNT = (
    "tracepoint:sock:inet_sock_set_state { @[args->oldstate, args->newstate] = count(); }"
)

# "Possibly lost 12 samples" (libbcc's perf reader, tcpstates) and
# "Lost 12 events" (bpftrace).
LOST_RE = re.compile(rb"(?:Possibly lost|Lost) (\d+) (?:samples|events)")


class Pump(threading.Thread):
    """Reads one fd to EOF: counts lines, keeps the first bytes, calls on_line."""

    def __init__(
        self,
        fd: int,
        on_line: Callable[[bytes, float], None] | None = None,
        changed: threading.Condition | None = None,
    ) -> None:
        super().__init__(daemon=True)
        self.fd = fd
        self.on_line = on_line
        self.changed = changed or threading.Condition()
        self.lines = 0
        self.lost = 0  # sum of the lost-event reports seen
        self.head = bytearray()  # the first 64 KiB, for readiness and errors
        self.tail = b""
        self.done = False
        self.mark: bytes | None = None  # a text to time: when it first arrived
        self.mark_t: float | None = None

    def run(self) -> None:
        partial = carry = b""
        while True:
            try:
                chunk = os.read(self.fd, 1 << 16)
            except OSError:  # EIO: the other side of a pty closed
                chunk = b""
            now = time.monotonic()
            if not chunk:
                break
            if len(self.head) < 1 << 16:
                self.head += chunk[: (1 << 16) - len(self.head)]
            if self.mark is not None and self.mark_t is None and self.mark in self.head:
                self.mark_t = now  # the read's own time: a waiter wakes up later
            self.lines += chunk.count(b"\n")
            prefix = carry[-64:]
            if b"ost " in prefix[-8:] + chunk:
                # Count the reports that end in this chunk (one may straddle
                # the previous chunk's last bytes).
                self.lost += sum(
                    int(m.group(1))
                    for m in LOST_RE.finditer(prefix + chunk)
                    if m.end() > len(prefix)
                )
            carry = chunk
            if self.on_line is not None:
                parts = (partial + chunk).split(b"\n")
                partial = parts.pop()
                for line in parts:
                    self.on_line(line, now)
            self.tail = (self.tail + chunk)[-4096:]
            with self.changed:
                self.changed.notify_all()
        os.close(self.fd)
        with self.changed:
            self.done = True
            self.changed.notify_all()


@dataclass
class TracerSpec:
    """How to run one tracer and tell when it is attached."""

    name: str
    argv: list[str]
    ready_text: bytes  # appears on stdout or stderr once attached
    pty: bool = False  # stdout to a pseudo-terminal
    stop_signal: int = signal.SIGINT
    header_lines: int = 0  # stdout lines that are not events
    prints_events: bool = False


def tcpstates() -> TracerSpec:
    # BCC's tcpstates uses the sock:inet_sock_set_state tracepoint when it
    # exists (BPF.tracepoint_exists), its kprobe on tcp_set_state otherwise;
    # kprobes are off on some kernels, the tracepoint is what runs here. It
    # prints its header after compiling and attaching.
    return TracerSpec(
        "tcpstates",
        ["/usr/sbin/tcpstates-bpfcc"],
        ready_text=b"SKADDR",
        pty=True,
        # SIGINT raises KeyboardInterrupt inside BCC's perf-buffer callback,
        # where it is swallowed; SIGTERM's default action ends it at once.
        stop_signal=signal.SIGTERM,
        header_lines=1,
        prints_events=True,
    )


def bpftrace_print() -> TracerSpec:
    return TracerSpec(
        "bpftrace-print",
        ["bpftrace", "-e", BPFTRACE_PRINT],
        ready_text=b"Attaching",
        pty=True,
        header_lines=1,
        prints_events=True,
    )


def bpftrace_count() -> TracerSpec:
    return TracerSpec("bpftrace-count", ["bpftrace", "-e", BPFTRACE_COUNT], ready_text=b"Attaching")


def floor(raw: bool = False) -> TracerSpec:
    argv = [sys.executable, "-m", "bench.floor", *(["--raw"] if raw else [])]
    return TracerSpec("floor-raw" if raw else "floor-map", argv, ready_text=b"ready")


class TracerFailed(RuntimeError):
    pass


class Tracer:
    """A running tracer process."""

    def __init__(self, spec: TracerSpec) -> None:
        self.spec = spec
        self.changed = threading.Condition()
        self.t_launch = time.monotonic()
        out_r = None
        if spec.pty:
            out_r, out_w = os.openpty()
            tty.setraw(out_w)  # no \n -> \r\n translation, no echo
        else:
            out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        self.proc = subprocess.Popen(
            spec.argv,
            stdin=subprocess.DEVNULL,
            stdout=out_w,
            stderr=err_w,
            cwd=env.ROOT,
            start_new_session=True,  # a Ctrl-C at the bench does not reach it
        )
        os.close(out_w)
        os.close(err_w)
        self.pid = self.proc.pid
        self.out = Pump(out_r, self._on_stdout_line(), self.changed)
        self.err = Pump(err_r, None, self.changed)
        self.out.mark = self.err.mark = spec.ready_text
        self.out.start()
        self.err.start()
        self.ready_s: float | None = None

    def _on_stdout_line(self) -> Callable[[bytes, float], None] | None:
        return None

    # -- lifecycle -----------------------------------------------------------

    def _is_ready(self) -> bool:
        return self.spec.ready_text in self.out.head or self.spec.ready_text in self.err.head

    def wait_ready(self, timeout: float = 90.0, settle: float = 0.0) -> float:
        """Block until attached; return seconds from launch. Raises TracerFailed.

        settle: then wait this long more. Some tools print their ready text a
        moment before the last program is attached (bpftrace's "Attaching"),
        and closewait's first refresh runs just after its line.
        """
        deadline = self.t_launch + timeout
        with self.changed:
            while not self._is_ready():
                if self.proc.poll() is not None:
                    raise TracerFailed(f"{self.spec.name} exited: {self.diagnostic()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TracerFailed(f"{self.spec.name} not ready in {timeout}s")
                self.changed.wait(min(left, 0.1))
        # When the ready text arrived, not when this thread noticed (up to
        # 0.1 s later): otherwise a report read meanwhile may seem earlier.
        arrived = [p.mark_t for p in (self.out, self.err) if p.mark_t is not None]
        self.ready_s = (min(arrived) if arrived else time.monotonic()) - self.t_launch
        time.sleep(settle)
        return self.ready_s

    def diagnostic(self) -> str:
        text = (bytes(self.err.head) + self.err.tail[-500:]).decode("utf-8", "replace")
        return " | ".join(text.strip().splitlines()[-3:])[:400]

    def stop(self, timeout: float = 20.0) -> int:
        """Signal, wait for the exit and the end of its output; kill if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(self.spec.stop_signal)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.out.join(10)
        self.err.join(10)
        return self.proc.returncode

    # -- readings ------------------------------------------------------------

    def cpu(self) -> procstat.CpuTimes | None:
        return procstat.cpu(self.pid)

    def memory(self) -> dict[str, float]:
        return procstat.memory(self.pid)

    def printed(self) -> int:
        """Event lines printed so far (printing tracers)."""
        return max(0, self.out.lines - self.spec.header_lines)

    def lost(self) -> int:
        """Events reported lost so far."""
        return self.out.lost + self.err.lost


# -- closewait ---------------------------------------------------------------

_TYPE_RE = re.compile(rb'\{\s*"type"\s*:\s*"(\w+)"')


@dataclass
class Summary:
    """One `type: summary` line and what came with it."""

    index: int  # 0 for the first report
    t: float  # time.monotonic() when the line arrived
    obj: dict
    leak_lines: int  # leak lines of this report

    def leaks_of(self, pids: set[int]) -> int:
        by_pid = self.obj.get("leaks_by_pid", {})
        return sum(n for pid, n in by_pid.items() if int(pid) in pids)


@dataclass
class ClosewaitOutput:
    summaries: list[Summary] = field(default_factory=list)
    leaks: list[tuple[float, dict]] = field(default_factory=list)  # only with keep_leaks
    ended: list[tuple[float, bytes]] = field(default_factory=list)  # raw: parsed when asked
    notices: list[str] = field(default_factory=list)


class ClosewaitWatch(Tracer):
    """`closewait watch ... --json`, its output parsed as it arrives."""

    def __init__(
        self,
        args: list[str],
        name: str = "closewait",
        keep_leaks: bool = False,
        command: list[str] | None = None,
    ) -> None:
        self.keep_leaks = keep_leaks
        self.output = ClosewaitOutput()
        self._leak_lines = 0
        spec = TracerSpec(
            name,
            [*(command or env.closewait_argv()), "watch", "--json", *args],
            ready_text=b"attached in",
            stop_signal=signal.SIGTERM,
        )
        super().__init__(spec)

    def _on_stdout_line(self) -> Callable[[bytes, float], None]:
        return self._line

    def _line(self, line: bytes, t: float) -> None:
        m = _TYPE_RE.match(line)
        kind = m.group(1) if m else None
        o = self.output
        if kind == b"leak":
            self._leak_lines += 1
            if self.keep_leaks:
                o.leaks.append((t, json.loads(line)))
        elif kind == b"summary":
            o.summaries.append(Summary(len(o.summaries), t, json.loads(line), self._leak_lines))
            self._leak_lines = 0
        elif kind == b"ended":
            o.ended.append((t, line))
        elif kind == b"notice":
            o.notices.append(json.loads(line).get("message", ""))

    def attached_in(self) -> float | None:
        """closewait's own figure: 'attached in X.XXs' on stderr."""
        m = re.search(rb"attached in ([0-9.]+)s", bytes(self.err.head))
        return float(m.group(1)) if m else None

    def wait_summary(self, predicate: Callable[[Summary], bool], timeout: float) -> Summary:
        """The first summary (already received or to come) that satisfies predicate."""
        deadline = time.monotonic() + timeout
        checked = 0
        with self.changed:
            while True:
                summaries = self.output.summaries
                for s in summaries[checked:]:
                    if predicate(s):
                        return s
                checked = len(summaries)
                if self.out.done:
                    raise TracerFailed(f"closewait ended: {self.diagnostic()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TracerFailed(f"no matching closewait report in {timeout:.0f}s")
                self.changed.wait(min(left, 0.1))

    def last_summary(self) -> Summary | None:
        return self.output.summaries[-1] if self.output.summaries else None

    def lost(self) -> int:
        s = self.last_summary()
        return int(s.obj.get("events_lost", 0)) if s else 0

    def ended(self) -> list[tuple[float, dict]]:
        return [(t, json.loads(raw)) for t, raw in self.output.ended]


class ClosewaitExporter(Tracer):
    """`closewait exporter ...` on a free loopback port, read by scraping it."""

    def __init__(self, args: list[str], name: str = "closewait-exporter") -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        spec = TracerSpec(
            name,
            [*env.closewait_argv(), "exporter", "--listen", f"127.0.0.1:{self.port}", *args],
            ready_text=b"attached in",
            stop_signal=signal.SIGTERM,
        )
        super().__init__(spec)

    def scrape(self, timeout: float = 10.0) -> tuple[float, bytes]:
        """(seconds the GET /metrics took, the body)."""
        t = time.monotonic()
        url = f"http://127.0.0.1:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=timeout) as r:
            body = r.read()
        return time.monotonic() - t, body

    def metric(self, name: str, body: bytes | None = None) -> float | None:
        """The sum of a metric's samples in a scrape (None if it has none)."""
        if body is None:
            body = self.scrape()[1]
        values = [
            float(m.group(1))
            for m in re.finditer(rb"^" + name.encode() + rb"(?:\{[^}]*\})? (\S+)$", body, re.M)
        ]
        return sum(values) if values else None

    def lost(self) -> int:
        try:
            return int(self.metric("closewait_events_lost_total") or 0)
        except OSError:
            return 0
