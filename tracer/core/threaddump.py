"""Parse runtime thread dumps and find threads blocked waiting for a pooled connection.

The module is pure: it does no I/O and runs no tool. Its inputs are the texts that
the runtimes' read-only tooling prints:

* ``jcmd PID Thread.print`` on a HotSpot JVM (the same format as ``jstack``);
* ``py-spy dump --pid PID --json`` (preferred: absolute file names and OS thread
  ids), or the plain ``py-spy dump --pid PID`` text.

:func:`diagnose` groups the threads that wait inside a known pool's acquire
method by (pool frame, first application frame below the library frames), and
:meth:`PoolWaitGroup.sentence` renders one group as a sentence. Thread names
are kept raw: callers escape them for their output.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Runtime = Literal["java", "python"]

__all__ = [
    "DEFAULT_SIGNATURES",
    "Frame",
    "PoolSignature",
    "PoolWait",
    "PoolWaitGroup",
    "ThreadStack",
    "diagnose",
    "find_pool_waits",
    "group_pool_waits",
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


# --------------------------------------------------------------------- classifier


@dataclass(frozen=True)
class PoolSignature:
    """A known frame where a thread blocks to acquire a pooled resource.

    Java: ``functions`` are ``pkg.Class.method`` names, matched after
    dropping inner-class suffixes (``StrictConnPool$1.get`` matches
    ``org.apache.hc.core5.pool.StrictConnPool.get``). Python: ``functions``
    are ``Class.method`` qualnames, matched in full or by the bare method name
    (py-spy on Python < 3.11), and the frame's file must end with
    ``path_suffix``. ``packages`` are the library's own package prefixes (Java)
    or import names (Python): frames there are library frames, never the
    application frame.
    """

    library: str
    runtime: Runtime
    functions: tuple[str, ...]
    packages: tuple[str, ...]
    path_suffix: str | None = None

    def matches(self, frame: Frame) -> bool:
        """Whether ``frame`` is this pool's acquire/wait frame."""
        if frame.runtime != self.runtime:
            return False
        if self.runtime == "java":
            return _java_outer_name(frame.function) in self.functions
        if self.path_suffix is None or frame.file is None:
            return False
        if not frame.file.replace("\\", "/").endswith(self.path_suffix):
            return False
        bare = frame.function.rsplit(".", 1)[-1]
        return any(frame.function == f or bare == f.rsplit(".", 1)[-1] for f in self.functions)

    def pool_label(self, frame: Frame) -> str:
        """Name the matched pool frame for a sentence: Java FQN, or Python name and file."""
        if self.runtime == "java":
            return frame.function
        return f"{frame.function} ({self.path_suffix})"


def _java_outer_name(function: str) -> str:
    """``a.B$1$C.m`` -> ``a.B.m``: the outermost class and the method."""
    cls, _, method = function.rpartition(".")
    return f"{cls.split('$', 1)[0]}.{method}" if cls else function


DEFAULT_SIGNATURES: tuple[PoolSignature, ...] = (
    PoolSignature(
        "Apache HttpClient 4",
        "java",
        ("org.apache.http.pool.AbstractConnPool.getPoolEntryBlocking",),
        ("org.apache.http.",),
    ),
    PoolSignature(
        "Apache HttpClient 5",
        "java",
        (
            "org.apache.hc.core5.pool.StrictConnPool.lease",
            "org.apache.hc.core5.pool.StrictConnPool.get",
            "org.apache.hc.core5.pool.LaxConnPool.lease",
            "org.apache.hc.core5.pool.LaxConnPool.get",
        ),
        ("org.apache.hc.",),
    ),
    PoolSignature(
        "HikariCP",
        "java",
        (
            "com.zaxxer.hikari.util.ConcurrentBag.borrow",
            "com.zaxxer.hikari.pool.HikariPool.getConnection",
        ),
        ("com.zaxxer.",),
    ),
    PoolSignature(
        "Apache Commons Pool 2",
        "java",
        ("org.apache.commons.pool2.impl.GenericObjectPool.borrowObject",),
        ("org.apache.commons.pool2.", "org.apache.commons.dbcp2.", "redis.clients.jedis."),
    ),
    PoolSignature(
        "c3p0",
        "java",
        ("com.mchange.v2.resourcepool.BasicResourcePool.awaitAvailable",),
        ("com.mchange.",),
    ),
    PoolSignature(
        "Tomcat JDBC",
        "java",
        ("org.apache.tomcat.jdbc.pool.ConnectionPool.borrowConnection",),
        ("org.apache.tomcat.",),
    ),
    PoolSignature(
        "urllib3",
        "python",
        ("HTTPConnectionPool._get_conn",),
        ("urllib3",),
        "urllib3/connectionpool.py",
    ),
    PoolSignature(
        "SQLAlchemy",
        "python",
        ("QueuePool._do_get",),
        ("sqlalchemy",),
        "sqlalchemy/pool/impl.py",
    ),
    PoolSignature(
        "psycopg_pool",
        "python",
        ("ConnectionPool.getconn",),
        ("psycopg_pool", "psycopg"),
        "psycopg_pool/pool.py",
    ),
)

