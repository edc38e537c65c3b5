"""Keep the CitusBackup catalogue consistent with what really is in the bucket.

Why: lifecycle rules delete data without telling Kubernetes, and a new
cluster pointed at an old bucket has data without CitusBackups. Both make
``kubectl get citusbackups`` lie about what can be restored. Once per
retention pass (the controller's periodic timer) this module compares one
listing of ``<prefix>/`` with the policy's CitusBackups:

* a Succeeded CitusBackup whose ``manifest.json`` is gone from every one of
  its tiers gets the condition ``Restorable=False`` (reason ``DataExpired``);
  the phase stays Succeeded (the backup did succeed) and the object is kept
  as history. One whose data is there gets ``Restorable=True`` once.
* a complete set (manifest present) that no CitusBackup of the policy names
  in ``status.backupId`` is *imported*: a CitusBackup ``<policy>-<backupid>``
  labelled ``citusbackup.io/imported=true``, phase Succeeded, so a
  CitusRestore can name it. Consequence: deleting a CitusBackup whose data
  is still in the bucket makes it come back as imported (delete the data, or
  let it expire, to forget a backup).

Pure planning (:func:`plan`) is separate from the I/O the controller does.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from citus_backup.api.backup import CitusBackup, format_size
from citus_backup.api.common import (
    API_VERSION,
    APP_NAME,
    GROUP,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    LABEL_POLICY,
    MANAGER_NAME,
    ConditionType,
    Phase,
    Reason,
    find_condition,
    format_time,
    make_condition,
    set_condition,
)
from citus_backup.api.policy import TIER_ORDER, CitusBackupPolicy
from citus_backup.runner import layout
from citus_backup.runner.manifest import Manifest

#: Label on CitusBackups created from sets found in the bucket.
LABEL_IMPORTED = f"{GROUP}/imported"
#: Kubernetes object names are at most 253 characters; we keep them DNS labels (63).
NAME_MAX = 63
_NOT_DNS = re.compile(r"[^a-z0-9-]+")


@dataclass(frozen=True)
class BucketSet:
    """A backup id found under the policy's prefix."""

    backup_id: str
    #: Tiers holding the set's manifest.json (complete there).
    complete_tiers: tuple[str, ...]


def scan(keys: Iterable[str], prefix: str) -> dict[str, BucketSet]:
    """Backup ids under ``prefix`` with the tiers in which they are complete."""
    prefix = layout.normalize_prefix(prefix)
    tiers: dict[str, set[str]] = {}
    for key in keys:
        parsed = layout.parse_key(prefix, key)
        if parsed is None:
            continue
        found = tiers.setdefault(parsed.backup_id, set())
        if parsed.name == layout.MANIFEST_NAME:
            found.add(parsed.tier)
    order = {str(t): i for i, t in enumerate(TIER_ORDER)}
    return {
        backup_id: BucketSet(backup_id, tuple(sorted(found, key=lambda t: (order.get(t, 99), t))))
        for backup_id, found in tiers.items()
    }


def imported_name(policy_name: str, backup_id: str) -> str:
    """``<policy>-<backupid>`` as a DNS label (lowercase; hashed when too long)."""
    tail = _NOT_DNS.sub("-", backup_id.lower()).strip("-")
    name = f"{policy_name}-{tail}"
    if len(name) <= NAME_MAX:
        return name
    digest = hashlib.sha256(f"{policy_name}/{backup_id}".encode()).hexdigest()[:8]
    return f"{name[: NAME_MAX - 9].rstrip('-')}-{digest}"


@dataclass
class Plan:
    """What to change: status patches of existing CitusBackups and sets to import."""

    #: (CitusBackup name, status patch).
    status_patches: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    #: Sets to import (complete, unknown to Kubernetes).
    imports: list[BucketSet] = field(default_factory=list)
    #: Names of CitusBackups newly found expired (for Events).
    expired: list[str] = field(default_factory=list)


