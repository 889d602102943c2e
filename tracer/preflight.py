"""Checks that closewait can run here, each with the command that fixes it.

`closewait doctor` prints them all; `watch` runs them before compiling, so a
missing piece is reported as one line and a distinct exit code instead of a
page of clang errors or a traceback.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tracer.errors import CloseWaitError
from tracer.exitcodes import ExitStatus

TRACEFS_ROOTS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))

#: (category, event, required). close_range appeared in Linux 5.9; without it
#: closewait still works but cannot attribute closes done through closefrom().
TRACEPOINTS = (
    ("sock", "inet_sock_set_state", True),
    ("syscalls", "sys_enter_close", True),
    ("syscalls", "sys_enter_close_range", False),
    ("sched", "sched_process_exit", True),
)

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
    for category, event, required in TRACEPOINTS:
        name = f"{category}:{event}"
        if (root / "events" / category / event / "format").is_file():
            checks.append(Check(name, True, f"tracepoint {name} present", required=required))
        else:
            why = (
                "the kernel is older than 4.16 or built without it"
                if required
                else "closes through close_range()/closefrom() will not be attributed"
            )
            checks.append(
                Check(
                    name,
                    False,
                    f"tracepoint {name} missing: {why}",
                    "run closewait on Linux >= 4.16 with CONFIG_FTRACE_SYSCALLS"
                    if required
                    else "",
                    ExitStatus.NO_TRACEPOINT,
                    required=required,
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


def check_bpf_syscall() -> Check:
    """Create and close a one-element array map: the cheapest proof that the
    bpf() syscall is allowed (it is not in containers without CAP_BPF, under
    lockdown, or in a user namespace)."""
    libc = ctypes.CDLL(None, use_errno=True)
    # union bpf_attr for BPF_MAP_CREATE: type, key_size, value_size, max_entries.
    attr = (ctypes.c_uint32 * 30)()
    attr[0], attr[1], attr[2], attr[3] = 2, 4, 4, 1  # BPF_MAP_TYPE_ARRAY
    sys_bpf = {"x86_64": 321, "aarch64": 280, "ppc64le": 361, "s390x": 351}.get(platform.machine())
    if sys_bpf is None:
        return Check("bpf", True, f"bpf() not probed on {platform.machine()}")
    fd = libc.syscall(sys_bpf, 0, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd >= 0:
        os.close(fd)
        return Check("bpf", True, "bpf() syscall allowed")
    err = ctypes.get_errno()
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


def ringbuf_supported(release: str | None = None) -> bool:
    """BPF ring buffers arrived in Linux 5.8; older kernels get the perf buffer."""
    m = re.match(r"(\d+)\.(\d+)", release or platform.release())
    return bool(m) and (int(m.group(1)), int(m.group(2))) >= (5, 8)


def all_checks() -> list[Check]:
    """Every check, in the order a person would fix them."""
    checks = [check_root(), check_bcc(), check_pyroute2(), check_bpf_syscall()]
    checks += check_tracepoints()
    checks.append(check_headers())
    rb = ringbuf_supported()
    checks.append(
        Check(
            "ring buffer",
            True,
            "BPF ring buffer available (Linux >= 5.8)"
            if rb
            else "no BPF ring buffer before Linux 5.8: using the perf buffer",
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
    return require(check_bcc, check_pyroute2, check_bpf_syscall, check_tracepoints, check_headers)
