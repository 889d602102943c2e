"""Command line: argument parsing and error reporting only.

Every failure the user can cause or fix leaves as one line on stderr and an
ExitStatus; nothing here prints a traceback unless --debug is given.
"""

from __future__ import annotations

import os
import sys
import traceback

import click

from tracer import __version__
from tracer.durations import parse_duration
from tracer.errors import CloseWaitError
from tracer.exitcodes import ExitStatus, exit_code_table

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
EXIT_CODES_EPILOG = "\b\nExit status:\n" + exit_code_table()


class Duration(click.ParamType):
    """500ms, 5s, 2m, 1h or plain seconds."""

    name = "duration"

    def convert(self, value, param, ctx):
        if isinstance(value, float):
            return value
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class Pid(click.ParamType):
    """A positive process id."""

    name = "pid"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        text = str(value).strip()
        if not text.isdigit() or int(text) <= 0:
            self.fail(f"{value!r} is not a process id (a positive integer)", param, ctx)
        return int(text)


DURATION = Duration()


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, prog_name="closewait")
@click.option("--debug", is_flag=True, help="Show tracebacks and BCC's compiler output.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Find TCP sockets a process never closed after the peer did (CLOSE_WAIT leaks)."""
    ctx.obj = {"debug": debug}


def probe_options(f):
    """Options that size the kernel side, shared by the commands that load it."""
    f = click.option(
        "--max-sockets",
        type=click.IntRange(1024, 4 * 1024 * 1024),
        default=65536,
        show_default=True,
        help="Sockets in CLOSE_WAIT the kernel tracks at once (hash map entries).",
    )(f)
    f = click.option(
        "--max-conns",
        type=click.IntRange(1024, 4 * 1024 * 1024),
        default=65536,
        show_default=True,
        help="Live connections whose creator is remembered (LRU map entries).",
    )(f)
    f = click.option(
        "--buffer-pages",
        type=click.IntRange(1, 65536),
        default=None,
        help="Event buffer size in pages, a power of two. Default: room for every "
        "watched socket to end at once (2 x --max-sockets x 56 bytes; 8 MB).",
    )(f)
    f = click.option("--perf-buffer", is_flag=True, hidden=True, help="Force the perf buffer.")(f)
    f = click.option(
        "--ebpf", is_flag=True, hidden=True, help="Print the BPF program and its flags, then exit."
    )(f)
    return f


@cli.command(context_settings=CONTEXT, epilog=EXIT_CODES_EPILOG)
@click.option(
    "-p", "--pid", "pids", type=Pid(), multiple=True, help="Process to watch (repeatable)."
)
@click.option("-a", "--all", "all_processes", is_flag=True, help="Watch every process.")
@click.option(
    "-i", "--interval", type=DURATION, default="2s", show_default=True, help="Time between reports."
)
@click.option(
    "--min-age",
    type=DURATION,
    default="5s",
    show_default=True,
    help="How long a socket must sit in CLOSE_WAIT to count as leaked.",
)
@click.option("-d", "--duration", type=DURATION, default=None, help="Stop after this long.")
@click.option("--json", "json_lines", is_flag=True, help="JSON lines instead of a table.")
@click.option(
    "--rows",
    type=click.IntRange(0),
    default=100,
    show_default=True,
    help="Leak rows per table report, oldest first (0: all). JSON lists every leak.",
)
@probe_options
@click.pass_context
def watch(
    ctx: click.Context,
    pids: tuple[int, ...],
    all_processes: bool,
    interval: float,
    min_age: float,
    duration: float | None,
    json_lines: bool,
    rows: int,
    max_sockets: int,
    max_conns: int,
    buffer_pages: int | None,
    perf_buffer: bool,
    ebpf: bool,
) -> None:
    """Report, live, the sockets of PID in CLOSE_WAIT that it never closed.

    Each report lists the leaking file descriptors oldest first: PID, COMM,
    FD, endpoints, AGE since the peer's FIN (~ marks an estimate, for sockets
    already in CLOSE_WAIT when tracing began), unread bytes (RECV-Q) and the
    thread that opened the connection. A line is printed when a leak ends.
    Stops on Ctrl-C, SIGTERM, --duration or when every PID has exited.
    """
    if ebpf:
        from tracer.kernel_probe import ProbeConfig, program_text

        config = ProbeConfig(
            max_sockets=max_sockets,
            max_conns=max_conns,
            buffer_pages=buffer_pages,
            filter_pids=not all_processes,
            ring_buffer=False if perf_buffer else None,
        )
        click.echo(program_text(config))
        return
    if bool(pids) == all_processes:
        raise click.UsageError("give either --pid PID (repeatable) or --all")
    if interval <= 0:
        raise click.BadParameter("must be greater than 0", param_hint="'--interval'")
    from tracer.session import WatchRequest, run_watch

    run_watch(
        WatchRequest(
            pids=pids,
            all_processes=all_processes,
            interval_s=interval,
            min_age_s=min_age,
            duration_s=duration,
            json_lines=json_lines,
            rows=rows or None,
            max_sockets=max_sockets,
            max_conns=max_conns,
            buffer_pages=buffer_pages,
            perf_buffer=perf_buffer,
        )
    )


@cli.command(context_settings=CONTEXT, epilog=EXIT_CODES_EPILOG)
@click.option(
    "-p", "--pid", "pids", type=Pid(), multiple=True, help="Process to inspect (repeatable)."
)
@click.option("-a", "--all", "all_processes", is_flag=True, help="Every process on the host.")
@click.option(
    "--min-age",
    type=DURATION,
    default="0",
    show_default=True,
    help="Only sockets at least this long in CLOSE_WAIT (estimated).",
)
@click.option(
    "--leaks-only",
    is_flag=True,
    help="With --all, skip the per-process triage table and list leaks only.",
)
@click.option("--json", "json_lines", is_flag=True, help="JSON lines instead of tables.")
def snapshot(
    pids: tuple[int, ...], all_processes: bool, min_age: float, leaks_only: bool, json_lines: bool
) -> None:
    """List the sockets in CLOSE_WAIT that PID holds now, without BPF.

    Works where BCC, kernel headers or bpf() are missing: it reads sock_diag
    (in every network namespace of the targets) and /proc. AGE is estimated
    from tcp_info (~). Every process's fds are scanned, so each leak lists all
    its holders; sockets no process holds are counted. With --all, a triage
    table ranks processes by leaked sockets, with open fds and fd limit.
    """
    if bool(pids) == all_processes:
        raise click.UsageError("give either --pid PID (repeatable) or --all")
    from tracer.snapshot import run_snapshot

    run_snapshot(pids, all_processes, min_age, json_lines, triage=all_processes and not leaks_only)


@cli.command(context_settings=CONTEXT, epilog=EXIT_CODES_EPILOG)
def doctor() -> None:
    """Check that closewait can run here; print each result and its fix."""
    from tracer.doctor import run_doctor

    status = run_doctor()
    if status != ExitStatus.OK:
        sys.exit(int(status))


@cli.command(context_settings=CONTEXT, epilog=EXIT_CODES_EPILOG)
@click.option("--healthy", is_flag=True, help="Run the same workload with a client that releases.")
@click.option(
    "-d", "--duration", type=DURATION, default="20s", show_default=True, help="How long to run."
)
@click.option("--json", "json_lines", is_flag=True, help="JSON lines instead of a table.")
def demo(healthy: bool, duration: float, json_lines: bool) -> None:
    """Start a leaky HTTP client and server, and watch the client leak.

    The server closes idle keep-alive connections after 0.5 s; the client takes
    a connection from its pool for each request and, in the leaky mode, never
    reads the response nor returns the connection, like an HTTP client whose
    responses are not consumed. With --healthy it releases them.
    """
    from tracer.demo import run_demo

    run_demo(healthy=healthy, duration_s=duration, json_lines=json_lines)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI and map every error to one line and an exit status."""
    debug = os.environ.get("CLOSEWAIT_DEBUG") == "1" or "--debug" in (argv or sys.argv[1:])
    try:
        cli.main(args=argv, prog_name="closewait", standalone_mode=False)
    except click.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
        _fail(ExitStatus.USAGE, exc.format_message() + hint)
    except click.ClickException as exc:
        _fail(ExitStatus.USAGE, exc.format_message())
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        _fail(ExitStatus.INTERRUPTED, "interrupted")
    except CloseWaitError as exc:
        if debug:
            traceback.print_exc()
        _fail(exc.status, exc.message)
    except KeyboardInterrupt:
        _fail(ExitStatus.INTERRUPTED, "interrupted")
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): not an error worth a message.
        _quiet_stdout()
        sys.exit(int(ExitStatus.OK))
    except Exception as exc:  # last resort: still one line, no traceback
        if debug:
            traceback.print_exc()
        _fail(
            ExitStatus.INTERNAL, f"internal error: {type(exc).__name__}: {exc} (rerun with --debug)"
        )


def _quiet_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass


def _fail(status: ExitStatus, message: str) -> None:
    first = " ".join(message.split())  # always exactly one line
    sys.stderr.write(f"closewait: {first}\n")
    sys.stderr.flush()
    sys.exit(int(status))
