"""Run the closewait command line as a user would: a real process, real output."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLOSEWAIT = [sys.executable, "-m", "tracer"]


def run_cli(
    *args: str, prefix: tuple[str, ...] = (), timeout: float = 60, **kw
) -> subprocess.CompletedProcess:
    """Run closewait to completion; prefix wraps it (setpriv, unshare...)."""
    return subprocess.run(
        [*prefix, *CLOSEWAIT, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )


class LiveCli:
    """closewait running in the background, its stdout lines collected as they come."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [*CLOSEWAIT, *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.lines: list[str] = []
        self._q: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[str] = []
        threading.Thread(target=self._pump, args=(self.proc.stdout, self._q), daemon=True).start()
        threading.Thread(target=self._drain_stderr, daemon=True).start()

    @staticmethod
    def _pump(stream, q) -> None:
        for line in stream:
            q.put(line.rstrip("\n"))
        q.put(None)

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line.rstrip("\n"))

    @property
    def stderr(self) -> str:
        return "\n".join(self._stderr)

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 15) -> str:
        """Return the first new stdout line that satisfies predicate."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching line in {timeout}s; stderr: {self.stderr}")
            try:
                line = self._q.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(
                    f"closewait ended (rc={self.proc.wait()}); stderr: {self.stderr}"
                )
            self.lines.append(line)
            if predicate(line):
                return line

    def wait_for_json(self, predicate: Callable[[dict], bool], timeout: float = 15) -> dict:
        return json.loads(self.wait_for(lambda line: predicate(json.loads(line)), timeout))

    def wait_for_attach(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while "attached in" not in self.stderr:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"closewait did not attach; stderr: {self.stderr}")
            time.sleep(0.05)

    def finish(self, timeout: float = 30) -> int:
        """Wait for exit; collect the remaining stdout lines."""
        rc = self.proc.wait(timeout=timeout)
        while True:
            line = self._q.get(timeout=5)
            if line is None:
                break
            self.lines.append(line)
        return rc

    def json_lines(self) -> list[dict]:
        return [json.loads(line) for line in self.lines]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
