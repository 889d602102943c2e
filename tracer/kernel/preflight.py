"""Checks that closewait can run here, each with the command that fixes it.

`closewait doctor` prints them all; `watch` runs them before compiling, so a
missing piece is reported as one line and a distinct exit code instead of a
page of clang errors or a traceback.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import platform
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tracer.core.errors import CloseWaitError
from tracer.core.exitcodes import ExitStatus
from tracer.kernel.tracepoints import TRACEPOINTS, present

TRACEFS_ROOTS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))

BCC_FIX = (
    "apt-get install python3-bpfcc (Debian/Ubuntu) or dnf install python3-bcc (Fedora/RHEL); "
    "in a venv, create it with --system-site-packages (PyPI's 'bcc' is another project)"
)


@dataclass(frozen=True)
class Check:
    """The outcome of one check. `status` is the exit code when it fails."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    status: ExitStatus = ExitStatus.OK
    required: bool = True

    def error(self) -> CloseWaitError:
        msg = f"{self.detail}; fix: {self.fix}" if self.fix else self.detail
        return CloseWaitError(self.status, msg)


def check_root() -> Check:
    if os.geteuid() == 0:
        return Check("root", True, "running as root")
    return Check(
        "root",
        False,
        "must run as root (closewait loads BPF and reads other users' /proc/PID/fd)",
        "run it with sudo",
        ExitStatus.NOT_ROOT,
    )


def check_bcc() -> Check:
    try:
        import bcc
        from bcc import BPF  # noqa: F401
    except ImportError as exc:
        return Check(
            "bcc",
            False,
            f"cannot import BCC's Python module ({exc})",
            BCC_FIX,
            ExitStatus.NO_DEPENDENCY,
        )
    except Exception as exc:  # libbcc.so missing raises OSError-like errors
        return Check(
            "bcc",
            False,
            f"BCC is installed but broken ({exc})",
            BCC_FIX,
            ExitStatus.NO_DEPENDENCY,
        )
    version = getattr(bcc, "__version__", "unknown version")
    return Check("bcc", True, f"BCC {version} importable")


def check_pyroute2() -> Check:
    try:
        import pyroute2
        from pyroute2 import DiagSocket  # noqa: F401
    except ImportError as exc:
        return Check(
            "pyroute2",
            False,
            f"cannot import pyroute2 ({exc})",
            "pip install pyroute2 (or apt-get install python3-pyroute2)",
            ExitStatus.NO_DEPENDENCY,
        )
    return Check("pyroute2", True, f"pyroute2 {getattr(pyroute2, '__version__', '?')} importable")


def tracefs_root() -> Path | None:
    """The first mounted tracefs, or None."""
    for root in TRACEFS_ROOTS:
        if (root / "events").is_dir():
            return root
    return None


def check_tracepoints() -> list[Check]:
    root = tracefs_root()
    if root is None:
        return [
            Check(
                "tracefs",
                False,
                "tracefs is not mounted (no /sys/kernel/tracing/events)",
                "mount -t tracefs tracefs /sys/kernel/tracing && "
                "mount -t debugfs debugfs /sys/kernel/debug",
                ExitStatus.NO_TRACEPOINT,
            )
        ]
    checks = [Check("tracefs", True, f"tracefs mounted at {root}")]
    for tp in TRACEPOINTS:
        if present(root, tp):
            checks.append(
                Check(tp.name, True, f"tracepoint {tp.name} present", required=tp.required)
            )
        elif tp.required:
            checks.append(
                Check(
                    tp.name,
                    False,
                    f"tracepoint {tp.name} missing: the kernel is older than 4.16 "
                    "or built without it",
                    "run closewait on Linux >= 4.16",
                    ExitStatus.NO_TRACEPOINT,
                )
            )
        else:
            checks.append(
                Check(
                    tp.name,
                    False,
                    f"tracepoint {tp.name} missing (CONFIG_FTRACE_SYSCALLS off, or an older "
                    f"kernel): {tp.without}",
                    status=ExitStatus.NO_TRACEPOINT,
                    required=False,
                )
            )
    return checks


def _uts_release(build: Path) -> str | None:
    try:
        text = (build / "include/generated/utsrelease.h").read_text()
    except OSError:
        return None
    m = re.search(r'UTS_RELEASE\s+"([^"]+)"', text)
    return m.group(1) if m else None


def check_headers(release: str | None = None) -> Check:
    """Kernel headers, where BCC looks for them.

    BCC uses $BCC_KERNEL_SOURCE, else /lib/modules/$(uname -r)/build, else
    /sys/kernel/kheaders.tar.xz (CONFIG_IKHEADERS). Headers of another
    version work for closewait, which reads no kernel struct, but are named.
    """
    release = release or platform.release()
    fix = (
        f"apt-get install linux-headers-{release} (or run scripts/setup.sh, "
        "which links the nearest installed headers when that package does not exist)"
    )
    env = os.environ.get("BCC_KERNEL_SOURCE")
    candidates = [Path(env)] if env else [Path("/lib/modules") / release / "build"]
    for build in candidates:
        if (build / "include").is_dir():
            found = _uts_release(build)
            if found and found != release:
                return Check(
                    "kernel headers",
                    True,
                    f"headers of {found} at {build} for kernel {release}: "
                    "fine for closewait (it reads tracepoint arguments only)",
                )
            return Check("kernel headers", True, f"kernel headers at {build}")
    if Path("/sys/kernel/kheaders.tar.xz").exists():
        return Check("kernel headers", True, "kernel headers from /sys/kernel/kheaders.tar.xz")
    where = candidates[0]
    return Check(
        "kernel headers",
        False,
        f"no kernel headers for {release} at {where}",
        fix,
        ExitStatus.NO_HEADERS,
    )


