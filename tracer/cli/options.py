"""Option types and option groups shared by the commands.

Defaults that describe the kernel side come from tracer.kernel.config, so
`--help` and the program cannot disagree.
"""

from __future__ import annotations

import click

from tracer.core.exitcodes import exit_code_table
from tracer.kernel.config import DEFAULT_MAX_CONNS, DEFAULT_MAX_SOCKETS, MAX_MAP_ENTRIES
from tracer.report.durations import parse_duration

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


def probe_options(f):
    """Options that size the kernel side, shared by the commands that load it."""
    f = click.option(
        "--max-sockets",
        type=click.IntRange(1024, MAX_MAP_ENTRIES),
        default=DEFAULT_MAX_SOCKETS,
        show_default=True,
        help="Sockets in CLOSE_WAIT the kernel tracks at once (hash map entries).",
    )(f)
    f = click.option(
        "--max-conns",
        type=click.IntRange(1024, MAX_MAP_ENTRIES),
        default=DEFAULT_MAX_CONNS,
        show_default=True,
        help="Live connections whose creator is remembered (LRU map entries).",
    )(f)
    f = click.option(
        "--buffer-pages",
        type=click.IntRange(1, 65536),
        default=None,
        help="Event buffer size in pages, a power of two. Default: room for every "
        "watched socket to end at once (2 x --max-sockets x 56 bytes; 8 MB). Before "
        "Linux 5.8 (no BPF ring buffer) each CPU gets a perf buffer of this size.",
    )(f)
    f = click.option("--perf-buffer", is_flag=True, hidden=True, help="Force the perf buffer.")(f)
    f = click.option(
        "--ebpf", is_flag=True, hidden=True, help="Print the BPF program and its flags, then exit."
    )(f)
    return f


def threads_option(f):
    """--threads, shared by watch and snapshot."""
    return click.option(
        "--threads",
        is_flag=True,
        help="For each process with leaks, show its threads (JVM: jcmd Thread.print, a "
        "sub-millisecond safepoint; Python: py-spy dump, without stopping it; else each "
        "opener thread's state): which wait for a pooled connection, called from where. "
        "Taken at the first report with leaks and when the verdict changes.",
    )(f)


def timing_options(what_interval: str):
    """--interval (between reports or refreshes) and --min-age."""

    def decorate(f):
        f = click.option(
            "--min-age",
            type=DURATION,
            default="5s",
            show_default=True,
            help="How long a socket must sit in CLOSE_WAIT to count as leaked.",
        )(f)
        return click.option(
            "-i",
            "--interval",
            type=DURATION,
            default="2s",
            show_default=True,
            help=f"Time between {what_interval}.",
        )(f)

    return decorate


def target_options(verb: str):
    """--pid (repeatable) and --all, exactly one of which must be given."""

    def decorate(f):
        f = click.option(
            "-a", "--all", "all_processes", is_flag=True, help="Every process on the host."
        )(f)
        return click.option(
            "-p",
            "--pid",
            "pids",
            type=Pid(),
            multiple=True,
            help=f"Process to {verb} (repeatable).",
        )(f)

    return decorate


def require_targets(pids: tuple[int, ...], all_processes: bool) -> None:
    if bool(pids) == all_processes:
        raise click.UsageError("give either --pid PID (repeatable) or --all")
