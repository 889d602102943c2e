"""Small, correct primitives over BCC tables that BCC 0.26 lacks or gets wrong.

- BCC's items_lookup_batch() passes one ctypes object as both the batch token
  and the count, and allocates max_entries-sized buffers on every call.
  BatchReader allocates once and keeps the token apart.
- BCC's __setitem__ always writes with BPF_ANY; user space here must never
  re-create an entry the kernel just deleted, so update() takes flags.
"""

from __future__ import annotations

import ctypes as ct
import errno
import os
from typing import Any

from bcc.libbcc import lib

BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2

# Errors that mean "this kernel has no batch operations" (before 5.6).
_NO_BATCH = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, 524}  # 524: ENOTSUPP


class BatchReader:
    """Read a whole BPF hash map into preallocated arrays, a few syscalls per pass."""

    def __init__(self, table: Any) -> None:
        self.table = table
        self.capacity = int(table.max_entries)
        self.keys = (table.Key * self.capacity)()
        self.values = (table.Leaf * self.capacity)()
        self.batch_supported = True

    def read(self) -> int:
        """Fill self.keys/self.values; return how many entries are valid.

        Entries added or removed while reading may or may not appear, as with
        any map dump; callers treat the result as a snapshot.
        """
        if self.batch_supported:
            try:
                return self._read_batch()
            except _BatchUnsupported:
                self.batch_supported = False
        return self._read_iter()

    def _read_batch(self) -> int:
        ksize, vsize = ct.sizeof(self.table.Key), ct.sizeof(self.table.Leaf)
        token_in, token_out = ct.c_uint32(0), ct.c_uint32(0)
        total = 0
        first = True
        while total < self.capacity:
            count = ct.c_uint32(self.capacity - total)
            res = lib.bpf_lookup_batch(
                self.table.map_fd,
                None if first else ct.byref(token_in),
                ct.byref(token_out),
                ct.byref(self.keys, ksize * total),
                ct.byref(self.values, vsize * total),
                ct.byref(count),
            )
            err = ct.get_errno()
            total += count.value
            if res != 0:
                if err == errno.ENOENT:
                    break  # walked the whole map
                if first and err in _NO_BATCH:
                    raise _BatchUnsupported
                raise OSError(err, f"BPF_MAP_LOOKUP_BATCH: {os.strerror(err)}")
            token_in.value = token_out.value
            first = False
        return total

    def _read_iter(self) -> int:
        n = 0
        for k, v in self.table.items():
            if n == self.capacity:
                break
            self.keys[n] = k
            self.values[n] = v
            n += 1
        return n


class _BatchUnsupported(Exception):
    pass


def update(table: Any, key: Any, value: Any, flags: int = BPF_ANY) -> bool:
    """Write one entry; False when flags forbid it (EEXIST/ENOENT) or the map is full."""
    res = lib.bpf_update_elem(table.map_fd, ct.byref(key), ct.byref(value), flags)
    if res == 0:
        return True
    err = ct.get_errno()
    if err in (errno.EEXIST, errno.ENOENT, errno.E2BIG, errno.ENOMEM):
        return False
    raise OSError(err, f"BPF map update: {os.strerror(err)}")


def delete(table: Any, key: Any) -> bool:
    """Remove one entry; False when it was not there."""
    if lib.bpf_delete_elem(table.map_fd, ct.byref(key)) == 0:
        return True
    err = ct.get_errno()
    if err == errno.ENOENT:
        return False
    raise OSError(err, f"BPF map delete: {os.strerror(err)}")


def percpu_sum(table: Any, index: int) -> int:
    """Sum of one slot of a per-CPU array over all CPUs."""
    return int(sum(table[table.Key(index)]))
