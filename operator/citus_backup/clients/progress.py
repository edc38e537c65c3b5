"""The bucket side of :mod:`citus_backup.reconcile.progress` (I/O only)."""

from __future__ import annotations

from collections.abc import Callable

from citus_backup.api.backup import CitusBackup
from citus_backup.api.policy import CitusBackupPolicy
from citus_backup.clients.s3 import BucketClient
from citus_backup.reconcile.progress import RunProgress, backup_progress, started_document
from citus_backup.runner.layout import STARTED_NAME, dump_object_name


class BucketProgress:
    """Reads a running backup's progress from the objects it has written so far."""

    def __init__(self, buckets: Callable[[CitusBackupPolicy], BucketClient]) -> None:
        self.buckets = buckets

    def backup(self, policy: CitusBackupPolicy, backup: CitusBackup) -> RunProgress | None:
        location = backup.status.location
        if location is None or not location.key_prefix:
            return None
        prefix = location.key_prefix
        client = self.buckets(policy)
        sizes = {
            key[len(prefix) :]: size
            for key, size in client.object_sizes(prefix).items()
            if key.startswith(prefix)
        }
        if STARTED_NAME not in sizes:
            return None
        started = started_document(client.read(prefix + STARTED_NAME))
        if started is None:
            return None
        names = [str(n) for n in started.get("databases") or ()]
        inflight = {
            name: client.uploaded_bytes(prefix + dump_object_name(name))
            for name in names
            if dump_object_name(name) not in sizes
        }
        return backup_progress(started, sizes, inflight)
