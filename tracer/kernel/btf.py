"""Minimal BTF reader: find struct member byte offsets in the running kernel.

closewait's BPF program is compiled by BCC against headers of some *other*
kernel version, so it must never dereference kernel structs through those
headers.  Instead, the few offsets it needs (sock -> netns inode) are looked up
at start-up in the kernel's own type information (/sys/kernel/btf/vmlinux) and
passed to the program as -D constants for bpf_probe_read_kernel().

Only the standard library is used, so the tracer gains no dependency.  The
type section is indexed in one cheap pass (type id -> byte position); members
and names are decoded only for the types a lookup actually visits.
"""

from __future__ import annotations

import functools
import struct
from pathlib import Path
from typing import NamedTuple

VMLINUX = Path("/sys/kernel/btf/vmlinux")

# BTF_KIND_* values (include/uapi/linux/btf.h).
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF = 1, 2, 3, 4, 5, 6, 7, 8
VOLATILE, CONST, RESTRICT, FUNC, FUNC_PROTO, VAR, DATASEC = 9, 10, 11, 12, 13, 14, 15
FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = 16, 17, 18, 19

# Per kind: name, bytes after the 12-byte btf_type header, and bytes per vlen
# entry.  Every size must be right: one mistake shifts all later type ids.
# fmt: off
_KINDS = (
    ("UNKN", 0, 0), ("INT", 4, 0), ("PTR", 0, 0), ("ARRAY", 12, 0), ("STRUCT", 0, 12),
    ("UNION", 0, 12), ("ENUM", 0, 8), ("FWD", 0, 0), ("TYPEDEF", 0, 0), ("VOLATILE", 0, 0),
    ("CONST", 0, 0), ("RESTRICT", 0, 0), ("FUNC", 0, 0), ("FUNC_PROTO", 0, 8), ("VAR", 4, 0),
    ("DATASEC", 0, 12), ("FLOAT", 0, 0), ("DECL_TAG", 4, 0), ("TYPE_TAG", 0, 0), ("ENUM64", 0, 12),
)
# fmt: on
KIND_NAMES = tuple(k[0] for k in _KINDS)
# Kinds that only qualify another type; a member lookup looks through them.
_MODIFIERS = frozenset({TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG})


class BTFError(LookupError):
    """A type or member is absent (e.g. no CONFIG_NET_NS) or the blob is bad."""


class Type(NamedTuple):
    """One btf_type header; `ref` is btf_type.size or .type depending on kind."""

    kind: int
    name: str
    vlen: int
    kind_flag: bool
    ref: int
    pos: int  # byte position of the kind-specific data in the blob


class Member(NamedTuple):
    """Result of a member lookup: byte offset from the outer struct and type id."""

    offset: int
    type_id: int


