"""The scheduler and the policy's status (PolicyReconciler) against in-memory fakes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from reconcile_fakes import SECRET_KEY, T0, World, backup, policy, world

from citus_backup.errors import TransientError
from citus_backup.reconcile.policy import PolicyReconciler
from citus_backup.reconcile.ports import Kind


def tick(w: World, name: str = "main") -> None:
    PolicyReconciler(w.deps).reconcile(name, "ns")


def backups(w: World) -> list[str]:
    return [name for (kind, _, name) in w.cluster.objects if kind is Kind.BACKUP]


@pytest.fixture
def w() -> World:
    w = world()  # 02:00 UTC
    w.cluster.add_secrets()
    return w


def test_a_new_policy_is_ready_and_knows_its_next_run(w: World) -> None:
    w.cluster.add(Kind.POLICY, policy())
    tick(w)
    status = w.cluster.status(Kind.POLICY, "main")
    assert status["nextScheduleTime"] == "2026-11-27T03:00:00Z"
    assert status["observedGeneration"] == 1
    assert "lastScheduleTime" not in status
    ready = w.cluster.condition(Kind.POLICY, "main", "Ready")
    assert ready is not None
    assert (ready["status"], ready["reason"]) == ("True", "Reconciled")
    last = w.cluster.condition(Kind.POLICY, "main", "LastBackupSucceeded")
    assert last is not None
    assert (last["status"], last["reason"]) == ("Unknown", "NoBackupYet")
    assert backups(w) == []


def test_a_due_run_creates_one_labelled_unowned_backup(w: World) -> None:
    w.cluster.add(Kind.POLICY, policy())
    tick(w)
    w.clock.advance(hours=1, seconds=5)  # 03:00:05
    tick(w)
    assert backups(w) == ["main-202611270300"]
    created = w.cluster.obj(Kind.BACKUP, "main-202611270300")
    # The policy's first run is also the month's first: it gets the monthly copy.
    assert created["spec"] == {"policyName": "main", "tier": "daily", "alsoTiers": ["monthly"]}
    assert created["metadata"]["labels"]["citusbackup.io/trigger"] == "scheduled"
    assert created["metadata"]["labels"]["citusbackup.io/policy"] == "main"
    assert created["metadata"]["annotations"]["citusbackup.io/scheduled-time"] == (
        "2026-11-27T03:00:00Z"
    )
    assert "ownerReferences" not in created["metadata"]
    status = w.cluster.status(Kind.POLICY, "main")
    assert status["lastScheduleTime"] == "2026-11-27T03:00:00Z"
    assert status["nextScheduleTime"] == "2026-11-28T03:00:00Z"
    assert w.events.reasons("main") == ["BackupScheduled"]
    # Ticking again changes nothing and writes nothing.
    patches = w.cluster.status_patches
    tick(w)
    assert backups(w) == ["main-202611270300"]
    assert w.cluster.status_patches == patches


def test_a_lost_status_write_or_a_restart_never_duplicates_a_run(w: World) -> None:
    w.cluster.add(Kind.POLICY, policy())
    w.clock.advance(hours=1, seconds=5)
    tick(w)
    # The operator died before lastScheduleTime was stored (or read a stale copy).
    w.cluster.obj(Kind.POLICY, "main")["status"].pop("lastScheduleTime")
    tick(w)
    assert backups(w) == ["main-202611270300"]
    assert w.events.reasons("main") == ["BackupScheduled"]  # no second creation
    assert w.cluster.status(Kind.POLICY, "main")["lastScheduleTime"] == "2026-11-27T03:00:00Z"


def test_the_first_run_of_a_month_also_goes_to_the_monthly_tier() -> None:
    w = world(datetime(2026, 11, 30, 12, 0, tzinfo=UTC))
    w.cluster.add_secrets()
    w.cluster.add(Kind.POLICY, policy())
    w.clock.now = datetime(2026, 12, 1, 3, 0, 2, tzinfo=UTC)
    tick(w)
    assert w.cluster.obj(Kind.BACKUP, "main-202612010300")["spec"] == {
        "policyName": "main",
        "tier": "daily",
        "alsoTiers": ["monthly"],
    }


def test_a_run_due_while_a_backup_is_active_is_skipped_and_recorded(w: World) -> None:
    w.cluster.add(Kind.POLICY, policy())
    w.cluster.add(Kind.BACKUP, backup("manual"))
    w.cluster.obj(Kind.BACKUP, "manual")["status"] = {"phase": "Running", "jobName": "x"}
    w.clock.advance(hours=1, seconds=5)
    tick(w)
    assert backups(w) == ["manual"]
    assert w.cluster.status(Kind.POLICY, "main")["lastScheduleTime"] == "2026-11-27T03:00:00Z"
    ((name, type_, reason, message),) = w.events.events
    assert (name, type_, reason) == ("main", "Warning", "MissedSchedule")
    assert "skipped: backup manual is still running" in message
    tick(w)
    assert len(w.events.events) == 1


def test_after_downtime_one_catch_up_run_within_the_deadline(w: World) -> None:
    w.cluster.add(Kind.POLICY, policy(schedule="0 * * * *", startingDeadlineSeconds=3600))
    w.cluster.obj(Kind.POLICY, "main")["status"] = {"lastScheduleTime": "2026-11-27T02:00:00Z"}
    w.clock.now = datetime(2026, 11, 27, 6, 40, tzinfo=UTC)  # down since 02:00
    tick(w)
    assert backups(w) == ["main-202611270600"]  # only the most recent missed run


def test_a_run_older_than_the_deadline_is_missed_not_started(w: World) -> None:
    w.cluster.add(Kind.POLICY, policy(startingDeadlineSeconds=300))
    w.clock.now = datetime(2026, 11, 27, 3, 10, tzinfo=UTC)
    tick(w)
    assert backups(w) == []
    status = w.cluster.status(Kind.POLICY, "main")
    assert status["lastScheduleTime"] == "2026-11-27T03:00:00Z"
    last = w.cluster.condition(Kind.POLICY, "main", "LastBackupSucceeded")
    assert last is not None
    assert (last["status"], last["reason"]) == ("False", "MissedSchedule")
    assert "startingDeadlineSeconds=300" in last["message"]
    tick(w)
    assert w.events.reasons() == ["MissedSchedule"]
    last = w.cluster.condition(Kind.POLICY, "main", "LastBackupSucceeded")
    assert last is not None
    assert last["reason"] == "MissedSchedule"  # kept until a backup finishes


def test_suspend_stops_runs_and_clears_the_next_run(w: World) -> None:
    w.cluster.add(Kind.POLICY, policy())
    tick(w)
    assert "nextScheduleTime" in w.cluster.status(Kind.POLICY, "main")
    w.cluster.obj(Kind.POLICY, "main")["spec"]["suspend"] = True
    w.clock.advance(hours=1, seconds=5)
    tick(w)
    assert backups(w) == []
    assert "nextScheduleTime" not in w.cluster.status(Kind.POLICY, "main")
    ready = w.cluster.condition(Kind.POLICY, "main", "Ready")
    assert ready is not None
    assert (ready["status"], ready["reason"]) == ("True", "Suspended")


@pytest.mark.parametrize(
    ("secrets", "reason", "text"),
    [
        ({}, "SecretNotFound", "Secret pg (coordinator.passwordSecretRef) not found"),
        (
            {("ns", "pg"): {"password": b"x"}, ("ns", "s3"): {"accessKeyId": b"k"}},
            "SecretKeyMissing",
            "Secret s3 (storage.secretAccessKeySecretRef) has no key secretAccessKey",
        ),
    ],
)
def test_missing_secrets_make_the_policy_not_ready_without_a_storm(
    secrets: dict[tuple[str, str], dict[str, bytes]], reason: str, text: str
) -> None:
    w = world()
    w.cluster.secrets = secrets
    w.cluster.add(Kind.POLICY, policy(startingDeadlineSeconds=3600))
    for _ in range(3):
        tick(w)
    ready = w.cluster.condition(Kind.POLICY, "main", "Ready")
    assert ready is not None
    assert (ready["status"], ready["reason"]) == ("False", reason)
    assert text in ready["message"]
    assert w.events.reasons() == [reason]  # one Warning, not one per tick
    w.clock.advance(hours=1, seconds=5)
    tick(w)
    assert backups(w) == []  # nothing runs while not Ready
    # Fixed in time: the due run still happens.
    w.cluster.add_secrets()
    tick(w)
    assert backups(w) == ["main-202611270300"]
    ready = w.cluster.condition(Kind.POLICY, "main", "Ready")
    assert ready is not None
    assert ready["status"] == "True"


def test_an_unknown_time_zone_makes_the_policy_not_ready(w: World) -> None:
    w.cluster.add(Kind.POLICY, policy(timeZone="Mars/Olympus_Mons"))
    tick(w)
    tick(w)
    ready = w.cluster.condition(Kind.POLICY, "main", "Ready")
    assert ready is not None
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert "Mars/Olympus_Mons" in ready["message"]
    assert w.events.reasons() == ["InvalidSpec"]


def test_spring_forward_runs_a_skipped_local_time_once() -> None:
    # 02:30 does not exist in Madrid on 2026-03-29: the run is at 03:30 CEST = 01:30 UTC.
    w = world(datetime(2026, 3, 28, 12, 0, tzinfo=UTC))
    w.cluster.add_secrets()
    w.cluster.add(Kind.POLICY, policy(schedule="30 2 * * *", timeZone="Europe/Madrid"))
    tick(w)
    assert w.cluster.status(Kind.POLICY, "main")["nextScheduleTime"] == "2026-03-29T01:30:00Z"
    w.clock.now = datetime(2026, 3, 29, 1, 30, 4, tzinfo=UTC)
    tick(w)
    w.clock.now = datetime(2026, 3, 29, 2, 30, 4, tzinfo=UTC)
    tick(w)
    assert backups(w) == ["main-202603290130"]
    assert w.cluster.status(Kind.POLICY, "main")["nextScheduleTime"] == "2026-03-30T00:30:00Z"


def test_fall_back_runs_a_repeated_local_time_once() -> None:
    # 01:30 happens twice in New York on 2026-11-01: only the first (05:30 UTC) runs.
    w = world(datetime(2026, 10, 31, 12, 0, tzinfo=UTC))
    w.cluster.add_secrets()
    w.cluster.add(Kind.POLICY, policy(schedule="30 1 * * *", timeZone="America/New_York"))
    for now in (
        datetime(2026, 11, 1, 5, 30, 3, tzinfo=UTC),
        datetime(2026, 11, 1, 6, 30, 3, tzinfo=UTC),
    ):
        w.clock.now = now
        tick(w)
        # Each run finishes at once so the second is not merely skipped.
        for name in backups(w):
            w.cluster.obj(Kind.BACKUP, name)["status"] = {"phase": "Succeeded"}
    assert backups(w) == ["main-202611010530"]
    assert w.events.reasons() == ["BackupScheduled"]


def test_backup_results_feed_the_policy_status(w: World) -> None:
    w.cluster.add(Kind.POLICY, policy())
    w.cluster.add(Kind.BACKUP, backup("b1"))
    w.cluster.obj(Kind.BACKUP, "b1")["status"] = {
        "phase": "Succeeded",
        "completionTime": "2026-11-27T01:00:00Z",
        "message": "ok",
    }
    w.cluster.add(Kind.BACKUP, backup("b2"))
    w.cluster.obj(Kind.BACKUP, "b2")["status"] = {
        "phase": "Failed",
        "completionTime": "2026-11-27T01:30:00Z",
        "message": "AuthenticationFailed: password authentication failed",
    }
    w.cluster.add(Kind.BACKUP, backup("other", policy_name="another"))
    tick(w)
    status = w.cluster.status(Kind.POLICY, "main")
    assert status["lastSuccessfulBackup"] == {"name": "b1", "time": "2026-11-27T01:00:00Z"}
    assert status["lastFailureMessage"].startswith("b2: AuthenticationFailed")
    last = w.cluster.condition(Kind.POLICY, "main", "LastBackupSucceeded")
    assert last is not None
    assert (last["status"], last["reason"]) == ("False", "BackupFailed")
    assert SECRET_KEY not in str(status)
    assert T0.tzinfo is UTC


def test_a_status_computed_from_a_stale_read_is_refused_and_retried(
    w: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another controller (retention) wrote the policy between our read and our patch:
    the patch carries the resourceVersion we read, so it cannot put back old conditions."""
    w.cluster.add(Kind.POLICY, policy())
    w.cluster.obj(Kind.POLICY, "main")["metadata"]["resourceVersion"] = "2"
    stale = w.cluster.get(Kind.POLICY, "ns", "main")
    assert stale is not None
    stale["metadata"]["resourceVersion"] = "1"
    monkeypatch.setattr(w.cluster, "get", lambda kind, namespace, name: stale)
    with pytest.raises(TransientError) as err:
        tick(w)
    assert err.value.reason == "Conflict"
    assert "conditions" not in w.cluster.status(Kind.POLICY, "main")


