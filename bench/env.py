"""The benchmark's surroundings: packages, the load generator's build, a
network namespace of its own, and a description of the machine.

Everything the workload does happens in a network namespace made for the
run (`cwbench-PID`), for three reasons: its sysctls (port range, TIME_WAIT
cap) are set without touching the host's; its ports cannot collide with
anything else on the machine (other test suites may be running); and
deleting it at the end frees every socket it held. The tracers run in the
host namespace and see it like any container's, as they would in production.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import ClassVar

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
BUILD = Path(os.environ.get("CLOSEWAIT_BENCH_BUILD", "/tmp/closewait-bench-build"))

# Debian packages: the command each one provides, checked first.
PACKAGES = {
    "gcc": "gcc",
    "bpftool": "bpftool",
    "bpfcc-tools": "/usr/sbin/tcpstates-bpfcc",
    "bpftrace": "bpftrace",
    "iproute2": "ip",
}

Log = Callable[[str], None]


def ensure_packages(log: Log) -> None:
    """apt-get install whatever the benchmark needs and is missing."""
    missing = [pkg for pkg, cmd in PACKAGES.items() if not shutil.which(cmd)]
    if not missing:
        return
    if not shutil.which("apt-get"):
        raise RuntimeError(f"missing {', '.join(missing)} and no apt-get to install them")
    log(f"installing {' '.join(missing)} (apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )


def build_loadgen(log: Log) -> Path:
    """Compile bench/loadgen.c (once per source version) and return the binary."""
    src = BENCH / "loadgen.c"
    digest = hashlib.sha256(src.read_bytes()).hexdigest()[:12]
    binary = BUILD / f"loadgen-{digest}"
    if not binary.exists():
        BUILD.mkdir(parents=True, exist_ok=True)
        log(f"building {binary}")
        tmp = binary.with_suffix(".tmp")
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(tmp), str(src)], check=True)
        tmp.rename(binary)
    return binary


class Netns:
    """A network namespace with loopback up and the workload's sysctls."""

    # Client ports come from 2000 up, so servers below 2000 never find their
    # port taken by a connection's ephemeral port (SO_REUSEADDR does not help
    # against a client socket's TIME_WAIT). 63k ports per destination.
    # TIME_WAIT is capped at 32768 sockets: under churn the population then
    # reaches its cap within two seconds and stays there, so every
    # measurement sees the same kernel state. Uncapped, it would grow for
    # tcp_fin_timeout (60 s) and the per-connection cost with it: the
    # measurements taken early would be faster than the later ones.
    SYSCTLS: ClassVar[dict[str, str]] = {
        "net.ipv4.ip_local_port_range": "2000 65535",
        "net.ipv4.tcp_max_tw_buckets": "32768",
        "net.core.somaxconn": "4096",
    }

    def __init__(self) -> None:
        self.name = f"cwbench-{os.getpid()}"
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "up"], check=True)
        for key, value in self.SYSCTLS.items():
            subprocess.run(
                ["ip", "netns", "exec", self.name, "sysctl", "-q", "-w", f"{key}={value}"],
                check=True,
            )

    def prefix(self) -> list[str]:
        """argv prefix that runs a command inside (ip netns exec execs it: same pid)."""
        return ["ip", "netns", "exec", self.name]

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True, check=False)


@contextlib.contextmanager
def netns() -> Iterator[Netns]:
    ns = Netns()
    try:
        yield ns
    finally:
        ns.delete()


def closewait_argv() -> list[str]:
    """closewait as a user runs it: the venv's entry point (a Python process).

    CLOSEWAIT_BENCH_CMD (a command line) benchmarks another build instead,
    e.g. a clean checkout of a given commit next to a work tree in progress.
    """
    override = os.environ.get("CLOSEWAIT_BENCH_CMD")
    if override:
        return shlex.split(override)
    script = Path(sys.executable).with_name("closewait")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "tracer"]


def base_argv() -> list[str] | None:
    """CLOSEWAIT_BENCH_BASE_CMD: an older build to run beside this one, as the
    condition `closewait-all@base` of churn and kernel cost: a before/after
    comparison within one run, interleaved, under the same noise."""
    base = os.environ.get("CLOSEWAIT_BENCH_BASE_CMD")
    return shlex.split(base) if base else None


def has_snapshot() -> bool:
    """True if the closewait under test has `snapshot` (an older build, run
    through CLOSEWAIT_BENCH_CMD, may not)."""
    res = subprocess.run(
        [*closewait_argv(), "snapshot", "--help"], capture_output=True, cwd=ROOT, check=False
    )
    return res.returncode == 0


TRACING_TYPES = {"tracepoint", "raw_tracepoint", "kprobe", "tracing", "perf_event"}


def tracing_programs() -> set[int] | None:
    """Ids of the BPF programs of tracing types loaded now (None without bpftool).

    Another test suite or tracer attached to the same tracepoints makes the
    workload slower in every condition, the baseline included, by an amount
    that changes when it comes and goes: measurements taken meanwhile are
    flagged (bench/churn.py).
    """
    try:
        res = subprocess.run(
            ["bpftool", "prog", "show", "--json"], capture_output=True, timeout=10, check=False
        )
        progs = json.loads(res.stdout or b"[]")
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return None
    return {p["id"] for p in progs if p.get("type") in TRACING_TYPES}


def _first_line(argv: Sequence[str]) -> str | None:
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (res.stdout or res.stderr).strip()
    return text.splitlines()[0] if text else None


def _git(*args: str) -> str | None:
    try:
        res = subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def machine() -> dict:
    """What the figures were measured on."""
    cpu_model = None
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_gib = None
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
    distro = None
    with contextlib.suppress(OSError), open("/etc/os-release") as f:
        for line in f:
            if line.startswith("PRETTY_NAME="):
                distro = line.split("=", 1)[1].strip().strip('"')
    try:
        import bcc

        bcc_version = getattr(bcc, "__version__", None)
    except ImportError:
        bcc_version = None
    dirty = _git("status", "--porcelain", "--untracked-files=no", "--", "tracer", "bpf")
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "hostname": socket.gethostname(),
        "kernel": platform.release(),
        "distro": distro,
        "cpu_model": cpu_model,
        "cpus": os.cpu_count(),
        "memory_gib": mem_gib,
        "python": platform.python_version(),
        "bcc": bcc_version,
        "bpftrace": _first_line(["bpftrace", "--version"]),
        "closewait_commit": _git("rev-parse", "--short", "HEAD"),
        "closewait_tree_modified": bool(dirty) if dirty is not None else None,
        "closewait_command": os.environ.get("CLOSEWAIT_BENCH_CMD"),  # None: this tree's
    }
