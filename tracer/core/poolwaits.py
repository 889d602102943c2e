"""Find the threads of a parsed dump that wait for a pooled connection.

Pure: its input is tracer.core.threaddump's parsed threads. :func:`diagnose`
groups the threads that wait inside a known pool's acquire method by (pool
frame, first application frame below the library frames), and
:meth:`PoolWaitGroup.sentence` renders one group as a sentence. Thread
names are kept raw: callers escape them for their output. ProcessThreads is
what --threads found in one process at one moment.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass

from tracer.core.threaddump import Frame, Runtime, ThreadStack

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
