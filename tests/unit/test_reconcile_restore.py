"""CitusRestore reconciliation (RestoreReconciler): guards, concurrency, outcome."""

from __future__ import annotations

from typing import Any

import pytest
from reconcile_fakes import PASSWORD, World, backup, policy, restore, world

from citus_backup.errors import PermanentError, TransientError
from citus_backup.reconcile.ports import Kind
from citus_backup.reconcile.restore import RestoreReconciler


def run(w: World, name: str) -> float | None:
    return RestoreReconciler(w.deps).reconcile(name, "ns")


def add_backup(w: World, name: str, phase: str = "Succeeded", completed: str = "") -> None:
    w.cluster.add(Kind.BACKUP, backup(name))
    status: dict[str, Any] = {"phase": phase}
    if phase == "Succeeded":
        status.update(
            backupId=f"id-{name}",
            completionTime=completed or "2026-11-27T01:00:00Z",
            databases={"app1": 10, "app2": 20},
        )
    w.cluster.obj(Kind.BACKUP, name)["status"] = status


def args_of(w: World, job: str) -> list[str]:
    args: list[str] = w.cluster.jobs[("ns", job)]["spec"]["template"]["spec"]["containers"][0][
        "args"
    ]
    return args


def reason_of(w: World, name: str) -> str:
    condition = w.cluster.condition(Kind.RESTORE, name, "Succeeded")
    assert condition is not None
    return str(condition["reason"])


@pytest.fixture
def w() -> World:
    w = world()
    w.cluster.add_secrets()
    w.cluster.add(Kind.POLICY, policy())
    return w


def test_a_restore_of_one_database_runs_and_records_what_it_restored(w: World) -> None:
    add_backup(w, "b1")
    w.cluster.add(Kind.RESTORE, restore("r", backupName="b1", databases=["app1"], replace=True))
    assert run(w, "r") == 5.0
    args = args_of(w, "r-restore")
    assert args[:3] == ["restore", "--backup-id", "id-b1"]
    assert "--replace" in args
    assert args[args.index("--database") + 1] == "app1"
    status = w.cluster.status(Kind.RESTORE, "r")
    assert (status["phase"], status["backupName"], status["backupId"]) == (
        "Pending",
        "b1",
        "id-b1",
    )
    assert w.probe.calls == []  # replace: nothing to check
    w.cluster.finish_job("r-restore", {"status": "succeeded", "databases": {"app1": 10}})
    assert run(w, "r") is None
    status = w.cluster.status(Kind.RESTORE, "r")
    assert status["phase"] == "Succeeded"
    assert status["restoredDatabases"] == ["app1"]
    assert reason_of(w, "r") == "RestoreSucceeded"
    assert w.events.reasons("r") == ["JobCreated", "RestoreSucceeded"]


def test_the_status_says_what_was_verified_kept_and_whether_citus_was_rebuilt(
    w: World,
) -> None:
    add_backup(w, "b1")
    w.cluster.add(
        Kind.RESTORE,
        restore("r", backupName="b1", databases=["app1"], replace=True, keepOld=True),
    )
    run(w, "r")
    assert "--keep-old" in args_of(w, "r-restore")
    summary = {
        "status": "succeeded",
        "databases": {"app1": 10},
        "verified": {"app1": "row counts of 3 table(s) (10 rows) match the backup"},
        "keptDatabases": ["app1_old_id-b1"],
        "citus": {"app1": {"mode": "distributed"}},
    }
    w.cluster.finish_job("r-restore", summary)
    run(w, "r")
    status = w.cluster.status(Kind.RESTORE, "r")
    assert status["verification"] == ["app1: row counts of 3 table(s) (10 rows) match the backup"]
    assert status["keptDatabases"] == ["app1_old_id-b1"]
    citus = w.cluster.condition(Kind.RESTORE, "r", "CitusDistributed")
    assert citus is not None
    assert (citus["status"], citus["reason"]) == ("True", "DistributionRestored")