_JAVA_RUNTIME_PREFIXES = ("java.", "javax.", "jdk.", "sun.", "com.sun.", "jakarta.")
_JAVA_KNOWN_LIBRARIES = (
    "org.apache.http.",
    "org.apache.hc.",
    "com.zaxxer.",
    "org.apache.commons.pool2.",
    "org.apache.commons.dbcp2.",
    "redis.clients.jedis.",
    "com.mchange.",
    "org.apache.tomcat.",
    "org.springframework.",
    "org.hibernate.",
)
_PY_KNOWN_LIBRARIES = frozenset(
    {
        "urllib3",
        "requests",
        "botocore",
        "boto3",
        "s3transfer",
        "sqlalchemy",
        "psycopg",
        "psycopg_pool",
        "psycopg2",
        "elastic_transport",
        "elasticsearch",
    }
)
_PY_STDLIB: frozenset[str] = frozenset(
    getattr(sys, "stdlib_module_names", ())
    or {
        "threading",
        "queue",
        "contextlib",
        "socket",
        "selectors",
        "ssl",
        "http",
        "asyncio",
        "concurrent",
        "functools",
        "runpy",
        "importlib",
        "multiprocessing",
        "logging",
    }
)
_PY_STDLIB_DIR = re.compile(r"/lib/python\d+(?:\.\d+)?t?/")


def _java_is_runtime(frame: Frame) -> bool:
    return frame.function.startswith(_JAVA_RUNTIME_PREFIXES)


def _py_top_module(file: str) -> str:
    head = file.replace("\\", "/").lstrip("./").split("/", 1)[0]
    return head[:-3] if head.endswith(".py") else head


def _py_is_runtime(frame: Frame) -> bool:
    file = frame.file
    if file is None or file.startswith("<frozen"):
        return True
    norm = file.replace("\\", "/")
    if norm.startswith("/"):
        return (
            _PY_STDLIB_DIR.search(norm) is not None
            and "/site-packages/" not in norm
            and "/dist-packages/" not in norm
        )
    return _py_top_module(norm) in _PY_STDLIB


def _in_packages(frame: Frame, packages: tuple[str, ...]) -> bool:
    if frame.runtime == "java":
        return frame.function.startswith(packages)
    if frame.file is None:
        return False
    norm = "/" + frame.file.replace("\\", "/").lstrip("/")
    return any(f"/{p}/" in norm or norm.endswith(f"/{p}.py") for p in packages)


def _is_runtime_or_pool(frame: Frame, sig: PoolSignature) -> bool:
    """Only the runtime's own frames and the pool library's."""
    if _in_packages(frame, sig.packages):
        return True
    return _java_is_runtime(frame) if frame.runtime == "java" else _py_is_runtime(frame)


def _is_library(frame: Frame, sig: PoolSignature, *, any_third_party: bool) -> bool:
    """Runtime, pool-library or known-library frame.

    With ``any_third_party`` every Python frame under site-packages or
    dist-packages counts as a library frame too (the strict application test).
    """
    if _is_runtime_or_pool(frame, sig):
        return True
    if frame.runtime == "java":
        return frame.function.startswith(_JAVA_KNOWN_LIBRARIES)
    file = (frame.file or "").replace("\\", "/")
    if any_third_party and ("/site-packages/" in file or "/dist-packages/" in file):
        return True
    if file.startswith("/"):
        return any(f"/{p}/" in file for p in _PY_KNOWN_LIBRARIES)
    return _py_top_module(file) in _PY_KNOWN_LIBRARIES


def _is_waiting_state(thread: ThreadStack) -> bool:
    if thread.state is None:
        return True
    if thread.runtime == "java":
        return thread.state.startswith(("WAITING", "TIMED_WAITING", "BLOCKED"))
    return not thread.state.startswith("active")


@dataclass(frozen=True)
class PoolWait:
    """One thread blocked in a pool: the pool frame and the application frame below it.

    ``app_frame`` is the first frame below the pool frame that is neither the
    runtime's, the pool library's, another known library's nor (Python) under
    site-packages/dist-packages; failing that (an application installed into
    site-packages), the first such frame with site-packages allowed; else ``None``.
    """

    thread: ThreadStack
    signature: PoolSignature
    pool_frame: Frame
    app_frame: Frame | None


def _find_app_frame(below: tuple[Frame, ...], sig: PoolSignature) -> Frame | None:
    for any_third_party in (True, False):
        for frame in below:
            if not _is_library(frame, sig, any_third_party=any_third_party):
                return frame
    return None


