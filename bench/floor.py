"""Load bench/floor.bpf.c and keep it attached until SIGINT/SIGTERM.

    python -m bench.floor [--raw]

Prints "ready" on stdout once attached. Its own process does nothing after
that (it sleeps in sigwait), so everything it costs is in the kernel, in the
context of the traced workload: exactly what the floor is meant to measure.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "floor.bpf.c"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", action="store_true", help="attach as a raw tracepoint")
    args = parser.parse_args(argv)

    from bcc import BPF

    stop = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)  # delivered to sigwait only
    # TRACEPOINT_PROBE and RAW_TRACEPOINT_PROBE attach when the program loads.
    bpf = BPF(src_file=str(SOURCE).encode(), cflags=["-DFLOOR_RAW"] if args.raw else [])
    print("ready", flush=True)
    signal.sigwait(stop)
    bpf.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
