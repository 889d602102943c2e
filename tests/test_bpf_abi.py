"""The C and Python sides agree: constants from closewait.h, layouts from BCC."""

from __future__ import annotations

import ctypes
import re
import socket

import pytest
from pyroute2.netlink.diag import SS_CLOSE, SS_CLOSE_WAIT, SS_ESTABLISHED, SS_LAST_ACK, SS_SYN_SENT

from tracer.kernel import preflight
from tracer.kernel.abi import constants
from tracer.kernel.probe import available_close_probes
from tracer.kernel.tracepoints import CLOSE_PROBES, TRACEPOINTS


def test_header_constants_match_the_kernel_abi() -> None:
    c = constants()
    assert (c["CW_TCP_ESTABLISHED"], c["CW_TCP_SYN_SENT"], c["CW_TCP_CLOSE"]) == (
        SS_ESTABLISHED, SS_SYN_SENT, SS_CLOSE,
    )  # fmt: skip
    assert (c["CW_TCP_CLOSE_WAIT"], c["CW_TCP_LAST_ACK"]) == (SS_CLOSE_WAIT, SS_LAST_ACK)
    assert (c["CW_AF_INET"], c["CW_AF_INET6"], c["CW_IPPROTO_TCP"]) == (
        socket.AF_INET, socket.AF_INET6, socket.IPPROTO_TCP,
    )  # fmt: skip
    assert c["CW_DROP_MAX_AGE_NS"] == 1_000_000_000
    stats = sorted(v for k, v in c.items() if k.startswith("CW_STAT_") and k != "CW_STAT_MAX")
    assert stats == list(range(c["CW_STAT_MAX"])), "stat indexes must be dense"


@pytest.mark.bpf
def test_bcc_layouts_have_the_fields_python_reads(probe) -> None:
    b = probe._bpf
    tuple_t = b[b"closewait"].Leaf._fields_[1][1]
    assert ctypes.sizeof(tuple_t) == 40, "cw_tuple must stay 40 bytes without padding (hash key)"
    names = lambda t: [f[0] for f in t._fields_]  # noqa: E731
    key = b[b"preexist"].Key
    assert ctypes.sizeof(key) == 48, "cw_ns_tuple must stay 48 bytes without padding (hash key)"
    assert names(key) == ["netns", "pad", "t"]
    assert names(b[b"closewait"].Leaf) == ["fin_ns", "t", "c", "netns", "pad"]
    assert names(tuple_t) == ["family", "sport", "dport", "pad", "saddr", "daddr"]
    assert names(b[b"closewait"].Leaf._fields_[2][1])[:5] == [
        "opened_ns",
        "tgid",
        "tid",
        "comm",
        "how",
    ]
    ev = names(b[b"event_layout"].Leaf)
    wanted = "ts skaddr kind tgid tid drop_kind fd_lo fd_hi oldstate newstate source t"
    assert ev == wanted.split(), "the tuple must stay last: short records stop before it"
    from tracer.kernel.config import EVENT_RECORD_BYTES

    event = b[b"event_layout"].Leaf
    assert event.t.offset + 8 == EVENT_RECORD_BYTES  # short record + ring buffer header
    assert ctypes.sizeof(event) == event.t.offset + 48


@pytest.mark.bpf
def test_chunked_batch_reads_see_every_entry_once(probe, peers) -> None:
    from tests.conftest import connected_pair
    from tracer.kernel.maps import BatchReader

    server, client = peers(), peers()
    ports = set()
    for _ in range(10):
        pair = connected_pair(server, client)
        server.call(op="close", fd=pair["server_fd"])
        ports.add(pair["client_port"])
    table = probe._bpf[b"closewait"]

    def read(chunk: int) -> dict[int, int]:
        """Our ten sockets (other entries come and go with the host's traffic)."""
        out: dict[int, int] = {}
        for keys, fins, values in BatchReader(table, chunk).chunks():
            for i, (k, fin) in enumerate(zip(keys, fins)):
                assert values[i].fin_ns == fin
                if values[i].t.sport in ports:
                    assert k not in out
                    out[k] = fin
        return out

    small, big = read(3), read(4096)
    assert len(big) == 10 and small == big


def _format_fields(event: str) -> dict[str, tuple[int, int]]:
    """name -> (offset, size) from a tracepoint's tracefs format file."""
    root = preflight.tracefs_root()
    assert root is not None, "tracefs is not mounted"
    out = {}
    for line in (root / "events" / event / "format").read_text().splitlines():
        m = re.search(r"field:.*?(\w+)(\[\d*\])?;\s*offset:(\d+);\s*size:(\d+);", line)
        if m:
            out[m.group(1)] = (int(m.group(3)), int(m.group(4)))
    return out


# The arguments each cw_sys_enter_* function reads, in order (args[0], [1], [2]).
SYSCALL_ARGS = {
    "sys_enter_close": ["fd"],
    "sys_enter_close_range": ["fd", "max_fd", "flags"],
    "sys_enter_dup2": ["oldfd", "newfd"],
    "sys_enter_dup3": ["oldfd", "newfd"],
}


@pytest.mark.bpf
def test_syscall_records_have_the_layout_the_probes_read(probe) -> None:
    """bpf/closewait.bpf.c reads sys_enter_* records as struct cw_sys_enter
    (number at 8, 8-byte arguments from 16), and io_uring_submit_req's opcode
    at 32: the table's layouts say so, and this kernel's records agree."""
    syscalls = {n.split(":")[1] for n in CLOSE_PROBES if n.startswith("syscalls:")}
    assert syscalls == set(SYSCALL_ARGS)
    available = available_close_probes()
    assert {"syscalls:sys_enter_close", "syscalls:sys_enter_dup3"} <= set(available)
    assert "io_uring:io_uring_submit_req" in available  # Linux >= 5.18 here
    for tp in TRACEPOINTS:
        if tp.name not in available:
            continue
        fields = _format_fields(f"{tp.category}/{tp.event}")
        if tp.category == "syscalls":
            assert fields["__syscall_nr"] == (8, 4), tp.name
            for i, name in enumerate(SYSCALL_ARGS[tp.event]):
                assert fields[name] == (16 + 8 * i, 8), (tp.name, name)
        for name, off, size in tp.layout:
            assert fields[name] == (off, size), (tp.name, name)
