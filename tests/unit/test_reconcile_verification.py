"""Verification (reconcile.verification): when a backup is test-restored, and where the
result goes, against in-memory fakes; and its Job (specs.jobs)."""

from __future__ import annotations

from typing import Any

import pytest
from reconcile_fakes import World, backup, policy, world

from citus_backup.api.backup import CitusBackup
from citus_backup.api.policy import CitusBackupPolicy
from citus_backup.reconcile import verification
from citus_backup.reconcile.backup import BackupReconciler
from citus_backup.reconcile.policy import PolicyReconciler
from citus_backup.reconcile.ports import Kind
from citus_backup.reconcile.restore import RestoreReconciler
from citus_backup.runner.verify import scratch_name

VERIFY_EVERY = {"everyNthBackup": 1}


def add_succeeded(w: World, name: str, completed: str) -> None:
    w.cluster.add(Kind.BACKUP, backup(name))
    w.cluster.obj(Kind.BACKUP, name)["status"] = {
        "phase": "Succeeded",
        "backupId": f"id-{name}",
        "completionTime": completed,
        "databases": {"app1": 10, "app2": 20},
        "tiers": ["daily"],
    }


def models(w: World) -> tuple[CitusBackupPolicy, list[CitusBackup]]:
    p = CitusBackupPolicy.model_validate(w.cluster.obj(Kind.POLICY, "main"))
    bs = [CitusBackup.model_validate(b) for b in w.cluster.list(Kind.BACKUP, "ns")]
    return p, bs


def args_of(w: World, job: str) -> list[str]:
    spec = w.cluster.jobs[("ns", job)]["spec"]["template"]["spec"]
    return list(spec["containers"][0]["args"])


@pytest.fixture
def w() -> World:
    w = world()
    w.cluster.add_secrets()
    return w


@pytest.mark.parametrize(("n", "due"), [(1, [1, 2, 3, 4]), (2, [2, 4]), (3, [3])])
def test_every_nth_backup_counts_successes_since_the_newest_verified(
    w: World, n: int, due: list[int]
) -> None:
    w.cluster.add(Kind.POLICY, policy(verification={"everyNthBackup": n}))
    requested = []
    for i in range(1, 5):
        add_succeeded(w, f"b{i}", f"2026-11-2{i}T03:00:00Z")
        p, bs = models(w)
        this = next(b for b in bs if b.name == f"b{i}")
        if verification.due_after_backup(p, this, bs, w.cluster.list(Kind.RESTORE, "ns")):
            verification.request(w.deps, p, this, "test")
            requested.append(i)
    assert requested == due


def test_the_verification_restore_is_owned_by_its_backup_and_scratch_only(w: World) -> None:
    server = {"host": "scratch-pg", "passwordSecretRef": {"name": "pg", "key": "password"}}
    w.cluster.add(
        Kind.POLICY,
        policy(verification={**VERIFY_EVERY, "server": server, "checksConfigMap": "checks"}),
    )
    add_succeeded(w, "b1", "2026-11-27T03:00:00Z")
    p, (b1,) = models(w)
    body = verification.restore_body(p, b1)
    assert body["metadata"]["name"] == "b1-verify"
    assert body["metadata"]["labels"]["citusbackup.io/verification"] == "true"
    assert body["metadata"]["ownerReferences"][0]["kind"] == "CitusBackup"
    assert body["spec"] == {
        "backupName": "b1",
        "verify": True,
        "target": {**server, "port": 5432, "user": "postgres", "sslMode": "prefer"},
        "checksConfigMap": "checks",
    }
    assert verification.request(w.deps, p, b1, "test") is True
    assert verification.request(w.deps, p, b1, "test") is False  # idempotent
    w.cluster.config_maps[("ns", "checks")] = ["app1.orders.sql"]
    RestoreReconciler(w.deps).reconcile("b1-verify", "ns")
    args = args_of(w, "b1-verify-restore")
    assert "--verify" in args
    assert "--no-globals" in args
    assert args[args.index("--checks-dir") + 1] == "/etc/citus-backup/checks"
    # Another server: no owners and privileges (roles are never restored).
    assert "--no-owner" in args
    assert "--no-privileges" in args
    for flag in ("--replace", "--globals", "--target-database", "--database"):
        assert flag not in args
    job = w.cluster.jobs[("ns", "b1-verify-restore")]
    volumes = job["spec"]["template"]["spec"]["volumes"]
    assert {
        "name": "checks",
        "configMap": {"name": "checks", "defaultMode": 292, "optional": False},
    } in volumes


