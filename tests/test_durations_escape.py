"""Pure helpers: duration parsing/printing and escaping of process-supplied text."""

from __future__ import annotations

import pytest

from tracer.report.durations import format_age, parse_duration
from tracer.report.escape import printable


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("5s", 5), ("2m", 120), ("1h", 3600), ("1m30s", 90), ("2.5", 2.5),
     ("0", 0), (" 7S ", 7), ("1d", 86400), ("1h2m3s", 3723)],
)  # fmt: skip
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5x", "-1s", "s", "5 s", "1.2.3s", "nan", "inf", "1s-", "ms"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.85, "850ms"), (12.34, "12.3s"), (252, "4m12s"), (3 * 3600 + 5 * 60, "3h05m"),
     (2 * 86400 + 4 * 3600, "2d04h"), (-1, "0ms")],
)  # fmt: skip
def test_format_age(seconds: float, text: str) -> None:
    assert format_age(seconds) == text


def test_printable_escapes_terminal_control_and_keeps_unicode() -> None:
    assert printable("pool-1-thread-3") == "pool-1-thread-3"
    assert printable("evil\x1b[31mred\nnext") == "evil\\x1b[31mred\\x0anext"
    assert printable("back\\slash") == "back\\\\slash"
    assert printable("поток") == "поток"
    assert printable(b"bad\xffbyte") == "bad\\xffbyte"
    assert printable("\u202eright-to-left") == "\\u202eright-to-left"
