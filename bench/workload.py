"""The load generator's processes (bench/loadgen.c), driven from Python."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from bench import procstat
from bench.env import Netns

CHURN_PORT = 1000  # churn server: 1000.. client-first ports, then server-first ones
LEAK_PORT = 1200  # accept-close server for the leaking clients
PORTS = 8  # ports per protocol: spreads connections over 8 destinations


class _Proc:
    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.pid = self.proc.pid

    def readline(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise RuntimeError(f"loadgen exited ({self.proc.wait()}): {err.strip()[:300]}")
        return line

    def cpu(self) -> procstat.CpuTimes | None:
        return procstat.cpu(self.pid)

    def stop(self) -> None:
        """Close stdin (every mode exits at EOF), then make sure it is gone."""
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


class Server(_Proc):
    def __init__(self, binary: Path, ns: Netns, accept_close: bool = False) -> None:
        port = LEAK_PORT if accept_close else CHURN_PORT
        mode = ["--mode", "accept-close"] if accept_close else []
        super().__init__(
            [
                *ns.prefix(),
                str(binary),
                "server",
                "--port",
                str(port),
                "--nports",
                str(PORTS),
                *mode,
            ]
        )
        if self.readline().strip() != "ready":
            raise RuntimeError("loadgen server did not start")


class Client(_Proc):
    """Long-lived: it exists before any tracer starts, so it can be a --pid target."""

    def __init__(self, binary: Path, ns: Netns, concurrency: int) -> None:
        argv = [str(binary), "client", "--port", str(CHURN_PORT), "--nports", str(PORTS)]
        super().__init__([*ns.prefix(), *argv, "--conc", str(concurrency)])
        if self.readline().strip() != "ready":
            raise RuntimeError("loadgen client did not start")

    def start_run(self, mode: str, warmup: float, duration: float) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{mode} {warmup} {duration}\n")
        self.proc.stdin.flush()

    def result(self) -> dict:
        return json.loads(self.readline())

    def run(self, mode: str, warmup: float, duration: float) -> dict:
        self.start_run(mode, warmup, duration)
        return self.result()


class Leaker(_Proc):
    """Holds `count` sockets in CLOSE_WAIT until stopped."""

    def __init__(self, binary: Path, ns: Netns, count: int) -> None:
        super().__init__(
            [
                *ns.prefix(),
                str(binary),
                "leak",
                "--port",
                str(LEAK_PORT),
                "--nports",
                str(PORTS),
                "--count",
                str(count),
            ]
        )
        self.count = count

    def close_all(self) -> None:
        """Ask it to close() every socket (one syscall each); returns once done."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("c\n")
        self.proc.stdin.flush()
        words = self.readline().split()
        if words[:1] != ["closed"]:
            raise RuntimeError(f"loadgen leak: unexpected {' '.join(words)}")

    def wait_ready(self) -> int:
        """Block until every socket has its FIN; return how many did."""
        words = self.readline().split()
        if words[:1] != ["ready"]:
            raise RuntimeError(f"loadgen leak: unexpected {' '.join(words)}")
        return int(words[2])
