"""CitusBackup: validate, wait for a free slot, run the backup Job, record its outcome.

Steps, each idempotent:

1. A finished backup (Succeeded/Failed) is never touched again: it is a
   catalogue entry.
2. The policy must exist and every Secret key it references must exist;
   otherwise the backup fails at once (PolicyNotFound, SecretNotFound,
   SecretKeyMissing) with a Warning Event, and is not retried.
3. If another backup of the policy (or a restore into the same databases)
   holds a Job or came first, the backup waits (phase Pending, a message
   naming the blocker).
4. The Job (``build_backup_job``, owned by the CitusBackup) is created with
   create-or-ignore-409: after an operator restart the existing Job is
   adopted, never duplicated. The backup id is deterministic (the scheduled
   time, or the creation time of a manual backup).
5. The Job's outcome and the runner's JSON summary become the status;
   Normal BackupSucceeded / Warning BackupFailed Events go to the backup and
   its policy, and the policy's status is refreshed. A success the runner
   reported (it stores the manifest last) also sets ``Restorable=True``; the
   catalogue (:mod:`.catalogue`) keeps that condition true to the bucket later.

The CitusBackup is *not* owned by its policy: deleting a policy must never
delete the catalogue of backups (nor, therefore, their data).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from citus_backup.api.backup import CitusBackup, format_size
from citus_backup.api.common import (
    ConditionType,
    Phase,
    Reason,
    make_condition,
    set_condition,
)
from citus_backup.api.policy import CitusBackupPolicy
from citus_backup.errors import CitusBackupError, PermanentError
from citus_backup.reconcile import concurrency, verification
from citus_backup.reconcile.common import (
    NORMAL,
    WARNING,
    Deps,
    changes,
    check_references,
    fail_unparsable,
    parse,
    ref_body,
    scheduled_time_of,
    time_str,
)
from citus_backup.reconcile.jobs import DEADLINE_EXCEEDED, Progress, outcome
from citus_backup.reconcile.ports import Kind
from citus_backup.reconcile.progress import ProgressCache
from citus_backup.specs.jobs import build_backup_job
from citus_backup.specs.names import backup_id as make_backup_id
from citus_backup.specs.names import backup_job_name
from citus_backup.specs.retention import backup_tiers

logger = logging.getLogger(__name__)


def progress_text(progress: dict[str, Any]) -> str:
    """``1/3 databases, 12.0 MiB`` for the status message."""
    total = progress.get("databasesTotal")
    done = progress["databasesDone"]
    if total is not None:
        done = f"{done}/{total}"
    return f"{done} databases stored, {format_size(int(progress.get('bytes') or 0))}"


def backup_id_for(backup: CitusBackup) -> str:
    """Scheduled: the scheduled time; manual: the creation time (stable across restarts)."""
    when = scheduled_time_of(backup.metadata.annotations) or backup.metadata.creation_timestamp
    if when is None:
        raise PermanentError("backup has no creationTimestamp", reason=Reason.INVALID_SPEC)
    return make_backup_id(when)


class BackupReconciler:
    """Reconciles one CitusBackup per call; returns seconds until the next look (None: done)."""

    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        self._progress = ProgressCache()

    def reconcile(self, name: str, namespace: str) -> float | None:
        with self.deps.locked("CitusBackup", namespace, name):
            fresh = self.deps.cluster.get(Kind.BACKUP, namespace, name)
            if fresh is None:
                return None
            try:
                backup = parse(CitusBackup, fresh)
            except PermanentError as err:
                fail_unparsable(self.deps, Kind.BACKUP, fresh, err)
                return None
            try:
                return self._reconcile(backup, namespace)
            except PermanentError as err:
                self._finish(backup, None, Phase.FAILED, err.reason, err.message)
                return None

    # ------------------------------------------------------------------ steps

    def _reconcile(self, backup: CitusBackup, namespace: str) -> float | None:
        if backup.status.phase is not None and backup.status.phase.finished:
            return None
        cluster = self.deps.cluster
        job_name = backup_job_name(backup.name)
        state = cluster.job_state(namespace, job_name)
        policy_body = cluster.get(Kind.POLICY, namespace, backup.spec.policy_name)
        # Once its Job exists a backup no longer needs its policy (it may have been deleted).
        policy = parse(CitusBackupPolicy, policy_body) if policy_body is not None else None
        if state is None:
            if backup.status.job_name:
                raise PermanentError(
                    f"Job {job_name} disappeared before the backup finished",
                    reason=Reason.JOB_NOT_FOUND,
                )
            if policy is None:
                raise PermanentError(
                    f"CitusBackupPolicy {backup.spec.policy_name} not found in namespace "
                    f"{namespace}",
                    reason=Reason.POLICY_NOT_FOUND,
                )
            return self._start(backup, policy, namespace)
        result = outcome(state)
        if result.progress is Progress.SUCCEEDED:
            self._succeeded(backup, policy, result.summary, state.completion_time)
            return None
        if result.progress is Progress.FAILED:
            reason = (
                Reason.JOB_DEADLINE_EXCEEDED
                if result.reason == DEADLINE_EXCEEDED
                else Reason.BACKUP_FAILED
            )
            message = f"{result.reason}: {result.message}"
            self._finish(backup, policy, Phase.FAILED, reason, message, state.completion_time)
            return None
        phase = Phase.RUNNING if result.progress is Progress.RUNNING else Phase.PENDING
        reason = Reason.JOB_RUNNING if phase is Phase.RUNNING else Reason.JOB_CREATED
        message = f"Job {job_name} {'is running' if phase is Phase.RUNNING else 'created'}"
        extra: dict[str, Any] = {
            "jobName": job_name,
            "startTime": time_str(state.start_time or backup.status.start_time),
        }
        if phase is Phase.RUNNING and policy is not None:
            progress = self._read_progress(backup, policy)
            if progress is not None:
                extra["progress"] = progress
                message += f": {progress_text(progress)}"
        if phase is Phase.RUNNING and backup.status.phase is not Phase.RUNNING:
            self.deps.events.emit(
                ref_body(backup), NORMAL, str(Reason.BACKUP_RUNNING), f"Job {job_name} is running"
            )
        self._patch(backup, phase, reason, message, extra=extra)
        return self.deps.poll_seconds

    def _read_progress(
        self, backup: CitusBackup, policy: CitusBackupPolicy
    ) -> dict[str, Any] | None:
        """The bucket's view of the run, at most every MIN_INTERVAL seconds per backup
        (in between, the last one read); None when it cannot be told."""
        source = self.deps.progress
        if source is None:
            return None

        def read() -> dict[str, Any] | None:
            found = source.backup(policy, backup)
            return found.to_status() if found is not None else None

        return self._progress.get((backup.namespace or "", backup.name), self.deps.clock(), read)

    def _start(self, backup: CitusBackup, policy: CitusBackupPolicy, namespace: str) -> float:
        cluster = self.deps.cluster
        check_references(
            cluster, namespace, connection=policy.spec.coordinator, storage=policy.spec.storage
        )
        me = concurrency.backup_activity(backup, policy)
        waiting_for = concurrency.blocker(me, concurrency.activities(cluster, namespace))
        if waiting_for is not None:
            message = f"waiting for {waiting_for.describe()} to finish"
            if backup.status.message != message:
                self._patch(backup, Phase.PENDING, Reason.PENDING, message)
            return self.deps.poll_seconds
        backup_id = backup_id_for(backup)
        job = build_backup_job(policy, backup, image=self.deps.image, backup_id=backup_id)
        created = cluster.create_job(job)
        tier, also = backup_tiers(policy.spec, backup.spec)
        job_name = backup_job_name(backup.name)
        self._patch(
            backup,
            Phase.PENDING,
            Reason.JOB_CREATED,
            f"Job {job_name} created",
            extra={
                "jobName": job_name,
                "backupId": backup_id,
                "startTime": time_str(self.deps.clock()),
                "tiers": [str(t) for t in (tier, *also)],
                "location": {
                    "bucket": policy.spec.storage.bucket,
                    "keyPrefix": f"{policy.spec.storage.prefix}/{tier}/{backup_id}/",
                },
            },
        )
        if created:
            self.deps.events.emit(
                ref_body(backup), NORMAL, str(Reason.JOB_CREATED), f"created Job {job_name}"
            )
        return self.deps.poll_seconds

    def _succeeded(
        self,
        backup: CitusBackup,
        policy: CitusBackupPolicy | None,
        summary: dict[str, Any],
        completed: datetime | None,
    ) -> None:
        backup_id = str(summary.get("backupId") or backup.status.backup_id or "")
        tiers = [str(t) for t in summary.get("tiers") or backup.status.tiers]
        extra: dict[str, Any] = {"backupId": backup_id or None, "tiers": tiers}
        if tiers and backup_id and policy is not None:
            extra["location"] = {
                "bucket": policy.spec.storage.bucket,
                "keyPrefix": f"{policy.spec.storage.prefix}/{tiers[0]}/{backup_id}/",
            }
        where = f"backup {backup_id} stored in {', '.join(tiers) or 'its tier'}"
        if summary:
            databases = {
                str(k): int(v) for k, v in (summary.get("databases") or {}).items() if int(v) >= 0
            }
            total = int(summary.get("totalSize") or sum(databases.values()))
            extra.update(databases=databases, totalSizeBytes=total, totalSize=format_size(total))
            extra["progress"] = {
                "databasesDone": len(databases),
                "databasesTotal": len(databases),
                "bytes": total,
            }
            names = ", ".join(sorted(databases)) or "no databases"
            message = f"{where}: {len(databases)} database(s) ({names}), {format_size(total)}"
        else:
            message = f"{where} (the runner left no summary: databases and sizes unknown)"
        # The runner reports success only after its manifest is stored (written
        # last): the set is restorable now. Without that report, the catalogue's
        # next pass looks at the bucket and says (reconcile.catalogue).
        restorable = None
        if summary.get("status") == "succeeded":
            where_set = str(summary.get("location") or "its location")
            restorable = f"the run stored its manifest: {where_set}manifest.json"
        self._finish(
            backup,
            policy,
            Phase.SUCCEEDED,
            Reason.BACKUP_SUCCEEDED,
            message,
            completed,
            extra,
            restorable=restorable,
        )
        if policy is not None and policy.spec.verification is not None:
            try:
                verification.after_backup(self.deps, policy, backup)
            except CitusBackupError as err:
                # The backup is done either way; a scheduled verification (if
                # any) still finds it unverified.
                logger.warning("verification of %s not requested: %s", backup.name, err)

    # ------------------------------------------------------------------ status

    def _patch(
        self,
        backup: CitusBackup,
        phase: Phase,
        reason: Reason | str,
        message: str,
        *,
        extra: dict[str, Any] | None = None,
        restorable: str | None = None,
    ) -> None:
        now = self.deps.clock()
        succeeded: bool | None = None
        if phase is Phase.SUCCEEDED:
            succeeded = True
        elif phase is Phase.FAILED:
            succeeded = False
        condition = make_condition(
            ConditionType.SUCCEEDED,
            succeeded,
            Reason(reason) if reason in Reason.__members__.values() else Reason.BACKUP_FAILED,
            message,
            now=now,
            observed_generation=backup.metadata.generation,
        )
        conditions = set_condition(backup.status.conditions, condition)
        if restorable is not None:
            conditions = set_condition(
                conditions,
                make_condition(
                    ConditionType.RESTORABLE,
                    True,
                    Reason.DATA_PRESENT,
                    restorable,
                    now=now,
                    observed_generation=backup.metadata.generation,
                ),
            )
        status: dict[str, Any] = {
            "phase": str(phase),
            "message": message,
            "observedGeneration": backup.metadata.generation,
            "conditions": [c.to_dict() for c in conditions],
        }
        for key, value in (extra or {}).items():
            if value is not None:
                status[key] = value
        if not changes(backup.status.to_dict(), status):
            return
        self.deps.cluster.patch_status(Kind.BACKUP, backup.namespace or "", backup.name, status)

    def _finish(  # noqa: PLR0917
        self,
        backup: CitusBackup,
        policy: CitusBackupPolicy | None,
        phase: Phase,
        reason: Reason | str,
        message: str,
        completed: datetime | None = None,
        extra: dict[str, Any] | None = None,
        *,
        restorable: str | None = None,
    ) -> None:
        if backup.status.phase is not None and backup.status.phase.finished:
            return
        self._progress.forget((backup.namespace or "", backup.name))
        extra = dict(extra or {})
        extra["completionTime"] = time_str(completed or self.deps.clock())
        self._patch(backup, phase, reason, message, extra=extra, restorable=restorable)
        ok = phase is Phase.SUCCEEDED
        event_reason = str(Reason.BACKUP_SUCCEEDED if ok else Reason.BACKUP_FAILED)
        event_type = NORMAL if ok else WARNING
        text = f"{backup.name}: {message}" if not ok else message
        if not ok and str(reason) != str(Reason.BACKUP_FAILED):
            text = f"{backup.name}: [{reason}] {message}"
        self.deps.events.emit(ref_body(backup), event_type, event_reason, text)
        if policy is not None:
            self.deps.events.emit(ref_body(policy), event_type, event_reason, text)
            # Imported here: policy imports this module's helpers.
            from citus_backup.reconcile.policy import refresh_backup_summary  # noqa: PLC0415

            refresh_backup_summary(self.deps, policy)
