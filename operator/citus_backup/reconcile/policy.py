"""CitusBackupPolicy: the in-operator scheduler, and the policy's status.

Scheduling runs in the operator (as Velero and CloudNativePG do), from a kopf
daemon per policy that calls :meth:`PolicyReconciler.reconcile` at each fire
time, on spec changes and at least every ``--schedule-interval`` seconds
(:mod:`citus_backup.controllers`). Each call is idempotent:

1. Check the Secrets the Jobs will need (condition Ready; a Warning Event
   only when the reason changes, so a missing Secret is not a storm).
2. :func:`citus_backup.specs.schedule.decide` says whether a run is due at
   ``now`` given ``status.lastScheduleTime`` (or the creation time): the most
   recent fire time, in the policy's time zone (DST-correct), if it is not
   older than ``startingDeadlineSeconds`` — which is also the one catch-up
   run after operator downtime. ``suspend`` stops it.
3. A due run creates the CitusBackup ``<policy>-<YYYYMMDDHHMM>`` (the
   scheduled time, UTC) with create-or-ignore-409: a restart, a stale read or
   two operators can never start a run twice. While a backup of the policy
   is still active the run is *skipped* (lastScheduleTime advances, Warning
   Event MissedSchedule says why). A run older than the deadline is *missed*
   (condition LastBackupSucceeded=False, MissedSchedule).
4. The status gets lastScheduleTime, nextScheduleTime, the result of the
   latest finished backup (LastBackupSucceeded, lastSuccessfulBackup,
   lastFailureMessage) and observedGeneration.

While the policy is not Ready nothing is created and lastScheduleTime does
not advance, so fixing the Secret in time still runs the due backup.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from citus_backup.api.backup import CitusBackup
from citus_backup.api.common import (
    ANNOTATION_SCHEDULED_TIME,
    APP_NAME,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    LABEL_POLICY,
    LABEL_TRIGGER,
    MANAGER_NAME,
    Condition,
    ConditionType,
    Phase,
    Reason,
    find_condition,
    make_condition,
    set_condition,
)
from citus_backup.api.policy import CitusBackupPolicy
from citus_backup.errors import CitusBackupError, PermanentError, TransientError
from citus_backup.reconcile import verification
from citus_backup.reconcile.common import (
    NORMAL,
    WARNING,
    Deps,
    changes,
    check_references,
    parse,
    ref_body,
    time_str,
)
from citus_backup.reconcile.ports import Kind
from citus_backup.specs.names import label_value, scheduled_backup_name
from citus_backup.specs.retention import tiers_for_run
from citus_backup.specs.schedule import ScheduleDecision, decide, next_fire_time

logger = logging.getLogger(__name__)

#: Event reason when the schedule creates a CitusBackup.
BACKUP_SCHEDULED = "BackupScheduled"
#: Value of the trigger label on scheduled CitusBackups.
TRIGGER_SCHEDULED = "scheduled"


#: Condition types the scheduler owns; others (LifecycleInSync) belong to the
#: retention controller and are never written from here.
SCHEDULER_CONDITIONS = frozenset({ConditionType.READY, ConditionType.LAST_BACKUP_SUCCEEDED})
#: Seconds until a policy that is not Ready (missing Secret, ...) is looked at again.
NOT_READY_RECHECK_SECONDS = 10.0
#: Re-reads of a policy whose status patch lost a race before giving up for this tick.
STATUS_ATTEMPTS = 3
#: Seconds after which a look with nothing due lists the policy's backups again to
#: recompute the backup summary (lastSuccessfulBackup, LastBackupSucceeded). A
#: finished backup refreshes the summary itself; a look after one that saw a backup
#: still running lists again; this is the safety net (e.g. a CitusBackup deleted
#: by hand, or a summary write lost to conflicts). Without it every idle look was a LIST of the
#: namespace's backups: with 1,000 policies, most of the operator's idle requests.
SUMMARY_REFRESH_SECONDS = 3600.0


def patch_policy_status(
    deps: Deps,
    namespace: str,
    name: str,
    resource_version: str | None,
    fields: Mapping[str, Any],
    *,
    owned: frozenset[ConditionType] = SCHEDULER_CONDITIONS,
) -> None:
    """Write status fields without clobbering conditions owned by another writer.

    A merge patch replaces the whole ``conditions`` list, which the retention
    controller writes too, so the patch is guarded by the resourceVersion read.
    On a conflict the policy is re-read and our fields (this tick's decisions,
    such as the ``lastScheduleTime`` of a backup just created) are re-applied
    with only the condition types in ``owned`` taken from ours and every other
    condition from the current object (the backup summary owns just
    LastBackupSucceeded; the scheduler tick also owns Ready).
    """
    for _ in range(STATUS_ATTEMPTS):
        try:
            deps.cluster.patch_status(
                Kind.POLICY, namespace, name, fields, resource_version=resource_version
            )
            return
        except TransientError as err:
            if err.reason != "Conflict":
                raise
        fresh = deps.cluster.get(Kind.POLICY, namespace, name)
        if fresh is None:
            return
        resource_version = fresh.get("metadata", {}).get("resourceVersion")
        if "conditions" in fields:
            ours = [c for c in fields["conditions"] if c.get("type") in owned]
            theirs = [
                c
                for c in fresh.get("status", {}).get("conditions") or []
                if c.get("type") not in owned
            ]
            fields = {**fields, "conditions": ours + theirs}
    raise TransientError(
        f"status of CitusBackupPolicy {namespace}/{name} kept changing; will retry",
        reason="Conflict",
        delay=1.0,
    )


def backups_of(deps: Deps, policy: CitusBackupPolicy) -> list[CitusBackup]:
    """Every CitusBackup of the policy (scheduled and manual), parsed."""
    result: list[CitusBackup] = []
    for item in deps.cluster.list(Kind.BACKUP, policy.namespace or ""):
        if item.get("spec", {}).get("policyName") != policy.name:
            continue
        try:
            result.append(CitusBackup.model_validate(item))
        except ValidationError:
            continue
    return result


def _finished_key(backup: CitusBackup) -> tuple[datetime, str]:
    when = backup.status.completion_time or backup.metadata.creation_timestamp
    assert when is not None
    return (when, backup.name)


def backup_summary(
    backups: Sequence[CitusBackup],
    conditions: Sequence[Condition],
    *,
    now: datetime,
    generation: int | None,
) -> tuple[dict[str, Any], tuple[Condition, ...]]:
    """Status fields and LastBackupSucceeded from the policy's backups (pure)."""
    finished = sorted(
        (
            b
            for b in backups
            if b.status.phase is not None
            and b.status.phase.finished
            and (b.status.completion_time or b.metadata.creation_timestamp)
        ),
        key=_finished_key,
    )
    succeeded = [b for b in finished if b.status.phase is Phase.SUCCEEDED]
    failed = [b for b in finished if b.status.phase is Phase.FAILED]
    fields: dict[str, Any] = {}
    if succeeded:
        last_ok = succeeded[-1]
        fields["lastSuccessfulBackup"] = {
            "name": last_ok.name,
            "time": time_str(last_ok.status.completion_time),
        }
    if failed:
        fields["lastFailureMessage"] = f"{failed[-1].name}: {failed[-1].status.message or ''}"
    current = find_condition(conditions, ConditionType.LAST_BACKUP_SUCCEEDED)
    if finished:
        last = finished[-1]
        ok = last.status.phase is Phase.SUCCEEDED
        # A missed run recorded after the latest finished backup stays visible.
        if (
            current is not None
            and current.reason == Reason.MISSED_SCHEDULE
            and current.last_transition_time > _finished_key(last)[0]
        ):
            return fields, tuple(conditions)
        condition = make_condition(
            ConditionType.LAST_BACKUP_SUCCEEDED,
            ok,
            Reason.BACKUP_SUCCEEDED if ok else Reason.BACKUP_FAILED,
            f"{last.name}: {last.status.message or last.status.phase}",
            now=now,
            observed_generation=generation,
        )
    elif current is not None and current.reason == Reason.MISSED_SCHEDULE:
        return fields, tuple(conditions)
    else:
        active = [b for b in backups if not (b.status.phase and b.status.phase.finished)]
        condition = make_condition(
            ConditionType.LAST_BACKUP_SUCCEEDED,
            None,
            Reason.BACKUP_RUNNING if active else Reason.NO_BACKUP_YET,
            f"{active[0].name} is running" if active else "no backup has finished yet",
            now=now,
            observed_generation=generation,
        )
    return fields, set_condition(conditions, condition)


