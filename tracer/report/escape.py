"""Make text that came from a traced process safe to print.

Thread names and command lines are chosen by the process, so a hostile or
buggy one could embed terminal escape sequences or newlines that would forge
report lines. Everything such is printed through `printable()`.
"""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=4096)
def printable(text: str | bytes) -> str:
    """Escape control characters, backslashes and invalid UTF-8 as \\xNN.

    Printable non-ASCII text (e.g. a thread name in Cyrillic) is kept.
    Cached: the same few process and thread names recur in every report.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="surrogateescape")
    if text.isprintable() and "\\" not in text:
        return text  # the common case, decided in C (undecodable bytes are not printable)
    out = []
    for ch in text:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # undecodable byte, from surrogateescape
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch == "\\":
            out.append("\\\\")
        elif code < 0x20 or code == 0x7F or (0x80 <= code < 0xA0) or not ch.isprintable():
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)
