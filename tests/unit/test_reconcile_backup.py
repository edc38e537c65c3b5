"""CitusBackup reconciliation (BackupReconciler) against in-memory fakes."""

from __future__ import annotations

import json

import pytest
from reconcile_fakes import (
    PASSWORD,
    SECRET_KEY,
    World,
    backup,
    no_transient,
    policy,
    succeeded_summary,
    world,
)

from citus_backup.errors import TransientError
from citus_backup.reconcile.backup import BackupReconciler
from citus_backup.reconcile.ports import Kind


def run(w: World, name: str) -> float | None:
    return BackupReconciler(w.deps).reconcile(name, "ns")


@pytest.fixture
def w() -> World:
    w = world()
    w.cluster.add_secrets()
    w.cluster.add(Kind.POLICY, policy())
    return w


def test_a_manual_backup_runs_its_job_and_records_the_summary(w: World) -> None:
    w.cluster.add(Kind.BACKUP, backup("now"))
    assert run(w, "now") == 5.0
    assert list(w.cluster.jobs) == [("ns", "now-backup")]
    job = w.cluster.jobs[("ns", "now-backup")]
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:3] == ["backup", "--backup-id", "20261127T020000Z"]  # the creation time
    assert job["metadata"]["ownerReferences"][0]["kind"] == "CitusBackup"
    assert PASSWORD not in json.dumps(job)
    assert SECRET_KEY not in json.dumps(job)
    status = w.cluster.status(Kind.BACKUP, "now")
    assert status["phase"] == "Pending"
    assert status["jobName"] == "now-backup"
    assert status["location"] == {"bucket": "backups", "keyPrefix": "main/daily/20261127T020000Z/"}
    assert w.events.reasons("now") == ["JobCreated"]

    w.cluster.set_job("now-backup", running=True)
    run(w, "now")
    assert w.cluster.status(Kind.BACKUP, "now")["phase"] == "Running"
    condition = w.cluster.condition(Kind.BACKUP, "now", "Succeeded")
    assert condition is not None
    assert (condition["status"], condition["reason"]) == ("Unknown", "JobRunning")

    w.clock.advance(minutes=2)
    w.cluster.finish_job("now-backup", succeeded_summary())
    assert run(w, "now") is None
    status = w.cluster.status(Kind.BACKUP, "now")
    assert status["phase"] == "Succeeded"
    assert status["databases"] == {"app1": 2048, "app2": 1024}
    assert status["totalSizeBytes"] == 3072
    assert status["totalSize"] == "3.0 KiB"
    assert status["tiers"] == ["daily"]
    assert status["completionTime"] == "2026-11-27T02:02:00Z"
    condition = w.cluster.condition(Kind.BACKUP, "now", "Succeeded")
    assert condition is not None
    assert (condition["status"], condition["reason"]) == ("True", "BackupSucceeded")
    # The runner reported success, so its manifest is stored: restorable at once.
    restorable = w.cluster.condition(Kind.BACKUP, "now", "Restorable")
    assert restorable is not None
    assert (restorable["status"], restorable["reason"]) == ("True", "DataPresent")
    assert "s3://backups/main/daily/20261127T020000Z/manifest.json" in restorable["message"]
    assert w.events.reasons("now") == ["JobCreated", "BackupRunning", "BackupSucceeded"]
    assert w.events.reasons("main") == ["BackupSucceeded"]
    policy_status = w.cluster.status(Kind.POLICY, "main")
    assert policy_status["lastSuccessfulBackup"]["name"] == "now"
    # Terminal: a later change of the Job does not change the backup.
    w.cluster.finish_job("now-backup", None, ok=False)
    assert run(w, "now") is None
    assert w.cluster.status(Kind.BACKUP, "now")["phase"] == "Succeeded"
    assert w.events.reasons("now") == ["JobCreated", "BackupRunning", "BackupSucceeded"]


