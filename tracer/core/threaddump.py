"""Parse runtime thread dumps into threads and frames (core/poolwaits.py finds
the threads blocked waiting for a pooled connection in them).

The module is pure: it does no I/O and runs no tool. Its inputs are the texts that
the runtimes' read-only tooling prints:

* ``jcmd PID Thread.print`` on a HotSpot JVM (the same format as ``jstack``);
* ``py-spy dump --pid PID --json`` (preferred: absolute file names and OS thread
  ids), or the plain ``py-spy dump --pid PID`` text.

Thread names are kept raw: callers escape them for their output.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Runtime = Literal["java", "python"]

__all__ = [
    "Frame",
    "Runtime",
    "ThreadStack",
    "parse_jcmd_threads",
    "parse_pyspy",
    "parse_pyspy_json",
    "parse_pyspy_text",
]


@dataclass(frozen=True)
class Frame:
    """One stack frame.

    ``function`` is ``pkg.Class.method`` for Java (inner classes keep their
    ``$`` suffix, e.g. ``org.apache.hc.core5.pool.StrictConnPool$1.get``) and
    the name py-spy reports for Python (``Class.method`` on 3.11+, often just
    ``method`` before). ``file`` and ``line`` are ``None`` when the dump does not
    give them (``Native Method``, ``Unknown Source``). ``module`` is the Java
    module (``java.base@17.0.15``) when the JVM printed one.
    """

    runtime: Runtime
    function: str
    file: str | None
    line: int | None
    module: str | None = None
    native: bool = False

    def display(self) -> str:
        """Render the frame the way the runtime's own tooling prints it."""
        if self.runtime == "java":
            if self.native:
                where = "Native Method"
            elif self.file is None:
                where = "Unknown Source"
            elif self.line is None:
                where = self.file
            else:
                where = f"{self.file}:{self.line}"
            return f"{self.function}({where})"
        if self.file is None:
            return self.function
        if self.line is None:
            return f"{self.function} ({self.file})"
        return f"{self.function} ({self.file}:{self.line})"


@dataclass(frozen=True)
class ThreadStack:
    """One thread of a dump, with its frames innermost (top of stack) first.

    ``tid`` is the OS thread id (Linux TID) when the dump gives one: the JVM's
    ``nid`` (hex up to JDK 17, decimal from JDK 18 on) or py-spy's
    ``os_thread_id``. ``state`` is the JVM's ``java.lang.Thread.State`` text
    (``WAITING (parking)``) or py-spy's ``idle``/``active``/``active+gil``.
    """

    runtime: Runtime
    name: str | None
    tid: int | None
    state: str | None
    frames: tuple[Frame, ...]

    def label(self) -> str:
        """Return the raw thread name, or a stand-in built from the tid when unnamed."""
        if self.name is not None:
            return self.name
        return f"tid {self.tid}" if self.tid is not None else "unnamed thread"


# --------------------------------------------------------------------------- Java

_JAVA_HEADER = re.compile(r'^"(?P<name>.*)"(?P<rest>\s.*)?$')
_JAVA_NID = re.compile(r"\bnid=(?P<nid>0[xX][0-9a-fA-F]+|\d+)\b")
_JAVA_STATE = re.compile(r"^\s+java\.lang\.Thread\.State:\s*(?P<state>.+?)\s*$")
_JAVA_FRAME = re.compile(r"^\s+at (?P<func>[^(\s]+)\((?P<src>[^)]*)\)\s*$")
# StackTraceElement-style prefixes: "app//", "loader/mod@1.0/", "mod@1.0/".
_JAVA_LOADER_PREFIX = re.compile(r"^(?:[\w.-]+/)?(?:[\w.-]+@[\w.+-]+)?/(?=[\w$])")
_JAVA_SRC = re.compile(r"^(?:(?P<mod>[^/]+)/)?(?P<file>[^:/]*?)(?::(?P<line>\d+))?$")


def _parse_nid(rest: str) -> int | None:
    m = _JAVA_NID.search(rest)
    if m is None:
        return None
    nid = m.group("nid")
    return int(nid, 16) if nid[:2].lower() == "0x" else int(nid)


def _parse_java_frame(func: str, src: str) -> Frame:
    func = _JAVA_LOADER_PREFIX.sub("", func, count=1)
    m = _JAVA_SRC.match(src)
    if m is None:
        return Frame("java", func, None, None)
    module, file, line = m.group("mod"), m.group("file"), m.group("line")
    if file == "Native Method":
        return Frame("java", func, None, None, module=module, native=True)
    if file in ("", "Unknown Source"):
        return Frame("java", func, None, None, module=module)
    return Frame("java", func, file, int(line) if line else None, module=module)


