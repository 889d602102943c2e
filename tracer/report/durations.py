"""Parse and print durations like `500ms`, `5s`, `2m`, `1h`, `1m30s` or plain seconds."""

from __future__ import annotations

import math
import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(text: str) -> float:
    """Return seconds for `text`, or raise ValueError with a message fit for the user.

    Accepts a plain number of seconds (`2.5`) or one or more number+unit parts
    (`1m30s`). Zero is allowed; negative, empty and unknown units are not.
    """
    s = text.strip().lower()
    if not s:
        raise ValueError("empty duration")
    try:
        value = float(s)
    except ValueError:
        pos = 0
        value = 0.0
        for m in _PART.finditer(s):
            if m.start() != pos:
                break
            value += float(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if pos != len(s) or pos == 0:
            raise ValueError(
                f"bad duration {text!r}: use e.g. 500ms, 5s, 2m, 1h or plain seconds"
            ) from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"bad duration {text!r}: must be a finite number >= 0")
    return value


def format_age(seconds: float) -> str:
    """Compact age for tables: `850ms`, `12.3s`, `4m12s`, `3h05m`, `2d04h`."""
    if seconds < 0:
        seconds = 0.0
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    total = int(seconds)
    if total < 3600:
        return f"{total // 60}m{total % 60:02d}s"
    if total < 86400:
        return f"{total // 3600}h{total % 3600 // 60:02d}m"
    return f"{total // 86400}d{total % 86400 // 3600:02d}h"
