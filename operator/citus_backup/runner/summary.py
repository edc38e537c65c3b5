"""The one-line JSON summary a run prints last, and its termination-message form.

The operator learns a Job's outcome from the pod's termination message
(``/dev/termination-log``), which Kubernetes truncates at 4096 bytes; a
truncated JSON document is useless, so :func:`termination_message` drops
detail (per-database sizes first, then the tail of the error message) until
the document fits, and says so with ``"truncated": true``. Stdout always gets
the full summary.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

#: Kubernetes keeps at most 4096 bytes of a termination message.
TERMINATION_LIMIT = 4000


@dataclass
class RunSummary:
    command: str
    status: str = "failed"
    backup_id: str | None = None
    location: str | None = None
    tiers: list[str] = field(default_factory=list)
    databases: dict[str, int] = field(default_factory=dict)
    total_size: int = 0
    duration_seconds: float = 0.0
    error: str | None = None
    reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "status": self.status,
            "command": self.command,
            "backupId": self.backup_id,
            "location": self.location,
            "tiers": self.tiers,
            "databases": self.databases,
            "totalSize": self.total_size,
            "durationSeconds": round(self.duration_seconds, 3),
            "error": self.error,
            "reason": self.reason,
        }
        data.update(self.extra)
        return data

    def to_line(self) -> str:
        return json.dumps(self.as_dict(), ensure_ascii=False, separators=(",", ":"))


def _encode(data: dict[str, Any]) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


def termination_message(summary: RunSummary, limit: int = TERMINATION_LIMIT) -> bytes:
    """The summary as JSON of at most ``limit`` bytes (still valid JSON)."""
    data = summary.as_dict()
    encoded = _encode(data)
    if len(encoded) <= limit:
        return encoded
    data["truncated"] = True
    data["databaseCount"] = len(summary.databases)
    data["databases"] = {}
    encoded = _encode(data)
    error = data.get("error") or ""
    while len(encoded) > limit and error:
        excess = len(encoded) - limit
        cut = max(len(error) - excess - 3, 0)
        error = error[:cut] + "..." if cut else ""
        data["error"] = error or None
        encoded = _encode(data)
    if len(encoded) > limit:
        keep = ("status", "command", "backupId", "reason", "truncated")
        encoded = _encode({key: data[key] for key in keep})
    return encoded[:limit]