def test_a_scheduled_backup_uses_its_scheduled_time_as_backup_id(w: World) -> None:
    body = backup("main-202611270300", tier="daily", alsoTiers=["monthly"])
    body["metadata"]["annotations"] = {"citusbackup.io/scheduled-time": "2026-11-27T03:00:00Z"}
    w.cluster.add(Kind.BACKUP, body)
    run(w, "main-202611270300")
    args = w.cluster.jobs[("ns", "main-202611270300-backup")]["spec"]["template"]["spec"][
        "containers"
    ][0]["args"]
    assert args[:7] == [
        "backup",
        "--backup-id",
        "20261127T030000Z",
        "--tier",
        "daily",
        "--also-tier",
        "monthly",
    ]
    assert w.cluster.status(Kind.BACKUP, "main-202611270300")["tiers"] == ["daily", "monthly"]


def test_after_a_restart_the_existing_job_is_adopted_not_duplicated(w: World) -> None:
    w.cluster.add(Kind.BACKUP, backup("now"))
    run(w, "now")
    # The operator died before its status write landed.
    w.cluster.obj(Kind.BACKUP, "now").pop("status")
    run(w, "now")
    assert list(w.cluster.jobs) == [("ns", "now-backup")]
    assert w.cluster.status(Kind.BACKUP, "now")["jobName"] == "now-backup"
    assert w.events.reasons("now") == ["JobCreated"]  # announced once


def test_a_runner_failure_fails_the_backup_with_the_runners_message(w: World) -> None:
    w.cluster.add(Kind.BACKUP, backup("now"))
    run(w, "now")
    summary = {
        "status": "failed",
        "error": "connection to 10.0.0.1:5432 failed: password authentication failed",
        "reason": "AuthenticationFailed",
    }
    w.cluster.finish_job("now-backup", summary, ok=False)
    assert run(w, "now") is None
    status = w.cluster.status(Kind.BACKUP, "now")
    assert status["phase"] == "Failed"
    assert status["message"].startswith("AuthenticationFailed: connection to")
    condition = w.cluster.condition(Kind.BACKUP, "now", "Succeeded")
    assert condition is not None
    assert (condition["status"], condition["reason"]) == ("False", "BackupFailed")
    assert [e[1:3] for e in w.events.events[-2:]] == [
        ("Warning", "BackupFailed"),
        ("Warning", "BackupFailed"),
    ]
    policy_status = w.cluster.status(Kind.POLICY, "main")
    assert "password authentication failed" in policy_status["lastFailureMessage"]
    last = w.cluster.condition(Kind.POLICY, "main", "LastBackupSucceeded")
    assert last is not None
    assert last["reason"] == "BackupFailed"


def test_a_deadline_is_named_when_the_job_times_out(w: World) -> None:
    w.cluster.add(Kind.BACKUP, backup("now"))
    run(w, "now")
    w.cluster.set_job(
        "now-backup",
        failed=True,
        failure_reason="DeadlineExceeded",
        failure_message="Job was active longer than specified deadline",
    )
    run(w, "now")
    condition = w.cluster.condition(Kind.BACKUP, "now", "Succeeded")
    assert condition is not None
    assert condition["reason"] == "JobDeadlineExceeded"
    assert "longer than specified deadline" in condition["message"]


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        ("no-policy", "PolicyNotFound"),
        ("no-secret", "SecretNotFound"),
        ("no-key", "SecretKeyMissing"),
        ("no-ca", "ConfigMapNotFound"),
        ("bad-tier", "InvalidSpec"),
    ],
)
def test_bad_inputs_fail_at_once_without_a_job(setup: str, reason: str) -> None:
    w = world()
    w.cluster.add_secrets()
    spec = {}
    if setup == "no-ca":
        spec["coordinator"] = {
            "host": "coordinator",
            "passwordSecretRef": {"name": "pg", "key": "password"},
            "sslMode": "verify-full",
            "sslRootCert": {"configMapKeyRef": {"name": "ca", "key": "ca.crt"}},
        }
    if setup != "no-policy":
        w.cluster.add(Kind.POLICY, policy(**spec))
    if setup == "no-secret":
        del w.cluster.secrets[("ns", "s3")]
    if setup == "no-key":
        w.cluster.secrets[("ns", "pg")] = {"pass": b"x"}
    w.cluster.add(
        Kind.BACKUP, backup("now", tier="yearly") if setup == "bad-tier" else backup("now")
    )
    assert run(w, "now") is None
    status = w.cluster.status(Kind.BACKUP, "now")
    assert status["phase"] == "Failed"
    condition = w.cluster.condition(Kind.BACKUP, "now", "Succeeded")
    assert condition is not None
    assert condition["reason"] == reason
    assert w.cluster.jobs == {}
    assert w.events.events[0][2] == "BackupFailed"
    assert f"[{reason}]" in w.events.events[0][3]
    assert run(w, "now") is None  # no retry storm: terminal
    assert len([e for e in w.events.events if e[0] == "now"]) == 1