_SYS_BPF = {"x86_64": 321, "aarch64": 280, "ppc64le": 361, "s390x": 351}
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_RINGBUF = 27


def _create_map(map_type: int, key_size: int, value_size: int, max_entries: int) -> int:
    """bpf(BPF_MAP_CREATE) and close the map at once: 0 on success, else errno
    (-1 where the syscall number is not known for this architecture)."""
    sys_bpf = _SYS_BPF.get(platform.machine())
    if sys_bpf is None:
        return -1
    libc = ctypes.CDLL(None, use_errno=True)
    # union bpf_attr for BPF_MAP_CREATE: type, key_size, value_size, max_entries.
    attr = (ctypes.c_uint32 * 30)()
    attr[0], attr[1], attr[2], attr[3] = map_type, key_size, value_size, max_entries
    fd = libc.syscall(sys_bpf, 0, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd >= 0:
        os.close(fd)
        return 0
    return ctypes.get_errno()


def check_bpf_syscall() -> Check:
    """Create and close a one-element array map: the cheapest proof that the
    bpf() syscall is allowed (it is not in containers without CAP_BPF, under
    lockdown, or in a user namespace)."""
    err = _create_map(BPF_MAP_TYPE_ARRAY, 4, 4, 1)
    if err < 0:
        return Check("bpf", True, f"bpf() not probed on {platform.machine()}")
    if err == 0:
        return Check("bpf", True, "bpf() syscall allowed")
    if err == errno.ENOSYS:
        why = "the kernel has no bpf() syscall (CONFIG_BPF_SYSCALL off)"
    else:
        why = f"the kernel refused bpf(): {os.strerror(err)}"
    return Check(
        "bpf",
        False,
        why,
        "run as real root on the host (not in an unprivileged container or user namespace)",
        ExitStatus.NO_BPF,
    )


@functools.cache
def check_tmpdir() -> Check:
    """BCC writes the preprocessed program to a temporary directory while
    compiling (and closewait captures the compiler's messages in a temporary
    file): a read-only root with no writable $TMPDIR or /tmp fails there."""
    try:
        with tempfile.TemporaryFile():
            pass
    except OSError as exc:
        return Check(
            "tmpdir",
            False,
            f"no writable temporary directory for BCC's compiler ({exc.strerror})",
            "set TMPDIR to a writable directory, or mount a tmpfs on /tmp (PrivateTmp=yes, "
            "an emptyDir in a pod)",
            ExitStatus.NO_DEPENDENCY,
        )
    return Check("tmpdir", True, f"temporary directory {tempfile.gettempdir()} writable")


def ringbuf_supported() -> bool:
    """Whether this kernel creates BPF ring buffers (5.8+, or back-ported):
    asked of the kernel by creating one, not guessed from the version."""
    if _create_map(BPF_MAP_TYPE_RINGBUF, 0, 0, 4096) == 0:
        return True
    if platform.machine() not in _SYS_BPF:  # cannot ask: go by the version
        m = re.match(r"(\d+)\.(\d+)", platform.release())
        return bool(m) and (int(m.group(1)), int(m.group(2))) >= (5, 8)
    return False


def all_checks() -> list[Check]:
    """Every check, in the order a person would fix them."""
    checks = [check_root(), check_bcc(), check_pyroute2(), check_bpf_syscall()]
    checks += check_tracepoints()
    checks.append(check_headers())
    checks.append(check_tmpdir())
    rb = ringbuf_supported()
    checks.append(
        Check(
            "ring buffer",
            True,
            "BPF ring buffer available"
            if rb
            else "no BPF ring buffer (Linux < 5.8): using the per-CPU perf buffer, "
            "one buffer of the configured size per CPU",
            required=False,
        )
    )
    return checks


def require(*steps: Callable[[], Check | list[Check]]) -> list[Check]:
    """Run checks in order and raise the first required failure as CloseWaitError.

    Returns the optional checks that failed, so the caller can warn about them.
    """
    warnings: list[Check] = []
    for step in steps:
        result = step()
        for check in result if isinstance(result, list) else [result]:
            if check.ok:
                continue
            if check.required:
                raise check.error()
            warnings.append(check)
    return warnings


def require_tracer() -> list[Check]:
    """Everything loading the BPF program needs, root excepted (callers check
    root first, before anything slower). Returns optional checks that failed."""
    return require(
        check_bcc, check_pyroute2, check_bpf_syscall, check_tracepoints, check_headers, check_tmpdir
    )
