"""CitusRestore: guards first, then the restore Job, then its outcome.

Guards (each ends the restore as Failed with a clear reason, no Job):

* BackupNotFound: ``backupName`` does not exist, or ``policyName`` has no
  successful backup (completed before ``before``, if set);
* BackupNotSucceeded: the named backup failed (a backup still running is
  waited for instead);
* PolicyNotFound, SecretNotFound, SecretKeyMissing, ConfigMapNotFound;
* TargetExists: a target database exists and ``replace`` is not set. The
  operator checks this itself (a read-only query with the password read from
  the Secret into memory) so nothing runs; if the server cannot be asked, the
  check is left to the runner, which refuses the same way (reason
  TargetExists in its summary) and the status says the same.

Then the restore waits while a backup of the same policy or another restore
into the same databases holds a Job (see :mod:`.concurrency`), creates the
Job (``build_restore_job``, owned by the CitusRestore, create-or-ignore-409)
and records the outcome: restoredDatabases, backupId, Events
RestoreSucceeded / RestoreFailed.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from citus_backup.api.backup import CitusBackup, format_size
from citus_backup.api.common import ConditionType, Phase, Reason, make_condition, set_condition
from citus_backup.api.policy import CitusBackupPolicy, PostgresConnection
from citus_backup.api.restore import CitusRestore
from citus_backup.errors import PermanentError, TransientError
from citus_backup.reconcile import concurrency, verification
from citus_backup.reconcile.common import (
    NORMAL,
    WARNING,
    Deps,
    changes,
    check_references,
    fail_unparsable,
    parse,
    read_secret_value,
    ref_body,
    time_str,
)
from citus_backup.reconcile.jobs import DEADLINE_EXCEEDED, Progress, outcome
from citus_backup.reconcile.ports import JobState, Kind
from citus_backup.reconcile.progress import ProgressCache
from citus_backup.runner.beacon import PREFIX as BEACON_PREFIX
from citus_backup.runner.beacon import parse_beacon
from citus_backup.runner.verify import scratch_name
from citus_backup.specs.jobs import build_restore_job
from citus_backup.specs.names import progress_tag, restore_job_name

logger = logging.getLogger(__name__)

_REASONS = frozenset(Reason.__members__.values())


class _Wait(Exception):
    """Not yet: record ``message`` as Pending and look again later."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def latest_successful(
    backups: list[CitusBackup], policy_name: str, before: datetime | None
) -> CitusBackup | None:
    """The most recently completed successful backup of the policy (before ``before``)."""
    candidates = [
        b
        for b in backups
        if b.spec.policy_name == policy_name
        and b.status.phase is Phase.SUCCEEDED
        and b.status.completion_time is not None
        and (before is None or b.status.completion_time <= before)
    ]
    return max(candidates, key=lambda b: (b.status.completion_time, b.name), default=None)


def citus_condition(citus: dict[str, Any]) -> tuple[bool, Reason, str] | None:
    """The CitusDistributed condition from the runner summary's ``citus``
    (target -> {"mode": "distributed" | "local", ...}); None without Citus."""
    if not citus:
        return None
    local = sorted(db for db, info in citus.items() if info.get("mode") == "local")
    if local:
        detail = "; ".join(str(citus[db].get("message") or db) for db in local)
        return False, Reason.CITUS_UNAVAILABLE, detail
    names = ", ".join(sorted(citus))
    return True, Reason.DISTRIBUTION_RESTORED, f"Citus distribution rebuilt and checked: {names}"


def targets_of(restore: CitusRestore, backup: CitusBackup) -> list[str]:
    """The databases a restore writes (target names; a verification's scratch names)."""
    spec = restore.spec
    if spec.verify:
        sources = list(spec.databases) or sorted(backup.status.databases)
        return [scratch_name(db) for db in sources]
    if spec.target_database is not None:
        return [spec.target_database]
    if spec.databases:
        return list(spec.databases)
    return sorted(backup.status.databases)


def success_message(
    restore: CitusRestore,
    summary: dict[str, Any],
    backup_id: str | None,
    source_name: str | None,
    names: str,
) -> str:
    """The status message of a finished restore (a verification says what it checked)."""
    source = f"backup {backup_id} ({source_name or 'unknown'})"
    if not restore.spec.verify:
        return f"restored {names} from {source}"
    verified = summary.get("verified") or {}
    checked = "; ".join(f"{db}: {text}" for db, text in sorted(verified.items()))
    message = f"{source} restores: {checked}"
    checks = [
        f"{db}.{name}"
        for db, info in sorted((summary.get("verification") or {}).items())
        for name in info.get("checks") or ()
    ]
    if checks:
        message += f"; checks passed: {', '.join(checks)}"
    return message


