"""The one exception type that reaches the user, as a single line and an exit code."""

from __future__ import annotations

from tracer.core.exitcodes import ExitStatus


class CloseWaitError(Exception):
    """An error the user can act on. `str()` is the whole message: one line
    that names the problem and, where there is one, the fix."""

    def __init__(self, status: ExitStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
