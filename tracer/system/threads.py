"""--threads: what a process's threads are doing, through read-only runtime tooling.

- A HotSpot JVM: `jcmd PID Thread.print` from the target's own JDK (the
  directory of /proc/PID/exe, seen through /proc/PID/root), run as the
  target's uid (JDK 8 refuses another user) and, for a JVM in another mount
  namespace (a container), inside its mount and pid namespaces (nsenter),
  with the pid it has there. Thread.print brings the JVM to a safepoint for
  a fraction of a millisecond; that pause is measured from the JVM's own
  counters (tracer/system/hsperf.py). jcmd is not run when the JVM says it
  refuses attach (-XX:+DisableAttachMechanism), nor when the JVM has no
  perf data and no attach socket: jcmd would then signal it with SIGQUIT,
  which a JVM that refuses attach answers by printing thread dumps to its
  own stdout.
- CPython: `py-spy dump --pid PID --json --nonblocking` (the `threads`
  extra): it reads the interpreter's memory without stopping the process.
- Anything else, or when the tool fails: no safe thread dump exists, so the
  state and wait channel of each thread that opened a leak is read from
  /proc/PID/task/TID/{stat,wchan}.

Every tool runs with a timeout and is killed past it; every failure is one
line in ProcessThreads.problem, never an exception.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from tracer.core.poolwaits import OpenerState, ProcessThreads, diagnose
from tracer.core.threaddump import parse_jcmd_threads, parse_pyspy_json
from tracer.system import hsperf, procfs

TOOL_TIMEOUT_S = 5.0
_PYTHON_EXE = re.compile(r"^python[\d.]*m?$")


def runtime_of(pid: int) -> tuple[str, str | None]:
    """("java" | "python" | "other", the executable's path as the process sees it)."""
    try:
        exe = os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)")
    except OSError:
        return "other", None
    name = os.path.basename(exe)
    if name == "java":
        return "java", exe
    if _PYTHON_EXE.match(name):
        return "python", exe
    try:  # an embedded runtime (a launcher named after the service)
        with open(f"/proc/{pid}/maps", "rb") as f:
            maps = f.read()
    except OSError:
        return "other", exe
    if b"/libjvm.so" in maps:
        return "java", exe
    if b"/libpython3" in maps:
        return "python", exe
    return "other", exe


def dump(pid: int, opener_tids: Iterable[int], now_ns: int | None = None) -> ProcessThreads:
    """One look at pid's threads (see the module's docstring)."""
    now_ns = time.monotonic_ns() if now_ns is None else now_ns
    runtime, exe = runtime_of(pid)
    if runtime == "java":
        result = _jcmd(pid, exe or "", now_ns)
    elif runtime == "python":
        result = _pyspy(pid, now_ns)
    else:
        result = ProcessThreads(
            pid,
            "other",
            now_ns,
            problem=f"not a JVM or Python process ({os.path.basename(exe or '?')}): "
            "no safe thread dump exists for it",
        )
    if result.problem is not None:
        result = _with_openers(result, opener_tids)
    return result


def _with_openers(result: ProcessThreads, tids: Iterable[int]) -> ProcessThreads:
    openers = []
    for tid in sorted(set(tids)):
        fields = procfs.stat_fields(result.pid, tid)
        if fields is None:
            continue
        try:
            with open(f"/proc/{result.pid}/task/{tid}/wchan") as f:
                wchan = f.read().strip()
        except OSError:
            wchan = ""
        openers.append(
            OpenerState(
                tid,
                procfs.thread_comm(result.pid, tid),
                fields[0].decode("ascii", "replace"),
                None if wchan in ("", "0") else wchan,
            )
        )
    return replace(result, openers=tuple(openers))


def _ids(pid: int) -> tuple[int, int, int]:
    """(uid, gid, pid in its own pid namespace) from /proc/PID/status."""
    uid = gid = 0
    nspid = pid
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key == "Uid":
                uid = int(value.split()[1])  # effective
            elif key == "Gid":
                gid = int(value.split()[1])
            elif key == "NSpid":
                nspid = int(value.split()[-1])
    return uid, gid, nspid


def _same_mount_ns(pid: int) -> bool:
    try:
        return os.stat("/proc/self/ns/mnt").st_ino == os.stat(f"/proc/{pid}/ns/mnt").st_ino
    except OSError:
        return False


def _run(cmd: list[str], **kw) -> tuple[subprocess.CompletedProcess | None, float, str | None]:
    """(result, seconds, problem) of a tool run with the timeout."""
    t0 = time.monotonic()
    try:
        res = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="surrogateescape",
            timeout=TOOL_TIMEOUT_S,
            cwd="/",
            **kw,
        )
    except subprocess.TimeoutExpired:
        name = os.path.basename(cmd[0])
        return None, time.monotonic() - t0, f"{name} gave no answer within {TOOL_TIMEOUT_S:g}s"
    except OSError as exc:
        return None, time.monotonic() - t0, f"cannot run {cmd[0]}: {exc.strerror}"
    return res, time.monotonic() - t0, None


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().endswith(":")]
    return (lines[-1] if lines else "no output")[:200]


