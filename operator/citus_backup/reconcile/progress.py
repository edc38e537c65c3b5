"""Progress of a running backup, read from the bucket it is writing (pure part + port).

Why from the bucket: the runner has no Kubernetes credentials (its pod mounts
no token) and must not get any just to report progress; what it has written
is in the bucket anyway. ``started.json`` (written first) names the databases
of the run, a finished database is its ``<db>.dump`` object, and a database
being dumped is a multipart upload whose parts so far are listable. That is
two or three S3 requests per database, made only while a backup runs and at
most once per :data:`MIN_INTERVAL` per backup: the rate is bounded whatever
the poll interval.

Restores have no such trace (they write into PostgreSQL only), so their
status shows the phase and, when finished, what was restored and verified.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from citus_backup.api.backup import CitusBackup
from citus_backup.api.policy import CitusBackupPolicy
from citus_backup.errors import CitusBackupError
from citus_backup.runner.layout import dump_object_name

logger = logging.getLogger(__name__)

#: Fewest seconds between two progress reads of one run (S3 or PostgreSQL requests).
MIN_INTERVAL = 10.0

Status = dict[str, Any]


@dataclass
class ProgressCache:
    """The last progress read of each running backup or restore, so a run is asked
    at most every :data:`MIN_INTERVAL` seconds whatever the poll interval; an
    entry goes when its run finishes (:meth:`forget`)."""

    _last: dict[tuple[str, str], tuple[datetime, Status | None]] = field(default_factory=dict)

    def get(
        self, key: tuple[str, str], now: datetime, read: Callable[[], Status | None]
    ) -> Status | None:
        """The cached value if read less than MIN_INTERVAL ago, else ``read()`` (None
        when it raises a project error: progress is best effort)."""
        last = self._last.get(key)
        if last is not None and (now - last[0]).total_seconds() < MIN_INTERVAL:
            return last[1]
        try:
            value = read()
        except CitusBackupError as err:
            logger.debug("progress of %s/%s unknown: %s", *key, err)
            value = None
        self._last[key] = (now, value)
        return value

    def forget(self, key: tuple[str, str]) -> None:
        self._last.pop(key, None)


@dataclass(frozen=True)
class RunProgress:
    databases_done: int
    databases_total: int | None
    bytes_done: int

    def to_status(self) -> dict[str, Any]:
        status: dict[str, Any] = {"databasesDone": self.databases_done, "bytes": self.bytes_done}
        if self.databases_total is not None:
            status["databasesTotal"] = self.databases_total
        return status


def backup_progress(
    started: Mapping[str, Any] | None,
    sizes: Mapping[str, int],
    inflight: Mapping[str, int],
) -> RunProgress:
    """From ``started.json``, the set's object sizes (name -> bytes) and the bytes
    uploaded so far per unfinished database dump (name -> bytes)."""
    names: Sequence[str] = [str(n) for n in (started or {}).get("databases") or ()]
    done = [n for n in names if dump_object_name(n) in sizes]
    finished_bytes = sum(sizes[dump_object_name(n)] for n in done)
    # A split database's data parts (<db>.dump.NNNN) are stored before its
    # schema archive, which completes it: count them as they land.
    heads = {dump_object_name(n) + "." for n in names}
    finished_bytes += sum(
        size
        for name, size in sizes.items()
        if name[-4:].isdigit() and name[:-4] in heads and len(name) > 4
    )
    return RunProgress(
        databases_done=len(done),
        databases_total=len(names) if started is not None else None,
        bytes_done=finished_bytes + sum(inflight.values()),
    )


class ProgressSource(Protocol):
    """Where the reconciler reads a running backup's progress (None: not known yet)."""

    def backup(self, policy: CitusBackupPolicy, backup: CitusBackup) -> RunProgress | None: ...


def started_document(raw: bytes) -> Mapping[str, Any] | None:
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None
