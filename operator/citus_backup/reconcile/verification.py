"""Verification: when to test-restore a backup, and where the result goes.

A verification is a CitusRestore with ``spec.verify: true`` (so it shares the
restore's Job builder, guards, concurrency and status), created by the
operator for a policy with ``spec.verification`` or by hand
(``kubectl create citusrestore v1 --backup B --verify``). It is:

* named ``<backup>-verify`` (a deterministic name: create-or-ignore-409 makes
  "verify this backup" idempotent across ticks and restarts), owned by the
  CitusBackup it verifies (deleting the backup deletes its verification, never
  the other way round), labelled with the policy and
  ``citusbackup.io/verification=true``;
* started after a backup succeeds when ``everyNthBackup`` successful backups
  completed since the newest verified one (:func:`due_after_backup`), and/or
  at the fire times of ``verification.schedule`` for the newest successful
  backup not yet verified (:func:`due_by_schedule`);
* serialised like every restore: it waits for a backup of its policy and
  for restores touching the same server's databases (:mod:`.concurrency`).

When it ends, the CitusBackup gets a ``Verified`` condition (reason
VerificationSucceeded, or the runner's typed reason: VerificationFailed,
ChecksumMismatch, CheckFailed, ...), the policy ``status.lastVerification``,
and both a Normal VerificationSucceeded / Warning VerificationFailed Event.
A failed verification changes nothing else: the backup keeps its phase, its
data and its Restorable condition.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from citus_backup.api.backup import CitusBackup
from citus_backup.api.common import (
    API_VERSION,
    LABEL_BACKUP,
    LABEL_POLICY,
    REASONS_BY_CONDITION,
    ConditionType,
    Phase,
    Reason,
    make_condition,
)
from citus_backup.api.policy import CitusBackupPolicy
from citus_backup.errors import TransientError
from citus_backup.reconcile.common import NORMAL, WARNING, Deps, parse, ref_body, time_str
from citus_backup.reconcile.ports import Kind
from citus_backup.specs.names import job_name, label_value

logger = logging.getLogger(__name__)

#: Label on verification CitusRestores (``kubectl get citusrestores -l ...=true``).
LABEL_VERIFICATION = "citusbackup.io/verification"
#: Suffix of a verification's name (``<backup>-verify``, hashed if too long).
VERIFY_SUFFIX = "verify"
#: Attempts of the guarded write of a backup's Verified condition.
STATUS_ATTEMPTS = 3


def verification_name(backup_name: str) -> str:
    """``<backup>-verify`` as a DNS label (its Job name is derived from it)."""
    return job_name(backup_name, VERIFY_SUFFIX)


def is_verified(backup: CitusBackup, restores: Sequence[Mapping[str, Any]]) -> bool:
    """A verification of ``backup`` exists (running or finished)."""
    return any(_verifies(r) == backup.name for r in restores)


def _verifies(restore: Mapping[str, Any]) -> str | None:
    spec = restore.get("spec") or {}
    if not spec.get("verify"):
        return None
    return (restore.get("status") or {}).get("backupName") or spec.get("backupName")


def _successful(backups: Sequence[CitusBackup]) -> list[CitusBackup]:
    done = [b for b in backups if b.status.phase is Phase.SUCCEEDED and b.status.completion_time]
    return sorted(done, key=lambda b: (b.status.completion_time, b.name))


def due_after_backup(
    policy: CitusBackupPolicy,
    backup: CitusBackup,
    backups: Sequence[CitusBackup],
    restores: Sequence[Mapping[str, Any]],
) -> bool:
    """Whether ``backup`` (just succeeded) is to be verified under ``everyNthBackup``.

    Counts the successful backups of the policy completed after the newest
    one that has a verification, ``backup`` included: due at N (pure).
    """
    verification = policy.spec.verification
    if verification is None or verification.every_nth_backup is None:
        return False
    ordered = _successful([b for b in backups if b.spec.policy_name == policy.name])
    verified = {_verifies(r) for r in restores}
    if backup.name in verified:
        return False
    since: list[CitusBackup] = []
    for candidate in reversed(ordered):
        if candidate.name in verified:
            break
        since.append(candidate)
    if all(b.name != backup.name for b in since):
        return False  # not among the unverified newest (an older backup finishing late)
    return len(since) >= verification.every_nth_backup


def due_by_schedule(
    policy: CitusBackupPolicy,
    backups: Sequence[CitusBackup],
    restores: Sequence[Mapping[str, Any]],
) -> CitusBackup | None:
    """The backup a scheduled verification verifies: the newest successful one, if
    it has no verification yet (pure; the caller decides whether a fire time passed)."""
    ordered = _successful([b for b in backups if b.spec.policy_name == policy.name])
    if not ordered:
        return None
    newest = ordered[-1]
    if newest.status.conditions and any(
        c.type == ConditionType.RESTORABLE and c.status == "False" for c in newest.status.conditions
    ):
        return None
    return None if is_verified(newest, restores) else newest


def restore_body(policy: CitusBackupPolicy, backup: CitusBackup) -> dict[str, Any]:
    """The verification CitusRestore of ``backup`` (pure)."""
    verification = policy.spec.verification
    spec: dict[str, Any] = {"backupName": backup.name, "verify": True}
    if verification is not None and verification.server is not None:
        spec["target"] = verification.server.model_dump(
            mode="json", by_alias=True, exclude_none=True
        )
    if verification is not None and verification.checks_config_map is not None:
        spec["checksConfigMap"] = verification.checks_config_map
    metadata: dict[str, Any] = {
        "name": verification_name(backup.name),
        "namespace": backup.namespace,
        "labels": {
            LABEL_POLICY: label_value(policy.name),
            LABEL_BACKUP: label_value(backup.name),
            LABEL_VERIFICATION: "true",
        },
    }
    if backup.metadata.uid:
        metadata["ownerReferences"] = [
            {
                "apiVersion": API_VERSION,
                "kind": "CitusBackup",
                "name": backup.name,
                "uid": backup.metadata.uid,
                "blockOwnerDeletion": False,
            }
        ]
    return {"apiVersion": API_VERSION, "kind": "CitusRestore", "metadata": metadata, "spec": spec}


def request(deps: Deps, policy: CitusBackupPolicy, backup: CitusBackup, why: str) -> bool:
    """Create the verification of ``backup`` (False if it already exists)."""
    body = restore_body(policy, backup)
    created = deps.cluster.create(Kind.RESTORE, backup.namespace or "", body)
    if created:
        deps.events.emit(
            ref_body(backup),
            NORMAL,
            "VerificationRequested",
            f"verification {body['metadata']['name']} created ({why})",
        )
    return created


def after_backup(deps: Deps, policy: CitusBackupPolicy, backup: CitusBackup) -> None:
    """Called when ``backup`` succeeded: start its verification if everyNthBackup says so."""
    if policy.spec.verification is None or policy.spec.verification.every_nth_backup is None:
        return
    from citus_backup.reconcile.policy import backups_of  # noqa: PLC0415 - cycle

    restores = deps.cluster.list(Kind.RESTORE, policy.namespace or "")
    if due_after_backup(policy, backup, backups_of(deps, policy), restores):
        n = policy.spec.verification.every_nth_backup
        request(deps, policy, backup, f"everyNthBackup: {n}")


# --------------------------------------------------------------------------- results


def verified_reason(runner_reason: str | None, ok: bool) -> Reason:
    """The Verified condition's reason: the runner's typed reason where it is one."""
    if ok:
        return Reason.VERIFICATION_SUCCEEDED
    allowed = REASONS_BY_CONDITION[ConditionType.VERIFIED]
    for reason in allowed:
        if reason == runner_reason:
            return reason
    return Reason.RESTORE_FAILED


def record(
    deps: Deps,
    *,
    namespace: str,
    restore_name: str,
    backup_name: str | None,
    ok: bool,
    reason: Reason,
    message: str,
    completed: datetime | None,
) -> None:
    """The result of a verification on its backup and policy, with Events."""
    if backup_name is None:
        return
    body = deps.cluster.get(Kind.BACKUP, namespace, backup_name)
    if body is None:
        return
    backup = parse(CitusBackup, body)
    now = completed or deps.clock()
    condition = make_condition(
        ConditionType.VERIFIED, ok, reason, message, now=now, observed_generation=None
    )
    _patch_backup_condition(deps, namespace, backup, condition.to_dict())
    event_type = NORMAL if ok else WARNING
    event_reason = str(Reason.VERIFICATION_SUCCEEDED if ok else Reason.VERIFICATION_FAILED)
    text = f"{backup_name} ({restore_name}): {message}"
    if not ok:
        text = f"{backup_name} ({restore_name}): [{reason}] {message}"
    deps.events.emit(ref_body(backup), event_type, event_reason, text)
    policy_body = deps.cluster.get(Kind.POLICY, namespace, backup.spec.policy_name)
    if policy_body is None:
        return
    policy = parse(CitusBackupPolicy, policy_body)
    deps.events.emit(ref_body(policy), event_type, event_reason, text)
    from citus_backup.reconcile.policy import patch_policy_status  # noqa: PLC0415 - cycle

    patch_policy_status(
        deps,
        namespace,
        policy.name,
        policy.metadata.resource_version,
        {
            "lastVerification": {
                "backupName": backup_name,
                "restoreName": restore_name,
                "time": time_str(now),
                "succeeded": ok,
                "reason": str(reason),
                "message": message,
            }
        },
        owned=frozenset(),
    )


def _patch_backup_condition(
    deps: Deps, namespace: str, backup: CitusBackup, condition: dict[str, Any]
) -> None:
    """Set one condition on a CitusBackup without clobbering the others (the
    catalogue writes Restorable): guarded by resourceVersion, re-read on 409."""
    for _ in range(STATUS_ATTEMPTS):
        conditions = [c.to_dict() for c in backup.status.conditions if c.type != condition["type"]]
        try:
            deps.cluster.patch_status(
                Kind.BACKUP,
                namespace,
                backup.name,
                {"conditions": [*conditions, condition]},
                resource_version=backup.metadata.resource_version,
            )
            return
        except TransientError as err:
            if err.reason != "Conflict":
                raise
        fresh = deps.cluster.get(Kind.BACKUP, namespace, backup.name)
        if fresh is None:
            return
        backup = parse(CitusBackup, fresh)
    raise TransientError(
        f"status of CitusBackup {namespace}/{backup.name} kept changing; will retry",
        reason="Conflict",
        delay=1.0,
    )