class BTF:
    """A parsed raw BTF blob (not split/module BTF, which needs a base)."""

    def __init__(self, data: bytes) -> None:
        e = {b"\x9f\xeb": "<", b"\xeb\x9f": ">"}.get(data[:2])  # magic 0xeB9F gives byte order
        if e is None:
            raise BTFError("not a BTF blob (bad magic)")
        self._e = e
        hdr_len, t_off, t_len, s_off, s_len = struct.unpack_from(self._e + "5I", data, 4)
        self._data = data
        self._str0, self._str_end = hdr_len + s_off, hdr_len + s_off + s_len
        self._pos = [0]  # type id 0 is "void"; ids start at 1
        pos, end = hdr_len + t_off, hdr_len + t_off + t_len
        unpack, index = struct.Struct(self._e + "4xI").unpack_from, self._pos
        while pos < end:
            (info,) = unpack(data, pos)
            kind = (info >> 24) & 0x1F
            if not 0 < kind < len(_KINDS):
                raise BTFError(f"unknown BTF kind {kind} at byte {pos}")
            index.append(pos)
            pos += 12 + _KINDS[kind][1] + _KINDS[kind][2] * (info & 0xFFFF)
        if pos != end:
            raise BTFError("type section does not end on a type boundary")

    @classmethod
    def load(cls, path: Path | str = VMLINUX) -> BTF:
        """Read a BTF file; the default is the running kernel's own types."""
        return cls(Path(path).read_bytes())

    def __len__(self) -> int:
        return len(self._pos)

    def string(self, off: int) -> str:
        """Name at a string-section offset (offset 0 is the empty name)."""
        start = self._str0 + off
        return self._data[start : self._data.index(b"\0", start, self._str_end)].decode()

    def get(self, type_id: int) -> Type:
        """Decode the header of one type."""
        if not 0 < type_id < len(self._pos):
            raise BTFError(f"no BTF type id {type_id}")
        pos = self._pos[type_id]
        name_off, info, ref = struct.unpack_from(self._e + "3I", self._data, pos)
        kind, name = (info >> 24) & 0x1F, self.string(name_off)
        return Type(kind, name, info & 0xFFFF, bool(info >> 31), ref, pos + 12)

    def find(self, name: str, kinds: tuple[int, ...] = (STRUCT, UNION)) -> int:
        """Id of the first complete type called `name` among `kinds`.

        Names are matched by string offset so that no other name is decoded.
        """
        key = b"\0" + name.encode() + b"\0"
        offs, at = set(), self._data.find(key, self._str0, self._str_end)
        while at != -1:
            offs.add(at + 1 - self._str0)
            at = self._data.find(key, at + 1, self._str_end)
        unpack = struct.Struct(self._e + "2I").unpack_from
        for tid in range(1, len(self._pos)):
            name_off, info = unpack(self._data, self._pos[tid])
            if name_off in offs and (info >> 24) & 0x1F in kinds:
                return tid
        raise BTFError(f"no {'/'.join(KIND_NAMES[k] for k in kinds)} named {name!r}")

    def resolve(self, type_id: int) -> int:
        """Strip typedef/const/volatile/restrict/type_tag down to the real type."""
        while type_id and self.get(type_id).kind in _MODIFIERS:
            type_id = self.get(type_id).ref
        return type_id

    def members(self, type_id: int) -> list[tuple[str, int, int]]:
        """(name, type id, bit offset) of a struct/union's direct members."""
        t = self.get(self.resolve(type_id))
        if t.kind not in (STRUCT, UNION):
            raise BTFError(f"{KIND_NAMES[t.kind]} {t.name!r} has no members")
        out = []
        for i in range(t.vlen):
            name_off, tid, off = struct.unpack_from(self._e + "3I", self._data, t.pos + 12 * i)
            # kind_flag set: high 8 bits are the bitfield size, low 24 the bit offset.
            out.append((self.string(name_off), tid, off & 0xFFFFFF if t.kind_flag else off))
        return out

    def _member(self, type_id: int, name: str) -> tuple[int, int] | None:
        """(bit offset, type id) of `name`, descending into anonymous members."""
        for mname, tid, bits in self.members(type_id):
            if mname == name:
                return bits, tid
            if not mname and self.get(self.resolve(tid)).kind in (STRUCT, UNION):
                found = self._member(tid, name)
                if found:
                    return bits + found[0], found[1]
        return None

    def member(self, struct_name: str, path: str) -> Member:
        """Byte offset and type of a dotted member path such as "ns.inum"."""
        tid, bits = self.find(struct_name), 0
        for part in path.split("."):
            found = self._member(tid, part)
            if found is None:
                raise BTFError(f"struct {struct_name} has no member {path!r} (at {part!r})")
            bits, tid = bits + found[0], found[1]
        if bits % 8:
            raise BTFError(f"{struct_name}.{path} is a bitfield (bit {bits})")
        return Member(bits // 8, tid)

    def describe(self, type_id: int) -> str:
        """Short C-like spelling of a type, to check what a member really is."""
        if type_id == 0:
            return "void"
        t = self.get(type_id)
        kind = KIND_NAMES[t.kind].lower()
        if t.kind == PTR:
            return self.describe(t.ref) + " *"
        if t.kind in _MODIFIERS:
            inner = self.describe(t.ref)
            return f"{t.name} = {inner}" if t.kind == TYPEDEF else f"{t.name or kind} {inner}"
        if t.kind in (STRUCT, UNION):
            return f"{kind} {t.name or '(anon)'} size={t.ref}"
        return f"{kind} {t.name} size={t.ref}"


def netns_offsets(btf: BTF) -> tuple[int, int]:
    """(offset of `struct net *` in struct sock, offset of u32 inum in struct net).

    Raises BTFError on kernels without CONFIG_NET_NS, where possible_net_t is
    empty and every socket belongs to init_net.
    """
    net = btf.member("sock", "__sk_common.skc_net.net")
    target = btf.get(btf.resolve(net.type_id))
    if target.kind != PTR or btf.get(btf.resolve(target.ref)).name != "net":
        raise BTFError(f"skc_net.net is {btf.describe(net.type_id)}, not struct net *")
    inum = btf.member("net", "ns.inum")
    t = btf.get(btf.resolve(inum.type_id))
    if t.kind != INT or t.ref != 4:
        raise BTFError(f"net.ns.inum is {btf.describe(inum.type_id)}, not a 32-bit int")
    return net.offset, inum.offset


@functools.cache
def netns_offsets_here() -> tuple[int, int] | None:
    """netns_offsets() of the running kernel, or None where it has no BTF
    (or no network namespaces): then every socket's namespace is unknown."""
    try:
        return netns_offsets(BTF.load())
    except (OSError, BTFError):
        return None


if __name__ == "__main__":
    import time

    t0 = time.perf_counter()
    vmlinux = BTF.load()
    skc, inum = netns_offsets(vmlinux)
    print(f"{len(vmlinux) - 1} types, {1e3 * (time.perf_counter() - t0):.1f} ms")
    net = vmlinux.member("sock", "__sk_common.skc_net")
    print(f"sock.__sk_common.skc_net: {net.offset}, {vmlinux.describe(net.type_id)}")
    print(f"-DCW_OFF_SKC_NET={skc} -DCW_OFF_NET_INUM={inum}")
