"""Close an fd through io_uring (IORING_OP_CLOSE), with raw syscalls.

No liburing and no Python binding: io_uring_setup(2), the two rings mapped
with mmap(2), one submission queue entry, io_uring_enter(2) waiting for its
completion. Used by tests/peer.py to drop an fd without any close-family
syscall, which is what the close probes must still notice.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import platform
import struct

SYS = {"x86_64": (425, 426), "aarch64": (425, 426)}  # io_uring_setup, io_uring_enter
IORING_OP_CLOSE = 19
IORING_ENTER_GETEVENTS = 1
IORING_OFF_SQ_RING, IORING_OFF_CQ_RING, IORING_OFF_SQES = 0, 0x8000000, 0x10000000
SQE_SIZE, CQE_SIZE = 64, 16


class _SqOffsets(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint32) for n in (
        "head", "tail", "ring_mask", "ring_entries", "flags", "dropped", "array", "resv1"
    )] + [("user_addr", ctypes.c_uint64)]  # fmt: skip


class _CqOffsets(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint32) for n in (
        "head", "tail", "ring_mask", "ring_entries", "overflow", "cqes", "flags", "resv1"
    )] + [("user_addr", ctypes.c_uint64)]  # fmt: skip


class _Params(ctypes.Structure):
    _fields_ = [
        ("sq_entries", ctypes.c_uint32),
        ("cq_entries", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("sq_thread_cpu", ctypes.c_uint32),
        ("sq_thread_idle", ctypes.c_uint32),
        ("features", ctypes.c_uint32),
        ("wq_fd", ctypes.c_uint32),
        ("resv", ctypes.c_uint32 * 3),
        ("sq_off", _SqOffsets),
        ("cq_off", _CqOffsets),
    ]


def uring_close(fd: int) -> int:
    """Close fd with one IORING_OP_CLOSE; returns the completion's result (0)."""
    setup, enter = SYS[platform.machine()]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    p = _Params()
    ring = libc.syscall(setup, 1, ctypes.byref(p))
    if ring < 0:
        raise OSError(ctypes.get_errno(), "io_uring_setup")
    try:
        sq_size = p.sq_off.array + p.sq_entries * 4
        cq_size = p.cq_off.cqes + p.cq_entries * CQE_SIZE
        sq = mmap.mmap(ring, sq_size, offset=IORING_OFF_SQ_RING)
        cq = mmap.mmap(ring, cq_size, offset=IORING_OFF_CQ_RING)
        sqes = mmap.mmap(ring, p.sq_entries * SQE_SIZE, offset=IORING_OFF_SQES)
        # struct io_uring_sqe: opcode u8, flags u8, ioprio u16, fd s32, ...
        sqes[0:SQE_SIZE] = struct.pack("<BBHi", IORING_OP_CLOSE, 0, 0, fd).ljust(SQE_SIZE, b"\0")
        tail = struct.unpack_from("<I", sq, p.sq_off.tail)[0]
        mask = struct.unpack_from("<I", sq, p.sq_off.ring_mask)[0]
        struct.pack_into("<I", sq, p.sq_off.array + 4 * (tail & mask), 0)
        struct.pack_into("<I", sq, p.sq_off.tail, tail + 1)
        if libc.syscall(enter, ring, 1, 1, IORING_ENTER_GETEVENTS, None, 0) < 0:
            raise OSError(ctypes.get_errno(), "io_uring_enter")
        head = struct.unpack_from("<I", cq, p.cq_off.head)[0]
        cmask = struct.unpack_from("<I", cq, p.cq_off.ring_mask)[0]
        _user_data, res, _flags = struct.unpack_from(
            "<QiI", cq, p.cq_off.cqes + CQE_SIZE * (head & cmask)
        )
        for m in (sq, cq, sqes):
            m.close()
        return res
    finally:
        os.close(ring)
