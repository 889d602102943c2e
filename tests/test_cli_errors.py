"""Bad input and broken hosts: one line on stderr, a distinct exit status, no traceback.

The broken hosts are made for real where the kernel allows it: an
unprivileged user (setpriv), a user namespace where bpf() is refused
(unshare -Ur), and private mount namespaces where the kernel headers or the
tracepoints are hidden under empty tmpfs mounts (unshare -m).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.cli_helpers import ROOT, run_cli
from tracer.core.exitcodes import ExitStatus


def assert_one_line_error(
    res: subprocess.CompletedProcess, status: ExitStatus, *words: str
) -> None:
    assert res.returncode == int(status), (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("closewait: ")
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert res.stdout == ""


@pytest.fixture(scope="module")
def dead_pid() -> int:
    """A pid that existed a moment ago and no longer does."""
    p = subprocess.Popen(["true"])
    p.wait()
    assert not os.path.exists(f"/proc/{p.pid}")
    return p.pid


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["watch", "--pid", "abc"], ["'abc' is not a process id"]),
        (["watch", "--pid", "-5"], ["not a process id"]),
        (["watch", "--pid", "1", "--all"], ["either --pid", "or --all"]),
        (["watch"], ["either --pid"]),
        (["watch", "--all", "--interval", "5x"], ["bad duration '5x'"]),
        (["watch", "--all", "--duration", "-3s"], ["bad duration"]),
        (["watch", "--all", "--min-age", ""], ["empty duration"]),
        (["watch", "--all", "--interval", "0"], ["--interval", "greater than 0"]),
        (["watch", "--all", "--max-sockets", "10"], ["--max-sockets"]),
        (["watch", "--bogus"], ["No such option", "--bogus"]),
        (["frobnicate"], ["No such command"]),
    ],
)
def test_usage_errors(args: list[str], words: list[str]) -> None:
    assert_one_line_error(run_cli(*args), ExitStatus.USAGE, *words)


def test_unknown_pid(dead_pid: int) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: the root check comes first")
    res = run_cli("watch", "--pid", str(dead_pid))
    assert_one_line_error(res, ExitStatus.NO_SUCH_PROCESS, f"no process with pid {dead_pid}")


def test_not_root(dead_pid: int) -> None:
    if os.geteuid() != 0:
        res = run_cli("watch", "--pid", "1")
    else:
        res = run_cli(
            "watch", "--pid", "1",
            prefix=("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"),
        )  # fmt: skip
    assert_one_line_error(res, ExitStatus.NOT_ROOT, "must run as root", "sudo")


def test_no_bpf_in_a_user_namespace(bpf_ok: None) -> None:
    # uid 0 inside a new user namespace passes the root check, but the
    # kernel refuses bpf() to it: what a rootless container looks like.
    res = run_cli("watch", "--pid", "1", prefix=("unshare", "--user", "--map-root-user"))
    assert_one_line_error(res, ExitStatus.NO_BPF, "bpf()")


def _in_private_mounts(script: str, *args: str) -> subprocess.CompletedProcess:
    """Run closewait after `script` (mount commands) in a private mount namespace."""
    cmd = f'{script} && exec "$0" -m tracer "$@"'
    return subprocess.run(
        ["unshare", "--mount", "sh", "-c", cmd, sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_no_kernel_headers(bpf_ok: None) -> None:
    if os.path.exists("/sys/kernel/kheaders.tar.xz"):
        pytest.skip("this kernel embeds its headers (CONFIG_IKHEADERS)")
    res = _in_private_mounts(
        "mount -t tmpfs none /lib/modules && mount -t tmpfs none /usr/src",
        "watch", "--pid", "1",
    )  # fmt: skip
    assert_one_line_error(res, ExitStatus.NO_HEADERS, "no kernel headers", "linux-headers-")


def test_missing_tracepoint(bpf_ok: None) -> None:
    # A tracefs without the sock category, as on kernels before 4.16.
    fake = (
        "mount -t tmpfs none /sys/kernel/debug && mount -t tmpfs none /sys/kernel/tracing"
        " && mkdir -p /sys/kernel/tracing/events/syscalls/sys_enter_close"
        " && touch /sys/kernel/tracing/events/syscalls/sys_enter_close/format"
    )
    res = _in_private_mounts(fake, "watch", "--pid", "1")
    assert_one_line_error(res, ExitStatus.NO_TRACEPOINT, "sock:inet_sock_set_state missing")


def test_tracefs_not_mounted(bpf_ok: None) -> None:
    res = _in_private_mounts(
        "mount -t tmpfs none /sys/kernel/debug && mount -t tmpfs none /sys/kernel/tracing",
        "watch", "--all",
    )  # fmt: skip
    assert_one_line_error(res, ExitStatus.NO_TRACEPOINT, "tracefs is not mounted", "mount -t")


def test_bcc_not_importable() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: the root check comes first")
    # sys.modules[name] = None makes `import name` fail, as on a host without python3-bpfcc.
    code = "import sys; sys.modules['bcc'] = None; from tracer.cli.app import main; main()"
    res = subprocess.run(
        [sys.executable, "-c", code, "watch", "--all"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert_one_line_error(res, ExitStatus.NO_DEPENDENCY, "python3-bpfcc", "PyPI")


def test_doctor_reports_every_check_and_loads(bpf_ok: None) -> None:
    res = run_cli("doctor")
    assert res.returncode == 0, res.stdout + res.stderr
    for name in ("root", "bcc", "bpf", "sock:inet_sock_set_state", "kernel headers", "load"):
        assert f"] {name}:" in res.stdout
    assert res.stdout.rstrip().endswith("closewait can run here")


def test_doctor_names_the_fix_when_tracefs_is_missing(bpf_ok: None) -> None:
    res = _in_private_mounts(
        "mount -t tmpfs none /sys/kernel/debug && mount -t tmpfs none /sys/kernel/tracing",
        "doctor",
    )
    assert res.returncode == int(ExitStatus.NO_TRACEPOINT)
    assert "[FAIL] tracefs" in res.stdout and "fix: mount -t tracefs" in res.stdout


def test_ebpf_flag_prints_the_program_with_its_flags() -> None:
    res = run_cli("watch", "--pid", "1", "--ebpf")
    assert res.returncode == 0
    first, rest = res.stdout.split("\n", 1)
    assert first.startswith("// cflags: ") and "-DCW_FILTER_PIDS" in first
    assert "TRACEPOINT_PROBE(sock, inet_sock_set_state)" in rest
    assert "-DCW_FILTER_PIDS" not in run_cli("watch", "--all", "--ebpf").stdout.split("\n", 1)[0]


def test_no_writable_temporary_directory(bpf_ok: None) -> None:
    # A read-only root as in a hardened unit or pod without a tmpfs: BCC has
    # nowhere to write while compiling. (tempfile falls back to the cwd too.)
    # Read-only binds, not empty mounts: a clone under /tmp (as CI's may be)
    # must stay importable.
    ro = " && ".join(
        f"mount --bind {d} {d} && mount -o remount,ro,bind {d}" for d in ("/tmp", "/var/tmp")
    )
    res = _in_private_mounts(f"{ro} && cd /proc", "watch", "--pid", "1")
    assert_one_line_error(
        res, ExitStatus.NO_DEPENDENCY, "no writable temporary directory", "TMPDIR"
    )