def refresh_backup_summary(deps: Deps, policy: CitusBackupPolicy) -> None:
    """Re-derive the policy's backup fields now (called when a backup finishes)."""
    fresh = deps.cluster.get(Kind.POLICY, policy.namespace or "", policy.name)
    if fresh is None:
        return
    policy = parse(CitusBackupPolicy, fresh)
    fields, conditions = backup_summary(
        backups_of(deps, policy),
        policy.status.conditions,
        now=deps.clock(),
        generation=policy.metadata.generation,
    )
    fields["conditions"] = [c.to_dict() for c in conditions]
    if changes(policy.status.to_dict(), fields):
        patch_policy_status(
            deps,
            policy.namespace or "",
            policy.name,
            policy.metadata.resource_version,
            fields,
            owned=frozenset({ConditionType.LAST_BACKUP_SUCCEEDED}),
        )


def held_tiers(backups: Iterable[CitusBackup]) -> list[tuple[datetime, tuple[str, ...]]]:
    """(time, tiers) of every backup that has not failed: what tier placement counts."""
    held: list[tuple[datetime, tuple[str, ...]]] = []
    for b in backups:
        if b.status.phase is Phase.FAILED:
            continue
        when = b.metadata.annotations.get(ANNOTATION_SCHEDULED_TIME)
        at = datetime.fromisoformat(when.replace("Z", "+00:00")) if when else None
        at = at or b.metadata.creation_timestamp
        if at is None:
            continue
        tiers = tuple(str(t) for t in b.status.tiers) or tuple(
            str(t) for t in (b.spec.tier, *b.spec.also_tiers) if t is not None
        )
        held.append((at, tiers))
    return held


