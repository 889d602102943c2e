"""bench/run: measure what closewait costs and how it scales.

    bench/run            full run (under 10 minutes)
    bench/run --quick    fewer rounds, shorter windows, 10,000 leaks (under 2 minutes)
    bench/run --smoke    tiny sizes: every piece runs once (under 30 seconds)
    bench/run --only exporter --soak-s 600    the exporter, with a 10-minute soak

Prints the tables on stdout, progress on stderr, and writes every figure to
bench/results/<date>-<mode>.json (or --output). Exit status 0 when every
section ran (targets missed are results, not failures), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path

from bench import churn, detection, env, exporter, kernelcost, report, scale, startup
from bench.config import MODES

SECTIONS = ("startup", "detection", "churn", "kernel", "scale", "exporter")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="under 2 minutes")
    size.add_argument("--smoke", action="store_true", help="tiny sizes, under 30 seconds")
    parser.add_argument("--output", type=Path, help="JSON file to write")
    parser.add_argument(
        "--only", action="append", choices=SECTIONS, help="run this section only (repeatable)"
    )
    parser.add_argument(
        "--soak-s",
        type=float,
        default=0.0,
        help="exporter section: also run `exporter --all` this long under churn, RSS over time",
    )
    args = parser.parse_args(argv)
    cfg = MODES["smoke" if args.smoke else "quick" if args.quick else "full"]
    if args.soak_s:
        cfg = replace(cfg, soak_s=args.soak_s)
    if os.geteuid() != 0:
        print("bench/run: must run as root (BPF, network namespaces)", file=sys.stderr)
        return 3

    t_start = time.monotonic()

    def log(msg: str) -> None:
        print(f"bench [{time.monotonic() - t_start:6.1f}s] {msg}", file=sys.stderr, flush=True)

    env.ensure_packages(log)
    binary = env.build_loadgen(log)
    results: dict = {
        "mode": cfg.mode,
        "machine": env.machine(),
        "config": cfg.as_dict(),
    }
    wanted = args.only or list(SECTIONS)
    ok = True
    with env.netns() as ns:
        for name in SECTIONS:
            if name not in wanted:
                continue
            t = time.monotonic()
            try:
                if name == "startup":
                    results[name] = startup.run(cfg, log)
                elif name == "detection":
                    results[name] = detection.run(cfg, log)
                elif name == "churn":
                    results[name] = churn.run(cfg, binary, ns, log)
                elif name == "kernel":
                    results[name] = kernelcost.run(cfg, binary, ns, log)
                elif name == "exporter":
                    results[name] = exporter.run(cfg, binary, ns, log)
                else:
                    results[name] = scale.run(cfg, binary, ns, log)
            except Exception as exc:  # report the others anyway
                ok = False
                log(f"{name} failed: {type(exc).__name__}: {exc}")
                traceback.print_exc()
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            results[name]["section_s"] = round(time.monotonic() - t, 1)
    results["targets"] = report.targets(results)
    results["duration_s"] = round(time.monotonic() - t_start, 1)

    out = args.output or env.BENCH / "results" / f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.mode}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print("\n".join(report.render(results)))
    print(f"\n{cfg.mode} run took {results['duration_s']:.0f} s; figures in {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
