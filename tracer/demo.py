"""`closewait demo`: run the leaky (or healthy) workload and watch its client.

Starts tracer.demo_workload's server and client as child processes, watches
the client with the same code path as `closewait watch --pid`, and stops
both children at the end, whatever happens.
"""

from __future__ import annotations

import subprocess
import sys

from tracer import preflight
from tracer.demo_workload import IDLE_TIMEOUT_S
from tracer.errors import CloseWaitError
from tracer.exitcodes import ExitStatus
from tracer.output import Output
from tracer.session import status_line

DEMO_MIN_AGE_S = 2.0
DEMO_INTERVAL_S = 2.0


def _spawn(*args: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tracer.demo_workload", *args],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    line = proc.stdout.readline().strip() if proc.stdout else ""
    if not line:
        proc.kill()
        raise CloseWaitError(ExitStatus.INTERNAL, f"demo workload {args[0]} did not start")
    return proc, line


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=3)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def run_demo(healthy: bool, duration_s: float, json_lines: bool) -> None:
    preflight.require(preflight.check_root)
    preflight.require_tracer()
    from tracer.kernel_probe import KernelProbe, ProbeConfig
    from tracer.targets import Targets
    from tracer.watch import StopFlag, Watcher, WatchOptions, run

    mode = "healthy" if healthy else "leaky"
    stop = StopFlag()
    stop.install()
    procs: list[subprocess.Popen] = []
    # Attach first, so that the kernel sees every connection being opened.
    config = ProbeConfig(filter_pids=True)
    with KernelProbe(config) as probe:
        try:
            server, port = _spawn("server")
            procs.append(server)
            client, _ = _spawn("client", port, mode)
            procs.append(client)
            status_line(
                f"demo: HTTP server pid {server.pid} on 127.0.0.1:{port} closes idle "
                f"keep-alive connections after {IDLE_TIMEOUT_S:g}s; {mode} client "
                f"pid {client.pid} sends 2 requests/s and "
                + ("releases every response" if healthy else "never consumes nor releases one")
            )
            watcher = Watcher(probe, Targets((client.pid,)), DEMO_MIN_AGE_S)
            try:
                status_line(
                    f"demo: watching pid {client.pid} for {duration_s:g}s "
                    f"(min-age {DEMO_MIN_AGE_S:g}s); Ctrl-C stops early"
                )
                options = WatchOptions(DEMO_INTERVAL_S, DEMO_MIN_AGE_S, duration_s)
                run(watcher, options, Output(json_lines), stop)
                leaks = len(watcher.leaks())
                stats = probe.stats()
            finally:
                watcher.close()
        finally:
            _stop(procs)
    expected = "expected none" if healthy else "expected: growing with time"
    status_line(
        f"demo: {leaks} leaked sockets after {duration_s:g}s ({expected}); the kernel saw "
        f"{stats.fins} FINs and {stats.cw_left} CLOSE_WAIT exits, and sent user space "
        f"{stats.events} events"
    )
