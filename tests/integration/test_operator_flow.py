"""The operator end to end on the local environment: real API server (RBAC, CEL),
real Job controller, real PostgreSQL and MinIO, Job pods run by the local-node
harness, the operator as a subprocess with its own ServiceAccount's RBAC.

One operator serves the whole module (``--all-namespaces``); each test gets a
fresh namespace. Databases and the bucket are shared by the module (unique
names), and every policy writes under its own prefix.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException
from operator_support import (
    Fixture,
    Objects,
    OperatorProcess,
    policy_body,
    rbac_denials,
    running_operator,
)

from citus_backup.specs.names import backup_job_name, restore_job_name, scheduled_backup_name
from harness.local_node import LocalNode
from harness.polling import eventually
from localenv.kube import KubeInfo

#: Seconds a backup or restore of the two small databases may take, Job start included.
RUN_TIMEOUT = 90.0


@pytest.fixture(scope="module")
def operator(
    kube: KubeInfo, tmp_path_factory: pytest.TempPathFactory, log_dir: Path
) -> Iterator[OperatorProcess]:
    yield from running_operator(kube, tmp_path_factory.mktemp("operator"), log_dir / "operator.log")


def assert_clean(operator: OperatorProcess, data: Fixture, ns: Objects) -> None:
    """No RBAC denial in the operator's log; no password or secret key in it, any status
    or any Event."""
    log = operator.log()
    assert not rbac_denials(log), "the operator lacks a permission: see operator.log"
    secrets = (data.postgres.password, data.minio.secret_key)
    texts = [log]
    for kind in ("CitusBackupPolicy", "CitusBackup", "CitusRestore"):
        texts += [str(obj) for obj in ns.list(kind)]
    texts += [str(e) for e in ns.core.list_namespaced_event(ns.namespace).items]
    for text in texts:
        for secret in secrets:
            assert secret not in text


# --------------------------------------------------------------------------- schema


def test_schema_and_cel_reject_bad_objects(
    operator: OperatorProcess, kube_namespace: str, kube_api: Any
) -> None:
    objects = Objects(kube_api, kube_namespace)
    with pytest.raises(ApiException) as err:
        objects.restore(
            "two-dbs", backupName="b", databases=["app1", "app2"], targetDatabase="app1_copy"
        )
    assert err.value.status == 422
    assert "targetDatabase requires exactly one entry in databases" in err.value.body
    with pytest.raises(ApiException) as err:
        objects.restore("no-source", databases=["app1"])
    assert "set exactly one of backupName or policyName" in err.value.body


# --------------------------------------------------------------------------- backups, restores


def test_on_demand_backup_restores_and_guards(
    operator: OperatorProcess, ns: Objects, data: Fixture, local_node: LocalNode
) -> None:
    ns.create(policy_body("main", data))
    ready = eventually(
        lambda: (c := ns.condition("CitusBackupPolicy", "main", "Ready")) and c["status"] == "True",
        "policy Ready",
    )
    assert ready

    # --- an on-demand backup
    ns.backup("manual-1", "main")
    status = ns.wait_phase("CitusBackup", "manual-1", ("Succeeded", "Failed"), RUN_TIMEOUT)
    assert status["phase"] == "Succeeded", status
    assert status["jobName"] == backup_job_name("manual-1")
    assert status["tiers"] == ["daily"]
    # From the runner's JSON summary in the pod's termination message.
    assert set(status["databases"]) == {data.app1, data.app2}
    assert all(size > 0 for size in status["databases"].values())
    assert status["totalSizeBytes"] > 0
    assert status["location"]["bucket"] == data.bucket
    assert status["location"]["keyPrefix"] == f"main/daily/{status['backupId']}/"
    assert status["completionTime"]
    assert status["startTime"]
    restorable = ns.condition("CitusBackup", "manual-1", "Restorable")
    assert restorable is not None
    assert (restorable["status"], restorable["reason"]) == ("True", "DataPresent")
    manifest = f"s3://{data.bucket}/main/daily/{status['backupId']}/manifest.json"
    assert manifest in restorable["message"]
    assert ns.has_event("manual-1", "BackupSucceeded")
    # kopf's finalizer guards the backup only while its timer runs.
    eventually(
        lambda: not ns.get("CitusBackup", "manual-1")["metadata"].get("finalizers"),
        "the finished backup to carry no finalizer",
    )
    policy = eventually(
        lambda: (s := ns.status("CitusBackupPolicy", "main")).get("lastSuccessfulBackup") and s,
        "policy lastSuccessfulBackup",
    )
    assert policy["lastSuccessfulBackup"]["name"] == "manual-1"
    last = ns.condition("CitusBackupPolicy", "main", "LastBackupSucceeded")
    assert last is not None
    assert (last["status"], last["reason"]) == ("True", "BackupSucceeded")

    # --- guards: no Job is created for any of these
    ns.restore("missing", backupName="does-not-exist")
    ns.restore("exists", backupName="manual-1", databases=[data.app1])
    for name, reason in (("missing", "BackupNotFound"), ("exists", "TargetExists")):
        status = ns.wait_phase("CitusRestore", name, ("Failed", "Succeeded"))
        assert status["phase"] == "Failed"
        condition = ns.condition("CitusRestore", name, "Succeeded")
        assert condition is not None
        assert condition["reason"] == reason, condition
    assert "set replace: true" in ns.status("CitusRestore", "exists")["message"]
    assert restore_job_name("exists") not in ns.jobs()

    # --- one database: a dropped table comes back, app2 is not touched
    data.sql(data.app1, "DROP TABLE orders")
    data.sql(data.app2, "INSERT INTO notes VALUES (2, 'after backup')")
    # While a backup of the policy holds a Job, the restore waits.
    local_node.unserve(ns.namespace)
    ns.backup("manual-2", "main")
    eventually(lambda: backup_job_name("manual-2") in ns.jobs(), "the second backup's Job")
    ns.restore("app1", backupName="manual-1", databases=[data.app1], replace=True)
    waiting = eventually(
        lambda: (
            "waiting for CitusBackup manual-2"
            in (ns.status("CitusRestore", "app1").get("message") or "")
        ),
        "the restore to wait for the running backup",
    )
    assert waiting
    assert restore_job_name("app1") not in ns.jobs()
    local_node.serve(ns.namespace)
    status = ns.wait_phase("CitusRestore", "app1", ("Succeeded", "Failed"), 2 * RUN_TIMEOUT)
    assert status["phase"] == "Succeeded", status
    assert status["restoredDatabases"] == [data.app1]
    assert status["backupName"] == "manual-1"
    assert data.sql(data.app1, "SELECT count(*) FROM orders") == [(50,)]
    assert data.sql(data.app2, "SELECT count(*) FROM notes") == [(2,)]
    assert ns.status("CitusBackup", "manual-2")["phase"] == "Succeeded"

    # --- everything, from the latest successful backup of the policy before manual-2
    before = ns.status("CitusBackup", "manual-1")["completionTime"]
    ns.restore("all", policyName="main", before=before, replace=True)
    status = ns.wait_phase("CitusRestore", "all", ("Succeeded", "Failed"), RUN_TIMEOUT)
    assert status["phase"] == "Succeeded", status
    assert status["backupName"] == "manual-1"
    assert set(status["restoredDatabases"]) == {data.app1, data.app2}
    assert data.sql(data.app2, "SELECT count(*) FROM notes") == [(1,)]
    assert ns.has_event("all", "RestoreSucceeded")

    # --- two restores into the same database: one after the other
    local_node.unserve(ns.namespace)
    ns.restore("first", backupName="manual-2", databases=[data.app2], replace=True)
    eventually(lambda: restore_job_name("first") in ns.jobs(), "the first restore's Job")
    ns.restore("second", backupName="manual-2", databases=[data.app2], replace=True)
    eventually(
        lambda: (
            "waiting for CitusRestore first"
            in (ns.status("CitusRestore", "second").get("message") or "")
        ),
        "the second restore to wait for the first",
    )
    assert restore_job_name("second") not in ns.jobs()
    local_node.serve(ns.namespace)
    for name in ("first", "second"):
        status = ns.wait_phase("CitusRestore", name, ("Succeeded", "Failed"), RUN_TIMEOUT)
        assert status["phase"] == "Succeeded", status
    assert data.sql(data.app2, "SELECT count(*) FROM notes") == [(2,)]  # as in manual-2

    assert_clean(operator, data, ns)


def test_bad_inputs_end_in_clear_status(
    operator: OperatorProcess, ns: Objects, data: Fixture
) -> None:
    # A Secret that does not exist, a key that does not exist.
    ns.create(
        policy_body(
            "nosecret",
            data,
            coordinator={
                **policy_body("x", data)["spec"]["coordinator"],
                "passwordSecretRef": {"name": "absent", "key": "password"},
            },
        )
    )
    ns.create(
        policy_body(
            "nokey",
            data,
            storage={
                **policy_body("nokey", data)["spec"]["storage"],
                "secretAccessKeySecretRef": {"name": "s3", "key": "absent"},
            },
        )
    )
    for policy, reason in (("nosecret", "SecretNotFound"), ("nokey", "SecretKeyMissing")):
        ready = eventually(
            lambda p=policy: ns.condition("CitusBackupPolicy", p, "Ready"), f"{policy} Ready"
        )
        assert (ready["status"], ready["reason"]) == ("False", reason), ready
        ns.backup(f"{policy}-now", policy)
        status = ns.wait_phase("CitusBackup", f"{policy}-now", ("Failed", "Succeeded"))
        assert status["phase"] == "Failed"
        condition = ns.condition("CitusBackup", f"{policy}-now", "Succeeded")
        assert condition is not None
        assert condition["reason"] == reason
        assert backup_job_name(f"{policy}-now") not in ns.jobs()
        assert eventually(lambda p=policy, r=reason: ns.has_event(p, r), f"Warning {reason}")
    assert (
        "Secret absent (coordinator.passwordSecretRef) not found"
        in ns.status("CitusBackup", "nosecret-now")["message"]
    )

    # A wrong password: the runner fails and says why.
    ns.core.create_namespaced_secret(
        ns.namespace, {"metadata": {"name": "badpg"}, "stringData": {"password": "wrong"}}
    )
    ns.create(
        policy_body(
            "badpw",
            data,
            coordinator={
                **policy_body("x", data)["spec"]["coordinator"],
                "passwordSecretRef": {"name": "badpg", "key": "password"},
            },
        )
    )
    ns.backup("badpw-now", "badpw")
    status = ns.wait_phase("CitusBackup", "badpw-now", ("Failed", "Succeeded"), RUN_TIMEOUT)
    assert status["phase"] == "Failed"
    assert "password authentication failed" in status["message"], status
    assert ns.has_event("badpw-now", "BackupFailed")
    last = eventually(
        lambda: ns.condition("CitusBackupPolicy", "badpw", "LastBackupSucceeded"),
        "LastBackupSucceeded of badpw",
    )
    assert (last["status"], last["reason"]) == ("False", "BackupFailed")
    assert "badpw-now" in ns.status("CitusBackupPolicy", "badpw")["lastFailureMessage"]
    # A restore from a failed backup is refused.
    ns.restore("from-failed", backupName="badpw-now")
    ns.wait_phase("CitusRestore", "from-failed", ("Failed",))
    condition = ns.condition("CitusRestore", "from-failed", "Succeeded")
    assert condition is not None
    assert condition["reason"] == "BackupNotSucceeded"

    # Unreachable endpoints: the runner says which one.
    coordinator = policy_body("x", data)["spec"]["coordinator"]
    storage = policy_body("x", data)["spec"]["storage"]
    ns.create(policy_body("nopg", data, coordinator={**coordinator, "port": 1}))
    ns.create(policy_body("nos3", data, storage={**storage, "endpoint": "127.0.0.1:9"}))
    ns.backup("nopg-now", "nopg")
    ns.backup("nos3-now", "nos3")
    for name, text in (("nopg-now", "PostgreSQL unreachable"), ("nos3-now", "127.0.0.1:9")):
        status = ns.wait_phase("CitusBackup", name, ("Failed", "Succeeded"), RUN_TIMEOUT)
        assert status["phase"] == "Failed"
        assert text in status["message"], status

    assert operator.alive()
    assert_clean(operator, data, ns)


# --------------------------------------------------------------------------- schedule


def test_scheduled_catch_up_run_survives_operator_restart(
    operator: OperatorProcess, ns: Objects, data: Fixture, local_node: LocalNode
) -> None:
    """A run missed while the operator was down is caught up once, and a restart
    during the run neither duplicates the CitusBackup nor its Job."""
    # Pods stay unbound until the restart is done: the backup is "running".
    local_node.unserve(ns.namespace)
    ns.create(policy_body("sched", data, schedule="* * * * *"))
    eventually(
        lambda: ns.status("CitusBackupPolicy", "sched").get("nextScheduleTime"), "nextScheduleTime"
    )
    # The operator "was down" for five minutes: the last run it started is old.
    ns.patch_status(
        "CitusBackupPolicy",
        "sched",
        {
            "lastScheduleTime": (datetime.now(UTC) - timedelta(minutes=5)).strftime(
                "%Y-%m-%dT%H:%M:00Z"
            )
        },
    )
    backups = eventually(
        lambda: [b for b in ns.list("CitusBackup") if b["spec"]["policyName"] == "sched"],
        "the catch-up CitusBackup",
    )
    # Stop further runs: suspend is honoured (and keeps this test away from the next minute).
    ns.patch("CitusBackupPolicy", "sched", {"spec": {"suspend": True}})
    assert len(backups) == 1
    backup = backups[0]
    name = backup["metadata"]["name"]
    scheduled = datetime.fromisoformat(
        backup["metadata"]["annotations"]["citusbackup.io/scheduled-time"].replace("Z", "+00:00")
    )
    assert name == scheduled_backup_name("sched", scheduled)
    assert backup["metadata"]["labels"]["citusbackup.io/trigger"] == "scheduled"
    assert not backup["metadata"].get("ownerReferences")  # the catalogue outlives policies
    job = backup_job_name(name)
    eventually(lambda: job in ns.jobs(), "the backup Job")

    operator.kill()
    operator.start()
    local_node.serve(ns.namespace)

    status = ns.wait_phase("CitusBackup", name, ("Succeeded", "Failed"), RUN_TIMEOUT)
    assert status["phase"] == "Succeeded", status
    assert status["backupId"] == scheduled.strftime("%Y%m%dT%H%M%SZ")
    assert ns.jobs() == [job]
    assert [b["metadata"]["name"] for b in ns.list("CitusBackup")] == [name]
    policy = eventually(
        lambda: (s := ns.status("CitusBackupPolicy", "sched")).get("lastSuccessfulBackup") and s,
        "the policy's lastSuccessfulBackup",
    )
    assert policy["lastSuccessfulBackup"]["name"] == name
    # The catch-up run, or a later one skipped before suspend took effect (same minute edge).
    assert policy["lastScheduleTime"] >= scheduled.strftime("%Y-%m-%dT%H:%M:%SZ")
    eventually(
        lambda: "nextScheduleTime" not in ns.status("CitusBackupPolicy", "sched"),
        "nextScheduleTime removed while suspended",
    )
    ready = ns.condition("CitusBackupPolicy", "sched", "Ready")
    assert ready is not None
    assert ready["reason"] == "Suspended"
    assert ns.has_event("sched", "BackupScheduled")

    # Deleting the policy deletes no backup.
    ns.custom.delete_namespaced_custom_object(
        "citusbackup.io", "v1alpha1", ns.namespace, "citusbackuppolicies", "sched"
    )
    eventually(
        lambda: not [p for p in ns.list("CitusBackupPolicy") if p["metadata"]["name"] == "sched"],
        "the policy to be deleted",
    )
    assert [b["metadata"]["name"] for b in ns.list("CitusBackup")] == [name]
    assert_clean(operator, data, ns)