def _restorable_patch(
    backup: CitusBackup, restorable: bool, message: str, now: datetime
) -> dict[str, Any] | None:
    current = find_condition(backup.status.conditions, ConditionType.RESTORABLE)
    if current is not None and current.is_true == restorable:
        return None
    condition = make_condition(
        ConditionType.RESTORABLE,
        restorable,
        Reason.DATA_PRESENT if restorable else Reason.DATA_EXPIRED,
        message,
        now=now,
        observed_generation=backup.metadata.generation,
    )
    conditions = set_condition(backup.status.conditions, condition)
    return {"conditions": [c.to_dict() for c in conditions]}


def plan(
    policy: CitusBackupPolicy,
    backups: Sequence[CitusBackup],
    sets: dict[str, BucketSet],
    *,
    now: datetime,
) -> Plan:
    """Compare the policy's CitusBackups with the bucket's sets (pure)."""
    result = Plan()
    storage = policy.spec.storage
    known = {b.status.backup_id for b in backups if b.status.backup_id}
    for backup in backups:
        status = backup.status
        if status.phase is not Phase.SUCCEEDED or not status.backup_id:
            continue
        if status.location is not None and status.location.bucket != storage.bucket:
            continue  # written before the policy moved to another bucket: not ours to judge
        found = sets.get(status.backup_id)
        tiers = status.tiers or ((backup.spec.tier,) if backup.spec.tier else ())
        present = found is not None and (
            not tiers or any(str(t) in found.complete_tiers for t in tiers)
        )
        where = f"s3://{storage.bucket}/{layout.normalize_prefix(storage.prefix)}/"
        message = (
            f"backup {status.backup_id} is in {where}"
            if present
            else f"manifest.json of backup {status.backup_id} is no longer in {where} "
            "(expired by the retention's lifecycle rules or deleted): it cannot be restored"
        )
        patch = _restorable_patch(backup, present, message, now)
        if patch is not None:
            result.status_patches.append((backup.name, patch))
            if not present:
                result.expired.append(backup.name)
    for backup_id in sorted(sets):
        entry = sets[backup_id]
        if entry.complete_tiers and backup_id not in known:
            result.imports.append(entry)
    return result


def import_body(policy: CitusBackupPolicy, entry: BucketSet) -> dict[str, Any]:
    """The CitusBackup object (without status) for an imported set."""
    tier, *also = entry.complete_tiers
    return {
        "apiVersion": API_VERSION,
        "kind": "CitusBackup",
        "metadata": {
            "name": imported_name(policy.name, entry.backup_id),
            "namespace": policy.namespace,
            "labels": {
                LABEL_IMPORTED: "true",
                LABEL_POLICY: policy.name,
                LABEL_NAME: APP_NAME,
                LABEL_MANAGED_BY: MANAGER_NAME,
            },
        },
        "spec": {"policyName": policy.name, "tier": tier, **({"alsoTiers": also} if also else {})},
    }


def import_status(
    policy: CitusBackupPolicy, entry: BucketSet, manifest: Manifest | None, *, now: datetime
) -> dict[str, Any]:
    """Status of an imported CitusBackup: Succeeded, with what its manifest says."""
    storage = policy.spec.storage
    tier = entry.complete_tiers[0]
    prefix = layout.normalize_prefix(storage.prefix)
    message = f"imported from s3://{storage.bucket}/{prefix}/{tier}/{entry.backup_id}/"
    status: dict[str, Any] = {
        "phase": str(Phase.SUCCEEDED),
        "backupId": entry.backup_id,
        "location": {"bucket": storage.bucket, "keyPrefix": f"{prefix}/{tier}/{entry.backup_id}/"},
        "tiers": list(entry.complete_tiers),
        "message": message,
        "conditions": [
            make_condition(
                ConditionType.SUCCEEDED, True, Reason.BACKUP_SUCCEEDED, message, now=now
            ).to_dict(),
            make_condition(
                ConditionType.RESTORABLE, True, Reason.DATA_PRESENT, message, now=now
            ).to_dict(),
        ],
    }
    if manifest is not None:
        status["startTime"] = format_time(manifest.started_at)
        status["completionTime"] = format_time(manifest.finished_at)
        status["databases"] = {db.name: db.size for db in manifest.databases}
        status["totalSizeBytes"] = manifest.total_size
        status["totalSize"] = format_size(manifest.total_size)
    else:
        status["completionTime"] = format_time(now)
    return status