def parse_jcmd_threads(text: str) -> list[ThreadStack]:
    """Parse ``jcmd PID Thread.print`` (or ``jstack PID``) output.

    Every thread header (a line starting with ``"name"`` and carrying ``nid=``
    or ``prio=``) starts a thread; its ``java.lang.Thread.State:`` line and
    ``at ...`` lines fill it. Lock lines (``- locked``, ``- parking to wait
    for``), the SMR block and the JNI footer are ignored. Names may contain
    quotes: the name runs to the last quote before the header's fields.
    """
    threads: list[ThreadStack] = []
    name: str | None = None
    tid: int | None = None
    state: str | None = None
    frames: list[Frame] = []

    def flush() -> None:
        if name is not None:
            threads.append(ThreadStack("java", name, tid, state, tuple(frames)))

    for raw in text.splitlines():
        line = raw.rstrip("\r")
        header = _JAVA_HEADER.match(line)
        if header is not None:
            rest = header.group("rest") or ""
            if "nid=" in rest or "prio=" in rest:
                flush()
                name, tid, state, frames = header.group("name"), _parse_nid(rest), None, []
                continue
        if name is None:
            continue
        st = _JAVA_STATE.match(line)
        if st is not None:
            state = st.group("state")
            continue
        fr = _JAVA_FRAME.match(line)
        if fr is not None:
            frames.append(_parse_java_frame(fr.group("func"), fr.group("src")))
    flush()
    return threads


# ------------------------------------------------------------------------- Python

_PY_HEADER = re.compile(
    r'^Thread (?P<id>0[xX][0-9a-fA-F]+|\d+) \((?P<state>[^)]*)\)(?::\s*"(?P<name>.*)")?\s*$'
)
# Frames are indented by exactly four spaces; --locals lines are indented deeper.
_PY_FRAME = re.compile(r"^ {4}(?P<func>\S.*?) \((?P<file>.+?)(?::(?P<line>\d+))?\)\s*$")


def parse_pyspy_text(text: str) -> list[ThreadStack]:
    """Parse the text of ``py-spy dump --pid PID``.

    Headers look like ``Thread 12744 (idle): "seed-worker-1"``: the number is
    the OS thread id when py-spy knows it (decimal); a hex number is the
    pthread id, which is not a TID, so ``tid`` is then ``None``. Without
    ``--full-filenames`` file names are shortened (``threading.py``,
    ``urllib3/connectionpool.py``); the JSON output keeps absolute ones.
    """
    threads: list[ThreadStack] = []
    started = False
    name: str | None = None
    tid: int | None = None
    state: str | None = None
    frames: list[Frame] = []

    def flush() -> None:
        if started:
            threads.append(ThreadStack("python", name, tid, state, tuple(frames)))

    for raw in text.splitlines():
        line = raw.rstrip("\r")
        header = _PY_HEADER.match(line)
        if header is not None:
            flush()
            ident = header.group("id")
            started, name, state, frames = True, header.group("name"), header.group("state"), []
            tid = None if ident[:2].lower() == "0x" else int(ident)
            continue
        fr = _PY_FRAME.match(line) if started else None
        if fr is not None:
            ln = fr.group("line")
            frames.append(
                Frame("python", fr.group("func"), fr.group("file"), int(ln) if ln else None)
            )
    flush()
    return threads


def _py_state(active: object, owns_gil: object) -> str:
    """Mirror py-spy's own status text: ``idle``, ``active`` or ``active+gil``."""
    if not active:
        return "idle"
    return "active+gil" if owns_gil else "active"


def parse_pyspy_json(data: str | Sequence[object]) -> list[ThreadStack]:
    """Parse ``py-spy dump --pid PID --json``: a list of thread objects.

    ``data`` is the JSON text or the already-decoded list. Each thread gives
    ``thread_name`` (may be null), ``os_thread_id`` (the TID) and ``frames``
    with ``name``, ``filename`` (absolute) and ``line``. Native frames
    (``--native``) have no line. Raises ``ValueError`` on a wrong shape.
    """
    decoded: object = json.loads(data) if isinstance(data, str) else data
    if not isinstance(decoded, (list, tuple)):
        raise ValueError("py-spy JSON dump must be a list of threads")
    threads: list[ThreadStack] = []
    for item in decoded:
        if not isinstance(item, dict):
            raise ValueError("py-spy JSON thread must be an object")
        frames: list[Frame] = []
        for f in item.get("frames") or []:
            if not isinstance(f, dict):
                raise ValueError("py-spy JSON frame must be an object")
            line = f.get("line")
            filename = f.get("filename") or f.get("short_filename")
            frames.append(
                Frame(
                    "python",
                    str(f.get("name", "?")),
                    str(filename) if filename else None,
                    line if isinstance(line, int) and line > 0 else None,
                )
            )
        name = item.get("thread_name")
        tid = item.get("os_thread_id")
        threads.append(
            ThreadStack(
                "python",
                name if isinstance(name, str) else None,
                tid if isinstance(tid, int) else None,
                _py_state(item.get("active"), item.get("owns_gil")),
                tuple(frames),
            )
        )
    return threads


def parse_pyspy(text: str) -> list[ThreadStack]:
    """Parse py-spy dump output, JSON or text, telling them apart by the first character."""
    return parse_pyspy_json(text) if text.lstrip().startswith("[") else parse_pyspy_text(text)
