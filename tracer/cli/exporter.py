"""`closewait exporter`: the watch engine, always on, as Prometheus metrics.

Set-up order, fastest and clearest failure first: root -> targets exist ->
the listening socket (a busy port fails before anything is compiled) ->
BCC, tracepoints, headers -> compile and attach -> serve and loop. The HTTP
server starts before the BPF program is compiled, so /healthz answers
(503, starting) from the first second. On SIGTERM/SIGINT the loop ends, the
server stops and the BPF programs are detached: exit 0.
"""

from __future__ import annotations

import time

import click

from tracer.cli.options import (
    CONTEXT,
    EXIT_CODES_EPILOG,
    probe_options,
    target_options,
    timing_options,
)
from tracer.cli.watch import (
    WatchRequest,
    attached,
    request_or_print,
    status_line,
    who_is_watched,
)
from tracer.engine.httpd import DEFAULT_LISTEN
from tracer.kernel import preflight
from tracer.report.prometheus import DEFAULT_MAX_PEERS
from tracer.system.targets import Targets


@click.command(context_settings=CONTEXT, epilog=EXIT_CODES_EPILOG)
@target_options("watch")
@click.option(
    "--listen",
    default=DEFAULT_LISTEN,
    show_default=True,
    help="ADDR:PORT to serve /metrics, /healthz and / on ([::1]:PORT for IPv6, "
    ":PORT for every interface).",
)
@timing_options("refreshes")
@click.option(
    "--max-peers",
    type=click.IntRange(1, 1000),
    default=DEFAULT_MAX_PEERS,
    show_default=True,
    help="Peers per process group in closewait_leaked_sockets; the rest are summed as "
    'peer="other".',
)
@click.option(
    "--labels",
    "extra_labels",
    type=click.Choice(["pid"]),
    multiple=True,
    help="Extra series labels: pid (one series per process instead of per (comm, container); "
    "pid churn then makes new series).",
)
@click.option("--tls-cert", type=click.Path(dir_okay=False), help="Serve HTTPS with this cert.")
@click.option(
    "--tls-key", type=click.Path(dir_okay=False), help="Private key of --tls-cert (if separate)."
)
@click.option(
    "--json",
    "json_lines",
    is_flag=True,
    help="Also write each leak's lifecycle as JSON lines "
    "on stdout (leak when found, fd_closed, ended, notice).",
)
@probe_options
@click.pass_context
def exporter(
    ctx: click.Context,
    pids: tuple[int, ...],
    all_processes: bool,
    listen: str,
    interval: float,
    min_age: float,
    max_peers: int,
    extra_labels: tuple[str, ...],
    tls_cert: str | None,
    tls_key: str | None,
    json_lines: bool,
    max_sockets: int,
    max_conns: int,
    buffer_pages: int | None,
    perf_buffer: bool,
    ebpf: bool,
) -> None:
    """Serve Prometheus metrics of leaked sockets, continuously (default: every process).

    Loads the BPF program once and runs the watch engine until SIGTERM or
    Ctrl-C, serving /metrics (Prometheus text, or OpenMetrics when the
    scraper asks for it), /healthz and a small / page. Series are per
    (comm, container), summed over processes; see README "Exporter".
    """
    if pids and all_processes:
        raise click.UsageError("give either --pid PID (repeatable) or --all, not both")
    if tls_key and not tls_cert:
        raise click.BadParameter("needs --tls-cert", param_hint="'--tls-key'")
    req = request_or_print(
        ctx,
        ebpf,
        pids=pids,
        all_processes=not pids,
        interval_s=interval,
        min_age_s=min_age,
        duration_s=None,
        json_lines=json_lines,
        max_sockets=max_sockets,
        max_conns=max_conns,
        buffer_pages=buffer_pages,
        perf_buffer=perf_buffer,
    )
    if req is not None:
        run_exporter(req, listen, max_peers, "pid" in extra_labels, tls_cert, tls_key)


def run_exporter(
    req: WatchRequest,
    listen: str,
    max_peers: int,
    pid_label: bool,
    tls_cert: str | None,
    tls_key: str | None,
) -> None:
    from prometheus_client import CollectorRegistry

    from tracer.engine.exporter import Exporter, ExporterOptions
    from tracer.engine.httpd import MetricsServer
    from tracer.engine.watcher import Watcher
    from tracer.report.output import Output

    t0 = time.monotonic()
    preflight.require(preflight.check_root)
    targets = Targets(req.pids, req.all_processes)
    who = who_is_watched(targets)
    registry = CollectorRegistry(auto_describe=False)
    late = _Late(f"watching {who}")
    server = MetricsServer(listen, registry, late.health, late.page, tls_cert, tls_key)
    server.start()
    try:
        with attached(req) as (probe, stop):
            watcher = Watcher(probe, targets, req.min_age_s, interval_s=req.interval_s)
            try:
                ex = Exporter(
                    watcher,
                    ExporterOptions(req.interval_s, max_peers, pid_label),
                    out=Output(json_lines=True) if req.json_lines else None,
                    notice=status_line,
                )
                registry.register(ex.collector())
                late.exporter = ex
                status_line(
                    f"exporting {who} at {server.url}; attached in "
                    f"{time.monotonic() - t0:.2f}s; SIGTERM or Ctrl-C to stop"
                )
                ex.run(stop)
            finally:
                watcher.close()
    finally:
        server.stop()
    status_line("stopped: BPF programs detached")


class _Late:
    """What the HTTP side answers before the exporter exists (while the BPF
    program compiles), and through it afterwards."""

    def __init__(self, about: str) -> None:
        self.about = about
        self.exporter = None

    def health(self) -> tuple[bool, str]:
        if self.exporter is None:
            return False, "starting: compiling the BPF program"
        return self.exporter.health()

    def page(self) -> str:
        if self.exporter is None:
            return "starting: compiling the BPF program\n"
        return self.exporter.page(self.about)