def scheduled_backup_body(
    policy: CitusBackupPolicy, run: datetime, backups: Iterable[CitusBackup] | None = None
) -> dict[str, Any]:
    """The CitusBackup of the scheduled run at ``run`` (not owned by the policy).

    With the policy's ``backups``, a higher tier whose period has no backup yet
    (the 1st's run failed) is added: see :func:`citus_backup.specs.retention.tiers_for_run`.
    """
    held = None if backups is None else held_tiers(backups)
    tiers = tiers_for_run(policy.spec, run, held)
    spec: dict[str, Any] = {"policyName": policy.name, "tier": str(tiers[0])}
    if tiers[1:]:
        spec["alsoTiers"] = [str(t) for t in tiers[1:]]
    return {
        "apiVersion": "citusbackup.io/v1alpha1",
        "kind": "CitusBackup",
        "metadata": {
            "name": scheduled_backup_name(policy.name, run),
            "namespace": policy.namespace,
            "labels": {
                LABEL_NAME: APP_NAME,
                LABEL_MANAGED_BY: MANAGER_NAME,
                LABEL_POLICY: label_value(policy.name),
                LABEL_TRIGGER: TRIGGER_SCHEDULED,
            },
            "annotations": {ANNOTATION_SCHEDULED_TIME: time_str(run)},
        },
        "spec": spec,
    }


