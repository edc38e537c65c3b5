"""What the reconcilers need from the outside world, as small protocols.

The reconcilers are plain Python: they read CitusBackupPolicy / CitusBackup /
CitusRestore models, decide, and act through these ports. The real
implementations are thin I/O modules (:mod:`citus_backup.clients`); the unit
tests pass in-memory fakes, so every decision is tested without a cluster.

Every port raises only the project's errors (:mod:`citus_backup.errors`):
``NotFound`` never escapes as an exception for reads (they return ``None``),
a create that hits an existing object returns ``False`` (create-or-ignore-409,
which is what makes scheduled runs and Jobs idempotent across restarts).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from kubernetes.client import V1Job

from citus_backup.api.policy import PostgresConnection


class Kind(StrEnum):
    """The plural resource names of the three kinds (``citusbackup.io/v1alpha1``)."""

    POLICY = "citusbackuppolicies"
    BACKUP = "citusbackups"
    RESTORE = "citusrestores"


@dataclass(frozen=True)
class JobState:
    """What the reconcilers read from a Job and its pods."""

    name: str
    #: Condition Complete=True.
    complete: bool = False
    #: Condition Failed=True.
    failed: bool = False
    #: reason/message of the Failed condition (e.g. DeadlineExceeded, BackoffLimitExceeded).
    failure_reason: str | None = None
    failure_message: str | None = None
    #: A pod of the Job is running (or ready).
    running: bool = False
    start_time: datetime | None = None
    completion_time: datetime | None = None
    #: Termination message of the most recently terminated runner container.
    termination_message: str | None = None


class Cluster(Protocol):
    """The Kubernetes API as the reconcilers use it."""

    def get(self, kind: Kind, namespace: str, name: str) -> dict[str, Any] | None:
        """The object as a dict, or ``None`` if it does not exist."""

    def list(self, kind: Kind, namespace: str) -> list[dict[str, Any]]:
        """Every object of ``kind`` in ``namespace``."""

    def create(self, kind: Kind, namespace: str, body: Mapping[str, Any]) -> bool:
        """Create; ``False`` if an object of that name already exists."""

    def patch_status(
        self,
        kind: Kind,
        namespace: str,
        name: str,
        status: Mapping[str, Any],
        *,
        resource_version: str | None = None,
    ) -> None:
        """JSON merge patch of the status subresource (``None`` values delete fields).

        With ``resource_version`` the patch applies only to that version of the
        object; otherwise a :class:`~citus_backup.errors.TransientError` (reason
        ``Conflict``) is raised. A merge patch replaces whole lists such as
        ``conditions``, which several controllers write: a patch computed from a
        stale read must not put back old conditions.
        """

    def secret_data(self, namespace: str, name: str) -> Mapping[str, bytes] | None:
        """The decoded data of a Secret (kept in memory only), or ``None`` if absent."""

    def config_map_keys(self, namespace: str, name: str) -> Sequence[str] | None:
        """The keys of a ConfigMap (data and binaryData), or ``None`` if absent."""

    def create_job(self, job: V1Job) -> bool:
        """Create; ``False`` if a Job of that name already exists."""

    def job_state(self, namespace: str, name: str) -> JobState | None:
        """The state of a Job and its pods, or ``None`` if the Job does not exist."""


class EventSink(Protocol):
    """Kubernetes Events about an object (``body``: apiVersion, kind, metadata)."""

    def emit(self, body: Mapping[str, Any], type_: str, reason: str, message: str) -> None: ...


class DatabaseProbe(Protocol):
    """Read-only questions to a PostgreSQL server, with a password held in memory only."""

    def existing_databases(
        self, connection: PostgresConnection, password: str, names: Sequence[str]
    ) -> set[str]:
        """Which of ``names`` exist; TransientError when the server cannot be asked."""

    def application_names(
        self, connection: PostgresConnection, password: str, prefix: str
    ) -> list[str]:
        """``application_name`` of the server's sessions that start with ``prefix``."""
