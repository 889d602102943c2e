"""Where the C program lives and the constants it shares with Python.

The constants are read from bpf/closewait.h at run time rather than copied
here, so the two sides cannot drift apart.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

_DEFINE = re.compile(r"^#define\s+(CW_[A-Z0-9_]+)\s+(\d+)(?:ULL|U)?\b", re.MULTILINE)


def bpf_dir() -> Path:
    """The directory holding closewait.bpf.c and closewait.h.

    A wheel carries it inside the package (tracer/bpf); a source checkout or
    an editable install has it at the top of the repository (bpf/).
    """
    package = Path(__file__).resolve().parent.parent  # tracer/
    for candidate in (package / "bpf", package.parent / "bpf"):
        if (candidate / "closewait.bpf.c").is_file():
            return candidate
    raise FileNotFoundError(f"closewait.bpf.c not found in or next to {package}")


@functools.cache
def constants() -> dict[str, int]:
    """Every `#define CW_NAME <integer>` of closewait.h, by name."""
    text = (bpf_dir() / "closewait.h").read_text()
    return {name: int(value) for name, value in _DEFINE.findall(text)}


def const(name: str) -> int:
    """One constant of closewait.h; KeyError names it if the header lacks it."""
    return constants()[name]