def test_one_backup_job_per_policy_at_a_time_first_come_first_served(w: World) -> None:
    w.cluster.add(Kind.BACKUP, backup("first"))
    w.clock.advance(seconds=1)
    w.cluster.add(Kind.BACKUP, backup("second"))
    # The second is looked at first: it still waits for the older one.
    run(w, "second")
    assert w.cluster.jobs == {}
    assert w.cluster.status(Kind.BACKUP, "second")["message"] == (
        "waiting for CitusBackup first to finish"
    )
    run(w, "first")
    run(w, "second")
    assert list(w.cluster.jobs) == [("ns", "first-backup")]
    w.cluster.finish_job("first-backup", succeeded_summary())
    run(w, "first")
    run(w, "second")
    assert ("ns", "second-backup") in w.cluster.jobs


def test_a_vanished_job_fails_the_backup(w: World) -> None:
    w.cluster.add(Kind.BACKUP, backup("now"))
    run(w, "now")
    del w.cluster.job_states[("ns", "now-backup")]
    run(w, "now")
    condition = w.cluster.condition(Kind.BACKUP, "now", "Succeeded")
    assert condition is not None
    assert condition["reason"] == "JobNotFound"


def test_transient_api_errors_propagate_for_a_retry(w: World) -> None:
    w.cluster.add(Kind.BACKUP, backup("now"))
    w.cluster.fail_next.append(no_transient())
    with pytest.raises(TransientError):
        run(w, "now")
    assert "phase" not in w.cluster.status(Kind.BACKUP, "now")
    run(w, "now")
    assert w.cluster.status(Kind.BACKUP, "now")["phase"] == "Pending"


def test_a_deleted_backup_is_left_alone(w: World) -> None:
    assert run(w, "gone") is None


def test_a_success_without_a_summary_says_sizes_are_unknown(w: World) -> None:
    w.cluster.add(Kind.BACKUP, backup("now"))
    run(w, "now")
    w.cluster.finish_job("now-backup", None)
    run(w, "now")
    status = w.cluster.status(Kind.BACKUP, "now")
    assert status["phase"] == "Succeeded"
    assert "databases" not in status
    assert "sizes unknown" in status["message"]
    # Nothing says the manifest is stored: the catalogue's pass will look.
    assert w.cluster.condition(Kind.BACKUP, "now", "Restorable") is None


def test_a_running_backup_completes_even_if_its_policy_is_deleted(w: World) -> None:
    w.cluster.add(Kind.BACKUP, backup("now"))
    run(w, "now")
    del w.cluster.objects[(Kind.POLICY, "ns", "main")]
    w.cluster.finish_job("now-backup", succeeded_summary())
    run(w, "now")
    status = w.cluster.status(Kind.BACKUP, "now")
    assert status["phase"] == "Succeeded"
    assert status["location"]["keyPrefix"] == "main/daily/20261127T020000Z/"
