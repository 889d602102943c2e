"""A HotSpot JVM's performance counters (its hsperfdata file), read-only.

Every HotSpot JVM started without -XX:-UsePerfData keeps its counters in a
memory-mapped file, /tmp/hsperfdata_<user>/<pid> (in its own mount
namespace, with its own pid), that any reader may map or read without
touching the JVM. Two facts closewait needs are there:
- whether the JVM accepts attach (sun.rt.jvmCapabilities, "1..." when it
  does: -XX:+DisableAttachMechanism makes it "0..."), checked before jcmd
  is run;
- the total time it spent in safepoints (sun.rt.safepointTime, in ticks of
  sun.os.hrt.frequency), read before and after a thread dump: the
  difference is the pause the dump caused (plus any other safepoint at the
  same moment, so an upper bound).

Format (HotSpot perfMemory.hpp/perfData.hpp): a prologue (magic 0xcafec0c0,
byte order, ..., entry offset, entry count), then entries (length, name
offset, vector length, type, flags, units, variability, data offset).
"""

from __future__ import annotations

import glob
import os
import struct
from dataclasses import dataclass

MAGIC = 0xCAFEC0C0
_PROLOGUE = "IBBBBIIqII"  # after the byte-order decision
_ENTRY = "IIIBBBBI"


@dataclass(frozen=True)
class PerfCounters:
    values: dict[str, int | str]

    def safepoint_ms(self) -> float | None:
        """Total time in safepoints since the JVM started, in milliseconds."""
        ticks = self.values.get("sun.rt.safepointTime")
        freq = self.values.get("sun.os.hrt.frequency")
        if not isinstance(ticks, int) or not isinstance(freq, int) or freq <= 0:
            return None
        return ticks * 1000 / freq

    def attach_supported(self) -> bool | None:
        caps = self.values.get("sun.rt.jvmCapabilities")
        return None if not isinstance(caps, str) or not caps else caps[0] == "1"


def parse(data: bytes) -> PerfCounters:
    """Every long and string counter of an hsperfdata file; ValueError if it is not one."""
    if len(data) < 32 or int.from_bytes(data[:4], "big") != MAGIC:
        raise ValueError("not an hsperfdata file")
    order = "<" if data[4] == 1 else ">"
    prologue = struct.unpack_from(order + _PROLOGUE, data, 0)
    entry_offset, entries = prologue[8], prologue[9]
    entry = struct.Struct(order + _ENTRY)
    values: dict[str, int | str] = {}
    off = entry_offset
    for _ in range(entries):
        if off + entry.size > len(data):
            break
        length, name_off, vlen, dtype, _flags, _units, _var, data_off = entry.unpack_from(data, off)
        if length <= 0:
            break
        name_end = data.find(b"\0", off + name_off)
        name = data[off + name_off : name_end].decode("ascii", "replace")
        if dtype == ord("J") and vlen == 0:
            (values[name],) = struct.unpack_from(order + "q", data, off + data_off)
        elif dtype == ord("B") and vlen > 0:
            raw = data[off + data_off : off + data_off + vlen]
            values[name] = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
        off += length
    return PerfCounters(values)


def path(pid: int, nspid: int, uid: int) -> str | None:
    """The JVM's hsperfdata file, seen through its root (works for containers)."""
    for candidate in glob.glob(f"/proc/{pid}/root/tmp/hsperfdata_*/{nspid}"):
        try:
            if os.stat(candidate).st_uid == uid:
                return candidate
        except OSError:
            continue
    return None


def read(file: str | None) -> PerfCounters | None:
    if file is None:
        return None
    try:
        with open(file, "rb") as f:
            return parse(f.read())
    except (OSError, ValueError, struct.error):
        return None
