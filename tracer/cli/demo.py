"""`closewait demo`: run the leaky (or healthy) workload and watch its client.

Starts tracer.demo.workload's server and client as child processes, watches
the client with the same code path as `closewait watch --pid`, and stops
both children at the end, whatever happens.
"""

from __future__ import annotations

import subprocess
import sys

import click

from tracer.cli.options import CONTEXT, DURATION, EXIT_CODES_EPILOG
from tracer.cli.watch import WatchRequest, attached, status_line, watch_targets
from tracer.core.errors import CloseWaitError
from tracer.core.exitcodes import ExitStatus
from tracer.demo.workload import DEFAULT_POOL, IDLE_TIMEOUT_S
from tracer.kernel import preflight
from tracer.system.targets import Targets

DEMO_MIN_AGE_S = 2.0  # with a 2 s interval: the verdict's window is 10 s
DEMO_INTERVAL_S = 2.0


def _spawn(*args: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tracer.demo.workload", *args],
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


def run_demo(healthy: bool, duration_s: float, json_lines: bool, debug: bool = False) -> None:
    preflight.require(preflight.check_root)
    mode = "healthy" if healthy else "leaky"
    procs: list[subprocess.Popen] = []
    req = WatchRequest(
        pids=(),
        all_processes=False,
        interval_s=DEMO_INTERVAL_S,
        min_age_s=DEMO_MIN_AGE_S,
        duration_s=duration_s,
        json_lines=json_lines,
        debug=debug,
    )
    # Attach first, so that the kernel sees every connection being opened.
    with attached(req) as (probe, stop):
        try:
            server, port = _spawn("server")
            procs.append(server)
            client, _ = _spawn("client", port, mode)
            procs.append(client)
            status_line(
                f"demo: HTTP server pid {server.pid} on 127.0.0.1:{port} closes idle "
                f"keep-alive connections after {IDLE_TIMEOUT_S:g}s; {mode} client "
                f"pid {client.pid} sends 2 requests/s through a pool of {DEFAULT_POOL} "
                "connections and "
                + ("releases every response" if healthy else "never consumes nor releases one")
            )
            status_line(
                f"demo: watching pid {client.pid} for {duration_s:g}s "
                f"(min-age {DEMO_MIN_AGE_S:g}s); Ctrl-C stops early"
            )
            watcher = watch_targets(probe, Targets((client.pid,)), req, stop)
            leaks = len(watcher.leaks())
            stats = probe.stats()
        finally:
            _stop(procs)
    expected = (
        "expected none"
        if healthy
        else f"expected: up to {DEFAULT_POOL}, then the pool is exhausted and its threads block"
    )
    status_line(
        f"demo: {leaks} leaked sockets after {duration_s:g}s ({expected}); the kernel saw "
        f"{stats.fins} FINs and {stats.cw_left} CLOSE_WAIT exits, and sent user space "
        f"{stats.events} events"
    )


@click.command(context_settings=CONTEXT, epilog=EXIT_CODES_EPILOG)
@click.option("--healthy", is_flag=True, help="Run the same workload with a client that releases.")
@click.option(
    "-d", "--duration", type=DURATION, default="20s", show_default=True, help="How long to run."
)
@click.option("--json", "json_lines", is_flag=True, help="JSON lines instead of a table.")
@click.pass_context
def demo(ctx: click.Context, healthy: bool, duration: float, json_lines: bool) -> None:
    """Start a leaky HTTP client and server, and watch the client leak.

    The server closes idle keep-alive connections after 0.5 s; the client takes
    a connection from its pool of 8 for each request and, in the leaky mode,
    never reads the response nor returns the connection, like an HTTP client
    whose responses are not consumed: after 8 requests the pool is exhausted
    and its threads block, which the report says about 10 s later. With
    --healthy it releases them.
    """
    debug = bool(ctx.obj and ctx.obj.get("debug"))
    run_demo(healthy=healthy, duration_s=duration, json_lines=json_lines, debug=debug)