def test_a_failed_run_on_the_first_does_not_leave_the_month_without_a_monthly_copy() -> None:
    w = world(datetime(2026, 11, 30, 12, 0, tzinfo=UTC))
    w.cluster.add_secrets()
    w.cluster.add(Kind.POLICY, policy())
    w.clock.now = datetime(2026, 12, 1, 3, 0, 2, tzinfo=UTC)
    tick(w)
    first = w.cluster.obj(Kind.BACKUP, "main-202612010300")
    assert first["spec"]["alsoTiers"] == ["monthly"]
    first["status"] = {"phase": "Failed", "tiers": ["daily", "monthly"]}
    w.clock.now = datetime(2026, 12, 2, 3, 0, 2, tzinfo=UTC)
    tick(w)
    assert w.cluster.obj(Kind.BACKUP, "main-202612020300")["spec"]["alsoTiers"] == ["monthly"]
    # Once the month has its copy (the 2nd succeeded), later runs stay daily only.
    w.cluster.obj(Kind.BACKUP, "main-202612020300")["status"] = {
        "phase": "Succeeded",
        "tiers": ["daily", "monthly"],
    }
    w.clock.now = datetime(2026, 12, 3, 3, 0, 2, tzinfo=UTC)
    tick(w)
    assert "alsoTiers" not in w.cluster.obj(Kind.BACKUP, "main-202612030300")["spec"]