def test_backup_success_requests_a_verification_and_its_result_lands_everywhere(
    w: World,
) -> None:
    w.cluster.add(Kind.POLICY, policy(verification=VERIFY_EVERY))
    w.cluster.add(Kind.BACKUP, backup("b1"))
    BackupReconciler(w.deps).reconcile("b1", "ns")
    w.cluster.finish_job(
        "b1-backup",
        {"status": "succeeded", "backupId": "id-b1", "databases": {"app1": 10}, "tiers": ["daily"]},
    )
    BackupReconciler(w.deps).reconcile("b1", "ns")
    assert w.cluster.get(Kind.RESTORE, "ns", "b1-verify") is not None
    assert "VerificationRequested" in w.events.reasons("b1")
    restores = RestoreReconciler(w.deps)
    restores.reconcile("b1-verify", "ns")
    summary: dict[str, Any] = {
        "status": "succeeded",
        "databases": {scratch_name("app1"): 10},
        "verified": {"app1": "10 rows in 1 table(s) match the backup"},
        "verification": {"app1": {"restored": True, "checks": ["orders"]}},
    }
    w.cluster.finish_job("b1-verify-restore", summary)
    restores.reconcile("b1-verify", "ns")
    status = w.cluster.status(Kind.RESTORE, "b1-verify")
    assert status["phase"] == "Succeeded"
    assert status["restoredDatabases"] == ["app1"]
    assert "checks passed: app1.orders" in status["message"]
    verified = w.cluster.condition(Kind.BACKUP, "b1", "Verified")
    assert verified is not None
    assert (verified["status"], verified["reason"]) == ("True", "VerificationSucceeded")
    # The backup's other conditions are kept.
    assert w.cluster.condition(Kind.BACKUP, "b1", "Succeeded") is not None
    last = w.cluster.status(Kind.POLICY, "main")["lastVerification"]
    assert (last["backupName"], last["restoreName"], last["succeeded"]) == ("b1", "b1-verify", True)
    assert "VerificationSucceeded" in w.events.reasons("b1")
    assert "VerificationSucceeded" in w.events.reasons("main")


@pytest.mark.parametrize(
    ("runner_reason", "expected"),
    [
        ("ChecksumMismatch", "ChecksumMismatch"),
        ("CheckFailed", "CheckFailed"),
        ("VerificationFailed", "VerificationFailed"),
        ("S3Error", "RestoreFailed"),
    ],
)
def test_a_failed_verification_is_typed_and_leaves_the_backup_as_it_was(
    w: World, runner_reason: str, expected: str
) -> None:
    w.cluster.add(Kind.POLICY, policy(verification=VERIFY_EVERY))
    add_succeeded(w, "b1", "2026-11-27T03:00:00Z")
    p, (b1,) = models(w)
    verification.request(w.deps, p, b1, "test")
    restores = RestoreReconciler(w.deps)
    restores.reconcile("b1-verify", "ns")
    before = dict(w.cluster.status(Kind.BACKUP, "b1"))
    w.cluster.finish_job(
        "b1-verify-restore",
        {"status": "failed", "reason": runner_reason, "error": "app1: it broke"},
        ok=False,
    )
    restores.reconcile("b1-verify", "ns")
    verified = w.cluster.condition(Kind.BACKUP, "b1", "Verified")
    assert verified is not None
    assert (verified["status"], verified["reason"]) == ("False", expected)
    after = w.cluster.status(Kind.BACKUP, "b1")
    assert {k: v for k, v in after.items() if k != "conditions"} == {
        k: v for k, v in before.items() if k != "conditions"
    }
    assert after["phase"] == "Succeeded"
    assert w.cluster.status(Kind.POLICY, "main")["lastVerification"]["succeeded"] is False
    assert "VerificationFailed" in w.events.reasons("b1")


def test_scheduled_verification_verifies_the_newest_unverified_backup_once_per_fire_time(
    w: World,
) -> None:
    w.cluster.add(
        Kind.POLICY,
        policy(schedule="0 3 1 1 *", verification={"schedule": "0 5 * * *"}),
    )
    add_succeeded(w, "old", "2026-11-20T03:00:00Z")
    add_succeeded(w, "new", "2026-11-26T03:00:00Z")
    PolicyReconciler(w.deps).reconcile("main", "ns")  # created now: nothing due yet
    assert w.cluster.list(Kind.RESTORE, "ns") == []
    w.deps.clock.advance(days=1)  # type: ignore[attr-defined]
    PolicyReconciler(w.deps).reconcile("main", "ns")
    assert [r["metadata"]["name"] for r in w.cluster.list(Kind.RESTORE, "ns")] == ["new-verify"]
    assert w.cluster.status(Kind.POLICY, "main")["lastVerificationScheduleTime"]
    PolicyReconciler(w.deps).reconcile("main", "ns")
    w.deps.clock.advance(days=1)  # type: ignore[attr-defined]
    PolicyReconciler(w.deps).reconcile("main", "ns")  # "new" is verified already
    assert len(w.cluster.list(Kind.RESTORE, "ns")) == 1


def test_verification_reasons_are_typed() -> None:
    assert verification.verified_reason(None, ok=True) == "VerificationSucceeded"
    assert verification.verified_reason("InvalidCheck", ok=False) == "InvalidCheck"
    assert verification.verified_reason("Whatever", ok=False) == "RestoreFailed"
    assert verification.verification_name("x" * 63).endswith("-verify")
    assert len(verification.verification_name("x" * 63)) <= 63
