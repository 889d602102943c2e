"""The `closewait` command group and its entry point.

Every failure the user can cause or fix leaves as one line on stderr and an
ExitStatus; nothing here prints a traceback unless --debug is given.
"""

from __future__ import annotations

import os
import sys
import traceback

import click

from tracer import __version__
from tracer.cli.demo import demo
from tracer.cli.doctor import doctor
from tracer.cli.exporter import exporter
from tracer.cli.options import CONTEXT
from tracer.cli.snapshot import snapshot
from tracer.cli.watch import watch
from tracer.core.errors import CloseWaitError
from tracer.core.exitcodes import ExitStatus


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, prog_name="closewait")
@click.option("--debug", is_flag=True, help="Show tracebacks and BCC's compiler output.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Find TCP sockets a process never closed after the peer did (CLOSE_WAIT leaks)."""
    ctx.obj = {"debug": debug}


for command in (watch, snapshot, exporter, doctor, demo):
    cli.add_command(command)


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
