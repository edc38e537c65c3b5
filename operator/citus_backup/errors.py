"""The project's own error types.

Every I/O boundary (libpq/pg_dump, S3, the Kubernetes API) converts its
library's exceptions into one of these, so callers decide *what to do* from the
class alone: a :class:`PermanentError` needs a human (bad spec, wrong password,
missing Secret key) and must not be retried in a storm; a :class:`TransientError`
will probably go away (endpoint down, 409/429/5xx, Job still running) and is
retried after ``delay`` seconds.

Messages are one line that names the cause, and never contain credentials.
``reason`` is a CamelCase token used for status conditions and Events.
"""

from __future__ import annotations


class CitusBackupError(Exception):
    """Base class; ``str(err)`` is a one-line message naming the cause."""

    #: CamelCase reason for status conditions and Kubernetes Events.
    reason: str = "Error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason

    @property
    def message(self) -> str:
        return str(self)


class PermanentError(CitusBackupError):
    """Retrying without a change by a human will not help."""

    reason = "PermanentError"


class TransientError(CitusBackupError):
    """Likely to go away by itself; retry after ``delay`` seconds."""

    reason = "TransientError"

    def __init__(self, message: str, *, reason: str | None = None, delay: float = 30.0) -> None:
        super().__init__(message, reason=reason)
        self.delay = delay
