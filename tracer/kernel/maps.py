"""Small, correct primitives over BCC tables that BCC 0.26 lacks or gets wrong.

- BCC's items_lookup_batch() passes one ctypes object as both the batch token
  and the count, and allocates max_entries-sized buffers on every call.
  BatchReader allocates one chunk once and keeps the token apart.
- BCC's __setitem__ and __delitem__ raise on a full map or a missing key,
  which are ordinary outcomes here: update() and delete() say so in a bool.
"""

from __future__ import annotations

import ctypes as ct
import errno
import os
import struct
from collections.abc import Iterator
from typing import Any

from bcc.libbcc import lib

BPF_ANY = 0

# Errors that mean "this kernel has no batch operations" (before 5.6).
_NO_BATCH = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, 524}  # 524: ENOTSUPP


class BatchReader:
    """Read a BPF hash map with u64 keys whose values start with a u64, in
    chunks of preallocated arrays: a few syscalls per pass, and memory for
    one chunk rather than for max_entries (262,144 entries would be 25 MB)."""

    def __init__(self, table: Any, chunk: int = 4096) -> None:
        self.table = table
        self.chunk = min(chunk, int(table.max_entries))
        self.keys = (table.Key * self.chunk)()
        self.values = (table.Leaf * self.chunk)()
        self._vsize = ct.sizeof(table.Leaf)
        self.batch_supported = True

    def chunks(self) -> Iterator[tuple[tuple[int, ...], list[int], Any]]:
        """(keys, first u64 of each value, the values array) per chunk.

        Keys and leading values are unpacked in C (struct), so a caller
        comparing them with what it knows pays Python work only for entries
        that changed. The arrays are reused: consume a chunk before the next.
        Entries added or removed during the walk may or may not appear, as
        with any map dump; callers treat the result as a snapshot.
        """
        if self.batch_supported:
            try:
                yield from self._batches()
                return
            except _BatchUnsupported:
                self.batch_supported = False
        items = list(self.table.items())
        for start in range(0, len(items), self.chunk):
            part = items[start : start + self.chunk]
            for i, (k, v) in enumerate(part):
                self.keys[i] = k
                self.values[i] = v
            yield self._unpack(len(part))

    def _unpack(self, n: int) -> tuple[tuple[int, ...], list[int], Any]:
        keys = struct.unpack_from(f"={n}Q", self.keys)
        head = struct.Struct(f"=Q{self._vsize - 8}x")
        firsts = [
            v for (v,) in head.iter_unpack(memoryview(self.values).cast("B")[: n * self._vsize])
        ]
        return keys, firsts, self.values

    def _batches(self) -> Iterator[tuple[tuple[int, ...], list[int], Any]]:
        token_in, token_out = ct.c_uint32(0), ct.c_uint32(0)
        first = True
        while True:
            count = ct.c_uint32(self.chunk)
            res = lib.bpf_lookup_batch(
                self.table.map_fd,
                None if first else ct.byref(token_in),
                ct.byref(token_out),
                ct.byref(self.keys),
                ct.byref(self.values),
                ct.byref(count),
            )
            err = ct.get_errno()
            if res != 0 and err != errno.ENOENT:
                if first and err in _NO_BATCH:
                    raise _BatchUnsupported
                raise OSError(err, f"BPF_MAP_LOOKUP_BATCH: {os.strerror(err)}")
            if count.value:
                yield self._unpack(count.value)
            if res != 0:
                return  # ENOENT: walked the whole map
            token_in.value = token_out.value
            first = False


class _BatchUnsupported(Exception):
    pass


def update(table: Any, key: Any, value: Any) -> bool:
    """Write one entry (create or replace); False when the map is full."""
    res = lib.bpf_update_elem(table.map_fd, ct.byref(key), ct.byref(value), BPF_ANY)
    if res == 0:
        return True
    err = ct.get_errno()
    if err in (errno.E2BIG, errno.ENOMEM):
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