def test_a_citus_backup_restored_without_citus_is_a_false_condition_and_a_warning(
    w: World,
) -> None:
    add_backup(w, "b1")
    w.cluster.add(Kind.RESTORE, restore("r", backupName="b1", databases=["app1"], replace=True))
    run(w, "r")
    message = "database app1: the backup has Citus tables but this server has no Citus"
    summary = {"status": "succeeded", "citus": {"app1": {"mode": "local", "message": message}}}
    w.cluster.finish_job("r-restore", summary)
    run(w, "r")
    citus = w.cluster.condition(Kind.RESTORE, "r", "CitusDistributed")
    assert citus is not None
    assert (citus["status"], citus["reason"], citus["message"]) == (
        "False",
        "CitusUnavailable",
        message,
    )
    assert "CitusUnavailable" in w.events.reasons("r")


def test_a_full_restore_without_a_summary_reports_the_backups_databases(w: World) -> None:
    add_backup(w, "b1")
    w.cluster.add(Kind.RESTORE, restore("r", backupName="b1", replace=True))
    run(w, "r")
    assert "--globals" in args_of(w, "r-restore")
    w.cluster.finish_job("r-restore", None)
    run(w, "r")
    assert w.cluster.status(Kind.RESTORE, "r")["restoredDatabases"] == ["app1", "app2"]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [({}, "b-late"), ({"before": "2026-11-27T01:30:00Z"}, "b-early")],
)
def test_policy_name_resolves_the_latest_successful_backup(
    w: World, spec: dict[str, str], expected: str
) -> None:
    add_backup(w, "b-early", completed="2026-11-27T01:00:00Z")
    add_backup(w, "b-late", completed="2026-11-27T01:45:00Z")
    add_backup(w, "b-failed", phase="Failed")
    w.cluster.add(Kind.RESTORE, restore("r", policyName="main", replace=True, **spec))
    run(w, "r")
    assert w.cluster.status(Kind.RESTORE, "r")["backupName"] == expected


@pytest.mark.parametrize(
    ("spec", "reason", "text"),
    [
        ({"backupName": "nope"}, "BackupNotFound", "CitusBackup nope not found"),
        ({"backupName": "bad"}, "BackupNotSucceeded", "CitusBackup bad failed"),
        ({"policyName": "empty"}, "BackupNotFound", "policy empty has no successful backup"),
        (
            {"policyName": "main", "before": "2026-11-27T00:00:00Z"},
            "BackupNotFound",
            "completed before 2026-11-27T00:00:00Z",
        ),
        ({"backupName": "orphan"}, "PolicyNotFound", "CitusBackupPolicy gone"),
        ({"backupName": "b1", "databases": ["app1"]}, "TargetExists", "set replace: true"),
    ],
)
def test_guards_fail_the_restore_without_a_job(
    w: World, spec: dict[str, Any], reason: str, text: str
) -> None:
    add_backup(w, "b1")
    add_backup(w, "bad", phase="Failed")
    w.cluster.add(Kind.BACKUP, backup("orphan", policy_name="gone"))
    w.cluster.obj(Kind.BACKUP, "orphan")["status"] = {"phase": "Succeeded", "backupId": "x"}
    w.probe.existing = {"app1"}
    w.cluster.add(Kind.RESTORE, restore("r", **spec))
    assert run(w, "r") is None
    status = w.cluster.status(Kind.RESTORE, "r")
    assert status["phase"] == "Failed"
    assert reason_of(w, "r") == reason
    assert (
        text.replace("policy empty", "CitusBackupPolicy empty") in status["message"]
        or text in status["message"]
    )
    assert w.cluster.jobs == {}
    assert w.events.reasons("r") == ["RestoreFailed"]


def test_the_target_check_uses_the_password_in_memory_only(w: World) -> None:
    add_backup(w, "b1")
    w.probe.existing = {"app1"}
    w.cluster.add(
        Kind.RESTORE, restore("r", backupName="b1", databases=["app1"], targetDatabase="app1_copy")
    )
    run(w, "r")
    assert w.probe.calls == [("coordinator", PASSWORD, ("app1_copy",))]
    assert ("ns", "r-restore") in w.cluster.jobs  # app1_copy does not exist
    assert PASSWORD not in str(w.cluster.objects) + str(w.events.events)