def find_pool_waits(
    threads: list[ThreadStack],
    signatures: tuple[PoolSignature, ...] = DEFAULT_SIGNATURES,
) -> list[PoolWait]:
    """Return the threads that wait for a pooled resource, in dump order.

    A thread waits when its innermost frame matching a signature has only
    runtime or pool-library frames above it (a park, ``Object.wait``,
    ``Condition.wait``, the pool's own future) and, when the dump gives a
    state, the state is a waiting one (Java ``WAITING``/``TIMED_WAITING``/
    ``BLOCKED``; py-spy anything but ``active``). A thread running pool code is
    not waiting.
    """
    waits: list[PoolWait] = []
    for thread in threads:
        if not _is_waiting_state(thread):
            continue
        for index, frame in enumerate(thread.frames):
            sig = next((s for s in signatures if s.matches(frame)), None)
            if sig is None:
                continue
            above = thread.frames[:index]
            if all(_is_runtime_or_pool(f, sig) for f in above):
                app = _find_app_frame(thread.frames[index + 1 :], sig)
                waits.append(PoolWait(thread, sig, frame, app))
            break
    return waits


@dataclass(frozen=True)
class PoolWaitGroup:
    """Waiting threads that share the pool frame's function and the application frame."""

    signature: PoolSignature
    pool_frame: Frame
    app_frame: Frame | None
    threads: tuple[ThreadStack, ...]

    def sentence(self, max_names: int = 10) -> str:
        """Describe the group in one sentence.

        For example ``2 threads (a, b) wait for a pooled connection in X, called
        from Y``. Names are raw and in natural order (``w-2`` before ``w-10``);
        at most ``max_names`` are listed, then ``and N more``.
        """
        count = len(self.threads)
        labels = sorted((t.label() for t in self.threads), key=_natural_key)[:max_names]
        if count > max_names:
            labels.append(f"and {count - max_names} more")
        noun, verb = ("thread", "waits") if count == 1 else ("threads", "wait")
        where = (
            f"called from {self.app_frame.display()}"
            if self.app_frame is not None
            else "with no application frame found"
        )
        return (
            f"{count} {noun} ({', '.join(labels)}) {verb} for a pooled connection in "
            f"{self.signature.pool_label(self.pool_frame)}, {where}"
        )


def _natural_key(text: str) -> tuple[tuple[int, int, str], ...]:
    """Sort key that orders digit runs numerically: ``w-2`` before ``w-10``."""
    return tuple(
        (1, int(part), "") if part.isdigit() else (0, 0, part)
        for part in re.split(r"(\d+)", text)
        if part
    )


def _app_key(frame: Frame | None) -> tuple[str, str, int]:
    if frame is None:
        return ("", "", -1)
    return (frame.function, frame.file or "", frame.line if frame.line is not None else -1)


def group_pool_waits(waits: list[PoolWait]) -> list[PoolWaitGroup]:
    """Group waits by (library, pool function, application frame), largest group first.

    Pool-frame line numbers are not part of the key (a timed and an untimed
    wait in the same method are one group); the application frame's line is.
    Ties keep the order of first appearance in the dump.
    """
    order: list[tuple[str, str, tuple[str, str, int]]] = []
    members: dict[tuple[str, str, tuple[str, str, int]], list[PoolWait]] = {}
    for wait in waits:
        key = (wait.signature.library, wait.pool_frame.function, _app_key(wait.app_frame))
        if key not in members:
            order.append(key)
            members[key] = []
        members[key].append(wait)
    groups = []
    for key in order:
        first = members[key][0]
        groups.append(
            PoolWaitGroup(
                first.signature,
                first.pool_frame,
                first.app_frame,
                tuple(w.thread for w in members[key]),
            )
        )
    groups.sort(key=lambda g: -len(g.threads))
    return groups


def diagnose(
    threads: list[ThreadStack],
    signatures: tuple[PoolSignature, ...] = DEFAULT_SIGNATURES,
) -> list[PoolWaitGroup]:
    """Find and group the pool-waiting threads of one parsed dump."""
    return group_pool_waits(find_pool_waits(threads, signatures))


# ------------------------------------------------------------ one process's dump


@dataclass(frozen=True)
class OpenerState:
    """A thread that opened a leaked connection, as /proc shows it now
    (the fallback where no runtime tool can dump threads)."""

    tid: int
    name: str | None  # raw: escape before printing
    state: str | None  # /proc/PID/task/TID/stat's letter: R, S, D...
    wchan: str | None  # the kernel function it sleeps in (None: unknown or running)


@dataclass(frozen=True)
class ProcessThreads:
    """What --threads found in one process at one moment (tracer/system/threads.py).

    `problem` is one line saying why there is no dump (not a JVM or Python
    process, attach disabled, tool missing, timeout); `openers` then holds
    the state of the threads that opened its leaks."""

    pid: int
    runtime: str  # "java", "python" or "other"
    taken_ns: int  # CLOCK_MONOTONIC of the dump
    tool: str | None = None  # what ran, e.g. "jcmd Thread.print"
    seconds: float | None = None  # how long the tool ran
    pause_ms: float | None = None  # how long the target was paused (0: not at all; None: unknown)
    pause_how: str | None = None  # where that figure comes from
    problem: str | None = None
    threads: int = 0  # threads in the dump
    groups: tuple[PoolWaitGroup, ...] = ()
    openers: tuple[OpenerState, ...] = ()

    def waiting_tids(self) -> set[int]:
        """OS thread ids of the threads waiting for a pooled connection."""
        return {t.tid for g in self.groups for t in g.threads if t.tid is not None}