class RestoreReconciler:
    """Reconciles one CitusRestore per call; returns seconds until the next look (None: done)."""

    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        self._progress = ProgressCache()

    def reconcile(self, name: str, namespace: str) -> float | None:
        with self.deps.locked("CitusRestore", namespace, name):
            fresh = self.deps.cluster.get(Kind.RESTORE, namespace, name)
            if fresh is None:
                return None
            try:
                restore = parse(CitusRestore, fresh)
            except PermanentError as err:
                fail_unparsable(self.deps, Kind.RESTORE, fresh, err)
                return None
            if restore.status.phase is not None and restore.status.phase.finished:
                return None
            try:
                return self._reconcile(restore, namespace)
            except _Wait as wait:
                self._patch(restore, Phase.PENDING, Reason.PENDING, wait.message)
                return self.deps.poll_seconds
            except PermanentError as err:
                self._finish(restore, Phase.FAILED, err.reason, err.message)
                return None

    # ------------------------------------------------------------------ steps

    def _source(self, restore: CitusRestore, namespace: str) -> CitusBackup:
        cluster = self.deps.cluster
        spec = restore.spec
        name = restore.status.backup_name or spec.backup_name
        if name is None:
            assert spec.policy_name is not None
            backups = [parse(CitusBackup, item) for item in cluster.list(Kind.BACKUP, namespace)]
            found = latest_successful(backups, spec.policy_name, spec.before)
            if found is None:
                before = f" completed before {time_str(spec.before)}" if spec.before else ""
                raise PermanentError(
                    f"CitusBackupPolicy {spec.policy_name} has no successful backup{before}",
                    reason=Reason.BACKUP_NOT_FOUND,
                )
            return found
        body = cluster.get(Kind.BACKUP, namespace, name)
        if body is None:
            raise PermanentError(
                f"CitusBackup {name} not found in namespace {namespace}",
                reason=Reason.BACKUP_NOT_FOUND,
            )
        backup = parse(CitusBackup, body)
        if backup.status.phase is Phase.FAILED:
            raise PermanentError(
                f"CitusBackup {name} failed; restore from a successful backup",
                reason=Reason.BACKUP_NOT_SUCCEEDED,
            )
        if backup.status.phase is not Phase.SUCCEEDED:
            phase = backup.status.phase or Phase.PENDING
            raise _Wait(f"waiting for CitusBackup {name} to finish (phase {phase})")
        return backup

    def _reconcile(self, restore: CitusRestore, namespace: str) -> float | None:
        cluster = self.deps.cluster
        job_name = restore_job_name(restore.name)
        state = cluster.job_state(namespace, job_name)
        if state is None:
            if restore.status.job_name:
                raise PermanentError(
                    f"Job {job_name} disappeared before the restore finished",
                    reason=Reason.JOB_NOT_FOUND,
                )
            backup = self._source(restore, namespace)
            policy_body = cluster.get(Kind.POLICY, namespace, backup.spec.policy_name)
            if policy_body is None:
                raise PermanentError(
                    f"CitusBackupPolicy {backup.spec.policy_name} (of CitusBackup "
                    f"{backup.name}) not found in namespace {namespace}",
                    reason=Reason.POLICY_NOT_FOUND,
                )
            policy = parse(CitusBackupPolicy, policy_body)
            return self._start(restore, backup, policy, namespace)
        # The Job exists: its outcome is all that matters (source and policy may be gone).
        result = outcome(state)
        if result.progress is Progress.SUCCEEDED:
            source_name = restore.status.backup_name or restore.spec.backup_name
            source_body = cluster.get(Kind.BACKUP, namespace, source_name) if source_name else None
            source = parse(CitusBackup, source_body) if source_body is not None else None
            # The runner's summary names what it restored; without one, what was asked.
            databases = sorted((result.summary.get("databases") or {}).keys())
            if not databases and source is not None:
                databases = targets_of(restore, source)
            names = ", ".join(databases) or "nothing"
            verified = result.summary.get("verified") or {}
            backup_id = source.status.backup_id if source else restore.status.backup_id
            if restore.spec.verify:
                databases = sorted(verified) or databases
            message = success_message(restore, result.summary, backup_id, source_name, names)
            self._finish(
                restore,
                Phase.SUCCEEDED,
                Reason.RESTORE_SUCCEEDED,
                message,
                state.completion_time,
                {
                    "restoredDatabases": databases,
                    "verification": [f"{db}: {text}" for db, text in sorted(verified.items())],
                    "keptDatabases": list(result.summary.get("keptDatabases") or []) or None,
                },
                citus_condition(result.summary.get("citus") or {}),
            )
            return None
        if result.progress is Progress.FAILED:
            runner_reason = result.reason or ""
            if runner_reason == DEADLINE_EXCEEDED:
                reason: str = Reason.JOB_DEADLINE_EXCEEDED
            elif runner_reason in _REASONS:
                reason = runner_reason  # e.g. TargetExists from the runner's own refusal
            else:
                reason = Reason.RESTORE_FAILED
            message = result.message or "the restore Job failed"
            if reason == Reason.RESTORE_FAILED and runner_reason:
                message = f"{runner_reason}: {message}"
            self._finish(
                restore,
                Phase.FAILED,
                reason,
                message,
                state.completion_time,
                verified_reason=verification.verified_reason(runner_reason, ok=False),
            )
            return None
        return self._running(
            restore, namespace, job_name, state, running=result.progress is Progress.RUNNING
        )

    def _running(
        self, restore: CitusRestore, namespace: str, job_name: str, state: JobState, *,
        running: bool,
    ) -> float:  # fmt: skip
        """Pending/Running: the phase, the Running Event once, and the progress."""
        if running and restore.status.phase is not Phase.RUNNING:
            self.deps.events.emit(
                ref_body(restore), NORMAL, str(Reason.RESTORE_RUNNING), f"Job {job_name} is running"
            )
        message = f"Job {job_name} {'is running' if running else 'created'}"
        extra: dict[str, Any] = {"jobName": job_name, "startTime": time_str(state.start_time)}
        progress = self._read_progress(restore, namespace) if running else None
        if progress is not None:
            extra["progress"] = progress
            message += (
                f": {progress['databasesDone']}/{progress['databasesTotal']} databases restored, "
                f"{format_size(progress['bytes'])} read"
            )
        self._patch(
            restore,
            Phase.RUNNING if running else Phase.PENDING,
            Reason.RESTORE_RUNNING if running else Reason.JOB_CREATED,
            message,
            extra,
        )
        return self.deps.poll_seconds

    def _read_progress(self, restore: CitusRestore, namespace: str) -> dict[str, Any] | None:
        """The runner's beacon on the target server, at most every MIN_INTERVAL
        seconds per restore (in between, the last one read); None if unknown."""
        probe = self.deps.probe
        if probe is None:
            return None

        def read() -> dict[str, Any] | None:
            connection = self._connection(restore, namespace)
            if connection is None:
                return None
            password = read_secret_value(
                self.deps.cluster, namespace, connection.password_secret_ref
            )
            tag = progress_tag(namespace, restore.name)
            names = probe.application_names(connection, password, f"{BEACON_PREFIX}{tag}:")
            del password
            found = next((p for p in (parse_beacon(n, tag) for n in names) if p), None)
            if found is None:
                return None
            done, total, size = found
            return {"databasesDone": done, "databasesTotal": total, "bytes": size}

        return self._progress.get((namespace, restore.name), self.deps.clock(), read)

    def _connection(self, restore: CitusRestore, namespace: str) -> PostgresConnection | None:
        if restore.spec.target is not None:
            return restore.spec.target
        backup_name = restore.status.backup_name or restore.spec.backup_name
        body = self.deps.cluster.get(Kind.BACKUP, namespace, backup_name) if backup_name else None
        if body is None:
            return None
        policy_name = str(body.get("spec", {}).get("policyName") or "")
        policy_body = self.deps.cluster.get(Kind.POLICY, namespace, policy_name)
        if policy_body is None:
            return None
        return parse(CitusBackupPolicy, policy_body).spec.coordinator

    def _start(
        self, restore: CitusRestore, backup: CitusBackup, policy: CitusBackupPolicy, namespace: str
    ) -> float:
        cluster = self.deps.cluster
        spec = restore.spec
        connection = spec.target or policy.spec.coordinator
        check_references(
            cluster,
            namespace,
            connection=connection,
            storage=policy.spec.storage,
            connection_field="target" if spec.target is not None else "coordinator",
        )
        self._check_target(restore, backup, policy, namespace)
        me = concurrency.restore_activity(restore, policy, backup)
        waiting_for = concurrency.blocker(me, concurrency.activities(cluster, namespace))
        if waiting_for is not None:
            raise _Wait(f"waiting for {waiting_for.describe()} to finish")
        job = build_restore_job(restore, backup, policy, image=self.deps.image)
        created = cluster.create_job(job)
        job_name = restore_job_name(restore.name)
        self._patch(
            restore,
            Phase.PENDING,
            Reason.JOB_CREATED,
            f"Job {job_name} created",
            {
                "jobName": job_name,
                "backupName": backup.name,
                "backupId": backup.status.backup_id,
                "startTime": time_str(self.deps.clock()),
            },
        )
        if created:
            self.deps.events.emit(
                ref_body(restore), NORMAL, str(Reason.JOB_CREATED), f"created Job {job_name}"
            )
        return self.deps.poll_seconds

    def _check_target(
        self,
        restore: CitusRestore,
        backup: CitusBackup,
        policy: CitusBackupPolicy,
        namespace: str,
    ) -> None:
        spec = restore.spec
        if spec.verify:
            return  # scratch databases: the runner drops leftovers of its own
        if spec.replace or spec.tables or spec.schemas or self.deps.probe is None:
            return  # partial restores: the runner checks the listed objects itself
        targets = targets_of(restore, backup)
        if not targets:
            return
        connection = spec.target or policy.spec.coordinator
        password = read_secret_value(self.deps.cluster, namespace, connection.password_secret_ref)
        try:
            existing = self.deps.probe.existing_databases(connection, password, targets)
        except TransientError as err:
            logger.info("target check skipped (the runner checks again): %s", err.message)
            return
        finally:
            del password
        if existing:
            names = ", ".join(sorted(existing))
            raise PermanentError(
                f"target database(s) {names} already exist on {connection.host}:"
                f"{connection.port}; set replace: true to replace them, or targetDatabase to "
                "restore side by side",
                reason=Reason.TARGET_EXISTS,
            )

    # ------------------------------------------------------------------ status

    def _patch(  # noqa: PLR0917
        self,
        restore: CitusRestore,
        phase: Phase,
        reason: str,
        message: str,
        extra: dict[str, Any] | None = None,
        citus: tuple[bool, Reason, str] | None = None,
    ) -> None:
        succeeded: bool | None = None
        if phase is Phase.SUCCEEDED:
            succeeded = True
        elif phase is Phase.FAILED:
            succeeded = False
        condition = make_condition(
            ConditionType.SUCCEEDED,
            succeeded,
            Reason(reason) if reason in _REASONS else Reason.RESTORE_FAILED,
            message,
            now=self.deps.clock(),
            observed_generation=restore.metadata.generation,
        )
        conditions = set_condition(restore.status.conditions, condition)
        if citus is not None:
            distributed, citus_reason, citus_message = citus
            conditions = set_condition(
                conditions,
                make_condition(
                    ConditionType.CITUS_DISTRIBUTED,
                    distributed,
                    citus_reason,
                    citus_message,
                    now=self.deps.clock(),
                    observed_generation=restore.metadata.generation,
                ),
            )
        status: dict[str, Any] = {
            "phase": str(phase),
            "message": message,
            "observedGeneration": restore.metadata.generation,
            "conditions": [c.to_dict() for c in conditions],
        }
        for key, value in (extra or {}).items():
            if value is not None:
                status[key] = value
        if changes(restore.status.to_dict(), status):
            self.deps.cluster.patch_status(
                Kind.RESTORE, restore.namespace or "", restore.name, status
            )

    def _finish(  # noqa: PLR0917
        self,
        restore: CitusRestore,
        phase: Phase,
        reason: str,
        message: str,
        completed: datetime | None = None,
        extra: dict[str, Any] | None = None,
        citus: tuple[bool, Reason, str] | None = None,
        *,
        verified_reason: Reason | None = None,
    ) -> None:
        self._progress.forget((restore.namespace or "", restore.name))
        extra = dict(extra or {})
        extra["completionTime"] = time_str(completed or self.deps.clock())
        ok = phase is Phase.SUCCEEDED
        if ok and extra.get("restoredDatabases") is not None:
            count = len(extra["restoredDatabases"])
            extra["progress"] = {
                "databasesDone": count,
                "databasesTotal": count,
                "bytes": int(restore.status.progress.bytes if restore.status.progress else 0),
            }
        self._patch(restore, phase, reason, message, extra, citus)
        if restore.spec.verify:
            verification.record(
                self.deps,
                namespace=restore.namespace or "",
                restore_name=restore.name,
                backup_name=restore.status.backup_name or restore.spec.backup_name,
                ok=ok,
                reason=verified_reason or verification.verified_reason(str(reason), ok),
                message=message,
                completed=completed,
            )
        if citus is not None and not citus[0]:
            self.deps.events.emit(
                ref_body(restore), WARNING, str(Reason.CITUS_UNAVAILABLE), citus[2]
            )
        self.deps.events.emit(
            ref_body(restore),
            NORMAL if ok else WARNING,
            str(Reason.RESTORE_SUCCEEDED if ok else Reason.RESTORE_FAILED),
            message if ok else f"[{reason}] {message}",
        )