def test_an_unreachable_server_leaves_the_target_check_to_the_runner(w: World) -> None:
    add_backup(w, "b1")
    w.probe.error = TransientError("PostgreSQL at coordinator:5432 unreachable")
    w.cluster.add(Kind.RESTORE, restore("r", backupName="b1", databases=["app1"]))
    run(w, "r")
    assert ("ns", "r-restore") in w.cluster.jobs
    # ... which refuses the same way, and the status says so.
    summary = {
        "status": "failed",
        "reason": "TargetExists",
        "error": "database(s) app1 already exist; pass --replace to replace them",
    }
    w.cluster.finish_job("r-restore", summary, ok=False)
    run(w, "r")
    assert reason_of(w, "r") == "TargetExists"
    assert "already exist" in w.cluster.status(Kind.RESTORE, "r")["message"]


def test_wrong_credentials_fail_the_restore_clearly(w: World) -> None:
    add_backup(w, "b1")
    w.probe.error = PermanentError(
        "PostgreSQL at coordinator:5432 rejected the credentials of role postgres",
        reason="AuthenticationFailed",
    )
    w.cluster.add(Kind.RESTORE, restore("r", backupName="b1", databases=["app1"]))
    run(w, "r")
    status = w.cluster.status(Kind.RESTORE, "r")
    assert status["phase"] == "Failed"
    assert "rejected the credentials" in status["message"]
    assert "[AuthenticationFailed]" in w.events.events[-1][3]


def test_a_restore_waits_for_a_running_source_backup(w: World) -> None:
    add_backup(w, "b1", phase="Running")
    w.cluster.add(Kind.RESTORE, restore("r", backupName="b1", replace=True))
    assert run(w, "r") == 5.0
    status = w.cluster.status(Kind.RESTORE, "r")
    assert status["phase"] == "Pending"
    assert "waiting for CitusBackup b1 to finish" in status["message"]


def test_a_restore_waits_while_a_backup_of_the_policy_holds_a_job(w: World) -> None:
    add_backup(w, "b1")
    w.cluster.add(Kind.BACKUP, backup("running"))
    w.cluster.obj(Kind.BACKUP, "running")["status"] = {"phase": "Running", "jobName": "j"}
    w.cluster.add(Kind.RESTORE, restore("r", backupName="b1", replace=True))
    run(w, "r")
    assert w.cluster.jobs == {}
    assert w.cluster.status(Kind.RESTORE, "r")["message"] == (
        "waiting for CitusBackup running to finish"
    )
    w.cluster.obj(Kind.BACKUP, "running")["status"]["phase"] = "Succeeded"
    run(w, "r")
    assert ("ns", "r-restore") in w.cluster.jobs


def test_two_restores_into_the_same_database_never_run_at_once(w: World) -> None:
    add_backup(w, "b1")
    w.cluster.add(Kind.RESTORE, restore("r1", backupName="b1", databases=["app1"], replace=True))
    w.clock.advance(seconds=1)
    w.cluster.add(Kind.RESTORE, restore("r2", backupName="b1", databases=["app1"], replace=True))
    w.cluster.add(Kind.RESTORE, restore("r3", backupName="b1", databases=["app2"], replace=True))
    run(w, "r2")
    assert "waiting for CitusRestore r1" in w.cluster.status(Kind.RESTORE, "r2")["message"]
    run(w, "r1")
    run(w, "r3")  # another database: runs alongside
    assert set(w.cluster.jobs) == {("ns", "r1-restore"), ("ns", "r3-restore")}
    w.cluster.finish_job("r1-restore", {"status": "succeeded", "databases": {"app1": 1}})
    run(w, "r1")
    run(w, "r2")
    assert ("ns", "r2-restore") in w.cluster.jobs


def test_a_finished_restore_is_never_changed(w: World) -> None:
    w.cluster.add(Kind.RESTORE, restore("r", backupName="nope"))
    run(w, "r")
    add_backup(w, "nope")
    assert run(w, "r") is None
    assert reason_of(w, "r") == "BackupNotFound"