def test_after_a_conflict_our_fields_are_reapplied_over_the_other_owners_conditions(
    w: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    w.cluster.add(Kind.POLICY, policy())
    obj = w.cluster.obj(Kind.POLICY, "main")
    obj["metadata"]["resourceVersion"] = "2"
    lifecycle = {"type": "LifecycleInSync", "status": "True", "reason": "InSync"}
    obj["status"] = {"conditions": [lifecycle]}
    stale = w.cluster.get(Kind.POLICY, "ns", "main")
    assert stale is not None
    stale["metadata"]["resourceVersion"] = "1"
    stale["status"] = {}
    real_get = w.cluster.get
    reads = iter([stale])
    monkeypatch.setattr(
        w.cluster, "get", lambda kind, ns, name: next(reads, None) or real_get(kind, ns, name)
    )
    tick(w)
    types = [c["type"] for c in w.cluster.status(Kind.POLICY, "main")["conditions"]]
    assert sorted(types) == ["LastBackupSucceeded", "LifecycleInSync", "Ready"]
    assert w.cluster.status(Kind.POLICY, "main")["nextScheduleTime"] == "2026-11-27T03:00:00Z"


def test_a_look_says_how_long_to_sleep_until_the_next_fire_time(w: World) -> None:
    w.cluster.add(Kind.POLICY, policy())  # 0 3 * * * UTC; now 02:00
    assert PolicyReconciler(w.deps).reconcile("main", "ns") == 3600.0
    w.clock.advance(seconds=3600)  # 03:00: the run starts, the next one is tomorrow
    assert PolicyReconciler(w.deps).reconcile("main", "ns") == 86400.0
    assert backups(w) == ["main-202611270300"]
    # A verification schedule due earlier wakes the daemon earlier.
    w.cluster.add(Kind.POLICY, policy("v", verification={"schedule": "30 3 * * *"}))
    assert PolicyReconciler(w.deps).reconcile("v", "ns") == 1800.0
    assert PolicyReconciler(w.deps).reconcile("gone", "ns") is None


def test_idle_looks_list_the_backups_only_when_due_changed_or_hourly(
    w: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    listed: list[Kind] = []
    real_list = w.cluster.list

    def counting(kind: Kind, namespace: str) -> list[Any]:
        listed.append(kind)
        return real_list(kind, namespace)

    monkeypatch.setattr(w.cluster, "list", counting)
    reconciler = PolicyReconciler(w.deps)  # one per operator process, as in the daemon
    w.cluster.add(Kind.POLICY, policy())
    reconciler.reconcile("main", "ns")  # first look: lists, writes the summary
    first = listed.count(Kind.BACKUP)
    assert first >= 1
    w.clock.advance(minutes=5)
    reconciler.reconcile("main", "ns")  # 02:05, nothing due: no LIST
    assert listed.count(Kind.BACKUP) == first
    w.clock.advance(minutes=55, seconds=5)  # 03:00:05: the run is due
    reconciler.reconcile("main", "ns")
    assert backups(w) == ["main-202611270300"]
    after_run = listed.count(Kind.BACKUP)
    assert after_run > first
    w.clock.advance(minutes=5)
    reconciler.reconcile("main", "ns")  # the backup is still running: list again
    after_running = listed.count(Kind.BACKUP)
    assert after_running > after_run
    backup_body = w.cluster.obj(Kind.BACKUP, "main-202611270300")
    backup_body["status"] = {"phase": "Succeeded", "completionTime": "2026-11-27T03:10:00Z"}
    w.clock.advance(minutes=5)
    reconciler.reconcile("main", "ns")  # sees it finished (summary), lists once more
    w.clock.advance(minutes=5)
    after_run = listed.count(Kind.BACKUP)
    reconciler.reconcile("main", "ns")  # nothing running, nothing due: no LIST
    assert listed.count(Kind.BACKUP) == after_run
    w.clock.advance(hours=1)  # the hourly safety net
    reconciler.reconcile("main", "ns")
    assert listed.count(Kind.BACKUP) > after_run


def test_a_scheduled_backup_gets_its_job_in_the_same_look(w: World) -> None:
    from citus_backup.reconcile.backup import BackupReconciler  # noqa: PLC0415

    reconciler = PolicyReconciler(w.deps, start_backup=BackupReconciler(w.deps).reconcile)
    w.cluster.add(Kind.POLICY, policy())
    reconciler.reconcile("main", "ns")
    w.clock.advance(hours=1, seconds=5)  # 03:00:05
    reconciler.reconcile("main", "ns")
    assert backups(w) == ["main-202611270300"]
    assert len(w.cluster.jobs) == 1  # not left for the backup's first timer tick


def test_a_failing_job_start_does_not_fail_the_policy_look(w: World) -> None:
    def broken(name: str, namespace: str) -> None:
        raise TransientError("API server busy", reason="ServerError")

    reconciler = PolicyReconciler(w.deps, start_backup=broken)
    w.cluster.add(Kind.POLICY, policy())
    reconciler.reconcile("main", "ns")
    w.clock.advance(hours=1, seconds=5)
    reconciler.reconcile("main", "ns")
    assert backups(w) == ["main-202611270300"]
    assert w.cluster.status(Kind.POLICY, "main")["lastScheduleTime"] == "2026-11-27T03:00:00Z"