def _jcmd(pid: int, exe: str, now_ns: int) -> ProcessThreads:
    tool = "jcmd Thread.print"
    try:
        uid, gid, nspid = _ids(pid)
    except (OSError, ValueError, IndexError):
        return ProcessThreads(pid, "java", now_ns, tool=tool, problem="the JVM exited")
    local = _same_mount_ns(pid)
    jcmd = str(Path(exe).parent / "jcmd")
    seen = jcmd if local else f"/proc/{pid}/root{jcmd}"
    if not os.access(seen, os.X_OK):
        return ProcessThreads(
            pid,
            "java",
            now_ns,
            tool=tool,
            problem=f"no jcmd next to its java ({Path(exe).parent}): a JRE without the "
            "JDK's tools; install the JDK there (e.g. openjdk-17-jdk-headless)",
        )
    perf_file = hsperf.path(pid, nspid, uid)
    before = hsperf.read(perf_file)
    socket = f"/proc/{pid}/root/tmp/.java_pid{nspid}"
    if before is not None and before.attach_supported() is False:
        return ProcessThreads(
            pid,
            "java",
            now_ns,
            tool=tool,
            problem="the JVM refuses attach (-XX:+DisableAttachMechanism): no thread dump",
        )
    if before is None and not os.path.exists(socket):
        return ProcessThreads(
            pid,
            "java",
            now_ns,
            tool=tool,
            problem="the JVM has no perf data (-XX:-UsePerfData?) nor attach socket: jcmd "
            "would signal it (SIGQUIT), which may print dumps to its stdout; not attempted",
        )
    if local:
        res, seconds, problem = _run([jcmd, str(nspid), "Thread.print"], user=uid, group=gid)
    else:
        nsenter = shutil.which("nsenter")
        if nsenter is None:
            return ProcessThreads(
                pid,
                "java",
                now_ns,
                tool=tool,
                problem="the JVM is in another mount namespace (a container) and nsenter "
                "(util-linux) is missing: cannot run its jcmd there",
            )
        cmd = [nsenter, "-t", str(pid), "-m", "-p", f"-S{uid}", f"-G{gid}", "--"]
        res, seconds, problem = _run([*cmd, jcmd, str(nspid), "Thread.print"])
    after = hsperf.read(perf_file)
    if res is None:
        return ProcessThreads(pid, "java", now_ns, tool=tool, seconds=seconds, problem=problem)
    if res.returncode != 0:
        detail = _first_line(res.stderr + "\n" + res.stdout)
        return ProcessThreads(
            pid, "java", now_ns, tool=tool, seconds=seconds, problem=f"jcmd failed: {detail}"
        )
    threads = parse_jcmd_threads(res.stdout)
    pause = None
    if before is not None and after is not None:
        t0, t1 = before.safepoint_ms(), after.safepoint_ms()
        pause = None if t0 is None or t1 is None else max(0.0, t1 - t0)
    return ProcessThreads(
        pid,
        "java",
        now_ns,
        tool=tool,
        seconds=seconds,
        pause_ms=pause,
        pause_how="safepoint time, from the JVM's perf counters" if pause is not None else None,
        threads=len(threads),
        groups=tuple(diagnose(threads)),
    )


def pyspy_path() -> str | None:
    """py-spy on PATH, or next to this interpreter (a venv with the `threads` extra)."""
    found = shutil.which("py-spy")
    if found:
        return found
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if os.access(beside, os.X_OK) else None


def _pyspy(pid: int, now_ns: int) -> ProcessThreads:
    tool = "py-spy dump --nonblocking"
    py_spy = pyspy_path()
    if py_spy is None:
        return ProcessThreads(
            pid,
            "python",
            now_ns,
            tool=tool,
            problem="py-spy is not installed (pip install 'closewait[threads]'): "
            "no Python thread dump",
        )
    cmd = [py_spy, "dump", "--pid", str(pid), "--json", "--nonblocking"]
    res, seconds, problem = _run(cmd)
    if res is None:
        return ProcessThreads(pid, "python", now_ns, tool=tool, seconds=seconds, problem=problem)
    try:
        if res.returncode != 0:
            raise ValueError(_first_line(res.stderr + "\n" + res.stdout))
        threads = parse_pyspy_json(res.stdout)
    except ValueError as exc:
        return ProcessThreads(
            pid, "python", now_ns, tool=tool, seconds=seconds, problem=f"py-spy failed: {exc}"
        )
    return ProcessThreads(
        pid,
        "python",
        now_ns,
        tool=tool,
        seconds=seconds,
        pause_ms=0.0,
        pause_how="--nonblocking: py-spy reads its memory without stopping it",
        threads=len(threads),
        groups=tuple(diagnose(threads)),
    )
