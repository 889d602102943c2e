"""Compile bpf/closewait.bpf.c with BCC, and turn its failures into one line.

BCC prints compiler and verifier diagnostics straight to the process's
stderr and raises a bare Exception; here they are captured, classified into
an exit status, and condensed. With --debug the diagnostics are printed too.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

from tracer.core.errors import CloseWaitError
from tracer.core.exitcodes import ExitStatus
from tracer.kernel.abi import bpf_dir
from tracer.kernel.config import ProbeConfig


def compile_program(config: ProbeConfig, verbose: bool = False) -> Any:
    """Compile and load the program (BCC attaches its TRACEPOINT_PROBEs now).

    What the compiler printed is condensed into the error when loading
    fails; with verbose it is written to stderr as well (the --debug promise
    of the CLI)."""
    from bcc import BPF  # imported late: preflight reports a missing bcc cleanly

    cflags = config.cflags()
    diag: list[str] = []  # stays empty if even the capture could not start
    try:
        with captured_stderr() as diag:
            bpf = BPF(src_file=str(bpf_dir() / "closewait.bpf.c").encode(), cflags=cflags)
    except Exception as exc:  # BCC raises bare Exception for every failure
        if verbose:
            _echo_diagnostics(diag)
        raise classify_load_error(exc, diag) from exc
    if verbose:
        _echo_diagnostics(diag)
    _return_compiler_memory()
    return bpf


def _echo_diagnostics(lines: list[str]) -> None:
    for line in lines:
        sys.stderr.write(f"closewait: bcc: {line}\n")
    if not lines:
        sys.stderr.write("closewait: bcc: the compiler printed nothing\n")
    sys.stderr.flush()


@contextlib.contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """Collect what C code (clang, libbpf, the verifier) writes to fd 2.

    BCC prints compiler and verifier diagnostics straight to the process's
    stderr; captured, they can be condensed into one line on failure.
    """
    lines: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines.extend(tmp.read().decode("utf-8", "replace").splitlines())


def _first_diagnostic(lines: list[str]) -> str:
    for pattern in (
        r"\berror:",
        r"fatal error",
        r"Permission denied|Operation not permitted",
    ):
        for line in lines:
            if re.search(pattern, line):
                return line.strip()
    return next((line.strip() for line in lines if line.strip()), "")


def classify_load_error(exc: Exception, diag: list[str]) -> CloseWaitError:
    """Turn BCC's generic exceptions into an exit status and one line."""
    text = str(exc)
    detail = _first_diagnostic(diag)
    joined = "\n".join(diag)
    if "compile" in text.lower():
        if "file not found" in joined or "No such file" in joined:
            return CloseWaitError(
                ExitStatus.NO_HEADERS,
                f"BCC cannot compile closewait: kernel headers incomplete ({detail}); "
                "fix: install linux-headers-$(uname -r) or run scripts/setup.sh",
            )
        return CloseWaitError(
            ExitStatus.INTERNAL,
            f"BCC failed to compile closewait.bpf.c: {detail or text}",
        )
    if "attach" in text.lower() and "tracepoint" in text.lower():
        return CloseWaitError(
            ExitStatus.NO_TRACEPOINT, f"cannot attach to a tracepoint: {text.strip()}"
        )
    if "Operation not permitted" in text or "Permission denied" in text:
        return CloseWaitError(
            ExitStatus.NO_BPF,
            f"the kernel refused the BPF program ({text.strip()}); "
            "fix: run as real root on the host, not in an unprivileged container",
        )
    return CloseWaitError(
        ExitStatus.NO_BPF,
        f"cannot load the BPF program: {text.strip()} {detail}".strip(),
    )


def program_text(config: ProbeConfig) -> str:
    """The C program and the flags BCC would compile it with (for --ebpf)."""
    source = (bpf_dir() / "closewait.bpf.c").read_text()
    return "// cflags: " + " ".join(config.cflags()) + "\n" + source


_COMPILER_LIBS = re.compile(r"/lib(LLVM|clang)[^/]*\.so")
MADV_DONTNEED = 4


def _return_compiler_memory() -> None:
    """Give back what compiling the program used and the tracer no longer needs.

    - The heap clang/LLVM used (about 20 MB here): glibc keeps freed memory
      in its arenas; malloc_trim() returns it to the kernel (a no-op
      elsewhere, e.g. musl).
    - The executable pages of libLLVM and libclang-cpp (about 72 MB here),
      touched while compiling and resident ever since. Code pages are never
      written, so MADV_DONTNEED only drops them from this process; were the
      code ever run again, it would fault back in from the page cache.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    with contextlib.suppress(OSError, AttributeError):
        libc.malloc_trim(0)
    try:
        with open("/proc/self/maps") as f:
            maps = f.read().splitlines()
    except OSError:
        return
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    for line in maps:
        fields = line.split()
        if len(fields) < 6 or fields[1] != "r-xp" or not _COMPILER_LIBS.search(fields[5]):
            continue
        start, end = (int(x, 16) for x in fields[0].split("-"))
        libc.madvise(start, end - start, MADV_DONTNEED)
