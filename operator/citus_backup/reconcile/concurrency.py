"""Which backups and restores may run at the same time.

Rules (within a namespace, where a policy and its backups and restores live):

* at most one backup Job per policy;
* a restore never runs while a backup or another restore touches the same
  database of the same server (host:port); "every database" overlaps all;
* a restore of a backup of policy P and a backup of P never run at once.

Scheduled runs that fall while a backup of the policy is active are skipped by
the policy reconciler; everything else waits. Waiting is first come, first
served: an object may start only when no conflicting object either holds a
Job already or is older (creationTimestamp, then kind and name). The order is
total, so two waiters never both start, and nothing waits in a cycle.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from citus_backup.api.backup import CitusBackup
from citus_backup.api.policy import CitusBackupPolicy
from citus_backup.api.restore import CitusRestore
from citus_backup.reconcile.ports import Cluster, Kind
from citus_backup.runner.verify import scratch_name

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Activity:
    """A CitusBackup or CitusRestore that has not finished."""

    kind: str  # "CitusBackup" | "CitusRestore"
    name: str
    created: datetime
    #: Its Job exists (it runs, or is about to).
    holding: bool
    policy: str | None
    #: (host, port) of the server it reads or writes; None if unknown.
    server: tuple[str, int] | None
    #: Databases it touches; None: every database.
    databases: frozenset[str] | None

    @property
    def order(self) -> tuple[datetime, str, str]:
        return (self.created, self.kind, self.name)

    def describe(self) -> str:
        return f"{self.kind} {self.name}"


def _overlap(a: frozenset[str] | None, b: frozenset[str] | None) -> bool:
    return a is None or b is None or bool(a & b)


def conflicts(a: Activity, b: Activity) -> bool:
    if a.kind == b.kind == "CitusBackup":
        return a.policy is not None and a.policy == b.policy
    if a.kind != b.kind and a.policy is not None and a.policy == b.policy:
        return True  # a restore of policy P's backup and a backup of P
    return a.server is not None and a.server == b.server and _overlap(a.databases, b.databases)


def blocker(me: Activity, others: Iterable[Activity]) -> Activity | None:
    """The activity ``me`` must wait for, or ``None`` if it may start now."""
    candidates = [
        other
        for other in others
        if (other.kind, other.name) != (me.kind, me.name)
        and conflicts(me, other)
        and (other.holding or other.order < me.order)
    ]
    return min(candidates, key=lambda a: (not a.holding, a.order), default=None)


# --------------------------------------------------------------------------- gathering


def _server(policy: CitusBackupPolicy | None) -> tuple[str, int] | None:
    if policy is None:
        return None
    return (policy.spec.coordinator.host, policy.spec.coordinator.port)


def backup_activity(backup: CitusBackup, policy: CitusBackupPolicy | None) -> Activity:
    databases = None
    if policy is not None and policy.spec.coordinator.include_databases:
        databases = frozenset(policy.spec.coordinator.include_databases)
    return Activity(
        kind="CitusBackup",
        name=backup.name,
        created=backup.metadata.creation_timestamp or _EPOCH,
        holding=bool(backup.status.job_name),
        policy=backup.spec.policy_name,
        server=_server(policy),
        databases=databases,
    )


def restore_activity(
    restore: CitusRestore,
    policy: CitusBackupPolicy | None,
    backup: CitusBackup | None,
) -> Activity:
    spec = restore.spec
    if spec.target is not None:
        server: tuple[str, int] | None = (spec.target.host, spec.target.port)
    else:
        server = _server(policy)
    databases: frozenset[str] | None
    if spec.verify:
        # Its own scratch databases (two verifications of one set collide there).
        sources = spec.databases or (tuple(backup.status.databases) if backup else ())
        databases = frozenset(scratch_name(db) for db in sources) if sources else None
    elif spec.target_database is not None:
        databases = frozenset({spec.target_database})
    elif spec.databases:
        databases = frozenset(spec.databases)
    elif backup is not None and backup.status.databases:
        databases = frozenset(backup.status.databases)
    else:
        databases = None
    return Activity(
        kind="CitusRestore",
        name=restore.name,
        created=restore.metadata.creation_timestamp or _EPOCH,
        holding=bool(restore.status.job_name),
        policy=policy.name if policy is not None else spec.policy_name,
        server=server,
        databases=databases,
    )


def _models(items: Iterable[Mapping[str, Any]], model: type[Any]) -> list[Any]:
    result = []
    for item in items:
        try:
            result.append(model.model_validate(dict(item)))
        except ValidationError:
            continue  # an object the reconcilers will fail on its own
    return result


def activities(cluster: Cluster, namespace: str) -> list[Activity]:
    """Every unfinished CitusBackup and CitusRestore of ``namespace``."""
    policies: dict[str, CitusBackupPolicy] = {
        p.name: p for p in _models(cluster.list(Kind.POLICY, namespace), CitusBackupPolicy)
    }
    backups: list[CitusBackup] = _models(cluster.list(Kind.BACKUP, namespace), CitusBackup)
    by_name = {b.name: b for b in backups}
    result = [
        backup_activity(b, policies.get(b.spec.policy_name))
        for b in backups
        if not (b.status.phase and b.status.phase.finished)
    ]
    for restore in _models(cluster.list(Kind.RESTORE, namespace), CitusRestore):
        if restore.status.phase and restore.status.phase.finished:
            continue
        source = by_name.get(restore.status.backup_name or restore.spec.backup_name or "")
        policy_name = source.spec.policy_name if source else restore.spec.policy_name
        result.append(restore_activity(restore, policies.get(policy_name or ""), source))
    return result