class PolicyReconciler:
    """Runs the schedule of one policy per call and writes its status."""

    def __init__(
        self, deps: Deps, start_backup: Callable[[str, str], object] | None = None
    ) -> None:
        self.deps = deps
        #: Called with (name, namespace) right after a scheduled CitusBackup is
        #: created (the backup reconciler: its Job is created in the same look
        #: instead of when kopf first runs the backup's timer, which at a fire time
        #: shared by many policies was seconds later). Errors are left to that
        #: timer, which looks again anyway.
        self.start_backup = start_backup
        #: (namespace, name) -> (time, generation, a backup was unfinished) of the
        #: last look that listed the policy's backups (see SUMMARY_REFRESH_SECONDS).
        self._listed: dict[tuple[str, str], tuple[datetime, int | None, bool]] = {}

    def reconcile(
        self, name: str, namespace: str, body: Mapping[str, Any] | None = None
    ) -> float | None:
        """One look at the policy; the seconds until the next one is due (the next
        fire time of its schedule or verification schedule), None if it is gone.

        ``body``: the policy as the operator's watch last saw it (kopf's view),
        which saves a GET per look; without it the policy is read. A stale view
        is harmless: the status patch is guarded by its resourceVersion (a
        conflict re-reads the policy) and backup names are deterministic.
        """
        with self.deps.locked("CitusBackupPolicy", namespace, name):
            if body is None:
                body = self.deps.cluster.get(Kind.POLICY, namespace, name)
            else:
                body = dict(body)
            if body is None or body.get("metadata", {}).get("deletionTimestamp"):
                self._listed.pop((namespace, name), None)
                return None
            try:
                policy = parse(CitusBackupPolicy, body)
            except PermanentError as err:
                self._not_ready(body, err)
                return None
            return self._reconcile(policy)

    def _not_ready(self, body: dict[str, Any], err: PermanentError) -> None:
        """A policy the models reject (e.g. an unknown time zone) gets Ready=False."""
        meta = body.get("metadata", {})
        conditions = [
            Condition.model_validate(c) for c in body.get("status", {}).get("conditions", [])
        ]
        old = find_condition(conditions, ConditionType.READY)
        condition = make_condition(
            ConditionType.READY,
            False,
            Reason.INVALID_SPEC,
            err.message,
            now=self.deps.clock(),
            observed_generation=meta.get("generation"),
        )
        if old is not None and old.reason == condition.reason and old.message == err.message:
            return
        status = {
            "conditions": [c.to_dict() for c in set_condition(conditions, condition)],
            "observedGeneration": meta.get("generation"),
            "nextScheduleTime": None,
        }
        patch_policy_status(
            self.deps,
            meta.get("namespace", ""),
            meta.get("name", ""),
            meta.get("resourceVersion"),
            status,
        )
        self.deps.events.emit(body, WARNING, str(Reason.INVALID_SPEC), err.message)

    def _reconcile(self, policy: CitusBackupPolicy) -> float:
        deps = self.deps
        namespace = policy.namespace or ""
        spec = policy.spec
        now = deps.clock()
        generation = policy.metadata.generation
        status = policy.status
        conditions = status.conditions
        fields: dict[str, Any] = {"observedGeneration": generation}

        ready_reason, ready_message, ready = self._readiness(policy, now)
        conditions = set_condition(
            conditions,
            make_condition(
                ConditionType.READY,
                ready,
                ready_reason,
                ready_message,
                now=now,
                observed_generation=generation,
            ),
        )
        created = policy.metadata.creation_timestamp or now
        decision = decide(
            spec.schedule,
            spec.time_zone,
            now=now,
            last_schedule_time=status.last_schedule_time,
            created=created,
            starting_deadline_seconds=spec.starting_deadline_seconds,
            suspend=spec.suspend,
        )
        fields["nextScheduleTime"] = None if spec.suspend else time_str(decision.next_run)
        key = (namespace, policy.name)
        listed = self._listed.get(key)
        if (
            decision.run is not None
            or decision.missed is not None
            or self._verification_due(policy, now)
            or listed is None
            or listed[1] != generation
            or listed[2]  # a backup was running at the last listing: it may have finished
            or (now - listed[0]).total_seconds() >= SUMMARY_REFRESH_SECONDS
        ):
            backups = backups_of(deps, policy)
            if ready:
                conditions = self._act(policy, decision, backups, fields, conditions, now)
                self._verify_by_schedule(policy, backups, fields, now)
            if "lastScheduleTime" in fields:  # a run was created (or skipped): list again
                backups = backups_of(deps, policy)
            running = any(not (b.status.phase and b.status.phase.finished) for b in backups)
            self._listed[key] = (now, generation, running)
            summary, conditions = backup_summary(
                backups, conditions, now=now, generation=generation
            )
            fields.update(summary)
        # else: nothing is due and the summary was computed recently (a finished
        # backup refreshes it itself, refresh_backup_summary): no LIST of backups.
        fields["conditions"] = [c.to_dict() for c in conditions]
        if changes(status.to_dict(), fields):
            patch_policy_status(
                deps, namespace, policy.name, policy.metadata.resource_version, fields
            )
        due = [decision.next_run]
        verification_spec = spec.verification
        if verification_spec is not None and verification_spec.schedule is not None:
            due.append(next_fire_time(verification_spec.schedule, spec.time_zone, now))
        delay = max(0.0, (min(due) - now).total_seconds())
        # A missing Secret or an unreachable bucket is fixed outside the policy
        # (no event about it wakes us): look again soon.
        return delay if ready else min(delay, NOT_READY_RECHECK_SECONDS)

    def _verification_decision(
        self, policy: CitusBackupPolicy, now: datetime
    ) -> ScheduleDecision | None:
        """What ``verification.schedule`` says at ``now`` (None: no such schedule)."""
        verification_spec = policy.spec.verification
        if verification_spec is None or verification_spec.schedule is None:
            return None
        return decide(
            verification_spec.schedule,
            policy.spec.time_zone,
            now=now,
            last_schedule_time=policy.status.last_verification_schedule_time,
            created=policy.metadata.creation_timestamp or now,
            starting_deadline_seconds=None,
            suspend=policy.spec.suspend,
        )

    def _verification_due(self, policy: CitusBackupPolicy, now: datetime) -> bool:
        """A fire time of ``verification.schedule`` has come (see _verify_by_schedule)."""
        decision = self._verification_decision(policy, now)
        return decision is not None and decision.run is not None

    def _verify_by_schedule(
        self,
        policy: CitusBackupPolicy,
        backups: Sequence[CitusBackup],
        fields: dict[str, Any],
        now: datetime,
    ) -> None:
        """At a fire time of ``verification.schedule``: verify the newest successful
        backup unless it already has a verification (suspend stops this too)."""
        decision = self._verification_decision(policy, now)
        verification_spec = policy.spec.verification
        if decision is None or decision.run is None or verification_spec is None:
            return
        restores = self.deps.cluster.list(Kind.RESTORE, policy.namespace or "")
        target = verification.due_by_schedule(policy, backups, restores)
        if target is not None:
            verification.request(
                self.deps, policy, target, f"schedule {verification_spec.schedule!r}"
            )
        fields["lastVerificationScheduleTime"] = time_str(decision.run)

    def _readiness(self, policy: CitusBackupPolicy, now: datetime) -> tuple[Reason, str, bool]:
        old = find_condition(policy.status.conditions, ConditionType.READY)
        try:
            check_references(
                self.deps.cluster,
                policy.namespace or "",
                connection=policy.spec.coordinator,
                storage=policy.spec.storage,
            )
        except PermanentError as err:
            reason = (
                Reason(err.reason)
                if err.reason in Reason.__members__.values()
                else (Reason.INVALID_SPEC)
            )
            if old is None or old.reason != reason or old.message != err.message:
                self.deps.events.emit(ref_body(policy), WARNING, str(reason), err.message)
            return reason, err.message, False
        if policy.spec.suspend:
            return Reason.SUSPENDED, "scheduling is suspended", True
        return (
            Reason.RECONCILED,
            f"schedule {policy.spec.schedule!r} in {policy.spec.time_zone}",
            True,
        )

    def _act(  # noqa: PLR0917
        self,
        policy: CitusBackupPolicy,
        decision: ScheduleDecision,
        backups: Sequence[CitusBackup],
        fields: dict[str, Any],
        conditions: tuple[Condition, ...],
        now: datetime,
    ) -> tuple[Condition, ...]:
        deps = self.deps
        namespace = policy.namespace or ""
        if decision.missed is not None:
            missed = time_str(decision.missed)
            message = (
                f"run scheduled at {missed} missed: more than "
                f"startingDeadlineSeconds={policy.spec.starting_deadline_seconds} late"
            )
            deps.events.emit(ref_body(policy), WARNING, str(Reason.MISSED_SCHEDULE), message)
            fields["lastScheduleTime"] = missed
            return set_condition(
                conditions,
                make_condition(
                    ConditionType.LAST_BACKUP_SUCCEEDED,
                    False,
                    Reason.MISSED_SCHEDULE,
                    message,
                    now=now,
                    observed_generation=policy.metadata.generation,
                ),
            )
        if decision.run is None:
            return conditions
        run = decision.run
        name = scheduled_backup_name(policy.name, run)
        active = [
            b
            for b in backups
            if not (b.status.phase and b.status.phase.finished) and b.name != name
        ]
        fields["lastScheduleTime"] = time_str(run)
        if active:
            deps.events.emit(
                ref_body(policy),
                WARNING,
                str(Reason.MISSED_SCHEDULE),
                f"run scheduled at {time_str(run)} skipped: backup {active[0].name} is still "
                "running (at most one backup per policy)",
            )
            return conditions
        if deps.cluster.create(Kind.BACKUP, namespace, scheduled_backup_body(policy, run, backups)):
            deps.events.emit(
                ref_body(policy),
                NORMAL,
                BACKUP_SCHEDULED,
                f"created CitusBackup {name} for the run scheduled at {time_str(run)}",
            )
            if self.start_backup is not None:
                try:
                    self.start_backup(name, namespace)
                except CitusBackupError as err:
                    logger.info("backup %s/%s: its timer will retry: %s", namespace, name, err)
        return conditions
